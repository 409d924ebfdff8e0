"""The records a run writes, derived from traces and timings: one ``samples.jsonl`` line
per sample (:func:`sample_record`) and one ``summary.json`` result per model x decoder x
task cell (:func:`cell_summary`). Their fields are declared in :mod:`cllm_bench.records`;
this module computes them (pure: no clock, no device, no files).
"""

from __future__ import annotations

import hashlib
import json
import statistics
from dataclasses import dataclass
from typing import Any

from cllm_bench import metrics
from cllm_bench.acceptance import AcceptanceCounts, acceptance_counts, acceptance_summary, counts_from_dict
from cllm_bench.decoders.base import Decoder
from cllm_bench.records import CellSummary, SampleRecord
from cllm_bench.tasks.base import Sample, Task
from cllm_bench.timing_health import cell_health
from cllm_bench.trace import Trace


@dataclass
class TimedGeneration:
    """One generation (a turn of a sample): its trace and every repeat's timings (seconds)."""

    trace: Trace
    decode_s: list[float]
    ttft_s: list[float]


def prompt_hash(ids: list[int]) -> str:
    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16]


def sample_record(
    model: str, decoder: Decoder, task: str, sample: Sample, prompts: list[list[int]], gens: list[TimedGeneration],
    completions: list[str], score: dict[str, Any], ar_record: SampleRecord | None, log_prompts: list[str] | None,
) -> SampleRecord:
    """One samples.jsonl line (:class:`~cllm_bench.records.SampleRecord`), derived from the traces."""
    traces = [g.trace for g in gens]
    turn_ids = [t.tokens for t in traces]
    flat = [tok for ids in turn_ids for tok in ids]
    n_rep = len(gens[0].decode_s)
    decode_by_repeat = [sum(g.decode_s[r] for g in gens) for r in range(n_rep)]
    ttft_by_repeat = [gens[0].ttft_s[r] for r in range(n_rep)]
    generated = len(flat)
    forwards = sum(metrics.target_forwards(t) for t in traces)
    blocks = [b for t in traces for b in t.blocks]
    jstats = [metrics.jacobi_stats(t) for t in traces]
    jstats = [s for s in jstats if s is not None]
    decode_s = statistics.median(decode_by_repeat)
    record: SampleRecord = {
        "model": model,
        "decoder": decoder.label,
        "task": task,
        "sample_id": sample.id,
        "prompt_hash": prompt_hash([t for p in prompts for t in p]),
        "prompt_tokens": [len(p) for p in prompts],
        "completions": completions,
        "output_text": completions[-1] if completions else "",
        "output_ids": flat,
        "turn_lengths": [len(ids) for ids in turn_ids],
        "generated_tokens": generated,
        "forwards": forwards,
        "draft_forwards": sum(metrics.draft_forwards(t) for t in traces),
        "accepted_per_step": [a for t in traces for a in metrics.accepted_per_step(t)],
        "stop_reason": [t.stop_reason for t in traces],
        "fast_forwarded": statistics.fmean(s.fast_forward for s in jstats) if jstats else None,
        "stationary": sum(s.stationary for s in jstats) if jstats else None,
        "jacobi_blocks": sum(s.blocks for s in jstats) if jstats else None,
        "jacobi_iterations": sum(s.iterations for s in jstats) if jstats else None,
        "block_ff": [metrics.block_fast_forward(b) for b in blocks] if blocks else None,
        "block_stationary": [metrics.block_stationary(b) for b in blocks] if blocks else None,
        "block_iterations": [b.iterations for b in blocks] if blocks else None,
        "jacobi_n": getattr(decoder, "n", None) if blocks else None,
        "degenerate": metrics.is_degenerate(flat),
        "decode_s": decode_s,
        "decode_s_repeats": decode_by_repeat,
        "ttft_s": statistics.median(ttft_by_repeat),
        "ttft_s_repeats": ttft_by_repeat,
        "tokens_per_s": generated / decode_s if decode_s > 0 else None,
        "score": score,
        # per turn (Spec-Bench export), the question category, acceptance counts (cllm_bench.acceptance)
        "category": sample.data.get("category"),
        "turn_forwards": [metrics.target_forwards(t) for t in traces],
        "turn_accepted_per_step": [metrics.accepted_per_step(t) for t in traces],
        "turn_decode_s": [statistics.median(g.decode_s) for g in gens],
        "turn_ttft_s": [statistics.median(g.ttft_s) for g in gens],
        "acceptance": acceptance_counts(traces).to_dict(),
    }
    if ar_record is not None:
        div = metrics.first_divergence(flat, ar_record["output_ids"])
        record["match_ar"] = div is None
        record["first_divergence"] = div
    if log_prompts is not None:
        record["prompts"] = log_prompts
    return record


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def cell_summary(records: list[SampleRecord], task: Task, decoder: Decoder, ar_tps: float | None,
                 exclude_degenerate: bool, peak_memory_mb: float | None) -> CellSummary:  # fmt: skip
    """One summary.json record (:class:`~cllm_bench.records.CellSummary`) from the sample
    records of one model x decoder x task."""
    tokens = sum(r["generated_tokens"] for r in records)
    decode = sum(r["decode_s"] for r in records)
    forwards = sum(r["forwards"] for r in records)
    n_rep = min(len(r["decode_s_repeats"]) for r in records)
    per_repeat = [_ratio(tokens, sum(r["decode_s_repeats"][i] for r in records)) for i in range(n_rep)]
    per_repeat = [x for x in per_repeat if x is not None]
    tps = _ratio(tokens, decode)
    task_metrics = task.aggregate([r["score"] for r in records])
    jac = [r for r in records if r.get("fast_forwarded") is not None]
    matches = [r["match_ar"] for r in records if r.get("match_ar") is not None]
    divs = [r["first_divergence"] for r in records if r.get("first_divergence") is not None]
    out: CellSummary = {
        "model": records[0]["model"],
        "decoder": decoder.label,
        "task": records[0]["task"],
        "n_samples": len(records),
        "accuracy": task_metrics.get("accuracy"),
        "task_metrics": task_metrics,
        "tokens_per_s": tps,
        "tokens_per_s_min": min(per_repeat) if per_repeat else None,
        "tokens_per_s_max": max(per_repeat) if per_repeat else None,
        "speedup": (tps / ar_tps) if (tps and ar_tps) else None,
        "tokens_per_forward": _ratio(tokens, forwards),
        "fast_forwarded": metrics.mean_or_none(r["fast_forwarded"] for r in jac) if jac else None,
        "stationary": metrics.mean_or_none(r["stationary"] for r in jac) if jac else None,
        "stationary_per_block": _ratio(sum(r["stationary"] for r in jac), sum(r["jacobi_blocks"] for r in jac)) if jac else None,
        "tokens_per_iteration": _ratio(sum(r["generated_tokens"] for r in jac), sum(r["jacobi_iterations"] for r in jac)) if jac else None,
        "match_ar": statistics.fmean(matches) if matches else None,
        "first_divergence_mean": statistics.fmean(divs) if divs else None,
        "ttft_s": statistics.median(r["ttft_s"] for r in records),
        "decode_s_total": decode,
        "generated_tokens": tokens,
        "draft_forwards": sum(r.get("draft_forwards", 0) for r in records),
        "peak_memory_mb": peak_memory_mb,
        "repeats": n_rep,
        "lossless": decoder.lossless,
        "skipped": dict(getattr(task, "skipped", {}) or {}),
        "timing_health": cell_health(records),
    }  # fmt: skip
    out.update(acceptance_summary(_merged_acceptance(records)))  # type: ignore[typeddict-item]
    if exclude_degenerate and jac:
        kept = [r for r in jac if not r["degenerate"]]
        out["fast_forwarded_excl_degenerate"] = metrics.mean_or_none(r["fast_forwarded"] for r in kept)
        out["stationary_excl_degenerate"] = metrics.mean_or_none(r["stationary"] for r in kept)
        out["excluded_degenerate"] = len(jac) - len(kept)
    return out


def _merged_acceptance(records: list[dict[str, Any]]) -> AcceptanceCounts:
    """The acceptance counts of a cell: the sum of its samples' (records without them add nothing)."""
    total = AcceptanceCounts()
    for r in records:
        if r.get("acceptance"):
            total = total + counts_from_dict(r["acceptance"])
    return total
