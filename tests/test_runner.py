"""The training loop's promises about interrupted, resumed and failed runs.

Each test drives ``sparsebench run`` in-process and reads the outcome back from MLflow and from
the checkpoint folder (isolated per test by conftest's ``SPARSEBENCH_CHECKPOINTS``). Test-only
methods are registered for the duration of a test to make a run fail or be interrupted on cue.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from torch import nn

from sparsebench.errors import ConfigError
from sparsebench.method import SparsityMethod, StepContext
from sparsebench.run import checkpoint
from tests.conftest import CliResult

STEPS_PER_EPOCH = 10  # (1,200 - 200 validation) / batch 100


def client_for(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def exported_model(client: Any, run_id: str, tmp: Path) -> dict[str, Any]:
    local = client.download_artifacts(run_id, "model/model.pt", str(tmp / run_id))
    return torch.load(local, weights_only=True)


def assert_same_model(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    assert a["masks"].keys() == b["masks"].keys()
    for key in a["masks"]:
        assert torch.equal(a["masks"][key], b["masks"][key]), key


def steps_of(client: Any, run_id: str, key: str) -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, key)]


def values_of(client: Any, run_id: str, key: str) -> list[float]:
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def run_id_in(err: str) -> str:
    return re.search(r"(?:--resume|MLflow run) ([0-9a-f]{32})", err).group(1)


def half_by_magnitude(model: nn.Module) -> dict[str, torch.Tensor]:
    """Keep the larger half of each weight tensor (a cheap, deterministic stand-in for a real method)."""
    masks = {}
    for path, m in model.named_modules():
        if isinstance(m, nn.Linear):
            w = m.weight.detach().abs()
            masks[path] = w > w.flatten().median()
    return masks


class NaNInSecondEpoch(SparsityMethod):
    """The loss turns NaN during epoch 2, after epoch 1 has been checkpointed."""

    description = "test only"

    def regularizer(self, model: nn.Module, ctx: StepContext) -> torch.Tensor | None:
        return torch.tensor(math.nan) if ctx.epoch == 1 else None

    def masks(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return half_by_magnitude(model)


class CtrlC(SparsityMethod):
    """Raises KeyboardInterrupt (as Ctrl-C would) after the optimiser step numbered ``at``, once."""

    description = "test only"
    at: ClassVar[int | None] = None

    def on_step_end(self, model: nn.Module, ctx: StepContext) -> None:
        if ctx.step == CtrlC.at:
            CtrlC.at = None
            raise KeyboardInterrupt

    def masks(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return half_by_magnitude(model)


@pytest.fixture()
def no_curve(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip Sparse VD's post-hoc threshold curve (checked in test_cli); it would triple these tests' time."""
    from sparsebench.methods.sparse_vd import SparseVD

    monkeypatch.setattr(SparseVD, "curve_levels", lambda self: ())


@pytest.mark.usefixtures("no_curve")
def test_stop_then_resume_equals_an_uninterrupted_run(
    mnist_dir: Path, quick_tracking_uri: str, tmp_path: Path, run_cli: Callable[..., CliResult]
) -> None:
    # KL warm-up over epochs 0-2, so the resumed epochs depend on restoring the epoch counter too.
    train = ["--method", "sparsevd", "--task", "lenet300_100", "--set", "train.epochs=3",
             "--set", "train.val_size=200", "--set", "method.kl_warmup_start=0",
             "--set", "method.kl_warmup_epochs=2"]  # fmt: skip
    common = ["--data-dir", mnist_dir, "--tracking-uri", quick_tracking_uri, "--no-progress"]
    client = client_for(quick_tracking_uri)

    paused = run_cli("run", *train, *common, "--stop-after", "1")
    assert paused.code == 0 and paused.out == ""
    run_id = run_id_in(paused.err)
    assert f"continue with: sparsebench run --resume {run_id}" in paused.err
    paused_run = client.get_run(run_id)
    assert paused_run.info.status == "KILLED" and paused_run.data.tags["state"] == "paused"
    assert steps_of(client, run_id, "val_metric") == [1]
    assert torch.load(checkpoint.checkpoint_path(run_id), weights_only=True)["epoch"] == 1

    resumed = run_cli("run", "--resume", run_id[:8], *common)  # the short id that tables print
    assert resumed.code == 0, resumed.err
    assert resumed.out.splitlines()[-1].startswith("lenet300_100 sparse_vd ")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert sorted(steps_of(client, run_id, "val_metric")) == [1, 2, 3]
    assert sorted(steps_of(client, run_id, "kl")) == [1, 2, 3]

    full = run_cli("run", *train, *common)
    assert full.code == 0, full.err
    full_id = run_id_in(full.err)
    assert full_id != run_id
    experiment = client.get_experiment_by_name("sparsebench").experiment_id
    assert {r.info.run_id for r in client.search_runs([experiment])} == {run_id, full_id}

    assert_same_model(exported_model(client, run_id, tmp_path), exported_model(client, full_id, tmp_path))
    for key in ("val_metric", "train_loss", "regularizer", "sparsity"):
        assert values_of(client, run_id, key) == values_of(client, full_id, key), key
    assert values_of(client, run_id, "regularizer")[0] == 0.0 < values_of(client, run_id, "regularizer")[1]
    assert run.data.tags["row"] == client.get_run(full_id).data.tags["row"]


