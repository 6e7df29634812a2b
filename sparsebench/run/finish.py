"""The end of a run: calibrate, export, count on the exported model, score on test, log it all.

The core counts every number of a table here, from the exported model of standard layers, so no
method can report a number it did not earn (methods.md section 8).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from sparsebench.measure.counts import check_export, layer_table, paper_row, summarize
from sparsebench.measure.precision import layer_weights, precision_report, round_model
from sparsebench.measure.structured import structured_metrics
from sparsebench.run.loop import current_sparsity, evaluate
from sparsebench.run.plan import Plan, RunResult
from sparsebench.tracking import Tracker


def finish(plan: Plan, model: nn.Module, splits: Any, tracker: Tracker, device: torch.device) -> RunResult:
    """Export, count, score on the test set and log everything a table needs."""
    task, method, cfg = plan.task, plan.method, plan.train
    model.eval()
    calibration = method.calibrate(model, lambda m: evaluate(task, m, splits.val, cfg.eval_batch_size))
    if calibration:
        # The last epoch's method metrics (kept groups, ...) and sparsity were measured with the
        # thresholds before calibration; log them again at the same step so the run's latest
        # values describe the model that is exported and tested.
        recount = {**method.epoch_metrics(model), "sparsity": current_sparsity(method, model)}
        recount.update({f"calibration.{k}": v for k, v in calibration.items()})
        tracker.log_metrics(recount, step=cfg.epochs)
    masks = method.masks(model)
    exported = method.export(model, masks).eval()
    check_export(exported, masks)
    table = layer_table(exported, task.example_input(device), task.layer_order(exported))
    summary = summarize(exported, table)
    val = evaluate(task, exported, splits.val, cfg.eval_batch_size)
    test = evaluate(task, exported, splits.test, cfg.eval_batch_size)
    row = paper_row(task.name, method.name, test, table, summary, task.metric.unit)
    final = {"final_val_metric": val, "test_metric": test, "peak_memory_mb": peak_memory_mb(device)}
    final.update(structured_metrics(exported, task.layer_order(exported)))
    final.update(precision_metrics(plan, model, exported, masks, splits))
    tracker.log_metrics({**final, **summary.as_metrics()}, step=cfg.epochs)
    log_artifacts(plan, model, exported, masks, table, splits, tracker, device)
    tracker.set_tags({"row": row})
    tracker.finish("FINISHED")
    return RunResult(tracker.run_id, "FINISHED", val, test, summary.as_metrics(), row, table)


def log_artifacts(
    plan: Plan,
    model: nn.Module,
    exported: nn.Module,
    masks: dict[str, torch.Tensor],
    table: pd.DataFrame,
    splits: Any,
    tracker: Tracker,
    device: torch.device,
) -> None:
    """Per-layer table, exported model, configuration and threshold curve as run artifacts."""
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        table.to_csv(tmpdir / "per_layer.csv", index=False)
        tracker.log_artifact(tmpdir / "per_layer.csv")
        model_dir = tmpdir / "model"
        model_dir.mkdir()
        torch.save(
            {"state_dict": exported.state_dict(), "masks": {k: v.cpu() for k, v in masks.items()}},
            model_dir / "model.pt",
        )
        tracker.log_artifact(model_dir / "model.pt", "model")
        (tmpdir / "config.json").write_text(json.dumps(plan.flat_config(), indent=2))
        tracker.log_artifact(tmpdir / "config.json")
        curve = threshold_curve(plan, model, splits, device)
        if curve is not None:
            curve.to_csv(tmpdir / "threshold_curve.csv", index=False)
            tracker.log_artifact(tmpdir / "threshold_curve.csv")


def precision_metrics(plan: Plan, model: nn.Module, exported: nn.Module, masks: dict, splits: Any) -> dict:
    """Bit-precision compression and the error of the rounded model, for methods with posteriors.

    Only methods that expose ``posterior_variances(model)`` (the Bayesian-compression family)
    have the per-weight variances the bit computation needs (methods.md section 4.7).
    """
    variances_of = getattr(plan.method, "posterior_variances", None)
    if variances_of is None:
        return {}
    variances = variances_of(model)
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
    """Error vs compression of one trained model across pruning thresholds (a curve, not a point)."""
    task, method, cfg = plan.task, plan.method, plan.train
    thresholds = list(method.curve_thresholds())
    if not thresholds:
        return None
    rows = []
    example = task.example_input(device)
    for t in thresholds:
        masks = method.masks_at(model, t)
        exported = method.export(model, masks).eval()
        summary = summarize(exported, layer_table(exported, example, task.layer_order(exported)))
        rows.append(
            {
                "threshold": t,
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
