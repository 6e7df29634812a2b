"""Workers: take a queued cell, train it, write its model and record; repeat until none is left.

Any number of workers, on one machine or many, run this loop on one campaign: the storage hands
each queued trial to one of them. A worker stops taking cells once ``--max-time`` minutes have
passed since it started (the cell it is training finishes), and leaves a cell that its row's records
say takes longer than the time left (``durations``), so a session's time box holds; what is left
stays missing for the next command. ``run_campaign`` starts ``--workers N`` processes of it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import optuna

from sparsebench import record
from sparsebench.campaign import durations, queue
from sparsebench.campaign.cells import (
    Cell,
    is_done,
    model_path,
    parent_cell,
    parent_ready,
    record_path,
    save_model,
    write_spec_copy,
)
from sparsebench.campaign.spec import CampaignSpec, Row
from sparsebench.env import Env
from sparsebench.errors import SparsebenchError
from sparsebench.sweep.study import worker_id
from sparsebench.sweep.workers import TRACKING_URI_VARIABLE


@dataclass
class WorkerOptions:
    """Where and how a worker trains; the same for every worker of one ``campaign run``."""

    storage: str
    env: Env
    """Device, data, tracking store and experiment of every cell (the command's, resolved once)."""
    max_time: float | None = None
    """Minutes after which the worker takes no new cell; nor one expected to need more than is left."""
    since: dt.datetime = field(default_factory=dt.datetime.now)
    """When the command started: cells that failed after this are not re-queued by it."""
    threads: int | None = None
    progress: bool = True
    poll: float = 10.0
    """Seconds between looks at the queue while a needed parent cell is still running."""
    label: str = "worker"


@dataclass
class WorkerSummary:
    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    stopped_by_time: bool = False


class CellSkipped(Exception):
    """The trial runs nothing (a duplicate, or a parent model that is on another machine)."""


class ClaimLost(BaseException):  # noqa: N818 - a signal, not an error
    """The storage handed this worker a trial that another worker had already claimed.

    A BaseException on purpose: optuna tells the trial's outcome for any Exception, and this trial
    is the other worker's to tell; a BaseException leaves optuna's loop untold (its heartbeat thread
    stops with it), so the trial stays running under its owner and this worker takes the next one.
    """


def run_worker(spec: CampaignSpec, rows: tuple[Row, ...], options: WorkerOptions) -> WorkerSummary:
    """Take cells until the queue holds none this worker can run, or ``max_time`` has passed."""
    record.code_commit()  # the commit of the code imported now; every record of this worker carries it
    study = queue.open_queue(spec, options.storage)
    summary, deferred = WorkerSummary(), set()
    started = time.monotonic()
    deadline = None if options.max_time is None else started + options.max_time * 60
    objective = CellObjective(spec, options, summary, deferred, {row.name for row in rows}, deadline)
    while True:
        if deadline is not None and time.monotonic() >= deadline:
            say(options, f"--max-time {options.max_time:g} min reached; taking no new cell")
            summary.stopped_by_time = True
            break
        queue.reclaim(study, spec, options.storage)
        queue.sync(study, spec, rows, options.since)
        waiting = [c for c in queue.waiting_cells(study) if c.row in objective.rows]
        if waiting and not set(waiting) <= deferred:
            take_one(study, objective)
            continue
        if waiting:
            say(options, f"left in the queue for another worker or a later command: {keys(waiting)}")
            break
        blocked = blocked_cells(study, spec, rows)
        if not blocked:
            break
        time.sleep(options.poll)
    return summary


def take_one(study: optuna.Study, objective: CellObjective) -> None:
    """Run one queued trial; one that another worker claimed first (or has finished) is let be."""
    try:
        with quiet_trials():
            study.optimize(objective, n_trials=1, catch=(SparsebenchError, CellSkipped))
    except ClaimLost:  # the trial is its owner's to tell; the worker's loop takes the next one
        pass
    except ValueError as exc:  # optuna's "Cannot tell a COMPLETE trial": see queue.claim
        if not str(exc).startswith("Cannot tell a"):
            raise


def blocked_cells(study: optuna.Study, spec: CampaignSpec, rows: tuple[Row, ...]) -> list[Cell]:
    """Missing cells whose parent is queued or running somewhere: worth waiting for."""
    grouped = queue.trials_by_cell(study)
    active = {
        cell
        for cell, trials in grouped.items()
        if any(t.state in (optuna.trial.TrialState.WAITING, optuna.trial.TrialState.RUNNING) for t in trials)
    }
    out = []
    for row in rows:
        for seed in row.seeds:
            cell = Cell(row.name, seed)
            parent = parent_cell(spec, cell)
            if parent is not None and not is_done(spec.results, cell) and parent in active:
                out.append(cell)
    return out


class CellObjective:
    """One trial = one cell: train it through the runner, then write its model and its record."""

    def __init__(
        self,
        spec: CampaignSpec,
        options: WorkerOptions,
        summary: WorkerSummary,
        deferred: set[Cell],
        rows: set[str],
        deadline: float | None = None,
    ) -> None:
        self.spec, self.options, self.summary, self.deferred = spec, options, summary, deferred
        self.rows = rows
        """The rows this worker runs (``--rows``); queued cells of others go back to the queue."""
        self.deadline = deadline
        """``time.monotonic()`` at which ``--max-time`` ends; None without one."""
        self.too_long: set[str] = set()
        """Rows already reported as outlasting ``--max-time`` (said once per row)."""

    def __call__(self, trial: optuna.Trial) -> float:
        if not queue.claim(self.options.storage, trial):
            say(self.options, f"trial {trial.number} was claimed by another worker first; taking the next")
            raise ClaimLost(trial.number)
        trial.set_user_attr("worker", worker_id())
        trial.set_user_attr("host", queue.host())
        cell = queue.cell_of(trial)  # type: ignore[arg-type]
        if cell is None:  # another worker took the last queued trial first: optuna made an empty one
            trial.set_user_attr("skipped", "no cell was queued")
            raise CellSkipped("nothing queued")
        if cell.row not in self.rows:
            self._defer(trial, cell, "not a row this worker runs (--rows)")
        self._refuse_duplicate(trial, cell)
        if is_done(self.spec.results, cell):
            trial.set_user_attr("outcome", "already done")
            return float(record.read(record_path(self.spec.results, cell)).metrics.get("test_metric") or 0.0)
        if not parent_ready(self.spec, cell):
            self._defer(trial, cell, "parent model not on this machine")
        self._refuse_overrun(trial, cell)
        try:
            return self._train(trial, cell)
        except SparsebenchError as exc:
            trial.set_user_attr("failure", str(exc)[:500])
            self.summary.failed[cell.key] = str(exc)
            say(self.options, f"{cell.key} failed: {exc}")
            raise
        except Exception as exc:  # a bug: recorded as the cell's failure, then the worker stops
            trial.set_user_attr("failure", f"{type(exc).__name__}: {exc}"[:500])
            raise

    def _refuse_duplicate(self, trial: optuna.Trial, cell: Cell) -> None:
        """Two commands may enqueue one cell at the same moment: the lower trial number trains it."""
        running = trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        if any(queue.cell_of(t) == cell and t.number < trial.number for t in running):
            trial.set_user_attr("skipped", "another worker is training this cell")
            raise CellSkipped(f"{cell.key} is being trained by another worker")

    def _refuse_overrun(self, trial: optuna.Trial, cell: Cell) -> None:
        """Leave a cell whose row's records say it needs more than what is left of ``--max-time``."""
        if self.deadline is None:
            return
        left = (self.deadline - time.monotonic()) / 60
        estimate = durations.expected_minutes(self.spec, self.spec.row(cell.row))
        if estimate is not None and estimate.minutes > left:
            if cell.row not in self.too_long:
                self.too_long.add(cell.row)
                say(
                    self.options,
                    f"{cell.row}: no cell started, one takes about {estimate.minutes:.0f} min "
                    f"({estimate.source}) and {max(left, 0):.0f} min of --max-time are left",
                )
            self._defer(trial, cell, "expected to outlast --max-time")

    def _defer(self, trial: optuna.Trial, cell: Cell, why: str) -> None:
        """A cell this worker cannot or should not run: back in the queue for a worker that can.

        Its parent's model is on another machine, its row is not among this worker's ``--rows``, or
        it would outlast ``--max-time``.
        """
        trial.set_user_attr("skipped", why)
        queue.enqueue(trial.study, cell)
        self.deferred.add(cell)
        raise CellSkipped(f"{cell.key}: {why}")

    def _train(self, trial: optuna.Trial, cell: Cell) -> float:
        from sparsebench.run.plan import RunRequest
        from sparsebench.run.train import train
        from sparsebench.tracking import load_exported

        spec, options = self.spec, self.options
        row = spec.row(cell.row)
        target = record_path(spec.results, cell)
        record.probe_target(target)
        parent = parent_cell(spec, cell)
        overrides = row.overrides(cell.seed)
        if options.threads is not None and "train.threads" not in overrides:
            overrides["train.threads"] = options.threads
        say(options, f"{cell.key}: training {row.task} / {row.method}, seed {cell.seed}")
        result = train(
            RunRequest(
                task=row.task,
                method=row.method,
                overrides=overrides,
                env=options.env,
                init_from=None if parent is None else model_path(spec.results, parent).as_posix(),
                progress=options.progress,
                run_name=f"{spec.name}/{cell.key}",
                tags={"campaign": spec.name, "campaign.row": row.name, "campaign.cell": cell.key},
            )
        )
        if result.status != "FINISHED":
            raise KeyboardInterrupt  # Ctrl-C in training: the runner kept its checkpoint and said so
        trial.set_user_attr("run_id", result.run_id)
        exported = load_exported(options.env.tracking_uri, result.run_id, f"run {result.run_id}")
        if exported is not None:
            save_model(spec, cell, exported["state_dict"])
        record.write(result.record, target)
        self.summary.done.append(cell.key)
        compression = result.summary.get("compression", float("nan"))
        say(options, f"{cell.key} done: test {result.test_metric:.2f}, {compression:.1f}x -> {target}")
        return float(result.test_metric)


def run_campaign(
    spec: CampaignSpec, rows: tuple[Row, ...], options: WorkerOptions, workers: int
) -> tuple[WorkerSummary | None, list[int]]:
    """Create the queue, fill it, and run ``workers`` workers (in this process when there is one).

    On CPU the cores are split between worker processes through ``train.threads``; on a GPU machine
    each worker gets one GPU (``CUDA_VISIBLE_DEVICES``, round robin).
    """
    study = queue.open_queue(spec, options.storage)  # created before workers race to create it
    write_spec_copy(spec)
    queue.reclaim(study, spec, options.storage)
    queue.sync(study, spec, rows, options.since)
    if workers == 1:
        return run_worker(spec, rows, options), []
    gpus = visible_gpus(options.env.device)
    threads = options.threads or (None if gpus else max(1, cpu_count() // workers))
    procs = [
        subprocess.Popen(worker_command(spec, rows, options, i, threads), env=worker_env(options, gpus, i))
        for i in range(workers)
    ]
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:  # the workers got the same Ctrl-C; let them close their runs
        for p in procs:
            p.wait()
        raise
    return None, codes


def worker_command(
    spec: CampaignSpec, rows: tuple[Row, ...], options: WorkerOptions, index: int, threads: int | None
) -> list[str]:
    """A worker process's command line: nothing secret (storage and store URLs go by environment)."""
    command = [sys.executable, "-m", "sparsebench.cli.campaign_cmd", "run", spec.source]
    command += ["--worker-index", str(index), "--since", options.since.isoformat()]
    command += ["--device", options.env.device, "--experiment", options.env.experiment]
    if len(rows) != len(spec.rows):
        command += ["--rows", ",".join(r.name for r in rows)]
    if options.max_time is not None:
        command += ["--max-time", repr(options.max_time)]
    command += ["--data-dir", str(options.env.data_dir)]
    if threads is not None:
        command += ["--threads", str(threads)]
    return command


def worker_env(options: WorkerOptions, gpus: list[str], index: int) -> dict[str, str]:
    env = dict(os.environ)
    env[TRACKING_URI_VARIABLE] = options.env.tracking_uri
    env[queue.STORAGE_VARIABLE] = options.storage
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    return env


def visible_gpus(device: str) -> list[str]:
    if device == "cpu":
        return []
    import torch

    if not torch.cuda.is_available():
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        return [d.strip() for d in visible.split(",") if d.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


def cpu_count() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def keys(cells: list[Cell]) -> str:
    return ", ".join(sorted({c.key for c in cells}))


def say(options: WorkerOptions, message: str) -> None:
    print(f"[{options.label}] {message}", file=sys.stderr, flush=True)


class _QuietTrials(logging.Filter):
    """optuna logs each finished and failed trial; a campaign says per cell what happened itself."""

    def filter(self, rec: logging.LogRecord) -> bool:
        error = rec.exc_info[1] if rec.exc_info else None
        if isinstance(error, (SparsebenchError, CellSkipped)):
            return False
        message = rec.getMessage()
        if message.startswith("Trial ") and message.endswith("failed with value None."):
            return False  # optuna's echo of the failure just told (a bug's own record keeps its traceback)
        return not message.startswith("Trial ") or rec.levelno > logging.INFO


TRIAL_LOGGERS = ("optuna.study._optimize", "optuna.study.study")


@contextlib.contextmanager
def quiet_trials() -> Iterator[None]:
    keep = _QuietTrials()
    for name in TRIAL_LOGGERS:
        logging.getLogger(name).addFilter(keep)
    try:
        yield
    finally:
        for name in TRIAL_LOGGERS:
            logging.getLogger(name).removeFilter(keep)
