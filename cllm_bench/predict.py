"""``cllm-bench predict``: a run's decode speed on another device, from its per-forward trace.

No model is loaded. For every sample the ``forward_trace`` record (:mod:`cllm_bench.forward_trace`)
lists each forward's kind, width and context; a cost table (:mod:`cllm_bench.cost_table`)
gives the time of such a forward on the device it describes. The cost model::

    decode_s(sample) = sum over decode forwards f of  [cost_M(f)(width_f, context_f) + overhead_M(f)] / 1000

                     + heads_ms x (prefills + target decode forwards)     # Medusa heads only

where the decode forwards are every target decode forward and every draft forward (the
target prefill of each turn is TTFT, outside decode time, as in ``cllm-bench run``); M(f) is
the target or the decoder's draft model; ``cost`` is the table's bilinear interpolation
(tree-masked grid for the target forwards of tree decoders when the table has one, else the
chain grid, flagged); ``overhead`` is the table's host time per decode step of that model
(floored at 0: a negative measured overhead is timing noise). Then, per cell
(model x decoder x task), as ``cllm-bench run`` defines them::

    tokens_per_s = sum(generated tokens) / sum(decode_s);   speedup = tokens_per_s / tokens_per_s(ar)

"ideal": the same trace with every forward costed as a 1-token forward of its model at its
context (width free, same acceptance): the speed the decoder's acceptance would give on a
device where feeding more tokens costs nothing extra. ``ideal_speedup`` is against the
predicted ``ar``.

Flags per cell: ``extrapolated_forwards`` / ``extrapolated_share`` (forwards, and share of
predicted time, whose width or context lies outside the profiled range), ``tree_as_chain``
(tree forwards costed with the chain grid) and ``note`` (why a cell is not predicted).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console
from rich.table import Table

from cllm_bench.cost_table import CostTable, ModelCosts, load_cost_table
from cllm_bench.errors import UserError
from cllm_bench.results_io import iter_jsonl, read_json, write_json_file

#: decoder fields that name the draft model / head whose forwards are the trace's ``d`` steps
DRAFT_FIELDS = ("draft", "head")
#: decoder fields that name Medusa-style heads run once per target forward (no trace step)
HEAD_FIELDS = ("heads",)


@dataclass
class ForwardCost:
    """The predicted cost of one sample's decode forwards."""

    ms: float = 0.0
    ideal_ms: float = 0.0
    forwards: int = 0
    extrapolated: int = 0
    extrapolated_ms: float = 0.0
    tree_as_chain: int = 0


def sample_cost(trace: dict[str, Any], target: ModelCosts, draft: ModelCosts | None, heads_ms: float = 0.0,
                batch: int = 1) -> ForwardCost:  # fmt: skip
    """Predicted cost of one ``forward_trace`` record (module docstring formula).

    ``heads_ms``: one call of the decoder's Medusa heads, run after the prefill and after
    every target decode forward (0 for decoders without heads). Raises :class:`UserError`
    when the trace has draft forwards and ``draft`` is None.
    """
    out = ForwardCost()
    kinds, fed, context = trace.get("kinds"), trace.get("fed"), trace.get("context")
    if not (isinstance(kinds, str) and isinstance(fed, list) and isinstance(context, list)
            and len(kinds) == len(fed) == len(context) and set(kinds) <= {"p", "t", "d"}):  # fmt: skip
        raise UserError("a forward_trace record is malformed (kinds/fed/context missing, of other lengths, "
                        "or unknown kinds): corrupt samples.jsonl")  # fmt: skip
    tree = bool(trace.get("tree"))
    for kind, width, ctx in zip(kinds, fed, context):
        if kind == "p":  # the prefill itself is TTFT; the heads on its hidden state run after it
            out.ms += heads_ms
            out.ideal_ms += heads_ms
            continue
        if kind == "d":
            if draft is None:
                raise UserError("draft forwards but no draft costs")
            model, use_tree = draft, False
        else:
            model, use_tree = target, tree and width > 1
        grid, substituted = model.grid(batch, use_tree)
        ms, outside = grid.cost(width, ctx)
        ideal, _ = model.grid(batch, False)[0].cost(1, ctx)
        overhead = max(model.step_overhead_ms, 0.0)  # a negative measured overhead is noise
        heads = heads_ms if kind == "t" else 0.0
        step = ms + overhead + heads
        out.ms += step
        out.ideal_ms += ideal + overhead + heads
        out.forwards += 1
        out.tree_as_chain += substituted
        if outside:
            out.extrapolated += 1
            out.extrapolated_ms += step
    return out


@dataclass
class CellPrediction:
    """One model x decoder x task: predicted next to measured (None where absent)."""

    model: str
    decoder: str
    task: str
    n_samples: int
    generated_tokens: int
    predicted_decode_s: list[float] = field(default_factory=list)  # per sample, run order
    predicted_tokens_per_s: float | None = None
    predicted_speedup: float | None = None
    ideal_tokens_per_s: float | None = None
    ideal_speedup: float | None = None
    measured_tokens_per_s: float | None = None
    measured_speedup: float | None = None
    speedup_error: float | None = None  # (predicted - measured) / measured, same device only
    extrapolated_forwards: int = 0
    decode_forwards: int = 0
    extrapolated_share: float = 0.0
    tree_as_chain: int = 0
    note: str = ""


