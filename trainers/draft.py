"""``train draft``: distil a small draft model for ``speculative:draft=DIR``.

The draft shares the target's tokenizer and learns the target's greedy outputs:

* ``--kd seq`` (default, sequence-level KD): cross-entropy on the target's greedy answers
  (answer tokens only);
* ``--kd token``: token-level KD, KL(p_target || p_draft) at every answer position, the
  frozen target run on the same sequence (needs equal vocabulary sizes).

Target answers come from a trajectories folder (its ``answer_ids``) or are decoded now
with the target (``ar`` decoder, ``--max-new-tokens``) from any prompt source.

Draft init (``--draft-init``): a model spec (alias, folder, hub id), or ``self:layers=K``
(or ``self`` with ``--layers K``): a real copy of the target's first K decoder layers,
embeddings, final norm and head, as a standalone model with ``num_hidden_layers = K``.
Saved with ``save_pretrained`` together with the target's tokenizer.
"""

from __future__ import annotations

import argparse
import copy
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from cllm_bench.errors import UserError
from cllm_bench.trainers import common

KD_CHOICES = ("seq", "token")
_LAYER_KEY = re.compile(r"\.layers\.(\d+)\.")


def parse_draft_init(spec: str, layers: int | None) -> tuple[str, int | None]:
    """``"self:layers=4"`` -> ("self", 4); ``"self"`` -> ("self", layers); other -> (spec, None)."""
    if spec == "self" or spec.startswith("self:"):
        k = layers
        if spec.startswith("self:"):
            key, eq, value = spec[len("self:") :].partition("=")
            if key.strip() != "layers" or not eq or not value.strip().isdigit():
                raise UserError(f"--draft-init {spec!r}: write self:layers=K (K an integer) or a model spec")
            k = int(value)
        if k is None:
            raise UserError("--draft-init self needs the layer count: self:layers=K or --layers K")
        return "self", k
    return spec, None


def truncated_copy(model: Any, layers: int) -> Any:
    """A standalone causal LM: the first ``layers`` decoder layers of ``model`` + embeddings,
    final norm and head, weights copied (not shared), config ``num_hidden_layers = layers``."""
    from transformers import AutoModelForCausalLM

    total = int(model.config.num_hidden_layers)
    if not 1 <= layers <= total:
        raise UserError(f"self:layers=K needs 1 <= K <= {total} (the target's layer count), got {layers}")
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = layers
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = config.layer_types[:layers]
    draft = AutoModelForCausalLM.from_config(config).to(dtype=model.dtype)
    state = {k: v.detach().clone() for k, v in model.state_dict().items() if _keeps(k, layers)}
    missing, unexpected = draft.load_state_dict(state, strict=False)
    tied = set(getattr(draft, "_tied_weights_keys", None) or [])
    really_missing = [k for k in missing if k not in tied and "lm_head" not in k]
    if really_missing or unexpected:
        raise UserError(f"cannot copy {type(model).__name__} layers: missing {really_missing[:3]}, unexpected {unexpected[:3]}")
    if getattr(config, "tie_word_embeddings", False):
        draft.tie_weights()
    draft.generation_config = copy.deepcopy(model.generation_config)
    return draft


def _keeps(key: str, layers: int) -> bool:
    match = _LAYER_KEY.search(key)
    return match is None or int(match.group(1)) < layers


def build_draft(spec: str, layers: int | None, target: Any, dtype: str) -> tuple[Any, str]:
    """The draft model to train and a description of its origin."""
    kind, k = parse_draft_init(spec, layers)
    if kind == "self":
        assert k is not None
        return truncated_copy(target, k), f"self:layers={k}"
    return common.load_for_training(spec, dtype).model, spec


