"""Find the runs a report is about and read what they logged, through MLflow's client into pandas.

Nothing here opens the store's files or talks to MLflow: runs, curves and tables come through
``sparsebench.tracking`` (its reader), so any MLflow backend works.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field, replace
from typing import Any

import pandas as pd

from sparsebench.errors import ConfigError
from sparsebench.registry import normalize_name
from sparsebench.tracking import ArtifactReader, Store, load_exported, mask_uri, open_store, runs_frame
from sparsebench.tracking import metric_history as _metric_history

REPORT_EXPERIMENT = "sparsebench-reports"
"""Report runs live in their own experiment so they never show up among training runs."""

HISTORY_KEYS = ("val_metric", "sparsity", "kl", "train_loss", "epoch_seconds")
"""Per-epoch metrics the report draws or averages."""

NOT_A_SETTING = ("train.seed", "train.threads", "train.eval_batch_size", "train.compile")
"""Config keys that differ between runs of one setting without changing what is measured."""

FINAL_METRICS = {
    "test_metric": "test",
    "final_val_metric": "val",
    "compression": "compression",
    "compression_all": "compression_all",
    "compression_structured": "compression_structured",
    "compression_precision": "compression_precision",
    "test_metric_precision": "test_precision",
    "flops_reduction": "flops_reduction",
    "weights": "weights",
    "nonzeros": "nonzeros",
    "params_all": "params_all",
    "nonzero_params_all": "nonzero_params_all",
    "examples_per_second": "examples_per_second",
    "peak_memory_mb": "peak_memory_mb",
}
"""MLflow metric -> column of the tidy run table (optional ones become NaN when absent)."""


class NoMatchingRunsError(ConfigError):
    """The selection matched no finished training run; nothing is written."""


@dataclass
class Selection:
    """Which runs a report covers; every field narrows the set (empty = no constraint)."""

    experiments: tuple[str, ...] = ()
    tasks: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    """Config values as logged (``train.epochs`` -> ``"200"``), e.g. to leave out short smoke runs."""
    sweep: str | None = None
    run_ids: tuple[str, ...] = ()

    def describe(self) -> str:
        parts = [
            f"experiment {', '.join(self.experiments)}" if self.experiments else "all experiments",
            f"task {', '.join(self.tasks)}" if self.tasks else "",
            f"method {', '.join(self.methods)}" if self.methods else "",
            ", ".join(f"tag {k}={v}" for k, v in self.tags.items()),
            ", ".join(f"{k}={v}" for k, v in self.params.items()),
            f"sweep {self.sweep}" if self.sweep else "",
            f"{len(self.run_ids)} listed runs" if self.run_ids else "",
        ]
        return "; ".join(p for p in parts if p)

    def as_flags(self) -> list[str]:
        """The ``sparsebench report`` flags that select the same runs again."""
        flags: list[str] = []
        for name in self.experiments:
            flags += ["--experiment", name]
        for name in self.tasks:
            flags += ["--task", name]
        for name in self.methods:
            flags += ["--method", name]
        for key, value in self.tags.items():
            flags += ["--tag", f"{key}={value}"]
        for key, value in self.params.items():
            flags += ["--param", f"{key}={value}"]
        if self.sweep:
            flags += ["--sweep", self.sweep]
        for run_id in self.run_ids:
            flags += ["--run", run_id]
        return flags


@dataclass
class RunSet:
    """Everything a report is computed from, as tidy frames keyed by ``run_id``."""

    runs: pd.DataFrame
    """One row per run: task, method, setting, seed and the final metrics."""
    layers: pd.DataFrame
    """``per_layer.csv`` of every run, with ``run_id`` and the layer's ``position``."""
    curves: pd.DataFrame
    """``threshold_curve.csv`` of the runs that have one, with ``run_id``."""
    history: pd.DataFrame
    """Per-epoch metrics in long form: run_id, key, step, value."""
    configs: dict[str, dict[str, Any]]
    """The typed flat config of each run, from its run record."""
    tracking_uri: str
    inference: pd.DataFrame = field(default_factory=pd.DataFrame)
    """``inference/<device>.csv`` of the runs timed by ``sparsebench bench RUN``, with ``run_id``."""
    model_files: dict[str, Any] = field(default_factory=dict)
    """Exported models kept beside run records (``<row>-seed<k>.model.npz``), by run id: a report
    from records reads them instead of a store's artifacts."""


