"""How long a cell takes, read from the committed records: the time box of ``campaign run --max-time``
and the work left that ``campaign status`` shows.

Rows differ a hundredfold (a LeNet-300-100 random-pruning cell takes minutes, a LeNet-5 Sparse VD cell
well over an hour), so a worker that stops taking cells only when its time is up can start a long cell
in its last minute and overrun the box by an hour. The records say how long each row took: a record's
``training_seconds`` is the wall clock of its epochs. The estimate for a cell is the median over its
row's records or, for a row without any yet, over the records of the rows that differ from it only in
numbers (another grid point of one method costs about the same); with neither it is unknown. Wall clock moves
with the machine and with how many workers shared it, so this is a planning figure, not a promise.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from sparsebench import record
from sparsebench.campaign.cells import recorded_cells
from sparsebench.campaign.spec import CampaignSpec, Row
from sparsebench.errors import ConfigError
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
    return None


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
