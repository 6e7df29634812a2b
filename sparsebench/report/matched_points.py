"""Which model answers each (method, target sparsity, seed) of a matched-sparsity campaign.

A row of such a campaign is labelled with the sparsity it serves: ``labels: {target: 0.95}`` for a
run trained straight to that target (magnitude, random pruning), or ``labels: {targets: [...]}`` for
one point of a method's hyperparameter grid whose single training run is read at every target on its
threshold curve (``curve_axis: sparsity``: Sparse VD, L0 weight gates; docs/matched-sparsity.md).
Every record gives candidates, one per target it serves; per method, target and seed the candidate
with the lowest *validation* error is chosen, and its test error is reported, so no test number
selects anything. A candidate counts only if its exported model is at least as sparse as the
target, up to one weight; a model sparser than asked also meets the budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from sparsebench.report.records import RecordRow, RecordSet
from sparsebench.toolkit.exact import SPARSITY_AXIS

TARGET, TARGETS = "target", "targets"
"""Row label keys: the one target a row trains to, or the targets a grid row's curve serves."""
LEVEL_TOLERANCE = 1e-9
"""A curve level equals a target when they differ by less (both are the spec's decimals)."""
COLUMNS = ["task", "method", "seed", "target", "row", "val", "test", "sparsity", "weights"]


@dataclass
class MatchedPoints:
    """The chosen model per (task, method, seed, target), and what could not be drawn."""

    chosen: pd.DataFrame
    """COLUMNS plus ``candidates``: how many models competed for the point on validation."""
    candidates: pd.DataFrame
    gaps: list[str] = field(default_factory=list)
    """Why a row, seed or target has no point (no record, no curve point, short of the target)."""
    labels: dict[str, str] = field(default_factory=dict)
    """Row name -> what sets it apart within its method (``grid_label``)."""
    unfinished: dict[str, list[str]] = field(default_factory=dict)
    """Task -> one phrase per method whose grid still lacks records (``unfinished_grids``)."""


def row_targets(row: RecordRow) -> tuple[float, ...]:
    """The targets a row serves, from its labels (none: the row is not part of the comparison)."""
    labels = row.labels or {}
    if TARGETS in labels and isinstance(labels[TARGETS], (list, tuple)):
        return tuple(float(t) for t in labels[TARGETS])
    if TARGET in labels:
        try:
            return (float(labels[TARGET]),)
        except (TypeError, ValueError):
            return ()
    return ()


def grid_label(row: RecordRow) -> str:
    """What distinguishes a row within its method: its labels other than the targets (``lam=2``)."""
    rest = {k: v for k, v in (row.labels or {}).items() if k not in (TARGET, TARGETS)}
    return ", ".join(f"{k}={v}" for k, v in rest.items()) or row.name


def pct(value: float) -> str:
    """A sparsity as the comparison names it: ``90 %``, ``99.5 %``."""
    return f"{100 * value:.10g} %"


def matched_points(records: RecordSet) -> MatchedPoints:
    """Candidates of every labelled row's records, then the validation choice per point."""
    rows = {row.name: row for row in records.rows if row_targets(row)}
    gaps = missing_cells(records, rows)
    found: list[dict[str, Any]] = []
    for run in records.data.runs.itertuples():
        row = rows.get(str(run.setting))
        rec = records.records.get(str(run.run_id))
        if row is None or rec is None:
            continue
        grid = TARGETS in row.labels
        for target in row_targets(row):
            point = curve_point(rec, target) if grid else final_point(rec)
            where = f"{row.name} seed {rec.seed} at {pct(target)}"
            if point is None:
                gaps.append(f"{where}: no threshold-curve point at the target (method.curve_sparsities)")
                continue
            if point["sparsity"] < target - 1.0 / max(1.0, point["weights"]) - 1e-12:
                gaps.append(f"{where}: the exported model reached only {100 * point['sparsity']:.2f} %")
                continue
            found.append(
                {
                    "task": rec.task,
                    "method": rec.method,
                    "seed": rec.seed,
                    "target": target,
                    "row": row.name,
                    **point,
                }
            )
    candidates = pd.DataFrame(found, columns=COLUMNS)
    labels = {name: grid_label(row) for name, row in rows.items()}
    chosen = choose(candidates, list(rows))
    return MatchedPoints(chosen, candidates, gaps, labels, unfinished_grids(records, rows))


