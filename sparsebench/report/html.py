"""A single self-contained ``report.html``: tables inline, figures embedded as base64 PNGs.

No scripts, fonts or stylesheets are fetched, so the page reads the same offline, attached to an
email or opened years later from an MLflow artifact. The page is a jinja2 template with
autoescaping on: every text from a run (method names, settings, notes) is escaped by the template,
and only the few Markdown marks the report uses become tags (``inline``).
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from pathlib import Path

import jinja2
from markupsafe import Markup, escape

from sparsebench.report.document import Block
from sparsebench.report.formatting import text_column
from sparsebench.report.writers import wrapped_columns

CSS = """
*, *::before, *::after { box-sizing: border-box; }
body { font-family: -apple-system, "Segoe UI", "DejaVu Sans", Helvetica, Arial, sans-serif; margin: 2rem auto;
       max-width: 1180px; padding: 0 1.2rem; color: #1d1d1f; line-height: 1.45; }
h1 { font-size: 1.7rem; border-bottom: 2px solid #0173b2; padding-bottom: .3rem; }
h2 { font-size: 1.35rem; margin-top: 2.4rem; border-bottom: 1px solid #ccc; padding-bottom: .2rem; }
h3 { font-size: 1.08rem; margin-top: 1.6rem; }
div.table { max-width: 100%; overflow-x: auto; }
table { border-collapse: collapse; margin: .6rem 0; font-size: .86rem; }
th, td { border: 1px solid #d0d0d0; padding: .28rem .55rem; text-align: right; white-space: nowrap; }
th { background: #eef3f8; }
th.text, td.text { text-align: left; }
th.wrap, td.wrap { white-space: normal; min-width: 9em; max-width: 16em; }
tr.quoted td { color: #555; font-style: italic; background: #fafafa; }
p.note { color: #444; font-size: .84rem; max-width: 60rem; }
figure { margin: 1rem 0 2rem; }
figure img { max-width: 100%; border: 1px solid #e2e2e2; }
figcaption { color: #444; font-size: .85rem; max-width: 60rem; }
code { background: #f3f3f3; padding: 0 .25rem; border-radius: 3px; font-size: .85rem; }
pre { background: #f3f3f3; padding: .6rem .8rem; overflow-x: auto; white-space: pre-wrap; font-size: .82rem; }
@media print {
  body { max-width: none; margin: 0; font-size: 10pt; }
  table { font-size: 7.5pt; }
  th, td { padding: .15rem .3rem; }
  figure, table { break-inside: avoid; }
}
"""

PAGE = """{% macro cls(cell) %}{% if cell.css %} class="{{ cell.css }}"{% endif %}{% endmacro -%}
<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title><style>{{ css }}</style></head>
<body>
{% for b in blocks -%}
{% if b.kind in ("h1", "h2", "h3") -%}
<{{ b.kind }}>{{ b.text | inline }}</{{ b.kind }}>
{%- elif b.kind == "p" -%}
<p>{{ b.text | inline }}</p>
{%- elif b.kind == "note" -%}
<p class="note">{{ b.text | inline }}</p>
{%- elif b.kind == "code" -%}
<pre><code>{{ b.text }}</code></pre>
{%- elif b.kind == "table" -%}
<div class="table"><table><thead><tr>
{%- for cell in b.table.head %}<th{{ cls(cell) }}>{{ cell.text }}</th>{% endfor -%}
</tr></thead><tbody>
{%- for row in b.table.rows %}<tr{% if row.quoted %} class="quoted"{% endif %}>
{%- for cell in row.cells %}<td{{ cls(cell) }}>{{ cell.text | inline }}</td>{% endfor -%}
</tr>{% endfor -%}
</tbody></table></div>
{%- elif b.kind == "figure" -%}
<figure><img alt="{{ b.caption }}" src="data:image/png;base64,{{ b.png }}">
<figcaption>{{ b.caption | inline }}</figcaption></figure>
{%- endif %}
{% endfor -%}
</body></html>
"""


def inline(text: str) -> Markup:
    """The few Markdown marks the report uses (``code``, **bold**, *italic*) as HTML, escaped first."""
    out = str(escape(text))
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)
    return Markup(re.sub(r"(?<![\w*])\*([^*]+)\*(?![\w*])", r"<em>\1</em>", out))


@dataclass
class Cell:
    text: str
    css: str


@dataclass
class Row:
    cells: list[Cell]
    quoted: bool


@dataclass
class HtmlTable:
    """A display table as the template reads it: header and body cells with their alignment class."""

    head: list[Cell]
    rows: list[Row]


def html_table(block: Block) -> HtmlTable | None:
    """Text columns left-aligned, long ones wrapping; numbers right-aligned; quoted rows marked."""
    if block.table is None:
        return None
    frame = block.table.display
    wrapped = set(wrapped_columns(frame))
    classes = [
        " ".join(["text"] * text_column(frame[c]) + ["wrap"] * (str(c) in wrapped)) for c in frame.columns
    ]
    head = [Cell(str(c), k) for c, k in zip(frame.columns, classes, strict=True)]
    quoted = list(frame["source"] == "quoted") if "source" in frame.columns else [False] * len(frame)
    rows = [
        Row([Cell(str(v), k) for v, k in zip(row, classes, strict=True)], q)
        for row, q in zip(frame.itertuples(index=False), quoted, strict=True)
    ]
    return HtmlTable(head, rows)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["inline"] = inline
    return env


def render(blocks: list[Block], title: str, folder: Path) -> str:
    """The whole page; ``folder`` is where the figures' relative paths point."""
    shown = []
    for block in blocks:
        item = {"kind": block.kind, "text": block.text, "caption": block.caption}
        if block.kind == "table":
            item["table"] = html_table(block)
            if item["table"] is None:
                continue
        elif block.kind == "figure":
            item["png"] = base64.b64encode((folder / block.text).read_bytes()).decode("ascii")
        shown.append(item)
    return _environment().from_string(PAGE).render(title=title, css=Markup(CSS), blocks=shown)
