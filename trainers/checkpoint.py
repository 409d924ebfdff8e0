"""Saving what training produced: the HF checkpoint, the run manifest (command, versions,
settings, losses, throughput), and the checks that trajectories belong to the model."""

from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from cllm_bench.errors import UserError

from cllm_bench.trainers.loop import TrainProgress, TrainSettings

MANIFEST_FILE = "manifest.json"


def check_trajectories_match(manifest: dict[str, Any], loaded: Any, model_spec: str) -> None:
    """UserError when a trajectories folder was collected with another model / vocabulary
    than the one about to be trained (its manifest records both)."""
    if not manifest:
        return
    vocab = manifest.get("vocab_size")
    if vocab is not None and int(vocab) != int(loaded.model.config.vocab_size):
        raise UserError(
            f"the trajectories were collected with a model of vocabulary {vocab}, but {model_spec} has "
            f"{loaded.model.config.vocab_size}; collect them again with `cllm-bench train trajectories --model {model_spec}`"
        )
    recorded = manifest.get("model_fingerprint")
    if recorded is not None and recorded != model_fingerprint(loaded):
        raise UserError(
            f"the trajectories were collected with model {manifest.get('model')!r} (another model or tokenizer than "
            f"{model_spec}); train the model they were collected with, or collect them again with --model {model_spec}"
        )


def model_fingerprint(loaded: Any) -> str:
    """Architecture + vocabulary + tokenizer identity of a loaded model (not its weights:
    a CLLM resumed from a checkpoint of the same base still matches)."""
    import hashlib

    cfg = loaded.model.config
    tok = loaded.tokenizer
    parts = [cfg.model_type, cfg.vocab_size, getattr(cfg, "hidden_size", None), getattr(cfg, "num_hidden_layers", None),
             None if tok is None else len(tok), None if tok is None else tok.convert_ids_to_tokens(list(range(min(64, len(tok)))))]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def throughput(progress: "TrainProgress", grad_accum: int) -> dict[str, Any]:
    """Records (prompts) and consistency-loss block positions per second of training."""
    seconds = progress.seconds or None
    records = sum(progress.terms.get("records", [])) * grad_accum
    positions = sum(progress.terms.get("positions", [])) * grad_accum
    return {
        "train_seconds": round(progress.seconds, 3),
        "records": records or None,
        "records_per_s": round(records / seconds, 4) if seconds and records else None,
        "consistency_positions": positions or None,
        "consistency_positions_per_s": round(positions / seconds, 3) if seconds and positions else None,
    }


# --------------------------------------------------------------------------- saving
def save_hf_checkpoint(acc: Any, model: torch.nn.Module, tokenizer: Any, out_dir: Path, dtype: str | None = None) -> None:
    """``save_pretrained`` of the (unwrapped) model and the tokenizer into ``out_dir``.

    dtype: "float32" / "bfloat16" / "float16" to cast the saved weights (None: as trained).
    """
    from cllm_bench.models import DTYPES

    acc.wait_for_everyone()
    unwrapped = acc.unwrap_model(model)
    state = acc.get_state_dict(model)
    if acc.is_main_process:
        if dtype is not None:
            if dtype not in DTYPES:
                raise UserError(f"--save-dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
            state = cast_state_dict(state, DTYPES[dtype])
            unwrapped.config.dtype = dtype
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        unwrapped.config.use_cache = True
        unwrapped.save_pretrained(str(out_dir), state_dict=state)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(out_dir))
    acc.wait_for_everyone()


def peak_gpu_memory_gib(acc: Any) -> float | None:
    """Peak memory allocated by torch on this process's GPU since the loop started (None on CPU)."""
    device = getattr(acc, "device", None)
    if device is None or getattr(device, "type", "cpu") != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 3)


def cast_state_dict(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Floating tensors cast to ``dtype``; tensors that shared storage (tied embeddings)
    still share it afterwards, so ``save_pretrained`` keeps writing them once."""
    done: dict[tuple[int, tuple[int, ...]], torch.Tensor] = {}
    out = {}
    for key, value in state.items():
        if not value.is_floating_point():
            out[key] = value
            continue
        ident = (value.data_ptr(), tuple(value.shape))
        if ident not in done:
            done[ident] = value.to(dtype)
        out[key] = done[ident]
    return out


def package_versions() -> dict[str, str]:
    import accelerate
    import transformers

    import cllm_bench

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "cllm_bench": getattr(cllm_bench, "__version__", "?"),
    }


def write_manifest(out_dir: Path, kind: str, **fields: Any) -> Path:
    """Write ``out_dir/manifest.json``: what was trained/collected, how, when, with what."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = {
        "kind": kind,
        "command": " ".join(sys.argv),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": package_versions(),
        **fields,
    }
    path = out_dir / MANIFEST_FILE
    path.write_text(json.dumps(manifest, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def settings_summary(settings: TrainSettings, acc: Any, progress: TrainProgress) -> dict[str, Any]:
    """The manifest fields every trainer writes."""
    return {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()},
        "num_processes": acc.num_processes,
        "mixed_precision": str(acc.mixed_precision),
        "device": str(acc.device),
        "updates": progress.step,
        "train_seconds": round(progress.seconds, 3),
        "peak_gpu_memory_gib": peak_gpu_memory_gib(acc),
        "final_loss": progress.losses[-1] if progress.losses else None,
        "first_loss": progress.losses[0] if progress.losses else None,
        "losses": progress.losses,
    }


