"""The report as a list of blocks, written once and rendered to Markdown (here) and HTML (html.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sparsebench.report.tables import Table
from sparsebench.report.writers import to_markdown


@dataclass
class Block:
    kind: Literal["h1", "h2", "h3", "p", "note", "code", "table", "figure"]
    text: str = ""
    """Heading or paragraph text (a little Markdown), code, or a figure's path relative to the report."""
    table: Table | None = None
    caption: str = ""


def heading(level: int, text: str) -> Block:
    return Block(f"h{level}", text)  # type: ignore[arg-type]


def markdown(blocks: list[Block]) -> str:
    parts = []
    for block in blocks:
        if block.kind in ("h1", "h2", "h3"):
            parts.append("#" * int(block.kind[1]) + " " + block.text)
        elif block.kind == "p":
            parts.append(block.text)
        elif block.kind == "note":
            parts.append(f"<sub>{block.text}</sub>")
        elif block.kind == "code":
            parts.append(f"```\n{block.text}\n```")
        elif block.kind == "table" and block.table is not None:
            parts.append(to_markdown(block.table.display, wrap=True))
        elif block.kind == "figure":
            parts.append(f"![{block.caption}]({block.text})\n\n*{block.caption}*")
    return "\n\n".join(parts) + "\n"
