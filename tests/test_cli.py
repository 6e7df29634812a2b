"""The core spine end to end through the command line: train, log to MLflow, print the row.

One LeNet-300-100 Sparse VD run (2 epochs on the generated MNIST) is trained once per module and
then checked from every side: exit code, MLflow params/curves/metrics/artifacts, the printed row,
and that the core's counts agree with the exported weights themselves.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from tests.conftest import CliResult, copy_tracking_store

EPOCHS = 2
LENET300_WEIGHTS = 784 * 300 + 300 * 100 + 100 * 10
LENET5_WEIGHTS = 20 * 25 + 50 * 20 * 25 + 800 * 500 + 500 * 10


@dataclass
class TrainedRun:
    cli: CliResult
    client: Any
    run: Any
    artifacts: Path

    @property
    def metrics(self) -> dict[str, float]:
        return self.run.data.metrics

    def history(self, key: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in self.client.get_metric_history(self.run.info.run_id, key)]


def train_and_fetch(
    run_cli: Callable[..., CliResult],
    tmp: Path,
    uri: str,
    argv: list[object],
    monkeypatch: pytest.MonkeyPatch,
) -> TrainedRun:
    """Run ``sparsebench run`` in-process against the fresh store ``uri`` and download the run's artifacts."""
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("SPARSEBENCH_CHECKPOINTS", str(tmp / "checkpoints"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    torch.manual_seed(0)
    cli = run_cli("run", *argv, "--tracking-uri", uri, "--no-progress")
    assert cli.code == 0, cli.err
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("sparsebench").experiment_id])
    artifacts = Path(client.download_artifacts(run.info.run_id, "", str(tmp / "artifacts")))
    return TrainedRun(cli, client, run, artifacts)


