"""ar == hf, jacobi == ar token for token on tiny random models (float64 / float32)."""

from __future__ import annotations

import pytest
import torch

from cllm_bench.decoders.base import build_decoder
from cllm_bench.engines import Engine
from cllm_bench.trace import check_trace
from conftest import prompts, tiny_llama

NO_EOS = frozenset({10_000})  # an id the vocabulary never produces


def run(model, spec: str, prompt: list[int], max_new: int, eos=NO_EOS):
    engine = Engine(model)
    trace = build_decoder(spec).generate(engine, prompt, max_new, eos)
    check_trace(trace, max_new, eos)
    if not spec.startswith("hf"):  # hf runs model.generate, not the engine
        assert engine.forwards == sum(1 for s in trace.steps if s.kind != "draft")
    return trace


@pytest.mark.parametrize("model_fixture", ["llama64", "qwen64"])
@pytest.mark.parametrize("max_new", [1, 9, 40])
def test_ar_equals_hf_generate(request, model_fixture, max_new):
    model = request.getfixturevalue(model_fixture)
    for prompt in prompts(3):
        ar = run(model, "ar", prompt, max_new)
        hf = run(model, "hf", prompt, max_new)
        assert ar.tokens == hf.tokens
        assert len(ar.tokens) == max_new
        assert ar.stop_reason == "length"


@pytest.mark.parametrize("model_fixture", ["llama64", "qwen64"])
@pytest.mark.parametrize("n", [1, 2, 7, 16])
@pytest.mark.parametrize("max_new", [5, 33])
def test_jacobi_equals_ar(request, model_fixture, n, max_new):
    model = request.getfixturevalue(model_fixture)
    for seed, prompt in enumerate(prompts(3, seed=n)):
        ar = run(model, "ar", prompt, max_new)
        jac = run(model, f"jacobi:n={n},seed={seed}", prompt, max_new)
        assert jac.tokens == ar.tokens, f"n={n} prompt {seed}"
        assert all(len(b.states[0]) <= n for b in jac.blocks)


@pytest.mark.parametrize("n", [2, 7, 16])
def test_jacobi_stops_at_eos_mid_block(llama64, n):
    """EOS = a token that AR emits mid-way: every decoder stops right after it."""
    prompt = prompts(1, seed=5)[0]
    free = run(llama64, "ar", prompt, 40).tokens
    pos = 11
    eos = frozenset({free[pos]})
    stop = free.index(free[pos]) + 1  # first occurrence of that token
    ar = run(llama64, "ar", prompt, 40, eos)
    assert ar.tokens == free[:stop] and ar.stop_reason == "eos"
    for init in ("random", "repeat"):
        jac = run(llama64, f"jacobi:n={n},init={init}", prompt, 40, eos)
        assert jac.tokens == ar.tokens
        assert jac.stop_reason == "eos"
    hf = run(llama64, "hf", prompt, 40, eos)
    assert hf.tokens == ar.tokens


def test_jacobi_float32_matches_ar():
    model = tiny_llama(seed=3, dtype=torch.float32)
    for prompt in prompts(2, seed=3):
        assert run(model, "jacobi:n=8", prompt, 30).tokens == run(model, "ar", prompt, 30).tokens


def test_jacobi_on_repetitive_model_accepts_many_tokens_per_forward():
    """A model that always predicts the same token converges in one iteration per block."""
    model = tiny_llama(seed=4)
    with torch.no_grad():
        model.model.norm.weight.fill_(0.0)  # final hidden state 0 -> all logits 0 -> argmax is token 0
    prompt = prompts(1)[0]
    ar = run(model, "ar", prompt, 32)
    assert set(ar.tokens) == {0}
    jac = run(model, "jacobi:n=8,init=repeat", prompt, 32)
    assert jac.tokens == ar.tokens
    forwards = sum(1 for s in jac.steps if s.kind != "draft")
    assert len(jac.tokens) / forwards > 4


