"""The static-cache engine gives the same tokens as the eager dynamic engine, for every decoder."""

from __future__ import annotations

import pytest
import torch

from cllm_bench.decoders.base import build_decoder
from cllm_bench.engines import Engine
from cllm_bench.registry import DECODERS
from cllm_bench.engines.static import StaticEngine, bucket_size
from cllm_bench.trace import check_trace
from conftest import prompts, tiny_llama

NO_EOS = frozenset({10_000})

SPECS = ["ar", "ar:sync_every=5", "jacobi:n=4", "jacobi:n=16,init=repeat", "lookahead", "prompt_lookup", "speculative:draft=self:layers=1,k=3"]


def available(spec: str) -> bool:
    try:
        DECODERS.get(spec.split(":")[0])
        return True
    except Exception:
        return False


@pytest.fixture(scope="module")
def model32():
    return tiny_llama(seed=11, dtype=torch.float32)


@pytest.mark.parametrize("pad", [False, True])
@pytest.mark.parametrize("spec", SPECS)
def test_static_engine_matches_dynamic(model32, spec, pad):
    if not available(spec):
        pytest.skip(f"{spec} not available")
    static = StaticEngine(model32, max_cache_len=400, pad_to_buckets=pad)  # reused: reset must be complete
    for prompt in prompts(2, seed=4):
        dyn = Engine(model32)
        ref = build_decoder(spec)
        if hasattr(ref, "prepare"):
            from cllm_bench.models import wrap_model

            ref.prepare(wrap_model(model32))
        expected = ref.generate(dyn, prompt, 24, NO_EOS).tokens
        trace = ref.generate(static, prompt, 24, NO_EOS)
        check_trace(trace, 24, NO_EOS)
        assert trace.tokens == expected


def test_static_rollback_many_cycles(model32):
    """Accept/reject cycles as a length update leave the cache as a clean run would."""
    prompt = prompts(1, seed=9)[0]
    text = list(range(20, 36))
    engine = StaticEngine(model32, max_cache_len=128, pad_to_buckets=True)
    engine.prefill(prompt)
    committed = 0
    for cycle in range(6):
        engine.forward(engine.ids_tensor(text[committed : committed + 3] + [50 + cycle, 51]))
        committed += 2
        engine.rollback(len(prompt) + committed)
    engine.keep(len(prompt), list(range(committed)))  # identity keep: no change
    ref = Engine(model32)
    ref.prefill(prompt + text[:committed])
    a = engine.forward(engine.ids_tensor([7, 8]))
    b = ref.forward(ref.ids_tensor([7, 8]))
    assert torch.allclose(a, b, atol=1e-5)
    assert engine.length == ref.length


def test_bucket_size():
    assert bucket_size(1, (1, 2, 4)) == 1
    assert bucket_size(3, (1, 2, 4)) == 4
    assert bucket_size(9, (1, 2, 4)) == 9
