"""What a decoder did, one record per model forward.

A decoder returns a :class:`Trace`; every metric in a report is derived from traces plus
the runner's timings (see :mod:`cllm_bench.metrics`). Decoders never time themselves.

Invariants a decoder must keep (checked by :func:`check_trace`):
  * ``tokens`` is the output: greedy tokens after the prompt, ending at the first EOS
    (included) or at ``max_new_tokens``;
  * ``sum(step.accepted for step in steps) == len(tokens)`` — every output token is
    attributed to the forward that made it certain;
  * the first step is the prefill (``kind == "prefill"``) of the target model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

StepKind = Literal["prefill", "target", "draft"]


@dataclass
class Step:
    """One model forward.

    kind: "prefill" (prompt through the target), "target" (a decode forward of the
        target model) or "draft" (a forward of a draft model; not a target forward).
    fed: number of token positions fed in this forward (its width).
    accepted: output tokens this forward made final (0 for draft forwards).
    proposed: tokens proposed for verification in this forward (speculated width).
    info: decoder-specific counters (e.g. Jacobi block index, lookahead pool hits).
    """

    kind: StepKind
    fed: int
    accepted: int
    proposed: int = 0
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class JacobiBlock:
    """The trajectory of one Jacobi block.

    states[0] is the initial guess s^0; states[k] (k >= 1) is the full n-token block
    after iteration k; the confirming forward (which leaves the state unchanged) is
    not recorded. ``final`` holds the block's final tokens y* as they entered the
    output (length <= n: shorter when EOS or max_new_tokens ended the block early);
    metrics compare the first ``len(final)`` positions only.
    """

    states: list[list[int]]
    final: list[int]

    @property
    def iterations(self) -> int:
        """K: Jacobi iterations of this block, the confirming pass not counted."""
        return max(len(self.states) - 1, 0)


@dataclass
class Trace:
    """Everything a decoder did for one prompt."""

    prompt_len: int
    tokens: list[int] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    blocks: list[JacobiBlock] = field(default_factory=list)
    stop_reason: Literal["eos", "length", ""] = ""

    def record(self, kind: StepKind, fed: int, accepted: int, proposed: int = 0, **info: Any) -> Step:
        step = Step(kind=kind, fed=fed, accepted=accepted, proposed=proposed, info=dict(info))
        self.steps.append(step)
        return step

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TraceError(AssertionError):
    """A decoder broke a trace invariant (a bug in the decoder, not user input)."""


def check_trace(trace: Trace, max_new_tokens: int, eos_ids: set[int] | frozenset[int]) -> None:
    """Raise :class:`TraceError` when ``trace`` breaks an invariant of the module docstring."""
    if not trace.steps or trace.steps[0].kind != "prefill":
        raise TraceError("the first step must be the prefill of the target model")
    total = sum(s.accepted for s in trace.steps)
    if total != len(trace.tokens):
        raise TraceError(f"accepted tokens sum to {total} but the output has {len(trace.tokens)} tokens")
    if len(trace.tokens) > max_new_tokens:
        raise TraceError(f"output has {len(trace.tokens)} tokens > max_new_tokens={max_new_tokens}")
    eos_at = [i for i, t in enumerate(trace.tokens) if t in eos_ids]
    if eos_at and eos_at[0] != len(trace.tokens) - 1:
        raise TraceError(f"output continues after EOS at index {eos_at[0]}")
    if any(s.kind == "draft" and s.accepted for s in trace.steps):
        raise TraceError("a draft forward cannot accept output tokens")