def test_diverged_loss_fails_the_run_and_keeps_the_checkpoint(
    mnist_dir: Path,
    quick_tracking_uri: str,
    run_cli: Callable[..., CliResult],
    temporary_method: Callable[[str, type], type],
) -> None:
    temporary_method("test_nan_in_second_epoch", NaNInSecondEpoch)
    result = run_cli("run", "--method", "test_nan_in_second_epoch", "--task", "lenet300_100",
                     "--data-dir", mnist_dir, "--tracking-uri", quick_tracking_uri, "--no-progress",
                     "--set", "train.epochs=3", "--set", "train.val_size=200")  # fmt: skip
    assert result.code == 2
    assert len(result.err.splitlines()) == 1, result.err
    # The check runs at the end of the epoch: step 20 is the last of epoch 2.
    assert result.err.startswith(
        f"sparsebench: error: loss became nan in epoch 2, step {2 * STEPS_PER_EPOCH};"
    )
    run_id = run_id_in(result.err.replace("(run ", "MLflow run "))
    run = client_for(quick_tracking_uri).get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["failure"] == "loss diverged"
    assert steps_of(client_for(quick_tracking_uri), run_id, "val_metric") == [1]
    saved = torch.load(checkpoint.checkpoint_path(run_id), weights_only=True)
    assert saved["epoch"] == 1 and saved["step"] == STEPS_PER_EPOCH
    assert all(torch.isfinite(v).all() for v in saved["model"].values())  # the last good weights


def test_ctrl_c_kills_the_run_keeps_the_checkpoint_and_resumes(
    mnist_dir: Path,
    quick_tracking_uri: str,
    tmp_path: Path,
    run_cli: Callable[..., CliResult],
    temporary_method: Callable[[str, type], type],
) -> None:
    temporary_method("test_ctrl_c", CtrlC)
    train = ["--method", "test_ctrl_c", "--task", "lenet300_100", "--set", "train.epochs=2",
             "--set", "train.val_size=200"]  # fmt: skip
    common = ["--data-dir", mnist_dir, "--tracking-uri", quick_tracking_uri, "--no-progress"]
    client = client_for(quick_tracking_uri)

    CtrlC.at = STEPS_PER_EPOCH + 3  # the 4th step of epoch 2
    interrupted = run_cli("run", *train, *common)
    assert interrupted.code == 130
    assert interrupted.out == ""
    assert "interrupted in epoch 2" in interrupted.err
    run_id = run_id_in(interrupted.err)
    run = client.get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags["state"] == "interrupted"
    assert steps_of(client, run_id, "val_metric") == [1]
    assert torch.load(checkpoint.checkpoint_path(run_id), weights_only=True)["epoch"] == 1

    # The half-done epoch 2 is thrown away and redone from the checkpoint, so nothing of it leaks.
    resumed = run_cli("run", "--resume", run_id[:8], *common)  # the short id that tables print
    assert resumed.code == 0, resumed.err
    assert client.get_run(run_id).info.status == "FINISHED"
    assert sorted(steps_of(client, run_id, "val_metric")) == [1, 2]
    full = run_cli("run", *train, *common)
    assert full.code == 0, full.err
    full_id = run_id_in(full.err)
    assert_same_model(exported_model(client, run_id, tmp_path), exported_model(client, full_id, tmp_path))
    assert client.get_run(run_id).data.metrics["compression"] == pytest.approx(2.0)


