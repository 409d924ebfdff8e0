"""``train sft``: supervised fine-tuning on task data, the fine-tuned AR baseline.

Each example is prompt + gold answer (+ EOS); the loss is next-token cross-entropy on the
answer tokens only (prompt and padding masked). Data: any source of
:func:`cllm_bench.trainers.common.load_examples` with gold answers (gsm8k, spider, a JSONL
with answers, or a trajectories folder built from such a source: its ``label_ids``).
Saves an HF checkpoint (model + tokenizer) that ``cllm-bench run --models DIR`` loads.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from cllm_bench.trainers import common


def make_step(acc: Any, model: Any):
    """Per micro-batch: answer-only CE, backward. Batch: ids/mask/labels [B, T]."""

    def step(batch: dict[str, torch.Tensor]) -> dict[str, float]:
        logits = model(input_ids=batch["ids"], attention_mask=batch["mask"], use_cache=False).logits
        loss = common.shifted_cross_entropy(logits, batch["labels"])
        acc.backward(loss)
        return {"loss": float(loss.detach())}

    return step


def run(args: argparse.Namespace, console: Any = None) -> int:
    """``cllm-bench train sft``: fine-tune, save the HF checkpoint + manifest in ``--out``."""
    settings = common.settings_from_args(args)
    acc = common.make_accelerator(settings.mixed_precision, settings.grad_accum, settings.cpu, settings.seed)
    loaded = common.load_for_training(args.model, args.dtype, args.gradient_checkpointing)
    eos_id = common.answer_eos_id(loaded.tokenizer, loaded.eos_ids)
    examples = common.load_examples(
        args.data, loaded.tokenizer, eos_id=eos_id, data_dir=args.data_dir, limit=args.limit, prompt_style=args.prompt_style
    )
    items = common.sequence_items(examples, common.gold_answers(examples, args.data), args.max_length)
    model = loaded.model
    optimizer = common.make_optimizer(model.parameters(), settings.lr, settings.weight_decay)
    model, optimizer = acc.prepare(model, optimizer)
    collate = common.SequenceCollator(common.pad_token_id(loaded.tokenizer, loaded.model))
    progress = common.fit(acc, model, optimizer, items, collate, make_step(acc, model), settings, console, "sft")
    common.save_hf_checkpoint(acc, model, loaded.tokenizer, Path(args.out), args.save_dtype)
    if acc.is_main_process:
        common.write_manifest(
            Path(args.out), "sft", model=args.model, data=args.data, examples=len(items),
            **common.settings_summary(settings, acc, progress),
        )
        acc.print(f"saved SFT checkpoint to {args.out} ({progress.step} updates)")
    return 0
