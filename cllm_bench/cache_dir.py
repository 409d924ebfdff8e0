"""Where cllm-bench keeps what it builds from downloads: converted GGUF models and
installed (assembled) models. ``$CLLM_BENCH_CACHE``, default ``~/.cache/cllm-bench``.

Its own module so that :mod:`cllm_bench.models` and :mod:`cllm_bench.model_install` both
read it without importing each other both ways.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """The cache folder (not created here)."""
    return Path(os.environ.get("CLLM_BENCH_CACHE", Path.home() / ".cache" / "cllm-bench"))