def final_point(rec: Any) -> dict[str, float] | None:
    """The run's own exported model: validation and test error, and the sparsity the core counted."""
    metrics = rec.metrics
    weights, nonzeros = metrics.get("weights"), metrics.get("nonzeros")
    if not weights or nonzeros is None or metrics.get("test_metric") is None:
        return None
    return {
        "val": float(metrics.get("final_val_metric", math.nan)),
        "test": float(metrics["test_metric"]),
        "sparsity": 1.0 - float(nonzeros) / float(weights),
        "weights": float(weights),
    }


def curve_point(rec: Any, target: float) -> dict[str, float] | None:
    """The threshold-curve point of ``rec`` at exactly ``target`` on the sparsity axis, if it has one."""
    weights = rec.metrics.get("weights")
    if rec.curve_axis != SPARSITY_AXIS or not weights:
        return None
    for point in rec.threshold_curve:
        if abs(float(point.get("threshold", math.nan)) - target) < LEVEL_TOLERANCE:
            return {
                "val": float(point["val_metric"]),
                "test": float(point["test_metric"]),
                "sparsity": 1.0 - float(point["nonzeros"]) / float(weights),
                "weights": float(weights),
            }
    return None


def choose(candidates: pd.DataFrame, row_order: list[str]) -> pd.DataFrame:
    """Per (task, method, seed, target) the candidate of lowest validation error (earlier row on ties)."""
    if candidates.empty:
        return pd.DataFrame(columns=[*COLUMNS, "candidates"])
    order = {name: i for i, name in enumerate(row_order)}
    ranked = candidates.assign(_order=candidates.row.map(order), _val=candidates.val.fillna(math.inf))
    ranked = ranked.sort_values(["_val", "_order"], kind="stable")
    keys = ["task", "method", "seed", "target"]
    counts = ranked.groupby(keys).row.transform("size")
    chosen = ranked.assign(candidates=counts).drop_duplicates(keys, keep="first")
    return chosen.drop(columns=["_order", "_val"]).sort_values(keys).reset_index(drop=True)


def seeds_by_row(records: RecordSet) -> dict[str, set[int]]:
    """Row name -> the distinct seeds its records hold."""
    return records.data.runs.groupby("setting").seed.apply(lambda s: {int(x) for x in s}).to_dict()


def unfinished_grids(records: RecordSet, rows: dict[str, RecordRow]) -> dict[str, list[str]]:
    """Per task, the methods whose grid has points without a record for every seed
    (``sparse_vd: 1 of 5 grid points without records``). Until a grid is complete, a point still
    missing may win the validation choice at any target, so every verdict on that task is provisional."""
    have = seeds_by_row(records)
    grids: dict[tuple[str, str], list[bool]] = {}
    for name, row in rows.items():
        if TARGETS in row.labels:
            done = bool(have.get(name)) and set(row.seeds) <= have.get(name, set())
            grids.setdefault((str(row.task), str(row.method)), []).append(done)
    out: dict[str, list[str]] = {}
    for (task, method), done in grids.items():
        if not all(done):
            out.setdefault(task, []).append(
                f"{method}: {len(done) - sum(done)} of {len(done)} grid points without records"
            )
    return out


def missing_cells(records: RecordSet, rows: dict[str, RecordRow]) -> list[str]:
    """One line per labelled row with seeds that have no record (the whole row when it has none)."""
    have = seeds_by_row(records)
    lines = []
    for name, row in rows.items():
        seeds = set(row.seeds) or have.get(name, set())
        missing = sorted(seeds - have.get(name, set()))
        if not have.get(name):
            lines.append(f"{name}: no records yet")
        elif missing:
            lines.append(f"{name}: no records for seed {', '.join(map(str, missing))}")
    return lines
