"""`cllm-bench report`: tables, plots, paper comparison and run diffs from run folders.

Input (written by the runner, treated as a contract):

* ``RUN_DIR/summary.json`` -- ``{"provenance": {...}, "results": [record, ...]}``, one
  record per (model, decoder, task) cell with aggregate metrics;
* ``RUN_DIR/samples.jsonl`` -- one JSON object per generated sample (accepted tokens per
  forward, Jacobi block statistics, ...).

Output (``report/`` inside the first run folder unless ``--output`` says otherwise):
``report.md``, a self-contained ``report.html``, ``summary.csv`` (+ ``diff.csv`` when two
or more runs are compared) and one PNG per plot.

The module is layered so each layer is a set of small pure functions:

1. loading + validation  (:func:`load_run`)        -> :class:`Run`
2. facts about cells     (:func:`cell_flags`, :func:`diff_cells`, :func:`paper_rows`)
3. a format-neutral document (:func:`build_document`) of :class:`Section` blocks
4. renderers: markdown (:func:`render_markdown`), HTML (:mod:`cllm_bench.report_html`),
   CSV (:func:`summary_csv`), terminal (:func:`print_terminal`).

:func:`run_report` is the entry point the CLI calls.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, Union

from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table as RichTable

from cllm_bench.errors import UserError
from cllm_bench.records import CELL_KEY, CELL_NUMERIC_KEYS, CELL_REQUIRED_KEYS, CellKey
from cllm_bench.run_folder import check_output_path

SUMMARY_FILE = "summary.json"
SAMPLES_FILE = "samples.jsonl"
FORMATS: tuple[str, ...] = ("md", "html", "csv")
LOW_N = 10  # cells with fewer samples are flagged
MIN_REPEATS = 3  # DESIGN.md: >= 3 timed repeats
TPS_TOLERANCE = 0.02  # relative tokens/s change always treated as noise in run diffs
REFERENCE_JSON = Path(__file__).resolve().parents[1] / "results" / "reference" / "cllm_paper.json"

REQUIRED_RECORD_KEYS: tuple[str, ...] = CELL_REQUIRED_KEYS
NUMERIC_RECORD_KEYS: tuple[str, ...] = CELL_NUMERIC_KEYS
REQUIRED_SAMPLE_KEYS: tuple[str, ...] = CELL_KEY



# =============================================================== 1. loading
@dataclass(frozen=True)
class Run:
    """One run folder, validated.

    label: short unique name used in tables and legends (the folder name, widened with
        its parent when two runs share a name).
    results: the summary records, in file order.
    samples: the per-sample objects of samples.jsonl, in file order.
    """

    path: Path
    label: str
    provenance: dict[str, Any]
    results: list[dict[str, Any]]
    samples: list[dict[str, Any]]


@dataclass(frozen=True)
class Cell:
    """One summary record of one run, plus its per-sample objects."""

    run: str
    record: dict[str, Any]
    samples: tuple[dict[str, Any], ...] = ()

    @property
    def key(self) -> CellKey:
        return (str(self.record["model"]), str(self.record["decoder"]), str(self.record["task"]))

    def get(self, name: str) -> Any:
        return self.record.get(name)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _rerun_hint() -> str:
    return "re-run `cllm-bench run` with the same arguments (it resumes) or pass a finished run folder"


class NonFiniteNumber(ValueError):
    """``NaN``/``Infinity`` in a summary file (Python's json reads them; no table can show them)."""


def _refuse_non_finite(token: str) -> Any:
    raise NonFiniteNumber(token)


def load_summary(path: Path) -> dict[str, Any]:
    """Read and validate ``summary.json``; raise :class:`UserError` naming the file."""
    if not path.is_file():
        raise UserError(f"{path} is missing; the run did not finish writing its results: {_rerun_hint()}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"), parse_constant=_refuse_non_finite)
    except NonFiniteNumber as exc:
        raise UserError(
            f"{path} holds {exc} where a number belongs; a summary holds finite numbers or null "
            f"(fix or remove that value): {_rerun_hint()}"
        ) from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text ({exc.reason}); the file is corrupt: {_rerun_hint()}") from exc
    except json.JSONDecodeError as exc:
        raise UserError(
            f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            f"the file is corrupt or partial: {_rerun_hint()}"
        ) from exc
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise UserError(f'{path} has no "results" list; it is not a cllm-bench summary: {_rerun_hint()}')
    if not isinstance(data.get("provenance", {}), dict):
        raise UserError(f'{path}: "provenance" must be an object; the file is corrupt: {_rerun_hint()}')
    for i, record in enumerate(data["results"]):
        _validate_record(path, i, record)
    return data


def _validate_record(path: Path, index: int, record: Any) -> None:
    where = f"{path}: results[{index}]"
    if not isinstance(record, dict):
        raise UserError(f"{where} is not an object; the file is corrupt: {_rerun_hint()}")
    missing = [k for k in REQUIRED_RECORD_KEYS if k not in record]
    if missing:
        raise UserError(f"{where} lacks {', '.join(missing)}; the file is partial or from another tool: {_rerun_hint()}")
    if not isinstance(record["n_samples"], int) or isinstance(record["n_samples"], bool):
        raise UserError(f"{where}: n_samples must be an integer, got {record['n_samples']!r}: {_rerun_hint()}")
    for name in NUMERIC_RECORD_KEYS:
        value = record.get(name)
        if value is not None and not _is_number(value):
            raise UserError(f"{where}: {name} must be a number or null, got {value!r}: {_rerun_hint()}")


def load_samples(path: Path) -> list[dict[str, Any]]:
    """Read ``samples.jsonl``; a bad line raises :class:`UserError` with file and line number."""
    if not path.is_file():
        raise UserError(f"{path} is missing; the report needs the per-sample log: {_rerun_hint()}")
    samples: list[dict[str, Any]] = []
    with path.open(encoding="utf-8", errors="strict") as handle:
        try:
            lines = list(handle)
        except UnicodeDecodeError as exc:
            raise UserError(f"{path} is not UTF-8 text; the file is corrupt: {_rerun_hint()}") from exc
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(
                f"{path}:{lineno}: not valid JSON ({exc.msg}, column {exc.colno}); the line is corrupt or was "
                f"cut off: {_rerun_hint()}"
            ) from exc
        if not isinstance(obj, dict):
            raise UserError(f"{path}:{lineno}: expected a JSON object per line: {_rerun_hint()}")
        missing = [k for k in REQUIRED_SAMPLE_KEYS if k not in obj]
        if missing:
            raise UserError(f"{path}:{lineno}: sample lacks {', '.join(missing)}: {_rerun_hint()}")
        samples.append(obj)
    return samples


