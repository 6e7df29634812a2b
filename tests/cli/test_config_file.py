"""``run --config FILE`` (a YAML of --set values) and ``run --print-config`` (the full resolved config)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from sparsebench.run.plan import plan_run
from tests.conftest import CliResult

RUN = ("run", "--method", "sparse_vd", "--task", "lenet5")


def printed(result: CliResult) -> dict[str, object]:
    assert result.code == 0, result.err
    return yaml.safe_load(result.out)


def test_print_config_shows_every_resolved_key_and_touches_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_cli: Callable[..., CliResult]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SPARSEBENCH_DATA", str(tmp_path / "no-data"))
    config = printed(run_cli(*RUN, "--set", "train.epochs=7", "--print-config"))
    expected = plan_run("lenet5", "sparse_vd", {"train.epochs": 7}).flat_config()
    assert config == expected
    assert list(config) == list(expected)  # every key, in the order of the sections
    assert {"task.name", "method.threshold", "train.lr", "train.seed"} <= set(config)
    assert list(tmp_path.iterdir()) == []  # no store, no checkpoint folder, no data read


def test_a_printed_config_runs_as_config_file(tmp_path: Path, run_cli: Callable[..., CliResult]) -> None:
    """What --print-config writes is a valid --config (task and method included), giving the same run."""
    first = run_cli(*RUN, "--set", "method.threshold=2.5", "--set", "train.lr=3e-4", "--print-config")
    path = tmp_path / "lenet5.yaml"
    path.write_text(first.out)
    again = run_cli("run", "--config", path, "--print-config")
    assert printed(again) == printed(first)


def test_config_file_values_apply_and_set_wins(tmp_path: Path, run_cli: Callable[..., CliResult]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train.epochs: 20\ntrain.lr: 1e-3\nmethod:\n  threshold: 2.0\n  kl_weight: 0.5\n")
    config = printed(run_cli(*RUN, "--config", path, "--set", "train.epochs=3", "--print-config"))
    assert config["train.epochs"] == 3  # --set given too wins over the file
    assert config["train.lr"] == pytest.approx(1e-3)
    assert config["method.threshold"] == 2.0 and config["method.kl_weight"] == 0.5


BAD_FILES = {
    "unknown key": ("train:\n  epoch: 3\n", "unknown config key 'train.epoch'", True),
    "bad type": ("train.epochs: two\n", "train.epochs must be an integer, got 'two'", True),
    "out of range": ("train.lr: -1\n", "train.lr must be > 0", True),
    "not a mapping": ("- train.epochs\n", "must map --set keys to values", False),
    "not yaml": ("train.epochs: [1\n", "is not valid YAML", False),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_config_file_is_one_line_naming_it(
    case: str, tmp_path: Path, mnist_dir: Path, run_cli: Callable[..., CliResult]
) -> None:
    text, expected, names_flag = BAD_FILES[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    db = tmp_path / "mlflow.db"
    for extra in ([], ["--print-config"]):
        result = run_cli(
            *RUN, "--config", path, "--data-dir", mnist_dir, "--tracking-uri", f"sqlite:///{db}", *extra
        )
        assert result.code == 2 and result.out == ""
        assert len(result.err.splitlines()) == 1 and expected in result.err, result.err
        assert (f"(in --config {path})" in result.err) == names_flag
    assert not db.exists()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--config", "{missing}"], "cannot read it"),
        (["--resume", "abcdef12", "--config", "{good}"], "--set and --config cannot change a resumed"),
        (["--resume", "abcdef12", "--print-config"], "--print-config shows a new run's configuration"),
        (["--print-config"], "run needs --method and --task"),
    ],
)
def test_misused_flags_are_one_line(
    argv: list[str], expected: str, tmp_path: Path, run_cli: Callable[..., CliResult]
) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("train.epochs: 2\n")
    args = [a.format(missing=tmp_path / "missing.yaml", good=good) for a in argv]
    result = run_cli("run", *args)
    assert result.code == 2 and len(result.err.splitlines()) == 1 and expected in result.err, result.err


def test_a_run_trains_with_the_file_values(
    tmp_path: Path, mnist_dir: Path, quick_tracking_uri: str, run_cli: Callable[..., CliResult]
) -> None:
    """The file reaches the training run, not only the printout: the logged params hold its values."""
    from mlflow.tracking import MlflowClient

    path = tmp_path / "dense.yaml"
    path.write_text(
        "task.name: lenet300_100\nmethod.name: dense\ntrain:\n  epochs: 1\n  val_size: 200\n  seed: 7\n"
    )
    result = run_cli("run", "--config", path, "--data-dir", mnist_dir, "--tracking-uri", quick_tracking_uri,
                     "--no-progress", "--json")  # fmt: skip
    assert result.code == 0, result.err
    run_id = __import__("json").loads(result.out)["run_id"]
    params = MlflowClient(tracking_uri=quick_tracking_uri).get_run(run_id).data.params
    assert (params["train.epochs"], params["train.val_size"], params["train.seed"]) == ("1", "200", "7")
    assert (params["task.name"], params["method.name"]) == ("lenet300_100", "dense")
