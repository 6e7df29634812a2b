"""Many machines: worker processes joined only by a PostgreSQL storage URL, and a worker killed mid-trial.

Needs a server: ``sudo .ci/postgres.sh`` prints the URL to export as SPARSEBENCH_TEST_POSTGRES.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from optuna.trial import TrialState

from tests.sweeps import (
    budget_trials,
    kill_mid_trial,
    load_study,
    mlflow_runs,
    mlflow_store,  # noqa: F401 - a fixture
    worker_process,
    write_spec,
)

URL = os.environ.get("SPARSEBENCH_TEST_POSTGRES")
pytestmark = pytest.mark.skipif(not URL, reason="set SPARSEBENCH_TEST_POSTGRES (see .ci/postgres.sh)")


def _spec(tmp_path: Path, **fields: object) -> tuple[Path, str]:
    study = f"test-{uuid.uuid4().hex[:10]}"
    heartbeat = {"interval": 1, "grace_period": 3, "max_retry": 2}
    return write_spec(tmp_path, storage=URL, study=study, heartbeat=heartbeat, **fields), study


def _start(spec: Path, mnist_dir: Path, store: str, experiment: str) -> list:
    args = ["--data-dir", mnist_dir, "--tracking-uri", store, "--experiment", experiment, "--device", "cpu"]
    return [worker_process(spec, *args, "--set", "train.threads=1") for _ in range(2)]


def _finish(procs: list) -> None:
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-3000:]


def test_two_worker_processes_run_one_study_once(
    tmp_path: Path,
    mnist_dir: Path,
    mlflow_store: str,  # noqa: F811
) -> None:
    spec, study = _spec(tmp_path, n_trials=4)
    _finish(_start(spec, mnist_dir, mlflow_store, study))
    trials = budget_trials(load_study(URL, study).trials, 4)
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    runs = [r for r in mlflow_runs(mlflow_store, study) if "sweep.trial" in r.data.tags]
    assert sorted(r.data.tags["sweep.trial"] for r in runs) == ["0", "1", "2", "3"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    (parent,) = mlflow_runs(mlflow_store, study, "tags.`sweep.role` = 'parent'")  # one, though both made one
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}


def test_a_killed_worker_s_trial_is_retried_by_the_other(
    tmp_path: Path,
    mnist_dir: Path,
    mlflow_store: str,  # noqa: F811
) -> None:
    spec, study = _spec(tmp_path, n_trials=3, budget={"epochs": 10})
    workers = _start(spec, mnist_dir, mlflow_store, study)
    victim, lost = kill_mid_trial(workers, URL, study, (mlflow_store, study))
    _finish([w for w in workers if w is not victim])
    trials = load_study(URL, study).trials
    states = {t.number: t.state for t in trials}
    assert states[lost] == TrialState.FAIL  # failed by the heartbeat, not by an error
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 3 and len(trials) == 4
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == lost]
    assert retry.state == TrialState.COMPLETE
    assert retry.params == next(t.params for t in trials if t.number == lost)
    (lost_run,) = mlflow_runs(mlflow_store, study, f"tags.`sweep.trial` = '{lost}'")
    assert lost_run.info.status == "KILLED" and lost_run.data.tags["sweep.state"] == "lost"
