"""`cllm-bench report`: files, valid self-contained HTML, honesty flags, run diffs, errors.

Fixture run folders are written by scripts/make_report_fixture.py (synthetic numbers in
the runner's summary.json / samples.jsonl format): models smollm2-135m and
qwen2.5-0.5b, tasks gsm8k and humaneval, decoders ar, jacobi:n=8, jacobi:n=16, cllm,
lookahead. Planted: qwen2.5-0.5b/humaneval has n=8 (LOW-N) and a jacobi:n=16 sample that
differs from ar (MISMATCH); run_b slows lookahead on smollm2/gsm8k by ~30% and drops
cllm's gsm8k accuracy on smollm2.
"""

from __future__ import annotations

import base64
import csv
import importlib.util
import io
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
from rich.console import Console

from cllm_bench.errors import UserError
from cllm_bench.report import run_report
from cllm_bench.report.facts import REFERENCE_JSON, accuracy_change, diff_cells, load_reference, speed_change
from cllm_bench.report.model import cells_of, load_run, parse_formats

REPO = Path(__file__).resolve().parents[1]
PLOT_NAMES = ("speedup", "accuracy_vs_speedup", "accepted_per_forward", "jacobi_ff_stationary", "jacobi_convergence")


def _fixture_module():
    spec = importlib.util.spec_from_file_location("make_report_fixture", REPO / "scripts" / "make_report_fixture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FIXTURE = _fixture_module()


def _console() -> Console:
    return Console(file=io.StringIO(), width=200, color_system=None)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    run_a = FIXTURE.write_fixture_run(root / "run_a")
    run_b = FIXTURE.write_fixture_run(root / "run_b", regress=True, jitter_seed=1)
    return run_a, run_b


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory):
    """The full two-run report, generated once."""
    out = tmp_path_factory.mktemp("report")
    console = _console()
    result = run_report(list(runs), out, ["md,html", "csv"], console)
    return result, console.file.getvalue()


# ------------------------------------------------------------------ files
def test_report_writes_every_file(report):
    out, _ = report
    for name in ("report.md", "report.html", "summary.csv", "diff.csv"):
        assert (out / name).is_file(), name
    for name in PLOT_NAMES:
        png = (out / f"{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n"), name


def test_default_output_is_first_run_report_folder(runs):
    out = run_report([runs[0]], None, ["csv"], _console())
    assert out == runs[0] / "report"
    assert (out / "summary.csv").is_file()
    assert not (out / "report.html").exists()  # only the asked-for formats


