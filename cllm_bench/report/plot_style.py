"""Plot plumbing shared by every report figure: the :class:`Plot` record, PNG output
with the synthetic banner, colours/markers/hatches per decoder, task and run, legends,
footnotes and grouped bars. matplotlib is imported here (and only by the plot modules).
"""

from __future__ import annotations

import io
import statistics
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from cllm_bench.report.facts import LOW_N
from cllm_bench.report.model import Cell, decoder_family, decoder_sort_key, sorted_cells

DPI = 100


FAMILY_CMAPS = {"jacobi": "Blues", "cllm": "Oranges", "lookahead": "Greens", "speculative": "Purples", "medusa": "RdPu",
               "eagle": "YlOrBr"}


OTHER_COLORS = ("tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:red")
TASK_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
RUN_HATCHES = ("", "///", "...", "xx", "\\\\\\")
RUN_LINESTYLES = ("-", "--", ":", "-.")


@dataclass(frozen=True)
class Plot:
    """One figure of the report.

    name: file stem (``<name>.png``); png: the encoded figure, or None when there was
    nothing to draw, in which case ``reason`` says why in one sentence.
    """

    name: str
    title: str
    caption: str
    png: bytes | None
    reason: str | None = None

    @property
    def filename(self) -> str:
        return f"{self.name}.png"


@dataclass(frozen=True)
class Style:
    """How one (decoder, run) series is drawn."""

    color: Any
    hatch: str
    linestyle: str
    filled: bool


# --------------------------------------------------------------- helpers
def stamp_banner(fig: Figure, banner: str) -> None:
    """Put ``banner`` on top of the figure's suptitle and across the figure as a watermark.

    Used for synthetic runs (see :func:`cllm_bench.report.synthetic_banner`) so that a
    plot cut out of the report still says it is not a measurement.
    """
    old = fig.get_suptitle()
    fig.suptitle(f"{banner}\n{old}" if old else banner, fontsize=12, color="tab:red", fontweight="bold")
    width, height = fig.get_size_inches()
    fig.text(
        0.5,
        0.5,
        banner,
        ha="center",
        va="center",
        rotation=20,
        color="tab:red",
        alpha=0.2,
        fontsize=min(40.0, 3.0 * width, 6.0 * height),  # the diagonal stays inside the figure
        fontweight="bold",
        zorder=10,
    )


def figure_png(fig: Figure, banner: str | None = None) -> bytes:
    """Encode a figure as PNG (Agg) without touching pyplot.

    With ``banner`` the figure is stamped first (:func:`stamp_banner`). The suptitle is
    also written as the PNG's ``Title`` text chunk.
    """
    if banner:
        stamp_banner(fig, banner)
    title = fig.get_suptitle()
    buf = io.BytesIO()
    fig.savefig(
        buf, format="png", dpi=DPI, bbox_inches="tight", facecolor="white", metadata={"Title": title} if title else None
    )
    return buf.getvalue()


def new_figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def run_order(cells: Sequence[Cell]) -> list[str]:
    """Run labels in the order the cells list them (the first run is the baseline)."""
    return list(dict.fromkeys(c.run for c in cells))


def series_key(cell: Cell, runs: Sequence[str]) -> str:
    """Legend label of a cell: its decoder, plus the run when several runs are shown."""
    return f"{cell.key[1]} [{cell.run}]" if len(runs) > 1 else cell.key[1]


def decoder_colors(decoders: Sequence[str]) -> dict[str, Any]:
    """A colour per decoder label: family hue (jacobi blue, cllm orange, ...), ar grey."""
    by_family: dict[str, list[str]] = {}
    for d in dict.fromkeys(decoders):
        by_family.setdefault(decoder_family(d), []).append(d)
    colors: dict[str, Any] = {}
    other = 0
    for family, members in by_family.items():
        if family == "ar":
            colors.update({m: "0.6" for m in members})
        elif family in FAMILY_CMAPS:
            cmap = colormaps[FAMILY_CMAPS[family]]
            for i, m in enumerate(members):
                colors[m] = cmap(0.85 - 0.45 * i / (len(members) - 1)) if len(members) > 1 else cmap(0.7)
        else:
            for m in members:
                colors[m] = OTHER_COLORS[other % len(OTHER_COLORS)]
                other += 1
    return colors


