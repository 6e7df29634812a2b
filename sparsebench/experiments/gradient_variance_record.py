"""The gradient-variance record and its table, beside the paper's and the replication's numbers.

The record is one versioned JSON document (pydantic, like ``sparsebench.record.RunRecord``): the
full configuration, versions, commit and data checksums, and per measured point of training the
average empirical variance of each estimator's minibatch gradient with its standard error. The
command writes it; ``sparsebench.report.gradient_variance`` reads it; both draw the same table
from it through ``comparison_frame`` and ``ordering_frame``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sparsebench.errors import ConfigError
from sparsebench.experiments.estimators import ESTIMATORS, LABELS

RECORD_VERSION = 1
RECORD_NAME = "gradient_variance.json"
FOLDER = "gradient-variance"
"""The experiment's folder inside a campaign's results folder (``reports/kingma2015/``)."""

PAPER_CITATION = "Kingma, Salimans, Welling 2015 (NIPS), Table 1"
PAPER: dict[tuple[str, str, int], float] = {
    ("lrt", "top", 10): 7.8e3, ("lrt", "top", 100): 1.2e3,
    ("lrt", "bottom", 10): 1.9e2, ("lrt", "bottom", 100): 1.1e2,
    ("separate", "top", 10): 1.4e4, ("separate", "top", 100): 2.6e3,
    ("separate", "bottom", 10): 4.3e2, ("separate", "bottom", 100): 2.5e2,
    ("single", "top", 10): 4.9e4, ("single", "top", 100): 4.3e3,
    ("single", "bottom", 10): 8.5e2, ("single", "bottom", 100): 3.3e2,
    ("none", "top", 10): 2.8e3, ("none", "top", 100): 5.9e1,
    ("none", "bottom", 10): 1.3e2, ("none", "bottom", 100): 9.0e0,
}  # fmt: skip
"""Table 1 as printed in the paper (its columns: top 10, top 100, bottom 10, bottom 100 epochs)."""

REPLICATION_CITATION = (
    "gngdb/variational-dropout README table (Theano/Lasagne replication, notebook "
    "'Comparing Empirical Variance'; minibatches of 200, 784-1024-1024-1024-10)"
)
REPLICATION: dict[tuple[str, str, int], float] = {
    ("lrt", "top", 10): 2.4e4, ("lrt", "bottom", 10): 6.1e2,
    ("lrt", "top", 100): 2.5e5, ("lrt", "bottom", 100): 3e3,
    ("separate", "top", 10): 4.8e4, ("separate", "bottom", 10): 1.2e3,
    ("separate", "top", 100): 4.9e5, ("separate", "bottom", 100): 8.2e3,
    ("single", "top", 10): 5.8e4, ("single", "bottom", 10): 1.5e3,
    ("single", "top", 100): 4.7e5, ("single", "bottom", 100): 6.8e3,
    ("none", "top", 10): 1.5e4, ("none", "bottom", 10): 5.5e2,
    ("none", "top", 100): 1.4e5, ("none", "bottom", 100): 2.7e3,
}  # fmt: skip
"""The replication's numbers (the ones issue 21 quotes as the paper's)."""

PAPER_TEST_ERROR = {10: 3.0, 100: 1.3}
"""Test error (%) the paper states for its network after 10 and 100 epochs."""

LAYERS = ("top", "bottom")


class Cell(BaseModel):
    """One estimator's variance for one layer at one point of training."""

    model_config = ConfigDict(extra="forbid")
    estimator: str
    layer: str
    variance: float
    """Mean over the layer's weights of the per-weight unbiased variance across repetitions."""
    std_error: float
    """Standard error of ``variance``: the spread of the same statistic over independent groups of
    repetitions, divided by sqrt(groups)."""
    group_variances: list[float]
    repeats: int


class Point(BaseModel):
    """The measurements after ``epoch`` epochs of training."""

    model_config = ConfigDict(extra="forbid")
    epoch: int
    test_error: float
    train_loss: float
    training_seconds: float
    """Wall time of the training epochs since the previous point."""
    seconds_per_repeat: dict[str, float]
    """Wall time of one repetition (one minibatch gradient of both layers), per estimator."""
    cells: list[Cell]


class GradientVarianceRecord(BaseModel):
    """Everything the table and the report section need, and enough to run it again."""

    model_config = ConfigDict(extra="forbid")
    version: int = Field(RECORD_VERSION, le=RECORD_VERSION)
    """Format version; a newer record than this sparsebench reads is refused."""
    config: dict[str, Any]
    versions: dict[str, str]
    git_commit: str | None = None
    data: dict[str, str] = {}
    points: list[Point] = []
    finished: bool = False
    note: str = ""
    """Why the run differs from the request (a time limit cut the last point short, ...)."""

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=1, sort_keys=True, allow_nan=False) + "\n"


