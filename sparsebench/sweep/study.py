"""Sweep spec -> optuna study: storage, the trial objective, one worker's loop and ``--workers N``.

Optuna does the searching (samplers, pruners), the bookkeeping (one storage shared by every
worker) and the failure handling (heartbeat, retry of a dead worker's trial). This module turns a
trial into sparsebench training runs, logged to MLflow as children of one run per sweep.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from sparsebench.errors import ConfigError, MissingDependencyError, TrainingDivergedError
from sparsebench.run.runner import RunRequest, RunResult, train
from sparsebench.sweep.spec import SweepSpec, build_pruner, build_sampler, prunable
from sparsebench.tracking import (
    DEFAULT_STORE,
    EXPERIMENT,
    Tracker,
    default_tracking_uri,
    ensure_experiment,
    make_client,
)

DEFAULT_JOURNAL = DEFAULT_STORE / "optuna-journal.log"


@dataclass(frozen=True)
class SweepEnv:
    """Where trials run and log; one spec runs unchanged on a laptop or a GPU cluster."""

    tracking_uri: str | None = None
    experiment: str = EXPERIMENT
    data_dir: str | None = None
    device: str = "auto"

    @property
    def mlflow_uri(self) -> str:
        return self.tracking_uri or default_tracking_uri()


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


def default_storage() -> str:
    """The embedded storage: optuna's journal file ``./mlruns/optuna-journal.log``.

    ``--workers N`` processes write to one study at the same moments (trial start, per-epoch
    reports, results). SQLite lets one writer hold a database-wide lock and optuna's RDB storage
    turns a lock held past the timeout into a failed write ("database is locked"); optuna's FAQ
    advises against SQLite for parallel optimisation. The journal backend appends each operation
    to a log under a file lock and replays it, so concurrent workers on one machine do not collide,
    and the file needs no server. What it lacks is optuna's heartbeat (RDB only): on one machine a
    dead worker is recognised by its process id instead (``reclaim_orphans``); many machines share
    a PostgreSQL URL, which gets the heartbeat.
    """
    return str(DEFAULT_JOURNAL.absolute())


def storage_url(spec: SweepSpec) -> str:
    return spec.storage or default_storage()


def is_rdb(url: str) -> bool:
    """``dialect://...`` is an SQLAlchemy URL; anything else is the path of a journal file."""
    return "://" in url


def masked(url: str) -> str:
    """The URL without its password, for logs and MLflow tags."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def sweep_key(spec: SweepSpec) -> str:
    """Tags every MLflow run of one study in one storage (study names repeat across storages)."""
    return hashlib.sha1(f"{masked(storage_url(spec))}|{spec.study}".encode()).hexdigest()[:16]


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
                f"storage {masked(url)} needs the {exc.name} driver: pip install 'sparsebench[postgres]'"
            ) from exc
        except sqlalchemy.exc.SQLAlchemyError as exc:
            # Workers starting together on a fresh database race to create optuna's tables
            # (optuna issue #1092); the loser finds them created when it tries again.
            racing = isinstance(exc, (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError))
            if (racing or "already exists" in str(exc)) and attempt < 4:
                time.sleep(0.5 + random.random())
                continue
            reason = str(exc).strip().splitlines()[0]
            raise ConfigError(
                f"cannot open storage {masked(url)} ({reason}); check the URL and the server"
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
    with _quiet():
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
    with _quiet():
        return cls(max_retry=max_retry)


def open_study(
    spec: SweepSpec, storage: optuna.storages.BaseStorage, seed_salt: tuple[int, ...] = ()
) -> optuna.Study:
    """Create the study, or join it when another worker (or an earlier run) already did."""
    directions = [o.direction for o in spec.objectives]
    names = [o.metric for o in spec.objectives]
    with _quiet():
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
                f"study {spec.study!r} in {masked(storage_url(spec))} already optimises "
                f"{study.metric_names or existing}; give this sweep another `study:` name"
            )
        if study.metric_names is None:
            study.set_metric_names(names)
    if "spec" not in study.user_attrs:
        study.set_user_attr("spec", spec.to_dict())
    for params in spec.enqueue:
        study.enqueue_trial(params, skip_if_exists=True)
    # Salting with the trial count keeps a resumed, seeded sampler from re-proposing its first points.
    study.sampler = build_sampler(spec, (*seed_salt, len(study.trials))) or study.sampler
    return study


class BudgetTaken(Exception):
    """Two workers started the study's last trial at once; the later trial number steps back."""


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


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def reclaim_orphans(study: optuna.Study, spec: SweepSpec) -> None:
    """Fail and re-queue running trials whose worker process on this machine is gone.

    The journal storage has no heartbeat, so a SIGKILLed local worker would leave its trial
    RUNNING forever. The trial's ``worker`` attribute names its host and process; only trials of
    this host are judged, and optuna's retry callback re-queues them as a heartbeat would.
    """
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner_host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
        if owner_host != host or not pid.isdigit() or _process_alive(int(pid)):
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


