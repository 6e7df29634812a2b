"""Opening a tracking store: once per URI, safely on a fresh store, and failing fast in one line.

Every command talks to MLflow through a ``Store`` from ``open_store``: the URI is resolved once, the
``MlflowClient`` is cached per resolved URI, and the first creation of an sqlite store (MLflow runs
its schema migrations then) is serialised by a file lock, so several runs started at once on a new
checkout all succeed. Before MLflow touches a store, the cheap checks it would otherwise discover
through minutes of retries and a long traceback (an unreachable database host, a file that is not a
database, a folder that cannot be written) are made here and reported as one line.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparsebench.errors import SparsebenchError
from sparsebench.files import folder_problem
from sparsebench.tracking.uris import (
    DATABASE_SCHEMES,
    local_folder,
    mask_uri,
    resolve_uri,
    scheme_of,
    sqlite_path,
)

CONNECT_TIMEOUT_S = 5
"""How long to wait for a database server (``$SPARSEBENCH_DB_CONNECT_TIMEOUT`` overrides it)."""
CREATE_LOCK_TIMEOUT_S = 300
"""How long a process waits for another one to finish creating the same new store."""
SQLITE_HEADER = b"SQLite format 3\x00"


class TrackingStoreError(SparsebenchError):
    """A tracking store that cannot be opened: unreachable, unwritable, corrupt or of unknown kind."""


@dataclass(frozen=True, eq=False)
class Store:
    """One opened tracking store: its resolved URI and the MLflow client that talks to it."""

    uri: str
    client: Any

    @property
    def display(self) -> str:
        """The URI as it may be printed or written (no password)."""
        return mask_uri(self.uri)

    def experiment_id(self, name: str, create: bool = True) -> str | None:
        """The id of experiment ``name``; created (artifacts beside an sqlite file) when missing."""
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        if not create:
            return None
        folder = local_folder(self.uri) if sqlite_path(self.uri) else None
        location = (folder / "artifacts").absolute().as_uri() if folder else None
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except Exception:
            # Another process may have created it a moment ago (a race on a fresh store).
            experiment = self.client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return experiment.experiment_id


_OPENED: dict[str, Store] = {}
_OPENING = threading.Lock()


def open_store(where: Store | str | None = None) -> Store:
    """The store ``where`` names (a ``Store``, a URI, or None for the default), opened once per process."""
    if isinstance(where, Store):
        return where
    uri = resolve_uri(where)
    with _OPENING:
        if uri not in _OPENED:
            _OPENED[uri] = Store(uri, _connect(uri))
        return _OPENED[uri]


def _connect(uri: str) -> Any:
    """Check the store cheaply, then let MLflow open it (creating it under a lock when it is new)."""
    scheme = scheme_of(uri)
    database = sqlite_path(uri)
    if database is not None:
        _check_sqlite(uri, database)
        with _creation_lock(database):
            return _mlflow_client(uri)
    if scheme in DATABASE_SCHEMES:
        _check_server(uri)
    elif (folder := local_folder(uri)) is not None:
        _make_folder(uri, folder)
    return _mlflow_client(uri)


def _mlflow_client(uri: str) -> Any:
    quiet_mlflow()
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(tracking_uri=uri)
        if scheme_of(uri) in DATABASE_SCHEMES:
            client.search_experiments(max_results=1)  # schema created or verified now, not mid-run
        return client
    except Exception as exc:
        reason = _first_line(exc)
        raise TrackingStoreError(f"tracking store {mask_uri(uri)} cannot be opened: {reason}") from None


def _make_folder(uri: str, folder: Path) -> None:
    """Create the store's folder, or say in one line why it cannot be (a file in the way, permissions)."""
    for parent in [folder, *folder.parents]:
        if parent.exists() and not parent.is_dir():
            raise TrackingStoreError(
                f"tracking store {mask_uri(uri)}: {parent} is a file, not a folder; "
                "give --tracking-uri a path in a folder"
            )
    problem = folder_problem(folder)
    if problem is not None:
        raise TrackingStoreError(
            f"tracking store folder {folder} cannot be written ({problem}); "
            "give --tracking-uri a writable place, e.g. sqlite:///$HOME/mlruns/mlflow.db"
        )


