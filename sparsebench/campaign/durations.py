"""How long a cell takes, read from the committed records: the time box of ``campaign run --max-time``
and the work left that ``campaign status`` shows.

Rows differ a hundredfold (a LeNet-300-100 random-pruning cell takes minutes, a LeNet-5 Sparse VD cell
well over an hour), so a worker that stops taking cells only when its time is up can start a long cell
in its last minute and overrun the box by an hour. The records say how long each row took: a record's
``training_seconds`` is the wall clock of its epochs. The estimate for a cell is the median over its
row's records or, for a row without any yet, over the records of the rows that differ from it only in
numbers (another grid point of one method costs about the same); with neither, the longest record of the
same task, method and cost settings in the other campaigns under the same reports folder (the matched-sparsity
comparison's first random-pruning cell is timed by the leaderboard's random rows); with none of these it is
unknown. Wall clock moves with the machine and with how many workers shared it, so this is a planning figure,
not a promise.
"""

from __future__ import annotations

import functools
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparsebench import record
from sparsebench.campaign.cells import recorded_cells
from sparsebench.campaign.spec import CampaignSpec, Row
from sparsebench.config import IDENTITY_KEYS
from sparsebench.errors import ConfigError, SparsebenchError
from sparsebench.report.formatting import plural


@dataclass(frozen=True)
class Estimate:
    minutes: float
    source: str
    """Which records it is the median of, in words ("3 records of the row")."""


def recorded_minutes(results: Path) -> dict[str, list[float]]:
    """Training minutes of every record in the results folder, by row name (records without a time,
    or that cannot be parsed, are left out: an estimate must never stop a worker)."""
    found: dict[str, list[float]] = {}
    for cell, path in recorded_cells(results).items():
        try:
            seconds = record.read(path).training_seconds
        except ConfigError:
            continue
        if seconds is not None and seconds > 0:
            found.setdefault(cell.row, []).append(seconds / 60.0)
    return found


def expected_minutes(
    spec: CampaignSpec, row: Row, recorded: dict[str, list[float]] | None = None
) -> Estimate | None:
    """The median training minutes of the row's records, else of its task and method's; else None."""
    recorded = recorded_minutes(spec.results) if recorded is None else recorded
    own = recorded.get(row.name, [])
    if own:
        return Estimate(statistics.median(own), f"median of {plural(len(own), 'record')} of the row")
    kin = [
        minutes
        for other in spec.rows
        if other.name != row.name and grid_neighbours(row, other)
        for minutes in recorded.get(other.name, [])
    ]
    if kin:
        source = f"median of {plural(len(kin), 'record')} of other {row.task} / {row.method} grid points"
        return Estimate(statistics.median(kin), source)
    return elsewhere_minutes(spec, row)


COST_KEYS = ("train.epochs", "train.batch_size", "train.cpu_amp", "train.amp")
"""What sets a cell's cost beside the task's own settings (its size): the same network for as many
steps of the same batch at the same precision costs about the same whatever the method's numbers."""


def cost_signature(task: str, method: str, config: dict[str, Any]) -> tuple[Any, ...]:
    chosen = sorted(
        (k, repr(v))
        for k, v in config.items()
        if (k.startswith("task.") or k in COST_KEYS) and k not in IDENTITY_KEYS
    )
    return (task, method, *chosen)


def elsewhere_minutes(spec: CampaignSpec, row: Row) -> Estimate | None:
    """The longest record, in the other campaigns' folders, of the row's task and method with its cost
    settings: the longest, because the method's own settings (a variant) may still cost more."""
    from sparsebench.run.plan import plan_run

    try:
        wanted = cost_signature(
            row.task, row.method, plan_run(row.task, row.method, row.overrides(0)).flat_config()
        )
    except SparsebenchError:
        return None
    found = [
        cost[1]
        for folder in sorted(spec.results.parent.glob("*/"))
        if folder.resolve() != spec.results.resolve()
        for path in recorded_cells(folder).values()
        if (cost := record_cost(path)) is not None and cost[0] == wanted
    ]
    if not found:
        return None
    source = f"longest of {plural(len(found), 'record')} of {row.task} / {row.method} in other campaigns"
    return Estimate(max(found), source)


@functools.lru_cache(maxsize=4096)
def record_cost(path: Path) -> tuple[tuple[Any, ...], float] | None:
    """(cost signature, training minutes) of one record; cached, as a record is never edited once written.

    A record made before an option existed is read with that option's ``predating`` value, so an old
    record's signature is the one its run had."""
    from sparsebench.run.plan import recorded_overrides

    try:
        run = record.read(path)
        config = recorded_overrides(run.task, run.method, run.config)
    except SparsebenchError:  # unreadable, or made by a plugin not installed here: no estimate from it
        return None
    if run.training_seconds is None or run.training_seconds <= 0:
        return None
    return cost_signature(run.task, run.method, config), run.training_seconds / 60.0


def grid_neighbours(row: Row, other: Row) -> bool:
    """Same task, method and settings but for numbers (a lambda, a KL weight, a target sparsity): two
    points of one grid cost about the same; another variant (Kingma's A or B) or epoch count need not."""
    if (row.task, row.method) != (other.task, other.method) or set(row.config) != set(other.config):
        return False
    return all(
        row.config[key] == other.config[key] or (is_number(row.config[key]) and is_number(other.config[key]))
        for key in row.config
        if key != "train.epochs"
    ) and row.config.get("train.epochs") == other.config.get("train.epochs")


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
