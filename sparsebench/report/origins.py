"""Where each row's configuration came from, and the tuning budget spent to choose it.

A comparison of methods is fair only when each had the same chance to be tuned: a method whose
recipe was picked from 50 sweep trials on validation beats the same method at its defaults for
that reason alone. So the report states, per row, whether its configuration is the method's
defaults on the task, values set by hand in the spec, or a sweep's best trial frozen into the spec
(the sweep named, with its trial count), and notes when the rows of one task had different budgets.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from sparsebench.report.matched_points import TARGETS
from sparsebench.report.records import RecordRow, RecordSet
from sparsebench.report.tables import Table


def settings_text(values: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in values.items())


def budget(row: RecordRow) -> int | None:
    """Sweep trials spent on the row's configuration: 0 without a sweep, None when not stated."""
    if not row.from_sweep:
        return 0
    trials = row.from_sweep.get("trials")
    return int(trials) if isinstance(trials, int) else None


def origin_text(row: RecordRow) -> str:
    """The row's configuration in words: defaults, hand-set values, or a sweep's frozen trial."""
    sweep = row.from_sweep
    if sweep:
        chosen = f" (trial {sweep['trial']})" if sweep.get("trial") is not None else ""
        text = (
            f"best trial on validation of sweep `{sweep.get('spec')}`{chosen}, frozen: "
            f"{settings_text(dict(sweep.get('frozen') or {}))}"
        )
        if row.config:
            text += f"; set by hand: {settings_text(row.config)}"
    elif row.config:
        text = f"the method's defaults on the task, set by hand: {settings_text(row.config)}"
    else:
        text = "the method's defaults on the task"
    if row.init_from_row:
        text += f"; starts from row {row.init_from_row}'s model of the same seed"
    return text


def is_grid_point(row: RecordRow) -> bool:
    """A row labelled with several targets is one point of a matched-sparsity grid."""
    return TARGETS in (row.labels or {})


def grid_sizes(rows: list[RecordRow]) -> dict[tuple[str, str], int]:
    """(task, method) -> how many grid points the spec declares, recorded or not."""
    sizes: dict[tuple[str, str], int] = {}
    for row in rows:
        if is_grid_point(row):
            sizes[(row.task, row.method)] = sizes.get((row.task, row.method), 0) + 1
    return sizes


def budget_text(row: RecordRow, grid_size: int = 0) -> str:
    """The row's tuning in words; a grid point says that validation chooses among its grid's points."""
    trials = budget(row)
    if trials == 0 and grid_size:
        return f"no sweep; one of {grid_size} grid points, validation picks one per target and seed"
    if trials == 0:
        return "none (no sweep)"
    if trials is None:
        return f"sweep `{row.from_sweep and row.from_sweep.get('spec')}`, trial count not stated"
    return f"{trials} trials of sweep `{row.from_sweep and row.from_sweep.get('spec')}`"


def origins_table(records: RecordSet) -> Table:
    """One line per row with records: how its configuration was chosen and with how many trials."""
    recorded = set(records.data.runs.setting)
    rows = [row for row in records.rows if row.name in recorded]
    grids = grid_sizes(records.rows)
    display = pd.DataFrame(
        [
            {
                "row": r.name,
                "method": f"`{r.method}`",
                "configuration": origin_text(r),
                "tuning": budget_text(r, grids.get((r.task, r.method), 0) if is_grid_point(r) else 0),
            }
            for r in rows
        ],
        columns=["row", "method", "configuration", "tuning"],
    )
    numbers = pd.DataFrame(
        [
            {
                "row": r.name,
                "task": r.task,
                "method": r.method,
                "sweep": (r.from_sweep or {}).get("spec", ""),
                "trials": budget(r),
            }
            for r in rows
        ],
        columns=["row", "task", "method", "sweep", "trials"],
    )
    title = "Configurations and tuning budget"
    return Table("origins", title, numbers, display, note(rows), records.campaign)


def differences_table(records: RecordSet) -> Table | None:
    """Rows whose quoted paper number came from a protocol unlike ours, with what differs (the spec's
    ``paper.differences``); None when no row states any."""
    lines = [
        {"row": r.name, "paper (quoted)": str(r.paper.get("citation") or ""), "differences": text}
        for r in records.rows
        if r.paper and (text := str(r.paper.get("differences") or "").strip())
    ]
    if not lines:
        return None
    display = pd.DataFrame(lines, columns=["row", "paper (quoted)", "differences"])
    note_text = (
        "What our row does differently from the protocol behind the quoted number, as the campaign spec "
        "states it (`paper.differences`): a gap between the two numbers is read with these in mind."
    )
    title = "Differences from the papers' protocols"
    return Table("differences", title, display.copy(), display, note_text, records.campaign)


def note(rows: list[RecordRow]) -> str:
    """What the table means, and which tasks compare rows tuned with different budgets."""
    text = (
        "Tuning: sweep trials (on the validation split) spent choosing the row's configuration; none: "
        "the method's defaults or values set by hand in the spec, no sweep behind them (`from_sweep` "
        "in the spec names one, with `trials`)."
    )
    uneven = []
    for task in sorted({r.task for r in rows}):
        budgets = {budget(r) for r in rows if r.task == task}
        if len(budgets) > 1:
            shown = ", ".join("not stated" if b is None else str(b) for b in sorted(budgets, key=_order))
            uneven.append(f"{task} ({shown} trials)")
    if uneven:
        text += f" Rows of one task were tuned with different budgets: {'; '.join(uneven)}."
    else:
        text += " Every row of a task had the same sweep budget."
    if any(is_grid_point(r) for r in rows):
        text += (
            " Grid points (rows read at several targets) are chosen among on validation, per target and "
            "seed, by the matched-sparsity comparison, where a row trained for one target is the only "
            "candidate: equal runs per seed, unequal choice (docs/matched-sparsity.md, the search budget)."
        )
    return text


def _order(value: int | None) -> int:
    return -1 if value is None else value
