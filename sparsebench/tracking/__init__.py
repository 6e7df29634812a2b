"""MLflow logging for runs: params, per-epoch curves, final metrics, tables and the exported model.

Talks to MLflow through ``MlflowClient`` with explicit run ids (no fluent global state), so a
sweep can log many nested runs from one process and a resumed run re-opens its own record.
"""

from __future__ import annotations

import json
import os
import platform
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from sparsebench.errors import ConfigError, RunNotFoundError

DEFAULT_STORE = Path("mlruns")
EXPERIMENT = "sparsebench"
MLFLOW_BATCH_METRICS = 1000
"""The most metrics MLflow accepts in one ``log_batch``."""


def default_tracking_uri() -> str:
    """An sqlite file under ./mlruns/ (``mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db``)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_STORE.absolute() / 'mlflow.db'}"


_SECRET_QUERY = re.compile(r"(?i)([?&](?:password|passwd|pwd|token|secret|api_?key)=)[^&#]*")


def mask_uri(uri: str) -> str:
    """``uri`` with the password of its ``user:password@`` part (and secret query values) as ``***``.

    Tracking and optuna storage URLs may carry a database password, and every URI we print (hints,
    status lines), log (MLflow tags and params) or write (reports) would show it to whoever reads the
    terminal, the store or a committed file. Pure string work, so any module can use it without
    importing MLflow. Where the end of the password is ambiguous (a raw ``@`` in it, or in a path after
    a host:port), more is masked rather than less.
    """
    scheme, sep, rest = uri.partition("://")
    if sep and not rest.startswith("/"):
        before_query = re.split(r"[?#]", rest, maxsplit=1)[0]
        at = before_query.rfind("@")
        user, colon, _ = before_query[:at].partition(":") if at > 0 else ("", "", "")
        if colon and not set(user) & set("/@"):
            rest = f"{user}:***{rest[at:]}"
    return _SECRET_QUERY.sub(r"\1***", scheme + sep + rest)


def _quiet_mlflow() -> None:
    import logging

    # A progress bar per downloaded file (--init-from, bench, report) clutters stderr and logs.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow  # noqa: F401 - mlflow configures its loggers on import; quiet them afterwards

    for name in ("mlflow", "alembic", "sqlalchemy"):
        logging.getLogger(name).setLevel(logging.WARNING)


class Tracker:
    """One MLflow run."""

    def __init__(self, client: Any, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    @classmethod
    def open(
        cls,
        tracking_uri: str | None,
        experiment: str,
        run_id: str | None = None,
        tags: dict[str, str] | None = None,
        run_name: str | None = None,
        parent_run_id: str | None = None,
        resume: bool = False,
    ) -> Tracker:
        """Start a new run (or re-open ``run_id`` to resume it) in ``experiment``."""
        client = make_client(tracking_uri)
        if run_id is not None:
            try:
                status = client.get_run(run_id).info.status
            except Exception as exc:
                raise RunNotFoundError(
                    f"no MLflow run {run_id} in {tracking_uri or default_tracking_uri()}"
                ) from exc
            if resume and status == "FINISHED":
                raise ConfigError(f"run {run_id} already finished; start a new run instead of resuming it")
            client.update_run(run_id, status="RUNNING")
            return cls(client, run_id)
        experiment_id = ensure_experiment(client, experiment, tracking_uri)
        all_tags = dict(tags or {})
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = client.create_run(experiment_id, tags=all_tags, run_name=run_name)
        return cls(client, run.info.run_id)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [
            Param(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v)) for k, v in params.items()
        ]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

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

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, name: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_text(text)
            self.log_artifact(path)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


def make_client(tracking_uri: str | None) -> Any:
    _quiet_mlflow()
    from mlflow.tracking import MlflowClient

    uri = tracking_uri or default_tracking_uri()
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri)


MIN_RUN_PREFIX = 6


def is_run_prefix(text: str) -> bool:
    """Whether ``text`` can stand for a run id: at least MIN_RUN_PREFIX lower-case hex digits."""
    return len(text) >= MIN_RUN_PREFIX and all(c in "0123456789abcdef" for c in text)


def resolve_run_id(client: Any, run_id: str, flag: str = "run") -> str:
    """The full id of the run that ``run_id`` names: the id itself or a unique prefix of it.

    Tables, logs and the README quote runs by their first 8 characters (``--init-from c120ee89``),
    so every flag that takes a run accepts what a user can copy from them, as git does for commits.
    """
    try:
        return client.get_run(run_id).info.run_id
    except Exception:
        pass
    prefix = run_id.strip().lower()
    if is_run_prefix(prefix):
        experiments = [e.experiment_id for e in client.search_experiments()]
        matches = sorted(
            {
                r.info.run_id
                for r in client.search_runs(
                    experiments, filter_string=f"attributes.run_id LIKE '{prefix}%'", max_results=3
                )
            }
        )
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise ConfigError(f"{flag} {run_id} is ambiguous ({', '.join(matches)}); give more of the run id")
    raise RunNotFoundError(
        f"{flag} {run_id}: no such MLflow run (give its id or its first {MIN_RUN_PREFIX}+ characters; "
        "list runs with `mlflow ui` or `sparsebench report`)"
    )


def ensure_experiment(client: Any, name: str, tracking_uri: str | None) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    uri = tracking_uri or default_tracking_uri()
    artifact_location = None
    if uri.startswith("sqlite:///"):
        # Keep artifacts beside the database, not in whatever directory the user ran from.
        artifact_location = (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").absolute().as_uri()
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except Exception:
        # Another worker of the same sweep may have created it a moment ago (a race on a fresh store).
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def environment() -> dict[str, str]:
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