def series_styles(cells: Sequence[Cell]) -> dict[str, Style]:
    """Style per series key: colour from the decoder, hatch/line/fill from the run."""
    runs = run_order(cells)
    colors = decoder_colors([c.key[1] for c in sorted_cells(cells)])
    styles: dict[str, Style] = {}
    for c in cells:
        r = runs.index(c.run)
        styles[series_key(c, runs)] = Style(
            color=colors[c.key[1]],
            hatch=RUN_HATCHES[r % len(RUN_HATCHES)],
            linestyle=RUN_LINESTYLES[r % len(RUN_LINESTYLES)],
            filled=r == 0,
        )
    return styles


def run_legend_handles(runs: Sequence[str], kind: str) -> list[Any]:
    """Legend entries explaining how runs are told apart (only with several runs)."""
    if len(runs) < 2:
        return []
    handles: list[Any] = []
    for i, run in enumerate(runs):
        if kind == "bar":
            handles.append(
                Patch(facecolor="white", edgecolor="0.2", hatch=RUN_HATCHES[i % len(RUN_HATCHES)], label=f"run {run}")
            )
        elif kind == "line":
            handles.append(
                Line2D([], [], color="0.2", linestyle=RUN_LINESTYLES[i % len(RUN_LINESTYLES)], label=f"run {run}")
            )
        else:
            handles.append(
                Line2D(
                    [],
                    [],
                    marker="o",
                    linestyle="",
                    color="0.3",
                    markerfacecolor="0.3" if i == 0 else "white",
                    label=f"run {run}",
                )
            )
    return handles


def counts_note(cells: Sequence[Cell], extra: str = "") -> str:
    """Footnote: sample counts and repeats of the plotted cells."""
    ns = [c.get("n_samples") for c in cells if c.get("n_samples") is not None]
    reps = sorted({c.get("repeats") for c in cells if c.get("repeats") is not None})
    if ns and min(ns) != max(ns):
        n_text = f"n = {min(ns)}–{max(ns)} samples per cell"
    else:
        n_text = f"n = {ns[0] if ns else '?'} samples per cell"
    r_text = f"timed repeats = {', '.join(map(str, reps))}" if reps else "repeats unknown"
    low = sum(1 for n in ns if n < LOW_N)
    low_text = f"; * = fewer than {LOW_N} samples ({low} cells)" if low else ""
    return f"{n_text}; {r_text}{low_text}" + (f"; {extra}" if extra else "")


def add_footnote(fig: Figure, text: str) -> None:
    fig.text(0.0, -0.02, text, ha="left", va="top", fontsize=8, color="0.3")


def _omitted(name: str, title: str, reason: str) -> Plot:
    return Plot(name=name, title=title, caption="", png=None, reason=reason)


def _sem(values: Sequence[float]) -> float:
    return statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0


def grouped_bars(
    ax: Axes,
    groups: Sequence[str],
    series: Sequence[str],
    value: Callable[[str, str], tuple[float, float, float] | None],
    styles: dict[str, Style],
    annotate: Callable[[str, str, float], str] | None = None,
) -> float:
    """Draw bars for series x groups; ``value`` gives (low, mid, high) or None. Returns the max high."""
    width = 0.8 / max(len(series), 1)
    top = 0.0
    for si, name in enumerate(series):
        for gi, group in enumerate(groups):
            v = value(name, group)
            if v is None:
                continue
            low, mid, high = v
            x = gi - 0.4 + width * (si + 0.5)
            st = styles[name]
            ax.bar(
                x,
                mid,
                width * 0.92,
                yerr=[[max(mid - low, 0)], [max(high - mid, 0)]],
                capsize=2,
                color=st.color,
                hatch=st.hatch,
                edgecolor="0.25",
                linewidth=0.5,
            )
            if annotate is not None:
                ax.text(
                    x,
                    high,
                    annotate(name, group, mid),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    rotation=90 if len(series) > 5 else 0,
                )
            top = max(top, high)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.grid(axis="y", alpha=0.3)
    return top


