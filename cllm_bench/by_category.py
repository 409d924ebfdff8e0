"""Per-category results of one cell, Spec-Bench's grouping (pure functions over sample records).

Input: the samples.jsonl records of one (model, decoder, task) cell and ``ar``'s records
of the same cell's task (the same questions). A record counts when it has a
``category`` (spec_bench, mt_bench); its group is :func:`cllm_bench.categories.spec_bench_group`.

Per group (and "overall"), with the runner's own rules:

* ``tokens_per_s`` = generated tokens / decode time summed over the group's samples;
  ``tokens_per_s_min``/``_max``: the same per timed repeat, lowest and highest;
* ``speedup`` = tokens_per_s / ``ar``'s tokens_per_s over the same questions;
  ``speedup_min``/``_max``: per repeat r, tokens/s at r ÷ ar's at r (the spread);
* ``speedup_mean_of_speeds``: Spec-Bench's own formula (``evaluation/speed.py``): mean
  over questions of tokens/s ÷ the same mean for ``ar`` (our tokens/s exclude prefill);
* ``tokens_per_forward`` = generated tokens / target forwards (prefill included);
* ``accepted_length_with_bonus`` / ``accepted_length_draft_only`` from the records'
  acceptance counts (:mod:`cllm_bench.acceptance`), None for one-token decoders.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any, Mapping, Sequence

from cllm_bench.acceptance import AcceptanceCounts, counts_from_dict
from cllm_bench.categories import OVERALL, group_order, spec_bench_group

Record = Mapping[str, Any]


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def _repeat_tps(records: Sequence[Record]) -> list[float]:
    n_rep = min(len(r["decode_s_repeats"]) for r in records)
    out = [_ratio(sum(r["generated_tokens"] for r in records), sum(r["decode_s_repeats"][i] for r in records))
           for i in range(n_rep)]  # fmt: skip
    return [x for x in out if x is not None]


def _mean_speed(records: Sequence[Record]) -> float | None:
    speeds = [r["tokens_per_s"] for r in records if r.get("tokens_per_s") is not None]
    return statistics.fmean(speeds) if speeds else None


def group_stats(records: Sequence[Record], ar_records: Sequence[Record] | None) -> dict[str, Any]:
    """The numbers of one group (see the module docstring); ``ar_records`` None or empty:
    speedups None."""
    tokens = sum(r["generated_tokens"] for r in records)
    decode = sum(r["decode_s"] for r in records)
    tps = _ratio(tokens, decode)
    per_repeat = _repeat_tps(records)
    ar_tps = ar_repeat = ar_mean = None
    if ar_records:
        ar_tps = _ratio(sum(r["generated_tokens"] for r in ar_records), sum(r["decode_s"] for r in ar_records))
        ar_repeat = _repeat_tps(ar_records)
        ar_mean = _mean_speed(ar_records)
    rep_speedups = [a / b for a, b in zip(per_repeat, ar_repeat or []) if b]
    counts = AcceptanceCounts()
    for r in records:
        if r.get("acceptance"):
            counts = counts + counts_from_dict(r["acceptance"])
    mean_speed = _mean_speed(records)
    return {
        "n_samples": len(records),
        "generated_tokens": tokens,
        "decode_s_total": decode,
        "tokens_per_s": tps,
        "tokens_per_s_min": min(per_repeat) if per_repeat else None,
        "tokens_per_s_max": max(per_repeat) if per_repeat else None,
        "ar_tokens_per_s": ar_tps,
        "speedup": tps / ar_tps if (tps and ar_tps) else None,
        "speedup_min": min(rep_speedups) if rep_speedups else None,
        "speedup_max": max(rep_speedups) if rep_speedups else None,
        "speedup_mean_of_speeds": mean_speed / ar_mean if (mean_speed and ar_mean) else None,
        "tokens_per_forward": _ratio(tokens, sum(r["forwards"] for r in records)),
        "accepted_length_with_bonus": counts.accepted_length_with_bonus() if counts.offered_drafts else None,
        "accepted_length_draft_only": counts.accepted_length_draft_only() if counts.offered_drafts else None,
    }


def category_results(records: Sequence[Record], ar_records: Sequence[Record] | None) -> dict[str, dict[str, Any]] | None:
    """{group: stats} in Spec-Bench's order with "overall" last, or None when no record
    has a category. ``ar_records`` are matched to ``records`` by ``sample_id``."""
    if not any(r.get("category") for r in records):
        return None
    ar_by_id = {r["sample_id"]: r for r in ar_records or ()}
    groups: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        groups[spec_bench_group(str(r.get("category") or "unknown"))].append(r)
    groups[OVERALL] = list(records)
    out: dict[str, dict[str, Any]] = {}
    for name in group_order(groups):
        members = groups[name]
        ar_members = [ar_by_id[r["sample_id"]] for r in members if r["sample_id"] in ar_by_id]
        out[name] = group_stats(members, ar_members if len(ar_members) == len(members) else None)
    return out
