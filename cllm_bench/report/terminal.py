"""Renderer: the report document on the terminal (rich tables fitted to the width).
"""

from __future__ import annotations

from typing import Sequence

from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table as RichTable

from cllm_bench.report.blocks import Document, TableBlock, TextBlock


def _rich_table(table: TableBlock, title: str | None = None) -> RichTable:
    """A compact rich table (no vertical rules, cells kept on one line)."""
    rt = RichTable(title=title, box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False, padding=(0, 1), expand=False)
    numeric = {"n", "reps", "speedup", "tok/fwd", "fast-fwd", "stationary", "match_ar", "TTFT"}
    wrapable = {"task", "model", "decoder", "flags", "verdict", "ours: model / decoder"}
    wrapable |= {"paper speedup", "paper source", "paper tokens/s"}
    for i, h in enumerate(table.headers):
        if table.kind == "provenance":
            rt.add_column(h, style="bold" if i == 0 else None, no_wrap=i == 0, overflow="fold")
            continue
        rt.add_column(
            h,
            justify="right" if h in numeric else "left",
            no_wrap=h not in wrapable,
            overflow="fold",
            min_width=min(10, max(cell_len(h), 6)) if h in wrapable else None,
        )
    for i, row in enumerate(table.rows):
        style = {"warn": "yellow", "bad": "bold red", "good": "green"}.get(table.klass(i))
        rt.add_row(*row, style=style)
    return rt


TERMINAL_DROP_ORDER: tuple[str, ...] = (
    "TTFT",
    "reps",
    "stationary",
    "fast-fwd",
    "paper source",
    "ours: n × reps",
    "paper tokens/s",
    "tok/fwd",
    "Δ acc (SE)",
    "accuracy (old → new)",
    "match_ar",
    "ours: tokens/s",
    "speedup (old → new)",
)


TERMINAL_SHORTEN: dict[str, tuple[str, str]] = {  # header -> (short header, cut each cell at this text)
    "tokens/s (min–max)": ("tokens/s", " ("),
    "accuracy ± SE": ("accuracy", " ±"),
}


def fit_table(table: TableBlock, width: int) -> tuple[TableBlock, list[str]]:
    """Drop low-priority columns (:data:`TERMINAL_DROP_ORDER`) until the table fits ``width``.

    Returns the narrowed table and the names of the hidden columns.
    """

    def needed(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> int:
        widths = [max([cell_len(h)] + [cell_len(r[i]) for r in rows]) for i, h in enumerate(headers)]
        return sum(widths) + 3 * len(widths) + 1  # padding 1+1 and a separator per column

    headers, rows, hidden = list(table.headers), [list(r) for r in table.rows], []
    for name in TERMINAL_DROP_ORDER:
        if needed(headers, rows) <= width:
            break
        if name in headers:
            i = headers.index(name)
            headers.pop(i)
            for r in rows:
                r.pop(i)
            hidden.append(name)
    for name, (short, cut) in TERMINAL_SHORTEN.items():
        if needed(headers, rows) <= width:
            break
        if name in headers:
            i = headers.index(name)
            headers[i] = short
            for r in rows:
                r[i] = r[i].split(cut, 1)[0]
            hidden.append(f"{name} → {short}")
    narrowed = TableBlock(tuple(headers), tuple(tuple(r) for r in rows), table.row_class, table.caption, table.kind)
    return narrowed, hidden


def print_terminal(console: Console, doc: Document) -> None:
    """Provenance, the results table, flags, paper comparison and diffs, in the terminal."""
    console.rule(f"[bold]{doc.title}[/bold]")
    console.print(doc.subtitle, markup=False)
    for section in doc.sections:
        if section.anchor == "plots":
            continue
        console.print()
        console.rule(section.title, align="left")
        for block in section.blocks:
            if isinstance(block, TableBlock):
                narrowed, hidden = fit_table(block, console.width)
                console.print(_rich_table(narrowed, block.caption or None))
                if hidden:
                    note = f"(hidden for terminal width: {', '.join(hidden)}; see report.md)"
                    console.print(note, style="dim", markup=False)
            elif isinstance(block, TextBlock):
                style = {"warning": "yellow", "note": "dim"}.get(block.kind)
                console.print(block.text, style=style, markup=False, highlight=False)