def load_runs(selection: Selection, tracking_uri: str) -> RunSet:
    """Select finished training runs and read their logged tables and curves."""
    from sparsebench.tracking import resolve_run_id

    store = open_store(tracking_uri)
    if selection.run_ids:
        full = tuple(resolve_run_id(store, run_id, "--run") for run_id in selection.run_ids)
        selection = replace(selection, run_ids=full)
    raw = search(store, selection, tracking_uri)
    runs = tidy(raw)
    if runs.empty:
        shown = shlex.quote(mask_uri(tracking_uri))  # printed: never the store's password
        raise NoMatchingRunsError(
            f"no finished training runs match ({selection.describe()}); nothing written. Check the "
            f"flags, or look at the store with: mlflow ui --backend-store-uri {shown}"
        )
    artifacts = ArtifactReader(store)
    layers, curves, configs, inference = [], [], {}, []
    for run_id in runs.run_id:
        for device in ("cpu", "cuda"):
            timed = artifacts.csv(run_id, f"inference/{device}.csv")
            if timed is not None:
                inference.append(timed.assign(run_id=run_id))
        table = artifacts.csv(run_id, "per_layer.csv")
        if table is not None:
            layers.append(table.assign(run_id=run_id, position=range(len(table))))
        curve = artifacts.csv(run_id, "threshold_curve.csv")
        if curve is not None:
            curves.append(curve.assign(run_id=run_id))
        configs[run_id] = recorded_config(artifacts, run_id)
    return RunSet(
        runs=runs,
        layers=_concat(layers, ["run_id", "layer", "position", "sparsity"]),
        curves=_concat(curves, ["run_id", "threshold", "compression", "val_metric", "test_metric"]),
        history=metric_history(store, list(runs.run_id), HISTORY_KEYS),
        configs=configs,
        tracking_uri=tracking_uri,
        inference=_concat(inference, ["run_id", "format", "device", "batch_size", "status", "ms"]),
    )


def recorded_config(artifacts: ArtifactReader, run_id: str) -> dict[str, Any]:
    """The full resolved configuration in the run's record ({} for a run without one)."""
    from sparsebench.record import RECORD_NAME, RunRecord

    text = artifacts.text(run_id, RECORD_NAME)
    return RunRecord.from_json(text, f"run {run_id}'s record").config if text else {}


def search(store: Store, selection: Selection, tracking_uri: str) -> pd.DataFrame:
    """Finished runs of the selected experiments as a frame with MLflow's column names."""
    experiment_ids = _experiment_ids(store, selection.experiments)
    if experiment_ids == []:
        return pd.DataFrame()
    filters = ["attributes.status = 'FINISHED'"]
    filters += [f"tags.`{key}` = '{_quote(value)}'" for key, value in selection.tags.items()]
    filters += [f"params.`{key}` = '{_quote(value)}'" for key, value in selection.params.items()]
    frame = runs_frame(store, experiment_ids, " and ".join(filters))
    if frame.empty:
        return frame
    # Training runs are the ones the runner finished: a task tag and a test metric (sweep parents,
    # report runs and other tools' runs in the same store have neither).
    frame = frame[_column(frame, "tags.task").notna() & _column(frame, "metrics.test_metric").notna()]
    if frame.empty:
        return frame
    # Task and method names are matched here, not in the filter, so their spelling does not matter.
    if selection.tasks:
        wanted = {normalize_name(t) for t in selection.tasks}
        frame = frame[frame["tags.task"].map(normalize_name).isin(wanted)]
    if selection.methods:
        wanted = {normalize_name(m) for m in selection.methods}
        frame = frame[frame["tags.method"].map(normalize_name).isin(wanted)]
    if selection.run_ids:
        frame = frame[frame.run_id.isin(selection.run_ids)]
    # A re-finished run (``run --refinish``) replaces its source: the same training, counted once.
    frame = frame[~frame.run_id.isin(set(_column(frame, "tags.refinished_from").dropna()))]
    if selection.sweep:
        parents = sweep_parents(store, selection.sweep, experiment_ids)
        frame = frame[_column(frame, "tags.mlflow.parentRunId").isin(parents)]
    return frame.reset_index(drop=True)