def load_run(run_dir: Path, label: str | None = None) -> Run:
    """Load and validate one run folder."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(
            f"run folder {run_dir} does not exist; pass a folder written by `cllm-bench run` "
            f"(it holds {SUMMARY_FILE} and {SAMPLES_FILE})"
        )
    summary = load_summary(run_dir / SUMMARY_FILE)
    samples = load_samples(run_dir / SAMPLES_FILE)
    return Run(
        path=run_dir,
        label=label or run_dir.resolve().name,
        provenance=dict(summary.get("provenance") or {}),
        results=list(summary["results"]),
        samples=samples,
    )


def run_labels(run_dirs: Sequence[Path]) -> list[str]:
    """Short unique labels: folder names, widened with the parent (then an index) on clashes."""
    names = [Path(p).resolve().name for p in run_dirs]
    if len(set(names)) == len(names):
        return names
    wider = [f"{Path(p).resolve().parent.name}/{Path(p).resolve().name}" for p in run_dirs]
    if len(set(wider)) == len(wider):
        return wider
    return [f"{name}#{i + 1}" for i, name in enumerate(names)]


def cells_of(run: Run) -> list[Cell]:
    """The run's records as cells, each with its samples attached."""
    by_key: dict[CellKey, list[dict[str, Any]]] = {}
    for sample in run.samples:
        by_key.setdefault((str(sample["model"]), str(sample["decoder"]), str(sample["task"])), []).append(sample)
    cells = []
    for record in run.results:
        key = (str(record["model"]), str(record["decoder"]), str(record["task"]))
        cells.append(Cell(run=run.label, record=record, samples=tuple(by_key.get(key, ()))))
    return cells


def parse_formats(formats: Iterable[str] | None) -> list[str]:
    """Normalise ``--format`` values ("md,html" or ["md", "html"]); empty means all."""
    chosen: list[str] = []
    for item in formats or ():
        for part in str(item).split(","):
            name = part.strip().lower()
            if not name:
                continue
            if name not in FORMATS:
                raise UserError(f"unknown report format {name!r}; choose from {', '.join(FORMATS)} (e.g. --format md,html)")
            if name not in chosen:
                chosen.append(name)
    return chosen or list(FORMATS)


# =============================================================== 2. facts
def decoder_family(decoder: str) -> str:
    """``"jacobi:n=16"`` -> ``"jacobi"``."""
    return decoder.split(":", 1)[0].strip().lower()


def binomial_se(p: float | None, n: int | None) -> float | None:
    """Standard error of a proportion ``p`` over ``n`` samples (None when undefined)."""
    if p is None or not n or n <= 0:
        return None
    return math.sqrt(max(p * (1.0 - p), 0.0) / n)


@dataclass(frozen=True)
class Flag:
    code: str
    message: str


FLAG_LEGEND: dict[str, str] = {
    "LOW-N": f"fewer than {LOW_N} samples: accuracy and speed are anecdotal",
    "MISMATCH": "a lossless (greedy) decoder produced output different from ar on some samples (match_ar < 1)",
    "FEW-REPEATS": f"fewer than {MIN_REPEATS} timed repeats: the tokens/s spread is not measured",
    "SKIPPED": "some samples were skipped (reasons in the notes under the table)",
    "NO-AR": "no ar cell on the same model and task in this run, so no speedup",
    "BUSY": "timed while the machine was busy (other processes' CPU/GPU, load, or repeats spread > 1.5x): "
    "tokens/s and speedup are unreliable",
}


def cell_flags(record: Mapping[str, Any]) -> list[Flag]:
    """Honesty flags of one summary record (see :data:`FLAG_LEGEND`)."""
    flags: list[Flag] = []
    n = record.get("n_samples") or 0
    if n < LOW_N:
        flags.append(Flag("LOW-N", f"n={n} < {LOW_N}"))
    match = record.get("match_ar")
    if record.get("lossless") and match is not None and match < 1.0:
        flags.append(Flag("MISMATCH", f"lossless decoder but match_ar={match:.0%}"))
    repeats = record.get("repeats")
    if isinstance(repeats, int) and repeats < MIN_REPEATS:
        flags.append(Flag("FEW-REPEATS", f"repeats={repeats} < {MIN_REPEATS}"))
    skipped = record.get("skipped") or {}
    if isinstance(skipped, dict) and sum(v for v in skipped.values() if _is_number(v)) > 0:
        flags.append(Flag("SKIPPED", ", ".join(f"{k}: {v}" for k, v in skipped.items())))
    if record.get("speedup") is None:
        flags.append(Flag("NO-AR", "speedup unknown"))
    health = record.get("timing_health")
    if isinstance(health, dict) and health.get("ok") is False:
        flags.append(Flag("BUSY", "; ".join(str(p) for p in health.get("problems") or []) or "busy machine"))
    return flags


@dataclass(frozen=True)
class DiffRow:
    """One (model, decoder, task) present in both the baseline run and a later run."""

    key: CellKey
    base_run: str
    new_run: str
    accuracy: tuple[float | None, float | None]
    accuracy_se: float | None
    tokens_per_s: tuple[float | None, float | None]
    speedup: tuple[float | None, float | None]
    verdicts: tuple[str, ...]

    @property
    def regression(self) -> bool:
        return any(v.startswith("REGRESSION") for v in self.verdicts)


def _spread(rec: Mapping[str, Any], name: str = "tokens_per_s") -> tuple[float, float, float] | None:
    """(low, mid, high) of tokens/s over repeats; low = high = mid when no spread is recorded."""
    mid = rec.get(name)
    if mid is None:
        return None
    low = rec.get(f"{name}_min")
    high = rec.get(f"{name}_max")
    low = mid if low is None else min(low, mid)
    high = mid if high is None else max(high, mid)
    return low, mid, high


