"""Helpers shared by the sweep tests: the in-process command, spec files, MLflow and study lookups."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from tests.conftest import CliResult


def sweep_cli(*argv: object) -> CliResult:
    """``sparsebench sweep ARGS`` in-process, through ``sparsebench.cli.main`` once it lists ``sweep``."""
    from sparsebench import cli
    from sparsebench.cli import sweep_cmd

    args = [str(a) for a in argv]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["sweep", *args]) if "sweep" in cli.SUBCOMMANDS else sweep_cmd.main(args)
    return CliResult(code, out.getvalue(), err.getvalue())


def worker_process(spec: Path, *argv: object) -> subprocess.Popen:
    """``sparsebench sweep SPEC ARGS`` as its own process (another worker, or another machine)."""
    command = [sys.executable, "-m", "sparsebench.cli.sweep_cmd", str(spec), *map(str, argv)]
    return subprocess.Popen(command, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def write_spec(folder: Path, name: str = "sweep.yaml", **fields: Any) -> Path:
    """A small spec on LeNet-300-100 (dense, 1 epoch, 200 validation examples) with ``fields`` on top."""
    data: dict[str, Any] = {
        "task": "lenet300_100",
        "method": "dense",
        "fixed": {"train.val_size": 200},
        "space": {"train.lr": {"type": "log", "low": 1e-4, "high": 1e-2}},
        "sampler": {"name": "random", "seed": 0},
        "n_trials": 2,
        "budget": {"epochs": 1},
    }
    data.update(fields)
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def load_study(storage: str, name: str) -> optuna.Study:
    from sparsebench.sweep.spec import spec_from_dict
    from sparsebench.sweep.storage import open_storage

    spec = spec_from_dict({"task": "lenet300_100", "method": "random", "n_trials": 1, "storage": storage})
    return optuna.load_study(study_name=name, storage=open_storage(spec))


def budget_trials(trials: list[Any], n_trials: int) -> list[Any]:
    """The trials that ran, without those a worker created in the same moment as another's last one.

    Such a trial (number n_trials or later) is failed at once, marked skipped, and runs nothing.
    """
    skipped = [t for t in trials if "skipped" in t.user_attrs]
    assert all(t.state == optuna.trial.TrialState.FAIL and t.number >= n_trials for t in skipped)
    return [t for t in trials if "skipped" not in t.user_attrs]


def mlflow_runs(tracking_uri: str, experiment: str, query: str = "") -> list[Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    return (
        [] if exp is None else client.search_runs([exp.experiment_id], filter_string=query, max_results=1000)
    )


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``condition`` until it returns something other than None or False."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (value := condition()) is not None and value is not False:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def kill_mid_trial(
    procs: list[subprocess.Popen], storage: str, study: str, mlflow: tuple[str, str], timeout: float = 180
) -> tuple[subprocess.Popen, int]:
    """SIGKILL the first of ``procs`` seen training a trial (its MLflow run open); return it, the trial."""

    def a_running_trial() -> tuple[subprocess.Popen, int] | None:
        for proc in procs:
            if proc.poll() is not None:
                raise AssertionError(f"worker exited early: {proc.stderr.read().decode()[-2000:]}")
        try:
            trials = load_study(storage, study).get_trials(states=(optuna.trial.TrialState.RUNNING,))
        except KeyError:  # the study does not exist yet
            return None
        for trial in trials:
            for proc in procs:
                if trial.user_attrs.get("worker", "").endswith(f":{proc.pid}"):
                    query = f"tags.`sweep.trial` = '{trial.number}' and attributes.status = 'RUNNING'"
                    if mlflow_runs(*mlflow, query):
                        return proc, trial.number
        return None

    proc, number = wait_for(a_running_trial, timeout, "a worker training a trial")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return proc, number


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One sqlite MLflow store for all sweep tests (creating its schema is the slowest step)."""
    from sparsebench.tracking import make_client

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    make_client(uri).search_experiments()
    return uri


@pytest.fixture()
def optuna_log() -> Any:
    """Every line optuna logs during the test, tracebacks included (optuna's own handler writes to the
    stderr of the moment it was created, which ``sweep_cli`` cannot capture)."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Collect()
    logger = logging.getLogger("optuna")
    logger.addHandler(handler)
    yield lines
    logger.removeHandler(handler)
