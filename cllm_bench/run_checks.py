"""Checks of a ``cllm-bench run`` configuration that need no model and write nothing.

:func:`check_values` checks every :class:`~cllm_bench.runner.RunConfig` field's type, range
and choices (the flags' and a TOML file's values alike) and the device;
:func:`check_task_args` refuses ``--task-args`` keys that no task of the run reads (each
task declares its keys in ``Task.accepted_args``). The runner calls them, then builds
decoders, tasks and samples and checks the model specs and the run folder — all before
the first byte is written, so a corrected command always finds the folder as it was.

Every failure is a :class:`~cllm_bench.errors.UserError` naming the flag and the fix.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from cllm_bench.errors import UserError

if TYPE_CHECKING:
    from cllm_bench.runner import RunConfig
    from cllm_bench.tasks.base import Task

#: integer fields -> (smallest allowed value or None for any, what to tell the user)
INT_BOUNDS: dict[str, tuple[int | None, str]] = {
    "limit": (0, "0 means all samples; omit it for the default 5"),
    "max_new_tokens": (1, "omit it for the task's default budget"),
    "repeats": (1, "timed repeats per sample; 1 is the least"),
    "warmup": (0, "0 skips the warm-up"),
    "seed": (None, "any integer"),
    "judge_max_new_tokens": (1, "the judge's generation budget"),
}
OPTIONAL_INTS = frozenset({"limit", "max_new_tokens"})
CHOICES: dict[str, tuple[str, ...]] = {
    "dtype": ("auto", "float32", "bfloat16", "float16", "float64"),
    "prompt_style": ("auto", "chat", "raw"),
    "engine": ("auto", "dynamic", "static"),
    "compile": ("auto", "on", "off"),
}
LIST_FIELDS = ("models", "decoders", "tasks")
BOOL_FIELDS = ("allow_code_execution", "log_samples", "exclude_degenerate")
OPTIONAL_STRINGS = ("data_dir", "judge", "output_path")


def flag(name: str) -> str:
    """``max_new_tokens`` -> ``--max-new-tokens``."""
    return "--" + name.replace("_", "-")


def check_values(config: "RunConfig") -> None:
    """Types, ranges and choices of every field, then the device. Raises :class:`UserError`."""
    for name in LIST_FIELDS:
        value = getattr(config, name)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise UserError(f"{flag(name)} must be a list of names, got {value!r}")
        if not value or any(not v.strip() for v in value):
            raise UserError(f"{flag(name)} is empty or holds an empty name ({value!r}); give at least one, e.g. "
                            f"{_example(name)}")  # fmt: skip
    for name, (low, hint) in INT_BOUNDS.items():
        value = getattr(config, name)
        if value is None and name in OPTIONAL_INTS:
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            raise UserError(f"{flag(name)} must be an integer, got {value!r}")
        if low is not None and value < low:
            raise UserError(f"{flag(name)} must be >= {low}, got {value} ({hint})")
    for name, choices in CHOICES.items():
        value = getattr(config, name)
        if value not in choices:
            raise UserError(f"{flag(name)} must be one of {', '.join(choices)}, got {value!r}")
    for name in BOOL_FIELDS:
        if not isinstance(getattr(config, name), bool):
            raise UserError(f"{flag(name)} must be true or false, got {getattr(config, name)!r}")
    for name in (*OPTIONAL_STRINGS, "device"):
        value = getattr(config, name)
        if value is not None and (not isinstance(value, str) or (name != "device" and not value.strip())):
            raise UserError(f"{flag(name)} must be a non-empty text, got {value!r}")
    if not isinstance(config.task_args, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                         for k, v in config.task_args.items()):  # fmt: skip
        raise UserError(f"--task-args must map names to values, got {config.task_args!r}")
    check_device(config.device)


def _example(name: str) -> str:
    return {"models": "--models smollm2-135m", "decoders": "--decoders ar,jacobi:n=16",
            "tasks": "--tasks humaneval"}[name]  # fmt: skip


def check_device(device: str) -> None:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (N below the visible GPU count), ``mps`` when available."""
    import torch

    from cllm_bench.models import resolve_device

    dev = resolve_device(device)  # unknown names and cuda without CUDA
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible; use cuda:0..")
    mps = dev.type == "mps" and torch.backends.mps.is_available()
    if dev.type not in ("cpu", "cuda") and not mps:
        raise UserError(f"--device {device!r} is not a device cllm-bench runs on; use cpu, cuda, cuda:N or auto")


def check_task_args(task_args: Mapping[str, Any], tasks: Mapping[str, "Task"]) -> None:
    """Refuse a ``--task-args`` key that no task of the run accepts, or a value that a task
    accepting the key would refuse (each task declares ``accepted_args``: key -> TaskArg);
    the message lists what each task accepts."""
    accepted = {name: dict(getattr(task, "accepted_args", {}) or {}) for name, task in tasks.items()}
    unknown = [key for key in task_args if not any(key in keys for keys in accepted.values())]
    if unknown:
        listing = "; ".join(f"{name}: {', '.join(f'{k} ({arg.describe()})' for k, arg in keys.items()) or 'none'}"
                            for name, keys in accepted.items())  # fmt: skip
        raise UserError(f"--task-args {', '.join(map(repr, unknown))} is read by no task of this run; "
                        f"accepted keys — {listing}")  # fmt: skip
    for key, value in task_args.items():
        for name, keys in accepted.items():
            problem = keys[key].problem(str(value)) if key in keys else None
            if problem:
                raise UserError(f"--task-args {key}={value!r}: {problem} (task {name})")