def speed_change(old: Mapping[str, Any], new: Mapping[str, Any], tolerance: float = TPS_TOLERANCE) -> str | None:
    """ "slower"/"faster" when tokens/s moved beyond both runs' own spread, else None.

    The change counts only when the two min..max ranges over repeats do not overlap
    (the new best is below the old worst, or the other way round) *and* the medians
    differ by more than ``tolerance`` (relative), so that single-repeat runs (zero
    spread) are not flagged for jitter.
    """
    a, b = _spread(old), _spread(new)
    if a is None or b is None or a[1] <= 0:
        return None
    rel = (b[1] - a[1]) / a[1]
    if b[2] < a[0] and rel < -tolerance:
        return "slower"
    if b[0] > a[2] and rel > tolerance:
        return "faster"
    return None


def accuracy_change(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[str | None, float | None]:
    """("worse"/"better"/None, standard error of the difference).

    The difference counts when it exceeds one binomial standard error of the
    difference, sqrt(p1(1-p1)/n1 + p2(1-p2)/n2); with both SEs zero (0% or 100% on
    both sides) any change counts.
    """
    p1, p2 = old.get("accuracy"), new.get("accuracy")
    if p1 is None or p2 is None:
        return None, None
    se1 = binomial_se(p1, old.get("n_samples")) or 0.0
    se2 = binomial_se(p2, new.get("n_samples")) or 0.0
    se = math.sqrt(se1**2 + se2**2)
    delta = p2 - p1
    if abs(delta) > se and abs(delta) > 1e-12:
        return ("worse" if delta < 0 else "better"), se
    return None, se


def diff_cells(base: Sequence[Cell], new: Sequence[Cell]) -> tuple[list[DiffRow], list[CellKey], list[CellKey]]:
    """Compare cells present in both runs; also return keys only in base / only in new."""
    base_map = {c.key: c for c in base}
    new_map = {c.key: c for c in new}
    rows = []

    def order(key: CellKey) -> tuple:
        return (key[2], key[0], decoder_sort_key(key[1]))

    for key in sorted(set(base_map) & set(new_map), key=order):
        old, cur = base_map[key].record, new_map[key].record
        verdicts: list[str] = []
        speed = speed_change(old, cur)
        if speed == "slower":
            verdicts.append("REGRESSION tokens/s")
        elif speed == "faster":
            verdicts.append("improved tokens/s")
        acc, se = accuracy_change(old, cur)
        if acc == "worse":
            verdicts.append("REGRESSION accuracy")
        elif acc == "better":
            verdicts.append("improved accuracy")
        m_old, m_new = old.get("match_ar"), cur.get("match_ar")
        if cur.get("lossless") and m_old is not None and m_new is not None and m_new < m_old:
            verdicts.append("REGRESSION match_ar")
        rows.append(
            DiffRow(
                key=key,
                base_run=base_map[key].run,
                new_run=new_map[key].run,
                accuracy=(old.get("accuracy"), cur.get("accuracy")),
                accuracy_se=se,
                tokens_per_s=(old.get("tokens_per_s"), cur.get("tokens_per_s")),
                speedup=(old.get("speedup"), cur.get("speedup")),
                verdicts=tuple(verdicts),
            )
        )
    only_base = sorted(set(base_map) - set(new_map), key=order)
    only_new = sorted(set(new_map) - set(base_map), key=order)
    return rows, only_base, only_new


# --------------------------------------------------------------- paper reference
def load_reference(path: Path = REFERENCE_JSON) -> dict[str, Any] | None:
    """The published numbers (results/reference/cllm_paper.json), or None when absent."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON (line {exc.lineno}: {exc.msg}); restore it from git") from exc
    if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
        raise UserError(f'{path} has no "entries" list; restore it from git')
    return data


def load_references(main: Path = REFERENCE_JSON) -> dict[str, Any] | None:
    """``main`` (cllm_paper.json) with the entries of every other ``*.json`` beside it appended
    (e.g. ``spec_bench_leaderboard.json``), in file-name order; None when ``main`` is absent."""
    reference = load_reference(main)
    if reference is None:
        return None
    merged = {**reference, "entries": list(reference["entries"])}
    for extra in sorted(main.parent.glob("*.json")):
        if extra.resolve() != main.resolve():
            more = load_reference(extra)
            merged["entries"] += more["entries"] if more else []
    return merged


@dataclass(frozen=True)
class PaperRow:
    """Our measured cells beside the published entries for one (task, method)."""

    task: str
    method: str
    paper: tuple[dict[str, Any], ...]
    ours: tuple[Cell, ...]


def paper_rows(cells: Sequence[Cell], reference: Mapping[str, Any]) -> list[PaperRow]:
    """Pair published entries with our cells by task and decoder family, for tasks we ran."""
    tasks = sorted({c.key[2] for c in cells})
    rows = []
    for task in tasks:
        entries = [e for e in reference.get("entries", []) if e.get("task") == task]
        methods = list(dict.fromkeys(e.get("method") for e in entries))
        for method in methods:
            ours = tuple(c for c in cells if c.key[2] == task and decoder_family(c.key[1]) == method)
            rows.append(
                PaperRow(
                    task=task, method=str(method), paper=tuple(e for e in entries if e.get("method") == method), ours=ours
                )
            )
    return rows


# =============================================================== formatting helpers
DASH = "—"


def fmt_num(value: float | None, digits: int = 2) -> str:
    return DASH if value is None else f"{value:.{digits}f}"


def fmt_pct(value: float | None, digits: int = 1) -> str:
    return DASH if value is None else f"{100 * value:.{digits}f}%"


def fmt_speedup(value: float | None) -> str:
    return DASH if value is None else f"{value:.2f}×"


def fmt_tps(rec: Mapping[str, Any]) -> str:
    """Median tokens/s with its min–max spread over repeats."""
    s = _spread(rec)
    if s is None:
        return DASH
    low, mid, high = s
    if high - low <= 0:
        return f"{mid:.1f}"
    return f"{mid:.1f} ({low:.1f}–{high:.1f})"


def fmt_accuracy(rec: Mapping[str, Any]) -> str:
    p = rec.get("accuracy")
    if p is None:
        return DASH
    se = binomial_se(p, rec.get("n_samples"))
    return fmt_pct(p) if se is None else f"{fmt_pct(p)} ± {100 * se:.1f}"


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return DASH
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def fmt_value(value: Any) -> str:
    if value is None:
        return DASH
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


# =============================================================== 3. document model
@dataclass(frozen=True)
class TableBlock:
    """A table. row_class: per row "" (plain), "warn" (a flag), "bad" (regression or
    losslessness failure), "good" (improvement)."""

    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    row_class: tuple[str, ...] = ()
    caption: str = ""
    kind: str = "data"  # "data" | "wrap" (long cells may wrap) | "provenance"

    def klass(self, i: int) -> str:
        return self.row_class[i] if i < len(self.row_class) else ""


@dataclass(frozen=True)
class TextBlock:
    text: str
    kind: str = "text"  # "text" | "note" | "warning" | "code"


@dataclass(frozen=True)
class PlotBlock:
    plot: Any  # cllm_bench.report_plots.Plot


Block = Union[TableBlock, TextBlock, PlotBlock]


@dataclass(frozen=True)
class Section:
    title: str
    anchor: str
    blocks: tuple[Block, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Document:
    title: str
    subtitle: str
    sections: tuple[Section, ...]


def provenance_items(run: Run) -> tuple[tuple[str, str], ...]:
    """Provenance of one run as (label, value) pairs, in reading order."""
    p = run.provenance
    packages = p.get("packages") or {}
    pkg = ", ".join(f"{k} {v}" for k, v in packages.items()) if isinstance(packages, dict) else fmt_value(packages)
    device = p.get("device")
    device_name = p.get("device_name")
    device_text = f"{device} ({device_name})" if device_name and device_name != device else fmt_value(device)
    command = p.get("command") or (" ".join(map(str, p["argv"])) if isinstance(p.get("argv"), list) else None)
    items = [
        ("run folder", str(run.path)),
        ("device", device_text),
        ("dtype", fmt_value(p.get("dtype"))),
        ("cllm-bench", fmt_value(p.get("cllm_bench_version"))),
        ("git commit", fmt_value(p.get("git_commit"))),
        ("packages", pkg or DASH),
        ("command", fmt_value(command)),
        ("started / ended", f"{fmt_value(p.get('start_time'))} / {fmt_value(p.get('end_time'))}"),
        ("seed", fmt_value(p.get("seed"))),
        ("repeats / warm-up", f"{fmt_value(p.get('repeats'))} / {fmt_value(p.get('warmup'))}"),
        ("max_new_tokens / limit", f"{fmt_value(p.get('max_new_tokens'))} / {fmt_value(p.get('limit'))}"),
        ("finished", {True: "yes", False: "NO (partial run)"}.get(p.get("complete"), fmt_value(p.get("complete")))),
    ]
    health = p.get("timing_health")
    if isinstance(health, dict):
        problems = health.get("problems") or []
        items.append(("timing health", "quiet machine" if not problems else "BUSY: " + "; ".join(map(str, problems))))
    return tuple(items)


def provenance_table(runs: Sequence[Run]) -> TableBlock:
    """Provenance of all runs side by side: one row per field, one column per run."""
    items = [provenance_items(r) for r in runs]
    rows = tuple((label,) + tuple(it[i][1] for it in items) for i, (label, _) in enumerate(items[0]))
    return TableBlock(headers=("",) + tuple(f"run {r.label}" for r in runs), rows=rows, kind="provenance")


RESULT_HEADERS: tuple[str, ...] = (
    "task",
    "model",
    "decoder",
    "n",
    "reps",
    "accuracy ± SE",
    "tokens/s (min–max)",
    "speedup",
    "tok/fwd",
    "fast-fwd",
    "stationary",
    "match_ar",
    "TTFT",
    "flags",
)


FAMILY_ORDER = {"ar": 0, "jacobi": 1, "cllm": 2, "lookahead": 3, "speculative": 4, "medusa": 5, "eagle": 6}


def natural_key(text: str) -> tuple:
    """Sort key that orders "jacobi:n=8" before "jacobi:n=16"."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text))


def decoder_sort_key(decoder: str) -> tuple:
    return (FAMILY_ORDER.get(decoder_family(decoder), 9), natural_key(decoder))


def _sort_key(cell: Cell) -> tuple:
    model, decoder, task = cell.key
    return (task, model, decoder_sort_key(decoder), cell.run)


def sorted_cells(cells: Iterable[Cell]) -> list[Cell]:
    return sorted(cells, key=_sort_key)


RUN_WIDE_CODES = ("LOW-N", "FEW-REPEATS")  # stated once, not per row, when every cell has them


def run_wide_flags(cells: Sequence[Cell]) -> set[str]:
    """Flag codes of :data:`RUN_WIDE_CODES` that every cell carries (e.g. a 1-repeat smoke run)."""
    if not cells:
        return set()
    common = set(RUN_WIDE_CODES)
    for cell in cells:
        common &= {f.code for f in cell_flags(cell.record)}
    return common


def results_table(cells: Sequence[Cell], with_run: bool, suppress: frozenset[str] = frozenset()) -> TableBlock:
    """The main table: one row per cell, flagged rows marked (``suppress``: codes stated run-wide)."""
    headers = (("run",) if with_run else ()) + RESULT_HEADERS
    rows, classes = [], []
    for cell in sorted_cells(cells):
        r = cell.record
        flags = [f for f in cell_flags(r) if f.code not in suppress]
        row = ((cell.run,) if with_run else ()) + (
            cell.key[2],
            cell.key[0],
            cell.key[1],
            str(r.get("n_samples")),
            fmt_value(r.get("repeats")),
            fmt_accuracy(r),
            fmt_tps(r),
            fmt_speedup(r.get("speedup")),
            fmt_num(r.get("tokens_per_forward")),
            fmt_num(r.get("fast_forwarded")),
            fmt_num(r.get("stationary")),
            fmt_pct(r.get("match_ar"), 0),
            fmt_seconds(r.get("ttft_s")),
            " ".join(f"⚠ {f.code}" for f in flags) if flags else "",
        )
        rows.append(tuple(row))
        codes = {f.code for f in flags} - {"FEW-REPEATS"}
        classes.append("bad" if "MISMATCH" in codes else "warn" if codes else "")
    return TableBlock(headers=headers, rows=tuple(rows), row_class=tuple(classes))


def flag_notes(cells: Sequence[Cell], suppress: frozenset[str] = frozenset()) -> list[str]:
    """One line per (task, model, flag, numbers) with the decoders (and runs) it applies to."""
    multi = len({c.run for c in cells}) > 1
    groups: dict[tuple[str, str, str, str], dict[str, list[str]]] = {}
    for cell in sorted_cells(cells):
        model, decoder, task = cell.key
        for flag in cell_flags(cell.record):
            if flag.code in suppress:
                continue
            groups.setdefault((task, model, flag.code, flag.message), {}).setdefault(decoder, []).append(cell.run)
    notes = []
    for (task, model, code, message), decoders in groups.items():
        who = ", ".join(f"{d} ({', '.join(runs)})" if multi else d for d, runs in decoders.items())
        notes.append(f"{code} ({message}) — {task} / {model}: {who}")
    return notes


def degenerate_table(cells: Sequence[Cell], with_run: bool) -> TableBlock | None:
    """Jacobi statistics with and without degenerate outputs (>= 10 identical tokens in a row),
    when the run was asked to exclude them (records carry ``*_excl_degenerate``)."""
    mine = [c for c in sorted_cells(cells) if "fast_forwarded_excl_degenerate" in c.record]
    if not mine:
        return None
    headers = (("run",) if with_run else ()) + (
        "task",
        "model",
        "decoder",
        "n",
        "excluded",
        "fast-fwd",
        "fast-fwd excl.",
        "stationary",
        "stationary excl.",
    )
    rows = tuple(
        ((c.run,) if with_run else ())
        + (
            c.key[2],
            c.key[0],
            c.key[1],
            str(c.get("n_samples")),
            fmt_value(c.get("excluded_degenerate")),
            fmt_num(c.get("fast_forwarded")),
            fmt_num(c.get("fast_forwarded_excl_degenerate")),
            fmt_num(c.get("stationary")),
            fmt_num(c.get("stationary_excl_degenerate")),
        )
        for c in mine
    )
    caption = "Jacobi statistics without requests whose output repeats one token >= 10 times (the reference's filter)"
    return TableBlock(headers=headers, rows=rows, caption=caption)


def sample_count_notes(cells: Sequence[Cell]) -> list[str]:
    """Cells whose samples.jsonl lines do not match their n_samples (a partial log?)."""
    notes = []
    for cell in sorted_cells(cells):
        n = cell.get("n_samples") or 0
        if len(cell.samples) != n:
            model, decoder, task = cell.key
            notes.append(
                f"{task} / {model} / {decoder} ({cell.run}): summary.json says n={n} but samples.jsonl has "
                f"{len(cell.samples)} line(s); per-sample plots use the lines present"
            )
    return notes


def task_metrics_tables(cells: Sequence[Cell], with_run: bool) -> list[TableBlock]:
    """Task-specific metrics (``task_metrics``), one table per task, one column per metric."""
    tables = []
    for task in sorted({c.key[2] for c in cells}):
        mine = sorted_cells(c for c in cells if c.key[2] == task)
        names = list(dict.fromkeys(name for c in mine for name in (c.get("task_metrics") or {})))
        if not names:
            continue
        headers = (("run",) if with_run else ()) + ("model", "decoder", "n") + tuple(names)
        rows = tuple(
            ((c.run,) if with_run else ())
            + (c.key[0], c.key[1], str(c.get("n_samples")))
            + tuple(fmt_value((c.get("task_metrics") or {}).get(n)) for n in names)
            for c in mine
        )
        tables.append(TableBlock(headers=headers, rows=rows, caption=f"{task}: task metrics as the task reports them"))
    return tables


def diff_table(rows: Sequence[DiffRow]) -> TableBlock:
    headers = (
        "task",
        "model",
        "decoder",
        "accuracy (old → new)",
        "Δ acc (SE)",
        "tokens/s (old → new)",
        "Δ tok/s",
        "speedup (old → new)",
        "verdict",
    )
    out, classes = [], []
    for d in rows:
        model, decoder, task = d.key
        a0, a1 = d.accuracy
        t0, t1 = d.tokens_per_s
        s0, s1 = d.speedup
        d_acc = DASH if a0 is None or a1 is None else f"{100 * (a1 - a0):+.1f} pt ({100 * (d.accuracy_se or 0):.1f})"
        d_tps = DASH if not t0 or t1 is None else f"{100 * (t1 - t0) / t0:+.1f}%"
        out.append(
            (
                task,
                model,
                decoder,
                f"{fmt_pct(a0)} → {fmt_pct(a1)}",
                d_acc,
                f"{fmt_num(t0, 1)} → {fmt_num(t1, 1)}",
                d_tps,
                f"{fmt_speedup(s0)} → {fmt_speedup(s1)}",
                "; ".join(("⚠ " + v) if v.startswith("REGRESSION") else v for v in d.verdicts) or "within noise",
            )
        )
        classes.append("bad" if d.regression else "good" if d.verdicts else "")
    return TableBlock(headers=headers, rows=tuple(out), row_class=tuple(classes))


def _paper_entry_text(entry: Mapping[str, Any], field_name: str) -> str:
    value = entry.get(field_name)
    if value is None:
        return ""
    approx = "≈" if entry.get(f"{field_name}_read_off_plot") else ""
    unit = "×" if field_name == "speedup" else " tok/s"
    size = entry.get("model_size")
    who = f" [{size}]" if size else ""
    digits = 2 if field_name == "speedup" and round(value, 1) != value else 1
    return f"{approx}{value:.{digits}f}{unit}{who}"


def paper_table(rows: Sequence[PaperRow], with_run: bool = False) -> TableBlock:
    headers = (
        "task",
        "method",
        "paper speedup",
        "paper tokens/s",
        "paper source",
        "ours: model / decoder",
        "ours: speedup",
        "ours: tokens/s",
        "ours: n × reps",
    )
    out = []
    for row in rows:
        paper_speed = "; ".join(t for t in (_paper_entry_text(e, "speedup") for e in row.paper) if t) or DASH
        paper_tps = "; ".join(t for t in (_paper_entry_text(e, "tokens_per_s") for e in row.paper) if t) or DASH
        sources = "; ".join(dict.fromkeys(str(e.get("source_short", e.get("source", ""))) for e in row.paper))
        if not row.ours:
            out.append((row.task, row.method, paper_speed, paper_tps, sources, "not measured", DASH, DASH, DASH))
            continue
        for i, cell in enumerate(sorted_cells(row.ours)):
            out.append(
                (
                    row.task if i == 0 else "",
                    row.method if i == 0 else "",
                    paper_speed if i == 0 else "",
                    paper_tps if i == 0 else "",
                    sources if i == 0 else "",
                    f"{cell.key[0]} / {cell.key[1]}" + (f" [{cell.run}]" if with_run else ""),
                    fmt_speedup(cell.get("speedup")),
                    fmt_tps(cell.record),
                    f"{cell.get('n_samples')} × {fmt_value(cell.get('repeats'))}",
                )
            )
    return TableBlock(headers=headers, rows=tuple(out), kind="wrap")


def paper_caveat(reference: Mapping[str, Any], runs: Sequence[Run]) -> str:
    """The sentence that keeps the side-by-side honest: what differs between paper and us."""
    ours = sorted({str(c["model"]) for r in runs for c in r.results})
    devices = sorted({str(r.provenance.get("device_name") or r.provenance.get("device") or "unknown device") for r in runs})
    dtypes = sorted({str(r.provenance.get("dtype") or "unknown dtype") for r in runs})
    stated = sorted({str(e["hardware"]) for e in reference.get("entries", []) if e.get("hardware", "not stated") != "not stated"})
    hardware = "hardware the sources do not state" + (f" or other devices ({'; '.join(stated)})" if stated else "")
    return (
        f"Not a like-for-like comparison: the published numbers come from 7B-class (and larger) models on {hardware}, "
        "with the reference scripts' own timing rules; this report measured "
        f"{', '.join(ours)} on {', '.join(devices)} in {', '.join(dtypes)}. Compare the shape (which method gains "
        "on which task, base model vs CLLM), not absolute values. ≈ marks a value read off a bar chart "
        f"({reference.get('read_off_plot_note', 'estimated from bar heights')}); "
        "speedups without ≈ are labels printed in the figure."
    )


SYNTHETIC_BANNER = "SYNTHETIC — not a measurement"


def synthetic_banner(runs: Sequence[Run]) -> str | None:
    """:data:`SYNTHETIC_BANNER` when any run's provenance says ``"synthetic": true``, else None.

    Fixture runs (scripts/make_report_fixture.py) set the marker; the report then puts the
    banner in its title, at the top of the provenance and on every plot.
    """
    return SYNTHETIC_BANNER if any(r.provenance.get("synthetic") is True for r in runs) else None


def build_document(runs: Sequence[Run], plots: Sequence[Any], reference: Mapping[str, Any] | None,
                   spec_bench_reference: Mapping[str, Any] | None = None) -> Document:  # fmt: skip
    """Everything the md/html reports show, format-neutral. ``spec_bench_reference``: the
    transcribed Spec-Bench leaderboard (:mod:`cllm_bench.report_speed`), shown beside
    spec_bench cells."""
    from cllm_bench.peers import report_section as peers_section
    from cllm_bench.report_speed import leaderboard_section, speed_sections

    all_cells = [c for r in runs for c in cells_of(r)]
    multi = len(runs) > 1
    banner = synthetic_banner(runs)
    sections: list[Section] = []

    synthetic_runs = [r.label for r in runs if r.provenance.get("synthetic") is True]
    banner_blocks: tuple[Block, ...] = (
        (
            TextBlock(
                f"{banner}: run(s) {', '.join(synthetic_runs)} carry provenance synthetic = true "
                "(made-up numbers from a fixture, not timed on any device).",
                "warning",
            ),
        )
        if banner
        else ()
    )
    sections.append(
        Section(
            "Provenance",
            "provenance",
            banner_blocks + (provenance_table(runs),),
        )
    )

    blocks: list[Block] = [
        TextBlock(
            "One row per (task, model, decoder). accuracy ± one binomial standard error; tokens/s = generated "
            "tokens / decode time, median over timed repeats with the min–max spread in brackets; speedup = "
            "tokens/s ÷ ar's on the same model and task in the same run; tok/fwd = generated tokens per target "
            "forward; fast-fwd and stationary = Jacobi statistics as the CLLM reference counts them (fast-fwd per "
            "block, stationary per request); match_ar = share of samples identical to ar; TTFT = median time to "
            "first token. n = samples, reps = timed repeats."
        ),
    ]
    wide = frozenset(run_wide_flags(all_cells))
    if wide:
        blocks.append(
            TextBlock("Every cell: " + "; ".join(f"⚠ {code} = {FLAG_LEGEND[code]}" for code in sorted(wide)), "warning")
        )
    blocks += [
        results_table(all_cells, multi, wide),
        TextBlock("Flags: " + "; ".join(f"⚠ {code} = {text}" for code, text in FLAG_LEGEND.items()), "note"),
    ]
    unfinished = [r.label for r in runs if r.provenance.get("complete") is False]
    if unfinished:
        blocks.insert(
            0,
            TextBlock(
                f"Run(s) {', '.join(unfinished)} did not finish (provenance complete = false): the tables cover the "
                "cells finished so far. Re-run the same `cllm-bench run` command to resume.",
                "warning",
            ),
        )
    degenerate = degenerate_table(all_cells, multi)
    notes = flag_notes(all_cells, wide)
    if notes:
        blocks.append(TextBlock("Flagged cells:\n" + "\n".join(f"- {n}" for n in notes), "warning"))
    mismatched = sample_count_notes(all_cells)
    if mismatched:
        blocks.append(
            TextBlock("Per-sample log does not match the summary:\n" + "\n".join(f"- {n}" for n in mismatched), "warning")
        )
    if degenerate is not None:
        blocks.append(degenerate)
    sections.append(Section("Results", "results", tuple(blocks)))

    if plots:
        sections.append(Section("Plots", "plots", tuple(PlotBlock(p) for p in plots)))
    sections += speed_sections(all_cells, multi)
    if (peers := peers_section(all_cells, multi)) is not None:  # ours vs HF, when both ran
        sections.append(peers)
    tm_tables = task_metrics_tables(all_cells, multi)
    if tm_tables:
        sections.append(Section("Task metrics", "task-metrics", tuple(tm_tables)))

    if reference is None:
        sections.append(
            Section(
                "Published numbers side by side",
                "paper",
                (TextBlock(f"Omitted: {REFERENCE_JSON} was not found (it ships with the source checkout).", "note"),),
            )
        )
    else:
        prow = paper_rows(all_cells, reference)
        pblocks: list[Block] = [TextBlock(paper_caveat(reference, runs), "warning")]
        if prow:
            pblocks.append(paper_table(prow, multi))
        else:
            published = ", ".join(sorted({str(e.get("task")) for e in reference.get("entries", [])}))
            pblocks.append(
                TextBlock(f"None of the tasks in this run has a published number (published: {published}).", "note")
            )
        claims = reference.get("claims") or []
        if claims:
            pblocks.append(
                TextBlock(
                    "Headline claims in the sources (text, not per task):\n"
                    + "\n".join(f"- {c.get('claim')} — {c.get('source')}" for c in claims),
                    "note",
                )
            )
        sections.append(Section("Published numbers side by side", "paper", tuple(pblocks)))
    leaderboard = leaderboard_section(all_cells, spec_bench_reference, multi)
    if leaderboard is not None:
        sections.append(leaderboard)

    if multi:
        base = runs[0]
        dblocks: list[Block] = [
            TextBlock(
                f"Each later run compared with the baseline run {base.label}. A tokens/s change is flagged only when the "
                f"two runs' min–max ranges over repeats do not overlap and the medians differ by more than "
                f"{TPS_TOLERANCE:.0%}; an accuracy change only when it exceeds one binomial standard error of the "
                "difference; match_ar of a lossless decoder must not drop."
            )
        ]
        base_cells = cells_of(base)
        for other in runs[1:]:
            rows, only_base, only_new = diff_cells(base_cells, cells_of(other))
            n_reg = sum(r.regression for r in rows)
            headline = f"{base.label} → {other.label}: {len(rows)} cells in both, {n_reg} regression(s)."
            dblocks.append(TextBlock(headline, "warning" if n_reg else "text"))
            if rows:
                dblocks.append(diff_table(rows))
            lonely = [(base.label, only_base), (other.label, only_new)]
            parts = [f"only in {label}: " + ", ".join("/".join(k) for k in keys) for label, keys in lonely if keys]
            if parts:
                dblocks.append(TextBlock("Not compared (present in one run only): " + "; ".join(parts), "note"))
        sections.append(Section("Comparing runs", "diff", tuple(dblocks)))

    title = f"cllm-bench report ({banner})" if banner else "cllm-bench report"
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    subtitle = f"{', '.join(r.label for r in runs)} — generated {generated}"
    return Document(title=title, subtitle=subtitle, sections=tuple(sections))


# =============================================================== 4. renderers
CODE_FIELDS = ("run folder", "git commit", "command")


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(table: TableBlock) -> str:
    lines = []
    if table.caption:
        lines += [f"*{table.caption}*", ""]
    lines.append("| " + " | ".join(_md_cell(h) for h in table.headers) + " |")
    lines.append("|" + "|".join("---" for _ in table.headers) + "|")
    for row in table.rows:
        if table.kind == "provenance" and row[0] in CODE_FIELDS:
            row = (row[0],) + tuple(f"`{c}`" for c in row[1:])
        lines.append("| " + " | ".join(_md_cell(c) for c in row) + " |")
    return "\n".join(lines)


def render_markdown(doc: Document) -> str:
    """The document as GitHub-flavoured markdown; plots link to the PNG files beside it."""
    out = [f"# {doc.title}", "", f"_{doc.subtitle}_", ""]
    for section in doc.sections:
        out += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, TableBlock):
                out += [markdown_table(block), ""]
            elif isinstance(block, TextBlock):
                prefix = {"warning": "> ⚠ ", "note": "> "}.get(block.kind, "")
                if prefix:
                    out += [prefix + line if i == 0 else "> " + line for i, line in enumerate(block.text.splitlines())]
                else:
                    out.append(block.text)
                out.append("")
            elif isinstance(block, PlotBlock):
                plot = block.plot
                out += [f"### {plot.title}", ""]
                if plot.png is None:
                    out += [f"_Not drawn: {plot.reason}_", ""]
                else:
                    out += [f"![{plot.title}]({plot.filename})", "", plot.caption, ""]
    return "\n".join(out).rstrip() + "\n"


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


