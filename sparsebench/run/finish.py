"""The end of a run: calibrate, export, count on the exported model, score on test, log it all.

The core counts every number of a table here, from the exported model of standard layers, so no
method can report a number it did not earn (methods.md section 8).
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from sparsebench.errors import PluginError
from sparsebench.measure.counts import check_export, layer_table, paper_row, summarize
from sparsebench.measure.exported import export_problem
from sparsebench.measure.precision import layer_weights, precision_report, round_model
from sparsebench.measure.structured import structured_metrics
from sparsebench.record import RECORD_NAME, EpochPoint, RunRecord, code_commit, data_checksums
from sparsebench.record import versions as record_versions
from sparsebench.run.loop import current_sparsity, evaluate
from sparsebench.run.plan import Plan, RunResult
from sparsebench.tracking import Tracker


def finish(
    plan: Plan,
    model: nn.Module,
    splits: Any,
    tracker: Tracker,
    device: torch.device,
    source: RecordSource | None = None,
) -> RunResult:
    """Export, count, score on the test set, log everything a table needs and write the run record."""
    task, method, cfg = plan.task, plan.method, plan.train
    model.eval()
    calibration = method.calibrate(model, lambda m: evaluate(task, m, splits.val, cfg.eval_batch_size))
    calibrated = {f"calibration.{k}": v for k, v in calibration.items()}
    if calibration:
        # The last epoch's method metrics (kept groups, ...) and sparsity were measured with the
        # thresholds before calibration; log them again at the same step so the run's latest
        # values describe the model that is exported and tested.
        recount = {**method.epoch_metrics(model), "sparsity": current_sparsity(method, model)}
        tracker.log_metrics({**recount, **calibrated}, step=cfg.epochs)
    masks = method.masks(model)
    exported = method.export(model, masks).eval()
    check_export(exported, masks)
    with torch.random.fork_rng(devices=[]):  # building the reference must not move the run's RNG
        reference = task.build_model()
    if (problem := export_problem(exported, reference)) is not None:
        raise PluginError(
            f"method {method.name}: {problem}; nothing was counted (the run's last checkpoint is kept). "
            "sparsebench.testing.check_method_conformance finds this in a unit test"
        )
    table = layer_table(exported, task.example_input(device), task.layer_order(exported))
    summary = summarize(exported, table)
    val = evaluate(task, exported, splits.val, cfg.eval_batch_size)
    test = evaluate(task, exported, splits.test, cfg.eval_batch_size)
    row = paper_row(task.name, method.name, test, table, summary, task.metric.unit)
    final = {"final_val_metric": val, "test_metric": test, "peak_memory_mb": peak_memory_mb(device)}
    final.update(structured_metrics(exported, task.layer_order(exported)))
    final.update(precision_metrics(plan, model, exported, masks, splits))
    metrics = {**final, **summary.as_metrics()}
    tracker.log_metrics(metrics, step=cfg.epochs)
    curve = threshold_curve(plan, model, splits, device)
    log_artifacts(plan, exported, masks, table, curve, tracker)
    source = source or RecordSource()
    if not source.tags:
        source.tags = user_tags(tracker.tags())
    # The record keeps what calibration chose (thresholds, shifts) beside the counts it led to.
    record = build_record(plan, tracker, {**metrics, **calibrated}, table, curve, source)
    tracker.log_text(record.to_json(), RECORD_NAME)
    tracker.set_tags({"row": row})
    tracker.finish("FINISHED")
    return RunResult(tracker.run_id, "FINISHED", val, test, summary.as_metrics(), row, table, record)


@dataclass
class RecordSource:
    """What the record says about where a run came from: its data folder and the user's tags."""

    data_dir: Path | None = None
    tags: dict[str, str] = field(default_factory=dict)
    commit: str | None = field(default_factory=code_commit)
    """The commit of the code this process loaded (``record.code_commit``), not of the checkout at
    the end of training, when it may have moved on."""


def build_record(
    plan: Plan,
    tracker: Tracker,
    metrics: dict[str, float],
    table: pd.DataFrame,
    curve: pd.DataFrame | None,
    source: RecordSource,
) -> RunRecord:
    """The run record of a finished run: full configuration, versions, data, metrics, curves."""
    points = epoch_points(tracker)
    seconds = [p.seconds for p in points if p.seconds is not None]
    return RunRecord(
        run_id=tracker.run_id,
        task=plan.task.name,
        method=plan.method.name,
        seed=plan.train.seed,
        config=plan.flat_config(),
        versions=record_versions(),
        git_commit=source.commit,
        data=data_checksums(source.data_dir, plan.task.data_files) if source.data_dir else {},
        metrics=metrics,
        layers=json.loads(table.to_json(orient="records")),
        threshold_curve=[] if curve is None else json.loads(curve.to_json(orient="records")),
        curve_axis=plan.method.curve_axis if curve is not None else "",
        epochs=points,
        training_seconds=sum(seconds) if seconds else None,
        tags=dict(source.tags),
    )


