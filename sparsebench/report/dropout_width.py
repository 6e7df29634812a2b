"""Kingma et al. 2015, Figure 1, from a campaign's records: test error against width per dropout variant.

A campaign (sweeps/campaigns/kingma2015.yaml) labels each row with its ``variant`` (a key of
``dropout_orderings.VARIANTS``) and its ``width``; the row's quoted ``paper`` error is the paper's
point, read off the figure. This section draws the figure and the per-epoch validation curves,
tabulates mean ± 95 % CI per point, and states which of the paper's orderings hold in the records,
where, with what seed spread, and how that compares with the paper and the gngdb replication; every
statement is computed here from those numbers. Rows not run yet are named, not silently dropped.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from sparsebench.report import dropout_orderings as orderings
from sparsebench.report.aggregate import group_stats
from sparsebench.report.analyses import AnalysisOutput
from sparsebench.report.document import Block, heading
from sparsebench.report.formatting import DASH, plural
from sparsebench.report.records import RecordRow, RecordSet
from sparsebench.report.tables import Table

TITLE = "Dropout across widths (Kingma et al. 2015, Figure 1)"
POINT_COLUMNS = ["row", "variant", "width", "seed", "test", "epochs", "run_id"]


def width_of(value: Any) -> int | None:
    """A row's ``width`` label as an int (YAML may give 1250, 1250.0 or "1250"); None if not one."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if math.isfinite(number) and number == int(number) and number > 0 else None


def labelled_rows(records: RecordSet) -> list[RecordRow]:
    """The rows this section draws: a known ``variant`` label and a positive whole ``width``."""
    return [
        r
        for r in records.rows
        if r.labels.get("variant") in orderings.VARIANTS and width_of(r.labels.get("width")) is not None
    ]


def points(records: RecordSet) -> pd.DataFrame:
    """One line per recorded cell of a labelled row: variant, width, seed, test error, epochs."""
    rows = {r.name: r for r in labelled_rows(records)}
    runs = records.data.runs
    runs = runs[runs.setting.isin(rows)]
    frame = pd.DataFrame(
        {
            "row": runs.setting,
            "variant": [rows[s].labels["variant"] for s in runs.setting],
            "width": [width_of(rows[s].labels["width"]) for s in runs.setting],
            "seed": runs.seed.astype(int),
            "test": runs.test.astype(float),
            "epochs": runs.epochs,
            "run_id": runs.run_id,
        },
        columns=POINT_COLUMNS,
    )
    return frame.reset_index(drop=True)


def history(records: RecordSet, cells: pd.DataFrame) -> pd.DataFrame:
    """Per-epoch validation error of every cell in ``cells``: variant, width, seed, epoch, val."""
    columns = ["variant", "width", "seed", "epoch", "val"]
    data = records.data.history
    if data.empty or cells.empty:
        return pd.DataFrame(columns=columns)
    data = data[data.key == "val_metric"].rename(columns={"step": "epoch", "value": "val"})
    merged = data.merge(cells[["run_id", "variant", "width", "seed"]], on="run_id")
    return merged[columns].reset_index(drop=True)


def paper_points(rows: list[RecordRow]) -> dict[tuple[str, int], float]:
    """(variant, width) -> the row's quoted paper error, where the spec gives one."""
    quoted = {}
    for row in rows:
        error = (row.paper or {}).get("error")
        width = width_of(row.labels.get("width"))
        if error is not None and width is not None:
            quoted[(str(row.labels["variant"]), width)] = float(error)
    return quoted


def summary(cells: pd.DataFrame) -> pd.DataFrame:
    """Mean, std and 95 % CI (Student's t) of the test error over seeds, per variant and width."""
    if cells.empty:
        return pd.DataFrame(columns=["variant", "width", "n", "test_mean", "test_ci_low", "test_ci_high"])
    return group_stats(cells, ["variant", "width"], ["test"])


def point_text(mean: float, low: float, high: float, n: int) -> str:
    """``1.23 ± 0.05 (2)``: mean ± half-width of the 95 % CI (seeds); one seed shows its value alone."""
    if n == 0 or math.isnan(mean):
        return DASH
    if math.isnan(low):
        return f"{mean:.2f} ({n})"
    return f"{mean:.2f} ± {(high - low) / 2:.2f} ({n})"


def points_table(stats: pd.DataFrame, rows: list[RecordRow], quoted: dict[tuple[str, int], float]) -> Table:
    """Variants down, widths across, mean ± CI (seeds) in each cell; the CSV keeps every number long."""
    planned = {(str(r.labels["variant"]), width_of(r.labels["width"])): len(r.seeds) for r in rows}
    widths = sorted({w for _, w in planned})
    variants = [v for v in orderings.VARIANTS if any(key[0] == v for key in planned)]
    by_key = {(r.variant, int(r.width)): r for r in stats.itertuples()}
    numbers, display = [], []
    for variant in variants:
        line = {"variant": orderings.SHORT[variant]}
        for width in widths:
            line[str(width)] = ""  # not a point of the campaign
            if (variant, width) not in planned:
                continue
            found = by_key.get((variant, width))
            value = {k: math.nan for k in ("test_mean", "test_std", "test_ci_low", "test_ci_high")}
            if found is not None:
                value = {k: float(getattr(found, k)) for k in value}
            n = 0 if found is None else int(found.n)
            line[str(width)] = point_text(value["test_mean"], value["test_ci_low"], value["test_ci_high"], n)
            numbers.append(
                {"variant": variant, "width": width, "seeds": n, "seeds_planned": planned[(variant, width)]}
                | value
                | {"paper": quoted.get((variant, width), math.nan)}
            )
        display.append(line)
    note = (
        "Test error % of the final model, hidden units per layer across: mean ± half-width of the 95 % "
        "confidence interval (Student's t over seeds), seeds in brackets; — no record yet. The paper's "
        "points (read off its Figure 1) are in the CSV and the figure."
    )
    title = "Test error by variant and width"
    return Table("dropout_width", title, pd.DataFrame(numbers), pd.DataFrame(display), note)


