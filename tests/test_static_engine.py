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


@pytest.mark.parametrize("make", ["dynamic", "static", "static-padded"])
def test_forward_greedy_equals_forward_argmax(model32, make):
    """forward_greedy: the same forward (cache, length, count) returning only the argmax ids,
    for a causal block and a tree block at explicit positions."""
    def engine():
        if make == "dynamic":
            return Engine(model32)
        return StaticEngine(model32, max_cache_len=128, pad_to_buckets=make == "static-padded")

    prompt = prompts(1, seed=5)[0]
    tree = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 1, 1]], dtype=torch.bool)
    a, b = engine(), engine()
    for e in (a, b):
        e.prefill(prompt)
    with torch.inference_mode():
        for ids, positions, mask in (([11, 12, 13], None, None), ([21, 22, 23, 24], [0, 1, 1, 2], tree), ([31], None, None)):
            pos = None if positions is None else (torch.tensor(positions) + a.length).unsqueeze(0)
            want = a.forward(a.ids_tensor(ids), positions=pos, tree_mask=mask).argmax(dim=-1)
            got = b.forward_greedy(b.ids_tensor(ids), positions=pos, tree_mask=mask)
            assert got.shape == (1, len(ids)) and got.dtype == torch.long
            assert got.tolist() == want.tolist()
            assert (a.length, a.forwards) == (b.length, b.forwards)


@pytest.mark.parametrize("spec", ["ar", "ar:sync_every=4", "jacobi:n=4", "lookahead:w=3,n=3,g=2"])
def test_greedy_decoders_on_the_compiled_engine_use_only_the_argmax_graph(spec):
    """torch.compile (inductor, CPU): greedy decoders get ar's tokens from the compiled
    argmax step alone; the logits graph is never called (so never compiled)."""
    model = tiny_llama(seed=3, dtype=torch.float32)
    prompt = prompts(1, seed=2)[0]
    expected = build_decoder("ar").generate(Engine(model), prompt, 12, NO_EOS).tokens
    engine = StaticEngine(model, max_cache_len=256, compile=True, buckets=(1, 16, 32))

    def no_logits(*args):
        raise AssertionError("a greedy decoder asked the compiled engine for logits")

    engine._decode_forward = no_logits
    with torch.inference_mode():
        got = build_decoder(spec).generate(engine, prompt, 12, NO_EOS).tokens
    assert got == expected
