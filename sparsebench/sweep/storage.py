"""Where a study lives: optuna's journal file on one machine, an RDB (PostgreSQL) across many.

Every URL printed or tagged goes through ``mask_uri``: a PostgreSQL URL usually carries a password.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from sparsebench.errors import ConfigError, MissingDependencyError
from sparsebench.tracking import DEFAULT_STORE, mask_uri

if TYPE_CHECKING:
    from sparsebench.sweep.spec import SweepSpec

DEFAULT_JOURNAL = DEFAULT_STORE / "optuna-journal.log"


def default_storage() -> str:
    """The embedded storage: optuna's journal file ``./mlruns/optuna-journal.log``.

    ``--workers N`` processes write to one study at the same moments (trial start, per-epoch
    reports, results). SQLite lets one writer hold a database-wide lock and optuna's RDB storage
    turns a lock held past the timeout into a failed write ("database is locked"); optuna's FAQ
    advises against SQLite for parallel optimisation. The journal backend appends each operation
    to a log under a file lock and replays it, so concurrent workers on one machine do not collide,
    and the file needs no server. What it lacks is optuna's heartbeat (RDB only): on one machine a
    dead worker is recognised by its process id instead (``study.reclaim_orphans``); many machines
    share a PostgreSQL URL, which gets the heartbeat.
    """
    return str(DEFAULT_JOURNAL.absolute())


def storage_url(spec: SweepSpec) -> str:
    return spec.storage or default_storage()


def is_rdb(url: str) -> bool:
    """``dialect://...`` is an SQLAlchemy URL; anything else is the path of a journal file."""
    return "://" in url


def _database(url: str) -> tuple[str, ...] | None:
    """What identifies the database an SQLAlchemy URL opens (dialect family, host, port, name)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    family = parsed.get_backend_name()
    if family == "sqlite":
        return (family, str(Path(parsed.database or "").expanduser().resolve()))
    return (family, str(parsed.host or ""), str(parsed.port or ""), str(parsed.database or ""))


def check_separate_databases(tracking_uri: str, storage: str) -> None:
    """Refuse one database for both the MLflow store and the optuna storage, before anything runs.

    Both keep their schema version in a table named ``alembic_version``: whichever creates its
    tables second finds the other's revision there and cannot migrate, so the study (or the store)
    breaks on first use, after workers have started.
    """
    if not (is_rdb(tracking_uri) and is_rdb(storage)):
        return
    same = _database(tracking_uri)
    if same is not None and same == _database(storage):
        raise ConfigError(
            f"the tracking store and the optuna storage are one database ({mask_uri(storage)}): both keep "
            "an alembic_version table and break each other; give the storage a database of its own "
            "(e.g. .../optuna)"
        )


def sweep_key(spec: SweepSpec) -> str:
    """Tags every MLflow run of one study in one storage (study names repeat across storages)."""
    return hashlib.sha1(f"{mask_uri(storage_url(spec))}|{spec.study}".encode()).hexdigest()[:16]


def open_storage(spec: SweepSpec) -> optuna.storages.BaseStorage:
    url = storage_url(spec)
    if not is_rdb(url):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(url).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    import sqlalchemy.exc

    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(5):
        try:
            return _rdb_storage(url, spec)
        except ModuleNotFoundError as exc:
            raise MissingDependencyError(
                f"storage {mask_uri(url)} needs the {exc.name} driver: pip install 'sparsebench[postgres]'"
            ) from exc
        except sqlalchemy.exc.SQLAlchemyError as exc:
            # Workers starting together on a fresh database race to create optuna's tables
            # (optuna issue #1092); the loser finds them created when it tries again.
            racing = isinstance(exc, (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError))
            if (racing or "already exists" in str(exc)) and attempt < 4:
                time.sleep(0.5 + random.random())
                continue
            reason = mask_uri(str(exc).strip().splitlines()[0])
            raise ConfigError(
                f"cannot open storage {mask_uri(url)} ({reason}); check the URL and the server"
            ) from exc
    raise AssertionError("unreachable")


def _rdb_storage(url: str, spec: SweepSpec) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage with its heartbeat and the retry of trials whose worker went silent."""
    accepted = optuna.storages.RDBStorage.__init__.__code__.co_varnames
    callback_arg = (  # renamed in optuna 4.9
        "heartbeat_stale_trial_callback"
        if "heartbeat_stale_trial_callback" in accepted
        else "failed_trial_callback"
    )
    with quiet():
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs={} if url.startswith("sqlite") else {"pool_pre_ping": True},
            heartbeat_interval=spec.heartbeat.interval,
            grace_period=spec.heartbeat.grace_period,
            **{callback_arg: retry_callback(spec.heartbeat.max_retry)},
        )


def retry_callback(max_retry: int | None) -> Any:
    """Optuna's callback that re-queues a dead worker's trial (renamed in optuna 4.9)."""
    cls = (
        getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
        or optuna.storages.RetryFailedTrialCallback
    )
    with quiet():
        return cls(max_retry=max_retry)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Hide optuna's ExperimentalWarning for the features used on purpose (heartbeat, metric names)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield
