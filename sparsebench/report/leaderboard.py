"""The leaderboard: one line per campaign row, from its committed run records, as README shows it.

``sparsebench report --records reports/mnist --leaderboard`` prints the block README.md holds between
``<!-- leaderboard:start -->`` and ``<!-- leaderboard:end -->`` (``--readme README.md`` rewrites it
there), and a test regenerates it from the committed records and compares, so README can cite no
number that the records do not give. The block holds nothing that changes between two runs of the
command (no date, no path of this machine).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd

from sparsebench.errors import ConfigError
from sparsebench.report.aggregate import group_stats
from sparsebench.report.architecture import architecture_table
from sparsebench.report.formatting import DASH, fmt_x
from sparsebench.report.matched_points import pct, row_targets
from sparsebench.report.origins import differences_table, origins_table
from sparsebench.report.records import RecordRow, RecordSet, load_records
from sparsebench.report.select import NoMatchingRunsError
from sparsebench.report.tables import Table
from sparsebench.report.targets import targets_table
from sparsebench.report.writers import to_markdown

START = "<!-- leaderboard:start -->"
END = "<!-- leaderboard:end -->"
COLUMNS = ("test", "compression", "compression_structured", "compression_precision", "test_precision")
OPTIONAL = {"compression_structured": "structured", "compression_precision": "with bits"}
GRID_MARK = " †"
"""Follows the name of a grid row of the matched-sparsity comparison (``grid_note`` says why)."""


def leaderboard_table(records: RecordSet) -> Table:
    """Rows with records, in the spec's order: mean ± 95 % CI half-width over distinct seeds."""
    stats = group_stats(records.data.runs, ["task", "setting", "method"], list(COLUMNS))
    by_row = {str(r.setting): r for r in stats.itertuples()}
    lines = []
    for row in records.rows:
        found = by_row.get(row.name)
        if found is None:
            continue
        name = row.name + (GRID_MARK if len(row_targets(row)) > 1 else "")
        line = {"task": row.task or found.task, "row": name, "method": f"`{found.method}`"}
        line["seeds"] = f"{found.n}" + (
            f" of {len(row.seeds)}" if row.seeds and found.n < len(row.seeds) else ""
        )
        line["test error"] = _error(found.test_mean, found.test_ci_low, found.test_ci_high)
        for column in ("compression", *OPTIONAL):
            mean = getattr(found, f"{column}_mean")
            line[OPTIONAL.get(column, column)] = _ratio(
                mean, getattr(found, f"{column}_ci_low"), getattr(found, f"{column}_ci_high")
            )
        if not math.isnan(found.test_precision_mean) and line["with bits"] != DASH:
            line["with bits"] += f" at {found.test_precision_mean:.2f} %"
        line["paper (quoted)"] = paper_text(row)
        line["command"] = f"sparsebench reproduce {records.folder.as_posix()} --row {row.name}"
        lines.append(line)
    display = pd.DataFrame(lines)
    for column in OPTIONAL.values():
        if column in display and (display[column] == DASH).all():
            display = display.drop(columns=column)
    text = " ".join(part for part in (note(records), grid_note(records)) if part)
    return Table("leaderboard", "Leaderboard", stats, display, text, task=records.campaign)


def campaign_tables(records: RecordSet) -> list[Table]:
    """The report's tables of campaign rows: the leaderboard, the targets (if any row declares one),
    the units kept per layer (if any row removes units), how rows differ from their papers' protocols
    (if any row says) and where each row's configuration came from (its tuning budget)."""
    optional = [targets_table(records), architecture_table(records), differences_table(records)]
    return [leaderboard_table(records), *[t for t in optional if t is not None], origins_table(records)]


def _error(mean: float, low: float, high: float) -> str:
    if math.isnan(mean):
        return DASH
    if math.isnan(low):
        return f"{mean:.2f} %"
    return f"{mean:.2f} ± {(high - low) / 2:.2f} %"


def _ratio(mean: float, low: float, high: float) -> str:
    if math.isnan(mean):
        return DASH
    if math.isnan(low):
        return fmt_x(mean)
    return f"{fmt_x(mean)} ± {(high - low) / 2:.{0 if mean >= 100 else 1}f}"