# ------------------------------------------------------------------ html
class StructureChecker(HTMLParser):
    """Balanced-tag check: every non-void element closed in order; collects <img> srcs."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.imgs: list[dict[str, str]] = []
        self.doctype: str | None = None
        self.seen: set[str] = set()

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl

    def handle_starttag(self, tag, attrs):
        self.seen.add(tag)
        if tag == "img":
            self.imgs.append(dict(attrs))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in self.VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        if tag in self.VOID:
            self.errors.append(f"end tag for void element {tag}")
        elif not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}>, open: {self.stack[-3:]}")
        else:
            self.stack.pop()


def test_html_is_balanced_html5_with_embedded_plots(report):
    out, _ = report
    text = (out / "report.html").read_text(encoding="utf-8")
    checker = StructureChecker()
    checker.feed(text)
    checker.close()
    assert checker.doctype and checker.doctype.lower() == "doctype html"
    assert checker.errors == []
    assert checker.stack == []
    assert {"html", "head", "body", "title", "table", "figure"} <= checker.seen
    srcs = [img["src"] for img in checker.imgs]
    assert len(srcs) == len(PLOT_NAMES)
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(b"\x89PNG")
    for img in checker.imgs:
        assert img.get("alt")
    # self-contained: no external resources
    assert "http://" not in text and "https://" not in text and "<link" not in text and "<script" not in text


# ------------------------------------------------------------------ markdown honesty
def test_markdown_has_provenance_flags_and_paper(report):
    out, _ = report
    md = (out / "report.md").read_text(encoding="utf-8")
    # provenance at the top
    head = md[: md.index("## Results")]
    needles = ("bfloat16", "torch 2.13.0", "transformers 5.2.0", "synthetic fixture", "make_report_fixture.py")
    for needle in needles + ("| repeats / warm-up | 3 / 1 | 3 / 1 |",):
        assert needle in head, needle
    lines = md.splitlines()
    mismatch = [ln for ln in lines if "⚠ MISMATCH" in ln and ln.startswith("|")]
    assert mismatch and all("jacobi:n=16" in ln and "humaneval" in ln and "qwen2.5-0.5b" in ln for ln in mismatch)
    low_n = [ln for ln in lines if "⚠ LOW-N" in ln and ln.startswith("|")]
    assert len(low_n) == 10  # qwen2.5-0.5b / humaneval, 5 decoders x 2 runs
    assert all("| 8 |" in ln for ln in low_n)
    assert any("⚠ SKIPPED" in ln for ln in lines)
    assert "MISMATCH (lossless decoder but match_ar=88%) — humaneval / qwen2.5-0.5b: jacobi:n=16 (run_a, run_b)" in md
    # the cllm decoder is not lossless, so its match_ar < 1 is not flagged
    assert not any("| cllm |" in ln and "MISMATCH" in ln for ln in lines)
    # paper side by side, with the caveat and read-off marks
    assert "## Published numbers side by side" in md
    assert "Not a like-for-like comparison" in md
    assert "≈132.5 tok/s [7B]" in md and "3.0× [7B]" in md and "1.89× [7B]; 1.72× [13B]; 1.7× [34B]" in md
    # every plot referenced (or explained)
    for name in PLOT_NAMES:
        assert f"({name}.png)" in md


def test_terminal_shows_provenance_and_table(report):
    _, terminal = report
    assert "bfloat16" in terminal and "make_report_fixture.py" in terminal
    assert "tokens/s (min–max)" in terminal and "speedup" in terminal
    assert "⚠ MISMATCH" in terminal and "REGRESSION tokens/s" in terminal


def test_csv_rows_and_flags(report):
    out, _ = report
    rows = list(csv.DictReader((out / "summary.csv").open(encoding="utf-8")))
    assert len(rows) == 2 * 2 * 2 * 5
    assert {"task_metrics.exact_match_strict", "task_metrics.pass@1", "accuracy_se", "flags"} <= set(rows[0])
    flagged = [r for r in rows if "MISMATCH" in r["flags"]]
    assert {(r["model"], r["decoder"], r["task"]) for r in flagged} == {("qwen2.5-0.5b", "jacobi:n=16", "humaneval")}
    diff = list(csv.DictReader((out / "diff.csv").open(encoding="utf-8")))
    assert len(diff) == 20


# ------------------------------------------------------------------ diffs
def test_diff_flags_exactly_the_planted_regressions(runs):
    a, b = (load_run(p) for p in runs)
    rows, only_a, only_b = diff_cells(cells_of(a), cells_of(b))
    assert len(rows) == 20 and not only_a and not only_b
    regressions = {(r.key, v) for r in rows for v in r.verdicts if v.startswith("REGRESSION")}
    assert regressions == {
        (("smollm2-135m", "lookahead:w=5,n=7,g=7", "gsm8k"), "REGRESSION tokens/s"),
        (("smollm2-135m", "cllm", "gsm8k"), "REGRESSION accuracy"),
    }


def test_diff_in_report(report):
    out, _ = report
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "## Comparing runs" in md
    assert "run_a → run_b: 20 cells in both, 2 regression(s)." in md
    row = next(ln for ln in md.splitlines() if "⚠ REGRESSION tokens/s" in ln)
    assert "lookahead" in row and "smollm2-135m" in row and "gsm8k" in row


def test_speed_change_needs_disjoint_spreads():
    old = {"tokens_per_s": 100.0, "tokens_per_s_min": 95.0, "tokens_per_s_max": 105.0}
    assert speed_change(old, {"tokens_per_s": 93.0, "tokens_per_s_min": 90.0, "tokens_per_s_max": 96.0}) is None  # overlap
    assert speed_change(old, {"tokens_per_s": 90.0, "tokens_per_s_min": 89.0, "tokens_per_s_max": 94.0}) == "slower"
    assert speed_change(old, {"tokens_per_s": 112.0, "tokens_per_s_min": 110.0, "tokens_per_s_max": 114.0}) == "faster"
    # one repeat each (no spread): small jitter is not a regression, a big drop is
    assert speed_change({"tokens_per_s": 100.0}, {"tokens_per_s": 99.0}) is None
    assert speed_change({"tokens_per_s": 100.0}, {"tokens_per_s": 80.0}) == "slower"


def test_accuracy_change_uses_binomial_se():
    assert accuracy_change({"accuracy": 0.5, "n_samples": 20}, {"accuracy": 0.45, "n_samples": 20})[0] is None
    verdict, se = accuracy_change({"accuracy": 0.55, "n_samples": 20}, {"accuracy": 0.25, "n_samples": 20})
    assert verdict == "worse" and 0.14 < se < 0.16
    assert accuracy_change({"accuracy": None, "n_samples": 20}, {"accuracy": 0.2, "n_samples": 20}) == (None, None)


# ------------------------------------------------------------------ omitted plots
def _subset_run(src: Path, dst: Path, keep) -> Path:
    summary = json.loads((src / "summary.json").read_text())
    summary["results"] = [r for r in summary["results"] if keep(r)]
    dst.mkdir()
    (dst / "summary.json").write_text(json.dumps(summary))
    lines = [ln for ln in (src / "samples.jsonl").read_text().splitlines() if keep(json.loads(ln))]
    (dst / "samples.jsonl").write_text("\n".join(lines) + "\n")
    return dst


def test_plots_without_data_are_omitted_with_a_reason(runs, tmp_path):
    def keep(r):
        return r["decoder"] in ("ar", "lookahead:w=5,n=7,g=7") and r["model"] == "smollm2-135m"

    run = _subset_run(runs[0], tmp_path / "small", keep)
    out = run_report([run], tmp_path / "out", ["md", "html"], _console())
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "_Not drawn: no cell has Jacobi statistics" in md
    assert "_Not drawn: no sample records block_iterations" in md
    assert not (out / "jacobi_ff_stationary.png").exists() and not (out / "jacobi_convergence.png").exists()
    assert (out / "speedup.png").exists()
    html = (out / "report.html").read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") == 3
    assert '<p class="omitted">Not drawn:' in html
    assert "## Comparing runs" not in md


def test_sample_log_shorter_than_summary_is_reported(runs, tmp_path):
    run = _subset_run(runs[0], tmp_path / "r", lambda r: r["decoder"] in ("ar", "cllm") and r["task"] == "gsm8k")
    lines = (run / "samples.jsonl").read_text().splitlines()
    (run / "samples.jsonl").write_text("\n".join(lines[1:]) + "\n")  # drop the first line (smollm2-135m ar gsm8k)
    out = run_report([run], tmp_path / "out", ["md"], _console())
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "gsm8k / smollm2-135m / ar (r): summary.json says n=20 but samples.jsonl has 19 line(s)" in md
    assert md.count("samples.jsonl has") == 1


def test_run_wide_flags_partial_run_and_degenerate_table(tmp_path):
    run = FIXTURE.write_fixture_run(tmp_path / "smoke", repeats=1)
    summary = json.loads((run / "summary.json").read_text())
    summary["provenance"]["complete"] = False
    rec = next(r for r in summary["results"] if r["decoder"] == "cllm")
    rec.update(fast_forwarded_excl_degenerate=3.5, stationary_excl_degenerate=30.0, excluded_degenerate=2)
    (run / "summary.json").write_text(json.dumps(summary))
    out = run_report([run], tmp_path / "out", ["md", "csv"], _console())
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "Every cell: ⚠ FEW-REPEATS" in md
    assert not any(ln.startswith("|") and "FEW-REPEATS" in ln for ln in md.splitlines())  # stated once, not per row
    assert "Run(s) smoke did not finish" in md and "| finished | NO (partial run) |" in md
    assert "| gsm8k | smollm2-135m | cllm | 20 | 2 | 2.98 | 3.50 |" in md
    rows = list(csv.DictReader((out / "summary.csv").open(encoding="utf-8")))
    assert "FEW-REPEATS" in rows[0]["flags"] and "fast_forwarded_excl_degenerate" in rows[0]


def test_single_block_size_omits_convergence(runs, tmp_path):
    def keep(r):
        return r["decoder"] in ("ar", "jacobi:n=16", "cllm") and r["task"] == "gsm8k"

    run = _subset_run(runs[0], tmp_path / "one_n", keep)
    out = run_report([run], tmp_path / "out", ["md"], _console())
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "_Not drawn: only one block size was run per model and task (n = 16)" in md
    assert "(jacobi_ff_stationary.png)" in md


# ------------------------------------------------------------------ errors
def _copy_run(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in ("summary.json", "samples.jsonl"):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def test_missing_run_dir(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        run_report([tmp_path / "nope"], None, [], _console())


@pytest.mark.parametrize("name", ["summary.json", "samples.jsonl"])
def test_missing_file_names_it(runs, tmp_path, name):
    run = _copy_run(runs[0], tmp_path / "run")
    (run / name).unlink()
    with pytest.raises(UserError, match=rf"{name} is missing"):
        run_report([run], None, ["md"], _console())


def test_truncated_summary(runs, tmp_path):
    run = _copy_run(runs[0], tmp_path / "run")
    text = (run / "summary.json").read_text()
    (run / "summary.json").write_text(text[: len(text) // 2])
    with pytest.raises(UserError, match=r"summary\.json is not valid JSON \(line \d+"):
        run_report([run], None, ["md"], _console())


def test_summary_record_missing_key(runs, tmp_path):
    run = _copy_run(runs[0], tmp_path / "run")
    summary = json.loads((run / "summary.json").read_text())
    del summary["results"][3]["tokens_per_s"]
    (run / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(UserError, match=r"summary\.json: results\[3\] lacks tokens_per_s"):
        run_report([run], None, ["md"], _console())


def test_summary_bad_number(runs, tmp_path):
    run = _copy_run(runs[0], tmp_path / "run")
    summary = json.loads((run / "summary.json").read_text())
    summary["results"][0]["speedup"] = "fast"
    (run / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(UserError, match=r"results\[0\]: speedup must be a number"):
        run_report([run], None, ["md"], _console())


def test_corrupt_jsonl_line_names_file_and_line(runs, tmp_path):
    run = _copy_run(runs[0], tmp_path / "run")
    lines = (run / "samples.jsonl").read_text().splitlines()
    lines[2] = lines[2][:40]  # cut off, as by a crash mid-write
    (run / "samples.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"samples\.jsonl:3: not valid JSON"):
        run_report([run], None, ["md"], _console())


def test_unknown_format(runs):
    with pytest.raises(UserError, match=r"unknown report format 'pdf'; choose from md, html, csv"):
        run_report([runs[0]], None, ["md,pdf"], _console())
    assert parse_formats([]) == ["md", "html", "csv"]
    assert parse_formats(["html, md", "md"]) == ["html", "md"]


# ------------------------------------------------------------------ published numbers
def test_reference_json_holds_only_the_sourced_numbers():
    ref = load_reference(REFERENCE_JSON)
    assert ref is not None
    got = {(e["task"], e["method"], e.get("model_size")): (e["speedup"], e["tokens_per_s"]) for e in ref["entries"]}
    # shared/REFERENCE_IMPLEMENTATIONS.md §A.6 (CLLM README figure) and §B.5 (lookahead figure)
    expected = {
        ("mt_bench", "jacobi", "7B"): (1.1, 39.9), ("mt_bench", "cllm", "7B"): (2.4, 88.5),
        ("gsm8k", "jacobi", "7B"): (1.1, 45.6), ("gsm8k", "cllm", "7B"): (3.0, 132.5),
        ("spider", "jacobi", "7B"): (1.0, 39.5), ("spider", "cllm", "7B"): (3.4, 127.6),
        ("humaneval", "jacobi", "7B"): (1.1, 43.3), ("humaneval", "cllm", "7B"): (2.5, 102.0),
        ("humaneval", "lookahead", "7B"): (2.25, 96.1), ("humaneval", "lookahead", "13B"): (2.26, 73.3),
        ("humaneval", "lookahead", "34B"): (1.72, 32.6), ("gsm8k", "lookahead", "7B"): (1.89, 87.8),
        ("gsm8k", "lookahead", "13B"): (1.72, 62.7), ("gsm8k", "lookahead", "34B"): (1.7, 33.0),
        ("mt_bench", "lookahead", "7B"): (1.64, 72.3), ("mt_bench", "lookahead", "13B"): (1.51, 52.1),
        ("mt_bench", "lookahead", "70B"): (1.45, 13.8),
    }  # fmt: skip
    assert got == expected
    for e in ref["entries"]:
        assert e["hardware"] == "not stated"
        assert e["tokens_per_s_read_off_plot"] is True and e["speedup_read_off_plot"] is False
        assert "REFERENCE_IMPLEMENTATIONS.md §" in e["source"]


# ------------------------------------------------------------------ learning curves (issue 16)
def _curve_manifest(path: Path, points: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"kind": "cllm", "curve": points, "curve_settings": {
        "eval_prompts": "spider", "eval_split": "dev", "eval_limit": 6, "eval_n": 16, "eval_max_new_tokens": 48}}))
    return path


def test_learning_curves_section_and_plot(runs, tmp_path):
    point = lambda u, h, t: {"update": u, "heldout": {"tokens_per_forward": h, "match_base": 1.0},  # noqa: E731
                             "train": {"tokens_per_forward": t}, "train_consistency_loss": 3.0 - u / 100,
                             "train_ar_loss": 1.0 if u else None}
    manifest = _curve_manifest(tmp_path / "cllm" / "manifest.json", [point(0, 1.05, 1.07), point(100, 1.31, 1.52)])
    out = run_report([runs[0]], tmp_path / "out", ["md"], _console(), [manifest])
    md = (out / "report.md").read_text()
    section = md.split("## Learning curves", 1)[1]
    assert "| 100 | 1.310 | 1.520 |" in section and "| 0 | 1.050 | 1.070 |" in section
    assert "spider/dev" in section and (out / "learning_curves.png").stat().st_size > 1000


def test_curves_without_a_curve_are_refused_before_writing(runs, tmp_path):
    bare = tmp_path / "m" / "manifest.json"
    bare.parent.mkdir()
    bare.write_text(json.dumps({"kind": "cllm"}))
    with pytest.raises(UserError, match="--eval-every"):
        run_report([runs[0]], tmp_path / "out2", ["md"], _console(), [bare])
    assert not (tmp_path / "out2").exists()
