"""A persistent ``torch.compile`` cache: the compile warm-up is paid once per machine.

On a CPU, compiling the decode forward costs minutes, nearly all of it in inductor: lowering
the graph, generating C++ kernels and building them with the system compiler. Inductor
keeps what it builds in an on-disk cache (FX graphs, AOTAutograd entries, the kernels' C++
sources and the shared objects built from them), keyed by the graph, the input shapes,
inductor's config (thread count included) and the torch/compiler versions. Its default
place is ``/tmp/torchinductor_<user>``, which a reboot or a tmp cleaner empties, so a
machine pays the compile again and again.

:func:`persistent_compile_cache` points inductor at ``<cllm-bench cache>/compile/inductor``
(``$CLLM_BENCH_CACHE``, default ``~/.cache/cllm-bench``) for the duration of a command,
through inductor's own setting, the ``TORCHINDUCTOR_CACHE_DIR`` environment variable
(restored afterwards). A second process compiling the same engine shapes then finds every
kernel built (and every graph, except frozen ones: inductor does not keep the graphs it
compiles with weight freezing, the static engine's CPU path, so a second process still
traces and lowers the graph but runs no C++ compiler). Measured in ``results/bench/``.
A user who set ``TORCHINDUCTOR_CACHE_DIR`` keeps their directory.

Why not torch's portable "mega-cache" (``torch.compiler.save_cache_artifacts``) alone:
on CPU it carries the generated Python wrappers but not the built kernels, so a process
that loads it into an empty cache still runs the C++ compiler for every kernel (dynamo's
compile-time metrics on this project's CPU: loading the wrappers, i.e. building their
kernels, took most of that warm-up).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cllm_bench.cache_dir import cache_root

#: inductor's own setting for its cache directory
INDUCTOR_ENV = "TORCHINDUCTOR_CACHE_DIR"


@dataclass(frozen=True)
class CompileCache:
    """Where compiled graphs and kernels go, as a command found it before compiling.

    directory: inductor's cache directory; source: ``"cllm-bench"`` (ours, persistent),
    ``"TORCHINDUCTOR_CACHE_DIR"`` (the user's) or ``"torch default"`` (``/tmp``, outside a
    :func:`persistent_compile_cache` block); entries_before: files already cached then
    (FX graphs, kernels and their builds; 0: a cold cache, the process pays the full compile).
    """

    directory: Path
    source: str
    entries_before: int

    def as_dict(self) -> dict[str, object]:
        return {"dir": str(self.directory), "source": self.source, "entries_before": self.entries_before,
                "warm": self.entries_before > 0}  # fmt: skip


def default_compile_cache_dir(root: Path | None = None) -> Path:
    """``<root>/compile/inductor``; root defaults to :func:`~cllm_bench.cache_dir.cache_root`."""
    return (root or cache_root()) / "compile" / "inductor"


def cached_entries(directory: Path) -> int:
    """Files in an inductor cache directory (FX graphs, C++ kernel sources and their shared
    objects, AOTAutograd entries; lock files not counted); 0 when it is absent. Frozen
    graphs (the CPU path) are not kept as FX graphs, only their kernels are."""
    if not directory.is_dir():
        return 0
    return sum(1 for p in directory.rglob("*") if p.is_file() and "locks" not in p.parts)


def describe_compile_cache(env: Mapping[str, str] | None = None, root: Path | None = None) -> CompileCache:
    """The cache inductor will use now (read from ``env``, default ``os.environ``) and how
    many entries it holds. Call it before compiling to know whether the warm-up is cold."""
    env = os.environ if env is None else env
    ours = default_compile_cache_dir(root)
    configured = env.get(INDUCTOR_ENV)
    if not configured:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        directory, source = Path(default_cache_dir()), "torch default"
    else:
        directory = Path(configured)
        source = "cllm-bench" if directory.resolve() == ours.resolve() else INDUCTOR_ENV
    return CompileCache(directory, source, cached_entries(directory))


@contextmanager
def persistent_compile_cache(env: MutableMapping[str, str] | None = None, root: Path | None = None) -> Iterator[Path]:
    """Inductor's cache directory set to the persistent one for the ``with`` block; yields it.

    env: the environment to read and set (default ``os.environ``; tests pass a dict);
    root: the cllm-bench cache root (default ``$CLLM_BENCH_CACHE`` or ``~/.cache/cllm-bench``).
    The user's ``TORCHINDUCTOR_CACHE_DIR`` wins when set. On exit the variable is restored
    to what it was (removed when it was unset). Nothing is created until inductor writes.
    """
    env = os.environ if env is None else env
    if env.get(INDUCTOR_ENV):
        yield Path(env[INDUCTOR_ENV])
        return
    directory = default_compile_cache_dir(root)
    env[INDUCTOR_ENV] = str(directory)
    try:
        yield directory
    finally:
        env.pop(INDUCTOR_ENV, None)  # inductor may have rewritten it (as an absolute path)
