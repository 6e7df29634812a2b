"""Run records -> the frames a report is computed from, with no tracking store at all.

A campaign's results folder holds one record per cell (``runs/<row>-seed<k>.json``), its exported
model when small (``.model.npz``) and the spec it was run under (``campaign.json``: row order,
descriptions, the papers' numbers). This module reads them into the same ``RunSet`` that
``select.load_runs`` reads from MLflow, so every table and figure is the same code either way; a
row of the campaign is a report's *setting*, and its seeds are the row's distinct seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from sparsebench import record
from sparsebench.campaign.cells import Cell, model_path, read_spec_copy, recorded_cells
from sparsebench.report.select import FINAL_METRICS, NoMatchingRunsError, RunSet

HISTORY = {"val_metric": "val_metric", "sparsity": "sparsity", "epoch_seconds": "seconds"}
"""Per-epoch key of a report -> field of a record's epoch point."""


@dataclass
class RecordRow:
    """One row of the campaign, as the spec copy (or, lacking it, the records) describe it."""

    name: str
    task: str
    method: str
    description: str = ""
    paper: dict[str, Any] | None = None
    init_from_row: str | None = None
    seeds: tuple[int, ...] = ()
    labels: dict[str, Any] = field(default_factory=dict)
    """The spec's free-form labels of the row (what an analysis groups by)."""
    target: dict[str, Any] | None = None
    """What the row aims at (``spec.Target``): judged from the records by ``report.targets``."""
    config: dict[str, Any] = field(default_factory=dict)
    """The overrides the spec sets by hand (``config:``), apart from a sweep's frozen values."""
    from_sweep: dict[str, Any] | None = None
    """The sweep a frozen configuration came from (``spec.FromSweep``), or None."""


@dataclass
class RecordSet:
    """What a results folder holds: the frames, the rows in the spec's order, and the records."""

    data: RunSet
    rows: list[RecordRow]
    folder: Path
    campaign: str
    records: dict[str, record.RunRecord] = field(default_factory=dict)
    """By run id."""
    analyses: tuple[str, ...] = ()
    """Extra report sections the campaign declares (``sparsebench.report.analyses``)."""


def load_records(folder: Path) -> RecordSet:
    """Every record of ``folder`` (a campaign's results folder) as a ``RecordSet``."""
    found = recorded_cells(folder)
    if not found:
        raise NoMatchingRunsError(
            f"{folder} holds no run records ({folder}/runs/<row>-seed<k>.json); run the campaign first "
            "(sparsebench campaign run SPEC)"
        )
    records = {cell: record.read(path) for cell, path in found.items()}
    runs = pd.DataFrame([run_row(cell, rec) for cell, rec in records.items()])
    runs = runs.sort_values(["task", "method", "setting", "seed", "run_id"], kind="stable").reset_index(
        drop=True
    )
    layers, curves, history = [], [], []
    for rec in records.values():
        layers.append(pd.DataFrame(rec.layers).assign(run_id=rec.run_id, position=range(len(rec.layers))))
        if rec.threshold_curve:
            curves.append(pd.DataFrame(rec.threshold_curve).assign(run_id=rec.run_id))
        history += [
            (rec.run_id, key, point.epoch, getattr(point, attr))
            for point in rec.epochs
            for key, attr in HISTORY.items()
            if getattr(point, attr) is not None
        ]
    data = RunSet(
        runs=runs,
        layers=_concat(layers, ["run_id", "layer", "position", "sparsity"]),
        curves=_concat(curves, ["run_id", "threshold", "compression", "val_metric", "test_metric"]),
        history=pd.DataFrame(history, columns=["run_id", "key", "step", "value"]),
        configs={rec.run_id: dict(rec.config) for rec in records.values()},
        tracking_uri="",
        inference=pd.DataFrame(columns=["run_id", "format", "device", "batch_size", "status", "ms"]),
        model_files={
            rec.run_id: model_path(folder, cell)
            for cell, rec in records.items()
            if model_path(folder, cell).is_file()
        },
    )
    spec = read_spec_copy(folder) or {}
    rows = spec_rows(spec, records)
    analyses = tuple(str(a) for a in spec.get("analyses") or ())
    return RecordSet(
        data,
        rows,
        folder,
        str(spec.get("name") or folder.name),
        {r.run_id: r for r in records.values()},
        analyses,
    )


def run_row(cell: Cell, rec: record.RunRecord) -> dict[str, Any]:
    """One record as a row of the tidy run table (the columns ``select.tidy`` makes from MLflow)."""
    row: dict[str, Any] = {
        "run_id": rec.run_id,
        "experiment_id": "",
        "run_name": cell.key,
        "task": rec.task,
        "method": rec.method,
        "seed": float(rec.seed),
        "setting": cell.row,
        "epochs": float(rec.config.get("train.epochs", math.nan)),
        "start_time": pd.NaT,
        "device": rec.tags.get("device", ""),
        "init_from": rec.tags.get("init_from", ""),
        "parent_run_id": "",
        "row": cell.row,
    }
    for metric, column in FINAL_METRICS.items():
        value = rec.metrics.get(metric)
        row[column] = math.nan if value is None else float(value)
    return row


def spec_rows(spec: dict[str, Any], records: dict[Cell, record.RunRecord]) -> list[RecordRow]:
    """The rows in the spec's order (rows without records included), then rows only records name."""
    rows = []
    for raw in spec.get("rows") or []:
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            continue
        rows.append(
            RecordRow(
                name=raw["name"],
                task=str(raw.get("task", "")),
                method=str(raw.get("method", "")),
                description=str(raw.get("description") or ""),
                paper=_mapping(raw.get("paper")),
                init_from_row=raw.get("init_from_row"),
                seeds=tuple(raw.get("seeds") or spec.get("seeds") or ()),
                labels=dict(raw.get("labels") or {}),
                target=_mapping(raw.get("target")),
                config=dict(raw.get("config") or {}),
                from_sweep=_mapping(raw.get("from_sweep")),
            )
        )
    known = {r.name for r in rows}
    for cell, rec in sorted(records.items()):
        if cell.row not in known:
            rows.append(RecordRow(cell.row, rec.task, rec.method))
            known.add(cell.row)
    return rows


def _mapping(value: Any) -> dict[str, Any] | None:
    """A spec copy's section as a dict, or None (absent, or written by another version in another shape)."""
    return dict(value) if isinstance(value, dict) else None


def _concat(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
