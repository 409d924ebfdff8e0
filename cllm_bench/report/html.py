"""Self-contained HTML5 rendering of a report :class:`~cllm_bench.report.Document`.

One file, no external resources: CSS inline, plots embedded as base64 PNG data URIs,
every text escaped with :func:`html.escape`.
"""

from __future__ import annotations

import base64
from html import escape
from typing import Any

from cllm_bench.report.blocks import Document, PlotBlock, Section, TableBlock, TextBlock

CSS = """
:root { --fg:#1d2330; --muted:#5b6577; --line:#d9dee7; --warn:#fff4d6; --warn-line:#e0b43c; --bad:#ffd9d4; --good:#e3f5e1; }
* { box-sizing: border-box; }
body { font: 14px/1.45 -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: var(--fg);
       margin: 0 auto; max-width: 1600px; padding: 16px 20px 60px; }
h1 { margin: 0 0 2px; font-size: 26px; }
h2 { margin: 28px 0 10px; padding-bottom: 4px; border-bottom: 2px solid var(--line); font-size: 20px; }
h3 { margin: 22px 0 6px; font-size: 16px; }
.subtitle { color: var(--muted); margin: 0 0 10px; }
nav a { margin-right: 14px; color: #2456a6; text-decoration: none; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 12.5px; margin: 6px 0 10px; }
th, td { border: 1px solid var(--line); padding: 2px 6px; white-space: nowrap; text-align: left; vertical-align: top; }
thead th { background: #eef1f6; }
table.prov tbody th { color: var(--muted); font-weight: 500; background: #f7f8fb; }
table.prov td { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12px; white-space: normal; word-break: break-all; }
table.data caption { text-align: left; color: var(--muted); font-style: italic; padding: 2px 0 4px; }
table.data tr.warn td { background: var(--warn); }
table.data tr.bad td { background: var(--bad); }
table.data tr.good td { background: var(--good); }
table.data.wrap td { white-space: normal; min-width: 60px; }
table.data td.flags { color: #9a3412; font-weight: 600; white-space: normal; min-width: 90px; }
div.note { color: var(--muted); }
div.warning { background: var(--warn); border-left: 4px solid var(--warn-line); padding: 6px 12px; margin: 8px 0; }
div.warning p, div.note p { margin: 4px 0; } div.warning ul, div.note ul { margin: 4px 0 4px 18px; padding: 0; }
figure { margin: 10px 0 22px; } figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; }
p.omitted { color: var(--muted); font-style: italic; }
"""


def _text_html(block: TextBlock) -> str:
    """A text block: plain lines become paragraphs, "- " lines a bullet list."""
    parts: list[str] = []
    items: list[str] = []

    def flush() -> None:
        if items:
            parts.append("<ul>" + "".join(f"<li>{escape(i)}</li>" for i in items) + "</ul>")
            items.clear()

    for line in block.text.splitlines():
        if line.startswith("- "):
            items.append(line[2:])
        elif line.strip():
            flush()
            parts.append(f"<p>{escape(line)}</p>")
    flush()
    body = "".join(parts)
    if block.kind in ("warning", "note"):
        return f'<div class="{block.kind}">{body}</div>'
    return body


def _table_html(table: TableBlock) -> str:
    """A data table (flag / regression rows get a class) or the provenance table."""
    if table.kind == "provenance":
        return _provenance_html(table)
    flags_col = table.headers.index("flags") if "flags" in table.headers else -1
    out = [f'<div class="scroll"><table class="data{" wrap" if table.kind == "wrap" else ""}">']
    if table.caption:
        out.append(f"<caption>{escape(table.caption)}</caption>")
    out.append("<thead><tr>" + "".join(f'<th scope="col">{escape(h)}</th>' for h in table.headers) + "</tr></thead><tbody>")
    for i, row in enumerate(table.rows):
        cls = f' class="{table.klass(i)}"' if table.klass(i) else ""
        cells = "".join(
            f'<td class="flags">{escape(c)}</td>' if j == flags_col else f"<td>{escape(c)}</td>" for j, c in enumerate(row)
        )
        out.append(f"<tr{cls}>{cells}</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _provenance_html(table: TableBlock) -> str:
    """Provenance: one row per field, one column per run."""
    head = "".join(f'<th scope="col">{escape(h)}</th>' for h in table.headers)
    rows = "".join(
        f'<tr><th scope="row">{escape(r[0])}</th>' + "".join(f"<td>{escape(c)}</td>" for c in r[1:]) + "</tr>"
        for r in table.rows
    )
    return f'<div class="scroll"><table class="prov"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>'


def plot_html(plot: Any) -> str:
    """A plot as <figure> with an embedded PNG, or a sentence saying why it is absent."""
    head = f"<h3>{escape(plot.title)}</h3>"
    if plot.png is None:
        return head + f'<p class="omitted">Not drawn: {escape(plot.reason or "no data")}</p>'
    data = base64.b64encode(plot.png).decode("ascii")
    return (
        head
        + f'<figure id="plot-{escape(plot.name)}"><img src="data:image/png;base64,{data}" alt="{escape(plot.title)}">'
        + f"<figcaption>{escape(plot.caption)}</figcaption></figure>"
    )


def _section_html(section: Section) -> str:
    out = [f'<section id="{escape(section.anchor)}"><h2>{escape(section.title)}</h2>']
    for block in section.blocks:
        if isinstance(block, TableBlock):
            out.append(_table_html(block))
        elif isinstance(block, TextBlock):
            out.append(_text_html(block))
        elif isinstance(block, PlotBlock):
            out.append(plot_html(block.plot))
    out.append("</section>")
    return "\n".join(out)


def render_html(doc: Document) -> str:
    """The document as one valid HTML5 page."""
    nav = "".join(f'<a href="#{escape(s.anchor)}">{escape(s.title)}</a>' for s in doc.sections)
    body = "\n".join(_section_html(s) for s in doc.sections)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(doc.title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f'<header><h1>{escape(doc.title)}</h1><p class="subtitle">{escape(doc.subtitle)}</p><nav>{nav}</nav></header>\n'
        f"<main>\n{body}\n</main>\n</body>\n</html>\n"
    )
