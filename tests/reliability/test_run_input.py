"""Issue 18 for ``sparsebench run``: hostile files, bad settings and misuse end in one line (exit 2),
before any compute, and nothing that was computed is lost."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from sparsebench.run import checkpoint
from tests.conftest import CliResult

BASE = ("--method", "dense", "--task", "lenet300_100", "--set", "train.val_size=200", "--no-progress")


def one_line_error(result: CliResult) -> str:
    assert result.code == 2, (result.code, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sparsebench: error: "), result.err
    assert "Traceback" not in result.err
    return lines[0]


class RunsCode:
    """A pickle payload that would create a file when unpickled with weights_only=False."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("train.eval_batch_size=0", "train.eval_batch_size must be >= 1"),
        ("train.lr_step=0", "train.lr_step must be >= 1"),
        ("train.lr=-0.1", "train.lr must be > 0"),
        ("train.lr=.nan", "train.lr must be a finite number"),
        ("train.epochs=0", "train.epochs must be >= 1"),
        ("train.val_size=5000", "train.val_size must be between 1 and"),
        ("train.batch_size=5000", "train.batch_size 5000 is larger than the training split"),
        ("train.momentum=1.5", "train.momentum must be <= 1.0"),
    ],
)
def test_bad_training_settings_are_refused_before_any_epoch(
    setting: str, message: str, mnist_dir: Path, tracking_uri: str, tmp_path: Path, run_cli: Callable
) -> None:
    result = run_cli("run", *BASE, "--set", setting, "--data-dir", mnist_dir, "--tracking-uri", tracking_uri)
    assert message in one_line_error(result)
    assert not list((tmp_path / "checkpoints").rglob("*.pt"))  # no epoch ran


def test_a_nan_method_threshold_is_refused(mnist_dir: Path, tracking_uri: str, run_cli: Callable) -> None:
    result = run_cli(
        "run", "--method", "sparse_vd", "--task", "lenet300_100", "--set", "method.threshold=nan",
        "--data-dir", mnist_dir, "--tracking-uri", tracking_uri,
    )  # fmt: skip
    assert "method.threshold must be a finite number" in one_line_error(result)


def test_a_crafted_checkpoint_is_refused_without_running_its_code(
    tmp_path: Path, tracking_uri: str, run_cli: Callable
) -> None:
    marker = tmp_path / "pwned"
    run_id = "ab" * 16
    path = checkpoint.checkpoint_path(run_id)
    path.parent.mkdir(parents=True)
    path.write_bytes(pickle.dumps({"task": RunsCode(marker)}))
    result = run_cli("run", "--resume", run_id, "--tracking-uri", tracking_uri)
    assert "cannot be loaded safely" in one_line_error(result)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04truncated", b"not a checkpoint at all"])
def test_a_corrupt_or_empty_checkpoint_is_one_line(
    content: bytes, tracking_uri: str, run_cli: Callable
) -> None:
    run_id = "cd" * 16
    path = checkpoint.checkpoint_path(run_id)
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    one_line_error(run_cli("run", "--resume", run_id, "--tracking-uri", tracking_uri))


def test_a_crafted_exported_model_is_refused_by_init_from(tmp_path: Path) -> None:
    from sparsebench.errors import ConfigError
    from sparsebench.run.train import load_exported

    marker = tmp_path / "pwned"
    model = tmp_path / "model.pt"
    torch.save({"state_dict": {}, "evil": RunsCode(marker)}, model)
    with pytest.raises(ConfigError, match="cannot be loaded safely"):
        load_exported(model, "--init-from x")
    assert not marker.exists()


@pytest.mark.parametrize("given", ["../../elsewhere", "/etc", "abc", "ABCDEF0123"])
def test_resume_takes_only_run_ids(given: str, tracking_uri: str, run_cli: Callable) -> None:
    assert "is not a run id" in one_line_error(
        run_cli("run", "--resume", given, "--tracking-uri", tracking_uri)
    )


def test_a_run_being_trained_cannot_be_resumed_by_a_second_process(tracking_uri: str) -> None:
    from sparsebench.errors import ConfigError

    run_id = "ef" * 16
    with checkpoint.run_lock(run_id), pytest.raises(ConfigError, match="being trained by another process"):
        checkpoint.run_lock(run_id).acquire()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_an_unwritable_checkpoint_folder_fails_before_training(
    mnist_dir: Path, tracking_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_cli: Callable
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    monkeypatch.setenv("SPARSEBENCH_CHECKPOINTS", str(locked / "ck"))
    result = run_cli("run", *BASE, "--data-dir", mnist_dir, "--tracking-uri", tracking_uri)
    assert "is not writable" in one_line_error(result)


def test_an_unwritable_checkpoint_folder_fails_before_training_even_as_root(
    mnist_dir: Path, tracking_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_cli: Callable
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("SPARSEBENCH_CHECKPOINTS", str(blocker / "ck"))  # a folder under a regular file
    result = run_cli("run", *BASE, "--data-dir", mnist_dir, "--tracking-uri", tracking_uri)
    assert "is not writable" in one_line_error(result)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--resume", "abcdef12", "--method", "dense"), "give it alone"),
        ((*BASE, "--stop-after", "0"), "--stop-after must be at least 1"),
        ((*BASE, "--tag", "oops"), "--tag expects key=value (e.g. study=table1)"),
    ],
)
def test_misused_flags_are_one_line(argv: tuple, message: str, tracking_uri: str, run_cli: Callable) -> None:
    assert message in one_line_error(run_cli("run", *argv, "--tracking-uri", tracking_uri))


def test_checkpoints_live_beside_the_store_and_go_when_the_run_finishes(
    mnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_cli: Callable
) -> None:
    monkeypatch.delenv("SPARSEBENCH_CHECKPOINTS")
    store = tmp_path / "store with space"
    uri = f"sqlite:///{store / 'mlflow.db'}"
    common = (*BASE, "--set", "train.epochs=1", "--data-dir", mnist_dir, "--tracking-uri", uri)
    gone = run_cli("run", *common)
    assert gone.code == 0, gone.err
    assert "'sqlite:///" in gone.err  # the mlflow ui hint is shell-quoted
    kept = run_cli("run", *common, "--keep-checkpoint")
    assert kept.code == 0, kept.err
    assert [p.parent.name for p in (store / "checkpoints").glob("*/checkpoint.pt")] == [
        kept.err.split("MLflow run ")[1].split(";")[0]
    ]


def test_the_ui_hint_masks_a_password() -> None:
    from sparsebench.cli.run_cmd import _ui_hint

    hint = _ui_hint("postgresql://bench:s3cret@db.example:5432/mlflow")
    assert "s3cret" not in hint and "bench:***@db.example" in hint
