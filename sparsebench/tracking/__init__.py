"""The one door to MLflow: no other part of sparsebench imports it.

- ``uris``: which store a command uses and how to print it (pure strings, no MLflow import);
- ``store``: opening a store once per URI, creating a new one safely, failing fast in one line;
- ``writer``: one run's params, metrics, tags, artifacts, model and dataset inputs (``Tracker``);
- ``reader``: run ids as users type them, run tables, histories and artifacts;
- ``models``: MLflow's formats for a model (``mlflow.pytorch``) and a dataset.

Importing this package does not import MLflow (that costs seconds); opening a store does.
"""

from __future__ import annotations

from typing import Any

from sparsebench.tracking.reader import (
    MIN_RUN_PREFIX,
    ArtifactReader,
    is_run_prefix,
    load_exported,
    load_exported_file,
    metric_history,
    resolve_run_id,
    run_states,
    run_tags,
    runs_frame,
)
from sparsebench.tracking.store import Store, TrackingStoreError, open_store
from sparsebench.tracking.uris import (
    DEFAULT_STORE,
    EXPERIMENT,
    default_tracking_uri,
    mask_uri,
    resolve_uri,
)
from sparsebench.tracking.writer import Tracker, environment, source_commit

__all__ = [
    "DEFAULT_STORE",
    "EXPERIMENT",
    "MIN_RUN_PREFIX",
    "ArtifactReader",
    "Store",
    "Tracker",
    "TrackingStoreError",
    "default_tracking_uri",
    "environment",
    "is_run_prefix",
    "load_exported",
    "load_exported_file",
    "make_client",
    "mask_uri",
    "metric_history",
    "open_store",
    "resolve_run_id",
    "resolve_uri",
    "run_tags",
    "run_states",
    "runs_frame",
    "source_commit",
]


def make_client(tracking_uri: str | None) -> Any:
    """The cached MLflow client of a store (prefer ``open_store``, which also creates experiments)."""
    return open_store(tracking_uri).client
