"""Renderer: the report document as Markdown (``report.md``).
"""

from __future__ import annotations

from cllm_bench.report.blocks import Document, PlotBlock, TableBlock, TextBlock

CODE_FIELDS = ("run folder", "git commit", "command")


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(table: TableBlock) -> str:
    lines = []
    if table.caption:
        lines += [f"*{table.caption}*", ""]
    lines.append("| " + " | ".join(_md_cell(h) for h in table.headers) + " |")
    lines.append("|" + "|".join("---" for _ in table.headers) + "|")
    for row in table.rows:
        if table.kind == "provenance" and row[0] in CODE_FIELDS:
            row = (row[0],) + tuple(f"`{c}`" for c in row[1:])
        lines.append("| " + " | ".join(_md_cell(c) for c in row) + " |")
    return "\n".join(lines)


def render_markdown(doc: Document) -> str:
    """The document as GitHub-flavoured markdown; plots link to the PNG files beside it."""
    out = [f"# {doc.title}", "", f"_{doc.subtitle}_", ""]
    for section in doc.sections:
        out += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, TableBlock):
                out += [markdown_table(block), ""]
            elif isinstance(block, TextBlock):
                prefix = {"warning": "> ⚠ ", "note": "> "}.get(block.kind, "")
                if prefix:
                    out += [prefix + line if i == 0 else "> " + line for i, line in enumerate(block.text.splitlines())]
                else:
                    out.append(block.text)
                out.append("")
            elif isinstance(block, PlotBlock):
                plot = block.plot
                out += [f"### {plot.title}", ""]
                if plot.png is None:
                    out += [f"_Not drawn: {plot.reason}_", ""]
                else:
                    out += [f"![{plot.title}]({plot.filename})", "", plot.caption, ""]
    return "\n".join(out).rstrip() + "\n"
