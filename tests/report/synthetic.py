"""Hand-made run tables shaped like ``select.load_runs`` output, for report tests that need no MLflow.

Modelled on a real LeNet-300-100 study: a frontier near 2 % error from 1x to a few hundred x, a
random-pruning outlier at 38 % and a fully pruned model whose compression equals the weight count.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

WEIGHTS = 266_200
LAYERS = ("fc1", "fc2", "fc3")

# method, setting, seeds, compression, test error, val error
SETTINGS = (
    ("dense", "default", (0,), 1.0, 1.70, 2.10),
    ("magnitude", "epochs=100, scope=global, sparsity=0.92", (0,), 12.5, 1.80, 2.00),
    ("magnitude", "epochs=100, scope=global, sparsity=0.98", (0,), 50.0, 2.62, 2.94),
    ("magnitude", "epochs=100, scope=layer, sparsity=0.98", (0,), 50.0, 4.43, 4.16),
    ("random", "sparsity=0.92", (0,), 12.5, 3.09, 3.30),
    ("random", "sparsity=0.98", (0,), 50.0, 38.65, 39.0),
    ("sparse_vd", "default", (0, 1), 123.0, 2.11, 2.40),
)


def runs_frame(degenerate: bool = False) -> pd.DataFrame:
    """One row per run with the columns the tables and figures read; two seeds of sparse_vd."""
    rows = []
    for method, setting, seeds, compression, test, val in SETTINGS:
        for seed in seeds:
            rows.append(
                _run(method, setting, seed, compression + seed, test + 0.05 * seed, val + 0.05 * seed)
            )
    if degenerate:  # method.threshold=nan: every weight pruned, weights / max(1, 0) = the weight count
        rows.append(_run("group_nj", "threshold=nan", 0, float(WEIGHTS), 87.0, 88.0, nonzeros=0))
    return pd.DataFrame(rows)


def _run(
    method: str,
    setting: str,
    seed: int,
    compression: float,
    test: float,
    val: float,
    nonzeros: int | None = None,
) -> dict:
    run_id = hashlib.md5(f"{method}/{setting}/{seed}".encode()).hexdigest()  # like MLflow's: 32 hex
    kept = round(WEIGHTS / compression) if nonzeros is None else nonzeros
    return {
        "run_id": run_id,
        "task": "lenet300_100",
        "method": method,
        "setting": setting,
        "seed": seed,
        "epochs": 100,
        "device": "cpu",
        "init_from": "",
        "test": test,
        "val": val,
        "compression": compression,
        "compression_all": compression * 0.95,
        "compression_structured": np.nan,
        "compression_precision": np.nan,
        "flops_reduction": compression,
        "weights": WEIGHTS,
        "nonzeros": kept,
        "examples_per_second": 20000.0,
        "peak_memory_mb": 950.0,
    }


def curves_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """A threshold curve per sparse run: error rising slowly, then fast, up to pruning everything."""
    rows = []
    for run in runs[runs.compression > 1].itertuples():
        for i, threshold in enumerate(np.linspace(-2.0, 6.0, 9)):
            compression = min(run.compression * 1.6 ** (i - 4), WEIGHTS)
            rise = 0.3 * max(0, i - 4) ** 2.5
            rows.append((run.run_id, threshold, compression, run.val + rise, run.test + rise))
        rows.append((run.run_id, np.nan, float(WEIGHTS), 90.2, 90.2))  # the degenerate end of a curve
    return pd.DataFrame(rows, columns=["run_id", "threshold", "compression", "val_metric", "test_metric"])


def layers_frame(runs: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for run in runs.itertuples():
        sparsity = 100.0 * (1 - 1 / run.compression)
        for position, layer in enumerate(LAYERS):
            rows.append((run.run_id, layer, position, max(0.0, sparsity - 8 * position)))
    return pd.DataFrame(rows, columns=["run_id", "layer", "position", "sparsity"])


def history_frame(runs: pd.DataFrame, epochs: int = 5) -> pd.DataFrame:
    rows = []
    for run in runs.itertuples():
        for step in range(epochs):
            rows.append((run.run_id, "val_metric", step, run.val + 2.0 / (step + 1)))
            rows.append((run.run_id, "train_loss", step, 1.0 / (step + 1)))
            rows.append((run.run_id, "epoch_seconds", step, 3.0))
    return pd.DataFrame(rows, columns=["run_id", "key", "step", "value"])
