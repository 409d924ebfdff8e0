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
