"""The engine factory: user settings -> options -> engines; companions mirror their target."""

from __future__ import annotations

import torch

from cllm_bench.engines import (
    HEADROOM,
    BatchEngine,
    Engine,
    EngineFor,
    EngineOptions,
    StaticBatchEngine,
    StaticEngine,
    build_any_engine,
    build_companion_engine,
    build_engine,
    is_batched,
    resolve_options,
)
from conftest import tiny_llama

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_resolve_options_auto_follows_the_device():
    assert resolve_options("auto", "auto", CPU) == EngineOptions(kind="dynamic")
    cuda = resolve_options("auto", "auto", CUDA, max_cache_len=64)
    assert (cuda.kind, cuda.compile, cuda.max_cache_len) == ("static", True, 64) and cuda.buckets
    assert resolve_options("dynamic", "on", CPU).kind == "static"  # compiling needs the static cache
    assert resolve_options("static", "off", CPU) == EngineOptions(kind="static")


def test_engines_carry_their_options_and_shape():
    model = tiny_llama(seed=1, dtype=torch.float32)
    static = EngineOptions(kind="static", max_cache_len=128)
    for batch, options, cls in [(1, EngineOptions(), Engine), (1, static, StaticEngine),
                                (2, EngineOptions(), BatchEngine), (2, static, StaticBatchEngine)]:  # fmt: skip
        engine = build_any_engine(model, options, batch_size=batch)
        assert type(engine) is cls and engine.options == options and is_batched(engine) == (batch > 1)
        companion = build_companion_engine(engine, tiny_llama(seed=2, dtype=torch.float32))
        assert type(companion) is cls and companion.options == options and companion.model is not model


def test_static_engine_is_usable_right_after_construction():
    model = tiny_llama(seed=1, dtype=torch.float32)
    engine = build_engine(model, EngineOptions(kind="static", max_cache_len=64))
    assert engine.length == 0 and engine.forwards == 0
    engine.prefill([1, 2, 3])
    assert engine.length == 3 and engine.forwards == 1


def test_engine_for_regrows_a_static_engine():
    model = tiny_llama(seed=1, dtype=torch.float32)
    engines = EngineFor(model, EngineOptions(kind="static"))
    first = engines.fit(10)
    assert engines.fit(1024 - HEADROOM) is first
    bigger = engines.fit(2000)
    assert bigger is not first and bigger.options.max_cache_len >= 2000 + HEADROOM
    dynamic = EngineFor(model, EngineOptions())
    assert dynamic.fit(10) is dynamic.fit(5000)
