"""Lookahead decoding: lossless vs ar, the 2-D mask, warm-up, pool acceptance, cap option."""

from __future__ import annotations

import pytest
import torch

from cllm_bench.baselines.lookahead import column_ngrams, slide_window, step_layout
from conftest import prompts
from test_baselines import CYCLE, cyclic_model, eos_mid_output, run

SPECS = [
    "lookahead",
    "lookahead:w=1,n=2,g=1",
    "lookahead:w=3,n=3,g=2,cap=true",
    "lookahead:w=4,n=6,g=3,pool_from_prompt=false",
]


@pytest.mark.parametrize("model_fixture", ["llama64", "qwen64"])
@pytest.mark.parametrize("spec", SPECS)
def test_lookahead_equals_ar(request, model_fixture, spec):
    model = request.getfixturevalue(model_fixture)
    for seed, prompt in enumerate(prompts(3, seed=7)):
        for max_new in (1, 9, 41):
            ar = run(model, "ar", prompt, max_new)
            trace = run(model, spec + ("," if ":" in spec else ":") + f"seed={seed}", prompt, max_new)
            assert trace.tokens == ar.tokens, (spec, seed, max_new)


@pytest.mark.parametrize("spec", ["lookahead", "lookahead:w=2,n=4,g=5,cap=true"])
def test_lookahead_eos_mid_output(qwen64, spec):
    prompt = prompts(1, seed=9)[0]
    eos, expected = eos_mid_output(qwen64, prompt, pos=13)
    trace = run(qwen64, spec, prompt, 40, eos)
    assert trace.tokens == expected and trace.stop_reason == "eos"


def test_lookahead_float32_matches_ar():
    from conftest import tiny_llama

    model = tiny_llama(seed=3, dtype=torch.float32)
    for prompt in prompts(2, seed=3):
        assert run(model, "lookahead", prompt, 30).tokens == run(model, "ar", prompt, 30).tokens


def _attended_positions(layout):
    """Per row: sorted relative positions of the new tokens it attends to."""
    pos = layout.offsets.tolist()
    return [sorted(pos[j] for j in range(len(pos)) if layout.mask[i, j]) for i in range(len(pos))]


@pytest.mark.parametrize("w,n,cands", [(5, 4, 2), (1, 3, 1), (3, 2, 3), (7, 5, 0)])
def test_every_row_sees_one_consecutive_chain(w, n, cands):
    """The mask gives each fed token exactly the positions 0..its own, once each (a valid sequence)."""
    levels = [list(range(10, 10 + w - 1))] + [list(range(100 * ell, 100 * ell + w)) for ell in range(1, n - 1)]
    candidates = [tuple(range(50 + 10 * c, 50 + 10 * c + n - 1)) for c in range(cands)]
    layout = step_layout(1, levels, candidates, n - 1)
    assert len(layout.ids) == (n - 1) * w + cands * (n - 1)  # the reference's cost per step
    for row, seen in enumerate(_attended_positions(layout)):
        assert seen == list(range(layout.offsets[row].item() + 1)), row
    # level-l token j sits at j + l and sees column j of every lower level
    b = layout.width
    for ell in range(1, n - 1):
        for j in range(w):
            row = ell * b + j
            assert layout.offsets[row] == j + ell
            assert all(layout.mask[row, lvl * b + j] for lvl in range(1, ell + 1))


def test_warm_up_grows_the_window_to_its_steady_shape():
    w, n = 4, 5
    levels = [list(range(w + n - 3))]
    for step in range(n - 2):
        b = len(levels[0]) + 1
        levels = slide_window(levels, list(range(b)), full=False)
    assert len(levels) == n - 1
    assert [len(lvl) for lvl in levels] == [w - 1] + [w] * (n - 2)
    steady = slide_window(levels, list(range(200, 200 + w)), full=True)
    assert [len(lvl) for lvl in steady] == [w - 1] + [w] * (n - 2)
    assert steady[-1] == list(range(200, 200 + w)) and steady[0] == levels[1][1:]
    grams = column_ngrams(7, levels, list(range(200, 200 + w)))
    assert len(grams) == w and grams[0][0] == 7 and all(len(cont) == n - 1 for _, cont in grams)


def test_lookahead_trace_records_warm_up_and_cost(llama64):
    trace = run(llama64, "lookahead:w=5,n=4,g=3", prompts(1)[0], 30)
    decode = [s for s in trace.steps if s.kind == "target"]
    assert [s.info["warmup"] for s in decode[:3]] == [True, True, False]
    assert all(s.accepted == 1 for s in decode[:2])
    for s in decode[2:]:
        assert s.fed == 3 * 5 + s.info["candidates"] * 3
        assert s.proposed == s.info["candidates"] * 3
        assert s.info["hit"] == (s.info["accepted_len"] > 1)


def test_pool_accepts_several_tokens_per_step_on_a_loop():
    model = cyclic_model()
    prompt = [20, 30, 40]
    ar = run(model, "ar", prompt, 80)
    assert set(ar.tokens[2:]) == set(CYCLE)
    trace = run(model, "lookahead:w=5,n=5,g=5,pool_from_prompt=false", prompt, 80)
    assert trace.tokens == ar.tokens
    steady = [s for s in trace.steps if s.kind == "target" and not s.info["warmup"]]
    assert sum(s.accepted for s in steady) / len(steady) > 2
    assert max(s.accepted for s in steady) == 5  # N-1 candidate tokens + the bonus
    assert any(s.info["hit"] for s in steady)


def test_cap_accepts_at_most_n_minus_1():
    model = cyclic_model()
    prompt = [20, 30, 40] + CYCLE
    capped = run(model, "lookahead:w=5,n=4,g=5,cap=true", prompt, 60)
    free = run(model, "lookahead:w=5,n=4,g=5", prompt, 60)
    assert capped.tokens == free.tokens
    assert max(s.accepted for s in capped.steps if s.kind == "target") == 3
    assert max(s.accepted for s in free.steps if s.kind == "target") == 4
    assert len(capped.steps) > len(free.steps)


def test_short_prompt_near_the_budget(llama64):
    for prompt in ([5], [5, 6]):
        for max_new in (1, 2, 3, 6):
            for spec in ("lookahead", "lookahead:w=2,n=8,g=2"):
                assert run(llama64, spec, prompt, max_new).tokens == run(llama64, "ar", prompt, max_new).tokens
