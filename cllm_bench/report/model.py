"""Layer 1 of the report: run folders loaded and validated into :class:`Run` and
:class:`Cell` objects (the record fields come from :mod:`cllm_bench.records`), and the
order cells are shown in.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from cllm_bench.errors import UserError
from cllm_bench.records import CELL_KEY, CELL_NUMERIC_KEYS, CELL_REQUIRED_KEYS, CellKey

SUMMARY_FILE = "summary.json"
SAMPLES_FILE = "samples.jsonl"
FORMATS: tuple[str, ...] = ("md", "html", "csv")
REQUIRED_RECORD_KEYS: tuple[str, ...] = CELL_REQUIRED_KEYS
NUMERIC_RECORD_KEYS: tuple[str, ...] = CELL_NUMERIC_KEYS
REQUIRED_SAMPLE_KEYS: tuple[str, ...] = CELL_KEY


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


def decoder_family(decoder: str) -> str:
    """``"jacobi:n=16"`` -> ``"jacobi"``."""
    return decoder.split(":", 1)[0].strip().lower()


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
