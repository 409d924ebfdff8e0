"""Acceptance analysis from traces: hand-made traces recomputed by hand, real decoders' invariants."""

from __future__ import annotations

import pytest

from cllm_bench import metrics
from cllm_bench.acceptance import (
    AcceptanceCounts,
    acceptance_counts,
    acceptance_summary,
    counts_from_dict,
    proposal_depth,
    trace_acceptance,
)
from cllm_bench.decoders.base import build_decoder
from cllm_bench.engines import Engine
from cllm_bench.trace import Step, Trace
from conftest import prompts

NO_EOS = frozenset({10_000})


def chain_trace(explicit_last: bool = True) -> Trace:
    """prefill, then 4 chain forwards: (depth, emitted) = (3, 3), (3, 4), (3, 1), (2, 2); the
    last one records ``draft_accepted=1`` when ``explicit_last``."""
    trace = Trace(prompt_len=5, stop_reason="length")
    trace.record("prefill", fed=5, accepted=1)
    for depth, emitted in ((3, 3), (3, 4), (3, 1)):
        trace.record("target", fed=depth + 1, accepted=emitted, proposed=depth)
    trace.record("target", fed=3, accepted=2, proposed=2, **({"draft_accepted": 1} if explicit_last else {}))
    trace.tokens = list(range(sum(s.accepted for s in trace.steps)))
    return trace


def test_chain_rates_recomputed_by_hand():
    counts = acceptance_counts([chain_trace()])
    # m (draft accepted) = emitted - 1 = 2, 3, 0, 1
    # position 1: all 4 forwards try it, 3 accept (m >= 1)
    # position 2: forwards with depth >= 2 and m >= 1 -> 3 try, 2 accept (m >= 2)
    # position 3: depth >= 3 and m >= 2 -> forwards 1 and 2 try (the last has depth 2), 1 accepts
    assert counts.trials == [4, 3, 2]
    assert counts.accepts == [3, 2, 1]
    assert counts.per_position() == [pytest.approx(3 / 4), pytest.approx(2 / 3), pytest.approx(1 / 2)]
    assert counts.accepted_length_with_bonus() == pytest.approx((3 + 4 + 1 + 2) / 4)
    assert counts.accepted_length_draft_only() == pytest.approx((2 + 3 + 0 + 1) / 4)
    assert counts.histogram == {1: 1, 2: 1, 3: 1, 4: 1}
    summary = acceptance_summary(counts)
    assert summary["accepted_length_with_bonus"] - summary["accepted_length_draft_only"] == pytest.approx(1.0)
    assert summary["accepted_length_histogram"] == {"1": 1, "2": 1, "3": 1, "4": 1}
    assert summary["acceptance_position_trials"] == [4, 3, 2]


def test_the_last_forward_is_censored_when_m_is_inferred():
    counts = acceptance_counts([chain_trace(explicit_last=False)])
    # the output ended in the last forward (depth 2, emitted 2 -> m >= 1): position 1 is an
    # observed accept, but position 2 is not an observed rejection (the end may have cut it)
    assert counts.trials == [4, 2, 2]
    assert counts.accepts == [3, 2, 1]


def test_explicit_draft_accepted_wins_over_emitted():
    trace = Trace(prompt_len=3, stop_reason="eos")
    trace.record("prefill", fed=3, accepted=1)
    trace.record("target", fed=5, accepted=2, proposed=4, draft_accepted=3)  # EOS cut the run after 2 tokens
    (rec,) = trace_acceptance(trace)
    assert (rec.depth, rec.draft_accepted, rec.emitted, rec.censored) == (4, 3, 2, False)


