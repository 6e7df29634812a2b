"""Tables from hand-made runs: no degenerate endpoints, every table fits a page, escaped HTML."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sparsebench.report import aggregate, tables, writers
from sparsebench.report.document import Block, markdown
from sparsebench.report.html import render
from sparsebench.tasks.lenet300_100 import LeNet300100
from tests.report import synthetic

LEVELS = (10.0, 20.0, 50.0, 100.0)


def _matched(runs: pd.DataFrame, curves: pd.DataFrame) -> tables.Table:
    matched = aggregate.matched_errors(runs, curves, LEVELS)
    summary = aggregate.matched_summary(matched)
    marked = aggregate.best_at_levels(summary, aggregate.paired_tests(matched))
    spans = aggregate.front_spans(runs, curves)
    return tables.matched_table(marked, spans, LEVELS, "error %", aggregate.MIN_PAIRS, aggregate.ALPHA)


def test_degenerate_rule_on_single_points() -> None:
    frame = pd.DataFrame(
        {
            "compression": [12.5, math.inf, 12.5, 0.5, 5000.0, 266_200.0, 12.5],
            "test_metric": [2.0, 2.0, math.nan, 2.0, 2.0, 87.0, 2.0],
            "threshold": [3.0, 3.0, 3.0, 3.0, 3.0, 3.0, math.nan],
        }
    )
    weights = pd.Series(266_200, index=frame.index)
    bad = aggregate.degenerate(frame, ("test_metric", "threshold"), weights)
    assert list(bad) == [False, True, True, True, False, True, True]
    assert list(aggregate.degenerate(frame.assign(nonzeros=[1, 1, 1, 1, 1, 0, 1]), ())) == [
        False,
        True,
        False,
        True,
        False,
        True,
        False,
    ]


def test_matched_table_has_no_degenerate_endpoint() -> None:
    runs = synthetic.runs_frame(degenerate=True)
    curves = synthetic.curves_frame(runs)  # every curve ends in a NaN-threshold, fully pruned point
    spans = aggregate.front_spans(runs, curves)
    assert spans.high.max() < synthetic.WEIGHTS
    assert "group_nj" not in set(spans.method)  # its only run keeps no weight
    table = _matched(runs, curves)
    shown = " ".join(table.display["highest compression"])
    assert "266200x" not in shown and "group_nj" not in set(table.display.method)
    kept, kept_curves, dropped = aggregate.drop_degenerate(runs, curves)
    assert list(dropped.method) == ["group_nj"] and kept_curves.threshold.notna().all()
    assert np.isfinite(kept_curves.compression).all() and (kept_curves.compression < synthetic.WEIGHTS).all()


def _task_tables(runs: pd.DataFrame) -> list[tables.Table]:
    layers, history = synthetic.layers_frame(runs), synthetic.history_frame(runs)
    return [
        tables.paper_table(runs, layers, tuple(LeNet300100.references), "error %"),
        tables.compression_table(runs),
        tables.cost_table(runs, history),
        _matched(runs, synthetic.curves_frame(runs)),
        tables.runs_table(runs, {}),
    ]


def test_every_table_fits_a_page() -> None:
    for table in _task_tables(synthetic.runs_frame()):
        assert writers.page_width(table.display) <= writers.PAGE_CHARS, table.name
    paper = _task_tables(synthetic.runs_frame())[0]
    assert "network" not in paper.display.columns  # the section and the caption name the task
    assert "setting" in writers.wrapped_columns(paper.display)
    latex = writers.to_latex(paper)
    assert "p{10em}" in latex and "\\small" in latex
    text = writers.to_markdown(paper.display, wrap=True)
    assert "epochs=100,<br>scope=global,<br>sparsity=0.92" in text
    assert "<br>" not in writers.to_markdown(paper.display)  # the terminal summary stays one line a row


def test_compression_table_states_a_constant_weight_count_once() -> None:
    table = tables.compression_table(synthetic.runs_frame())
    assert "weights" not in table.display.columns and "266,200 weights" in table.note
    assert (table.numbers.weights_mean == synthetic.WEIGHTS).all()  # the CSV keeps the numbers


def test_runs_table_shows_short_ids_and_keeps_whole_ones() -> None:
    runs = synthetic.runs_frame()
    table = tables.runs_table(runs, {})
    assert (table.display["run id"].str.len() == tables.RUN_ID_CHARS).all()
    assert list(table.numbers.run_id) == list(runs.run_id)


def test_html_escapes_every_cell_and_keeps_the_marks(tmp_path: Path) -> None:
    display = pd.DataFrame(
        {"method": ["<script>alert(1)</script>", "svd"], "source": ["ours", "quoted"], "x": ["**1.0**", "2"]}
    )
    table = tables.Table("t", "T", display, display, "a `code` note")
    blocks = [Block("h3", "Heading & more"), Block("table", table=table), Block("note", table.note)]
    page = render(blocks, "title <b>", tmp_path)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "table { border-collapse: collapse;" in page  # the stylesheet itself, unescaped
    assert "<h3>Heading &amp; more</h3>" in page and "<title>title &lt;b&gt;</title>" in page
    assert '<tr class="quoted">' in page and "<strong>1.0</strong>" in page and "<code>code</code>" in page
    assert markdown(blocks).count("|") > 6


@pytest.mark.parametrize("count, word", [(1, "1 seed"), (2, "2 seeds"), (0, "0 seeds")])
def test_plural(count: int, word: str) -> None:
    from sparsebench.report.formatting import plural

    assert plural(count, "seed") == word
