"""``sparsebench bench`` end to end: a trained run on generated MNIST, every field, MLflow, bad input."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import CliResult, copy_tracking_store

FIELDS = {
    "run_id", "task", "method", "format", "device", "batch_size", "status", "reason", "max_abs_diff",
    "agreement", "bytes", "size_ratio", "ms", "ms_q1", "ms_q3", "examples_per_s", "speedup", "ideal",
    "fraction_of_ideal",
}  # fmt: skip


@pytest.fixture(scope="module")
def trained(
    mnist_dir: Path, run_cli: Callable[..., CliResult], empty_tracking_store: Path, tmp_path_factory
) -> tuple[str, str]:
    tmp = tmp_path_factory.mktemp("bench")
    uri = copy_tracking_store(empty_tracking_store, tmp)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPARSEBENCH_CHECKPOINTS", str(tmp / "checkpoints"))
        result = run_cli(
            "run", "--method", "magnitude", "--task", "lenet300_100", "--data-dir", mnist_dir,
            "--set", "train.epochs=2", "--set", "train.val_size=200", "--set", "method.sparsity=0.9",
            "--set", "method.start=0", "--set", "method.end=0.5",
            "--tracking-uri", uri, "--no-progress", "--json",
        )  # fmt: skip
    assert result.code == 0, result.err
    return uri, json.loads(result.out)["run_id"]


def test_bench_a_run_gives_every_field_and_logs_to_it(
    trained: tuple[str, str], mnist_dir: Path, run_cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    uri, run_id = trained
    args = ["--data-dir", mnist_dir, "--tracking-uri", uri, "--batch-sizes", 1, 16, "--repeats", 2]
    result = run_cli("bench", run_id, *args, "--json")
    assert result.code == 0, result.err
    table = pd.DataFrame(json.loads(result.out))
    assert set(table.columns) >= FIELDS
    assert (table.status == "ok").all()  # LeNet-300-100 is a chain: every format applies on the CPU
    assert set(table.format) == {
        "dense",
        "thinned",
        "torch_csr",
        "scipy_csr",
        "thinned_torch_csr",
        "thinned_scipy_csr",
    }
    assert sorted(set(table.batch_size)) == [1, 16]
    assert table.ideal.iloc[0] == pytest.approx(10.0, rel=0.01)  # 90 % of the weights removed
    assert (table.agreement == 1.0).all() and (table.max_abs_diff < 1e-3).all()
    csr = table[table.format == "torch_csr"].iloc[0]
    assert csr.size_ratio > 3  # 10 % of the weights as float32 + int32 index: about 5x smaller
    # speedup = dense ms / format ms; JSON keeps 10 decimals of each, so compare with a tolerance.
    dense_ms = table.batch_size.map(table[table.format == "dense"].set_index("batch_size").ms)
    assert list(table.speedup * table.ms) == pytest.approx(list(dense_ms), rel=1e-6)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    local = Path(client.download_artifacts(run_id, "inference", str(tmp_path)))
    logged = pd.read_csv(local / "cpu.csv")
    assert len(logged) == len(table)
    env = json.loads((local / "cpu_environment.json").read_text())
    assert {"cpu", "threads", "torch", "device"} <= set(env)
    metrics = client.get_run(run_id).data.metrics
    assert metrics["inference.cpu.dense.b1.speedup"] == 1.0
    assert metrics["inference.torch_csr.bytes"] == csr.bytes


def test_bench_prints_a_readable_table(trained: tuple[str, str], mnist_dir: Path, run_cli) -> None:
    uri, run_id = trained
    result = run_cli(
        "bench", "--runs", run_id, "--data-dir", mnist_dir, "--tracking-uri", uri, "--no-log",
        "--formats", "thinned", "dense", "thinned", "--batch-sizes", 4, "--repeats", 1,
    )  # fmt: skip
    assert result.code == 0, result.err
    assert "fastest at batch 4" in result.out and "thinned" in result.out and "dense" in result.out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bench"], "give run ids"),
        (["bench", "RUN", "--train"], "exactly one"),
        (["bench", "abc123", "--formats", "coo"], "unknown format coo"),
        (["bench", "abc123"], "run abc123: no such MLflow run"),
        (["bench", "--train", "--rounds", "0"], "--rounds must be >= 1"),
        (["bench", "--train", "--steps", "3", "--rounds", "5"], "--steps >= --rounds"),
        (["bench", "--train", "--methods", "sparse_vdd"], "did you mean"),
    ],
)
def test_bad_input_is_one_line(argv: list[str], message: str, run_cli, quick_tracking_uri: str) -> None:
    result = run_cli(*argv, "--tracking-uri", quick_tracking_uri)
    assert result.code == 2 and message in result.err and len(result.err.strip().splitlines()) == 1


def test_break_even_command(run_cli, tmp_path: Path) -> None:
    out = tmp_path / "sweep.csv"
    result = run_cli(
        "bench", "--break-even", "--tasks", "lenet300_100", "--batch-sizes", 8, "--backends", "scipy",
        "--out", out, "--json",
    )  # fmt: skip
    assert result.code == 0, result.err
    table = pd.DataFrame(json.loads(result.out))
    assert list(table.layer) == ["fc1", "fc2", "fc3"] and (table.backend == "scipy").all()
    assert len(pd.read_csv(out)) == 3 * 9  # every layer at every default sparsity


def test_training_throughput_mode_still_works(run_cli) -> None:
    result = run_cli(
        "bench", "--train", "--tasks", "lenet300_100", "--methods", "dense", "sparse_vd",
        "--steps", 3, "--rounds", 3, "--compile", "never", "--no-breakdown", "--json",
    )  # fmt: skip
    assert result.code == 0, result.err
    table = pd.DataFrame(json.loads(result.out)).set_index("method")
    assert table.loc["dense", "x_dense"] == 1.0 and table.loc["sparse_vd", "x_dense"] > 0


def test_training_throughput_prints_where_the_time_goes(run_cli, capfd: pytest.CaptureFixture) -> None:
    capfd.readouterr()
    result = run_cli(
        "bench", "--train", "--tasks", "lenet300_100", "--methods", "dense", "sparse_vd",
        "--steps", 2, "--rounds", 2, "--compile", "never",
    )  # fmt: skip
    assert result.code == 0, result.err
    head, breakdown = result.out.split("where the time goes")
    assert "layers_x_dense" in head and " x_dense" in head
    assert "%layers" in breakdown and "%noise" in breakdown and "%forward" in breakdown
    native = capfd.readouterr().err  # what native code wrote to file descriptor 2
    assert "USDT" not in native and "profiler_start" not in native


def test_a_short_run_id_is_resolved_before_timing_and_logged_to_the_full_id(
    trained: tuple[str, str], mnist_dir: Path, run_cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """#18.11: ``bench <8 characters>`` measured everything, then crashed logging to the prefix."""
    from sparsebench.bench import inference
    from sparsebench.tracking import open_store

    uri, run_id = trained
    timed: list[str] = []
    measure = inference.bench_formats
    monkeypatch.setattr(inference, "bench_formats", lambda *a, **k: timed.append("run") or measure(*a, **k))
    args = ["--data-dir", mnist_dir, "--tracking-uri", uri, "--formats", "dense", "--batch-sizes", 2]
    bad = run_cli("bench", run_id[:8], "ffffffffff", *args, "--repeats", 1)
    assert bad.code == 2 and "run ffffffffff: no such MLflow run" in bad.err
    assert timed == []  # the unknown second id was refused before the first run was timed
    result = run_cli("bench", run_id[:8], *args, "--repeats", 1, "--json")
    assert result.code == 0, result.err
    assert set(pd.DataFrame(json.loads(result.out)).run_id) == {run_id}
    history = open_store(uri).client.get_metric_history(run_id, "inference.cpu.dense.b2.ms")
    assert len(history) >= 1
