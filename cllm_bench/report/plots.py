"""The report's core figures: speedup, accuracy vs speedup, accepted tokens per forward,
Jacobi fast-forward/stationary and Jacobi convergence.
"""

from __future__ import annotations

import re
import statistics
from typing import Any, Sequence

from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from cllm_bench.report.facts import LOW_N
from cllm_bench.report.model import Cell, decoder_family, sorted_cells
from cllm_bench.report.plot_style import (
    RUN_LINESTYLES,
    TASK_MARKERS,
    Plot,
    _omitted,
    _sem,
    add_footnote,
    counts_note,
    decoder_colors,
    decoder_legend_handles,
    figure_png,
    grouped_bars,
    model_decoder_styles,
    new_figure,
    place_labels,
    run_legend_handles,
    run_order,
    series_key,
    series_styles,
)


def _jacobi_n(sample: dict[str, Any]) -> int | None:
    n = sample.get("jacobi_n")
    if isinstance(n, int) and not isinstance(n, bool) and n > 0:
        return n
    m = re.search(r"(?:^|[:,])n=(\d+)", str(sample.get("decoder", "")))
    return int(m.group(1)) if m else None


def speedup_range(cell: Cell) -> tuple[float, float, float]:
    """(low, speedup, high): the speedup scaled by the tokens/s spread over repeats."""
    s = cell.get("speedup")
    tps = cell.get("tokens_per_s") or 0.0
    if not tps:
        return s, s, s
    low = s * (cell.get("tokens_per_s_min") or tps) / tps
    high = s * (cell.get("tokens_per_s_max") or tps) / tps
    return min(low, s), s, max(high, s)


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