class FailsInFinish(SparsityMethod):
    """Trains normally, then raises ``error`` from ``calibrate`` (the first hook after training)."""

    description = "test only"
    error: ClassVar[BaseException] = RuntimeError("bug in a plugin")

    def calibrate(self, model: nn.Module, validate: Callable[[nn.Module], float]) -> dict[str, float]:
        raise FailsInFinish.error

    def masks(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return half_by_magnitude(model)


@pytest.mark.parametrize(
    "error, code, status",
    [(KeyboardInterrupt(), 130, "KILLED"), (ConfigError("bad calibration"), 2, "FAILED"),
     (RuntimeError("bug in a plugin"), None, "FAILED")],
    ids=["ctrl-c", "user-error", "bug"],
)  # fmt: skip
def test_failure_after_training_still_closes_the_run(
    error: BaseException,
    code: int | None,
    status: str,
    mnist_dir: Path,
    quick_tracking_uri: str,
    run_cli: Callable[..., CliResult],
    temporary_method: Callable[[str, type], type],
) -> None:
    temporary_method("test_fails_in_finish", FailsInFinish)
    FailsInFinish.error = error
    argv = ["run", "--method", "test_fails_in_finish", "--task", "lenet300_100", "--data-dir", mnist_dir,
            "--tracking-uri", quick_tracking_uri, "--no-progress", "--set", "train.epochs=1",
            "--set", "train.val_size=200"]  # fmt: skip
    try:
        result = run_cli(*argv)
        escaped: BaseException | None = None
    except BaseException as exc:  # noqa: BLE001 - a KeyboardInterrupt escaping must not stop pytest
        result, escaped = None, exc
    if code is None:
        assert isinstance(escaped, RuntimeError)  # a bug keeps its traceback
    else:
        assert escaped is None, f"{type(escaped).__name__} escaped main()"
        assert result.code == code
    client = client_for(quick_tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("sparsebench").experiment_id])
    assert run.info.status == status
    assert checkpoint.checkpoint_path(run.info.run_id).is_file()


def test_resuming_a_finished_run_is_refused(
    mnist_dir: Path,
    quick_tracking_uri: str,
    run_cli: Callable[..., CliResult],
    temporary_method: Callable[[str, type], type],
) -> None:
    temporary_method("test_ctrl_c", CtrlC)
    CtrlC.at = None
    common = ["--data-dir", mnist_dir, "--tracking-uri", quick_tracking_uri, "--no-progress"]
    settings = ["--set", "train.epochs=1", "--set", "train.val_size=200"]
    done = run_cli("run", "--method", "test_ctrl_c", "--task", "lenet300_100", *settings, *common)
    assert done.code == 0
    run_id = run_id_in(done.err)
    again = run_cli("run", "--resume", run_id, *common)  # its checkpoint went when it finished
    assert again.code == 2 and "only when started with --keep-checkpoint" in again.err
    kept = run_cli("run", "--method", "test_ctrl_c", "--task", "lenet300_100", *settings, *common,
                   "--keep-checkpoint")  # fmt: skip
    run_id = run_id_in(kept.err)
    again = run_cli("run", "--resume", run_id, *common)
    assert len(client_for(quick_tracking_uri).get_metric_history(run_id, "test_metric")) == 1
    assert again.code == 2 and "already finished" in again.err