def test_ar_trace_is_one_token_per_forward(llama64):
    trace = run(llama64, "ar", prompts(1)[0], 12)
    assert [s.accepted for s in trace.steps] == [1] * 12
    assert trace.steps[0].kind == "prefill"


@pytest.mark.parametrize("model_fixture", ["llama64", "qwen64"])
@pytest.mark.parametrize("k", [2, 4, 16])
@pytest.mark.parametrize("max_new", [1, 7, 33])
def test_ar_sync_every_equals_ar(request, model_fixture, k, max_new):
    """Chunks of k forwards read once: same tokens; a chunk never passes the budget."""
    model = request.getfixturevalue(model_fixture)
    for prompt in prompts(2, seed=k):
        ar = run(model, "ar", prompt, max_new)
        chunked = run(model, f"ar:sync_every={k}", prompt, max_new)
        assert chunked.tokens == ar.tokens
        assert len(chunked.steps) == len(ar.steps)  # no forward past a budget


@pytest.mark.parametrize("k", [2, 5, 16])
def test_ar_sync_every_stops_at_eos_mid_chunk_and_rolls_back(llama64, k):
    """EOS inside a chunk: tokens after it are discarded, the forwards past it are recorded
    with nothing accepted, and the cache is left as k = 1 leaves it."""
    prompt = prompts(1, seed=5)[0]
    free = run(llama64, "ar", prompt, 40).tokens
    eos = frozenset({free[11]})
    plain_engine, chunk_engine = Engine(llama64), Engine(llama64)
    ar = build_decoder("ar").generate(plain_engine, prompt, 40, eos)
    chunked = build_decoder(f"ar:sync_every={k}").generate(chunk_engine, prompt, 40, eos)
    check_trace(chunked, 40, eos)
    assert chunked.tokens == ar.tokens and chunked.stop_reason == "eos"
    assert chunk_engine.length == plain_engine.length
    wasted = [s for s in chunked.steps if s.accepted == 0]
    assert len(wasted) <= k - 1 and chunk_engine.forwards == len(chunked.steps)


def test_ar_sync_every_must_be_positive():
    from cllm_bench.errors import UserError

    with pytest.raises(UserError, match="sync_every must be >= 1"):
        build_decoder("ar:sync_every=0")


def test_ar_sync_every_on_the_compiled_static_engine_on_cpu():
    """torch.compile (inductor, CPU) of the static engine: the chunked loop gives ar's tokens."""
    from cllm_bench.engines.static import StaticEngine

    model = tiny_llama(seed=3, dtype=torch.float32)
    prompt = prompts(1, seed=2)[0]
    expected = build_decoder("ar").generate(Engine(model), prompt, 12, NO_EOS).tokens
    engine = StaticEngine(model, max_cache_len=256, compile=True, buckets=(1, 16, 32))
    with torch.inference_mode():
        got = build_decoder("ar:sync_every=4").generate(engine, prompt, 12, NO_EOS).tokens
    assert got == expected


def test_hf_compile_true_compiles_on_cpu_too():
    """transformers compiles a static cache's forward by itself on accelerators only; our
    hf:cache=static,compile=true sets its per-instance flag so a CPU run is compiled as labelled."""
    dec = build_decoder("hf:cache=static,compile=true")
    config = dec.generation_config(8, frozenset({2}), 0)
    assert config.cache_implementation == "static" and not config.disable_compile
    assert config.compile_config is not None and config.compile_config._compile_all_devices is True
    plain = build_decoder("hf:cache=static").generation_config(8, frozenset({2}), 0)
    assert plain.disable_compile and plain.compile_config is None


def test_hf_static_compiled_on_cpu_equals_ar():
    model = tiny_llama(seed=4, dtype=torch.float32)
    prompt = prompts(1, seed=3)[0]
    ar = run(model, "ar", prompt, 10)
    compiled = run(model, "hf:cache=static,compile=true", prompt, 10)
    assert compiled.tokens == ar.tokens
