"""The one place engines are built: target engines (single or batched), a draft model's
companion engine, and the run's engine grown to fit each prompt.

``bench``, the runner, the lm-eval bridge and the decoders (speculative's draft engines)
all come here; nothing else names a concrete engine class.

* :func:`resolve_options` turns the user's ``engine``/``compile`` settings ("auto",
  "dynamic"/"static", "on"/"off") and the device into :class:`EngineOptions`: static +
  compiled on CUDA (the fast path), eager dynamic on CPU (the reference path);
* :func:`build_engine` / :func:`build_batch_engine` build from options;
* :func:`build_companion_engine` builds an engine of the same shape and options for
  another model (its own cache);
* :class:`EngineFor` holds the engine of one run and regrows a static one when a prompt
  needs more than its capacity.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from cllm_bench.engines.batch import BatchEngine
from cllm_bench.engines.dynamic import Engine
from cllm_bench.engines.protocols import AnyEngine, BatchedEngine, EngineOptions, SingleEngine, is_batched
from cllm_bench.engines.static import DEFAULT_BUCKETS, StaticEngine
from cllm_bench.engines.static_batch import StaticBatchEngine

#: positions a static cache holds beyond prompt + budget: the widest block a decoder
#: feeds past the budget (Jacobi, lookahead windows, trees) plus bucket padding
HEADROOM = 512


def resolve_options(engine: str, compile: str, device: torch.device, max_cache_len: int = 0) -> EngineOptions:
    """Options from user settings: ``engine`` auto | dynamic | static, ``compile`` auto | on | off.

    auto: static + compiled on CUDA, dynamic eager elsewhere; compiling needs the static
    cache, so ``compile=on`` makes the engine static. A compiled engine pads blocks to
    :data:`~cllm_bench.engines.static.DEFAULT_BUCKETS`.
    """
    kind = engine if engine != "auto" else ("static" if device.type == "cuda" else "dynamic")
    comp = compile == "on" or (compile == "auto" and device.type == "cuda")
    if comp and kind == "dynamic":
        kind = "static"  # compilation needs the static cache
    if kind not in ("dynamic", "static"):
        raise ValueError(f"unknown engine kind {kind!r}; expected auto, dynamic or static")
    return EngineOptions(kind=kind, compile=comp, max_cache_len=max_cache_len,  # type: ignore[arg-type]
                         buckets=DEFAULT_BUCKETS if comp else ())  # fmt: skip


def build_engine(model: Any, options: EngineOptions) -> SingleEngine:
    """A single-sequence engine for ``model``: :class:`StaticEngine` of ``options.max_cache_len``
    positions when ``options.kind == "static"``, else the eager :class:`Engine`."""
    if options.kind == "static":
        return StaticEngine(model, max_cache_len=options.max_cache_len, compile=options.compile, mode=options.mode,
                            buckets=options.buckets or DEFAULT_BUCKETS, pad_to_buckets=bool(options.buckets))  # fmt: skip
    return Engine(model)


def build_batch_engine(model: Any, options: EngineOptions, pad_id: int = 0) -> BatchedEngine:
    """A batched engine for ``model`` (``pad_id`` fed in padded columns), static or eager as
    :func:`build_engine`."""
    if options.kind == "static":
        return StaticBatchEngine(model, max_cache_len=options.max_cache_len, pad_id=pad_id, compile=options.compile,
                                 mode=options.mode, buckets=options.buckets or DEFAULT_BUCKETS,
                                 pad_to_buckets=bool(options.buckets))  # fmt: skip
    return BatchEngine(model, pad_id=pad_id)


def build_any_engine(model: Any, options: EngineOptions, batch_size: int = 1, pad_id: int = 0) -> AnyEngine:
    """:func:`build_batch_engine` when ``batch_size > 1``, else :func:`build_engine`."""
    if batch_size > 1:
        return build_batch_engine(model, options, pad_id)
    return build_engine(model, options)


def build_companion_engine(engine: AnyEngine, model: Any) -> AnyEngine:
    """An engine for ``model`` (a draft) shaped like ``engine``: batched when it is (same
    ``pad_id``), same options (kind, capacity, compilation, buckets); its own cache."""
    if is_batched(engine):
        return build_batch_engine(model, engine.options, pad_id=engine.pad_id)  # type: ignore[union-attr]
    return build_engine(model, engine.options)


class EngineFor:
    """The single-sequence engine a run uses for one model, regrown when a prompt needs more room.

    options: as :func:`resolve_options` gives them (the capacity is chosen here). A
    dynamic engine is built once; a static one is rebuilt with twice the capacity (at
    least ``needed + HEADROOM``, at least 1024) when ``needed`` does not fit.
    """

    def __init__(self, model: Any, options: EngineOptions) -> None:
        self.model = model
        self.options = options
        self.engine: SingleEngine | None = None
        self.capacity = 0

    @property
    def kind(self) -> str:
        return self.options.kind

    @property
    def compile(self) -> bool:
        return self.options.compile

    def fit(self, needed: int) -> SingleEngine:
        """An engine with room for ``needed`` positions (+ :data:`HEADROOM`)."""
        if self.engine is None or (self.kind == "static" and needed + HEADROOM > self.capacity):
            self.capacity = max(2 * self.capacity, needed + HEADROOM, 1024)
            self.engine = build_engine(self.model, replace(self.options, max_cache_len=self.capacity))
        return self.engine