def check_vocab(draft: Any, target: Any, kd: str) -> None:
    dv, tv = int(draft.config.vocab_size), int(target.config.vocab_size)
    if kd == "token" and dv != tv:
        raise UserError(f"--kd token needs equal vocabularies: draft has {dv}, target {tv}; use --kd seq")
    if dv < tv and kd == "seq":
        raise UserError(f"the draft's vocabulary ({dv}) is smaller than the target's ({tv}): it cannot share its tokenizer")


def token_kd_loss(draft_logits: torch.Tensor, target_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over answer positions of KL(p_target || p_draft).

    draft_logits, target_logits: [B, T, V]; labels: [B, T] (-100 off the answer). Position t
    predicts token t+1, as in the next-token loss.
    """
    mask = labels[:, 1:] != -100
    if not bool(mask.any()):
        return draft_logits.sum() * 0.0
    d = F.log_softmax(draft_logits[:, :-1][mask].float(), dim=-1)
    t = F.log_softmax(target_logits[:, :-1][mask].float(), dim=-1)
    return F.kl_div(d, t, log_target=True, reduction="batchmean")


def make_step(acc: Any, draft: Any, target: Any, kd: str):
    """Per micro-batch: sequence KD (CE on target answers) or token KD (KL to the target)."""

    def step(batch: dict[str, torch.Tensor]) -> dict[str, float]:
        logits = draft(input_ids=batch["ids"], attention_mask=batch["mask"], use_cache=False).logits
        if kd == "seq":
            loss = common.shifted_cross_entropy(logits, batch["labels"])
        else:
            with torch.no_grad(), acc.autocast():
                t_logits = target(input_ids=batch["ids"], attention_mask=batch["mask"], use_cache=False).logits
            loss = token_kd_loss(logits, t_logits, batch["labels"])
        acc.backward(loss)
        return {"loss": float(loss.detach())}

    return step


def run(args: argparse.Namespace, console: Any = None) -> int:
    """``cllm-bench train draft``: distil, save the draft's HF checkpoint + manifest."""
    if args.kd not in KD_CHOICES:
        raise UserError(f"--kd must be one of {KD_CHOICES}")
    settings = common.settings_from_args(args)
    acc = common.make_accelerator(settings.mixed_precision, settings.grad_accum, settings.cpu, settings.seed)
    target = common.load_for_training(args.model, args.dtype)
    draft, origin = build_draft(args.draft_init, args.layers, target.model, args.dtype)
    check_vocab(draft, target.model, args.kd)
    eos_id = common.answer_eos_id(target.tokenizer, target.eos_ids)
    examples = common.load_examples(
        args.data, target.tokenizer, eos_id=eos_id, data_dir=args.data_dir, limit=args.limit, prompt_style=args.prompt_style
    )
    needs_target = args.kd == "token" or any(ex.greedy_ids is None for ex in examples)
    if needs_target:  # else (seq KD on recorded answers) the target never leaves the CPU
        common.place_frozen(target.model, acc.device)
    answers = common.model_answers(acc, target.model, examples, args.max_new_tokens, target.eos_ids)
    items = common.sequence_items(examples, answers, args.max_length)
    optimizer = common.make_optimizer(draft.parameters(), settings.lr, settings.weight_decay)
    draft, optimizer = acc.prepare(draft, optimizer)
    collate = common.SequenceCollator(common.pad_token_id(target.tokenizer, target.model))
    step = make_step(acc, draft, target.model, args.kd)
    progress = common.fit(acc, draft, optimizer, items, collate, step, settings, console, f"draft ({args.kd} KD)")
    common.save_hf_checkpoint(acc, draft, target.tokenizer, Path(args.out), args.save_dtype)
    if acc.is_main_process:
        common.write_manifest(
            Path(args.out), "draft", target=args.model, draft_init=origin, kd=args.kd, data=args.data,
            examples=len(items), draft_layers=int(acc.unwrap_model(draft).config.num_hidden_layers),
            **common.settings_summary(settings, acc, progress),
        )
        acc.print(f"saved draft checkpoint to {args.out}; use it as speculative:draft={args.out}")
    return 0
