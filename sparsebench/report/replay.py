"""Faithful ``reproduce``: replay one cell of a campaign from its run record, and judge the result.

The record holds the *full* resolved configuration, so the replay trains exactly the recipe that
produced the numbers, whatever today's defaults are. Before training it says what differs from the
record's circumstances (sparsebench version, commit, torch, the data's checksums), since any of
them may move a result; after, it compares the new test error and compression with the row's
recorded seeds: inside their spread (min..max) and inside the 95 % CI of their mean, or by how much
not. Two records of one seed would be replicas, so the spread is over distinct seeds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparsebench import record
from sparsebench.campaign.cells import Cell, record_path, recorded_cells
from sparsebench.errors import ConfigError
from sparsebench.report.aggregate import t_interval

COMPARED = {"test_metric": "test error", "compression": "compression"}


@dataclass
class Comparison:
    metric: str
    new: float
    low: float
    high: float
    mean: float
    ci_low: float
    ci_high: float
    seeds: int

    @property
    def inside_spread(self) -> bool:
        return self.low <= self.new <= self.high

    @property
    def inside_ci(self) -> bool:
        return self.seeds > 1 and self.ci_low <= self.new <= self.ci_high


@dataclass
class ReplayPlan:
    """One cell to replay: its record, the row's other records, and what differs from their day."""

    cell: Cell
    record: record.RunRecord
    row_records: dict[int, record.RunRecord]
    differences: list[str] = field(default_factory=list)

    @property
    def overrides(self) -> dict[str, Any]:
        """Every key of the recorded configuration: nothing is left to today's defaults."""
        from sparsebench.run.plan import recorded_overrides

        return recorded_overrides(self.record.task, self.record.method, self.record.config)

    @property
    def init_from(self) -> str | None:
        return self.record.tags.get("init_from") or None


def plan_replay(folder: Path, row: str, seed: int | None, data_dir: Path | None) -> ReplayPlan:
    """The record of ``row`` (its ``seed``, else its lowest seed) and the checks made before training."""
    cells = {cell: path for cell, path in recorded_cells(folder).items() if cell.row == row}
    if not cells:
        rows = sorted({c.row for c in recorded_cells(folder)})
        known = f"rows with records: {', '.join(rows)}" if rows else f"{folder}/runs holds no records"
        raise ConfigError(f"--row {row}: no record of that row in {folder} ({known})")
    row_records = {cell.seed: record.read(path) for cell, path in cells.items()}
    chosen = min(row_records) if seed is None else seed
    if chosen not in row_records:
        raise ConfigError(
            f"--seed {seed}: {row} has records of seeds {', '.join(map(str, sorted(row_records)))}"
        )
    cell = Cell(row, chosen)
    plan = ReplayPlan(cell, record.read(record_path(folder, cell)), row_records)
    plan.differences = differences(plan.record, data_dir)
    parent = plan.init_from
    if parent and parent.endswith(record.MODEL_SUFFIX) and not Path(parent).is_file():
        raise ConfigError(
            f"{cell.key} started from the model file {parent}, which is not here; run from the folder the "
            "campaign ran in, with that row's records pulled"
        )
    return plan


def differences(rec: record.RunRecord, data_dir: Path | None) -> list[str]:
    """What differs between the record's circumstances and this installation's, one phrase each."""
    found = []
    installed = record.versions()
    for name in ("sparsebench", "torch", "python"):
        was, now = rec.versions.get(name), installed.get(name)
        if was and now and was != now:
            found.append(f"{name} {now} installed, the record was made with {was}")
    commit = record.git_commit()
    if rec.git_commit and commit != rec.git_commit:
        found.append(f"code at commit {_short(commit)}, the record's is {_short(rec.git_commit)}")
    if data_dir is not None and rec.data:
        from sparsebench.registry import TASKS

        now_sums = record.data_checksums(data_dir, TASKS.get(rec.task).data_files)
        changed = sorted(k for k, v in rec.data.items() if now_sums.get(k) not in (None, v))
        absent = sorted(k for k in rec.data if k not in now_sums)
        if changed:
            found.append(f"data files differ from the record's checksums: {', '.join(changed)}")
        if absent:
            found.append(f"data files of the record not found under {data_dir}: {', '.join(absent)}")
    return found


def _short(commit: str | None) -> str:
    if not commit:
        return "(none: not a git checkout)"
    head, _, dirty = commit.partition("+")
    return head[:10] + (f"+{dirty}" if dirty else "")


def compare(plan: ReplayPlan, new_metrics: dict[str, float]) -> list[Comparison]:
    """The new value of each compared metric against the row's recorded seeds."""
    out = []
    for metric in COMPARED:
        values = [r.metrics.get(metric) for r in plan.row_records.values()]
        values = [float(v) for v in values if v is not None]
        new = new_metrics.get(metric)
        if not values or new is None:
            continue
        stat = t_interval(values)
        out.append(
            Comparison(
                metric, float(new), min(values), max(values), stat.mean, stat.ci_low, stat.ci_high, stat.n
            )
        )
    return out


def verdict(c: Comparison) -> str:
    """One line: the new value, the seeds' spread and CI, and whether it falls inside them."""
    unit = "x" if c.metric == "compression" else ""
    spread = (
        f"recorded {c.low:.4g}{unit}..{c.high:.4g}{unit} over {c.seeds} seed{'s' if c.seeds != 1 else ''}"
    )
    ci = f", mean {c.mean:.4g}{unit}, 95 % CI {c.ci_low:.4g}..{c.ci_high:.4g}" if c.seeds > 1 else ""
    if c.inside_spread:
        where = "inside the seeds' spread"
    else:
        gap = c.new - c.high if c.new > c.high else c.low - c.new
        where = f"outside the seeds' spread, by {gap:.4g}{unit} {'above' if c.new > c.high else 'below'}"
    if c.seeds > 1:
        where += " and " + ("inside" if c.inside_ci else "outside") + " the CI"
    return f"{COMPARED[c.metric]:<12} new {c.new:.4g}{unit}; {spread}{ci}: {where}"


def replay_tags(plan: ReplayPlan, folder: Path) -> dict[str, str]:
    return {"reproduces": plan.cell.key, "reproduces.record": record_path(folder, plan.cell).as_posix()}