def write(rec: GradientVarianceRecord, path: Path) -> None:
    """Atomic write; the command rewrites its own record after every point it measures."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(rec.to_json())
    tmp.replace(path)


def read(path: Path) -> GradientVarianceRecord:
    try:
        return GradientVarianceRecord.model_validate_json(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ConfigError(f"{path} is not a gradient-variance record: {where}: {first['msg']}") from None


def paper_epoch(epoch: int) -> int:
    """The paper's point (10 or 100 epochs) a measurement after ``epoch`` epochs stands beside:
    the nearer one on a log scale (so 10 -> 10, 40 -> 100)."""
    return 10 if abs(math.log(epoch / 10)) <= abs(math.log(epoch / 100)) else 100


def sci(value: float | None, digits: int = 2) -> str:
    """2.4e+04 style, as the paper and the replication print their variances."""
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:.{digits - 1}e}"


def comparison_frame(rec: GradientVarianceRecord) -> pd.DataFrame:
    """One row per (point, layer, estimator): ours with its error, the paper's, the replication's."""
    rows = []
    for point in rec.points:
        ref = paper_epoch(point.epoch)
        by_key = {(c.estimator, c.layer): c for c in point.cells}
        for layer in LAYERS:
            for est in ESTIMATORS:
                cell = by_key.get((est, layer))
                if cell is None:
                    continue
                rows.append(
                    {
                        "epochs": point.epoch,
                        "layer": layer,
                        "estimator": LABELS[est],
                        "ours": cell.variance,
                        "ours_se": cell.std_error,
                        "repeats": cell.repeats,
                        "paper_epochs": ref,
                        "paper": PAPER[(est, layer, ref)],
                        "replication": REPLICATION[(est, layer, ref)],
                    }
                )
    return pd.DataFrame(rows)


RESOLVED_SE = 2.0
"""Two of our variances count as ordered when they differ by more than this many standard errors of
the difference; closer ones are shown as ``a≈b``."""


def _order(values: dict[str, float], errors: dict[str, float] | None = None) -> str:
    """``lrt<separate<single`` from smallest to largest; with errors, ``≈`` where unresolved."""
    noisy = sorted((e for e in ESTIMATORS if e != "none" and e in values), key=lambda e: values[e])
    text = noisy[0]
    for low, high in zip(noisy[:-1], noisy[1:], strict=True):
        gap = values[high] - values[low]
        resolved = errors is None or gap > RESOLVED_SE * math.hypot(errors[low], errors[high])
        text += ("<" if resolved else "≈") + high
    return text


def _lrt_clearly_smallest(values: dict[str, float], errors: dict[str, float]) -> bool:
    return all(
        values[other] - values["lrt"] > RESOLVED_SE * math.hypot(errors["lrt"], errors[other])
        for other in ("separate", "single")
    )


def ordering_frame(rec: GradientVarianceRecord) -> pd.DataFrame:
    """Per (point, layer): the order of the three noisy estimators, ours / paper / replication, and
    whether LRT's variance is the smallest of the three (by its estimate, and beyond the errors)."""
    rows = []
    for point in rec.points:
        ref = paper_epoch(point.epoch)
        for layer in LAYERS:
            ours = {c.estimator: c.variance for c in point.cells if c.layer == layer}
            errors = {c.estimator: c.std_error for c in point.cells if c.layer == layer}
            if not {"lrt", "separate", "single"} <= set(ours):
                continue
            paper = {e: PAPER[(e, layer, ref)] for e in ESTIMATORS}
            rows.append(
                {
                    "epochs": point.epoch,
                    "layer": layer,
                    "ours": _order(ours, errors),
                    "lrt_smallest": _order(ours).startswith("lrt"),
                    "lrt_smallest_beyond_2se": _lrt_clearly_smallest(ours, errors),
                    "paper_epochs": ref,
                    "paper": _order(paper),
                    "replication": _order({e: REPLICATION[(e, layer, ref)] for e in ESTIMATORS}),
                    # The paper's two claims in numbers: LRT about 2x below separate samples, and
                    # one shared sample worse than separate ones (its variance does not fall as 1/M).
                    "separate/lrt": ours["separate"] / ours["lrt"],
                    "separate/lrt paper": paper["separate"] / paper["lrt"],
                    "single/separate": ours["single"] / ours["separate"],
                    "single/separate paper": paper["single"] / paper["separate"],
                }
            )
    return pd.DataFrame(rows)


def display_frames(rec: GradientVarianceRecord) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The two frames as strings, the way the table pages show them."""
    comp, order = comparison_frame(rec), ordering_frame(rec)
    if comp.empty:
        return comp, order
    ours = [f"{sci(v)} ± {sci(s, 1)}" for v, s in zip(comp["ours"], comp["ours_se"], strict=True)]
    paper = [f"{sci(v)} ({e} ep.)" for v, e in zip(comp["paper"], comp["paper_epochs"], strict=True)]
    shown = comp[["epochs", "layer", "estimator"]].assign(
        **{"ours (± s.e.)": ours, "repeats": comp["repeats"], "paper": paper},
        gngdb=[sci(v) for v in comp["replication"]],
    )
    if not order.empty:
        yes_no = {True: "yes", False: "no"}
        order = order.assign(
            lrt_smallest=order["lrt_smallest"].map(yes_no),
            lrt_smallest_beyond_2se=order["lrt_smallest_beyond_2se"].map(yes_no),
            **{c: order[c].map(lambda v: f"{v:.2f}") for c in order.columns if "/" in c},
        )
    return shown, order
