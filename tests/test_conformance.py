"""Every registered method on every small registered task, through ``sparsebench.testing``.

The matrix is read from the registries at collection time, so a new method or task is covered
without editing this file (timm's tests/test_models.py does the same over its model registry).
The second half checks the checker: deliberately broken methods must be caught.
"""

from __future__ import annotations

import copy
import functools
import math

import pytest
import torch
from torch import nn

from sparsebench.measure.counts import WEIGHT_LAYERS, weight_tensors
from sparsebench.method import SparsityMethod, StepContext
from sparsebench.registry import METHODS, TASKS
from sparsebench.testing import (
    ConformanceError,
    check_method_conformance,
    prepare,
    random_batch,
    step_schedule,
)

SMALL_MODEL_WEIGHTS = 500_000
"""Tasks up to this many weights (the MNIST LeNets) run in the default test set; larger ones are slow."""


@functools.cache
def weight_count(task_name: str) -> int:
    """Weights of the task's model, built on the meta device so even a large model costs nothing."""
    task_cls = TASKS.get(task_name)
    with torch.device("meta"):
        model = task_cls(task_cls.Config()).build_model()
    return sum(t.numel() for m in model.modules() if isinstance(m, WEIGHT_LAYERS) for t in weight_tensors(m))


def run_conformance(method_name: str, task_name: str) -> None:
    method_cls, task_cls = METHODS.get(method_name), TASKS.get(task_name)
    method, task = method_cls(method_cls.Config()), task_cls(task_cls.Config())
    torch.manual_seed(0)
    if (reason := method.not_applicable(task.build_model())) is not None:
        pytest.skip(f"{method_name} on {task_name}: {reason}")
    check_method_conformance(method, task)


@pytest.mark.parametrize("task_name", TASKS.builtin_names())
@pytest.mark.parametrize("method_name", METHODS.builtin_names())
def test_method_conforms_on_small_task(method_name: str, task_name: str) -> None:
    if weight_count(task_name) > SMALL_MODEL_WEIGHTS:
        pytest.skip(f"{task_name} is large; covered by test_method_conforms_on_large_task (-m slow)")
    run_conformance(method_name, task_name)


@pytest.mark.slow
@pytest.mark.parametrize("task_name", TASKS.builtin_names())
@pytest.mark.parametrize("method_name", METHODS.builtin_names())
def test_method_conforms_on_large_task(method_name: str, task_name: str) -> None:
    if weight_count(task_name) <= SMALL_MODEL_WEIGHTS:
        pytest.skip(f"{task_name} is small; covered by test_method_conforms_on_small_task")
    run_conformance(method_name, task_name)


def test_no_built_in_plugin_failed_to_load() -> None:
    """Plugins installed beside sparsebench are not the project's to test; its own must all load."""
    builtins = set(METHODS.builtin_names()) | set(TASKS.builtin_names())
    assert not builtins & (set(METHODS.broken) | set(TASKS.broken))


def test_step_schedule_takes_the_first_step_then_the_last_ones() -> None:
    assert step_schedule(200, 3) == (1, [0, 198, 199])
    assert step_schedule(1, 3) == (3, [0, 1, 2])
    assert step_schedule(2, 3) == (2, [0, 2, 3])
    assert step_schedule(10, 1) == (1, [0])


def test_random_batch_matches_the_task() -> None:
    task = TASKS.get("lenet5")()
    x, y = random_batch(task, task.build_model(), 8, torch.Generator().manual_seed(0))
    assert x.shape == (8, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (8,) and y.dtype == torch.int64 and int(y.min()) >= 0 and int(y.max()) < 10


# --- The checker must catch broken methods. ---------------------------------------------------


def half_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Keep the first half (by flat index) of every Linear weight."""
    masks = {}
    for path, m in model.named_modules():
        if isinstance(m, nn.Linear):
            keep = torch.zeros(m.weight.numel(), dtype=torch.bool)
            keep[: m.weight.numel() // 2] = True
            masks[path] = keep.view_as(m.weight)
    return masks


class HalfPruning(SparsityMethod):
    """A correct method: prunes half of every Linear in place after each step, default export."""

    name = "half"

    def regularizer(self, model: nn.Module, ctx: StepContext) -> torch.Tensor | None:
        return 1e-4 * sum(p.pow(2).sum() for p in model.parameters())

    def on_step_end(self, model: nn.Module, ctx: StepContext) -> None:
        modules = dict(model.named_modules())
        with torch.no_grad():
            for path, keep in half_masks(model).items():
                modules[path].weight.mul_(keep)

    def masks(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return half_masks(model)


class FloatMasks(HalfPruning):
    def masks(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.float() for k, v in half_masks(model).items()}


class TransposedMasks(HalfPruning):
    def masks(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.t() for k, v in half_masks(model).items()}


class LeakyExport(HalfPruning):
    def export(self, model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
        exported = copy.deepcopy(model)
        with torch.no_grad():
            exported.fc1.weight.add_(0.5)
        return exported


class MyLinear(nn.Linear):
    pass


class CustomLayerExport(HalfPruning):
    def export(self, model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
        exported = super().export(model, masks)
        old = exported.fc3
        exported.fc3 = MyLinear(old.in_features, old.out_features)
        exported.fc3.load_state_dict(old.state_dict())
        return exported


class ExtraParameterExport(HalfPruning):
    def export(self, model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
        exported = super().export(model, masks)
        exported.fc1.log_sigma2 = nn.Parameter(torch.zeros_like(exported.fc1.weight))
        return exported


class NanRegularizer(HalfPruning):
    def regularizer(self, model: nn.Module, ctx: StepContext) -> torch.Tensor | None:
        return sum(p.sum() for p in model.parameters()) * math.nan


class ConstantRegularizer(HalfPruning):
    def regularizer(self, model: nn.Module, ctx: StepContext) -> torch.Tensor | None:
        return torch.tensor(1.0)


class UndeclaredPruning(HalfPruning):
    def masks(self, model: nn.Module) -> dict[str, torch.Tensor]:
        masks = half_masks(model)
        del masks["fc3"]
        return masks

    def on_step_end(self, model: nn.Module, ctx: StepContext) -> None:
        super().on_step_end(model, ctx)
        with torch.no_grad():
            model.fc3.weight[1].zero_()  # with the half pruned above: 600 zeros no mask declares


class RescalingExport(HalfPruning):
    def export(self, model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
        exported = super().export(model, masks)
        with torch.no_grad():
            exported.fc3.weight.mul_(1.01)
        return exported


class InPlaceExport(HalfPruning):
    def export(self, model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
        with torch.no_grad():
            model.fc3.weight.mul_(2.0)
        return model


class BadSearchSpace(HalfPruning):
    def search_space(self, trial: object) -> dict[str, object]:
        return {"method.thresold": trial.suggest_float("method.thresold", 1.0, 4.0)}


class ShapeChangingConvert(HalfPruning):
    def convert(self, model: nn.Module) -> nn.Module:
        return nn.Sequential(model, nn.Unflatten(1, (2, 5)))


class MasksOnTheMethod(SparsityMethod):
    """Decides masks once from the first batch and keeps them on the method object (SNIP-like, wrong)."""

    name = "masks_on_method"

    def on_train_start(self, model: nn.Module, batch: tuple, ctx: StepContext) -> None:
        self.keep = {
            path: m.weight.detach().abs() > m.weight.detach().abs().median()
            for path, m in model.named_modules()
            if isinstance(m, nn.Linear)
        }

    def on_step_end(self, model: nn.Module, ctx: StepContext) -> None:
        modules = dict(model.named_modules())
        with torch.no_grad():
            for path, keep in self.masks(model).items():
                modules[path].weight.mul_(keep)

    def masks(self, model: nn.Module) -> dict[str, torch.Tensor]:
        keep = getattr(self, "keep", None)
        if keep is None:  # a resumed run: a fresh method object that never saw on_train_start
            return {p: torch.ones_like(m.weight, dtype=torch.bool) for p, m in model.named_modules()
                    if isinstance(m, nn.Linear)}  # fmt: skip
        return keep


def test_a_correct_method_passes() -> None:
    check_method_conformance(HalfPruning(), TASKS.get("lenet300_100")())


@pytest.mark.parametrize(
    ("method", "message"),
    [
        (FloatMasks(), "must be a bool tensor"),
        (TransposedMasks(), "has shape"),
        (LeakyExport(), "nonzero weights that its mask removed"),
        (CustomLayerExport(), "MyLinear, not a standard layer"),
        (ExtraParameterExport(), r"extra \['fc1.log_sigma2'\]"),
        (NanRegularizer(), "regularizer is nan"),
        (ConstantRegularizer(), "does not depend on any trainable parameter"),
        (UndeclaredPruning(), r"fc3: the core counts 400/1000 nonzero weights, its 0 mask\(s\) keep 1000"),
        (RescalingExport(), "eval outputs differ"),
        (InPlaceExport(), "export changed the trained model"),
        (ShapeChangingConvert(), "output shape"),
        (BadSearchSpace(), "search_space proposes an invalid override: unknown config key 'method.thresold'"),
        (MasksOnTheMethod(), "masks after a stop and --resume differ from an uninterrupted run"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, SparsityMethod) else "",
)
def test_the_checker_catches_a_broken_method(method: SparsityMethod, message: str) -> None:
    with pytest.raises(ConformanceError, match=message):
        check_method_conformance(method, TASKS.get("lenet300_100")())


def test_low_variance_check_sets_sparse_vd_log_sigma2() -> None:
    from sparsebench.testing import LOW_LOG_VARIANCE, check_regularizer_low_variance, set_low_variance

    setup = prepare(METHODS.get("sparse_vd")(), TASKS.get("lenet300_100")())
    assert check_regularizer_low_variance(setup)
    model = copy.deepcopy(setup.model)
    assert set_low_variance(model) == 3
    assert all(
        float(m.log_sigma2.detach().max()) == LOW_LOG_VARIANCE for m in model if hasattr(m, "log_sigma2")
    )
    assert not check_regularizer_low_variance(prepare(HalfPruning(), TASKS.get("lenet300_100")()))


def test_the_runner_refuses_the_export_conformance_refuses(
    mnist_dir, quick_tracking_uri: str, run_cli, temporary_method, tmp_path
) -> None:
    """What conformance rejects, a run rejects too, in one line, keeping the trained checkpoint."""
    temporary_method(
        "extra_parameter_export", type("Extra", (ExtraParameterExport,), {"name": "extra_parameter_export"})
    )
    result = run_cli(
        "run", "--method", "extra_parameter_export", "--task", "lenet300_100", "--set", "train.epochs=1",
        "--set", "train.val_size=200", "--data-dir", mnist_dir, "--tracking-uri", quick_tracking_uri,
        "--no-progress",
    )  # fmt: skip
    assert result.code == 2, result.err
    assert "extra ['fc1.log_sigma2']" in result.err and "Traceback" not in result.err
    assert len(list((tmp_path / "checkpoints").glob("*/checkpoint.pt"))) == 1
