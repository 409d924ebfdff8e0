"""The comparison table printed at the end of ``cllm-bench run``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cllm_bench.results_io import read_json


def fmt(value: Any, spec: str = ".2f", suffix: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return format(value, spec) + suffix
    return str(value) + suffix


def summary_table(results: list[dict[str, Any]], title: str = "cllm-bench results") -> Table:
    table = Table(title=title)
    for col in ("model", "task", "decoder", "n", "accuracy", "tokens/s", "speedup", "tok/forward",
                "fast-fwd", "stationary", "match_ar", "TTFT s"):  # fmt: skip
        table.add_column(col, justify="left" if col in ("model", "task", "decoder") else "right")
    for r in results:
        match = r.get("match_ar")
        match_txt = fmt(match * 100 if match is not None else None, ".0f", "%")
        if r.get("lossless") and match is not None and match < 1.0:
            match_txt = f"[red]{match_txt}[/]"
        table.add_row(
            str(r["model"]), r["task"], r["decoder"], str(r["n_samples"]),
            fmt(r["accuracy"] * 100 if r.get("accuracy") is not None else None, ".1f", "%"),
            fmt(r.get("tokens_per_s"), ".1f"), fmt(r.get("speedup"), ".2f", "x"),
            fmt(r.get("tokens_per_forward")), fmt(r.get("fast_forwarded")), fmt(r.get("stationary")),
            match_txt, fmt(r.get("ttft_s"), ".3f"),
        )  # fmt: skip
    return table


def print_summary(run_dir: Path, console: Console) -> None:
    doc = read_json(run_dir / "summary.json", "summary")
    console.print(summary_table(doc["results"]))
    notes = {r["task"]: r["task_metrics"].get("note") for r in doc["results"] if r.get("task_metrics", {}).get("note")}
    for task, note in notes.items():
        console.print(f"[yellow]{task}[/]: {note}")
