"""Acceptance analysis of multi-token decoders, derived from the trace (pure functions).

Every decode forward of the target model (``Step.kind == "target"``; the prefill is not a
decode forward) offers a draft and keeps part of it. For one such forward:

* ``depth`` D: the length of the longest draft path it offered — a chain's length
  (speculative, prompt lookup, a Jacobi block's unverified suffix), a tree's depth
  (Medusa), one n-gram candidate's length (lookahead); 0 for a plain one-token forward;
* ``draft_accepted`` m (0 <= m <= D): draft tokens accepted along the accepted path;
* ``emitted``: tokens the forward made final (``Step.accepted``) = m + 1 — the accepted
  draft tokens plus the **bonus token** (the target's own next token after the last
  accepted draft position, or its correction at the first rejected one) — except in the
  forward where the output ended (EOS or budget), which may keep fewer.

How each is read from a :class:`~cllm_bench.trace.Step` (decoders record, never count):

=================  ==================================================================
``depth``          ``info["proposal_depth"]`` when recorded (Medusa: tree depth);
                   a Jacobi/CLLM block step (``"block"`` in info): ``fed - 1`` (the fed
                   suffix past its known first token), unknown (None) when the step also
                   verified pool candidates; lookahead (``"candidates"`` in info):
                   ``proposed // candidates`` (G parallel chains of n-1), 0 without
                   candidates; otherwise ``proposed`` (a chain).
``draft_accepted`` ``info["draft_accepted"]`` when recorded, else
                   ``info["accepted_len"] - 1``, else ``emitted - 1``; clipped to [0, D].
=================  ==================================================================

Formulas (over every decode forward of every sample; prefill excluded):

* ``accepted_length_with_bonus`` = sum(emitted) / decode forwards — the bonus counted;
  the "mean accepted tokens" of Spec-Bench and EAGLE (which also count it). Note that
  ``tokens_per_forward`` divides by decode forwards + 1 prefill instead.
* ``accepted_length_draft_only`` = sum(m) / decode forwards — the bonus not counted
  (the "accepted draft tokens" of vLLM's spec-decode metrics).
* ``accepted_length_histogram``: {emitted: number of decode forwards}; its counts sum to
  the decode forwards (= target forwards - 1 per generation).
* per-position acceptance, position i = 1..max D:
  ``P(i accepted | 1..i-1 accepted) = accepts_i / trials_i`` with
  ``trials_i`` = forwards with D >= i and m >= i-1, ``accepts_i`` = those with m >= i.
  For a tree, positions are depths along the accepted path: the rate is the chance that
  some child of the accepted depth-(i-1) node was accepted. A forward whose depth is
  unknown is left out; so is the trial at position m+1 of a censored forward (the last
  forward of an output, when m was inferred from ``emitted``: the EOS or the token budget
  may have cut the accepted run there).

Known limit: ``lookahead:cap=true`` keeps at most n-1 tokens, so a full match of n-1
draft tokens (no bonus) is recorded as ``accepted_len = n-1`` and counted as m = n-2 plus
a bonus; the default ``cap=false`` is exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from cllm_bench.trace import Step, Trace


@dataclass(frozen=True)
class StepAcceptance:
    """What one decode forward offered and kept (see the module docstring)."""

    depth: int | None
    draft_accepted: int
    emitted: int
    censored: bool = False


def proposal_depth(step: Step) -> int | None:
    """D of a decode forward, read from what the decoder recorded (None when unknown)."""
    info = step.info
    if "proposal_depth" in info:
        return int(info["proposal_depth"])
    if "block" in info:
        return None if info.get("candidates") else max(step.fed - 1, 0)
    if "candidates" in info:
        candidates = int(info["candidates"] or 0)
        return step.proposed // candidates if candidates else 0
    return int(step.proposed)


def step_acceptance(step: Step, ends_output: bool = False) -> StepAcceptance:
    """The acceptance record of one target decode forward.

    ``ends_output``: this is the trace's last forward (the output ended in it, at EOS or
    at the budget); when m must be inferred from ``emitted`` the forward is then censored.
    """
    depth = proposal_depth(step)
    info = step.info
    explicit = "draft_accepted" in info or "accepted_len" in info
    if "draft_accepted" in info:
        m = int(info["draft_accepted"])
    elif "accepted_len" in info:
        m = int(info["accepted_len"]) - 1
    else:
        m = step.accepted - 1
    m = max(0, m if depth is None else min(m, depth))
    return StepAcceptance(depth=depth, draft_accepted=m, emitted=step.accepted, censored=ends_output and not explicit)


def trace_acceptance(trace: Trace) -> list[StepAcceptance]:
    """One record per target decode forward of ``trace``, in order (prefill and draft-model
    forwards excluded)."""
    decode = [s for s in trace.steps if s.kind == "target"]
    last = len(decode) - 1
    return [step_acceptance(s, i == last) for i, s in enumerate(decode)]


@dataclass
class AcceptanceCounts:
    """Sufficient statistics of acceptance; add samples with :meth:`add`, merge with ``+``.

    ``trials[i-1]`` / ``accepts[i-1]`` belong to draft position i; ``histogram`` maps
    emitted tokens per decode forward to a count.
    """

    decode_forwards: int = 0
    emitted: int = 0
    draft_accepted: int = 0
    max_depth: int = 0
    unknown_depth: int = 0
    histogram: dict[int, int] = field(default_factory=dict)
    trials: list[int] = field(default_factory=list)
    accepts: list[int] = field(default_factory=list)

    def add(self, record: StepAcceptance) -> None:
        self.decode_forwards += 1
        self.emitted += record.emitted
        self.draft_accepted += record.draft_accepted
        self.histogram[record.emitted] = self.histogram.get(record.emitted, 0) + 1
        if record.depth is None:
            self.unknown_depth += 1
            return
        self.max_depth = max(self.max_depth, record.depth)
        self._grow(record.depth)
        m = record.draft_accepted
        for i in range(1, record.depth + 1):
            if m < i - 1 or (record.censored and m == i - 1):
                break
            self.trials[i - 1] += 1
            if m >= i:
                self.accepts[i - 1] += 1

    def _grow(self, depth: int) -> None:
        while len(self.trials) < depth:
            self.trials.append(0)
            self.accepts.append(0)

    def __add__(self, other: "AcceptanceCounts") -> "AcceptanceCounts":
        out = AcceptanceCounts(
            decode_forwards=self.decode_forwards + other.decode_forwards,
            emitted=self.emitted + other.emitted,
            draft_accepted=self.draft_accepted + other.draft_accepted,
            max_depth=max(self.max_depth, other.max_depth),
            unknown_depth=self.unknown_depth + other.unknown_depth,
            histogram=dict(self.histogram),
        )
        for k, v in other.histogram.items():
            out.histogram[k] = out.histogram.get(k, 0) + v
        out._grow(max(len(self.trials), len(other.trials)))
        for src in (self, other):
            for i, (t, a) in enumerate(zip(src.trials, src.accepts)):
                out.trials[i] += t
                out.accepts[i] += a
        return out

    # ---- derived numbers (see the module docstring for the formulas)
    @property
    def offered_drafts(self) -> bool:
        """True when some decode forward offered a draft (D > 0, or a depth not recorded)."""
        return self.max_depth > 0 or self.unknown_depth > 0

    def accepted_length_with_bonus(self) -> float | None:
        return self.emitted / self.decode_forwards if self.decode_forwards else None

    def accepted_length_draft_only(self) -> float | None:
        return self.draft_accepted / self.decode_forwards if self.decode_forwards else None

    def per_position(self) -> list[float | None]:
        """P(position i accepted | positions < i accepted) for i = 1..len(trials)."""
        return [a / t if t else None for t, a in zip(self.trials, self.accepts)]

    def to_dict(self) -> dict[str, Any]:
        """JSON form (histogram keys as strings), read back by :func:`counts_from_dict`."""
        return {
            "decode_forwards": self.decode_forwards,
            "emitted": self.emitted,
            "draft_accepted": self.draft_accepted,
            "max_depth": self.max_depth,
            "unknown_depth": self.unknown_depth,
            "histogram": {str(k): v for k, v in sorted(self.histogram.items())},
            "trials": list(self.trials),
            "accepts": list(self.accepts),
        }


def counts_from_dict(data: Mapping[str, Any]) -> AcceptanceCounts:
    return AcceptanceCounts(
        decode_forwards=int(data["decode_forwards"]),
        emitted=int(data["emitted"]),
        draft_accepted=int(data["draft_accepted"]),
        max_depth=int(data.get("max_depth", 0)),
        unknown_depth=int(data.get("unknown_depth", 0)),
        histogram={int(k): int(v) for k, v in data.get("histogram", {}).items()},
        trials=[int(x) for x in data.get("trials", [])],
        accepts=[int(x) for x in data.get("accepts", [])],
    )


def acceptance_counts(traces: Iterable[Trace]) -> AcceptanceCounts:
    """Counts over every decode forward of ``traces`` (e.g. the turns of one sample)."""
    counts = AcceptanceCounts()
    for trace in traces:
        for record in trace_acceptance(trace):
            counts.add(record)
    return counts


def acceptance_summary(counts: AcceptanceCounts) -> dict[str, Any]:
    """The summary-record fields; all None for a decoder that never offered a draft
    (``ar``, ``hf``): acceptance is not applicable there."""
    if not counts.offered_drafts:
        return {
            "accepted_length_with_bonus": None,
            "accepted_length_draft_only": None,
            "accepted_length_histogram": None,
            "acceptance_per_position": None,
            "acceptance_position_trials": None,
        }
    return {
        "accepted_length_with_bonus": counts.accepted_length_with_bonus(),
        "accepted_length_draft_only": counts.accepted_length_draft_only(),
        "accepted_length_histogram": {str(k): v for k, v in sorted(counts.histogram.items())},
        "acceptance_per_position": counts.per_position(),
        "acceptance_position_trials": list(counts.trials),
    }
