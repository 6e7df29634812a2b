"""A campaign results folder made by hand: records and a spec copy, for analyses' tests.

Real records take minutes of training; an analysis only reads what a record holds (metrics, config,
labels of its row, per-epoch curve), so its tests write exactly that. The numbers are whatever the
test passes: the helper invents none.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparsebench import record
from sparsebench.campaign.cells import SPEC_COPY, Cell, record_path


@dataclass
class FakeCell:
    """One cell's record: the row it belongs to, its seed, and its final metrics."""

    row: str
    seed: int
    test: float
    compression: float = 1.0
    val: float | None = None
    config: dict[str, Any] = field(default_factory=dict)
    epochs: list[dict[str, float]] = field(default_factory=list)
    """Per-epoch points (``epoch``, ``val_metric``, ``sparsity``)."""
    layers: list[dict[str, Any]] = field(default_factory=list)
    """The per-layer table (``record.RunRecord.layers``): shape, units and units removed per layer."""


def write_records_folder(
    folder: Path,
    rows: list[dict[str, Any]],
    cells: list[FakeCell],
    analyses: list[str] | None = None,
) -> Path:
    """``folder/campaign.json`` (the given rows, as a spec copy) and one record per cell."""
    spec = {"name": folder.name, "results": f"reports/{folder.name}", "seeds": [0, 1, 2], "rows": rows}
    spec["analyses"] = list(analyses or [])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SPEC_COPY).write_text(json.dumps(spec, indent=1))
    by_name = {r["name"]: r for r in rows}
    for cell in cells:
        row = by_name[cell.row]
        weights = 266_200.0
        rec = record.RunRecord(
            run_id=f"{cell.row}-{cell.seed}",
            task=row["task"],
            method=row["method"],
            seed=cell.seed,
            config={"train.epochs": 3, **row.get("config", {}), **cell.config, "train.seed": cell.seed},
            versions={"sparsebench": "test"},
            metrics={
                "test_metric": cell.test,
                "final_val_metric": cell.test if cell.val is None else cell.val,
                "compression": cell.compression,
                "weights": weights,
                "nonzeros": weights / cell.compression,
            },
            layers=cell.layers,
            epochs=[record.EpochPoint(**point) for point in cell.epochs],
        )
        path = record_path(folder, Cell(cell.row, cell.seed))
        path.parent.mkdir(parents=True, exist_ok=True)
        record.write(rec, path)
    return folder