RUN_STATE_TAGS = frozenset(
    {"row", "checkpoint", "device", "state", "failure", "refinished_from", "model.flavor"}
)
"""Tags that describe how one run went, set by the runner; records and ``refinish`` leave them out."""


def user_tags(tags: dict[str, str]) -> dict[str, str]:
    """The tags that say what a run is for (study=..., init_from): not MLflow's, the environment's
    or how the run went."""
    return {
        key: value
        for key, value in tags.items()
        if not key.startswith(("mlflow.", "env.")) and key not in RUN_STATE_TAGS
    }


def epoch_points(tracker: Tracker) -> list[EpochPoint]:
    """The per-epoch validation curve as logged (a resumed run's earlier epochs included)."""
    history = {key: tracker.metric_history(key) for key in ("val_metric", "sparsity", "epoch_seconds")}
    return [
        EpochPoint(
            epoch=step,
            val_metric=value,
            sparsity=history["sparsity"].get(step),
            seconds=history["epoch_seconds"].get(step),
        )
        for step, value in sorted(history["val_metric"].items())
    ]


def log_artifacts(
    plan: Plan,
    exported: nn.Module,
    masks: dict[str, torch.Tensor],
    table: pd.DataFrame,
    curve: pd.DataFrame | None,
    tracker: Tracker,
) -> None:
    """Per-layer table, exported model, configuration and threshold curve as run artifacts."""
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        table.to_csv(tmpdir / "per_layer.csv", index=False)
        tracker.log_artifact(tmpdir / "per_layer.csv")
        # model/: an mlflow.pytorch model, and model.pt (state dict and masks) that sparsebench reads.
        saved = {"state_dict": exported.state_dict(), "masks": {k: v.cpu() for k, v in masks.items()}}
        tracker.log_model(exported, plan.task.example_input(torch.device("cpu")), {"model.pt": saved})
        if curve is not None:
            curve.to_csv(tmpdir / "threshold_curve.csv", index=False)
            tracker.log_artifact(tmpdir / "threshold_curve.csv")


def precision_metrics(plan: Plan, model: nn.Module, exported: nn.Module, masks: dict, splits: Any) -> dict:
    """Bit-precision compression and the error of the rounded model, for methods with posteriors.

    Only methods whose ``posterior_variances(model)`` returns variances (the Bayesian-compression
    family) have what the bit computation needs (methods.md section 4.7).
    """
    variances = plan.method.posterior_variances(model)
    if variances is None:
        return {}
    try:
        report = precision_report(layer_weights(exported, list(variances)), variances, masks)
    except ValueError as exc:  # e.g. every kept weight below 0.5: the exponent formula is undefined
        print(f"sparsebench: no precision-reduced compression for this run: {exc}", file=sys.stderr)
        return {}
    rounded = round_model(exported, report.significand_bits)
    return {
        **report.as_metrics(),
        "test_metric_precision": evaluate(plan.task, rounded, splits.test, plan.train.eval_batch_size),
    }


def threshold_curve(plan: Plan, model: nn.Module, splits: Any, device: torch.device) -> pd.DataFrame | None:
    """Error vs compression of one trained model across pruning levels (a curve, not a point).

    ``threshold`` holds the level and ``axis`` names what it is (the method's ``curve_axis``: an
    absolute log alpha threshold for Sparse VD, a shift of every layer's threshold for the group
    methods), so curves of different methods are never read on one meaning.
    """
    task, method, cfg = plan.task, plan.method, plan.train
    levels = list(method.curve_levels())
    if not levels:
        return None
    rows = []
    example = task.example_input(device)
    for level in levels:
        masks = method.masks_at(model, level)
        exported = method.export(model, masks).eval()
        summary = summarize(exported, layer_table(exported, example, task.layer_order(exported)))
        rows.append(
            {
                "threshold": level,
                "axis": method.curve_axis,
                "compression": summary.compression,
                "nonzeros": summary.nonzeros,
                "val_metric": evaluate(task, exported, splits.val, cfg.eval_batch_size),
                "test_metric": evaluate(task, exported, splits.test, cfg.eval_batch_size),
            }
        )
    return pd.DataFrame(rows)


def peak_memory_mb(device: torch.device) -> float:
    """Peak device memory of the run (CUDA allocator) or peak resident memory of the process (CPU)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
