"""Where a campaign stands: per row, which seeds are done, running, queued, failed or missing.

Done means the record is in the results folder (what is committed is what counts); the queue adds
what is running or waiting now, what another machine finished (its record not here yet) and what
failed, with the reason. Status never creates a storage or a study: with none, it reads records only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from optuna.trial import TrialState

from sparsebench.campaign import durations, queue
from sparsebench.campaign.cells import Cell, is_done, parent_cell, parent_ready
from sparsebench.campaign.spec import CampaignSpec, Row
from sparsebench.sweep.study import orphaned

STATES = ("done", "running", "abandoned", "queued", "elsewhere", "failed", "missing")
BAR_WIDTH = 24


@dataclass
class RowStatus:
    row: str
    task: str
    method: str
    seeds: list[int]
    cells: dict[str, list[int]] = field(default_factory=lambda: {s: [] for s in STATES})
    failures: dict[int, str] = field(default_factory=dict)
    waiting_for: dict[int, str] = field(default_factory=dict)
    """Missing seeds whose parent cell is not done here yet: the parent's cell key."""
    minutes_per_cell: float | None = None
    """Expected training minutes of one cell, from the records (``durations``); None if unknown."""

    def count(self, state: str) -> int:
        return len(self.cells[state])


def cell_state(spec: CampaignSpec, cell: Cell, trials: list[Any]) -> tuple[str, str]:
    """The state of one cell and, for a failure, its reason (the latest trial decides)."""
    if is_done(spec.results, cell):
        return "done", ""
    running = [t for t in trials if t.state == TrialState.RUNNING]
    if running:  # abandoned: its worker here was killed; the next `campaign run` re-queues it
        return ("abandoned" if all(orphaned(t) for t in running) else "running"), ""
    if any(t.state == TrialState.WAITING for t in trials):
        return "queued", ""
    if queue.finished_elsewhere(trials) is not None:
        return "elsewhere", ""
    latest = max(trials, key=lambda t: t.number, default=None)
    if latest is not None and queue.is_failure(latest):
        return "failed", str(latest.user_attrs["failure"])
    return "missing", ""


def campaign_status(spec: CampaignSpec, rows: tuple[Row, ...], storage: str) -> dict[str, Any]:
    study = queue.load_queue(spec, storage)
    grouped = queue.trials_by_cell(study) if study is not None else {}
    out = []
    recorded = durations.recorded_minutes(spec.results)
    for row in rows:
        status = RowStatus(row.name, row.task, row.method, list(row.seeds))
        estimate = durations.expected_minutes(spec, row, recorded)
        status.minutes_per_cell = None if estimate is None else round(estimate.minutes, 1)
        for seed in row.seeds:
            cell = Cell(row.name, seed)
            state, reason = cell_state(spec, cell, grouped.get(cell, []))
            status.cells[state].append(seed)
            if reason:
                status.failures[seed] = reason
            parent = parent_cell(spec, cell)
            if state in ("missing", "failed") and parent is not None and not parent_ready(spec, cell):
                status.waiting_for[seed] = parent.key
        out.append(status)
    totals = {state: sum(r.count(state) for r in out) for state in STATES}
    return {
        "campaign": spec.name,
        "results": spec.results.as_posix(),
        "storage": queue.describe_storage(storage),
        "queue": study is not None,
        "cells": sum(len(r.seeds) for r in out),
        "totals": totals,
        "rows": [asdict(r) for r in out],
        "work_left": work_left(out),
    }


def work_left(rows: list[RowStatus]) -> dict[str, Any]:
    """Worker-minutes the cells not yet done need, by their rows' estimates; rows without one named."""
    minutes, unknown = 0.0, []
    for row in rows:
        left = len(row.seeds) - row.count("done")
        if left and row.minutes_per_cell is None:
            unknown.append(row.row)
        elif left:
            minutes += left * row.minutes_per_cell  # type: ignore[operator]
    return {"worker_minutes": round(minutes, 1), "rows_without_estimate": unknown}


def bar(done: int, busy: int, total: int, width: int = BAR_WIDTH) -> str:
    """``[####>>..]``: done, running or queued, and the rest, in proportion to ``total`` cells."""
    filled = round(width * done / max(1, total))
    moving = min(round(width * busy / max(1, total)), width - filled)
    return "[" + "#" * filled + ">" * moving + "." * (width - filled - moving) + "]"


def row_bar(row: dict[str, Any]) -> str:
    cells = row["cells"]
    return bar(len(cells["done"]), len(cells["running"]) + len(cells["queued"]), len(row["seeds"]))


def render(report: dict[str, Any]) -> str:
    """The status as text: one progress bar per row, then the failures and what waits on what."""
    lines = [
        f"campaign {report['campaign']}: records in {report['results']}/runs, queue "
        f"{report['storage'] if report['queue'] else '(none yet: records only)'}"
    ]
    width = max((len(r["row"]) for r in report["rows"]), default=3)
    for row in report["rows"]:
        cells = row["cells"]
        parts = [f"{len(cells['done'])}/{len(row['seeds'])} done"]
        parts += [f"{len(cells[s])} {s}" for s in STATES[1:] if cells[s]]
        missing = cells["missing"] + cells["failed"] + cells["abandoned"]
        if missing:
            parts.append("seeds left: " + ",".join(str(s) for s in sorted(missing)))
        if len(cells["done"]) < len(row["seeds"]) and row["minutes_per_cell"] is not None:
            parts.append(f"about {row['minutes_per_cell']:.0f} min a cell")
        lines.append(f"{row['row']:<{width}}  {row_bar(row)}  {', '.join(parts)}")
    totals = report["totals"]
    summary = ", ".join(f"{totals[s]} {s}" for s in STATES[1:] if totals[s])
    done_rows = sum(len(r["cells"]["done"]) == len(r["seeds"]) for r in report["rows"])
    total_bar = bar(totals["done"], totals["running"] + totals["queued"], report["cells"])
    summary = f"{totals['done']}/{report['cells']} cells done" + (f", {summary}" if summary else "")
    lines.append(
        f"{'total':<{width}}  {total_bar}  {summary}; {done_rows}/{len(report['rows'])} rows complete"
    )
    lines += work_left_lines(report["work_left"], width)
    for row in report["rows"]:
        for seed, reason in sorted(row["failures"].items()):
            lines.append(f"  {row['row']} seed {seed} failed: {reason}")
        for seed, parent in sorted(row["waiting_for"].items()):
            lines.append(f"  {row['row']} seed {seed} waits for {parent}")
    if totals["abandoned"]:
        lines.append(
            "  'abandoned': its worker on this machine was killed mid-cell; the next `campaign run` "
            "re-queues it"
        )
    if totals["elsewhere"]:
        lines.append(
            "  'elsewhere': finished on another machine; commit its records there and pull them here"
        )
    return "\n".join(lines)


def work_left_lines(left: dict[str, Any], width: int) -> list[str]:
    """The estimated work left, in worker-hours, and the rows it cannot count yet."""
    unknown = left["rows_without_estimate"]
    parts = []
    if left["worker_minutes"]:
        parts.append(
            f"about {left['worker_minutes'] / 60:.1f} worker-hours (timed by the records, as each row shows)"
        )
    if unknown:
        names = ", ".join(unknown[:3]) + (f" and {len(unknown) - 3} more" if len(unknown) > 3 else "")
        parts.append(
            f"{'plus ' if parts else ''}{len(unknown)} rows with no record to time them by ({names})"
        )
    return [f"{'left':<{width}}  {', '.join(parts)}"] if parts else []