def test_the_recipe_follows_task_options_given_on_the_command_line() -> None:
    """``--set task.preset=small`` must get small's recipe (13 epochs, lr 20), not medium's."""
    from sparsebench.run.plan import plan_run

    small = plan_run("ptb_lstm", "dense", {"task.preset": "small"}).train
    medium = plan_run("ptb_lstm", "dense", {}).train
    assert (small.epochs, small.lr, small.lr_step) == (13, 20.0, 4)
    assert (medium.epochs, medium.lr) == (39, 35.0)
    # train.* still edits the recipe of the chosen preset.
    edited = plan_run("ptb_lstm", "dense", {"task.preset": "small", "train.epochs": 2}).train
    assert (edited.epochs, edited.lr) == (2, 20.0)


def test_a_calibrated_run_reports_the_groups_of_the_exported_model(
    mnist_dir: Path,
    quick_tracking_uri: str,
    run_cli: Callable[..., CliResult],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """The final ``groups_kept`` and ``sparsity`` follow the thresholds calibration chose.

    The shift is forced to drop half of the first layer's inputs, so counts left over from the
    last epoch would disagree with the exported model.
    """
    from sparsebench.methods._group import GroupMethod

    def halve_the_first_layer(self: GroupMethod, model: nn.Module, validate: Any) -> tuple[float, ...]:
        _, first = self.layers(model)[0]
        return float(first.scale.prune_score().detach().median()) - first.current_threshold(), 0.0, 0.0

    monkeypatch.setattr(GroupMethod, "select_shift", halve_the_first_layer)
    monkeypatch.setattr(GroupMethod, "curve_levels", lambda self: ())
    result = run_cli("run", "--method", "group_nj", "--task", "lenet300_100", "--data-dir", mnist_dir,
                     "--tracking-uri", quick_tracking_uri, "--no-progress", "--set", "train.epochs=1",
                     "--set", "train.val_size=200")  # fmt: skip
    assert result.code == 0, result.err
    client = client_for(quick_tracking_uri)
    run_id = run_id_in(result.err)
    metrics = client.get_run(run_id).data.metrics
    assert metrics["calibration.shift"] < 0
    exported = exported_model(client, run_id, tmp_path)
    fc1 = exported["masks"]["fc1"]
    read_inputs = int(fc1.any(dim=0).sum())
    assert metrics["groups_kept.fc1"] == read_inputs < max(values_of(client, run_id, "groups_kept.fc1"))
    kept = sum(int(m.sum()) for m in exported["masks"].values())
    total = sum(m.numel() for m in exported["masks"].values())
    assert metrics["sparsity"] == pytest.approx(100.0 * (total - kept) / total)
    # The record keeps what calibration chose, as logged: thresholds can be read without the store.
    from sparsebench.record import RECORD_NAME, RunRecord
    from sparsebench.tracking import ArtifactReader, open_store

    text = ArtifactReader(open_store(quick_tracking_uri)).text(run_id, RECORD_NAME)
    recorded = RunRecord.from_json(text, "the run's record").metrics
    chosen = [key for key in metrics if key.startswith("calibration.threshold.")]
    assert chosen and "calibration.shift" in recorded
    for key in [*chosen, "calibration.shift"]:
        assert recorded[key] == pytest.approx(metrics[key]), key


@pytest.mark.usefixtures("no_curve")
def test_a_channels_last_conv_run_resumes_to_the_same_weights(
    mnist_dir: Path, quick_tracking_uri: str, tmp_path: Path, run_cli: Callable[..., CliResult]
) -> None:
    """LeNet-5 trains channels-last on CPU: its checkpoint (weights and Adam state) must restore."""
    train = ["--method", "sparse_vd", "--task", "lenet5", "--set", "train.epochs=2",
             "--set", "train.val_size=200"]  # fmt: skip
    common = ["--data-dir", mnist_dir, "--tracking-uri", quick_tracking_uri, "--no-progress"]
    client = client_for(quick_tracking_uri)
    paused = run_cli("run", *train, *common, "--stop-after", "1")
    run_id = run_id_in(paused.err)
    state = torch.load(checkpoint.checkpoint_path(run_id), weights_only=True)
    assert state["model"]["conv2.weight"].is_contiguous(memory_format=torch.channels_last)
    assert run_cli("run", "--resume", run_id, *common).code == 0
    full = run_cli("run", *train, *common)
    full_model = exported_model(client, run_id_in(full.err), tmp_path)
    assert_same_model(exported_model(client, run_id, tmp_path), full_model)


def test_place_model_puts_conv_weights_channels_last_on_cpu_only_when_there_are_convs() -> None:
    from sparsebench.run.loop import place_model

    cpu = torch.device("cpu")
    convnet = place_model(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 4, 2)), cpu)
    assert convnet[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert not convnet[0].weight.is_contiguous()
    x = torch.randn(5, 3, 4, 4)
    reference = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 4, 2))
    reference.load_state_dict(convnet.state_dict())
    # Flatten still reads channels first: the channels-last model computes the same function.
    torch.testing.assert_close(convnet(x), reference(x))
    mlp = place_model(nn.Sequential(nn.Linear(4, 3)), cpu)
    assert mlp[0].weight.is_contiguous()


