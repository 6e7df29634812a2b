"""A single self-contained ``report.html``: tables inline, figures embedded as base64 PNGs.

No scripts, fonts or stylesheets are fetched, so the page reads the same offline, attached to an
email or opened years later from an MLflow artifact.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from sparsebench.report.document import Block
from sparsebench.report.tables import text_column

CSS = """
*, *::before, *::after { box-sizing: border-box; }
body { font-family: -apple-system, "Segoe UI", "DejaVu Sans", Helvetica, Arial, sans-serif; margin: 2rem auto;
       max-width: 1180px; padding: 0 1.2rem; color: #1d1d1f; line-height: 1.45; }
h1 { font-size: 1.7rem; border-bottom: 2px solid #0173b2; padding-bottom: .3rem; }
h2 { font-size: 1.35rem; margin-top: 2.4rem; border-bottom: 1px solid #ccc; padding-bottom: .2rem; }
h3 { font-size: 1.08rem; margin-top: 1.6rem; }
table { border-collapse: collapse; margin: .6rem 0; font-size: .86rem; }
th, td { border: 1px solid #d0d0d0; padding: .28rem .55rem; text-align: right; white-space: nowrap; }
th { background: #eef3f8; }
th.text, td.text { text-align: left; }
tr.quoted td { color: #555; font-style: italic; background: #fafafa; }
p.note { color: #444; font-size: .84rem; max-width: 60rem; }
figure { margin: 1rem 0 2rem; }
figure img { max-width: 100%; border: 1px solid #e2e2e2; }
figcaption { color: #444; font-size: .85rem; max-width: 60rem; }
code { background: #f3f3f3; padding: 0 .25rem; border-radius: 3px; font-size: .85rem; }
pre { background: #f3f3f3; padding: .6rem .8rem; overflow-x: auto; font-size: .82rem; }
"""


def inline(text: str) -> str:
    """The few Markdown marks the report uses (``code``, **bold**, *italic*) as HTML, escaped first."""
    out = html.escape(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"(?<![\w*])\*([^*]+)\*(?![\w*])", r"<em>\1</em>", out)


def table_html(block: Block) -> str:
    table = block.table
    if table is None:
        return ""
    frame = table.display
    classes = [' class="text"' if text_column(frame[c]) else "" for c in frame.columns]
    head = "".join(f"<th{k}>{html.escape(str(c))}</th>" for c, k in zip(frame.columns, classes, strict=True))
    rows = []
    for row in frame.itertuples(index=False):
        quoted = "source" in frame.columns and getattr(row, "source", "") == "quoted"
        cells = "".join(f"<td{k}>{inline(str(v))}</td>" for v, k in zip(row, classes, strict=True))
        rows.append(f'<tr class="quoted">{cells}</tr>' if quoted else f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def figure_html(block: Block, folder: Path) -> str:
    data = base64.b64encode((folder / block.text).read_bytes()).decode("ascii")
    return (
        f'<figure><img alt="{html.escape(block.caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{inline(block.caption)}</figcaption></figure>"
    )


def render(blocks: list[Block], title: str, folder: Path) -> str:
    """The whole page; ``folder`` is where the figures' relative paths point."""
    parts = []
    for block in blocks:
        if block.kind in ("h1", "h2", "h3"):
            parts.append(f"<{block.kind}>{inline(block.text)}</{block.kind}>")
        elif block.kind == "p":
            parts.append(f"<p>{inline(block.text)}</p>")
        elif block.kind == "note":
            parts.append(f'<p class="note">{inline(block.text)}</p>')
        elif block.kind == "code":
            parts.append(f"<pre><code>{html.escape(block.text)}</code></pre>")
        elif block.kind == "table":
            parts.append(table_html(block))
        elif block.kind == "figure":
            parts.append(figure_html(block, folder))
    body = "\n".join(parts)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n"
    )
