"""`cllm-bench report`: :func:`run_report`, the entry point the CLI calls, and
:func:`write_outputs` (every requested format into the output folder).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console

from cllm_bench.errors import UserError
from cllm_bench.report.blocks import Document
from cllm_bench.report.csv_tables import diff_csv, summary_csv
from cllm_bench.report.curves import curves_section, load_curve
from cllm_bench.report.document import build_document
from cllm_bench.report.facts import load_references, synthetic_banner
from cllm_bench.report.html import render_html
from cllm_bench.report.markdown import render_markdown
from cllm_bench.report.model import Run, cells_of, load_run, parse_formats, run_labels
from cllm_bench.report.speed import load_spec_bench_reference
from cllm_bench.report.terminal import print_terminal
from cllm_bench.run_folder import check_output_path


def write_outputs(
    doc: Document, runs: Sequence[Run], plots: Sequence[Any], output: Path, formats: Sequence[str]
) -> list[Path]:
    """Write the requested formats (plots as PNG when md or html is asked for)."""
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
    (:mod:`cllm_bench.report.curves`); read before anything is written. ``cost_tables``:
    a "Predicted speed" section per table (:mod:`cllm_bench.predict`).

    The first run folder is the baseline of any comparison; the default output folder is
    its ``report/`` subfolder. Raises :class:`UserError` for a missing run folder, a
    missing or corrupt ``summary.json``/``samples.jsonl``, or an unknown format.
    """
    from cllm_bench.report.figures import make_plots  # matplotlib: imported only when plotting

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
    loaded_curves = [load_curve(Path(c)) for c in curves]
    reference = load_references()
    cells = [c for r in runs for c in cells_of(r)]
    plots = make_plots(cells, banner=synthetic_banner(runs)) if ("md" in chosen or "html" in chosen) else []
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
