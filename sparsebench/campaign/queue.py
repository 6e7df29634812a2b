"""The work queue: one optuna study per campaign, one enqueued trial per cell that still needs running.

Optuna's storage does what a queue must do across processes and machines: it hands each waiting
trial to exactly one worker, keeps a heartbeat of running trials (RDB storages: the sqlite default on
one machine, PostgreSQL across many), and ``RetryFailedTrialCallback`` puts a silent worker's trial
back in the queue. A cell travels in a trial's user attributes (``cell``, ``row``, ``seed``) rather
than as optuna parameters: a categorical parameter's choices are fixed for the life of a study, and a
campaign gains rows over time.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from sparsebench.campaign.cells import Cell, cells_of, is_done, parent_ready
from sparsebench.campaign.spec import CampaignSpec, Row
from sparsebench.errors import ConfigError
from sparsebench.sweep.storage import is_rdb, open_storage, quiet
from sparsebench.sweep.study import reclaim_orphans, worker_id
from sparsebench.tracking import DEFAULT_STORE, mask_uri

DEFAULT_STORAGE = DEFAULT_STORE / "optuna-campaigns.db"
STORAGE_VARIABLE = "SPARSEBENCH_CAMPAIGN_STORAGE"
"""How worker processes learn the storage URL: the environment, since argv is visible in ``ps``."""


@dataclass(frozen=True)
class QueueSettings:
    """What ``sweep.storage.open_storage`` reads from a spec: the URL and the heartbeat settings."""

    storage: str
    heartbeat: Any


def storage_url(spec: CampaignSpec, override: str | None = None) -> str:
    """``--storage``, else the spec's, else ``sqlite:///./mlruns/optuna-campaigns.db`` made absolute."""
    return override or spec.storage or f"sqlite:///{DEFAULT_STORAGE.absolute()}"


def study_name(spec: CampaignSpec) -> str:
    return f"campaign-{spec.name}"


def storage_exists(url: str) -> bool:
    """False for a local file (sqlite or journal) not created yet; a server is assumed to exist."""
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///")).is_file()
    return is_rdb(url) or Path(url).expanduser().is_file()


def open_queue(spec: CampaignSpec, url: str) -> optuna.Study:
    """The campaign's study, created on first use."""
    storage = open_storage(QueueSettings(url, spec.heartbeat))  # type: ignore[arg-type]
    with quiet(), _no_info():
        return optuna.create_study(storage=storage, study_name=study_name(spec), load_if_exists=True)


def load_queue(spec: CampaignSpec, url: str) -> optuna.Study | None:
    """The campaign's study if it exists (status never creates a storage or a study)."""
    if not storage_exists(url):
        return None
    storage = open_storage(QueueSettings(url, spec.heartbeat))  # type: ignore[arg-type]
    try:
        with quiet(), _no_info():
            return optuna.load_study(study_name=study_name(spec), storage=storage)
    except KeyError:
        return None


