"""A report of synthetic runs says so in its title and on every plot; a real one does not.

scripts/make_report_fixture.py marks its runs with provenance ``"synthetic": true``;
:func:`cllm_bench.report.facts.synthetic_banner` turns that into "SYNTHETIC — not a measurement",
which goes into the md/html title, every plot heading, every figure's suptitle (and
the PNG's Title text chunk) and a watermark.
"""

from __future__ import annotations

import importlib.util
import io
import json
import re
from pathlib import Path
from types import ModuleType

import pytest
from matplotlib.figure import Figure
from PIL import Image
from rich.console import Console

from cllm_bench.report import run_report
from cllm_bench.report.facts import SYNTHETIC_BANNER, synthetic_banner
from cllm_bench.report.figures import make_plots
from cllm_bench.report.model import cells_of, load_run
from cllm_bench.report.plot_style import figure_png, stamp_banner

REPO = Path(__file__).resolve().parents[1]


def _fixture_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_report_fixture", REPO / "scripts" / "make_report_fixture.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FIXTURE = _fixture_module()


def _report(run_dir: Path, out: Path) -> Path:
    return run_report([run_dir], out, ["md", "html"], Console(file=io.StringIO(), width=200, color_system=None))


def _png_title(path: Path) -> str:
    with Image.open(path) as image:
        return str(image.info.get("Title", ""))


@pytest.fixture(scope="module")
def synthetic_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    return _report(FIXTURE.write_fixture_run(root / "run_a"), root / "report")


@pytest.fixture(scope="module")
def real_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture's numbers with the synthetic marker removed: stands in for a real run."""
    root = tmp_path_factory.mktemp("real")
    run = FIXTURE.write_fixture_run(root / "run_a")
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    del summary["provenance"]["synthetic"]
    (run / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return _report(run, root / "report")


def test_fixture_marks_its_provenance_synthetic(tmp_path: Path) -> None:
    run = FIXTURE.write_fixture_run(tmp_path / "run_a")
    assert json.loads((run / "summary.json").read_text(encoding="utf-8"))["provenance"]["synthetic"] is True
    assert synthetic_banner([load_run(run, "run_a")]) == SYNTHETIC_BANNER


def test_banner_needs_an_explicit_true(tmp_path: Path) -> None:
    run = FIXTURE.write_fixture_run(tmp_path / "run_a")
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    summary["provenance"]["synthetic"] = "no"
    (run / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    assert synthetic_banner([load_run(run, "run_a")]) is None


def test_markdown_title_and_plot_headings_carry_the_banner(synthetic_report: Path) -> None:
    md = (synthetic_report / "report.md").read_text(encoding="utf-8")
    assert md.splitlines()[0] == f"# cllm-bench report ({SYNTHETIC_BANNER})"
    plots_section = md.split("## Plots", 1)[1].split("\n## ", 1)[0]
    headings = [line for line in plots_section.splitlines() if line.startswith("### ")]
    assert len(headings) == 8  # 5 core plots + per-category speedup, acceptance per position, histogram
    assert all(SYNTHETIC_BANNER in h for h in headings), headings


def test_html_title_and_h1_carry_the_banner(synthetic_report: Path) -> None:
    html = (synthetic_report / "report.html").read_text(encoding="utf-8")
    title = re.search(r"<title>(.*?)</title>", html).group(1)
    h1 = re.search(r"<h1>(.*?)</h1>", html).group(1)
    assert SYNTHETIC_BANNER in title and SYNTHETIC_BANNER in h1
    figures = re.findall(r'<figure id="plot-[^"]+"><img [^>]*alt="([^"]*)"', html)
    assert figures and all(SYNTHETIC_BANNER in alt for alt in figures), figures


def test_every_plot_png_is_titled_synthetic(synthetic_report: Path) -> None:
    pngs = sorted(synthetic_report.glob("*.png"))
    assert len(pngs) >= 4, pngs
    for png in pngs:
        assert _png_title(png).startswith(SYNTHETIC_BANNER), (png.name, _png_title(png))


def test_real_report_has_no_banner(real_report: Path) -> None:
    md = (real_report / "report.md").read_text(encoding="utf-8")
    html = (real_report / "report.html").read_text(encoding="utf-8")
    assert "SYNTHETIC" not in md.splitlines()[0]
    assert "SYNTHETIC" not in re.search(r"<title>(.*?)</title>", html).group(1)
    for png in real_report.glob("*.png"):
        title = _png_title(png)
        assert title and "SYNTHETIC" not in title, (png.name, title)


def test_make_plots_titles_omitted_plots_too(tmp_path: Path) -> None:
    """A plot that is not drawn still says, in its heading, which data it was not drawn from."""
    run = load_run(FIXTURE.write_fixture_run(tmp_path / "run_a"), "run_a")
    no_jacobi = [c for c in cells_of(run) if c.key[1] == "ar"]
    plots = make_plots(no_jacobi, banner=SYNTHETIC_BANNER)
    assert any(p.png is None for p in plots)
    assert all(p.title.endswith(f"({SYNTHETIC_BANNER})") for p in plots)
    assert all(SYNTHETIC_BANNER not in p.title for p in make_plots(no_jacobi))


def test_stamp_banner_puts_suptitle_and_watermark_on_the_figure() -> None:
    fig = Figure(figsize=(6, 4))
    fig.subplots().plot([0, 1], [0, 1])
    fig.suptitle("Speedup")
    stamp_banner(fig, SYNTHETIC_BANNER)
    assert fig.get_suptitle() == f"{SYNTHETIC_BANNER}\nSpeedup"
    watermarks = [t for t in fig.texts if t.get_text() == SYNTHETIC_BANNER]  # fig.texts also holds the suptitle
    assert len(watermarks) == 1 and watermarks[0].get_rotation() != 0
    with Image.open(io.BytesIO(figure_png(fig))) as image:
        assert image.info["Title"] == f"{SYNTHETIC_BANNER}\nSpeedup"
