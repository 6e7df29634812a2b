"""Reading runs back: ids as users type them, run tables, metric histories and small artifacts.

Reports, ``bench``, ``--init-from`` and ``--refinish`` read through here, so they work on any MLflow
backend and none of them talks to MLflow itself.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from sparsebench.errors import ConfigError, RunNotFoundError
from sparsebench.tracking.store import Store, open_store

MIN_RUN_PREFIX = 6
SEARCH_PAGE = 1000


def is_run_prefix(text: str) -> bool:
    """Whether ``text`` can stand for a run id: at least MIN_RUN_PREFIX lower-case hex digits."""
    return len(text) >= MIN_RUN_PREFIX and all(c in "0123456789abcdef" for c in text)


def resolve_run_id(store: Store | Any, run_id: str, flag: str = "run") -> str:
    """The full id of the run that ``run_id`` names: the id itself or a unique prefix of it.

    Tables, logs and the README quote runs by their first 8 characters (``--init-from c120ee89``),
    so every flag that takes a run accepts what a user can copy from them, as git does for commits.
    ``store`` may be a ``Store`` or its client.
    """
    client = store.client if isinstance(store, Store) else store
    with contextlib.suppress(Exception):
        return client.get_run(run_id).info.run_id
    prefix = run_id.strip().lower()
    if is_run_prefix(prefix):
        experiments = [e.experiment_id for e in client.search_experiments()]
        found = client.search_runs(
            experiments, filter_string=f"attributes.run_id LIKE '{prefix}%'", max_results=3
        )
        matches = sorted({r.info.run_id for r in found})
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise ConfigError(f"{flag} {run_id} is ambiguous ({', '.join(matches)}); give more of the run id")
    raise RunNotFoundError(
        f"{flag} {run_id}: no such MLflow run (give its id or its first {MIN_RUN_PREFIX}+ characters; "
        "list runs with `mlflow ui` or `sparsebench report`)"
    )


def run_tags(store: Store, run_id: str) -> dict[str, str]:
    return dict(store.client.get_run(run_id).data.tags)


def experiment_ids(store: Store, names: tuple[str, ...]) -> tuple[list[str] | None, list[str]]:
    """Ids of the named experiments (None: all of them) and the names that do not exist."""
    if not names:
        return None, []
    ids, missing = [], []
    for name in names:
        experiment_id = store.experiment_id(name, create=False)
        if experiment_id is None:
            missing.append(name)
        else:
            ids.append(experiment_id)
    return ids, missing


def runs_frame(store: Store, ids: list[str] | None, filter_string: str = "") -> pd.DataFrame:
    """Runs of experiments ``ids`` (None: every active experiment) as one row each.

    Columns as ``mlflow.search_runs`` names them: ``run_id``, ``experiment_id``, ``status``,
    ``start_time``, ``end_time``, ``metrics.*``, ``params.*``, ``tags.*``.
    """
    if ids is None:
        ids = [e.experiment_id for e in store.client.search_experiments()]
    frame = pd.DataFrame([_row(run) for run in _search_all(store.client, ids, filter_string=filter_string)])
    for column in ("start_time", "end_time"):
        if column in frame:
            frame[column] = pd.to_datetime(frame[column], unit="ms", utc=True)
    return frame


DELETED = "DELETED"
"""The state ``run_states`` gives a run deleted from the store, or one in a deleted experiment."""


def run_states(store: Store) -> dict[str, str]:
    """Run id -> MLflow status of every run the store has, deleted ones included as ``DELETED``.

    ``gc`` needs to tell a run this store deleted (its checkpoint may go) from a run the store never
    had (another store's, whose checkpoint must stay), so this reads deleted experiments and runs too.
    """
    from mlflow.entities import ViewType

    client = store.client
    experiments = client.search_experiments(view_type=ViewType.ALL)
    deleted_experiments = {e.experiment_id for e in experiments if e.lifecycle_stage == "deleted"}
    states: dict[str, str] = {}
    for run in _search_all(client, [e.experiment_id for e in experiments], run_view_type=ViewType.ALL):
        info = run.info
        gone = info.lifecycle_stage == "deleted" or info.experiment_id in deleted_experiments
        states[info.run_id] = DELETED if gone else info.status
    return states


def _search_all(client: Any, ids: list[str], **search: Any) -> Iterator[Any]:
    """Every run ``client.search_runs(ids, **search)`` finds, page after page."""
    token = None
    while ids:
        page = client.search_runs(ids, max_results=SEARCH_PAGE, page_token=token, **search)
        yield from page
        token = page.token
        if not token:
            return


def _row(run: Any) -> dict[str, Any]:
    info, data = run.info, run.data
    row: dict[str, Any] = {
        "run_id": info.run_id,
        "experiment_id": info.experiment_id,
        "status": info.status,
        "artifact_uri": info.artifact_uri,
        "start_time": info.start_time,
        "end_time": info.end_time,
    }
    row.update({f"metrics.{k}": v for k, v in data.metrics.items()})
    row.update({f"params.{k}": v for k, v in data.params.items()})
    row.update({f"tags.{k}": v for k, v in data.tags.items()})
    return row


def metric_history(store: Store, run_ids: list[str], keys: tuple[str, ...]) -> pd.DataFrame:
    """Per-epoch values (step = epoch) of ``keys`` for every run, in long form."""
    rows = []
    for run_id in run_ids:
        for key in keys:
            for m in store.client.get_metric_history(run_id, key):
                rows.append((run_id, key, m.step, m.value))
    return pd.DataFrame(rows, columns=["run_id", "key", "step", "value"])


class ArtifactReader:
    """Download small artifacts of runs, remembering which runs lack them."""

    FOLDERS = ("", "model", "inference")

    def __init__(self, store: Store | Any) -> None:
        self.client = store.client if isinstance(store, Store) else store
        self.tmp = tempfile.TemporaryDirectory(prefix="sparsebench-artifacts-")
        self._listing: dict[str, set[str]] = {}

    def has(self, run_id: str, path: str) -> bool:
        if run_id not in self._listing:
            names: set[str] = set()
            for folder in self.FOLDERS:
                # An unreadable artifact store counts as missing files: the caller says what it lacks.
                with contextlib.suppress(Exception):
                    names |= {a.path for a in self.client.list_artifacts(run_id, folder or None)}
            self._listing[run_id] = names
        return path in self._listing[run_id]

    def download(self, run_id: str, path: str) -> Path | None:
        if not self.has(run_id, path):
            return None
        target = Path(self.tmp.name) / run_id
        target.mkdir(exist_ok=True)
        return Path(self.client.download_artifacts(run_id, path, str(target)))

    def csv(self, run_id: str, path: str) -> pd.DataFrame | None:
        local = self.download(run_id, path)
        return None if local is None else pd.read_csv(local)

    def json(self, run_id: str, path: str) -> dict[str, Any] | None:
        local = self.download(run_id, path)
        return None if local is None else json.loads(local.read_text())

    def text(self, run_id: str, path: str) -> str | None:
        local = self.download(run_id, path)
        return None if local is None else local.read_text()


MODEL_FILE = "model/model.pt"


def load_exported_file(path: str | Path, what: str) -> dict[str, Any]:
    """An exported ``model.pt`` (``{"state_dict", "masks"}``), loaded without running code from it."""
    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(payload, dict) or not isinstance(payload.get("state_dict"), dict):
            raise KeyError("no state_dict")
        return payload
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, KeyError, TypeError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise ConfigError(f"{what}: its model.pt cannot be loaded safely ({reason})") from None


def load_exported(store: Store | str | None, run_id: str, what: str) -> dict[str, Any] | None:
    """The exported model of run ``run_id`` (None when it has none), read with ``weights_only=True``."""
    reader = ArtifactReader(open_store(store) if not isinstance(store, Store) else store)
    local = reader.download(run_id, MODEL_FILE)
    return None if local is None else load_exported_file(local, what)


def require_run(store: Store, run_id: str, flag: str) -> Any:
    """The MLflow run ``run_id`` (already a full id), or a one-line error."""
    try:
        return store.client.get_run(run_id)
    except Exception:
        raise RunNotFoundError(f"{flag} {run_id}: no such run in {store.display}") from None
