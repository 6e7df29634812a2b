"""``sparsebench gc``: checkpoints of finished, failed and deleted runs go; resumable, running and
other stores' runs stay."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import CliResult

DAY = 86400


class Store:
    """A real sqlite store with runs in chosen states, and checkpoint folders for them."""

    def __init__(self, uri: str, root: Path) -> None:
        from mlflow.tracking import MlflowClient

        self.uri, self.root = uri, root
        self.client = MlflowClient(tracking_uri=uri)
        self.experiment = self.client.create_experiment("sparsebench")

    def run(self, status: str, size: int = 1000, days_old: float = 0.0) -> str:
        run_id = self.client.create_run(self.experiment).info.run_id
        if status != "RUNNING":
            self.client.set_terminated(run_id, status)
        return self.folder(run_id, size, days_old)

    def folder(self, run_id: str, size: int = 1000, days_old: float = 0.0) -> str:
        folder = self.root / run_id
        folder.mkdir(parents=True)
        saved = folder / "checkpoint.pt"
        saved.write_bytes(b"x" * size)
        then = time.time() - days_old * DAY
        os.utime(saved, (then, then))
        return run_id

    def exists(self, run_id: str) -> bool:
        return (self.root / run_id).exists()


@pytest.fixture()
def store(quick_tracking_uri: str, tmp_path: Path) -> Store:
    return Store(quick_tracking_uri, tmp_path / "checkpoints")  # $SPARSEBENCH_CHECKPOINTS (conftest)


def gc(run_cli: Callable[..., CliResult], store: Store, *flags: object) -> CliResult:
    return run_cli("gc", "--tracking-uri", store.uri, *flags)


def test_done_and_deleted_runs_go_resumable_running_and_unknown_ones_stay(
    store: Store, run_cli: Callable[..., CliResult]
) -> None:
    finished, failed = store.run("FINISHED", 3000), store.run("FAILED", 2000)
    deleted = store.run("KILLED", 500)
    store.client.delete_run(deleted)  # deleted from this store: nobody can resume it any more
    other = store.folder("0123456789abcdef0123456789abcdef", 700, days_old=90)  # never this store's
    killed, running = store.run("KILLED", days_old=90), store.run("RUNNING")
    (store.root / "not-a-run").mkdir()  # anything not named by a run id is not ours to judge
    result = gc(run_cli, store)
    assert result.code == 0, result.err
    for run_id in (finished, failed, deleted):
        assert not store.exists(run_id)
        assert f"removed {run_id} (" in result.out
    assert store.exists(killed) and store.exists(running) and (store.root / "not-a-run").exists()
    assert store.exists(other)  # a shared checkpoint root: another store's resumable run is not lost
    assert f"kept {killed} (KILLED" in result.out and "resumable" in result.out
    assert f"kept {running} (RUNNING" in result.out
    assert f"kept {other} (ABSENT" in result.out and "not a run of this tracking store" in result.out
    assert "freed 5.4 KiB (3 of 6 checkpoint folders" in result.out.splitlines()[-1]


def test_older_than_also_removes_old_resumable_runs(store: Store, run_cli: Callable[..., CliResult]) -> None:
    old, recent = store.run("KILLED", days_old=40), store.run("KILLED", days_old=2)
    running = store.run("RUNNING", days_old=400)
    unknown_old = store.folder("0123456789abcdef0123456789abcdef", days_old=40)
    unknown_recent = store.folder("fedcba9876543210fedcba9876543210", days_old=2)
    result = gc(run_cli, store, "--older-than", "30")
    assert result.code == 0, result.err
    assert not store.exists(old) and not store.exists(unknown_old)
    assert store.exists(recent) and store.exists(running) and store.exists(unknown_recent)


def test_dry_run_deletes_nothing_and_json_is_the_only_output(
    store: Store, run_cli: Callable[..., CliResult]
) -> None:
    finished, killed = store.run("FINISHED", 4096), store.run("KILLED")
    result = gc(run_cli, store, "--dry-run", "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert store.exists(finished) and store.exists(killed)
    assert not (store.root / finished / "lock").exists()  # a dry run creates no lock file either
    assert report["dry_run"] is True and report["bytes_freed"] == 4096
    assert [f["run_id"] for f in report["removed"]] == [finished]
    assert [(f["run_id"], f["status"]) for f in report["kept"]] == [(killed, "KILLED")]
    assert report["root"] == str(store.root)
    text = gc(run_cli, store, "--dry-run").out
    assert f"would remove {finished}" in text and "would free 4.0 KiB" in text


def test_a_run_being_trained_keeps_its_folder(store: Store, run_cli: Callable[..., CliResult]) -> None:
    """A FINISHED status read a moment ago does not matter while another process holds the lock."""
    from sparsebench.run.checkpoint import run_lock

    busy = store.run("FINISHED")
    with run_lock(busy, store.root):
        result = gc(run_cli, store, "--json")
    assert store.exists(busy)
    (kept,) = json.loads(result.out)["kept"]
    assert kept["reason"] == "being trained by another process right now"
    assert gc(run_cli, store).code == 0 and not store.exists(busy)  # once released, it goes


def test_nothing_to_collect_needs_no_store(tmp_path: Path, run_cli: Callable[..., CliResult]) -> None:
    db = tmp_path / "nowhere" / "mlflow.db"
    result = run_cli("gc", "--tracking-uri", f"sqlite:///{db}", "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["removed"] == []
    assert not db.exists()


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--older-than", "-1"], "--older-than must be a number of days >= 0"),
        (["--older-than", "nan"], "--older-than must be a number of days >= 0"),
        ([], "no tracking store at sqlite:///"),
    ],
)
def test_bad_input_is_one_line(
    flags: list[str], expected: str, tmp_path: Path, run_cli: Callable[..., CliResult]
) -> None:
    """A missing store is refused (and not created): every checkpoint would look like a deleted run."""
    (tmp_path / "checkpoints" / ("ab" * 16)).mkdir(parents=True)
    db = tmp_path / "missing" / "mlflow.db"
    result = run_cli("gc", "--tracking-uri", f"sqlite:///{db}", *flags)
    assert result.code == 2
    assert len(result.err.splitlines()) == 1 and expected in result.err, result.err
    assert (tmp_path / "checkpoints" / ("ab" * 16)).exists() and not db.exists()


def test_real_runs_beside_their_store(
    mnist_dir: Path,
    tmp_path: Path,
    empty_tracking_store: Path,
    monkeypatch: pytest.MonkeyPatch,
    run_cli: Callable[..., CliResult],
) -> None:
    """Checkpoints that real runs leave beside the store: the kept one of a finished run goes, a paused
    run's stays until --older-than; gc finds them from another working directory."""
    from tests.conftest import copy_tracking_store

    monkeypatch.delenv("SPARSEBENCH_CHECKPOINTS")
    uri = copy_tracking_store(empty_tracking_store, tmp_path / "store")
    base = ["run", "--method", "dense", "--task", "lenet300_100", "--data-dir", mnist_dir,
            "--tracking-uri", uri, "--set", "train.val_size=200", "--no-progress", "--json"]  # fmt: skip
    finished = run_cli(*base, "--set", "train.epochs=1", "--keep-checkpoint")
    assert finished.code == 0, finished.err
    kept_id = json.loads(finished.out)["run_id"]
    paused = run_cli(*base, "--set", "train.epochs=2", "--stop-after", "1")
    assert paused.code == 0, paused.err
    root = tmp_path / "store" / "checkpoints"
    (paused_id,) = {p.name for p in root.iterdir() if p.is_dir()} - {kept_id}
    monkeypatch.chdir(tmp_path)
    result = json.loads(run_cli("gc", "--tracking-uri", uri, "--json").out)
    assert [f["run_id"] for f in result["removed"]] == [kept_id] and result["bytes_freed"] > 1_000_000
    assert [(f["run_id"], f["status"]) for f in result["kept"]] == [(paused_id, "KILLED")]
    assert run_cli("gc", "--tracking-uri", uri, "--older-than", "0").code == 0
    assert list(root.iterdir()) == []
