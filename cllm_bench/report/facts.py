"""Layer 2 of the report: facts about cells, as small pure functions — flags (low n,
few repeats, lossless mismatch, busy machine), run diffs, the paper comparison and the
synthetic-run banner.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from cllm_bench.errors import UserError
from cllm_bench.records import CellKey
from cllm_bench.report.model import Cell, Run, _is_number, decoder_family, decoder_sort_key

LOW_N = 10  # cells with fewer samples are flagged
MIN_REPEATS = 3  # DESIGN.md: >= 3 timed repeats
TPS_TOLERANCE = 0.02  # relative tokens/s change always treated as noise in run diffs
REFERENCE_JSON = Path(__file__).resolve().parents[2] / "results" / "reference" / "cllm_paper.json"


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


RUN_WIDE_CODES = ("LOW-N", "FEW-REPEATS")  # stated once, not per row, when every cell has them


def run_wide_flags(cells: Sequence[Cell]) -> set[str]:
    """Flag codes of :data:`RUN_WIDE_CODES` that every cell carries (e.g. a 1-repeat smoke run)."""
    if not cells:
        return set()
    common = set(RUN_WIDE_CODES)
    for cell in cells:
        common &= {f.code for f in cell_flags(cell.record)}
    return common


SYNTHETIC_BANNER = "SYNTHETIC — not a measurement"


def synthetic_banner(runs: Sequence[Run]) -> str | None:
    """:data:`SYNTHETIC_BANNER` when any run's provenance says ``"synthetic": true``, else None.

    Fixture runs (scripts/make_report_fixture.py) set the marker; the report then puts the
    banner in its title, at the top of the provenance and on every plot.
    """
    return SYNTHETIC_BANNER if any(r.provenance.get("synthetic") is True for r in runs) else None
