"""Learning curves of consistency training: Jacobi decoding of fixed prompt sets with the
model as it is after K updates (``train cllm --eval-every K``).

Two prompt sets: held-out prompts never trained on (a task split, e.g. Spider dev) and the
first training prompts. At each point, per set (all from the decoder's traces through
:mod:`cllm_bench.metrics`, as ``cllm-bench run`` measures them):

* ``tokens_per_forward``: generated tokens / target forwards (prefill counted, as ``run``);
* ``tokens_per_iteration``: generated tokens / Jacobi iterations (prefill not counted);
* ``fast_forwarded`` (mean over requests of the per-block mean) and ``stationary``
  (mean over requests of the per-request sum);
* ``match_base``: share of outputs identical to the step-0 model's greedy outputs (Jacobi
  is lossless, so its output IS the current model's greedy answer: a drop means the
  training changed the answers); ``first_divergence_mean`` over the differing ones;
* the task's metrics on the held-out set when the prompts come from a task (``accuracy``
  needs ``--allow-code-execution`` for tasks that execute code/SQL; Spider's
  ``exact_set_match`` does not).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from cllm_bench import metrics


@dataclass
class CurveSet:
    """One prompt set. ``base``: the step-0 outputs, filled by the first point."""

    name: str
    prompts: list[list[int]]
    samples: list[Any] | None = None  # task samples, for scoring (held-out set only)
    base: list[list[int]] = field(default_factory=list)


@torch.no_grad()
def measure_set(model: Any, cset: CurveSet, *, n: int, max_new_tokens: int, eos_ids: frozenset[int],
                task: Any = None, tokenizer: Any = None) -> dict[str, Any]:  # fmt: skip
    """Jacobi-decode every prompt of ``cset`` with ``model`` (left in eval mode) and summarise."""
    from cllm_bench.decoders.jacobi import JacobiDecoder
    from cllm_bench.engines import Engine

    engine = Engine(model)
    decoder = JacobiDecoder(n=n)
    traces = [decoder.generate(engine, list(p), max_new_tokens, eos_ids) for p in cset.prompts]
    outputs = [list(t.tokens) for t in traces]
    if not cset.base:
        cset.base = [list(o) for o in outputs]
    tokens = sum(metrics.generated_tokens(t) for t in traces)
    forwards = sum(metrics.target_forwards(t) for t in traces)
    stats = [metrics.jacobi_stats(t) for t in traces]
    iterations = sum(s.iterations for s in stats if s is not None)
    divergences = [metrics.first_divergence(o, b) for o, b in zip(outputs, cset.base)]
    point: dict[str, Any] = {
        "prompts": len(traces),
        "generated_tokens": tokens,
        "tokens_per_forward": tokens / forwards if forwards else None,
        "tokens_per_iteration": tokens / iterations if iterations else None,
        "fast_forwarded": statistics.fmean(s.fast_forward for s in stats if s is not None) if any(stats) else None,
        "stationary": statistics.fmean(s.stationary for s in stats if s is not None) if any(stats) else None,
        "match_base": sum(d is None for d in divergences) / len(divergences) if divergences else None,
        "first_divergence_mean": metrics.mean_or_none(d for d in divergences if d is not None),
    }
    if task is not None and cset.samples is not None and tokenizer is not None:
        scores = [task.score(s, [tokenizer.decode(o, skip_special_tokens=True)]) for s, o in zip(cset.samples, outputs)]
        agg = task.aggregate(scores)
        point["task"] = {k: v for k, v in agg.items() if isinstance(v, (int, float)) or v is None}
    return point


def curve_point(model: Any, sets: Sequence[CurveSet], step: int, progress_terms: dict[str, list[float]], since: int,
                **kwargs: Any) -> dict[str, Any]:  # fmt: skip
    """One learning-curve point: every set measured, plus the mean training loss terms of
    the updates since the previous point. Restores the model's training mode."""
    was_training = model.training
    started = time.perf_counter()
    point: dict[str, Any] = {"update": step}
    for key in ("ar", "consistency"):
        values = progress_terms.get(key, [])[since:step]
        point[f"train_{key}_loss"] = statistics.fmean(values) if values else None
    try:
        for cset in sets:
            point[cset.name] = measure_set(model, cset, **(kwargs if cset.samples is not None else
                                                           {k: v for k, v in kwargs.items() if k not in ("task", "tokenizer")}))
    finally:
        model.train(was_training)
    point["eval_seconds"] = round(time.perf_counter() - started, 3)
    return point