@contextlib.contextmanager
def _no_info() -> Iterator[None]:
    """optuna's "study created / using an existing study" lines say nothing a campaign user needs."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


def host() -> str:
    return socket.gethostname()


def cell_of(trial: FrozenTrial) -> Cell | None:
    key = trial.user_attrs.get("cell")
    return Cell.parse(key) if isinstance(key, str) else None


def trials_by_cell(study: optuna.Study) -> dict[Cell, list[FrozenTrial]]:
    grouped: dict[Cell, list[FrozenTrial]] = defaultdict(list)
    for trial in study.get_trials(deepcopy=False):
        cell = cell_of(trial)
        if cell is not None:
            grouped[cell].append(trial)
    return grouped


def is_failure(trial: FrozenTrial) -> bool:
    """Failed by the cell itself (an error in training), not by a lost worker or a skip."""
    return trial.state == TrialState.FAIL and "failure" in trial.user_attrs


def is_lost(trial: FrozenTrial) -> bool:
    """Failed because its worker went silent or died (the retry callback re-queues it)."""
    attrs = trial.user_attrs
    return trial.state == TrialState.FAIL and "failure" not in attrs and "skipped" not in attrs


def finished_elsewhere(trials: list[FrozenTrial]) -> FrozenTrial | None:
    """A complete trial of another machine: its record is there, to be committed and pulled."""
    here = host()
    return next(
        (t for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get("host", here) != here), None
    )


def should_enqueue(
    spec: CampaignSpec, cell: Cell, trials: list[FrozenTrial], since: dt.datetime, max_retry: int | None
) -> bool:
    """Whether a cell needs a new trial in the queue now.

    Not when its record is here, a trial of it waits or runs, another machine finished it, it
    failed since this command started (a failure is not retried in a loop; the next command retries
    it), its worker died more often than ``max_retry`` allows, or its parent's model is not here yet.
    """
    if is_done(spec.results, cell):
        return False
    if any(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in trials):
        return False
    if finished_elsewhere(trials) is not None:
        return False
    recent = [t for t in trials if t.datetime_start is not None and t.datetime_start >= since]
    if any(is_failure(t) for t in recent):
        return False
    if max_retry is not None and sum(is_lost(t) for t in recent) > max_retry:
        return False
    return parent_ready(spec, cell)


def sync(study: optuna.Study, spec: CampaignSpec, rows: tuple[Row, ...], since: dt.datetime) -> list[Cell]:
    """Enqueue a trial for each cell of ``rows`` that needs one; returns the cells enqueued."""
    grouped = trials_by_cell(study)
    added = []
    for cell in cells_of(rows):
        if should_enqueue(spec, cell, grouped.get(cell, []), since, spec.heartbeat.max_retry):
            enqueue(study, cell)
            added.append(cell)
    return added


def enqueue(study: optuna.Study, cell: Cell) -> None:
    study.enqueue_trial({}, user_attrs={"cell": cell.key, "row": cell.row, "seed": cell.seed})


def reclaim(study: optuna.Study, spec: CampaignSpec, url: str) -> None:
    """Re-queue the cells of dead workers: local ones by process id at once, others by heartbeat."""
    reclaim_orphans(study, spec)  # type: ignore[arg-type]  # reads spec.heartbeat.max_retry only
    if is_rdb(url):
        with quiet():
            optuna.storages.fail_stale_trials(study)


CLAIMS_TABLE = "sparsebench_trial_claims"
"""Claims by (study, trial number); queues made before it kept theirs by optuna's private trial id."""


def claim(url: str, trial: optuna.Trial) -> bool:
    """Whether this worker is the one that trains ``trial``; False when another worker already is.

    optuna pops a waiting trial with SELECT ... FOR UPDATE, which SQLite ignores: two workers
    starting at the same moment can both be handed one trial, both train its cell, and the second
    ``tell`` fails ("Cannot tell a COMPLETE trial"). On SQLite the claim is a row of a table of our
    own in the same database file, inserted once (its primary key is the study's name and the trial's
    number, optuna's public names for it), so it lives and dies with the queue; PostgreSQL's row lock
    already hands each trial to one worker.
    """
    if not url.startswith("sqlite:///"):
        return True
    import sqlite3

    with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"), timeout=60)) as db, db:
        db.execute(
            f"CREATE TABLE IF NOT EXISTS {CLAIMS_TABLE} "
            "(study TEXT, number INTEGER, worker TEXT, PRIMARY KEY (study, number))"
        )
        try:
            db.execute(
                f"INSERT INTO {CLAIMS_TABLE} VALUES (?, ?, ?)",
                (trial.study.study_name, trial.number, worker_id()),
            )
        except sqlite3.IntegrityError:
            return False
    return True


def waiting_cells(study: optuna.Study) -> list[Cell]:
    return [c for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)) if (c := cell_of(t))]


def check_rows(spec: CampaignSpec, names: list[str] | None) -> tuple[Row, ...]:
    rows = spec.select(names)
    if not rows:
        raise ConfigError(f"campaign {spec.name} has no rows to run")
    return rows


def describe_storage(url: str) -> str:
    return mask_uri(url)