@dataclass
class Prediction:
    """Every cell of one run predicted with one cost table."""

    run: str
    table: str
    table_label: str
    same_device: bool
    cells: list[CellPrediction]
    table_busy: bool = False  # the table's own timing_health saw other work on the machine

    def to_dict(self) -> dict[str, Any]:
        return {"run": self.run, "cost_table": self.table, "device": self.table_label, "same_device": self.same_device,
                "cost_table_busy": self.table_busy,
                "cost_model": "bilinear over (width, context); decode forwards only; per-step overhead; see docs/predict.md",
                "cells": [asdict(c) for c in self.cells]}  # fmt: skip


def decoder_part(label: str, fields: Sequence[str] = DRAFT_FIELDS) -> str | None:
    """The spec a decoder label gives to the first of ``fields`` it has (its default when the
    label omits it): the draft model / head, or the Medusa heads."""
    from cllm_bench.decoders.base import build_decoder, split_spec

    try:
        decoder = build_decoder(label)
    except UserError:  # a plugin decoder not loaded here: what the label says
        _, params = split_spec(label)
        return next((params[f] for f in fields if f in params), None)
    return next((str(getattr(decoder, f)) for f in fields if getattr(decoder, f, None)), None)


def _load_run(run_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    if not run_dir.is_dir():
        raise UserError(f"run folder not found: {run_dir}")
    summary = read_json(run_dir / "summary.json", "run summary")
    samples_path = run_dir / "samples.jsonl"
    if not samples_path.exists():
        raise UserError(f"{samples_path} not found; pass a folder written by `cllm-bench run`")
    try:
        records = list(iter_jsonl(samples_path))
    except (json.JSONDecodeError, ValueError) as exc:
        raise UserError(f"{samples_path} is not valid JSONL: {exc}") from None
    if not isinstance(summary, dict):
        raise UserError(f"{run_dir}/summary.json is not a run summary")
    return summary, records


def predict_run(run_dir: Path, table: CostTable) -> Prediction:
    """Predict every cell of the run in ``run_dir`` on ``table``'s device (module docstring).

    Raises :class:`UserError` for a run without per-forward traces or whose model differs
    from the table's target (hidden size / layers / vocabulary).
    """
    summary, records = _load_run(Path(run_dir))
    traced = [r for r in records if isinstance(r.get("forward_trace"), dict)]
    if not traced:
        raise UserError(f"{run_dir} has no per-forward trace data (samples.jsonl lacks `forward_trace`: written by "
                        f"an older cllm-bench); rerun it with this version to predict it")  # fmt: skip
    for rec in traced:
        table.check_model(rec["forward_trace"].get("model") or {}, f"the run's model {rec.get('model')}")
    measured = {(r.get("model"), r.get("decoder"), r.get("task")): r for r in summary.get("results") or []}
    order: list[tuple[str, str, str]] = []
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for rec in records:
        key = (rec.get("model"), rec.get("decoder"), rec.get("task"))
        if key not in groups:
            order.append(key)
            groups[key] = []
        groups[key].append(rec)
    cells = [_predict_cell(key, groups[key], table, measured.get(key)) for key in order]
    _speedups(cells)
    prov = summary.get("provenance") or {}
    same = bool(prov.get("device_name")) and prov.get("device_name") == table.device_name
    if same:
        for c in cells:
            if c.predicted_speedup is not None and c.measured_speedup:
                c.speedup_error = (c.predicted_speedup - c.measured_speedup) / c.measured_speedup
    busy = (table.provenance.get("timing_health") or {}).get("ok") is False
    return Prediction(str(run_dir), table.path, table.label, same, cells, busy)


def _predict_cell(key: tuple[str, str, str], records: list[dict[str, Any]], table: CostTable,
                  measured: dict[str, Any] | None) -> CellPrediction:  # fmt: skip
    model, decoder, task = key
    cell = CellPrediction(model, decoder, task, len(records), sum(int(r.get("generated_tokens", 0)) for r in records))
    if measured:
        cell.measured_tokens_per_s = measured.get("tokens_per_s")
        cell.measured_speedup = measured.get("speedup")
    if any(not isinstance(r.get("forward_trace"), dict) for r in records):
        cell.note = "no per-forward trace in some samples (older cllm-bench): not predicted"
        return cell
    heads_ms = 0.0
    heads_spec = decoder_part(decoder, HEAD_FIELDS)
    if heads_spec is not None:
        if heads_spec not in table.heads:
            cell.note = f"not predicted: heads {heads_spec} not profiled (profile --heads)"
            return cell
        heads_ms = table.heads[heads_spec].call_ms
    draft = None
    if any("d" in r["forward_trace"]["kinds"] for r in records):
        spec = decoder_part(decoder)
        draft = table.drafts.get(spec) if spec else None
        if draft is None:
            cell.note = f"not predicted: draft {spec or '(unnamed)'} not profiled (profile --draft)"
            return cell
    costs = [sample_cost(r["forward_trace"], table.target, draft, heads_ms) for r in records]
    cell.predicted_decode_s = [c.ms / 1000 for c in costs]
    total_s = sum(cell.predicted_decode_s)
    ideal_s = sum(c.ideal_ms for c in costs) / 1000
    cell.predicted_tokens_per_s = cell.generated_tokens / total_s if total_s > 0 else None
    cell.ideal_tokens_per_s = cell.generated_tokens / ideal_s if ideal_s > 0 else None
    cell.decode_forwards = sum(c.forwards for c in costs)
    cell.extrapolated_forwards = sum(c.extrapolated for c in costs)
    cell.extrapolated_share = sum(c.extrapolated_ms for c in costs) / 1000 / total_s if total_s > 0 else 0.0
    cell.tree_as_chain = sum(c.tree_as_chain for c in costs)
    return cell


def _speedups(cells: list[CellPrediction]) -> None:
    """Fill predicted / ideal speedups against the predicted ``ar`` of the same model and task."""
    ar = {(c.model, c.task): c for c in cells if c.decoder == "ar"}
    for c in cells:
        ref = ar.get((c.model, c.task))
        base = ref.predicted_tokens_per_s if ref is not None else None
        if base and c.predicted_tokens_per_s is not None:
            c.predicted_speedup = c.predicted_tokens_per_s / base
        if base and c.ideal_tokens_per_s is not None:
            c.ideal_speedup = c.ideal_tokens_per_s / base


# ------------------------------------------------------------------------- presentation
def _fmt(v: float | None, spec: str, suffix: str = "") -> str:
    return "—" if v is None else f"{v:{spec}}{suffix}"


HEADERS = ("model", "decoder", "task", "predicted tok/s", "predicted speedup", "ideal speedup",
           "measured tok/s", "measured speedup", "speedup error", "extrapolated", "note")  # fmt: skip


def prediction_rows(pred: Prediction) -> list[tuple[str, ...]]:
    """One row of strings per cell, in :data:`HEADERS` order."""
    rows = []
    for c in pred.cells:
        extra = "—" if not c.decode_forwards else f"{c.extrapolated_forwards}/{c.decode_forwards} ({c.extrapolated_share:.0%} of time)"
        note = c.note or (f"{c.tree_as_chain} tree forwards costed as chain" if c.tree_as_chain else "")
        rows.append((c.model, c.decoder, c.task, _fmt(c.predicted_tokens_per_s, ".1f"), _fmt(c.predicted_speedup, ".2f", "x"),
                     _fmt(c.ideal_speedup, ".2f", "x"), _fmt(c.measured_tokens_per_s, ".1f"),
                     _fmt(c.measured_speedup, ".2f", "x"), _fmt(c.speedup_error, "+.1%"), extra, note))  # fmt: skip
    return rows


def caption(pred: Prediction) -> str:
    where = "the run's own device: error = (predicted - measured) / measured speedup" if pred.same_device else \
        "another device than the run's: measured columns are the run's device, no error computed"
    busy = " WARNING: the cost table was measured on a busy machine (provenance.timing_health)." if pred.table_busy else ""
    return f"Predicted for {pred.table_label} (cost table {pred.table}) from {pred.run}; {where}.{busy}"


def print_prediction(pred: Prediction, console: Console) -> None:
    table = Table(title=caption(pred), title_justify="left")
    for h in HEADERS:
        table.add_column(h, justify="left" if h in ("model", "decoder", "task", "note") else "right", overflow="fold")
    for row in prediction_rows(pred):
        table.add_row(*row)
    console.print(table)


def predict_section(run_dirs: Sequence[Path], table_paths: Sequence[Path]) -> Any:
    """The report's "Predicted speed" section (a ``report.Section``): one table per run x cost table."""
    from cllm_bench.report.blocks import Section, TableBlock, TextBlock

    blocks: list[Any] = [TextBlock(
        "Decode speed predicted from each forward's width and context with a per-device cost table "
        "(docs/predict.md); ideal = same acceptance with every forward costed as a 1-token forward."
    )]
    for path in table_paths:
        table = load_cost_table(Path(path))
        for run_dir in run_dirs:
            pred = predict_run(Path(run_dir), table)
            rows = prediction_rows(pred)
            blocks.append(TableBlock(HEADERS, tuple(rows), tuple("warn" if r[-1] else "" for r in rows), caption(pred)))
    return Section("Predicted speed", "predicted", tuple(blocks))


def run_predict(run_dir: Path, table_path: Path, output: Path | None, console: Console) -> Prediction:
    """``cllm-bench predict``: print the prediction, write it as JSON when ``output`` is given."""
    table = load_cost_table(Path(table_path))
    pred = predict_run(Path(run_dir), table)
    print_prediction(pred, console)
    if output is not None:
        write_json_file(Path(output), pred.to_dict(), "--output")
        console.print(f"prediction written to {output}", markup=False, highlight=False)
    return pred
