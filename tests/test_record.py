"""The run record: full configuration, versions, data checksums and results, round-tripping as JSON."""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from sparsebench import record
from sparsebench.errors import ConfigError
from sparsebench.run.plan import plan_run
from tests.conftest import CliResult


@pytest.fixture(scope="module")
def recorded(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory, run_cli: Callable) -> tuple:
    folder = tmp_path_factory.mktemp("record")
    path = folder / "runs" / "svd.json"
    result: CliResult = run_cli(
        "run", "--method", "sparse_vd", "--task", "lenet300_100", "--set", "train.epochs=2",
        "--set", "train.val_size=200", "--tag", "study=t", "--no-progress", "--data-dir", mnist_dir,
        "--tracking-uri", f"sqlite:///{folder / 'mlflow.db'}", "--record", path,
    )  # fmt: skip
    assert result.code == 0, result.err
    return record.read(path), path, mnist_dir


def test_the_record_holds_every_config_key_not_differences(recorded: tuple) -> None:
    rec, _, _ = recorded
    expected = plan_run("lenet300_100", "sparse_vd", {"train.epochs": 2, "train.val_size": 200}).flat_config()
    assert rec.config == expected  # every key, including the ones left at their defaults
    assert rec.task == "lenet300_100" and rec.method == "sparse_vd" and rec.seed == 0
    assert rec.tags == {"task": "lenet300_100", "method": "sparse_vd", "study": "t", "init_from": ""}


def test_the_record_has_versions_checksums_metrics_and_curves(recorded: tuple) -> None:
    rec, _, data = recorded
    assert set(rec.versions) == {"sparsebench", "torch", "python"}
    images = gzip.decompress((data / "mnist" / "train-images-idx3-ubyte.gz").read_bytes())
    assert rec.data["mnist/train-images-idx3-ubyte"] == hashlib.md5(images).hexdigest()
    assert len(rec.data) == 4
    assert 0 <= rec.metrics["test_metric"] <= 100 and rec.metrics["compression"] >= 1
    assert sum(layer["weights"] for layer in rec.layers) == rec.metrics["weights"]
    assert [p.epoch for p in rec.epochs] == [1, 2] and rec.training_seconds > 0
    assert rec.curve_axis and {row["axis"] for row in rec.threshold_curve} == {rec.curve_axis}


def test_the_record_round_trips_and_holds_no_machine_path(recorded: tuple) -> None:
    rec, path, data = recorded
    text = path.read_text()
    assert record.RunRecord.from_json(text) == rec
    assert str(data) not in text and "/tmp" not in text and str(Path.home()) not in text
    json.loads(text)  # plain JSON: no NaN


def test_records_are_written_once(recorded: tuple) -> None:
    rec, path, _ = recorded
    with pytest.raises(ConfigError, match="written once"):
        record.write(rec, path)


def test_a_malformed_record_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"version": 1, "run_id": "x"}))
    with pytest.raises(ConfigError, match="bad.json is not a valid run record: task"):
        record.read(bad)


def test_a_metric_that_is_not_finite_is_stored_as_null() -> None:
    rec = record.RunRecord(
        run_id="a", task="t", method="m", seed=0, config={}, versions={}, metrics={"x": math.nan}, layers=[]
    )
    assert rec.metrics["x"] is None and json.loads(rec.to_json())["metrics"]["x"] is None


def test_the_code_commit_is_read_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker's records carry the commit of the code it loaded, not of a later checkout."""
    from sparsebench import record

    commits = iter(["a" * 40, "b" * 40])
    monkeypatch.setattr(record, "git_commit", lambda start=None: next(commits))
    record.code_commit.cache_clear()
    try:
        assert record.code_commit() == "a" * 40
        assert record.code_commit() == "a" * 40  # the checkout moved on; the loaded code did not
    finally:
        record.code_commit.cache_clear()


def test_commit_is_dirty_only_when_code_changed(tmp_path: Path) -> None:
    """A campaign rewrites its spec snapshot under reports/ as it starts; that is no code change."""

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    (tmp_path / "sparsebench").mkdir()
    (tmp_path / "reports").mkdir()
    (tmp_path / "sparsebench" / "code.py").write_text("x = 1\n")
    (tmp_path / "reports" / "campaign.json").write_text("{}\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "start")
    clean = record.git_commit(tmp_path / "sparsebench")
    assert clean is not None and not clean.endswith("+dirty")
    (tmp_path / "reports" / "campaign.json").write_text('{"rows": []}\n')
    assert record.git_commit(tmp_path / "sparsebench") == clean
    (tmp_path / "sparsebench" / "code.py").write_text("x = 2\n")
    assert record.git_commit(tmp_path / "sparsebench") == clean + "+dirty"
