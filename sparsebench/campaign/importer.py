"""``sparsebench import``: run records into an MLflow store, for people who browse runs there.

Each record becomes one finished MLflow run with what ``sparsebench run`` would have logged: the full
configuration as params, the final metrics and the per-epoch curves, the user's tags, the per-layer
table, threshold curve, configuration and record as artifacts, and the exported model when its file
is beside the record. Importing is idempotent: a record whose run is already in the experiment
(tag ``record.run_id``) is skipped, so the same command can follow every ``git pull``.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from sparsebench import record
from sparsebench.campaign.cells import Cell, model_path, recorded_cells
from sparsebench.errors import ConfigError
from sparsebench.tracking import Store, Tracker, open_store, runs_frame

IMPORT_TAG = "record.run_id"


@dataclass
class ImportSummary:
    imported: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    experiment: str = ""


def import_records(results: Path, tracking_uri: str | None, experiment: str) -> ImportSummary:
    """Load every record of ``results`` (a campaign's results folder) into ``experiment``."""
    found = recorded_cells(results)
    if not found:
        raise ConfigError(f"{results} holds no run records (looked for {results}/runs/<row>-seed<k>.json)")
    records = {cell: record.read(path) for cell, path in found.items()}  # all valid before any is logged
    store = open_store(tracking_uri)
    present = already_imported(store, experiment)
    summary = ImportSummary(experiment=experiment)
    for cell, rec in records.items():
        if rec.run_id in present:
            summary.skipped.append(cell.key)
            continue
        log_record(store, experiment, cell, rec, model_path(results, cell))
        summary.imported.append(cell.key)
    return summary


def already_imported(store: Store, experiment: str) -> set[str]:
    experiment_id = store.experiment_id(experiment, create=False)
    if experiment_id is None:
        return set()
    frame = runs_frame(store, [experiment_id])
    column = f"tags.{IMPORT_TAG}"
    return set(frame[column].dropna()) if column in frame else set()


def log_record(store: Store, experiment: str, cell: Cell, rec: record.RunRecord, model: Path) -> str:
    """One record as one finished MLflow run; returns the new run's id."""
    tags = {
        **rec.tags,
        "task": rec.task,
        "method": rec.method,
        "campaign.cell": cell.key,
        IMPORT_TAG: rec.run_id,
        "record.git_commit": rec.git_commit or "",
        **{f"env.{k}": v for k, v in rec.versions.items()},
    }
    tracker = Tracker.open(store, experiment, tags=tags, run_name=cell.key)
    try:
        tracker.log_params(rec.config)
        for point in rec.epochs:
            curves = {
                "val_metric": point.val_metric,
                "sparsity": point.sparsity,
                "epoch_seconds": point.seconds,
            }
            tracker.log_metrics({k: v for k, v in curves.items() if v is not None}, step=point.epoch)
        final_step = rec.epochs[-1].epoch if rec.epochs else 0
        tracker.log_metrics({k: v for k, v in rec.metrics.items() if v is not None}, step=final_step)
        log_files(tracker, rec, model)
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish("FINISHED")
    return tracker.run_id


def log_files(tracker: Tracker, rec: record.RunRecord, model: Path) -> None:
    """The artifacts ``sparsebench run`` logs, rebuilt from the record (and its model file)."""
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        pd.DataFrame(rec.layers).to_csv(folder / "per_layer.csv", index=False)
        tracker.log_artifact(folder / "per_layer.csv")
        if rec.threshold_curve:
            pd.DataFrame(rec.threshold_curve).to_csv(folder / "threshold_curve.csv", index=False)
            tracker.log_artifact(folder / "threshold_curve.csv")
        (folder / "config.json").write_text(json.dumps(rec.config, indent=2))
        tracker.log_artifact(folder / "config.json")
        (folder / record.RECORD_NAME).write_text(rec.to_json())
        tracker.log_artifact(folder / record.RECORD_NAME)
        if model.is_file():
            (folder / "model").mkdir()
            torch.save({"state_dict": record.read_model(model), "masks": {}}, folder / "model" / "model.pt")
            tracker.log_artifact(folder / "model" / "model.pt", "model")
