"""``train eagle``: an EAGLE-1/-2 draft head (:class:`~cllm_bench.eagle_head.EagleHead`) on a frozen target.

Per sequence (prompt + the target's own greedy answer), the frozen target gives its final
hidden states ``h_0..h_{T-1}`` (after the final norm, as the ``eagle`` decoder reads them).
The head reads pairs ``(h_t, token_{t+1})`` causally and predicts ``f_{t+1}``; the loss,
as in EAGLE's ``train/main.py``::

    loss = v_w * SmoothL1(f_{t+1}, h_{t+1}) + p_w * CE(softmax(lm_head(h_{t+1})), lm_head(f_{t+1}))

(v_w = 1.0, p_w = 0.1; the token term is a soft cross-entropy against the target's own
distribution through the frozen ``lm_head``), averaged over the positions whose token
t + 1 is an answer token. The manifest keeps, per update, the feature loss (``vloss``), the
token loss (``ploss``) and the draft's top-1 agreement with the target (``top1``). ``--feature-noise S`` adds uniform noise U(-S/2, S/2) to the input
features (EAGLE trains with noise; default 0 here).

Data: the target's own greedy answers — recorded in a trajectories folder (``answer_ids``)
or decoded now with the ``ar`` decoder from any prompt source (``--data gsm8k`` ...), as
EAGLE trains on target-generated responses. Saves the head in the EAGLE release layout
(``config.json`` + ``model.safetensors``) into ``--out``: ``eagle:head=DIR``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from cllm_bench.eagle_head import EagleHead, head_config
from cllm_bench.errors import UserError
from cllm_bench.trainers import common

V_WEIGHT = 1.0
P_WEIGHT = 0.1


def causal_mask(length: int, dtype: torch.dtype, device: Any) -> torch.Tensor:
    """[1, 1, T, T] additive causal mask (0 on and below the diagonal, dtype-min above)."""
    allowed = torch.ones(length, length, dtype=torch.bool, device=device).tril_()
    return torch.zeros(length, length, dtype=dtype, device=device).masked_fill_(~allowed, torch.finfo(dtype).min)[None, None]


def eagle_loss(
    pred: torch.Tensor, target: torch.Tensor, lm_head: torch.nn.Module, valid: torch.Tensor,
    v_weight: float = V_WEIGHT, p_weight: float = P_WEIGHT,
) -> tuple[torch.Tensor, float, float, float]:  # fmt: skip
    """EAGLE's loss over the ``valid`` positions.

    pred, target: [B, T, H] predicted and true next features; valid: [B, T] bool.
    Returns (loss, feature loss, token loss, draft top-1 agreement with the target's argmax).
    """
    if not bool(valid.any()):
        zero = pred.sum() * 0.0
        return zero, 0.0, 0.0, 0.0
    p, t = pred[valid].float(), target[valid].float()
    vloss = F.smooth_l1_loss(p, t, reduction="none").mean(-1).mean()
    with torch.no_grad():
        target_logits = lm_head(t.to(lm_head.weight.dtype)).float()
        target_p = torch.softmax(target_logits, dim=-1)
    logp = torch.log_softmax(lm_head(p.to(lm_head.weight.dtype)).float(), dim=-1)
    ploss = -(target_p * logp).sum(-1).mean()
    acc = float((logp.argmax(-1) == target_logits.argmax(-1)).float().mean())
    return v_weight * vloss + p_weight * ploss, float(vloss.detach()), float(ploss.detach()), acc


def make_step(acc: Any, head: Any, base: Any, noise: float):
    """Per micro-batch: frozen target -> hidden states -> head on (h_t, token_{t+1}) -> loss, backward."""
    embedding, lm_head = base.get_input_embeddings(), base.get_output_embeddings()

    def step(batch: dict[str, torch.Tensor]) -> dict[str, float]:
        ids, mask, labels = batch["ids"], batch["mask"], batch["labels"]
        with torch.no_grad(), acc.autocast():
            hidden = common.final_hidden(base, ids, mask)  # [B, T, H]
        model = acc.unwrap_model(head)
        dtype = next(model.parameters()).dtype
        inputs = hidden[:, :-1].to(dtype)
        if noise > 0:
            inputs = inputs + (torch.rand_like(inputs) - 0.5) * noise
        length = inputs.shape[1]
        positions = torch.arange(length, device=ids.device).unsqueeze(0).expand(ids.shape[0], length)
        with torch.no_grad():
            embeds = model.embed(embedding, ids[:, 1:]).to(dtype)
        pred = head(inputs, embeds, positions, causal_mask(length, dtype, ids.device))
        valid = (labels[:, 1:] != -100).to(pred.device)  # token t+1 is an answer token
        loss, vloss, ploss, top1 = eagle_loss(pred, hidden[:, 1:].to(dtype), lm_head, valid)
        acc.backward(loss)
        return {"loss": float(loss.detach()), "vloss": vloss, "ploss": ploss, "top1": top1}

    return step


def run(args: argparse.Namespace, console: Any = None) -> int:
    """``cllm-bench train eagle``: train a head, save it (release layout) + a manifest into ``--out``."""
    if args.feature_noise < 0:
        raise UserError(f"--feature-noise must be >= 0, got {args.feature_noise}")
    settings = common.settings_from_args(args)
    acc = common.make_accelerator(settings.mixed_precision, settings.grad_accum, settings.cpu, settings.seed)
    loaded = common.load_for_training(args.model, args.dtype)
    source = Path(args.data).expanduser()
    if source.is_dir() and (source / common.MANIFEST_FILE).is_file():  # trajectories of another model: refuse
        common.check_trajectories_match(common.read_json(source / common.MANIFEST_FILE), loaded, args.model)
    base = common.place_frozen(loaded.model, acc.device)
    eos_id = common.answer_eos_id(loaded.tokenizer, loaded.eos_ids)
    examples = common.load_examples(
        args.data, loaded.tokenizer, eos_id=eos_id, data_dir=args.data_dir, limit=args.limit, prompt_style=args.prompt_style
    )
    answers = common.model_answers(acc, base, examples, args.max_new_tokens, loaded.eos_ids)
    items = common.sequence_items(examples, answers, args.max_length)
    torch.manual_seed(settings.seed)
    head = EagleHead(head_config(base.config), bias=True).float()
    optimizer = common.make_optimizer(head.parameters(), settings.lr, settings.weight_decay)
    head, optimizer = acc.prepare(head, optimizer)
    collate = common.SequenceCollator(common.pad_token_id(loaded.tokenizer, loaded.model))
    step = make_step(acc, head, base, args.feature_noise)
    progress = common.fit(acc, head, optimizer, items, collate, step, settings, console, "eagle")
    acc.wait_for_everyone()
    if acc.is_main_process:
        trained = acc.unwrap_model(head)
        if args.save_dtype:
            from cllm_bench.models import DTYPES

            trained = trained.to(DTYPES[args.save_dtype])
        trained.save(Path(args.out))
        common.write_manifest(
            Path(args.out), "eagle", model=args.model, data=args.data, answers="self-distilled (target greedy)",
            examples=len(items), loss_weights={"feature_smooth_l1": V_WEIGHT, "token_ce": P_WEIGHT},
            feature_noise=args.feature_noise, loss_terms=progress.terms, **common.settings_summary(settings, acc, progress),
        )
        acc.print(f"saved an EAGLE head to {args.out}; use eagle:head={args.out}")
    acc.wait_for_everyone()
    return 0
