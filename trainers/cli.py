"""Command line of the trainers: ``cllm-bench train trajectories|cllm|medusa|eagle|draft|sft``.

Entry points:

* :func:`add_train_subcommands` adds the six sub-commands to an argparse sub-parsers
  object (``cllm_bench.cli`` calls it for ``cllm-bench train``);
* :func:`run_train` runs the parsed sub-command (returns the exit code);
* :func:`main` is the same command line standalone, so several processes can be started
  with ``accelerate launch [--num_processes N] -m cllm_bench.trainers.cli <what> ...``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any, Sequence

from cllm_bench.errors import UserError

#: sub-command -> module whose ``run(args, console)`` implements it
TRAINERS = {
    "trajectories": "cllm_bench.trainers.trajectories",
    "plan": "cllm_bench.trainers.budget",
    "cllm": "cllm_bench.trainers.cllm",
    "medusa": "cllm_bench.trainers.medusa",
    "eagle": "cllm_bench.trainers.eagle",
    "draft": "cllm_bench.trainers.draft",
    "sft": "cllm_bench.trainers.sft",
}
SAVE_DTYPES = ("float32", "bfloat16", "float16")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_data_flags(p: argparse.ArgumentParser, source_flag: str, help_text: str) -> None:
    """Where prompts come from and how they are rendered."""
    p.add_argument(source_flag, required=True, help=help_text)
    p.add_argument("--data-dir", default=None, help="root with gsm8k/, spider/, mt_bench/ (the layout of shared/data)")
    p.add_argument("--limit", type=int, default=None, help="use the first N prompts only")
    p.add_argument("--prompt-style", choices=("auto", "chat", "raw"), default="auto",
                   help="chat template (auto: when the tokenizer has one) or the reference's plain prompts")


def add_training_flags(p: argparse.ArgumentParser, *, lr: float, batch_size: int, warmup_ratio: float = 0.03) -> None:
    """Flags every training sub-command shares (optimiser, schedule, accelerate, checkpoints)."""
    g = p.add_argument_group("training")
    g.add_argument("--out", required=True, help="output folder (checkpoint, manifest.json, resumable training state)")
    g.add_argument("--lr", type=float, default=lr, help=f"peak learning rate (default {lr:g})")
    g.add_argument("--epochs", type=_positive_int, default=1)
    g.add_argument("--batch-size", type=_positive_int, default=batch_size, help="per-process batch size")
    g.add_argument("--grad-accum", type=_positive_int, default=1, help="gradient accumulation steps")
    g.add_argument("--warmup-ratio", type=float, default=warmup_ratio, help="linear warm-up share of the updates")
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping (0: off)")
    g.add_argument("--max-steps", type=_positive_int, default=None, help="stop after N optimiser updates")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--mixed-precision", choices=("auto", "no", "bf16", "fp16"), default="auto",
                   help="accelerate mixed precision (auto: bf16 on a GPU, no on CPU)")
    g.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                   help="dtype the weights are loaded and trained in (float32 master weights by default)")
    g.add_argument("--save-dtype", choices=SAVE_DTYPES, default=None, help="cast saved weights (default: as trained)")
    g.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations (less memory)")
    g.add_argument("--cpu", action="store_true", help="train on CPU even when a GPU is present")
    g.add_argument("--save-every", type=int, default=200, help="save the training state every N updates (0: never)")
    g.add_argument("--keep-state", action="store_true", help="keep the training state after the run (default: removed)")
    g.add_argument("--no-resume", action="store_true", help="ignore a training state left in --out and start over")


def add_trajectories(sub: Any) -> None:
    p = sub.add_parser("trajectories", help="collect Jacobi trajectories of the target model (CLLM data)")
    p.add_argument("--model", required=True, help="target model spec (alias, folder, .gguf, hub id)")
    add_data_flags(p, "--prompts", "gsm8k | spider | humaneval-style | mt-bench-style | a JSONL file")
    p.add_argument("--n", type=_positive_int, default=16, help="Jacobi block size (use the same n for cllm)")
    p.add_argument("--max-new-tokens", type=_positive_int, default=256)
    p.add_argument("--out", required=True, help="output folder: trajectories.jsonl + manifest.json")
    p.add_argument("--augment", action="store_true", help="reference augmentation: correct half the wrong tokens")
    p.add_argument("--filter-repetitive", action=argparse.BooleanOptionalAction, default=True,
                   help="drop records whose answer holds >= 10 identical consecutive tokens (default on)")
    p.add_argument("--batch-size", type=_positive_int, default=1,
                   help="1: Jacobi decoder with KV cache; B > 1: B prompts per batch without KV cache")
    p.add_argument("--init", choices=("random", "repeat"), default="random", help="initial guess of a block")
    p.add_argument("--collector", choices=("decoder", "packed"), default="decoder",
                   help="decoder: Jacobi-decode each prompt (--batch-size > 1: batched, no KV cache); packed: greedy "
                        "answers by batched `ar` (--batch-size prompts at once), then every block's states in one "
                        "packed forward per iteration (same states, fewer forwards)")
    p.add_argument("--states", choices=("jacobi", "noised"), default="jacobi",
                   help="packed collector: true Jacobi states, or noised ones (correct prefix + random suffix)")
    p.add_argument("--noised-per-block", type=_positive_int, default=8, help="states per block with --states noised")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16")
    p.add_argument("--cpu", action="store_true")
    p.set_defaults(train_entry="trajectories")


def add_cllm(sub: Any) -> None:
    p = sub.add_parser("cllm", help="consistency-train a CLLM on trajectories")
    p.add_argument("--model", required=True, help="the model to train (normally the trajectories' target)")
    p.add_argument("--trajectories", required=True, help="folder written by `train trajectories`")
    p.add_argument("--ar-weight", type=float, default=10.0, help="weight of the AR loss (reference: 10)")
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--consistency", choices=("global", "local"), default="global",
                   help="global: target = fixed point (reference); local: target = next state")
    p.add_argument("--consistency-weight", type=float, default=1.0,
                   help="weight of the consistency loss (1: the reference; 0: the AR-only control, the "
                        "model trained on its own answers y* alone)")
    p.add_argument("--consistency-window", type=int, default=0,
                   help="consistency loss on only the first W positions from the first wrong token of "
                        "each state (0: to the block's end, the reference)")
    p.add_argument("--use-gt-labels", action="store_true", help="AR loss on the gold answer instead of y*")
    p.add_argument("--packed", action=argparse.BooleanOptionalAction, default=None,
                   help="all blocks and several states of a prompt in one forward over the cached prompt (the "
                        "default, except with --consistency local or --use-gt-labels); --no-packed: the "
                        "reference's one state of one block per step")
    p.add_argument("--states-per-block", type=int, default=4,
                   help="packed: intermediate states drawn per block and update (0: all)")
    p.add_argument("--max-prompts", type=int, default=0,
                   help="train on the trajectories of the first N prompts only (0: all); the "
                        "number-of-prompts ablation, and with many --epochs a capacity check")
    c = p.add_argument_group("learning curves")
    c.add_argument("--eval-every", type=int, default=0, help="Jacobi-decode the curve prompts every K updates (0: off)")
    c.add_argument("--eval-prompts", default=None, help="task whose --eval-split gives held-out prompts (e.g. spider)")
    c.add_argument("--eval-split", default="dev", help="split of --eval-prompts (default dev)")
    c.add_argument("--eval-limit", type=int, default=8, help="prompts per curve set (held-out and training)")
    c.add_argument("--eval-n", type=int, default=0, help="block size of the curve's Jacobi decoding (0: the trajectories' n)")
    c.add_argument("--eval-max-new-tokens", type=_positive_int, default=64)
    c.add_argument("--data-dir", default=None, help="root of the task data (for --eval-prompts)")
    c.add_argument("--prompt-style", choices=("auto", "chat", "raw"), default="auto")
    c.add_argument("--allow-code-execution", action="store_true",
                   help="score the held-out set by executing code/SQL (sandboxed), as `run` does")
    p.add_argument("--ar-tokens", choices=("all", "answer"), default="all",
                   help="AR loss on every position (reference) or on the answer tokens only")
    add_training_flags(p, lr=2e-5, batch_size=1)
    p.set_defaults(train_entry="cllm")


def add_medusa(sub: Any) -> None:
    p = sub.add_parser("medusa", help="train Medusa-1 heads on a frozen base model")
    p.add_argument("--model", required=True, help="the frozen base model")
    add_data_flags(p, "--data", "task source / JSONL (gold answers), or a trajectories folder (self-distilled)")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-layers", type=int, default=1, help="residual blocks per head")
    p.add_argument("--head-decay", type=float, default=1.0, help="loss weight decay^h of head h (Medusa: 0.8)")
    p.add_argument("--self-distill", action="store_true", help="train on the base model's greedy answers")
    p.add_argument("--max-new-tokens", type=_positive_int, default=256, help="for answers decoded by --self-distill")
    p.add_argument("--max-length", type=_positive_int, default=2048, help="truncate prompt+answer to N tokens")
    add_training_flags(p, lr=1e-3, batch_size=8, warmup_ratio=0.1)
    p.set_defaults(train_entry="medusa")


def add_eagle(sub: Any) -> None:
    p = sub.add_parser("eagle", help="train an EAGLE draft head (feature regression + token CE) on a frozen target")
    p.add_argument("--model", required=True, help="the frozen target model")
    add_data_flags(p, "--data", "prompt source / JSONL, or a trajectories folder (the target's greedy answers reused)")
    p.add_argument("--max-new-tokens", type=_positive_int, default=256, help="length of the target answers decoded now")
    p.add_argument("--max-length", type=_positive_int, default=2048, help="truncate prompt+answer to N tokens")
    p.add_argument("--feature-noise", type=float, default=0.0, help="uniform noise width on input features (EAGLE: 0.2)")
    add_training_flags(p, lr=3e-5, batch_size=4)
    p.set_defaults(train_entry="eagle")


def add_draft(sub: Any) -> None:
    p = sub.add_parser("draft", help="distil a draft model for speculative decoding")
    p.add_argument("--model", required=True, help="the target model")
    p.add_argument("--draft-init", default="self:layers=4",
                   help="model spec, or self:layers=K (copy of the target's first K layers)")
    p.add_argument("--layers", type=int, default=None, help="K for --draft-init self")
    add_data_flags(p, "--data", "prompt source / JSONL, or a trajectories folder (target answers reused)")
    p.add_argument("--kd", choices=("seq", "token"), default="seq", help="sequence-level CE or token-level KL")
    p.add_argument("--max-new-tokens", type=_positive_int, default=256, help="length of the target answers decoded")
    p.add_argument("--max-length", type=_positive_int, default=2048)
    add_training_flags(p, lr=1e-4, batch_size=4)
    p.set_defaults(train_entry="draft")


def add_sft(sub: Any) -> None:
    p = sub.add_parser("sft", help="supervised fine-tuning on task data (fine-tuned AR baseline)")
    p.add_argument("--model", required=True)
    add_data_flags(p, "--data", "gsm8k | spider | JSONL with answers | trajectories folder (gold labels)")
    p.add_argument("--max-length", type=_positive_int, default=2048)
    add_training_flags(p, lr=2e-5, batch_size=4)
    p.set_defaults(train_entry="sft")


def add_plan(sub: Any) -> None:
    p = sub.add_parser("plan", help="size trajectories -> train cllm -> run to a time budget, from probed throughput")
    p.add_argument("--model", required=True, help="target model spec")
    p.add_argument("--prompts", required=True, help="task whose train split gives the prompts (gsm8k, spider)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--prompt-style", choices=("auto", "chat", "raw"), default="auto")
    p.add_argument("--budget-s", type=float, default=540.0, help="wall-clock budget of the whole pipeline (default 540)")
    p.add_argument("--n", type=_positive_int, default=16)
    p.add_argument("--max-new-tokens", type=_positive_int, default=256)
    p.add_argument("--decoders", type=_positive_int, default=4, help="decoders the evaluation runs per question")
    p.add_argument("--epochs", type=_positive_int, default=1)
    p.add_argument("--eval-share", type=float, default=0.25, help="share of the usable budget for evaluation")
    p.add_argument("--safety", type=float, default=0.15, help="share of the budget kept free")
    p.add_argument("--min-eval", type=_positive_int, default=10)
    p.add_argument("--max-train", type=_positive_int, default=None)
    p.add_argument("--max-eval", type=_positive_int, default=None, help="cap the questions (default: the whole split)")
    p.add_argument("--probe-prompts", type=int, default=4)
    p.add_argument("--probe-steps", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--out", required=True, help="plan JSON")
    p.set_defaults(train_entry="plan")


def add_train_subcommands(subparsers: Any) -> None:
    """Add ``trajectories``, ``cllm``, ``medusa``, ``eagle``, ``draft`` and ``sft`` to ``subparsers``."""
    for add in (add_plan, add_trajectories, add_cllm, add_medusa, add_eagle, add_draft, add_sft):
        add(subparsers)


def run_train(args: argparse.Namespace, console: Any = None) -> int:
    """Run the parsed ``train`` sub-command. Raises UserError for fixable input mistakes."""
    what = getattr(args, "train_entry", None)
    if what not in TRAINERS:
        raise UserError(f"unknown training command {what!r}; choose one of: {', '.join(TRAINERS)}")
    if console is None:
        from rich.console import Console

        console = Console(stderr=True)
    module = importlib.import_module(TRAINERS[what])
    return int(module.run(args, console) or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cllm-bench train", description="produce the compared models")
    add_train_subcommands(parser.add_subparsers(dest="what", required=True, metavar="WHAT"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point (``python -m cllm_bench.trainers.cli``, ``accelerate launch -m``)."""
    args = build_parser().parse_args(argv)
    try:
        return run_train(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
