"""Engines: own a model and its KV cache; decoders talk to the model only through them.

* :mod:`~cllm_bench.engines.protocols` — what a decoder may call (:class:`SingleEngine`,
  :class:`BatchedEngine`) and :class:`EngineOptions`;
* :mod:`~cllm_bench.engines.dynamic` — :class:`Engine`, eager over a dynamic cache (the reference);
* :mod:`~cllm_bench.engines.static` — :class:`StaticEngine`, static cache, optionally compiled;
* :mod:`~cllm_bench.engines.batch` / :mod:`~cllm_bench.engines.static_batch` — the batched pair;
* :mod:`~cllm_bench.engines.kv_cache` — the one place that touches transformers' cache API;
* :mod:`~cllm_bench.engines.factory` — the one place engines are built.
"""

from cllm_bench.engines.batch import BatchEngine, pad_batch
from cllm_bench.engines.dynamic import Engine
from cllm_bench.engines.factory import (
    HEADROOM,
    EngineFor,
    build_any_engine,
    build_batch_engine,
    build_companion_engine,
    build_engine,
    resolve_options,
)
from cllm_bench.engines.protocols import AnyEngine, BatchedEngine, EngineOptions, SingleEngine, is_batched
from cllm_bench.engines.static import StaticEngine
from cllm_bench.engines.static_batch import StaticBatchEngine

__all__ = [
    "HEADROOM",
    "AnyEngine",
    "BatchEngine",
    "BatchedEngine",
    "Engine",
    "EngineFor",
    "EngineOptions",
    "SingleEngine",
    "StaticBatchEngine",
    "StaticEngine",
    "build_any_engine",
    "build_batch_engine",
    "build_companion_engine",
    "build_engine",
    "is_batched",
    "pad_batch",
    "resolve_options",
]
