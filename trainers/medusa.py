"""``train medusa``: Medusa-1 heads on a frozen base model (Cai et al. 2024).

Head h (0-based) reads the base model's final hidden state at position t (after the final
norm, as :mod:`cllm_bench.medusa_heads` and the ``medusa`` decoder do) and predicts the
token at t + h + 2. Loss = sum_h ``decay``^h x CE_h over the answer tokens (prompt and
padding masked); ``--head-decay 0.8`` gives the decayed weighting, 1.0 (default) equal
weights. Heads start as copies of the base ``lm_head`` with identity residual blocks
(:meth:`MedusaHeads.from_lm_head`), as in the Medusa repo. Defaults follow Medusa-1:
lr 1e-3, cosine schedule, warm-up ratio 0.1.

Data: task text with gold answers (``--data gsm8k`` ...), or self-distillation on the base
model's own greedy answers: a trajectories folder (its ``answer_ids``), or any prompt source
with ``--self-distill`` (answers decoded now with the ``ar`` decoder).
Saves the heads with :meth:`MedusaHeads.save` into ``--out`` (``heads=DIR`` of the decoder).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from cllm_bench.errors import UserError
from cllm_bench.medusa_heads import MedusaHeads
from cllm_bench.trainers import common


def medusa_loss(head_logits: torch.Tensor, labels: torch.Tensor, decay: float = 1.0) -> tuple[torch.Tensor, list[float]]:
    """sum_h decay^h * CE(head h at t, label t+h+2).

    head_logits: [H, B, T, V]; labels: [B, T] (-100 where not trained). Returns the total
    and the per-head CE values (for logging).
    """
    total = head_logits.sum() * 0.0
    parts = []
    for h in range(head_logits.shape[0]):
        shift = h + 2
        if labels.shape[1] <= shift:
            parts.append(0.0)
            continue
        logits = head_logits[h, :, :-shift].reshape(-1, head_logits.shape[-1]).float()
        target = labels[:, shift:].reshape(-1).to(logits.device)
        if not bool((target != -100).any()):
            parts.append(0.0)
            continue
        ce = torch.nn.functional.cross_entropy(logits, target, ignore_index=-100)
        total = total + (decay**h) * ce
        parts.append(float(ce.detach()))
    return total, parts


def make_step(acc: Any, heads: Any, base: Any, decay: float):
    """Per micro-batch: frozen base -> hidden states -> heads -> Medusa loss, backward."""

    def step(batch: dict[str, torch.Tensor]) -> dict[str, float]:
        with torch.no_grad(), acc.autocast():
            hidden = common.final_hidden(base, batch["ids"], batch["mask"])
        param = next(acc.unwrap_model(heads).parameters())
        loss, parts = medusa_loss(heads(hidden.to(param.dtype)), batch["labels"], decay)
        acc.backward(loss)
        return {"loss": float(loss.detach()), **{f"head{h}": v for h, v in enumerate(parts)}}

    return step


def choose_answers(acc: Any, base: Any, examples: list[common.Example], args: argparse.Namespace, eos_ids: frozenset[int]) -> tuple[list[list[int]], str]:
    """Greedy answers (self-distillation) or gold answers, and which it was."""
    if args.self_distill or all(ex.greedy_ids is not None for ex in examples):
        return common.model_answers(acc, base, examples, args.max_new_tokens, eos_ids), "self-distilled (base greedy)"
    return common.gold_answers(examples, args.data), "gold"


def run(args: argparse.Namespace, console: Any = None) -> int:
    """``cllm-bench train medusa``: train heads, save them + a manifest into ``--out``."""
    if args.heads < 1 or args.head_layers < 1:
        raise UserError("--heads and --head-layers must be >= 1")
    settings = common.settings_from_args(args)
    acc = common.make_accelerator(settings.mixed_precision, settings.grad_accum, settings.cpu, settings.seed)
    loaded = common.load_for_training(args.model, args.dtype)
    base = common.place_frozen(loaded.model, acc.device)
    eos_id = common.answer_eos_id(loaded.tokenizer, loaded.eos_ids)
    examples = common.load_examples(
        args.data, loaded.tokenizer, eos_id=eos_id, data_dir=args.data_dir, limit=args.limit, prompt_style=args.prompt_style
    )
    answers, answer_kind = choose_answers(acc, base, examples, args, loaded.eos_ids)
    items = common.sequence_items(examples, answers, args.max_length)
    heads = MedusaHeads.from_lm_head(base.get_output_embeddings(), args.heads, args.head_layers).float()
    optimizer = common.make_optimizer(heads.parameters(), settings.lr, settings.weight_decay)
    heads, optimizer = acc.prepare(heads, optimizer)
    collate = common.SequenceCollator(common.pad_token_id(loaded.tokenizer, loaded.model))
    progress = common.fit(acc, heads, optimizer, items, collate, make_step(acc, heads, base, args.head_decay), settings, console, "medusa")
    acc.wait_for_everyone()
    if acc.is_main_process:
        trained = acc.unwrap_model(heads)
        if args.save_dtype:
            from cllm_bench.models import DTYPES

            trained = trained.to(DTYPES[args.save_dtype])
        trained.save(Path(args.out))
        common.write_manifest(
            Path(args.out), "medusa", model=args.model, data=args.data, answers=answer_kind, heads=args.heads,
            head_layers=args.head_layers, head_decay=args.head_decay, examples=len(items),
            **common.settings_summary(settings, acc, progress),
        )
        acc.print(f"saved {args.heads} Medusa heads to {args.out}; use medusa:heads={args.out}")
    acc.wait_for_everyone()
    return 0
