"""Writing one run: params, per-epoch metrics, tags, artifacts, the model, the data it read, its end.

Talks to MLflow through the store's client with explicit run ids (no fluent global state), so a
sweep can log many nested runs from one process and a resumed run re-opens its own record. What a
user expects of an MLflow run is there too: the model as an ``mlflow.pytorch`` model, the source
commit, the dataset as a run input.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sparsebench.errors import ConfigError, RunNotFoundError
from sparsebench.interrupts import interrupts_held
from sparsebench.tracking.store import Store, open_store

MLFLOW_BATCH_METRICS = 1000
"""The most metrics MLflow accepts in one ``log_batch``."""
MLFLOW_BATCH_PARAMS = 100
MODEL_FOLDER = "model"


class Tracker:
    """One MLflow run.

    Every call that reads or writes the store holds Ctrl-C and SIGTERM until it returns
    (``interrupts_held``): an interrupt inside SQLAlchemy prints a traceback and half-writes.
    """

    def __init__(self, store: Store, run_id: str) -> None:
        self.store = store
        self.client = store.client
        self.run_id = run_id

    @classmethod
    @interrupts_held()
    def open(
        cls,
        store: Store | str | None,
        experiment: str,
        run_id: str | None = None,
        tags: dict[str, str] | None = None,
        run_name: str | None = None,
        parent_run_id: str | None = None,
        resume: bool = False,
    ) -> Tracker:
        """Start a new run (or re-open ``run_id`` to resume it) in ``experiment`` of ``store``."""
        store = open_store(store)
        if run_id is not None:
            try:
                status = store.client.get_run(run_id).info.status
            except Exception:
                raise RunNotFoundError(f"no MLflow run {run_id} in {store.display}") from None
            if resume and status == "FINISHED":
                raise ConfigError(f"run {run_id} already finished; start a new run instead of resuming it")
            store.client.update_run(run_id, status="RUNNING")
            return cls(store, run_id)
        all_tags = dict(tags or {})
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = store.client.create_run(store.experiment_id(experiment), tags=all_tags, run_name=run_name)
        return cls(store, run.info.run_id)

    @interrupts_held()
    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [
            Param(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v)) for k, v in params.items()
        ]
        for i in range(0, len(items), MLFLOW_BATCH_PARAMS):
            self.client.log_batch(self.run_id, params=items[i : i + MLFLOW_BATCH_PARAMS])

    @interrupts_held()
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        for start in range(0, len(items), MLFLOW_BATCH_METRICS):
            self.client.log_batch(self.run_id, metrics=items[start : start + MLFLOW_BATCH_METRICS])

    @interrupts_held()
    def copy_curves(self, source: str) -> None:
        """Copy the per-epoch curves (keys logged more than once) of run ``source``, steps and times kept.

        A re-finished run (``run --refinish``) repeats only the end of its training run; with the
        curves it stands for that run in reports, and its own final values, logged later, stay the
        latest ones.
        """
        from mlflow.entities import Metric

        copied = []
        for key in self.client.get_run(source).data.metrics:
            history = self.client.get_metric_history(source, key)
            if len(history) > 1:
                copied += [Metric(m.key, m.value, m.timestamp, m.step) for m in history]
        for start in range(0, len(copied), MLFLOW_BATCH_METRICS):
            self.client.log_batch(self.run_id, metrics=copied[start : start + MLFLOW_BATCH_METRICS])

    @interrupts_held()
    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    @interrupts_held()
    def tags(self) -> dict[str, str]:
        """The run's tags as logged so far."""
        return dict(self.client.get_run(self.run_id).data.tags)

    @interrupts_held()
    def metric_history(self, key: str) -> dict[int, float]:
        """Every logged value of ``key`` by step (the last one logged at a step wins)."""
        return {m.step: m.value for m in self.client.get_metric_history(self.run_id, key)}

    @interrupts_held()
    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    @interrupts_held()
    def log_artifacts(self, folder: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(folder), artifact_path)

    def log_text(self, text: str, name: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_text(text)
            self.log_artifact(path)

    def log_source(self) -> None:
        """``mlflow.source.*`` tags: the commit of the checkout the code runs from, as MLflow's UI shows."""
        tags = {"mlflow.source.name": "sparsebench", "mlflow.source.type": "LOCAL"}
        if commit := source_commit():
            tags["mlflow.source.git.commit"] = commit
        self.set_tags(tags)

    def log_model(  # its store calls hold interrupts; the export before them need not
        self, model: Any, example: Any, files: dict[str, Any], artifact_path: str = MODEL_FOLDER
    ) -> None:
        """The model as an ``mlflow.pytorch`` model, plus ``files`` (name -> object for ``torch.save``).

        ``mlflow.pytorch.load_model(f"runs:/{run_id}/model")`` then works as users expect, while
        sparsebench itself reads ``model/model.pt`` (a state dict, loaded with ``weights_only=True``)
        beside it. A model that ``torch.export`` cannot trace is logged without the flavor and says so
        in the ``model.flavor`` tag: the run's numbers do not depend on it.
        """
        from sparsebench.tracking.models import save_pytorch_model

        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / artifact_path
            flavor = save_pytorch_model(model, example, folder)
            import torch

            for name, payload in files.items():
                torch.save(payload, folder / name)
            self.log_artifacts(folder, artifact_path)
        self.set_tags({"model.flavor": flavor})

    @interrupts_held()
    def log_dataset(self, name: str, splits: dict[str, Any], source: dict[str, str]) -> None:
        """Each split as an MLflow dataset input: name, digest, size, and its role as the context tag."""
        from sparsebench.tracking.models import dataset_inputs

        self.client.log_inputs(self.run_id, datasets=dataset_inputs(name, splits, source))

    @interrupts_held()
    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


def source_commit() -> str | None:
    """The commit of the git checkout sparsebench runs from; None for an installed wheel or no git."""
    folder = Path(__file__).resolve().parents[2]
    if not (folder / ".git").exists():
        return None
    try:
        head = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    commit = head.stdout.strip()
    return commit if head.returncode == 0 and len(commit) == 40 else None


def environment() -> dict[str, str]:
    """Versions and machine, as ``env.*`` tags: what a reader needs to compare timings across runs."""
    import torch

    import sparsebench

    env = {
        "env.sparsebench": sparsebench.__version__,
        "env.torch": torch.__version__,
        "env.python": platform.python_version(),
        "env.platform": platform.platform(),
        "env.cpu_count": str(os.cpu_count()),
        "env.cuda": str(torch.version.cuda),
    }
    if torch.cuda.is_available():
        env["env.gpu"] = torch.cuda.get_device_name(0)
    return env


def warn(message: str) -> None:
    print(f"sparsebench: {message}", file=sys.stderr)