def _check_sqlite(uri: str, database: Path) -> None:
    """A writable folder and, when the file exists, an sqlite database that sqlite itself can read."""
    if database.exists() and not database.is_file():
        raise TrackingStoreError(f"tracking store {mask_uri(uri)}: {database} is not a file")
    if not database.exists():
        _make_folder(uri, database.parent)
        return
    with database.open("rb") as handle:
        header = handle.read(len(SQLITE_HEADER))
    reason = "" if header in (SQLITE_HEADER, b"") else "it is not an sqlite database"
    if not reason and header:
        try:
            with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30) as connection:
                connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as exc:
            reason = str(exc)
    if reason:
        raise TrackingStoreError(
            f"tracking store {database} is damaged ({reason}); move it aside or give another --tracking-uri"
        )


class _creation_lock:  # noqa: N801 - used like a function: ``with _creation_lock(path):``
    """Serialise the first opening of an sqlite store across processes (MLflow's migrations race).

    The lock file sits beside the database. Opening an existing store in a folder we may not write
    (someone else's store, read-only) goes on without the lock: nobody can be creating it there.
    """

    def __init__(self, database: Path) -> None:
        from filelock import FileLock

        self.lock = FileLock(f"{database}.lock", timeout=CREATE_LOCK_TIMEOUT_S)
        self.held = False
        self.database = database

    def __enter__(self) -> None:
        from filelock import Timeout

        try:
            self.lock.acquire()
            self.held = True
        except OSError:
            if not self.database.exists():
                raise
        except Timeout:
            raise TrackingStoreError(
                f"another process has been creating the tracking store {self.database} for "
                f"{CREATE_LOCK_TIMEOUT_S} s; if none is running, delete {self.database}.lock"
            ) from None

    def __exit__(self, *exc: object) -> None:
        if self.held:
            self.lock.release()


def _check_server(uri: str) -> None:
    """Connect once with a short timeout: an unreachable host is one line in seconds, not minutes.

    MLflow retries a failing connection ten times with exponential back-off (about 110 s) and then
    prints a long traceback; one bounded attempt here says what is wrong before that starts.
    """
    import sqlalchemy

    timeout = int(os.environ.get("SPARSEBENCH_DB_CONNECT_TIMEOUT", CONNECT_TIMEOUT_S))
    scheme = scheme_of(uri)
    connect_args = {"connect_timeout": timeout} if scheme in ("postgresql", "mysql") else {}
    try:
        engine = sqlalchemy.create_engine(uri, connect_args=connect_args, poolclass=sqlalchemy.pool.NullPool)
    except ModuleNotFoundError as exc:
        raise TrackingStoreError(
            f"tracking URI {mask_uri(uri)} needs the Python package {exc.name!r}, which is not installed; "
            f"{_driver_hint(scheme, exc.name or '')}"
        ) from None
    except Exception as exc:
        raise TrackingStoreError(f"tracking URI {mask_uri(uri)} is not valid: {_first_line(exc)}") from None
    try:
        with engine.connect():
            pass
    except Exception as exc:
        raise TrackingStoreError(
            f"cannot connect to the tracking database {mask_uri(uri)} (waited at most {timeout} s): "
            f"{_first_line(exc)}"
        ) from None
    finally:
        engine.dispose()


def _driver_hint(scheme: str, module: str) -> str:
    if scheme == "postgresql" and module.startswith("psycopg2"):
        return (
            "write the URI as postgresql://... (psycopg 3, installed by pip install 'sparsebench[postgres]') "
            "or pip install psycopg2-binary"
        )
    if scheme == "postgresql":
        return "install it with: pip install 'sparsebench[postgres]'"
    return "install the SQLAlchemy driver the URI names"


def _first_line(exc: BaseException) -> str:
    """The first line of an error, without SQLAlchemy's ``(Background on this error ...)`` footers."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return (text.splitlines() or [type(exc).__name__])[0][:200]


def quiet_mlflow() -> None:
    """No per-file progress bars and no INFO chatter from MLflow, alembic and SQLAlchemy on stderr."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow  # noqa: F401 - mlflow configures its loggers on import; quiet them afterwards

    for name in ("mlflow", "alembic", "sqlalchemy"):
        logging.getLogger(name).setLevel(logging.WARNING)