def test_refinish_repeats_the_end_of_a_run_as_a_new_run_that_reports_show_instead(
    mnist_dir: Path, quick_tracking_uri: str, tmp_path: Path, run_cli: Callable[..., CliResult]
) -> None:
    from sparsebench.report.select import Selection, load_runs

    common = ["--data-dir", mnist_dir, "--tracking-uri", quick_tracking_uri, "--no-progress"]
    train = ["--method", "group_nj", "--task", "lenet300_100", "--set", "train.epochs=2",
             "--set", "train.val_size=200", "--tag", "study=t", "--keep-checkpoint"]  # fmt: skip
    first = run_cli("run", *train, *common)
    assert first.code == 0, first.err
    source = run_id_in(first.err)

    again = run_cli("run", "--refinish", source[:8], "--tag", "note=x", *common)
    assert again.code == 0, again.err
    new = run_id_in(again.err)
    client = client_for(quick_tracking_uri)
    run, old = client.get_run(new), client.get_run(source)
    assert new != source and run.info.status == "FINISHED"
    assert run.data.tags["refinished_from"] == source and run.data.params == old.data.params
    assert run.data.tags["study"] == "t" and run.data.tags["note"] == "x"  # inherited, and added
    assert run.data.tags["row"] == old.data.tags["row"]
    assert values_of(client, new, "train_loss") == values_of(client, source, "train_loss")  # curves
    assert steps_of(client, new, "val_metric") == steps_of(client, source, "val_metric")
    # Same trained weights, same code: the calibration, the export and every final number repeat.
    assert_same_model(exported_model(client, new, tmp_path), exported_model(client, source, tmp_path))
    for key in ("test_metric", "compression", "calibration.shift"):
        assert run.data.metrics[key] == old.data.metrics[key], key
    assert again.out.splitlines()[-1] == first.out.splitlines()[-1]  # the paper-format row
    assert list(load_runs(Selection(tags={"study": "t"}), quick_tracking_uri).runs.run_id) == [new]

    third = run_cli("run", "--refinish", new, *common)  # from its training run's checkpoint
    assert third.code == 0, third.err
    newest = run_id_in(third.err)
    assert client.get_run(newest).data.tags["refinished_from"] == new
    assert list(load_runs(Selection(tags={"study": "t"}), quick_tracking_uri).runs.run_id) == [newest]


def test_refinish_needs_a_fully_trained_run_and_no_other_flags(
    mnist_dir: Path, quick_tracking_uri: str, run_cli: Callable[..., CliResult]
) -> None:
    common = ["--data-dir", mnist_dir, "--tracking-uri", quick_tracking_uri, "--no-progress"]
    paused = run_cli("run", "--method", "dense", "--task", "lenet300_100", "--set", "train.epochs=3",
                     "--set", "train.val_size=200", "--stop-after", "1", *common)  # fmt: skip
    run_id = run_id_in(paused.err)
    early = run_cli("run", "--refinish", run_id, *common)
    assert early.code == 2 and len(early.err.splitlines()) == 1
    hint = f"stopped after epoch 1 of 3; finish its training first: sparsebench run --resume {run_id}"
    assert hint in early.err
    mixed = run_cli("run", "--refinish", run_id, "--method", "dense", *common)
    assert mixed.code == 2 and "give it alone" in mixed.err
