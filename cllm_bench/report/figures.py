"""Every report figure in order: :data:`PLOTTERS` (core) then the speed figures
(:mod:`cllm_bench.report.plots_speed`); :func:`make_plots` runs them.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Sequence

from cllm_bench.report.model import Cell
from cllm_bench.report.plot_style import Plot
from cllm_bench.report.plots import (
    plot_accepted_per_forward,
    plot_accuracy_vs_speedup,
    plot_jacobi_convergence,
    plot_jacobi_ff_stationary,
    plot_speedup,
)
from cllm_bench.report.plots_speed import SPEED_PLOTTERS

PLOTTERS: tuple[Callable[[Sequence[Cell], str | None], Plot], ...] = (
    plot_speedup,
    plot_accuracy_vs_speedup,
    plot_accepted_per_forward,
    plot_jacobi_ff_stationary,
    plot_jacobi_convergence,
)


def make_plots(cells: Sequence[Cell], banner: str | None = None) -> list[Plot]:
    """All report plots, in report order (omitted ones carry their reason); the per-category
    and acceptance plots (:mod:`cllm_bench.report.plots_speed`) after the speedup bars.

    With ``banner`` (a synthetic run) every figure is stamped with it and every plot
    title, which the md/html reports print above the figure, ends with it.
    """
    plots = [plotter(cells, banner) for plotter in PLOTTERS]
    plots = plots[:1] + [plotter(cells, banner) for plotter in SPEED_PLOTTERS] + plots[1:]
    if banner:
        plots = [replace(p, title=f"{p.title} ({banner})") for p in plots]
    return plots