def decoder_legend_handles(series: Sequence[str], styles: dict[str, Style], runs: Sequence[str]) -> list[Any]:
    """One colour patch per decoder (runs collapsed), then the run hatches."""
    seen: dict[str, Any] = {}
    for name in series:
        decoder = name.rsplit(" [", 1)[0] if len(runs) > 1 else name
        seen.setdefault(decoder, styles[name].color)
    return [Patch(facecolor=c, edgecolor="0.25", label=d) for d, c in seen.items()] + run_legend_handles(runs, "bar")


# --------------------------------------------------------------- 2. accuracy vs speedup
def place_labels(ax: Axes, points: Sequence[tuple[float, float, str]], fontsize: float = 7) -> None:
    """Label points without overlaps: shift a label up/down in line steps until its box
    is clear of other labels and markers. Points with the same text at (nearly) the
    same place get one label. Call after the figure's layout is final.
    """
    fig = ax.get_figure()
    x0, x1 = ax.get_xlim()
    y0, y1 = ax.get_ylim()
    box = ax.get_position()
    w_px = box.width * fig.get_figwidth() * DPI
    h_px = box.height * fig.get_figheight() * DPI
    char_w = (x1 - x0) * (fontsize * 0.62) / max(w_px, 1)
    line_h = (y1 - y0) * (fontsize * 1.5) / max(h_px, 1)
    pad = char_w * 2.2
    marker_w, marker_h = char_w * 1.6, line_h * 0.6
    placed: list[tuple[float, float, float, float]] = [
        (x - marker_w, y - marker_h, x + marker_w, y + marker_h) for x, y, _ in points
    ]
    done: list[tuple[float, float, str]] = []
    for x, y, text in sorted(points, key=lambda p: (p[0], p[1])):
        if any(t == text and abs(x - px) < 3 * char_w and abs(y - py) < line_h for px, py, t in done):
            continue
        done.append((x, y, text))
        width = len(text) * char_w
        for step in (0, 1, -1, 2, -2, 3, -3, 4, -4, 5, -5, 6, -6, 7, -7, 8, -8):
            ly = y + step * line_h
            rect = (x + pad, ly - line_h / 2, x + pad + width, ly + line_h / 2)
            if not any(rect[0] < r[2] and r[0] < rect[2] and rect[1] < r[3] and r[1] < rect[3] for r in placed):
                break
        placed.append(rect)
        ax.annotate(
            text,
            (x, y),
            xytext=(x + pad, ly),
            textcoords="data",
            fontsize=fontsize,
            va="center",
            arrowprops={"arrowstyle": "-", "color": "0.6", "linewidth": 0.5} if step else None,
        )


def model_decoder_styles(cells: Sequence[Cell]) -> tuple[list[str], dict[str, Style]]:
    """Series "model · decoder [run]" for the Jacobi comparison: base-model Jacobi first, then CLLM;
    colour from the decoder family (shade per model/decoder), hatch from the run."""
    runs = run_order(cells)
    ordered = sorted(cells, key=lambda c: (decoder_sort_key(c.key[1]), c.key[0], runs.index(c.run)))
    pairs = list(dict.fromkeys(f"{c.key[0]} · {c.key[1]}" for c in ordered))
    colors = decoder_colors([p.split(" · ", 1)[1] for p in pairs])  # family hue per decoder label
    by_family: dict[str, list[str]] = {}
    for p in pairs:
        by_family.setdefault(decoder_family(p.split(" · ", 1)[1]), []).append(p)
    shade: dict[str, Any] = {}
    for family, members in by_family.items():
        cmap = colormaps[FAMILY_CMAPS[family]] if family in FAMILY_CMAPS else None
        for i, m in enumerate(members):
            if cmap is None:
                shade[m] = colors[m.split(" · ", 1)[1]]
            else:
                shade[m] = cmap(0.85 - 0.5 * i / (len(members) - 1)) if len(members) > 1 else cmap(0.7)
    series: list[str] = []
    styles: dict[str, Style] = {}
    for c in ordered:
        pair = f"{c.key[0]} · {c.key[1]}"
        key = f"{pair} [{c.run}]" if len(runs) > 1 else pair
        r = runs.index(c.run)
        if key not in styles:
            series.append(key)
            styles[key] = Style(
                shade[pair], RUN_HATCHES[r % len(RUN_HATCHES)], RUN_LINESTYLES[r % len(RUN_LINESTYLES)], r == 0
            )
    return series, styles
