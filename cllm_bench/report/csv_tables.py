"""Renderer: ``summary.csv`` (one row per cell) and ``diff.csv`` (runs compared).
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any, Sequence

from cllm_bench.report.facts import binomial_se, cell_flags, diff_cells
from cllm_bench.report.model import Cell, Run, cells_of, sorted_cells

CSV_FIELDS: tuple[str, ...] = (
    "run",
    "model",
    "decoder",
    "task",
    "n_samples",
    "repeats",
    "accuracy",
    "accuracy_se",
    "tokens_per_s",
    "tokens_per_s_min",
    "tokens_per_s_max",
    "speedup",
    "tokens_per_forward",
    "fast_forwarded",
    "stationary",
    "stationary_per_block",
    "tokens_per_iteration",
    "match_ar",
    "first_divergence_mean",
    "ttft_s",
    "decode_s_total",
    "generated_tokens",
    "peak_memory_mb",
    "lossless",
    "skipped",
    "flags",
)


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    return json.dumps(value) if isinstance(value, (dict, list)) else value


def summary_csv(cells: Sequence[Cell]) -> str:
    """All cells, one row each; ``task_metrics`` flattened as ``task_metrics.<name>`` columns."""
    tm_names: list[str] = []
    for cell in cells:
        for name in cell.get("task_metrics") or {}:
            if name not in tm_names:
                tm_names.append(name)
    extra = list(dict.fromkeys(k for c in cells for k in c.record if k not in CSV_FIELDS and k != "task_metrics"))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(list(CSV_FIELDS) + extra + [f"task_metrics.{n}" for n in tm_names])
    for cell in sorted_cells(cells):
        r = cell.record
        values: dict[str, Any] = dict(r)
        values["run"] = cell.run
        values["accuracy_se"] = binomial_se(r.get("accuracy"), r.get("n_samples"))
        values["skipped"] = json.dumps(r.get("skipped") or {}, sort_keys=True)
        values["flags"] = " ".join(f.code for f in cell_flags(r))
        tm = r.get("task_metrics") or {}
        row = ["" if values.get(k) is None else values.get(k) for k in CSV_FIELDS]
        row += [_csv_value(r.get(k)) for k in extra] + [_csv_value(tm.get(n)) for n in tm_names]
        writer.writerow(row)
    return buf.getvalue()


def diff_csv(runs: Sequence[Run]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(
        [
            "base_run",
            "new_run",
            "model",
            "decoder",
            "task",
            "accuracy_old",
            "accuracy_new",
            "accuracy_se",
            "tokens_per_s_old",
            "tokens_per_s_new",
            "speedup_old",
            "speedup_new",
            "verdicts",
        ]
    )
    base_cells = cells_of(runs[0])
    for other in runs[1:]:
        rows, _, _ = diff_cells(base_cells, cells_of(other))
        for d in rows:
            vals = [d.base_run, d.new_run, *d.key, *d.accuracy, d.accuracy_se, *d.tokens_per_s, *d.speedup]
            writer.writerow([_csv_value(v) for v in vals] + ["; ".join(d.verdicts)])
    return buf.getvalue()
