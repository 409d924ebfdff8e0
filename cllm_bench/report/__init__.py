"""`cllm-bench report`: tables, plots, paper comparison and run diffs from run folders.

Input (written by the runner, treated as a contract; fields in :mod:`cllm_bench.records`):

* ``RUN_DIR/summary.json`` -- ``{"provenance": {...}, "results": [record, ...]}``, one
  record per (model, decoder, task) cell with aggregate metrics;
* ``RUN_DIR/samples.jsonl`` -- one JSON object per generated sample (accepted tokens per
  forward, Jacobi block statistics, ...).

Output (``report/`` inside the first run folder unless ``--output`` says otherwise):
``report.md``, a self-contained ``report.html``, ``summary.csv`` (+ ``diff.csv`` when two
or more runs are compared) and one PNG per plot.

The package is layered; each layer imports only the ones above it:

1. loading + validation  (:mod:`.model`: :func:`load_run` -> :class:`Run`, :class:`Cell`)
2. facts about cells     (:mod:`.facts`: flags, run diffs, the paper comparison)
3. a format-neutral document (:mod:`.blocks` the model, :mod:`.document` builds it;
   :mod:`.speed` and :mod:`.curves` add their sections)
4. renderers: :mod:`.markdown`, :mod:`.html`, :mod:`.csv_tables`, :mod:`.terminal`
5. plots (matplotlib, imported only when plotting): :mod:`.plot_style`, :mod:`.plots`,
   :mod:`.plots_speed`, all in order in :mod:`.figures`

:func:`run_report` (:mod:`.main`) is the entry point the CLI calls.
"""

from cllm_bench.report.main import run_report

__all__ = ["run_report"]