def run_worker(spec: SweepSpec, env: SweepEnv, worker_index: int = 0) -> optuna.Study:
    """Run trials until the study has ``n_trials`` (or the timeout passes); safe to run many at once.

    A worker keeps going while a retried trial waits, and with a heartbeat it also waits for
    running trials of other workers: one of them may die, and its trial must find a taker.
    """
    storage = open_storage(spec)
    study = open_study(spec, storage, (worker_index,))
    heartbeat = is_rdb(storage_url(spec))
    objective = TrialObjective(spec, env, ensure_parent_run(spec, env), sweep_key(spec))
    started = time.monotonic()
    while True:
        if heartbeat:
            with _quiet():
                optuna.storages.fail_stale_trials(study)
        else:
            reclaim_orphans(study, spec)
        state = progress(study)
        if spec.timeout is not None and time.monotonic() - started > spec.timeout:
            print(f"budget.timeout of {spec.timeout:g} s reached; starting no new trial", file=sys.stderr)
            break
        if state.waiting == 0 and state.used >= spec.n_trials:
            if heartbeat and state.running:
                time.sleep(spec.heartbeat.interval)
                continue
            break
        study.optimize(objective, n_trials=1, catch=objective.expected_failures)
    state = progress(study)
    if state.finished >= spec.n_trials and not state.running and not state.waiting:
        close_parent_run(spec, env, study)
    return study


