"""The training loop every trainer shares: the Accelerator, the optimiser and cosine schedule,
gradient accumulation and clipping, checkpoint/resume of the training state, progress."""

from __future__ import annotations

import math
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

from cllm_bench.errors import DataError, UserError

STATE_DIR = "training_state"


# --------------------------------------------------------------------------- accelerate
def resolve_mixed_precision(choice: str, cpu: bool) -> str:
    """"auto": bf16 on a CUDA device that supports it, "no" otherwise."""
    if choice not in ("auto", "no", "bf16", "fp16"):
        raise UserError(f"--mixed-precision must be auto, no, bf16 or fp16, got {choice!r}")
    if choice != "auto":
        return choice
    if not cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def make_accelerator(mixed_precision: str = "auto", grad_accum: int = 1, cpu: bool = False, seed: int = 0):
    """An Accelerator (CPU, one GPU or several under ``accelerate launch``), seeded."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    if grad_accum < 1:
        raise UserError(f"--grad-accum must be >= 1, got {grad_accum}")
    acc = Accelerator(
        mixed_precision=resolve_mixed_precision(mixed_precision, cpu),
        gradient_accumulation_steps=grad_accum,
        cpu=cpu,
    )
    set_seed(seed)
    return acc


def load_for_training(spec: str, dtype: str = "float32", gradient_checkpointing: bool = False):
    """Load a model spec on CPU for training (the Accelerator moves it). Returns LoadedModel."""
    from cllm_bench.models import load_model

    loaded = load_model(spec, dtype=dtype, device="cpu")
    if gradient_checkpointing:
        loaded.model.gradient_checkpointing_enable()
        loaded.model.config.use_cache = False
    return loaded


# --------------------------------------------------------------------------- training loop
@dataclass
class TrainSettings:
    """Hyper-parameters and bookkeeping of one training run (the shared CLI flags)."""

    out_dir: Path
    lr: float
    epochs: int = 1
    batch_size: int = 1
    grad_accum: int = 1
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_steps: int | None = None
    save_every: int = 200
    keep_state: bool = False
    resume: bool = True
    seed: int = 0
    mixed_precision: str = "auto"
    cpu: bool = False

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise UserError(f"--lr must be > 0, got {self.lr}")
        if not 0 <= self.warmup_ratio < 1:
            raise UserError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.max_steps is not None and self.max_steps < 1:
            raise UserError(f"--max-steps must be >= 1, got {self.max_steps}")


def settings_from_args(args: Any) -> TrainSettings:
    """TrainSettings from the shared CLI flags (see :mod:`cllm_bench.trainers.cli`)."""
    settings = TrainSettings(
        out_dir=Path(args.out),
        lr=args.lr,
        epochs=args.epochs,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        warmup_ratio=args.warmup_ratio,
        weight_decay=args.weight_decay,
        max_grad_norm=args.max_grad_norm,
        max_steps=args.max_steps,
        save_every=args.save_every,
        keep_state=args.keep_state,
        resume=not args.no_resume,
        seed=args.seed,
        mixed_precision=args.mixed_precision,
        cpu=args.cpu,
    )
    settings.validate()
    return settings


@dataclass
class TrainProgress:
    """Where a run stands; saved with the accelerate state so that a run resumes exactly.

    step: optimiser updates done. epoch: current epoch. batches_done: batches of the
    current epoch this process has consumed. losses: mean loss of every update so far.
    """

    step: int = 0
    epoch: int = 0
    batches_done: int = 0
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0  # wall time spent in the training loop, summed over resumes
    #: per update, the mean of every other scalar a step function logs ("ar", "consistency", ...)
    terms: dict[str, list[float]] = field(default_factory=dict)
    #: learning-curve points appended by an ``after_update`` callback (kept across resumes)
    curve: list[dict[str, Any]] = field(default_factory=list)

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.epoch, self.batches_done = int(state["step"]), int(state["epoch"]), int(state["batches_done"])
        self.losses = [float(x) for x in state.get("losses", [])]
        self.seconds = float(state.get("seconds", 0.0))
        self.terms = {k: [float(x) for x in v] for k, v in state.get("terms", {}).items()}
        self.curve = list(state.get("curve", []))


#: A step function: computes the losses of one micro-batch, calls ``accelerator.backward``
#: itself (possibly several times) and returns the scalars to log, with a "loss" key.
StepFn = Callable[[Any], dict[str, float]]


def make_optimizer(params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters."""
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        raise UserError("nothing to train: every parameter is frozen")
    return torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay)


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float):
    """Linear warm-up over ceil(warmup_ratio * total) updates, then cosine decay to 0."""
    from transformers import get_cosine_schedule_with_warmup

    warmup = math.ceil(warmup_ratio * total_steps)
    return get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=warmup, num_training_steps=max(total_steps, 1))


