"""cllm-bench: how much faster is decoding method X than autoregressive decoding on task Y,
and what does it cost in accuracy?

Public extension API (see docs/extending.md and :mod:`cllm_bench.api`): decoders and tasks
register by name — ``from cllm_bench import register_decoder, Decoder, OutputBuffer, Trace``.
The names are resolved lazily, so ``import cllm_bench`` stays cheap (torch is imported only
when ``Engine`` is asked for).
"""

from __future__ import annotations

import importlib
from typing import Any

from cllm_bench.errors import UserError

__version__ = "0.1.0"

#: public name -> module defining it (resolved on first access, see ``__getattr__``)
_LAZY: dict[str, str] = {
    "register_decoder": "cllm_bench.registry",
    "register_task": "cllm_bench.registry",
    "DECODERS": "cllm_bench.registry",
    "TASKS": "cllm_bench.registry",
    "Decoder": "cllm_bench.decoders.base",
    "OutputBuffer": "cllm_bench.decoders.base",
    "build_decoder": "cllm_bench.decoders.base",
    "new_outputs": "cllm_bench.decoders.base",
    "greedy_start": "cllm_bench.decoders.base",
    "greedy_start_batch": "cllm_bench.decoders.base",
    "BatchEngine": "cllm_bench.engines.batch",
    "Engine": "cllm_bench.engines.dynamic",
    "SingleEngine": "cllm_bench.engines.protocols",
    "BatchedEngine": "cllm_bench.engines.protocols",
    "Trace": "cllm_bench.trace",
    "Step": "cllm_bench.trace",
    "JacobiBlock": "cllm_bench.trace",
    "TraceError": "cllm_bench.trace",
    "check_trace": "cllm_bench.trace",
    "Task": "cllm_bench.tasks.base",
    "TaskOptions": "cllm_bench.tasks.base",
    "Sample": "cllm_bench.tasks.base",
    "encode_chat": "cllm_bench.tasks.base",
    "encode_raw": "cllm_bench.tasks.base",
    "read_jsonl": "cllm_bench.tasks.data_files",
    "DataError": "cllm_bench.errors",
}

__all__ = ["UserError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    """Resolve a public API name on first use (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cllm_bench' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
