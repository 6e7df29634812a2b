"""Workers: one loop that runs trials until the budget is used, and ``--workers N`` processes of it.

Any number of workers, on one machine or many, may run the loop on one study at once: the storage
hands out trial numbers, and the budget is counted from the study, never from a worker's memory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import optuna
import yaml

from sparsebench.env import Env
from sparsebench.errors import ConfigError
from sparsebench.sweep.objective import TrialObjective
from sparsebench.sweep.runs import close_parent_run, ensure_parent_run
from sparsebench.sweep.spec import SweepSpec
from sparsebench.sweep.storage import is_rdb, open_storage, quiet, storage_url, sweep_key
from sparsebench.sweep.study import open_study, progress, reclaim_orphans

TRACKING_URI_VARIABLE = "MLFLOW_TRACKING_URI"
"""How a worker process learns the tracking URI: the environment, since argv is visible in ``ps``."""


def run_worker(spec: SweepSpec, env: Env, worker_index: int = 0) -> optuna.Study:
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
            with quiet():
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
        with trial_failures_logged_briefly(objective.expected_failures):
            study.optimize(objective, n_trials=1, catch=objective.expected_failures)
    state = progress(study)
    if state.finished >= spec.n_trials and not state.running and not state.waiting:
        close_parent_run(spec, env, study)
    return study


def run_sweep(spec: SweepSpec, env: Env, workers: int = 1) -> tuple[optuna.Study, list[int]]:
    """Create or resume the study and run ``workers`` worker processes on it.

    Returns the study and the exit codes of the worker processes (empty for one in-process worker;
    negative for a worker killed by a signal, as ``subprocess`` reports it). On a GPU machine each
    worker gets one GPU (``CUDA_VISIBLE_DEVICES``, round robin); on CPU the cores are split between
    workers through ``train.threads``.
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
    # The spec file holds the storage URL: it lives in a private temporary folder, not in argv.
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sweep.yaml"
        path.write_text(yaml.safe_dump(resolved.to_dict(), sort_keys=False))
        procs = [
            subprocess.Popen(worker_command(path, env, i), env=worker_environment(env, gpus, i))
            for i in range(workers)
        ]
        try:
            codes = [p.wait() for p in procs]
        except KeyboardInterrupt:  # the workers got the same Ctrl-C; let them record it
            for p in procs:
                p.wait()
            raise
    return open_study(spec, open_storage(spec)), codes


def worker_command(spec_path: Path, env: Env, index: int) -> list[str]:
    """The command line of worker ``index``: nothing secret, since any user can read it in ``ps``."""
    command = [
        sys.executable,
        "-m",
        "sparsebench.cli.sweep_cmd",
        str(spec_path),
        "--worker-index",
        str(index),
    ]
    command += ["--experiment", env.experiment, "--device", env.device, "--data-dir", str(env.data_dir)]
    return command


def worker_environment(env: Env, gpus: list[str], index: int) -> dict[str, str]:
    """The environment of worker ``index``: the parent's, its GPU, and the tracking URI (which may
    carry a password, so it travels here rather than in argv)."""
    child = dict(os.environ)
    child[TRACKING_URI_VARIABLE] = env.tracking_uri
    if gpus:
        child["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    return child


def exit_status(codes: list[int]) -> int:
    """The sweep's exit status from its workers': the worst, a signal counting as 128 + its number.

    ``subprocess`` reports a worker killed by SIGKILL as -9, which ``max`` would rank below 0.
    """
    return max((128 - code if code < 0 else code for code in codes), default=0)


def worker_problems(codes: list[int]) -> list[str]:
    """One phrase per worker that did not end well, e.g. ``worker 1 was killed by SIGKILL``."""
    problems = []
    for index, code in enumerate(codes):
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            problems.append(f"worker {index} was killed by {name}")
        elif code:
            problems.append(f"worker {index} exited with code {code}")
    return problems


class _TrialFailureLog(logging.Filter):
    """Optuna logs a failed trial's traceback; a sweep states expected failures in one line, and Ctrl-C
    (which the sweep reports itself) not at all."""

    def __init__(self, expected: tuple[type[BaseException], ...]) -> None:
        super().__init__()
        self.expected = expected
        self.interrupted: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        message = record.getMessage()
        if isinstance(error, KeyboardInterrupt):
            self.interrupted.add(message.split(" failed", 1)[0])  # "Trial 3"
            return False
        if message.split(" failed with value", 1)[0] in self.interrupted:  # optuna's second line
            return False
        if isinstance(error, self.expected):
            record.exc_info, record.exc_text = None, None
        return True


@contextlib.contextmanager
def trial_failures_logged_briefly(expected: tuple[type[BaseException], ...]) -> Iterator[None]:
    logger = logging.getLogger("optuna.study._optimize")
    log_filter = _TrialFailureLog(expected)
    logger.addFilter(log_filter)
    try:
        yield
    finally:
        logger.removeFilter(log_filter)


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