def test_tree_positions_follow_the_accepted_path():
    """Medusa-like: 10 nodes of depth <= 4; accepted_len = accepted path + bonus."""
    trace = Trace(prompt_len=3, stop_reason="length")
    trace.record("prefill", fed=3, accepted=1)
    for accepted_len in (3, 1, 5):
        trace.record("target", fed=11, accepted=accepted_len, proposed=10, accepted_len=accepted_len,
                     proposal_depth=4)  # fmt: skip
    counts = acceptance_counts([trace])
    # m = 2, 0, 4: depth 1 tried 3x accepted 2x; depth 2 tried by m>=1 (2) accepted 2; depth 3
    # tried 2 accepted 1 (m >= 3); depth 4 tried 1 (m >= 3) accepted 1
    assert counts.trials == [3, 2, 2, 1]
    assert counts.accepts == [2, 2, 1, 1]
    assert counts.max_depth == 4


def test_depth_rules_per_decoder_kind():
    assert proposal_depth(Step("target", fed=1, accepted=1)) == 0  # ar
    assert proposal_depth(Step("target", fed=6, accepted=2, proposed=5, info={"draft_accepted": 1})) == 5  # chain
    assert proposal_depth(Step("target", fed=5, accepted=2, info={"block": 0, "fixed_point": False})) == 4  # Jacobi
    assert proposal_depth(Step("target", fed=9, accepted=2, info={"block": 0, "candidates": 2})) is None  # CLLM + pool
    look = {"candidates": 3, "accepted_len": 2}
    assert proposal_depth(Step("target", fed=30, accepted=2, proposed=12, info=look)) == 4  # lookahead: 3 x (n-1=4)
    assert proposal_depth(Step("target", fed=12, accepted=1, info={"candidates": 0, "accepted_len": 1})) == 0


def test_counts_merge_and_round_trip():
    a = acceptance_counts([chain_trace()])
    b = acceptance_counts([chain_trace(explicit_last=False)])
    merged = a + b
    assert merged.trials == [8, 5, 4] and merged.accepts == [6, 4, 2]
    assert merged.decode_forwards == 8
    assert counts_from_dict(merged.to_dict()) == merged
    assert AcceptanceCounts() + a == a


def test_one_token_decoder_reports_not_applicable(llama64):
    trace = build_decoder("ar").generate(Engine(llama64), prompts(1)[0], 10, NO_EOS)
    summary = acceptance_summary(acceptance_counts([trace]))
    assert set(summary.values()) == {None}


@pytest.mark.parametrize(
    "spec", ["jacobi:n=4", "prompt_lookup:k=4", "lookahead:w=3,n=4", "medusa:heads=random:3", "speculative:k=3"]
)
def test_real_decoders_histogram_sums_to_decode_forwards(llama64, spec):
    decoder = build_decoder(spec)
    traces = [decoder.generate(Engine(llama64), p, 24, NO_EOS) for p in prompts(2, seed=5)]
    counts = acceptance_counts(traces)
    decode_forwards = sum(metrics.target_forwards(t) - 1 for t in traces)  # minus each prefill
    assert sum(counts.histogram.values()) == decode_forwards == counts.decode_forwards
    generated = sum(len(t.tokens) for t in traces)
    # every token but the prefill's comes from a decode forward, bonus included
    assert counts.accepted_length_with_bonus() * decode_forwards == pytest.approx(generated - len(traces))
    assert counts.offered_drafts
    assert all(a <= t for a, t in zip(counts.accepts, counts.trials))
    assert counts.trials and counts.trials[0] > 0


@pytest.mark.parametrize("depth", [2, 3])
def test_eagle_positions_stop_at_the_tree_depth(llama64, depth):
    """An EAGLE forward offers a tree of depth ``depth + 1`` (the head's first top-k, then
    ``depth`` expansions), not a chain of all its nodes: no position beyond it is tried."""
    decoder = build_decoder(f"eagle:head=random,depth={depth},top_k=3,total_tokens=12")
    traces = [decoder.generate(Engine(llama64), p, 24, NO_EOS) for p in prompts(2, seed=5)]
    counts = acceptance_counts(traces)
    assert counts.max_depth <= depth + 1 and len(counts.trials) <= depth + 1
    assert all(a <= t for a, t in zip(counts.accepts, counts.trials))
