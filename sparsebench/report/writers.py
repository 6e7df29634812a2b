"""Tables to files: GitHub Markdown, booktabs LaTeX and CSV, sized to fit a printed page.

A table fits a page when its widest line does: numbers are short, but setting labels ("epochs=100,
scope=global, sparsity=0.92") and method notes are not, so long text cells wrap at ``WRAP``
characters (a ``<br>`` in Markdown, a ``p{}`` column in LaTeX, a wrapping cell in HTML) instead
of stretching the table past the margin.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pandas as pd

from sparsebench.report.formatting import DASH, text_column
from sparsebench.report.tables import Table

WRAP = 20
"""Longest text a cell shows on one line before it wraps (characters)."""
PAGE_CHARS = 130
"""Characters across a page at table size: the report's HTML page and GitHub's Markdown column, and
a LaTeX ``\\small`` table on a landscape A4 or letter page (or with ``\\resizebox`` on a portrait one)."""
CELL_PADDING = 3
"""Characters a column adds besides its text (the ``" | "`` of Markdown, ``&`` and spacing in LaTeX)."""


def wrapped_columns(display: pd.DataFrame) -> list[str]:
    """The text columns whose longest cell is longer than ``WRAP``: these wrap to fit the page."""
    return [
        str(c)
        for c in display.columns
        if text_column(display[c]) and max((len(str(v)) for v in display[c]), default=0) > WRAP
    ]


def page_width(display: pd.DataFrame) -> int:
    """Characters the widest line of the table takes once long text cells wrap."""
    wrapped = set(wrapped_columns(display))
    width = 0
    for column in display.columns:
        cells = [str(column), *(str(v) for v in display[column])]
        if column in wrapped:
            cells = [line for cell in cells for line in textwrap.wrap(cell, WRAP) or [""]]
        width += max(len(cell) for cell in cells) + CELL_PADDING
    return width


def to_markdown(display: pd.DataFrame, wrap: bool = False) -> str:
    """A GitHub-flavoured Markdown table (no extra dependency: pandas needs ``tabulate`` for this).

    With ``wrap`` long text cells break with ``<br>`` (GitHub renders it inside tables); the
    terminal summary leaves them whole.
    """
    wrapped = set(wrapped_columns(display)) if wrap else set()
    header = [str(c) for c in display.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in display.itertuples(index=False):
        cells = []
        for column, value in zip(header, row, strict=True):
            text = str(value).replace("|", "\\|")
            cells.append("<br>".join(textwrap.wrap(text, WRAP)) if column in wrapped else text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def latex_columns(display: pd.DataFrame) -> str:
    """``l`` for words, ``r`` for numbers, a ragged ``p{}`` column for long words so lines wrap."""
    wrapped = set(wrapped_columns(display))
    spec = []
    for column in display.columns:
        if column in wrapped:
            spec.append(f">{{\\raggedright\\arraybackslash}}p{{{0.5 * WRAP:g}em}}")
        else:
            spec.append("l" if text_column(display[column]) else "r")
    return "".join(spec)


def to_latex(table: Table) -> str:
    """A booktabs table in ``\\small`` (``\\usepackage{booktabs,array}``) through pandas' Styler."""
    task = table.task.replace("_", r"\_")  # pandas escapes the cells, not the caption
    text = table.display.replace(r"\*\*(.*)\*\*", r"\1", regex=True).to_latex(
        index=False,
        escape=True,
        caption=f"{task}: {table.title}" if task else table.title,
        column_format=latex_columns(table.display),
        label=f"tab:{table.task}-{table.name}",
    )
    text = text.replace("\\begin{table}\n", "\\begin{table}\n\\small\n", 1)
    return (
        text.replace("±", r"$\pm$").replace(DASH, "--").replace("†", r"$^\dagger$").replace("≈", r"$\approx$")
    )


def write_csv(tables: list[Table], folder: Path) -> list[Path]:
    """One CSV per table name, the tasks stacked (numbers, not strings)."""
    by_name: dict[str, list[pd.DataFrame]] = {}
    for table in tables:
        by_name.setdefault(table.name, []).append(table.numbers)
    paths = []
    for name, frames in by_name.items():
        path = folder / f"{name}.csv"
        pd.concat(frames, ignore_index=True).to_csv(path, index=False)
        paths.append(path)
    return paths
