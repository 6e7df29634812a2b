"""The queue's failure handling: --max-time, --rows, a dead worker's cell, a silent machine's cell, cells
finished elsewhere, failed cells (retried by the next command, not in a loop), and duplicates."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from sparsebench.campaign import queue
from sparsebench.campaign.cells import Cell
from sparsebench.campaign.spec import load_campaign
from tests.campaign import FAST, RESULTS, worker_process, write_campaign


def dense_row(name: str = "a", seeds: list[int] | None = None, **config: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "name": name,
        "task": "lenet300_100",
        "method": "dense",
        "config": {**FAST, **config},
    }
    if seeds is not None:
        row["seeds"] = seeds
    return row


@pytest.fixture()
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def records(root: Path) -> list[str]:
    return sorted(p.stem for p in (root / RESULTS / "runs").glob("*.json"))


def study(spec: Path) -> optuna.Study:
    loaded = load_campaign(spec)
    return queue.load_queue(loaded, queue.storage_url(loaded))


def run(run_cli, spec: Path, mnist_dir: Path, uri: str, *extra: object):  # noqa: ANN001, ANN201
    return run_cli("campaign", "run", spec.name, "--device", "cpu", "--data-dir", mnist_dir,
                   "--tracking-uri", uri, "--no-progress", *extra)  # fmt: skip


def test_max_time_stops_taking_cells_and_rows_limit_what_is_run(
    here: Path,
    mnist_dir: Path,
    quick_tracking_uri: str,
    run_cli,  # noqa: ANN001
) -> None:
    spec = write_campaign(here, seeds=[0, 1, 2], rows=[dense_row("a"), dense_row("b", seeds=[0])])
    none = run(run_cli, spec, mnist_dir, quick_tracking_uri, "--max-time", "0")
    assert none.code == 0, none.err
    assert "--max-time 0 min reached; taking no new cell" in none.err and records(here) == []
    assert "4 queued" in none.out  # the cells wait in the queue for the next worker
    one = run(run_cli, spec, mnist_dir, quick_tracking_uri, "--max-time", "0.001")
    assert one.code == 0, one.err
    assert records(here) == ["a-seed0"]  # the cell started inside the time box finished; no other began
    only_b = run(run_cli, spec, mnist_dir, quick_tracking_uri, "--rows", "b")
    assert only_b.code == 0, only_b.err
    assert records(here) == ["a-seed0", "b-seed0"]  # a's queued cells went back to the queue, untrained
    waiting = {c.key for c in queue.waiting_cells(study(spec))}
    assert waiting == {"a-seed1", "a-seed2"}
    bad = run_cli("campaign", "run", spec.name, "--max-time", "-1")
    assert bad.code == 2 and "--max-time must be" in bad.err


def test_max_time_leaves_a_cell_its_row_s_records_say_would_outlast_it(
    here: Path,
    mnist_dir: Path,
    quick_tracking_uri: str,
    run_cli,  # noqa: ANN001
) -> None:
    spec = write_campaign(here, seeds=[0], rows=[dense_row("a")])
    first = run(run_cli, spec, mnist_dir, quick_tracking_uri, "--max-time", "5")
    assert first.code == 0, first.err
    assert records(here) == ["a-seed0"]  # no record to time the row by yet: taken
    record_file = here / RESULTS / "runs" / "a-seed0.json"
    data = json.loads(record_file.read_text())
    data["training_seconds"] = 3600.0  # now the row's one record says an hour a cell
    record_file.write_text(json.dumps(data))
    write_campaign(here, seeds=[0, 1], rows=[dense_row("a")])
    boxed = run(run_cli, spec, mnist_dir, quick_tracking_uri, "--max-time", "5")
    assert boxed.code == 0, boxed.err
    assert "a: no cell started, one takes about 60 min (median of 1 record of the row)" in boxed.err
    assert records(here) == ["a-seed0"]
    assert "about 60 min a cell" in boxed.out  # the status printed after the run
    unboxed = run(run_cli, spec, mnist_dir, quick_tracking_uri)
    assert unboxed.code == 0, unboxed.err
    assert records(here) == ["a-seed0", "a-seed1"]  # without a time box it runs


def test_a_killed_worker_s_cell_is_retried_by_the_next_command(
    here: Path,
    mnist_dir: Path,
    quick_tracking_uri: str,
    run_cli,  # noqa: ANN001
) -> None:
    spec = write_campaign(here, seeds=[0], rows=[dense_row("slow", **{"train.epochs": 40})])
    victim = worker_process(spec, "--device", "cpu", "--data-dir", mnist_dir, "--no-progress",
                            env={"MLFLOW_TRACKING_URI": quick_tracking_uri})  # fmt: skip
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert victim.poll() is None, victim.stderr.read().decode()[-2000:]
        found = study(spec) if (here / "mlruns").exists() else None
        running = found.get_trials(states=(TrialState.RUNNING,)) if found else []
        if running and running[0].user_attrs.get("worker", "").endswith(f":{victim.pid}"):
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the worker never started its cell")
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    result = run(run_cli, spec, mnist_dir, quick_tracking_uri)
    assert result.code == 0, result.err
    assert "is gone; retrying it" in result.err
    assert records(here) == ["slow-seed0"]
    trials = study(spec).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].system_attrs["failed_trial"] == 0 and trials[1].user_attrs["cell"] == "slow-seed0"


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_status_calls_a_cell_whose_local_worker_died_abandoned_not_running(
    here: Path,
    run_cli,  # noqa: ANN001
) -> None:
    spec = write_campaign(here, seeds=[0, 1], rows=[dense_row()])
    loaded = load_campaign(spec)
    queued = queue.open_queue(loaded, queue.storage_url(loaded))
    queue.enqueue(queued, Cell("a", 0))
    queue.enqueue(queued, Cell("a", 1))
    gone = subprocess.Popen(["true"])  # a process of this machine that has exited: a killed worker
    gone.wait()
    queued.ask().set_user_attr("worker", f"{socket.gethostname()}:{gone.pid}")
    queued.ask().set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")  # alive: this test
    status = run_cli("campaign", "status", spec.name)
    assert status.code == 0, status.err
    assert "0/2 done, 1 running, 1 abandoned, seeds left: 0" in status.out
    assert "'abandoned': its worker on this machine was killed mid-cell" in status.out


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_silent_machine_s_cell_is_retried_after_its_heartbeat_goes_stale(
    here: Path,
    mnist_dir: Path,
    quick_tracking_uri: str,
    run_cli,  # noqa: ANN001
) -> None:
    spec = write_campaign(here, seeds=[0], rows=[dense_row()], heartbeat={"interval": 1, "grace_period": 2})
    loaded = load_campaign(spec)
    queued = queue.open_queue(loaded, queue.storage_url(loaded))
    queue.enqueue(queued, Cell("a", 0))
    taken = queued.ask()  # another machine takes the cell, beats once, then goes silent
    taken.set_user_attr("worker", "far-away:4242")
    taken.set_user_attr("host", "far-away")
    queued._storage.record_heartbeat(taken._trial_id)
    status = run_cli("campaign", "status", spec.name)
    assert "1 running" in status.out
    time.sleep(3)
    result = run(run_cli, spec, mnist_dir, quick_tracking_uri)
    assert result.code == 0, result.err
    assert records(here) == ["a-seed0"]
    trials = study(spec).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].system_attrs["failed_trial"] == taken.number


def test_cells_done_elsewhere_are_left_and_failures_are_retried_once_per_command(
    here: Path,
    tmp_path_factory: pytest.TempPathFactory,
    quick_tracking_uri: str,
    run_cli,  # noqa: ANN001
) -> None:
    spec = write_campaign(here, seeds=[0, 1], rows=[dense_row()])
    loaded = load_campaign(spec)
    queued = queue.open_queue(loaded, queue.storage_url(loaded))
    attrs = {"cell": "a-seed0", "row": "a", "seed": 0, "host": "far-away", "worker": "far-away:1"}
    queued.add_trial(optuna.create_trial(state=TrialState.COMPLETE, value=1.0, user_attrs=attrs))
    no_data = tmp_path_factory.mktemp("no-data")
    for attempt in (1, 2):
        result = run(run_cli, spec, no_data, quick_tracking_uri)
        assert result.code == 1, result.err
        assert "a-seed1 failed:" in result.err and "a-seed0" not in result.err
        failures = [t for t in study(spec).trials if t.user_attrs.get("cell") == "a-seed1"]
        assert len(failures) == attempt  # one try per command, never a loop
    status = run_cli("campaign", "status", spec.name, "--json").out
    assert '"elsewhere": [\n' in status and '"failed": [\n' in status
    text = run_cli("campaign", "status", spec.name).out
    assert "1 elsewhere" in text and "a seed 1 failed:" in text and "commit its records there" in text
    assert records(here) == []


def test_a_cell_queued_twice_is_trained_once(
    here: Path,
    mnist_dir: Path,
    quick_tracking_uri: str,
    run_cli,  # noqa: ANN001
) -> None:
    spec = write_campaign(here, seeds=[0], rows=[dense_row()])
    loaded = load_campaign(spec)
    queued = queue.open_queue(loaded, queue.storage_url(loaded))
    queue.enqueue(queued, Cell("a", 0))
    queue.enqueue(queued, Cell("a", 0))  # two commands enqueued it at the same moment
    result = run(run_cli, spec, mnist_dir, quick_tracking_uri)
    assert result.code == 0, result.err
    trials = study(spec).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE]
    assert "run_id" in trials[0].user_attrs and trials[1].user_attrs["outcome"] == "already done"
    assert records(here) == ["a-seed0"]
