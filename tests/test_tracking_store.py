"""Opening tracking stores (#18 items 3 and 8): several first runs at once, and bad stores in one line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sparsebench import tracking
from sparsebench.env import Env
from sparsebench.errors import ConfigError, SparsebenchError
from sparsebench.tracking.store import TrackingStoreError

FAST_S = 15
"""Every bad store is reported well within this (MLflow alone retried for about 110 s)."""

WORKER = textwrap.dedent(
    """
    import sys
    from sparsebench.tracking import Tracker
    tracker = Tracker.open(sys.argv[1], "sparsebench", tags={"task": "race", "seed": sys.argv[2]})
    tracker.log_metrics({"val_metric": 1.0}, step=1)
    tracker.finish()
    """
)


def test_three_first_runs_on_a_fresh_sqlite_store_all_finish(tmp_path: Path) -> None:
    """MLflow's schema migrations raced on a new store: 3 of 3 tries crashed before the lock."""
    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, uri, str(seed)], env=env, stderr=subprocess.PIPE)
        for seed in range(3)
    ]
    errors = [proc.communicate(timeout=240)[1].decode() for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], "\n".join(errors)[-3000:]
    store = tracking.open_store(uri)
    runs = store.client.search_runs([store.experiment_id("sparsebench")])
    assert sorted(r.data.tags["seed"] for r in runs) == ["0", "1", "2"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    tracker = tracking.Tracker.open(uri, "sparsebench")  # and the store takes more runs afterwards
    tracker.finish()


def test_a_store_is_opened_once_per_resolved_uri(quick_tracking_uri: str) -> None:
    first = tracking.open_store(quick_tracking_uri)
    assert tracking.open_store(quick_tracking_uri) is first
    assert tracking.open_store(first) is first
    assert tracking.make_client(quick_tracking_uri) is first.client


def test_the_uri_is_resolved_flag_then_environment_then_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert tracking.resolve_uri(None) == f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////from/env.db")
    assert tracking.resolve_uri(None) == "sqlite:////from/env.db"
    assert tracking.resolve_uri("sqlite:////explicit.db") == "sqlite:////explicit.db"
    env = Env.resolve(tracking_uri=None, data_dir=tmp_path / "data", device="cpu", experiment="e")
    assert env.tracking_uri == "sqlite:////from/env.db"
    assert env.data_dir == tmp_path / "data" and env.device == "cpu" and env.experiment == "e"


def test_the_checkpoint_folder_of_an_env_sits_beside_its_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SPARSEBENCH_CHECKPOINTS")
    env = Env.resolve(tracking_uri=f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    assert env.checkpoint_root == tmp_path / "store" / "checkpoints"


def _open_fails(uri: str, match: str, error: type[Exception] = TrackingStoreError) -> str:
    started = time.monotonic()
    with pytest.raises(error, match=match) as caught:
        tracking.open_store(uri)
    assert time.monotonic() - started < FAST_S
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_an_unknown_scheme_is_refused_before_anything_waits(tmp_path: Path) -> None:
    _open_fails("foo://user:pw@host/x", "unknown scheme 'foo'", ConfigError)
    with pytest.raises(ConfigError, match="unknown scheme"):
        Env.resolve(tracking_uri="s3x://bucket/store")


def test_a_store_under_a_regular_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("a file")
    message = _open_fails(
        f"sqlite:///{tmp_path / 'notes.txt' / 'runs' / 'mlflow.db'}", "is a file, not a folder"
    )
    assert "notes.txt" in message
    _open_fails(str(tmp_path / "notes.txt" / "folder-store"), "is a file, not a folder")


@pytest.mark.parametrize(
    "content", [b"this is not a database at all", b"SQLite format 3\x00" + b"\x07" * 200]
)
def test_a_corrupt_sqlite_file_is_one_line(tmp_path: Path, content: bytes) -> None:
    database = tmp_path / "mlflow.db"
    database.write_bytes(content)
    _open_fails(f"sqlite:///{database}", "is damaged .*move it aside")
    assert database.read_bytes() == content  # nothing was written over it


def test_an_unwritable_store_folder_is_one_line(tmp_path: Path) -> None:
    if os.geteuid() == 0:  # root writes everywhere a mode allows: use a folder no one can create
        folder = Path("/proc/self/sparsebench-store")
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        folder = locked / "store"
    _open_fails(f"sqlite:///{folder / 'mlflow.db'}", "cannot be written")


@pytest.fixture()
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never answers: a database host that hangs."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    server.close()


def test_an_unreachable_postgres_host_fails_in_seconds_without_the_password(
    silent_server: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("psycopg2")
    monkeypatch.setenv("SPARSEBENCH_DB_CONNECT_TIMEOUT", "2")
    message = _open_fails(
        f"postgresql+psycopg2://me:hunter2@127.0.0.1:{silent_server}/runs", "cannot connect to the tracking"
    )
    assert "hunter2" not in message and "me:***@" in message
    refused = _open_fails("postgresql+psycopg2://me:hunter2@127.0.0.1:1/runs", "cannot connect")
    assert "hunter2" not in refused


def test_a_missing_database_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if psycopg 3 were not installed
    message = _open_fails("postgresql://me:pw@127.0.0.1:1/runs", "needs the Python package 'psycopg'")
    assert "sparsebench[postgres]" in message


@pytest.mark.parametrize(
    "flags",
    [
        ["--tracking-uri", "foo://nowhere"],
        ["--tracking-uri", "sqlite:///{tmp}/file.txt/mlflow.db"],
        ["--tracking-uri", "sqlite:///{tmp}/garbage.db"],
    ],
)
def test_commands_report_a_bad_store_in_one_line(run_cli, tmp_path: Path, flags: list[str]) -> None:
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "garbage.db").write_bytes(b"garbage" * 10)
    flags = [f.format(tmp=tmp_path) for f in flags]
    for argv in (["report", *flags, "--out", tmp_path / "r"], ["bench", "0123456789ab", *flags]):
        result = run_cli(*argv)
        assert result.code == 2, result.err
        lines = result.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("sparsebench: error:"), result.err


def test_store_errors_are_sparsebench_errors() -> None:
    assert issubclass(TrackingStoreError, SparsebenchError)