def run_sweep(spec: SweepSpec, env: SweepEnv, workers: int = 1) -> tuple[optuna.Study, list[int]]:
    """Create or resume the study and run ``workers`` worker processes on it.

    Returns the study and the exit codes of the worker processes (empty for one in-process worker).
    On a GPU machine each worker gets one GPU (``CUDA_VISIBLE_DEVICES``, round robin); on CPU the
    cores are split between workers through ``train.threads``.
    """
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    open_study(spec, open_storage(spec))  # create the study and the MLflow parent before workers race
    ensure_parent_run(spec, env)
    if workers == 1:
        return run_worker(spec, env), []
    gpus = _visible_gpus(env.device, workers)
    fixed = dict(spec.fixed)
    if not gpus:
        fixed.setdefault("train.threads", max(1, _cpu_count() // workers))
    resolved = replace(spec, storage=storage_url(spec), fixed=fixed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sweep.yaml"
        path.write_text(yaml.safe_dump(resolved.to_dict(), sort_keys=False))
        procs = []
        for i in range(workers):
            child_env = dict(os.environ)
            if gpus:
                child_env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
            procs.append(subprocess.Popen(worker_command(path, env, i), env=child_env))
        try:
            codes = [p.wait() for p in procs]
        except KeyboardInterrupt:  # the workers got the same Ctrl-C; let them record it
            for p in procs:
                p.wait()
            raise
    return open_study(spec, open_storage(spec)), codes


def worker_command(spec_path: Path, env: SweepEnv, index: int) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "sparsebench.cli.sweep_cmd",
        str(spec_path),
        "--worker-index",
        str(index),
    ]
    command += ["--tracking-uri", env.mlflow_uri, "--experiment", env.experiment, "--device", env.device]
    if env.data_dir:
        command += ["--data-dir", env.data_dir]
    return command


class TrialObjective:
    """One optuna trial = one training run per seed of the suggested config, logged under the sweep run.

    With one seed the training run is the trial's MLflow run; with several, a trial run holds the
    means and the seed runs are nested under it. Runs carry ``sweep.trial`` (the trial number) and
    the trial keeps ``mlflow_run_id``, so either finds the other.
    """

    expected_failures = (TrainingDivergedError, BudgetTaken)
    """Failures that end one trial, not the sweep (optuna marks the trial FAIL and goes on)."""

    def __init__(self, spec: SweepSpec, env: SweepEnv, parent_run_id: str, key: str) -> None:
        self.spec, self.env, self.parent_run_id, self.key = spec, env, parent_run_id, key

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        trial.set_user_attr("worker", worker_id())
        # Workers check the budget before asking for a trial, but two can ask at the same moment;
        # the trial numbers (handed out by the storage) settle which one runs.
        counted = sorted(t.number for t in trial.study.get_trials(deepcopy=False) if uses_budget(t))
        if trial.number not in counted[: self.spec.n_trials]:
            trial.set_user_attr("skipped", "another worker started the last trial of the budget")
            raise BudgetTaken(f"trial {trial.number} is beyond n_trials={self.spec.n_trials}")
        self._retire_lost_attempts(trial)
        overrides = {**self.spec.overrides(), **self.suggest(trial)}
        tags = {"sweep.key": self.key, "sweep.study": self.spec.study, "sweep.trial": str(trial.number)}
        name = f"{self.spec.study}-trial-{trial.number}"
        if len(self.spec.seeds) == 1:
            results = [self._train(trial, overrides, self.spec.seeds[0], self.parent_run_id, tags, name)]
            trial.set_user_attr("mlflow_run_id", results[0].run_id)
        else:
            results = self._train_seeds(trial, overrides, tags, name)
        values = [statistics.fmean(_metric(r, o.metric) for r in results) for o in self.spec.objectives]
        trial.set_user_attr("val_metric", statistics.fmean(r.val_metric for r in results))
        trial.set_user_attr("test_metric", statistics.fmean(r.test_metric for r in results))  # reported only
        trial.set_user_attr("compression", statistics.fmean(r.summary["compression"] for r in results))
        return values[0] if len(values) == 1 else values

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """The trial's config overrides: the spec's space, else the method plugin's own."""
        if self.spec.space is not None:
            return {p.key: p.suggest(trial) for p in self.spec.space}
        from sparsebench.registry import METHODS

        method_cls = METHODS.get(self.spec.method)
        return method_cls(method_cls.Config()).search_space(trial)

    def _train_seeds(
        self, trial: optuna.Trial, overrides: dict[str, Any], tags: dict[str, str], name: str
    ) -> list[RunResult]:
        tracker = Tracker.open(
            self.env.tracking_uri,
            self.env.experiment,
            tags={"task": self.spec.task, "method": self.spec.method, **tags},
            run_name=name,
            parent_run_id=self.parent_run_id,
        )
        trial.set_user_attr("mlflow_run_id", tracker.run_id)
        tracker.log_params({**overrides, "sweep.seeds": list(self.spec.seeds)})
        status = "FAILED"
        try:
            results = [
                self._train(trial, overrides, seed, tracker.run_id, tags, f"{name}-seed-{seed}")
                for seed in self.spec.seeds
            ]
            means = {k: statistics.fmean(r.summary[k] for r in results) for k in results[0].summary}
            tracker.log_metrics(
                {
                    "final_val_metric": statistics.fmean(r.val_metric for r in results),
                    "test_metric": statistics.fmean(r.test_metric for r in results),
                    **means,
                }
            )
            status = "FINISHED"
            return results
        except optuna.TrialPruned:
            tracker.set_tags({"sweep.state": "pruned"})
            status = "KILLED"
            raise
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            tracker.finish(status)

    def _train(
        self,
        trial: optuna.Trial,
        overrides: dict[str, Any],
        seed: int,
        parent: str,
        tags: dict[str, str],
        name: str,
    ) -> RunResult:
        first_seed = seed == self.spec.seeds[0]
        request = RunRequest(
            task=self.spec.task,
            method=self.spec.method,
            overrides={**overrides, "train.seed": seed},
            device=self.env.device,
            data_dir=self.env.data_dir,
            tracking_uri=self.env.tracking_uri,
            experiment=self.env.experiment,
            progress=False,
            parent_run_id=parent,
            run_name=name,
            tags={**tags, "sweep.seed": str(seed)},
            # Optuna prunes on one curve per trial; with several seeds that is the first seed's.
            on_epoch=_reporter(trial) if first_seed and prunable(self.spec) else None,
        )
        try:
            result = train(request)
        except optuna.TrialPruned:
            self._mark_runs(trial.number, "KILLED", {"sweep.state": "pruned"}, seed)
            raise
        except TrainingDivergedError as exc:
            trial.set_user_attr("failure", str(exc))
            self._mark_runs(trial.number, "FAILED", {"sweep.state": "failed"}, seed)
            raise
        if result.status != "FINISHED":  # the runner turned Ctrl-C into a KILLED run; stop the sweep
            trial.set_user_attr("interrupted", True)
            raise KeyboardInterrupt
        return result

    def _mark_runs(self, number: int, status: str, tags: dict[str, str], seed: int) -> None:
        """Set the state the runner could not know (pruned) on the training run of one seed."""
        for run in trial_runs(self.env, self.key, number, seed):
            tracker = Tracker(make_client(self.env.tracking_uri), run.info.run_id)
            tracker.set_tags(tags)
            tracker.finish(status)

    def _retire_lost_attempts(self, trial: optuna.Trial) -> None:
        """A retried trial: close the MLflow runs its dead worker left RUNNING."""
        frozen = next(
            t
            for t in trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.number == trial.number
        )
        for number in frozen.system_attrs.get("retry_history", []):
            for run in trial_runs(self.env, self.key, number):
                if run.info.status == "RUNNING":
                    tracker = Tracker(make_client(self.env.tracking_uri), run.info.run_id)
                    tracker.set_tags({"sweep.state": "lost", "sweep.retried_as": str(trial.number)})
                    tracker.finish("KILLED")


def trial_runs(env: SweepEnv, key: str, number: int, seed: int | None = None) -> list[Any]:
    """The MLflow runs of one trial (the trial run and its seed runs), found by their tags."""
    client = make_client(env.tracking_uri)
    experiment = client.get_experiment_by_name(env.experiment)
    if experiment is None:
        return []
    query = f"tags.`sweep.key` = '{key}' and tags.`sweep.trial` = '{number}'"
    if seed is not None:
        query += f" and tags.`sweep.seed` = '{seed}'"
    return client.search_runs([experiment.experiment_id], filter_string=query)


def _reporter(trial: optuna.Trial) -> Any:
    def report(epoch: int, val_metric: float) -> None:
        trial.report(val_metric, step=epoch + 1)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch + 1} (validation {val_metric:.3f})")

    return report


def _metric(result: RunResult, name: str) -> float:
    return result.val_metric if name == "val_metric" else float(result.summary[name])


def ensure_parent_run(spec: SweepSpec, env: SweepEnv) -> str:
    """The sweep's MLflow run (found by tag, so every worker on every machine shares it)."""
    client = make_client(env.tracking_uri)
    experiment_id = ensure_experiment(client, env.experiment, env.tracking_uri)
    runs = _parent_runs(client, experiment_id, spec)
    if not runs:
        tracker = Tracker.open(
            env.tracking_uri,
            env.experiment,
            tags={
                "task": spec.task,
                "method": spec.method,
                "sweep.role": "parent",
                "sweep.key": sweep_key(spec),
                "sweep.study": spec.study,
                "sweep.storage": masked(storage_url(spec)),
            },
            run_name=f"sweep-{spec.study}",
        )
        tracker.log_params(_parent_params(spec))
        tracker.log_text(yaml.safe_dump(spec.to_dict(), sort_keys=False), "sweep.yaml")
        # Workers that start together may each create one; all keep the oldest, the others go.
        runs = _parent_runs(client, experiment_id, spec)
        for run in runs[1:]:
            if run.info.run_id == tracker.run_id:
                client.delete_run(tracker.run_id)
    parent = runs[0]
    if parent.info.status != "RUNNING":
        client.update_run(parent.info.run_id, status="RUNNING")
    return parent.info.run_id


def find_parent_run(spec: SweepSpec, env: SweepEnv) -> str | None:
    """The sweep's MLflow run id in this tracking store, without creating one."""
    client = make_client(env.tracking_uri)
    experiment = client.get_experiment_by_name(env.experiment)
    runs = _parent_runs(client, experiment.experiment_id, spec) if experiment else []
    return runs[0].info.run_id if runs else None


def close_parent_run(spec: SweepSpec, env: SweepEnv, study: optuna.Study) -> None:
    """Log the outcome on the sweep run: counts and the selected trials (validation only)."""
    run_id = find_parent_run(spec, env)
    if run_id is None:
        return
    tracker = Tracker(make_client(env.tracking_uri), run_id)
    state = progress(study)
    metrics = {
        "trials_complete": state.complete,
        "trials_pruned": state.pruned,
        "trials_failed": state.failed,
    }
    best = best_trials(study)
    if best and len(spec.objectives) == 1:
        metrics[f"best_{spec.objectives[0].metric}"] = best[0].values[0]
        metrics["best_trial"] = best[0].number
    tracker.log_metrics(metrics)
    tracker.set_tags(
        {
            "sweep.best_trials": ",".join(str(t.number) for t in best),
            "sweep.best_runs": ",".join(str(t.user_attrs.get("mlflow_run_id", "")) for t in best),
        }
    )
    tracker.finish("FINISHED")


def best_trials(study: optuna.Study, top: int = 5) -> list[FrozenTrial]:
    """The Pareto front (several objectives) or the ``top`` best trials, by validation results only."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return []
    if len(study.directions) > 1:
        return sorted(study.best_trials, key=lambda t: tuple(t.values))
    sign = 1.0 if study.direction == optuna.study.StudyDirection.MINIMIZE else -1.0
    return sorted(complete, key=lambda t: (sign * t.value, t.number))[:top]


def load_existing_study(spec: SweepSpec) -> optuna.Study:
    url = storage_url(spec)
    if not is_rdb(url) and not Path(url).expanduser().exists():
        raise ConfigError(f"no sweep has run with storage {url} yet; start it with `sparsebench sweep SPEC`")
    try:
        with _quiet():
            return optuna.load_study(study_name=spec.study, storage=open_storage(spec))
    except KeyError:
        raise ConfigError(
            f"no study {spec.study!r} in {masked(url)} yet; start it with `sparsebench sweep SPEC`"
        ) from None


def _parent_runs(client: Any, experiment_id: str, spec: SweepSpec) -> list[Any]:
    query = f"tags.`sweep.key` = '{sweep_key(spec)}' and tags.`sweep.role` = 'parent'"
    runs = client.search_runs([experiment_id], filter_string=query)
    return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))


def _parent_params(spec: SweepSpec) -> dict[str, Any]:
    return {
        "task.name": spec.task,
        "method.name": spec.method,
        "sweep.study": spec.study,
        "sweep.n_trials": spec.n_trials,
        "sweep.seeds": list(spec.seeds),
        "sweep.epochs": spec.epochs,
        "sweep.timeout": spec.timeout,
        "sweep.objectives": [f"{o.direction} {o.metric}" for o in spec.objectives],
        "sweep.space": "method default" if spec.space is None else [p.key for p in spec.space],
        "sweep.sampler": spec.sampler.name if spec.sampler else "optuna default",
        "sweep.pruner": spec.pruner.name if spec.pruner else "default",
        "sweep.storage": masked(storage_url(spec)),
        **spec.fixed,
    }


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


def _visible_gpus(device: str, workers: int) -> list[str]:
    if device == "cpu":
        return []
    import torch

    if not torch.cuda.is_available():
        return []
    if device not in ("auto", "cuda"):
        raise ConfigError(f"--workers gives each worker its own GPU; use --device auto or cuda, not {device}")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        return [d.strip() for d in visible.split(",") if d.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


def _cpu_count() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Hide optuna's ExperimentalWarning for the features used on purpose (heartbeat, metric names)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield
