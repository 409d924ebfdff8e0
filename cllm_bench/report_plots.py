"""Plots of `cllm-bench report`, drawn with matplotlib's object API (no pyplot state).

Every plot function takes cells (summary records with their samples) and returns a
:class:`Plot`: PNG bytes, or ``png=None`` with the reason it was not drawn. Each figure
carries a title, axis labels, a legend and a footnote with the sample counts, repeats
and what the error bars mean, so that it reads without the surrounding text.

Styling is shared: a decoder keeps its colour in every figure (ar grey, Jacobi blue,
CLLM orange, lookahead green, ...); when several runs are shown, the run changes the
hatch / line style / marker fill, never the colour.
"""

from __future__ import annotations

import io
import re
import statistics
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure  # Figure.savefig renders PNG through Agg; pyplot is never used
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from cllm_bench.report import LOW_N, Cell, decoder_family, decoder_sort_key, sorted_cells

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


def _jacobi_n(sample: dict[str, Any]) -> int | None:
    n = sample.get("jacobi_n")
    if isinstance(n, int) and not isinstance(n, bool) and n > 0:
        return n
    m = re.search(r"(?:^|[:,])n=(\d+)", str(sample.get("decoder", "")))
    return int(m.group(1)) if m else None


def _omitted(name: str, title: str, reason: str) -> Plot:
    return Plot(name=name, title=title, caption="", png=None, reason=reason)


def _sem(values: Sequence[float]) -> float:
    return statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0


def speedup_range(cell: Cell) -> tuple[float, float, float]:
    """(low, speedup, high): the speedup scaled by the tokens/s spread over repeats."""
    s = cell.get("speedup")
    tps = cell.get("tokens_per_s") or 0.0
    if not tps:
        return s, s, s
    low = s * (cell.get("tokens_per_s_min") or tps) / tps
    high = s * (cell.get("tokens_per_s_max") or tps) / tps
    return min(low, s), s, max(high, s)


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


# --------------------------------------------------------------- 1. speedup bars
def plot_speedup(cells: Sequence[Cell], banner: str | None = None) -> Plot:
    """Grouped bars: speedup per decoder (bars) per task (groups), one panel per model."""
    name, title = "speedup", "Speedup over greedy autoregressive decoding (ar = 1.0)"
    usable = [c for c in cells if c.get("speedup") is not None]
    if not usable:
        return _omitted(name, title, "no cell has a speedup: the runs have no ar cell on the same model and task.")
    runs = run_order(usable)
    styles = series_styles(usable)
    models = sorted({c.key[0] for c in usable})
    tasks = sorted({c.key[2] for c in usable})
    series = list(dict.fromkeys(series_key(c, runs) for c in sorted_cells(usable)))
    fig = new_figure(11, 3.3 * len(models) + 0.8)
    axes = fig.subplots(len(models), 1, squeeze=False)[:, 0]
    for ax, model in zip(axes, models):
        mine = {(series_key(c, runs), c.key[2]): c for c in usable if c.key[0] == model}

        def value(s: str, t: str, mine: dict = mine) -> tuple[float, float, float] | None:
            return speedup_range(mine[(s, t)]) if (s, t) in mine else None

        def label(s: str, t: str, v: float, mine: dict = mine) -> str:
            return f"{v:.2f}" + ("*" if (mine[(s, t)].get("n_samples") or 0) < LOW_N else "")

        top = grouped_bars(ax, tasks, series, value, styles, label)
        ax.axhline(1.0, color="black", linestyle="--", linewidth=1)
        ax.set_ylim(0, max(top, 1.0) * 1.2)
        ax.set_ylabel("speedup (× ar tokens/s)")
        ax.set_xlabel("task")
        ax.set_title(f"model: {model}", fontsize=10)
    handles = decoder_legend_handles(series, styles, runs)
    handles.append(Line2D([], [], color="black", linestyle="--", label="ar = 1.0"))
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, title="decoder", title_fontsize=8)
    fig.suptitle(title, fontsize=12)
    add_footnote(fig, counts_note(usable, "bar = median tokens/s over repeats ÷ ar's; error bar = min–max over repeats"))
    caption = "Speedup of every decoder over ar on the same model and task; above the dashed line is faster than ar."
    return Plot(name, title, caption, figure_png(fig, banner))


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


def plot_accuracy_vs_speedup(cells: Sequence[Cell], banner: str | None = None) -> Plot:
    """Scatter, one point per decoder x task, one panel per model; error bars both ways."""
    name, title = "accuracy_vs_speedup", "Accuracy vs speedup (one point per decoder × task)"
    usable = [c for c in cells if c.get("accuracy") is not None and c.get("speedup") is not None]
    if not usable:
        return _omitted(
            name,
            title,
            "no cell has both an accuracy and a speedup "
            "(accuracy is null for tasks without a scorer, e.g. mt_bench without a judge).",
        )
    runs = run_order(usable)
    styles = series_styles(usable)
    models = sorted({c.key[0] for c in usable})
    tasks = sorted({c.key[2] for c in usable})
    markers = {t: TASK_MARKERS[i % len(TASK_MARKERS)] for i, t in enumerate(tasks)}
    cols = min(len(models), 2)
    rows = (len(models) + cols - 1) // cols
    fig = new_figure(6.0 * cols + 2.2, 4.8 * rows + 0.6)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    labelled: list[tuple[Axes, list[tuple[float, float, str]]]] = []
    for ax, model in zip(axes, models):
        points = []
        mine = sorted_cells(c for c in usable if c.key[0] == model)
        for cell in mine:
            st = styles[series_key(cell, runs)]
            low, s, high = speedup_range(cell)
            p, n = cell.get("accuracy"), cell.get("n_samples") or 0
            se = 100 * (p * (1 - p) / n) ** 0.5 if n else 0.0
            ax.errorbar(
                [s],
                [100 * p],
                xerr=[[s - low], [high - s]],
                yerr=[[se], [se]],
                fmt=markers[cell.key[2]],
                color=st.color,
                markerfacecolor=st.color if st.filled else "white",
                markeredgecolor="0.15",
                markersize=8,
                capsize=2,
                elinewidth=0.8,
                alpha=0.9,
            )
            points.append((s, 100 * p, cell.key[1] + ("*" if n < LOW_N else "")))
        ax.axvline(1.0, color="black", linestyle="--", linewidth=1)
        ax.set_xlabel("speedup over ar (×)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"model: {model}", fontsize=10)
        ax.grid(alpha=0.3)
        xs = [pt[0] for pt in points]
        ax.set_xlim(min(min(xs), 1.0) - 0.1, max(xs) + 0.25 * (max(xs) - min(min(xs), 1.0)) + 0.3)
        ys = [pt[1] for pt in points]
        ax.set_ylim(max(min(ys) - 25, -2), min(max(ys) + 25, 102))
        labelled.append((ax, points))
    for ax in axes[len(models) :]:
        ax.set_visible(False)
    handles: list[Any] = [
        Line2D([], [], marker=markers[t], linestyle="", color="0.4", markersize=8, label=f"task: {t}") for t in tasks
    ]
    colors = decoder_colors([c.key[1] for c in sorted_cells(usable)])
    handles += [Line2D([], [], marker="o", linestyle="", color=col, markersize=8, label=d) for d, col in colors.items()]
    handles += run_legend_handles(runs, "marker")
    handles.append(Line2D([], [], color="black", linestyle="--", label="ar speed (1.0×)"))
    fig.legend(handles=handles, loc="outside right upper", fontsize=8)
    fig.suptitle(title, fontsize=12)
    fig.draw_without_rendering()  # fix the constrained layout before measuring label sizes
    for ax, points in labelled:
        place_labels(ax, points)
    add_footnote(fig, counts_note(usable, "vertical bars: ± one binomial SE; horizontal bars: min–max speed over repeats"))
    caption = (
        "Up and to the right is better. Lossless decoders should sit at ar's accuracy; "
        "a point off that level means outputs changed."
    )
    return Plot(name, title, caption, figure_png(fig, banner))


# --------------------------------------------------------------- 3. accepted per forward
def plot_accepted_per_forward(cells: Sequence[Cell], banner: str | None = None) -> Plot:
    """Box plots of tokens accepted per target forward, per decoder, one panel per model."""
    name, title = "accepted_per_forward", "Tokens accepted per target forward (distribution over all forwards)"
    runs = run_order(cells)
    data: dict[str, dict[str, list[int]]] = {}
    samples_used: dict[str, int] = {}
    for cell in sorted_cells(cells):
        values = [int(v) for s in cell.samples for v in (s.get("accepted_per_step") or [])]
        if values:
            data.setdefault(cell.key[0], {}).setdefault(series_key(cell, runs), []).extend(values)
            samples_used[cell.key[0]] = samples_used.get(cell.key[0], 0) + len(cell.samples)
    if not data:
        return _omitted(name, title, "no sample in samples.jsonl has accepted_per_step.")
    used = [c for c in cells if any(s.get("accepted_per_step") for s in c.samples)]
    styles = series_styles(used)
    models = sorted(data)
    height = max(2.2, 0.38 * max(len(data[m]) for m in models) + 1.2)
    fig = new_figure(10, height * len(models) + 0.8)
    axes = fig.subplots(len(models), 1, squeeze=False)[:, 0]
    for ax, model in zip(axes, models):
        labels = list(data[model])
        series = [data[model][lbl] for lbl in labels]
        ticks = [f"{lbl}\n{len(v)} fwd, mean {statistics.fmean(v):.2f}" for lbl, v in zip(labels, series)]
        bp = ax.boxplot(
            series,
            orientation="horizontal",
            tick_labels=ticks,
            showmeans=True,
            patch_artist=True,
            whis=(5, 95),
            showfliers=False,
            medianprops={"color": "black", "linewidth": 1.5},
            meanprops={"marker": "D", "markerfacecolor": "white", "markeredgecolor": "black", "markersize": 5},
        )
        for patch, lbl in zip(bp["boxes"], labels):
            patch.set_facecolor(styles[lbl].color)
            patch.set_hatch(styles[lbl].hatch)
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=8)
        ax.set_xlabel("tokens accepted in one forward (ar = 1)")
        ax.set_title(f"model: {model} ({samples_used[model]} samples, tasks pooled)", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        ax.set_xlim(left=0)
    handles = [
        Line2D([], [], color="black", linewidth=1.5, label="median"),
        Line2D([], [], marker="D", linestyle="", markerfacecolor="white", markeredgecolor="black", label="mean"),
        Patch(facecolor="0.8", edgecolor="0.25", label="box: 25–75%"),
        Line2D([], [], color="black", linewidth=1, label="whiskers: 5–95%"),
    ] + run_legend_handles(runs, "bar")
    fig.legend(handles=handles, loc="outside right upper", fontsize=8)
    fig.suptitle(title, fontsize=12)
    note = "one value per target forward incl. prefill (samples.jsonl accepted_per_step); the mean is the tok/fwd column"
    add_footnote(fig, counts_note(used, note))
    caption = "How many tokens each forward of the target model made final; further right means fewer forwards per token."
    return Plot(name, title, caption, figure_png(fig, banner))


# --------------------------------------------------------------- 4. Jacobi FF / stationary
def jacobi_stat(cell: Cell, which: str) -> tuple[float, float, float] | None:
    """(value - SE, value, value + SE) of a Jacobi statistic of a cell, or None.

    which: "ff" -- fast-forwarded tokens per block (record ``fast_forwarded``; SE over
    the requests' values); "stationary" -- stationary tokens per block (record
    ``stationary_per_block``; SE over all blocks' counts). Falls back to the samples'
    mean when the record lacks the value.
    """
    if which == "ff":
        values = [float(s["fast_forwarded"]) for s in cell.samples if s.get("fast_forwarded") is not None]
        value = cell.get("fast_forwarded")
    else:
        values = [float(v) for s in cell.samples for v in (s.get("block_stationary") or [])]
        value = cell.get("stationary_per_block")
    if value is None:
        if not values:
            return None
        value = statistics.fmean(values)
    se = _sem(values) if values else 0.0
    return value - se, value, value + se


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


def plot_jacobi_ff_stationary(cells: Sequence[Cell], banner: str | None = None) -> Plot:
    """Fast-forwarded and stationary tokens per block per task: base model + Jacobi next to the CLLM."""
    name = "jacobi_ff_stationary"
    title = "Jacobi: fast-forwarded and stationary tokens per block, base model + Jacobi vs CLLM"
    usable = [c for c in cells if jacobi_stat(c, "ff") is not None]
    if not usable:
        return _omitted(
            name,
            title,
            "no cell has Jacobi statistics (fast_forwarded is null for every decoder); run jacobi or cllm to get them.",
        )
    runs = run_order(usable)
    series, styles = model_decoder_styles(usable)
    tasks = sorted({c.key[2] for c in usable})
    cellmap = {
        ((f"{c.key[0]} · {c.key[1]} [{c.run}]" if len(runs) > 1 else f"{c.key[0]} · {c.key[1]}"), c.key[2]): c
        for c in usable
    }
    fig = new_figure(13, 4.8)
    axes = fig.subplots(1, 2)
    panels = ((axes[0], "ff", "fast-forwarded tokens / block"), (axes[1], "stationary", "stationary tokens / block"))
    for ax, which, ylabel in panels:

        def value(s: str, t: str, which: str = which) -> tuple[float, float, float] | None:
            return jacobi_stat(cellmap[(s, t)], which) if (s, t) in cellmap else None

        top = grouped_bars(ax, tasks, series, value, styles, lambda s, t, v: f"{v:.2f}")
        if top <= 0:
            ax.text(0.5, 0.5, "not recorded", transform=ax.transAxes, ha="center", color="0.4")
        ax.set_ylim(0, max(top, 0.5) * 1.2)
        ax.set_ylabel(ylabel)
        ax.set_xlabel("task")
        ax.set_title(ylabel, fontsize=10)
    pairs = {(s.rsplit(" [", 1)[0] if len(runs) > 1 else s): styles[s].color for s in series}
    handles: list[Any] = [Patch(facecolor=color, edgecolor="0.25", label=pair) for pair, color in pairs.items()]
    handles += run_legend_handles(runs, "bar")
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, title="model · decoder", title_fontsize=8)
    fig.suptitle(title, fontsize=12)
    note = "error bars: ± SE over requests (fast-forwarded) / blocks (stationary); counted as the CLLM reference's speedup.py does"
    add_footnote(fig, counts_note(usable, note))
    has_cllm = any(decoder_family(c.key[1]) == "cllm" for c in usable)
    caption = (
        "The CLLM paper's comparison: a CLLM (orange) should fast-forward more tokens per Jacobi iteration and keep more "
        "tokens stationary than its base model with plain Jacobi (blue)."
    )
    if not has_cllm:
        caption += " These runs have no cllm cell, so only base-model Jacobi is shown."
    return Plot(name, title, caption, figure_png(fig, banner))


# --------------------------------------------------------------- 5. Jacobi convergence
def _percentile(sorted_values: Sequence[float], q: float) -> float:
    pos = (len(sorted_values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def convergence_data(cells: Sequence[Cell]) -> dict[tuple[str, str, str, str], dict[int, list[int]]]:
    """(model, task, decoder family, run) -> block size n -> iterations K of every block."""
    groups: dict[tuple[str, str, str, str], dict[int, list[int]]] = {}
    for cell in cells:
        for sample in cell.samples:
            n = _jacobi_n(sample)
            iters = sample.get("block_iterations")
            if n is None or not iters:
                continue
            key = (cell.key[0], cell.key[2], decoder_family(cell.key[1]), cell.run)
            groups.setdefault(key, {}).setdefault(n, []).extend(int(k) for k in iters)
    return groups


def plot_jacobi_convergence(cells: Sequence[Cell], banner: str | None = None) -> Plot:
    """Mean Jacobi iterations per block vs block size n (one line per model/task/decoder)."""
    name, title = "jacobi_convergence", "Jacobi convergence: iterations per block vs block size n"
    groups = convergence_data(cells)
    if not groups:
        return _omitted(
            name, title, "no sample records block_iterations with a block size (jacobi_n); run a Jacobi-style decoder."
        )
    several = {k: v for k, v in groups.items() if len(v) >= 2}
    if not several:
        ns = sorted({n for v in groups.values() for n in v})
        return _omitted(
            name,
            title,
            f"only one block size was run per model and task (n = {', '.join(map(str, ns))}); "
            "run e.g. jacobi:n=8 and jacobi:n=16 to see how convergence scales with n.",
        )
    runs = run_order(cells)
    lines = sorted({k[:3] for k in several})
    cmap = colormaps["tab10"]
    fig = new_figure(12, 4.8)
    ax_k, ax_r = fig.subplots(1, 2)
    all_n: set[int] = set()
    blocks_total = 0
    handles: list[Any] = []
    for key, per_n in sorted(several.items(), key=lambda kv: (kv[0][:3], runs.index(kv[0][3]))):
        ns = sorted(per_n)
        all_n.update(ns)
        means, lo, hi = [], [], []
        for n in ns:
            ks = sorted(per_n[n])
            blocks_total += len(ks)
            m = statistics.fmean(ks)
            means.append(m)
            lo.append(max(m - _percentile(ks, 0.25), 0))
            hi.append(max(_percentile(ks, 0.75) - m, 0))
        color = cmap(lines.index(key[:3]) % 10)
        ls = RUN_LINESTYLES[runs.index(key[3]) % len(RUN_LINESTYLES)]
        ax_k.errorbar(ns, means, yerr=[lo, hi], marker="o", capsize=3, color=color, linestyle=ls)
        ax_r.plot(ns, [n / m for n, m in zip(ns, means)], marker="o", color=color, linestyle=ls)
    handles += [Line2D([], [], color=cmap(i % 10), marker="o", label=" · ".join(k)) for i, k in enumerate(lines)]
    handles += run_legend_handles(runs, "line")
    grid = sorted(all_n)
    ax_k.plot(grid, grid, linestyle="--", color="0.4")
    ax_r.axhline(1.0, linestyle="--", color="0.4")
    handles.append(Line2D([], [], linestyle="--", color="0.4", label="no gain: K = n, 1 token per iteration"))
    ax_k.set_ylabel("iterations K to the fixed point (mean; bars 25–75%)")
    ax_k.set_title("iterations per block", fontsize=10)
    ax_r.set_ylabel("n / mean K (tokens per iteration)")
    ax_r.set_title("tokens per Jacobi iteration", fontsize=10)
    for ax in (ax_k, ax_r):
        ax.set_xlabel("block size n (tokens per Jacobi block)")
        ax.set_xticks(grid)
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, title="model · task · decoder", title_fontsize=8)
    fig.suptitle(title, fontsize=12)
    used = [c for c in cells if any(s.get("block_iterations") for s in c.samples)]
    add_footnote(
        fig, counts_note(used, f"{blocks_total} blocks; the last block of a request stops at EOS and may be shorter than n")
    )
    caption = (
        "Below the dashed line, Jacobi fixes more than one token per iteration; the gap is the most a wider block can gain."
    )
    return Plot(name, title, caption, figure_png(fig, banner))


PLOTTERS: tuple[Callable[[Sequence[Cell], str | None], Plot], ...] = (
    plot_speedup,
    plot_accuracy_vs_speedup,
    plot_accepted_per_forward,
    plot_jacobi_ff_stationary,
    plot_jacobi_convergence,
)


def make_plots(cells: Sequence[Cell], banner: str | None = None) -> list[Plot]:
    """All report plots, in report order (omitted ones carry their reason); the per-category
    and acceptance plots (:mod:`cllm_bench.report_plots_speed`) after the speedup bars.

    With ``banner`` (a synthetic run) every figure is stamped with it and every plot
    title, which the md/html reports print above the figure, ends with it.
    """
    from cllm_bench.report_plots_speed import SPEED_PLOTTERS

    plots = [plotter(cells, banner) for plotter in PLOTTERS]
    plots = plots[:1] + [plotter(cells, banner) for plotter in SPEED_PLOTTERS] + plots[1:]
    if banner:
        plots = [replace(p, title=f"{p.title} ({banner})") for p in plots]
    return plots