def epoch_loader(acc: Any, dataset: Sequence[Any], batch_size: int, collate: Callable, seed: int, epoch: int):
    """A prepared DataLoader over ``dataset`` in a seeded per-epoch order (resumable)."""
    from torch.utils.data import DataLoader, Subset

    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)  # datasets that draw per epoch (the CLLM state draw)
    order = list(range(len(dataset)))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    loader = DataLoader(Subset(dataset, order), batch_size=batch_size, shuffle=False, collate_fn=collate)  # type: ignore[arg-type]
    return acc.prepare_data_loader(loader)


def progress_bar(console: Any, enabled: bool):
    """A rich progress bar with a loss column."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
    )


def fit(
    acc: Any,
    model: torch.nn.Module,
    optimizer: Any,
    dataset: Sequence[Any],
    collate: Callable,
    step_fn: StepFn,
    settings: TrainSettings,
    console: Any = None,
    description: str = "training",
    after_update: Callable[[TrainProgress], None] | None = None,
) -> TrainProgress:
    """Run the training loop: gradient accumulation, clipping, cosine schedule, progress,
    periodic ``accelerator.save_state`` into ``out_dir/training_state`` and resume from it.

    ``model`` and ``optimizer`` must be prepared; ``model`` is the module whose gradients are
    accumulated and clipped. Returns the progress record (losses per update).
    """
    settings.validate()
    if len(dataset) == 0:
        raise DataError("no training examples")
    state_dir = Path(settings.out_dir) / STATE_DIR
    probe = epoch_loader(acc, dataset, settings.batch_size, collate, settings.seed, 0)
    updates_per_epoch = math.ceil(len(probe) / settings.grad_accum)
    total = updates_per_epoch * settings.epochs
    if settings.max_steps is not None:
        total = min(total, settings.max_steps)
    scheduler = cosine_schedule(optimizer, total, settings.warmup_ratio)
    progress = TrainProgress()
    acc.register_for_checkpointing(scheduler, progress)
    if settings.resume and state_dir.is_dir():
        acc.load_state(str(state_dir))
        acc.print(f"resumed from {state_dir} at update {progress.step}")
    elif state_dir.is_dir() and acc.is_main_process:
        shutil.rmtree(state_dir)  # --no-resume: start over
    acc.wait_for_everyone()
    model.train()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with progress_bar(console, acc.is_main_process) as bar:
        task = bar.add_task(description, total=total, completed=progress.step, loss="-")
        while progress.step < total and progress.epoch < settings.epochs:
            loader = probe if progress.epoch == 0 else epoch_loader(
                acc, dataset, settings.batch_size, collate, settings.seed, progress.epoch
            )
            run_epoch(acc, model, optimizer, scheduler, loader, step_fn, settings, progress, total, state_dir, bar, task,
                      after_update)
    acc.wait_for_everyone()
    if state_dir.is_dir() and acc.is_main_process and not settings.keep_state:
        shutil.rmtree(state_dir)
    elif settings.keep_state:
        save_training_state(acc, state_dir)
    return progress


def run_epoch(acc, model, optimizer, scheduler, loader, step_fn, settings, progress, total, state_dir, bar, task,
              after_update=None) -> None:
    """One (possibly resumed) pass over ``loader``; updates ``progress`` in place."""
    skipped = acc.skip_first_batches(loader, progress.batches_done) if progress.batches_done else loader
    window: list[float] = []
    term_window: dict[str, list[float]] = {}
    started = time.perf_counter()
    for batch in skipped:
        with acc.accumulate(model):
            logged = step_fn(batch)
            window.append(float(logged["loss"]))
            for key, value in logged.items():
                if key != "loss":
                    term_window.setdefault(key, []).append(float(value))
            if acc.sync_gradients and settings.max_grad_norm > 0:
                acc.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        progress.batches_done += 1
        if not acc.sync_gradients:
            continue
        if not getattr(optimizer, "step_was_skipped", False):
            scheduler.step()
        loss = float(acc.reduce(torch.tensor(sum(window) / len(window), device=acc.device), "mean"))
        window.clear()
        for key, values in term_window.items():
            progress.terms.setdefault(key, []).append(sum(values) / len(values))
        term_window.clear()
        progress.step += 1
        progress.losses.append(loss)
        progress.seconds += time.perf_counter() - started
        bar.update(task, completed=progress.step, loss=f"{loss:.4f}")
        if after_update is not None:
            after_update(progress)
        started = time.perf_counter()
        if settings.save_every and progress.step % settings.save_every == 0 and progress.step < total:
            save_training_state(acc, state_dir)
        if progress.step >= total:
            return
    progress.epoch += 1
    progress.batches_done = 0


def save_training_state(acc: Any, state_dir: Path) -> None:
    """Model, optimiser, schedule, RNG and progress via ``accelerator.save_state``."""
    acc.wait_for_everyone()
    acc.save_state(str(state_dir))


