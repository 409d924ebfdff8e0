"""Report plots of per-category speedups, acceptance and batch sweeps (matplotlib object API).

Same contract and styling as :mod:`cllm_bench.report.plots`: each function returns a
:class:`~cllm_bench.report.plots.Plot` (PNG bytes, or ``png=None`` with the reason), a
decoder keeps its colour, runs are told apart by hatch / line style.

* :func:`plot_category_speedup`: grouped bars, speedup per Spec-Bench group (summary
  ``by_category``) per decoder, error bars = the per-repeat spread;
* :func:`plot_acceptance_per_position`: P(draft position i accepted | positions < i
  accepted) per decoder (summary ``acceptance_per_position``);
* :func:`plot_accepted_length_histogram`: share of decode forwards by tokens made final
  (bonus included; summary ``accepted_length_histogram``);
* :func:`plot_batch_sweep`: ratio to batched ``ar`` against batch size (bench sweep).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from cllm_bench.categories import GROUP_LABELS
from cllm_bench.report.facts import LOW_N
from cllm_bench.report.model import Cell, sorted_cells
from cllm_bench.report.plot_style import (
    Plot,
    _omitted,
    add_footnote,
    counts_note,
    decoder_colors,
    decoder_legend_handles,
    figure_png,
    grouped_bars,
    new_figure,
    run_order,
    series_key,
    series_styles,
)


def plot_category_speedup(cells: Sequence[Cell], banner: str | None = None) -> Plot:
    """Speedup per Spec-Bench group (bars per decoder), one panel per model x task."""
    name, title = "category_speedup", "Speedup per category (Spec-Bench grouping; ar = 1.0 on the same questions)"
    usable = [c for c in cells if isinstance(c.get("by_category"), dict) and c.get("by_category")]
    if not usable:
        return _omitted(name, title, "no cell has per-category results (tasks with categories: spec_bench, mt_bench).")
    runs = run_order(usable)
    styles = series_styles(usable)
    panels = sorted({(c.key[0], c.key[2]) for c in usable})
    series = list(dict.fromkeys(series_key(c, runs) for c in sorted_cells(usable)))
    fig = new_figure(11, 3.4 * len(panels) + 0.8)
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (model, task) in zip(axes, panels):
        mine = {series_key(c, runs): c.get("by_category") for c in usable if (c.key[0], c.key[2]) == (model, task)}
        groups = list(dict.fromkeys(g for by in mine.values() for g in by))

        def value(s: str, g: str, mine: dict = mine) -> tuple[float, float, float] | None:
            stats = (mine.get(s) or {}).get(g)
            if not stats or stats.get("speedup") is None:
                return None
            mid = stats["speedup"]
            return (min(stats.get("speedup_min") or mid, mid), mid, max(stats.get("speedup_max") or mid, mid))

        def label(s: str, g: str, v: float, mine: dict = mine) -> str:
            return f"{v:.2f}" + ("*" if (mine[s][g].get("n_samples") or 0) < LOW_N else "")

        top = grouped_bars(ax, groups, series, value, styles, label)
        ax.set_xticks(range(len(groups)), [GROUP_LABELS.get(g, g).replace(" ", "\n", 1) for g in groups], fontsize=8)
        ax.axhline(1.0, color="black", linestyle="--", linewidth=1)
        ax.set_ylim(0, max(top, 1.0) * 1.25)
        ax.set_ylabel("speedup (× ar tokens/s)")
        ax.set_title(f"model: {model} · task: {task}", fontsize=10)
    handles = decoder_legend_handles(series, styles, runs)
    handles.append(Line2D([], [], color="black", linestyle="--", label="ar = 1.0"))
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, title="decoder", title_fontsize=8)
    fig.suptitle(title, fontsize=12)
    add_footnote(fig, counts_note(usable, "bar = tokens/s ÷ ar's over the category's questions; error bar = min–max "
                                          "of the per-repeat ratio"))  # fmt: skip
    caption = ("Where each method gains: Spec-Bench's subtasks (MT-bench's eight categories pooled as multi-turn "
               "conversation) and overall.")  # fmt: skip
    return Plot(name, title, caption, figure_png(fig, banner))


def _acceptance_cells(cells: Sequence[Cell], key: str) -> list[Cell]:
    return [c for c in sorted_cells(cells) if c.get(key)]


def plot_acceptance_per_position(cells: Sequence[Cell], banner: str | None = None) -> Plot:
    """Lines: P(position i accepted | positions < i accepted) against i, per decoder."""
    name, title = "acceptance_per_position", "Acceptance per draft position (conditional on the earlier ones)"
    usable = _acceptance_cells(cells, "acceptance_per_position")
    if not usable:
        return _omitted(name, title, "no multi-token decoder in the runs (acceptance applies to drafting decoders).")
    runs = run_order(usable)
    styles = series_styles(usable)
    panels = sorted({(c.key[0], c.key[2]) for c in usable})
    fig = new_figure(10, 3.2 * len(panels) + 0.8)
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, panel in zip(axes, panels):
        for c in (c for c in usable if (c.key[0], c.key[2]) == panel):
            rates = c.get("acceptance_per_position")
            trials = c.get("acceptance_position_trials") or [0] * len(rates)
            xs = [i + 1 for i, r in enumerate(rates) if r is not None and trials[i] >= 1]
            ys = [rates[i - 1] for i in xs]
            st = styles[series_key(c, runs)]
            ax.plot(xs, ys, marker="o", color=st.color, linestyle=st.linestyle, label=series_key(c, runs),
                    markerfacecolor=st.color if st.filled else "white")  # fmt: skip
        ax.set_ylim(-0.02, 1.02)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("draft position i (tree: depth on the accepted path)")
        ax.set_ylabel("P(i accepted | < i accepted)")
        ax.set_title(f"model: {panel[0]} · task: {panel[1]}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
    fig.suptitle(title, fontsize=12)
    add_footnote(fig, counts_note(usable, "rate i = forwards whose accepted run reached i ÷ forwards that offered "
                                          "position i after accepting i-1 (docs/report.md, Acceptance)"))  # fmt: skip
    caption = "How fast acceptance decays along a draft: where a chain or tree stops paying for its width."
    return Plot(name, title, caption, figure_png(fig, banner))


def plot_accepted_length_histogram(cells: Sequence[Cell], banner: str | None = None) -> Plot:
    """Bars: share of decode forwards by tokens made final (bonus included), per decoder."""
    name, title = "accepted_length_histogram", "Accepted length per decode forward (bonus token included)"
    usable = _acceptance_cells(cells, "accepted_length_histogram")
    if not usable:
        return _omitted(name, title, "no multi-token decoder in the runs (acceptance applies to drafting decoders).")
    runs = run_order(usable)
    styles = series_styles(usable)
    series = [series_key(c, runs) for c in usable]
    hist = {series_key(c, runs): {int(k): v for k, v in c.get("accepted_length_histogram").items()} for c in usable}
    lengths = sorted({k for h in hist.values() for k in h})
    shares = {s: {k: v / max(sum(h.values()), 1) for k, v in h.items()} for s, h in hist.items()}
    fig = new_figure(10, 4)
    ax = fig.subplots()
    groups = [str(k) for k in lengths]

    def value(s: str, g: str) -> tuple[float, float, float] | None:
        v = shares[s].get(int(g))
        return None if v is None else (v, v, v)

    grouped_bars(ax, groups, list(dict.fromkeys(series)), value, styles)
    ax.set_xlabel("tokens made final by one decode forward (accepted draft tokens + bonus)")
    ax.set_ylabel("share of decode forwards")
    ax.legend(handles=decoder_legend_handles(list(dict.fromkeys(series)), styles, runs), fontsize=7)
    fig.suptitle(title, fontsize=12)
    add_footnote(fig, counts_note(usable, "tasks pooled per cell; prefill forwards excluded; "
                                          "mean = accepted_length_with_bonus"))  # fmt: skip
    caption = "The distribution behind the mean accepted length; a long tail means occasional long accepted runs."
    return Plot(name, title, caption, figure_png(fig, banner))


SPEED_PLOTTERS = (plot_category_speedup, plot_acceptance_per_position, plot_accepted_length_histogram)


def plot_batch_sweep(summary: Mapping[str, Mapping[str, Any]], where: str = "") -> Plot:
    """Lines: tokens/s ÷ batched ar's at the same batch size, against the batch size (log2 x)."""
    name, title = "batch_sweep", "Throughput relative to batched ar at the same batch size"
    methods = [m for m in summary if m != "ar" and any(r is not None for r in summary[m]["ratio_vs_ar"])]
    if not methods:
        return _omitted(name, title, "the sweep measured no method besides ar.")
    colors = decoder_colors(list(summary))
    fig = new_figure(8, 4.2)
    ax = fig.subplots()
    for m in methods:
        s = summary[m]
        pts = [(b, r) for b, r in zip(s["batch_sizes"], s["ratio_vs_ar"]) if r is not None]
        be = s.get("break_even_batch_size")
        label = f"{m} (break-even B = {be if be is not None else 'never'})" if not m.startswith("hf") else m
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=colors.get(m, "0.3"), label=label,
                linestyle=":" if m.startswith("hf") else "-")  # fmt: skip
    ax.axhline(1.0, color="black", linestyle="--", linewidth=1, label="ar = 1.0")
    ax.set_xscale("log", base=2)
    sizes = sorted({b for s in summary.values() for b in s["batch_sizes"]})
    ax.set_xticks(sizes, [str(b) for b in sizes])
    ax.set_xlabel("batch size")
    ax.set_ylabel("tokens/s ÷ batched ar tokens/s")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=12)
    add_footnote(fig, f"{where}; aggregate tokens/s over the batch, median over repeats; break-even B = largest "
                      "tested batch size with ratio > 1")  # fmt: skip
    caption = "Where a method stops paying off as the batch grows."
    return Plot(name, title, caption, figure_png(fig))
