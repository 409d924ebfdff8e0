"""``cllm-bench bench --batch-size 1,2,4,...``: one process, one model load, every batch size.

At each batch size B the bench of :func:`cllm_bench.bench.measure_all` runs (HF
``generate``, batched ``ar``, the given decoders, all on the same B prompts). The sweep
then relates each decoder to batched ``ar`` *at the same B*:

* ``ratio_vs_ar[B]`` = tokens/s of the decoder at B ÷ tokens/s of ``ar`` at B
  (aggregate tokens/s over the batch, median over repeats);
* ``break_even_batch_size`` = the largest tested B with ``ratio_vs_ar > 1`` (the decoder
  still beats ``ar`` there), None when it never does. Where the ratio is not monotone
  in B the whole ``ratio_vs_ar`` list tells the story.

Output: ``bench-sweep-<time>.json`` (format in docs/report.md, "Batch sweeps") and
``bench-sweep-<time>.png`` (ratio to ``ar`` against B, one line per decoder).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from rich.console import Console
from rich.table import Table

from cllm_bench.bench import BenchConfig, check_batchable, measure_all, peak_bandwidth
from cllm_bench.errors import UserError
from cllm_bench.models import load_model
from cllm_bench.provenance import now_iso, provenance
from cllm_bench.results_io import write_json_atomic

AR = "ar"


def parse_batch_sizes(text: str) -> list[int]:
    """"1,2,4" -> [1, 2, 4] (sorted, unique); UserError for anything but positive integers."""
    sizes: set[int] = set()
    for part in str(text).replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = int(part)
        except ValueError:
            value = 0
        if value < 1:
            raise UserError(f"--batch-size takes positive integers separated by commas (e.g. 1,2,4,8), got {text!r}")
        sizes.add(value)
    if not sizes:
        raise UserError(f"--batch-size names no batch size: {text!r}")
    return sorted(sizes)


def sweep_summary(rows_by_batch: Mapping[int, Sequence[Mapping[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per method (row ``method``): tokens/s and ratio to ``ar`` per batch size, and the
    break-even batch size (see the module docstring). ``rows_by_batch[B]`` are the bench
    rows measured at B and must contain ``ar``'s."""
    sizes = sorted(rows_by_batch)
    methods = list(dict.fromkeys(r["method"] for B in sizes for r in rows_by_batch[B]))
    out: dict[str, dict[str, Any]] = {}
    for method in methods:
        tps, ratios = [], []
        for B in sizes:
            by_method = {r["method"]: r for r in rows_by_batch[B]}
            row, ar = by_method.get(method), by_method.get(AR)
            value = row["tokens_per_s"] if row else None
            tps.append(value)
            ratios.append(value / ar["tokens_per_s"] if (value and ar and ar["tokens_per_s"]) else None)
        wins = [B for B, r in zip(sizes, ratios) if r is not None and r > 1.0]
        out[method] = {
            "batch_sizes": sizes,
            "tokens_per_s": tps,
            "ratio_vs_ar": ratios,
            "break_even_batch_size": (max(wins) if wins else None) if method != AR else None,
        }
    return out


def sweep_table(summary: Mapping[str, Mapping[str, Any]]) -> Table:
    sizes = next(iter(summary.values()))["batch_sizes"] if summary else []
    table = Table(title="tokens/s per batch size (ratio to batched ar at the same batch size)")
    table.add_column("method")
    for B in sizes:
        table.add_column(f"B={B}", justify="right")
    table.add_column("break-even B", justify="right")
    for method, s in summary.items():
        cells = [
            "—" if t is None else (f"{t:.1f}" + (f" ({r:.2f}x)" if (r is not None and method != AR) else ""))
            for t, r in zip(s["tokens_per_s"], s["ratio_vs_ar"])
        ]
        be = s["break_even_batch_size"]
        table.add_row(method, *cells, "—" if method == AR else ("never" if be is None else str(be)))
    return table


def run_sweep(cfg: BenchConfig, batch_sizes: list[int], console: Console) -> Path:
    """Bench every batch size in one process; write the sweep JSON and plot; return the JSON path."""
    from cllm_bench.report.plots_speed import plot_batch_sweep

    check_batchable(replace(cfg, batch_size=max(batch_sizes)))
    loaded = load_model(cfg.model, dtype=cfg.dtype, device=cfg.device)
    device = loaded.device
    runs: dict[int, dict[str, Any]] = {}
    for B in batch_sizes:
        console.print(f"[bold]batch size {B}[/]")
        rows, facts = measure_all(replace(cfg, batch_size=B), loaded, console)
        runs[B] = {"facts": facts, "results": rows}
    summary = sweep_summary({B: run["results"] for B, run in runs.items()})
    doc = {
        "provenance": provenance(device, str(loaded.dtype).replace("torch.", ""), 0, {
            "time": now_iso(), "config": {**cfg.__dict__, "batch_size": batch_sizes},
            "peak_bandwidth_bytes_per_s": peak_bandwidth(device)}),
        "batch_sizes": batch_sizes,
        "sweep": summary,
        "runs": {str(B): run for B, run in runs.items()},
    }  # fmt: skip
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(cfg.output_path) / f"bench-sweep-{stamp}.json"
    write_json_atomic(path, doc)
    plot = plot_batch_sweep(summary, f"{doc['provenance'].get('device_name', device)}, {cfg.model}")
    if plot.png is not None:
        path.with_suffix(".png").write_bytes(plot.png)
    console.print(sweep_table(summary))
    return path
