"""The optuna study of a sweep: create or join it, count its trials against the budget, pick the best.

Optuna does the searching (samplers, pruners), the bookkeeping (one storage shared by every worker)
and the failure handling (heartbeat, retry of a dead worker's trial). This module holds what the
workers, the objective and ``sweep status`` share about one study.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from sparsebench.errors import ConfigError
from sparsebench.sweep.components import build_pruner, build_sampler
from sparsebench.sweep.spec import SweepSpec, public_dict
from sparsebench.sweep.storage import is_rdb, open_storage, quiet, retry_callback, storage_url
from sparsebench.tracking import mask_uri


@dataclass(frozen=True)
class Progress:
    """Trials by state, as far as the budget of ``n_trials`` is concerned."""

    complete: int = 0
    pruned: int = 0
    failed: int = 0
    """Diverged (NaN) trials: a result about their parameters, so they use up budget."""
    lost: int = 0
    """Failed for other reasons (a killed worker, Ctrl-C, a crash): not counted, retried or resampled."""
    running: int = 0
    waiting: int = 0

    @property
    def used(self) -> int:
        return self.complete + self.pruned + self.failed + self.running + self.waiting

    @property
    def finished(self) -> int:
        return self.complete + self.pruned + self.failed


class BudgetTaken(Exception):
    """Two workers started the study's last trial at once; the later trial number steps back."""


def open_study(
    spec: SweepSpec, storage: optuna.storages.BaseStorage, seed_salt: tuple[int, ...] = ()
) -> optuna.Study:
    """Create the study, or join it when another worker (or an earlier run) already did."""
    directions = [o.direction for o in spec.objectives]
    names = [o.metric for o in spec.objectives]
    with quiet():
        study = optuna.create_study(
            storage=storage,
            study_name=spec.study,
            directions=directions,
            pruner=build_pruner(spec),
            load_if_exists=True,
        )
        existing = [d.name.lower() for d in study.directions]
        if existing != directions or study.metric_names not in (None, names):
            raise ConfigError(
                f"study {spec.study!r} in {mask_uri(storage_url(spec))} already optimises "
                f"{study.metric_names or existing}; give this sweep another `study:` name"
            )
        if study.metric_names is None:
            study.set_metric_names(names)
    if "spec" not in study.user_attrs:
        study.set_user_attr("spec", public_dict(spec))
    for params in spec.enqueue:
        study.enqueue_trial(params, skip_if_exists=True)
    # Salting with the trial count keeps a resumed, seeded sampler from re-proposing its first points.
    study.sampler = build_sampler(spec, (*seed_salt, len(study.trials))) or study.sampler
    return study


def load_existing_study(spec: SweepSpec) -> optuna.Study:
    """The spec's study as it is; an error (not a new, empty study) when the sweep never ran."""
    url = storage_url(spec)
    if not is_rdb(url) and not Path(url).expanduser().exists():
        raise ConfigError(f"no sweep has run with storage {url} yet; start it with `sparsebench sweep SPEC`")
    try:
        with quiet():
            return optuna.load_study(study_name=spec.study, storage=open_storage(spec))
    except KeyError:
        raise ConfigError(
            f"no study {spec.study!r} in {mask_uri(url)} yet; start it with `sparsebench sweep SPEC`"
        ) from None


def progress(study: optuna.Study) -> Progress:
    counts: Counter[str] = Counter()
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.FAIL:
            if "skipped" not in t.user_attrs:
                counts["failed" if "failure" in t.user_attrs else "lost"] += 1
        else:
            counts[t.state.name.lower()] += 1
    return Progress(**{f.name: counts[f.name] for f in fields(Progress)})


def uses_budget(trial: FrozenTrial) -> bool:
    """Whether a trial counts against ``n_trials`` (see ``Progress``)."""
    return trial.state != TrialState.FAIL or "failure" in trial.user_attrs


def best_trials(study: optuna.Study, top: int = 5) -> list[FrozenTrial]:
    """The Pareto front (several objectives) or the ``top`` best trials, by validation results only."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return []
    if len(study.directions) > 1:
        return sorted(study.best_trials, key=lambda t: tuple(t.values))
    sign = 1.0 if study.direction == optuna.study.StudyDirection.MINIMIZE else -1.0
    return sorted(complete, key=lambda t: (sign * t.value, t.number))[:top]


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def reclaim_orphans(study: optuna.Study, spec: SweepSpec) -> None:
    """Fail and re-queue running trials whose worker process on this machine is gone.

    The journal storage has no heartbeat, so a SIGKILLed local worker would leave its trial
    RUNNING forever. The trial's ``worker`` attribute names its host and process; only trials of
    this host are judged, and optuna's retry callback re-queues them as a heartbeat would.
    """
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not orphaned(trial):
            continue
        try:
            study.tell(trial.number, state=TrialState.FAIL)
        except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # another worker reclaimed it first
        print(
            f"trial {trial.number}: its worker {trial.user_attrs['worker']} is gone; retrying it",
            file=sys.stderr,
        )
        retry_callback(spec.heartbeat.max_retry)(study, _frozen(study, trial.number))


def orphaned(trial: FrozenTrial) -> bool:
    """Whether a RUNNING trial's worker was a process of this machine that no longer exists.

    Only this host's workers can be judged by process id; another machine's count as alive (their
    heartbeat, where the storage has one, is optuna's to judge).
    """
    owner_host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
    return owner_host == socket.gethostname() and pid.isdigit() and not _process_alive(int(pid))


def _frozen(study: optuna.Study, number: int) -> FrozenTrial:
    return next(t for t in study.get_trials(deepcopy=True) if t.number == number)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError, IndexError):  # a killed child its parent has not reaped yet
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True