def _rich_table(table: TableBlock, title: str | None = None) -> RichTable:
    """A compact rich table (no vertical rules, cells kept on one line)."""
    rt = RichTable(title=title, box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False, padding=(0, 1), expand=False)
    numeric = {"n", "reps", "speedup", "tok/fwd", "fast-fwd", "stationary", "match_ar", "TTFT"}
    wrapable = {"task", "model", "decoder", "flags", "verdict", "ours: model / decoder"}
    wrapable |= {"paper speedup", "paper source", "paper tokens/s"}
    for i, h in enumerate(table.headers):
        if table.kind == "provenance":
            rt.add_column(h, style="bold" if i == 0 else None, no_wrap=i == 0, overflow="fold")
            continue
        rt.add_column(
            h,
            justify="right" if h in numeric else "left",
            no_wrap=h not in wrapable,
            overflow="fold",
            min_width=min(10, max(cell_len(h), 6)) if h in wrapable else None,
        )
    for i, row in enumerate(table.rows):
        style = {"warn": "yellow", "bad": "bold red", "good": "green"}.get(table.klass(i))
        rt.add_row(*row, style=style)
    return rt


TERMINAL_DROP_ORDER: tuple[str, ...] = (
    "TTFT",
    "reps",
    "stationary",
    "fast-fwd",
    "paper source",
    "ours: n × reps",
    "paper tokens/s",
    "tok/fwd",
    "Δ acc (SE)",
    "accuracy (old → new)",
    "match_ar",
    "ours: tokens/s",
    "speedup (old → new)",
)