def orderings_table(judged: pd.DataFrame) -> Table:
    """Each ordering at each width: our verdict, the difference and its seed spread, the paper's verdict."""
    display = pd.DataFrame(
        {
            "ordering": judged.ordering,
            "width": judged.width,
            "ours": judged.verdict,
            "worse - better": [
                DASH if math.isnan(d) else f"{d:+.2f}" + (f" [{lo:+.2f}, {hi:+.2f}]" if p >= 2 else "")
                for d, lo, hi, p in zip(
                    judged.mean_diff, judged.diff_low, judged.diff_high, judged.pairs, strict=True
                )
            ],
            "paper": judged.paper.replace("", DASH),
        }
    )
    note = (
        "ours: holds = the first variant has the lower test error with every seed (runs of one seed share "
        "initialisation and batch order); reversed = the second has it with every seed; otherwise the "
        "seeds disagree. worse - better: mean over seeds of the difference in error points [smallest, "
        f"largest seed]. paper: its readings differ by more than {orderings.TIE} points (holds, reversed) "
        "or not (tie)."
    )
    return Table("dropout_width_orderings", "The paper's orderings, width by width", judged, display, note)


def missing_text(rows: list[RecordRow], cells: pd.DataFrame) -> str:
    """Rows of the figure with no record or fewer seeds than the spec plans, by name."""
    have = cells.groupby("row").seed.nunique().to_dict() if not cells.empty else {}
    absent = [r.name for r in rows if have.get(r.name, 0) == 0]
    short = [
        f"{r.name} ({have[r.name]} of {len(r.seeds)})" for r in rows if 0 < have.get(r.name, 0) < len(r.seeds)
    ]
    parts = []
    if absent:
        parts.append(f"Rows without records yet ({len(absent)} of {len(rows)}): {', '.join(absent)}.")
    if short:
        parts.append(f"Rows with fewer seeds than planned: {', '.join(short)}.")
    return " ".join(parts)


def epochs_text(cells: pd.DataFrame) -> str:
    values = sorted({int(e) for e in cells.epochs.dropna()})
    if not values:
        return "an unrecorded number of epochs"
    return plural(values[0], "epoch") if len(values) == 1 else f"{values[0]} to {values[-1]} epochs"


def intro(cells: pd.DataFrame, rows: list[RecordRow]) -> str:
    seeds = sorted({int(s) for s in cells.seed})
    return (
        f"{len(cells)} cells of {len(rows)} (variant, width) rows, seeds {', '.join(map(str, seeds))}, "
        f"each trained for {epochs_text(cells)} (the paper trained to early stopping on validation; our "
        "budget is the CPU's, so read the validation curves before the orderings). Paper numbers are "
        f"read off its Figure 1 (±0.03); the replication's off {orderings.REPLICATION_CITATION}."
    )


def section(records: RecordSet, out: Path) -> AnalysisOutput:
    """The report section: figures, tables and the computed statements, or what is missing for them."""
    from sparsebench.report.dropout_width_figures import draw  # matplotlib only when drawing

    rows = labelled_rows(records)
    blocks = [heading(2, TITLE)]
    if not rows:
        blocks.append(Block("p", "No campaign row carries the labels variant and width; nothing to draw."))
        return AnalysisOutput(blocks)
    cells = points(records)
    missing = missing_text(rows, cells)
    if cells.empty:
        blocks.append(Block("p", f"No records yet for the rows of this figure. {missing}"))
        return AnalysisOutput(blocks)
    quoted = paper_points(rows)
    curves = history(records, cells)
    stats = summary(cells)
    judged = orderings.judge_all(cells[["variant", "width", "seed", "test"]], quoted)
    blocks.append(Block("p", intro(cells, rows)))
    files, figure_blocks = draw(cells, stats, curves, quoted, out)
    blocks += figure_blocks
    table, ordered = points_table(stats, rows, quoted), orderings_table(judged)
    table.task = ordered.task = records.campaign  # the LaTeX captions and labels name the campaign
    blocks += [heading(3, table.title), Block("table", table=table), Block("note", table.note)]
    blocks.append(heading(3, "Which orderings hold"))
    blocks += [Block("p", orderings.ordering_paragraph(o, judged, curves)) for o in orderings.ORDERINGS]
    blocks.append(Block("p", orderings.chain_text(judged)))
    blocks += [Block("table", table=ordered), Block("note", ordered.note)]
    if missing:
        blocks.append(Block("note", missing))
    return AnalysisOutput(blocks, [table, ordered], files)