def sweep_parents(store: Store, sweep: str, experiment_ids: list[str] | None) -> set[str]:
    """Parent run ids of a sweep given by run id, run name, ``sweep`` tag or study name."""
    parents = runs_frame(store, experiment_ids)
    if parents.empty:
        return set()
    match = parents.run_id == sweep
    for column in ("tags.mlflow.runName", "tags.sweep", "tags.sweep.study"):
        if column in parents:
            match |= parents[column] == sweep
    return set(parents.run_id[match])


def tidy(raw: pd.DataFrame) -> pd.DataFrame:
    """MLflow's wide frame -> one row per run with short column names and a ``setting`` label."""
    columns = [
        "run_id",
        "experiment_id",
        "run_name",
        "task",
        "method",
        "seed",
        "setting",
        "epochs",
        "start_time",
    ]
    if raw.empty:
        return pd.DataFrame(columns=columns + list(FINAL_METRICS.values()))
    runs = pd.DataFrame(
        {
            "run_id": raw.run_id,
            "experiment_id": raw.experiment_id,
            "run_name": _column(raw, "tags.mlflow.runName"),
            "task": raw["tags.task"],
            "method": _column(raw, "tags.method").fillna("unknown"),
            "seed": pd.to_numeric(_column(raw, "params.train.seed"), errors="coerce"),
            "epochs": pd.to_numeric(_column(raw, "params.train.epochs"), errors="coerce"),
            "start_time": raw.start_time,
            "device": _column(raw, "tags.device"),
            "init_from": _column(raw, "tags.init_from").fillna(""),
            "parent_run_id": _column(raw, "tags.mlflow.parentRunId").fillna(""),
            "row": _column(raw, "tags.row"),
        }
    )
    for metric, column in FINAL_METRICS.items():
        runs[column] = pd.to_numeric(_column(raw, f"metrics.{metric}"), errors="coerce")
    runs["setting"] = setting_labels(raw)
    return runs.sort_values(["task", "method", "setting", "seed", "run_id"], kind="stable").reset_index(
        drop=True
    )


def setting_labels(raw: pd.DataFrame) -> pd.Series:
    """Name each run's setting by the config values that vary between runs of its task and method.

    Runs that differ only in seed (and in keys that do not change results) share a setting, so
    their spread is seed variance; anything else (a sweep's trials, a different KL weight) is a
    separate point on the error-compression plane.
    """
    params = [
        c for c in raw.columns if c.startswith("params.") and c.removeprefix("params.") not in NOT_A_SETTING
    ]
    labels = pd.Series("default", index=raw.index, dtype=object)
    for _, group in raw.groupby(["tags.task", "tags.method"], sort=False):
        # A key only some runs have (logged by a newer version, with its default) is not a change.
        varying = [c for c in params if group[c].dropna().nunique() > 1]
        for index, row in group.iterrows():
            parts = [f"{_short_key(c)}={row[c]}" for c in varying if pd.notna(row[c])]
            labels[index] = ", ".join(parts) if parts else "default"
    return labels


def _short_key(column: str) -> str:
    key = column.removeprefix("params.")
    return key.removeprefix("method.")


def load_model(tracking_uri: str, run_id: str) -> dict[str, Any] | None:
    """The exported model artifact (``{"state_dict", "masks"}``) of a run, or None if it has none."""
    return load_exported(tracking_uri, run_id, f"run {run_id}")


def metric_history(store: Store, run_ids: list[str], keys: tuple[str, ...]) -> pd.DataFrame:
    """Per-epoch values (step = epoch) of ``keys`` for every run, in long form."""
    return _metric_history(store, run_ids, keys)


def _experiment_ids(store: Store, names: tuple[str, ...]) -> list[str] | None:
    """Ids of the named experiments; None means all, [] means none of them exists."""
    if not names:
        return None
    ids = []
    for name in names:
        experiment_id = store.experiment_id(name, create=False)
        if experiment_id is None:
            print(f"sparsebench report: no experiment named {name!r} in this store", file=sys.stderr)
        else:
            ids.append(experiment_id)
    return ids


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    """A column of MLflow's frame, or all-missing when no selected run logged that key."""
    return frame[name] if name in frame else pd.Series(None, index=frame.index, dtype=object)


def _quote(value: str) -> str:
    return value.replace("'", "\\'")


def _concat(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
