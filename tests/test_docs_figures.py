"""Every figure in README.md and docs/*.md exists and says where its numbers come from.

A figure's caption is its alt text plus the first non-blank line under the image. The
caption must name either a folder under ``results/`` that holds the run's command
(``commands.md`` or ``README.md``) and its provenance (a JSON file with a top-level
``"provenance"`` object), or say "synthetic". Images inside fenced code blocks are not
figures and are skipped.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MARKDOWN_IMAGE = re.compile(r"!\[(?P<alt>[^\]]*)\]\((?P<src>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
HTML_IMAGE = re.compile(r"<img\b[^>]*>", re.IGNORECASE)
HTML_ATTR = re.compile(r"""\b(?P<name>src|alt)\s*=\s*(?P<q>["'])(?P<value>.*?)(?P=q)""", re.IGNORECASE)
RESULTS_PATH = re.compile(r"(?<![\w./-])(?:\.\./)*results/(?P<folder>[A-Za-z0-9_.-]+)")
SYNTHETIC = re.compile(r"\bsynthetic\b", re.IGNORECASE)


@dataclass(frozen=True)
class Figure:
    """One image reference of a markdown file."""

    doc: Path
    line: int
    src: str
    alt: str
    below: str

    @property
    def caption(self) -> str:
        """Alt text and the first non-blank line under the image."""
        return f"{self.alt}\n{self.below}"

    def where(self) -> str:
        return f"{self.doc.relative_to(REPO) if self.doc.is_relative_to(REPO) else self.doc}:{self.line} ({self.src})"


def find_figures(doc: Path) -> list[Figure]:
    """Markdown and HTML images of ``doc`` outside fenced code blocks, in file order."""
    lines = doc.read_text(encoding="utf-8").splitlines()
    figures: list[Figure] = []
    fenced = False
    for i, line in enumerate(lines):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        if fenced:
            continue
        below = next((rest.strip() for rest in lines[i + 1 :] if rest.strip()), "")
        for m in MARKDOWN_IMAGE.finditer(line):
            figures.append(Figure(doc, i + 1, m.group("src"), m.group("alt"), below))
        for tag in HTML_IMAGE.findall(line):
            attrs = {a.group("name").lower(): a.group("value") for a in HTML_ATTR.finditer(tag)}
            figures.append(Figure(doc, i + 1, attrs.get("src", ""), attrs.get("alt", ""), below))
    return figures


def results_folder_problem(folder: Path) -> str | None:
    """Why ``folder`` is not a results folder with command and provenance, or None if it is."""
    if not folder.is_dir():
        return f"{folder} does not exist"
    if not ((folder / "commands.md").is_file() or (folder / "README.md").is_file()):
        return f"{folder} has no commands.md or README.md with the command"
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and isinstance(data.get("provenance"), dict):
            return None
    return f"{folder} has no JSON file with a provenance object"


def figure_problems(figure: Figure, repo: Path) -> list[str]:
    """Everything wrong with one figure: a missing file, or a caption without its source."""
    problems = []
    if re.match(r"^[a-z][a-z0-9+.-]*:", figure.src, re.IGNORECASE):
        problems.append(f"{figure.where()}: remote image; commit the figure and link it by path")
    else:
        target = (figure.doc.parent / figure.src.split("#", 1)[0]).resolve()
        if not target.is_file():
            problems.append(f"{figure.where()}: image file {target} does not exist")
    if SYNTHETIC.search(figure.caption):
        return problems
    folders = [m.group("folder") for m in RESULTS_PATH.finditer(figure.caption)]
    if not folders:
        problems.append(
            f'{figure.where()}: caption names no results/ folder and does not say "synthetic": {figure.caption!r}'
        )
    for name in folders:
        problem = results_folder_problem(repo / "results" / name)
        if problem:
            problems.append(f"{figure.where()}: caption cites results/{name}, but {problem}")
    return problems


def documented_markdown(repo: Path) -> list[Path]:
    """README.md and docs/*.md of ``repo``."""
    return [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]


def test_every_figure_exists_and_names_its_source() -> None:
    figures = [f for doc in documented_markdown(REPO) for f in find_figures(doc)]
    assert figures, "README.md and docs/*.md reference no image; the parser is broken"
    problems = [p for f in figures for p in figure_problems(f, REPO)]
    assert not problems, "\n".join(problems)


def test_readme_report_figure_is_a_real_run() -> None:
    """The README's report screenshot cites a committed run, not the synthetic fixture."""
    report_figures = [f for f in find_figures(REPO / "README.md") if "report" in f.src]
    assert report_figures, "README.md shows no report screenshot"
    for figure in report_figures:
        assert not SYNTHETIC.search(figure.caption), figure.where()
        assert RESULTS_PATH.search(figure.caption), figure.where()


# ------------------------------------------------------------ the checker itself
def _repo_with_run(tmp_path: Path, with_provenance: bool = True) -> Path:
    run = tmp_path / "results" / "run1"
    run.mkdir(parents=True)
    (run / "commands.md").write_text("cllm-bench run ...\n", encoding="utf-8")
    summary = {"provenance": {"device": "cpu"}, "results": []} if with_provenance else {"results": []}
    (run / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "plot.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    return tmp_path


def _problems(repo: Path, markdown: str) -> list[str]:
    doc = repo / "README.md"
    doc.write_text(markdown, encoding="utf-8")
    return [p for f in find_figures(doc) for p in figure_problems(f, repo)]


@pytest.mark.parametrize(
    "markdown",
    [
        "![speedup](docs/plot.png)\n\n*From results/run1/, 20 samples.*\n",
        "![speedup of results/run1](docs/plot.png)\n",
        "![layout](docs/plot.png)\n*Synthetic data, made up.*\n",
        '<img src="docs/plot.png" alt="synthetic fixture">\n',
    ],
)
def test_checker_accepts_sourced_captions(tmp_path: Path, markdown: str) -> None:
    assert _problems(_repo_with_run(tmp_path), markdown) == []


@pytest.mark.parametrize(
    ("markdown", "expected"),
    [
        ("![speedup](docs/plot.png)\n\n*CLLM is 2.7x faster.*\n", "names no results/ folder"),
        ("![speedup](docs/missing.png)\n*results/run1*\n", "does not exist"),
        ("![speedup](docs/plot.png)\n*results/run2*\n", "results/run2"),
        ("![s](https://example.org/a.png)\n*synthetic*\n", "remote image"),
        ('<img src="docs/plot.png" alt="speedup">\n\ncllm wins\n', "names no results/ folder"),
    ],
)
def test_checker_rejects(tmp_path: Path, markdown: str, expected: str) -> None:
    problems = _problems(_repo_with_run(tmp_path), markdown)
    assert any(expected in p for p in problems), problems


def test_checker_wants_provenance_in_the_cited_folder(tmp_path: Path) -> None:
    repo = _repo_with_run(tmp_path, with_provenance=False)
    problems = _problems(repo, "![s](docs/plot.png)\n*results/run1*\n")
    assert any("provenance" in p for p in problems), problems


def test_checker_skips_fenced_code(tmp_path: Path) -> None:
    doc = tmp_path / "x.md"
    doc.write_text("```\n![not a figure](nowhere.png)\n```\n![real](a.png)\n", encoding="utf-8")
    assert [f.src for f in find_figures(doc)] == ["a.png"]
