"""Metrics as pure functions of traces (and the runner's timings).

Definitions (shared/DESIGN.md, "Metric definitions"):
  * generated tokens: output tokens up to and including the first EOS, capped at
    max_new_tokens — the decoder's :class:`~cllm_bench.decoders.base.OutputBuffer`
    enforces this, so it is ``len(trace.tokens)`` for every decoder;
  * tokens per forward = generated tokens / target forwards (prefill included, so
    ``ar`` scores exactly 1.0);
  * fast-forwarded / stationary tokens of Jacobi blocks as the CLLM reference's
    ``speedup.py`` counts them (see :func:`block_fast_forward`, :func:`block_stationary`).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Iterable, Sequence

from cllm_bench.trace import JacobiBlock, Trace


def generated_tokens(trace: Trace) -> int:
    return len(trace.tokens)


def target_forwards(trace: Trace) -> int:
    """Forwards of the evaluated (target) model, prefill included."""
    return sum(1 for s in trace.steps if s.kind in ("prefill", "target"))


def draft_forwards(trace: Trace) -> int:
    return sum(1 for s in trace.steps if s.kind == "draft")


def tokens_per_forward(trace: Trace) -> float:
    forwards = target_forwards(trace)
    return generated_tokens(trace) / forwards if forwards else 0.0


def accepted_per_step(trace: Trace) -> list[int]:
    """Accepted tokens of every target forward (prefill first), in order."""
    return [s.accepted for s in trace.steps if s.kind in ("prefill", "target")]


# ---------------------------------------------------------------- Jacobi trajectories
def _prefix_match(state: Sequence[int], final: Sequence[int]) -> int:
    """Length of the longest prefix of ``state`` equal to ``final`` (compared on len(final))."""
    n = 0
    for a, b in zip(state, final):
        if a != b:
            break
        n += 1
    return n


def block_fast_forward(block: JacobiBlock) -> float:
    """FF_b: mean over iterations k=1..K of ff_k = max(0, p_k - max(p_1..p_{k-1})).

    p_k is the correct-prefix length of state k against the block's final tokens (only
    the first ``len(final)`` positions count: EOS/max_new_tokens end a block early). For a
    full block this equals n / K. A block with K = 0 iterations (n = 1, or a block ended
    before its first iteration) fast-forwards all its final tokens at once.
    """
    e = len(block.final)
    K = block.iterations
    if K == 0:
        return float(e)
    best = 0
    total = 0
    for state in block.states[1:]:
        p = _prefix_match(state[:e], block.final)
        total += max(0, p - best)
        best = max(best, p)
    return total / K


def block_stationary(block: JacobiBlock) -> int:
    """Stationary tokens of one block.

    r_i: length of the final unbroken run of iterations (ending at K) in which position i
    held its final value; k_i: the first iteration (1-based) in which i lay inside the
    correct prefix. Position i is stationary iff r_i > K - k_i + 1, i.e. it was already
    right (and never changed again) while a token to its left was still wrong.
    """
    e = len(block.final)
    K = block.iterations
    if K == 0:
        return 0
    states = block.states[1:]
    prefix = [_prefix_match(s[:e], block.final) for s in states]
    count = 0
    for i in range(e):
        run = 0
        for state in reversed(states):
            if state[i] != block.final[i]:
                break
            run += 1
        joined = next((k + 1 for k, p in enumerate(prefix) if p > i), K)
        if run > K - joined + 1:
            count += 1
    return count


@dataclass(frozen=True)
class JacobiStats:
    """Per-request Jacobi statistics (None fields when the trace has no blocks)."""

    fast_forward: float  # mean over blocks of FF_b
    stationary: int  # sum over blocks
    blocks: int
    iterations: int  # sum over blocks of K

    @property
    def stationary_per_block(self) -> float:
        return self.stationary / self.blocks if self.blocks else 0.0


def jacobi_stats(trace: Trace) -> JacobiStats | None:
    if not trace.blocks:
        return None
    ff = [block_fast_forward(b) for b in trace.blocks]
    return JacobiStats(
        fast_forward=statistics.fmean(ff),
        stationary=sum(block_stationary(b) for b in trace.blocks),
        blocks=len(trace.blocks),
        iterations=sum(b.iterations for b in trace.blocks),
    )


def is_degenerate(tokens: Sequence[int], run: int = 10) -> bool:
    """True when ``tokens`` holds ``run`` or more identical consecutive tokens (the
    reference's repetitive-output filter)."""
    streak = 0
    prev = None
    for tok in tokens:
        streak = streak + 1 if tok == prev else 1
        prev = tok
        if streak >= run:
            return True
    return False


# ---------------------------------------------------------------- losslessness
def first_divergence(tokens: Sequence[int], reference: Sequence[int]) -> int | None:
    """Index of the first differing token, len(shorter) if one is a prefix of the other,
    None when identical."""
    for i, (a, b) in enumerate(zip(tokens, reference)):
        if a != b:
            return i
    return None if len(tokens) == len(reference) else min(len(tokens), len(reference))


# ---------------------------------------------------------------- aggregation helpers
def mean_or_none(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.fmean(vals) if vals else None


def median(values: Sequence[float]) -> float:
    return statistics.median(values)
