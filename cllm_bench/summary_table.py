"""The comparison table printed at the end of ``cllm-bench run``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cllm_bench.records import CELL_KEY, SUMMARY_COLUMNS, Column
from cllm_bench.results_io import read_json


def fmt(value: Any, spec: str = ".2f", suffix: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return format(value, spec) + suffix
    return str(value) + suffix


def summary_table(results: list[dict[str, Any]], title: str = "cllm-bench results") -> Table:
    """One row per summary record; the columns are :data:`~cllm_bench.records.SUMMARY_COLUMNS`.

    A lossless decoder whose ``match_ar`` is below 100% shows it in red.
    """
    table = Table(title=title)
    for key, col in SUMMARY_COLUMNS:
        table.add_column(col.header, justify="left" if key in CELL_KEY else "right")
    for r in results:
        cells = [_cell(r.get(key), col) for key, col in SUMMARY_COLUMNS]
        match = r.get("match_ar")
        if r.get("lossless") and match is not None and match < 1.0:
            where = [key for key, _ in SUMMARY_COLUMNS].index("match_ar")
            cells[where] = f"[red]{cells[where]}[/]"
        table.add_row(*cells)
    return table


def _cell(value: Any, col: Column) -> str:
    """A value as its column shows it: numbers scaled, then :func:`fmt`."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and col.scale != 1:
        value = value * col.scale
    return fmt(value, col.spec, col.suffix)


def print_summary(run_dir: Path, console: Console) -> None:
    doc = read_json(run_dir / "summary.json", "summary")
    console.print(summary_table(doc["results"]))
    notes = {r["task"]: r["task_metrics"].get("note") for r in doc["results"] if r.get("task_metrics", {}).get("note")}
    for task, note in notes.items():
        console.print(f"[yellow]{task}[/]: {note}")