@pytest.fixture(scope="module")
def lenet300(
    mnist_dir: Path,
    run_cli: Callable[..., CliResult],
    empty_tracking_store: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> TrainedRun:
    tmp = tmp_path_factory.mktemp("lenet300")
    with pytest.MonkeyPatch.context() as mp:
        # --data-dir must win over the environment variable, which points at nothing.
        mp.setenv("SPARSEBENCH_DATA", str(tmp / "no-data-here"))
        return train_and_fetch(
            run_cli,
            tmp,
            copy_tracking_store(empty_tracking_store, tmp),
            ["--method", "sparsevd", "--task", "lenet300_100", "--data-dir", mnist_dir,
             "--set", f"train.epochs={EPOCHS}", "--set", "train.val_size=200"],
            mp,
        )  # fmt: skip


def test_run_is_logged_finished_with_the_flat_config(lenet300: TrainedRun) -> None:
    run = lenet300.run
    assert run.info.status == "FINISHED"
    assert run.data.tags["task"] == "lenet300_100" and run.data.tags["method"] == "sparse_vd"
    params = run.data.params
    assert params["task.name"] == "lenet300_100" and params["method.name"] == "sparse_vd"
    assert params["train.epochs"] == str(EPOCHS) and params["train.val_size"] == "200"
    # Untouched fields keep the defaults of recipe and method (ars: Adam 1e-3, batch 100; log alpha >= 3).
    assert params["method.threshold"] == "3.0" and params["train.batch_size"] == "100"
    assert params["train.optimizer"] == "adam" and float(params["train.lr"]) == 1e-3
    # The run record holds the same full configuration, so a run can be reproduced from either.
    config = json.loads((lenet300.artifacts / "run_record.json").read_text())["config"]
    assert {k: str(v) for k, v in config.items() if not isinstance(v, (list, dict))} == {
        k: v for k, v in params.items() if not v.startswith("[")
    }


def test_per_epoch_curves_have_one_point_per_epoch(lenet300: TrainedRun) -> None:
    for key in ("val_metric", "sparsity", "train_loss", "kl"):
        history = lenet300.history(key)
        assert [step for step, _ in history] == list(range(1, EPOCHS + 1)), key
    assert all(0.0 <= v <= 100.0 for _, v in lenet300.history("val_metric") + lenet300.history("sparsity"))
    # Training on learnable data: the loss goes down from epoch 1 to epoch 2.
    (_, first), (_, second) = lenet300.history("train_loss")
    assert second < first


def test_final_metrics_are_counted_from_the_exported_weights(lenet300: TrainedRun) -> None:
    metrics = lenet300.metrics
    state = torch.load(lenet300.artifacts / "model" / "model.pt", weights_only=False)
    weights = {k: v for k, v in state["state_dict"].items() if k.endswith("weight")}
    assert set(weights) == {"fc1.weight", "fc2.weight", "fc3.weight"}  # plain nn.Linear, no log_sigma2
    nonzeros = sum(int((w != 0).sum()) for w in weights.values())
    assert metrics["weights"] == LENET300_WEIGHTS
    assert metrics["nonzeros"] == nonzeros
    assert metrics["compression"] == pytest.approx(LENET300_WEIGHTS / nonzeros, rel=1e-12)
    # Zeros sit exactly where the shipped masks say, and nowhere else.
    for name, mask in state["masks"].items():
        assert torch.equal(weights[f"{name}.weight"] != 0, mask), name
    # The synthetic classes light up distinct pixel rows, so two epochs learn them nearly perfectly.
    assert 0.0 <= metrics["test_metric"] < 10.0
    assert 0.0 <= metrics["final_val_metric"] < 10.0


def test_per_layer_table_matches_the_model(lenet300: TrainedRun) -> None:
    table = pd.read_csv(lenet300.artifacts / "per_layer.csv")
    state = torch.load(lenet300.artifacts / "model" / "model.pt", weights_only=False)["state_dict"]
    assert table.layer.tolist() == ["fc1", "fc2", "fc3"]
    assert table["shape"].tolist() == ["300x784", "100x300", "10x100"]
    for row in table.itertuples():
        w = state[f"{row.layer}.weight"]
        assert row.weights == w.numel() and row.nonzeros == int((w != 0).sum())
        assert row.sparsity == pytest.approx(100.0 * (1 - row.nonzeros / row.weights))
    assert table.weights.sum() / table.nonzeros.sum() == pytest.approx(lenet300.metrics["compression"])


def test_printed_row_matches_the_logged_numbers(lenet300: TrainedRun) -> None:
    lines = lenet300.cli.out.splitlines()
    task, method, error, sparsities, compression = lines[-1].split()
    assert (task, method) == ("lenet300_100", "sparse_vd")
    assert error == f"{lenet300.metrics['test_metric']:.2f}%"
    table = pd.read_csv(lenet300.artifacts / "per_layer.csv")
    assert sparsities == "-".join(f"{s:.1f}" for s in table.sparsity)
    assert compression == f"{table.weights.sum() / table.nonzeros.sum():.1f}x"
    assert lenet300.run.data.tags["row"] == lines[-1]
    # The per-layer table precedes the row on stdout; the MLflow pointer goes to stderr.
    assert lines[0].split()[:3] == ["layer", "shape", "weights"]
    assert lenet300.run.info.run_id in lenet300.cli.err and lenet300.run.info.run_id not in lenet300.cli.out


def test_threshold_curve_passes_through_the_final_point(lenet300: TrainedRun) -> None:
    curve = pd.read_csv(lenet300.artifacts / "threshold_curve.csv")
    assert curve.threshold.tolist() == [t / 2 for t in range(-8, 17)]
    # A higher log-alpha threshold prunes fewer weights: compression never rises along the curve.
    assert (curve.compression.diff().dropna() <= 1e-12).all()
    at_default = curve[curve.threshold == 3.0].iloc[0]
    assert at_default.compression == pytest.approx(lenet300.metrics["compression"])
    assert at_default.test_metric == pytest.approx(lenet300.metrics["test_metric"])
    assert at_default.nonzeros == lenet300.metrics["nonzeros"]


def test_console_entry_json_output(
    mnist_dir: Path, lenet300: TrainedRun, tmp_path: Path, quick_tracking_uri: str
) -> None:
    """``python -m sparsebench`` in a fresh interpreter; single-threaded like the in-process run, so equal."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SPARSEBENCH_CHECKPOINTS": str(tmp_path / "ck")}
    proc = subprocess.run(
        [sys.executable, "-m", "sparsebench", "run", "--method", "sparsevd", "--task", "lenet300_100",
         "--data-dir", str(mnist_dir), "--tracking-uri", quick_tracking_uri,
         "--set", f"train.epochs={EPOCHS}", "--set", "train.val_size=200", "--no-progress", "--json"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    from mlflow.tracking import MlflowClient

    run = MlflowClient(tracking_uri=quick_tracking_uri).get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    for key in ("test_metric", "compression", "nonzeros", "weights", "flops_reduction"):
        assert result[key] == pytest.approx(run.data.metrics[key]), key
    # Same seed, same data, same thread count: the separate process reproduces the in-process run.
    assert result["row"] == lenet300.run.data.tags["row"]
    assert result["nonzeros"] == lenet300.metrics["nonzeros"]


def test_lenet5_one_epoch(
    mnist_dir: Path,
    run_cli: Callable[..., CliResult],
    tmp_path: Path,
    quick_tracking_uri: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sparsebench.methods.sparse_vd import SparseVD

    # Three curve points instead of 25: the full curve is checked on LeNet-300-100, and the conv
    # evaluations it repeats would dominate this test's time.
    monkeypatch.setattr(SparseVD, "curve_levels", lambda self: (2.0, 3.0, 4.0))
    trained = train_and_fetch(
        run_cli,
        tmp_path,
        quick_tracking_uri,
        ["--method", "sparse_vd", "--task", "lenet5", "--data-dir", mnist_dir,
         "--set", "train.epochs=1", "--set", "train.val_size=200"],
        monkeypatch,
    )  # fmt: skip
    assert trained.run.info.status == "FINISHED"
    assert [step for step, _ in trained.history("val_metric")] == [1]
    table = pd.read_csv(trained.artifacts / "per_layer.csv")
    assert table.layer.tolist() == ["conv1", "conv2", "fc1", "fc2"]
    assert table["shape"].tolist() == ["20x1x5x5", "50x20x5x5", "500x800", "10x500"]
    assert trained.metrics["weights"] == LENET5_WEIGHTS == table.weights.sum()
    # FLOPs of a conv layer scale with its output positions: 24x24 for conv1, 8x8 for conv2.
    assert table.flops_dense.tolist() == [2 * 500 * 576, 2 * 25000 * 64, 2 * 400000, 2 * 5000]
    row = trained.cli.out.splitlines()[-1].split()
    assert row[:2] == ["lenet5", "sparse_vd"] and row[3] == "-".join(f"{s:.1f}" for s in table.sparsity)
    curve = pd.read_csv(trained.artifacts / "threshold_curve.csv")
    assert curve.threshold.tolist() == [2.0, 3.0, 4.0]
    assert curve.compression[1] == pytest.approx(trained.metrics["compression"])


ERROR_CASES = {
    "unknown method": (["--method", "sparse_vdd"], "unknown method 'sparse_vdd': did you mean sparse_vd?"),
    "unknown task": (["--task", "lenet6"], "unknown task 'lenet6'"),
    "unknown key": (["--set", "train.epoch=2"], "unknown config key 'train.epoch'"),
    "unknown section": (["--set", "model.depth=2"], "unknown config key 'model.depth'"),
    "bad type": (["--set", "train.epochs=two"], "train.epochs must be an integer, got 'two'"),
    "bad choice": (["--set", "train.optimizer=rmsprop"], "train.optimizer must be one of adam, sgd"),
    "no equals": (["--set", "train.epochs"], "--set expects key=value"),
    "zero epochs": (["--set", "train.epochs=0"], "train.epochs must be >= 1, got 0"),
    "bad device": (["--device", "tpu"], "--device must be auto, cpu or cuda"),
    "missing data": (["--data-dir", "{empty}"], "MNIST not found in {empty}/mnist"),
    "no method": (["--method", None], "run needs --method and --task"),
    "unknown resume": (
        ["--resume", "0123abcd", "--method", None, "--task", None],
        "no checkpoint for run 0123abcd",
    ),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_bad_input_is_one_line_and_exit_code_2(
    case: str, mnist_dir: Path, tmp_path: Path, run_cli: Callable[..., CliResult]
) -> None:
    changes, expected = ERROR_CASES[case]
    empty = tmp_path / "empty"
    argv: dict[str, object] = {"--method": "sparsevd", "--task": "lenet300_100", "--data-dir": mnist_dir}
    for flag, value in zip(changes[::2], changes[1::2], strict=True):
        argv[flag] = value.format(empty=empty) if isinstance(value, str) else value
    args = [x for flag, value in argv.items() if value is not None for x in (flag, value)]
    db = tmp_path / "mlflow.db"
    result = run_cli("run", *args, "--tracking-uri", f"sqlite:///{db}", "--no-progress")
    assert result.code == 2
    assert result.out == ""
    assert len(result.err.splitlines()) == 1, result.err
    assert result.err.startswith("sparsebench: error: ")
    assert expected.format(empty=empty) in result.err
    assert "Traceback" not in result.err
    assert not db.exists()  # rejected before any MLflow run was opened


def test_missing_data_falls_back_to_environment_then_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_cli: Callable[..., CliResult]
) -> None:
    base = ["run", "--method", "sparsevd", "--task", "lenet300_100", "--no-progress"]
    monkeypatch.setenv("SPARSEBENCH_DATA", str(tmp_path / "env"))
    err = run_cli(*base).err
    assert f"MNIST not found in {tmp_path / 'env' / 'mnist'} " in err
    assert "--data-dir or SPARSEBENCH_DATA" in err and "sparsebench data download mnist" in err
    monkeypatch.delenv("SPARSEBENCH_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert (
        f"MNIST not found in {tmp_path / 'cache' / 'sparsebench' / 'data' / 'mnist'} " in run_cli(*base).err
    )


def test_sigterm_marks_the_run_killed_and_keeps_it_resumable(
    mnist_dir: Path, tmp_path: Path, quick_tracking_uri: str
) -> None:
    """A scheduler's SIGTERM (``kill PID``) ends a run like Ctrl-C instead of leaving it RUNNING."""
    import signal
    import time

    from mlflow.tracking import MlflowClient

    env = {**os.environ, "OMP_NUM_THREADS": "1", "SPARSEBENCH_CHECKPOINTS": str(tmp_path / "ck")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sparsebench", "run", "--method", "dense", "--task", "lenet300_100",
         "--data-dir", str(mnist_dir), "--tracking-uri", quick_tracking_uri, "--set", "train.epochs=500",
         "--set", "train.val_size=200", "--no-progress"],
        stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    deadline = time.time() + 600  # generous: the machine may be busy
    while not list((tmp_path / "ck").rglob("*.pt")) and time.time() < deadline:  # an epoch is done
        time.sleep(0.2)
    assert list((tmp_path / "ck").rglob("*.pt")), "no epoch finished in time"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "sparsebench run --resume" in err and "Traceback" not in err
    client = MlflowClient(tracking_uri=quick_tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("sparsebench").experiment_id])
    assert run.info.status == "KILLED" and run.data.tags["state"] == "interrupted"


def test_version_names_the_installed_distribution(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--version`` prints what pip installed, and the package's own version in a bare source tree."""
    from importlib import metadata

    from sparsebench import __version__
    from sparsebench.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"sparsebench {metadata.version('sparsebench')}\n"

    def not_installed(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out == f"sparsebench {__version__}\n"