TERMINAL_SHORTEN: dict[str, tuple[str, str]] = {  # header -> (short header, cut each cell at this text)
    "tokens/s (min–max)": ("tokens/s", " ("),
    "accuracy ± SE": ("accuracy", " ±"),
}


def fit_table(table: TableBlock, width: int) -> tuple[TableBlock, list[str]]:
    """Drop low-priority columns (:data:`TERMINAL_DROP_ORDER`) until the table fits ``width``.

    Returns the narrowed table and the names of the hidden columns.
    """

    def needed(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> int:
        widths = [max([cell_len(h)] + [cell_len(r[i]) for r in rows]) for i, h in enumerate(headers)]
        return sum(widths) + 3 * len(widths) + 1  # padding 1+1 and a separator per column

    headers, rows, hidden = list(table.headers), [list(r) for r in table.rows], []
    for name in TERMINAL_DROP_ORDER:
        if needed(headers, rows) <= width:
            break
        if name in headers:
            i = headers.index(name)
            headers.pop(i)
            for r in rows:
                r.pop(i)
            hidden.append(name)
    for name, (short, cut) in TERMINAL_SHORTEN.items():
        if needed(headers, rows) <= width:
            break
        if name in headers:
            i = headers.index(name)
            headers[i] = short
            for r in rows:
                r[i] = r[i].split(cut, 1)[0]
            hidden.append(f"{name} → {short}")
    narrowed = TableBlock(tuple(headers), tuple(tuple(r) for r in rows), table.row_class, table.caption, table.kind)
    return narrowed, hidden


def print_terminal(console: Console, doc: Document) -> None:
    """Provenance, the results table, flags, paper comparison and diffs, in the terminal."""
    console.rule(f"[bold]{doc.title}[/bold]")
    console.print(doc.subtitle, markup=False)
    for section in doc.sections:
        if section.anchor == "plots":
            continue
        console.print()
        console.rule(section.title, align="left")
        for block in section.blocks:
            if isinstance(block, TableBlock):
                narrowed, hidden = fit_table(block, console.width)
                console.print(_rich_table(narrowed, block.caption or None))
                if hidden:
                    note = f"(hidden for terminal width: {', '.join(hidden)}; see report.md)"
                    console.print(note, style="dim", markup=False)
            elif isinstance(block, TextBlock):
                style = {"warning": "yellow", "note": "dim"}.get(block.kind)
                console.print(block.text, style=style, markup=False, highlight=False)


# =============================================================== entry point
def write_outputs(
    doc: Document, runs: Sequence[Run], plots: Sequence[Any], output: Path, formats: Sequence[str]
) -> list[Path]:
    """Write the requested formats (plots as PNG when md or html is asked for)."""
    from cllm_bench.report_html import render_html

    output.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if "md" in formats or "html" in formats:
        for plot in plots:
            if plot.png is not None:
                path = output / plot.filename
                path.write_bytes(plot.png)
                written.append(path)
    if "md" in formats:
        path = output / "report.md"
        path.write_text(render_markdown(doc), encoding="utf-8")
        written.append(path)
    if "html" in formats:
        path = output / "report.html"
        path.write_text(render_html(doc), encoding="utf-8")
        written.append(path)
    if "csv" in formats:
        cells = [c for r in runs for c in cells_of(r)]
        path = output / "summary.csv"
        path.write_text(summary_csv(cells), encoding="utf-8")
        written.append(path)
        if len(runs) > 1:
            path = output / "diff.csv"
            path.write_text(diff_csv(runs), encoding="utf-8")
            written.append(path)
    return written


def run_report(run_dirs: list[Path], output_dir: Path | None, formats: list[str], console: Console,
               curves: Sequence[Path] = (), cost_tables: Sequence[Path] = ()) -> Path:  # fmt: skip
    """Build the report of one or more run folders; return the output folder.

    ``curves``: training manifests whose learning curves get a section and a plot
    (:mod:`cllm_bench.report_curves`); read before anything is written. ``cost_tables``:
    a "Predicted speed" section per table (:mod:`cllm_bench.predict`).

    The first run folder is the baseline of any comparison; the default output folder is
    its ``report/`` subfolder. Raises :class:`UserError` for a missing run folder, a
    missing or corrupt ``summary.json``/``samples.jsonl``, or an unknown format.
    """
    from cllm_bench.report_plots import make_plots

    if not run_dirs:
        raise UserError("no run folder given; pass one or more folders written by `cllm-bench run`")
    chosen = parse_formats(formats)
    paths = [Path(p) for p in run_dirs]
    labels = run_labels(paths)
    runs = [load_run(p, label) for p, label in zip(paths, labels)]
    output = Path(output_dir) if output_dir is not None else paths[0] / "report"
    if output.exists() and not output.is_dir():
        raise UserError(f"output {output} exists and is not a folder; pass --output with a folder path")
    check_output_path(output, "--output")
    from cllm_bench.report_curves import curves_section, load_curve

    loaded_curves = [load_curve(Path(c)) for c in curves]
    reference = load_references()
    cells = [c for r in runs for c in cells_of(r)]
    plots = make_plots(cells, banner=synthetic_banner(runs)) if ("md" in chosen or "html" in chosen) else []
    from cllm_bench.report_speed import load_spec_bench_reference

    doc = build_document(runs, plots, reference, load_spec_bench_reference())
    if loaded_curves:
        section, curve_plot = curves_section(loaded_curves, synthetic_banner(runs))
        doc = replace(doc, sections=doc.sections + (section,))
        plots = list(plots) + [curve_plot]
    if cost_tables:  # predicted speed next to the measured one (cllm_bench.predict)
        from cllm_bench.predict import predict_section

        doc = replace(doc, sections=doc.sections + (predict_section(paths, cost_tables),))
    print_terminal(console, doc)
    try:
        written = write_outputs(doc, runs, plots, output, chosen)
    except OSError as exc:
        raise UserError(f"cannot write the report to --output {output}: {exc.strerror or exc}; pass a writable folder") from None
    console.print()
    console.print(f"Report written to {output}/ ({', '.join(p.name for p in written)})", markup=False, highlight=False)
    return output
