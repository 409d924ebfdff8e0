"""The report's format-neutral document model (:class:`Document` of :class:`Section`
blocks: tables, text, plots) and the number formatting every renderer shares.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Union

from cllm_bench.report.facts import _spread, binomial_se

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
    plot: Any  # cllm_bench.report.plots.Plot


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
