"""Metric functions on hand-built traces and Jacobi trajectories."""

from __future__ import annotations

import pytest

from cllm_bench import metrics
from cllm_bench.trace import JacobiBlock, Trace, TraceError, check_trace


def test_fast_forward_and_stationary_simple_block():
    block = JacobiBlock(states=[[1, 9, 9, 9], [1, 2, 9, 4], [1, 2, 3, 4]], final=[1, 2, 3, 4])
    assert block.iterations == 2
    assert metrics.block_fast_forward(block) == pytest.approx(2.0)  # n / K
    assert metrics.block_stationary(block) == 1  # position 3 was right before its left neighbour


def test_stationary_needs_an_unbroken_final_run():
    block = JacobiBlock(
        states=[[1, 7, 7, 7, 7], [1, 2, 7, 4, 5], [1, 2, 3, 9, 5], [1, 2, 3, 4, 5]], final=[1, 2, 3, 4, 5]
    )
    assert metrics.block_fast_forward(block) == pytest.approx(5 / 3)
    # position 4 stays right from iteration 1 on -> stationary; position 3 flipped back -> not
    assert metrics.block_stationary(block) == 1


def test_block_ended_by_eos_counts_only_its_final_tokens():
    block = JacobiBlock(states=[[1, 5, 5, 5], [1, 2, 6, 6]], final=[1, 2])
    assert metrics.block_fast_forward(block) == pytest.approx(2.0)
    assert metrics.block_stationary(block) == 0


def test_fast_forward_never_negative_when_prefix_shrinks():
    block = JacobiBlock(states=[[1, 0, 0, 0], [1, 2, 3, 0], [1, 2, 0, 0], [1, 2, 3, 4]], final=[1, 2, 3, 4])
    # p = 3, 2, 4 -> ff = 3, 0, 1
    assert metrics.block_fast_forward(block) == pytest.approx(4 / 3)


def test_block_without_iterations():
    block = JacobiBlock(states=[[5]], final=[5])
    assert metrics.block_fast_forward(block) == 1.0
    assert metrics.block_stationary(block) == 0


def test_jacobi_stats_aggregates_blocks():
    trace = Trace(prompt_len=3)
    trace.blocks = [
        JacobiBlock(states=[[1, 9, 9, 9], [1, 2, 9, 4], [1, 2, 3, 4]], final=[1, 2, 3, 4]),
        JacobiBlock(states=[[5, 0, 0, 0], [5, 6, 7, 8]], final=[5, 6, 7, 8]),
    ]
    stats = metrics.jacobi_stats(trace)
    assert stats is not None
    assert stats.fast_forward == pytest.approx((2.0 + 4.0) / 2)
    assert stats.stationary == 1
    assert stats.iterations == 3
    assert stats.stationary_per_block == pytest.approx(0.5)
    assert metrics.jacobi_stats(Trace(prompt_len=1)) is None


def test_tokens_per_forward_counts_prefill_and_excludes_draft():
    trace = Trace(prompt_len=4, tokens=[5, 6, 7, 8, 9])
    trace.record("prefill", fed=4, accepted=1)
    trace.record("draft", fed=1, accepted=0)
    trace.record("draft", fed=1, accepted=0)
    trace.record("target", fed=3, accepted=4)
    assert metrics.target_forwards(trace) == 2
    assert metrics.draft_forwards(trace) == 2
    assert metrics.tokens_per_forward(trace) == pytest.approx(2.5)
    assert metrics.accepted_per_step(trace) == [1, 4]
    check_trace(trace, max_new_tokens=5, eos_ids=frozenset({2}))


def test_check_trace_rejects_broken_invariants():
    trace = Trace(prompt_len=2, tokens=[5, 6])
    trace.record("prefill", fed=2, accepted=1)
    with pytest.raises(TraceError, match="sum"):
        check_trace(trace, 10, frozenset())
    trace.record("target", fed=1, accepted=1)
    with pytest.raises(TraceError, match="max_new_tokens"):
        check_trace(trace, 1, frozenset())
    trace.tokens = [2, 6]
    with pytest.raises(TraceError, match="after EOS"):
        check_trace(trace, 10, frozenset({2}))


def test_first_divergence_and_degenerate():
    assert metrics.first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert metrics.first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert metrics.first_divergence([1, 2], [1, 2, 3]) == 2
    assert metrics.is_degenerate([4] * 10)
    assert not metrics.is_degenerate([4] * 9 + [5] + [4] * 9)