def paper_text(row: RecordRow) -> str:
    """The row's quoted paper numbers: error, then each compression the paper gives."""
    paper = row.paper
    if not paper or paper.get("error") is None:
        return ""
    parts = [f"{float(paper['error']):.2f} %"]
    if paper.get("compression") is not None:
        parts.append(f"{fmt_x(float(paper['compression']))}")
    for key, name in OPTIONAL.items():
        if paper.get(key) is not None:
            parts.append(f"{fmt_x(float(paper[key]))} {name}")
    return ", ".join(parts)


def note(records: RecordSet) -> str:
    cited = sorted(
        str(r.paper["citation"]) + (f" ({r.paper['note']})" if r.paper.get("note") else "")
        for r in records.rows
        if r.paper and r.paper.get("citation")
    )
    cited = list(dict.fromkeys(cited))
    text = (
        "Test error of the exported model and weights-only compression |W| / |W != 0|; structured: the "
        "network left once dead neurons and filters are removed; with bits: storage at the precision the "
        "posterior allows, at the test error of the model rounded to that precision (mean over seeds). "
        "Mean ± half-width of the 95 % confidence interval (Student's t) over distinct seeds; one seed "
        "shows its value alone."
    )
    if cited:
        text += f" Paper numbers are quoted, not recomputed: {'; '.join(cited)}."
    return text


def grid_note(records: RecordSet) -> str:
    """Why a grid row's line is no result of its method: it is exported at the grid's highest target
    whether or not its hyperparameter gets there, so a weak KL weight or lambda shows a collapsed
    error here; the matched-sparsity table reads each grid point at every target and keeps the one
    validation picks, which is the comparison's number."""
    tops: dict[str, float] = {}
    for row in records.rows:
        if len(row_targets(row)) > 1:
            tops[str(row.task)] = max(tops.get(str(row.task), 0.0), *row_targets(row))
    if not tops:
        return ""
    where = ", ".join(f"{task}: {pct(top)}" for task, top in tops.items())
    return (
        f"{GRID_MARK.strip()} One point of a matched-sparsity grid, exported at the grid's highest target "
        f"({where}) whatever its hyperparameter reaches by itself: not the "
        "method's result. The matched-sparsity table reads every grid point at every target and keeps, "
        "per target and seed, the one with the lowest validation error."
    )


def leaderboard_block(folder: Path) -> str:
    """The Markdown README holds between the markers, regenerated from ``folder``'s records."""
    command = f"sparsebench report --records {folder.as_posix()} --leaderboard"
    try:
        records = load_records(folder)
    except NoMatchingRunsError:
        return (
            f"*No run records are committed in `{folder.as_posix()}/runs` yet, so there is no leaderboard: "
            f"`sparsebench campaign run` writes them, `{command}` makes this table from them.*\n"
        )
    table = leaderboard_table(records)
    display = table.display.drop(columns="command")
    missing = [r.name for r in records.rows if r.name not in set(records.data.runs.setting)]
    lines = [
        f"Generated by `{command}` from {len(records.data.runs)} run records (do not edit by hand: a "
        "test regenerates it). Replay any row: `sparsebench reproduce "
        f"{folder.as_posix()} --row ROW [--seed K]`.",
        "",
        to_markdown(display),
        "",
        table.note,
    ]
    targets = targets_table(records)
    if targets is not None:
        lines += ["", "Targets of the campaign spec:", "", to_markdown(targets.display), "", targets.note]
    if missing:
        lines += ["", f"Rows without records yet: {', '.join(missing)}."]
    return "\n".join(lines) + "\n"


def readme_block(text: str, source: str = "README.md") -> str:
    """The text between the markers of a README."""
    match = re.search(re.escape(START) + r"\n(.*?)" + re.escape(END), text, re.S)
    if match is None:
        raise ConfigError(f"{source} has no {START} ... {END} markers to hold the leaderboard")
    return match.group(1)


def replace_block(text: str, block: str, source: str = "README.md") -> str:
    """``text`` with the block between the markers replaced (the markers stay)."""
    readme_block(text, source)
    return re.sub(
        re.escape(START) + r"\n.*?" + re.escape(END),
        lambda _: f"{START}\n{block}{END}",
        text,
        count=1,
        flags=re.S,
    )
