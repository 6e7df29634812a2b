"""The individual conformance checks; ``sparsebench.testing`` runs them in a run's order."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, NoReturn

import torch
from torch import nn

from sparsebench.config import TrainConfig, apply_overrides
from sparsebench.errors import ConfigError
from sparsebench.measure.counts import WEIGHT_LAYERS, check_export, layer_table, summarize
from sparsebench.measure.exported import export_problem
from sparsebench.method import SparsityMethod, StepContext
from sparsebench.run.loop import Trainer, build_optimizer
from sparsebench.task import Task, resolve_recipe

CPU = torch.device("cpu")

OUTPUT_ATOL = 1e-5
"""Eval outputs before and after export must agree this closely (methods.md section 11.16)."""

LOW_LOG_VARIANCE = -15.0
"""log sigma^2 of a pretrained start (ars VGG-like), where Sparse VD's log alpha sits on the -8 clamp."""

LOG_VARIANCE_SUFFIXES = ("log_sigma2", "logvar", "log_var")
"""Parameter names (last component) treated as per-weight log variances by the low-variance check."""


class ConformanceError(AssertionError):
    """A method plugin broke the contract the core relies on."""


class NotApplicableError(Exception):
    """The method declares (``not_applicable``) that it cannot sparsify this task's model."""


def _fail(method: SparsityMethod, message: str) -> NoReturn:
    raise ConformanceError(f"method {method.name or type(method).__name__!r}: {message}")


@dataclass
class Setup:
    """A method, a task and the models and data the checks share."""

    method: SparsityMethod
    task: Task
    reference: nn.Module
    """The task's standard model as built, never converted: the shapes masks and exports must match."""
    model: nn.Module
    """The same initial weights after ``method.convert``."""
    x: torch.Tensor
    y: torch.Tensor
    recipe: TrainConfig
    num_train: int

    def late_context(self) -> StepContext:
        """The last step of the recipe, where warm-ups are over and every regularizer is active."""
        last = self.recipe.epochs - 1
        return StepContext(last, last, 1, self.recipe.epochs, self.num_train)


def random_batch(
    task: Task, model: nn.Module, batch_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs shaped like ``task.example_input`` and random class labels shaped for ``task.loss``."""
    example = task.example_input(CPU)
    shape = (batch_size, *example.shape[1:])
    if example.dtype.is_floating_point:
        x = torch.randn(shape, generator=generator, dtype=example.dtype)
    else:  # token ids: stay inside the smallest vocabulary of the model
        vocab = min((m.num_embeddings for m in model.modules() if isinstance(m, nn.Embedding)), default=1)
        x = torch.randint(0, vocab, shape, generator=generator, dtype=example.dtype)
    model.eval()
    task.on_pass_start(model, training=False)
    with torch.no_grad():
        out = model(x)
    # (B, C): one label per example; otherwise the class axis is last (language models).
    label_shape = out.shape[:1] if out.dim() == 2 else out.shape[:-1]
    y = torch.randint(0, out.shape[-1], label_shape, generator=generator)
    return x, y


def prepare(
    method: SparsityMethod, task: Task, batch_size: int = 8, seed: int = 0, num_train: int = 50_000
) -> Setup:
    """Build the task's model, a random batch and the converted model, as the runner would."""
    torch.manual_seed(seed)
    model = task.build_model()
    if (reason := method.not_applicable(model)) is not None:
        raise NotApplicableError(reason)
    reference = copy.deepcopy(model)  # convert may swap layers in place
    x, y = random_batch(task, reference, batch_size, torch.Generator().manual_seed(seed))
    recipe = resolve_recipe(task, method)
    converted = method.convert(model)
    return Setup(method, task, reference, converted, x, y, recipe, num_train)


def _forward(task: Task, model: nn.Module, x: torch.Tensor, training: bool) -> torch.Tensor:
    model.train(training)
    task.on_pass_start(model, training=training)
    return model(x)


def check_convert_keeps_shapes(setup: Setup) -> None:
    """``convert`` must keep the output shape in both modes and every weight layer's path."""
    method, task = setup.method, setup.task
    expected = _eval_output(task, setup.reference, setup.x).shape
    for training in (True, False):
        # Gradients stay on as in the runner's training forward; methods may cache for the backward.
        got = _forward(task, setup.model, setup.x, training=training).shape
        if got != expected:
            mode = "train" if training else "eval"
            _fail(
                method, f"convert changed the {mode}-mode output shape from {tuple(expected)} to {tuple(got)}"
            )
    paths = dict(setup.model.named_modules())
    for path, m in setup.reference.named_modules():
        if isinstance(m, WEIGHT_LAYERS) and path not in paths:
            _fail(
                method,
                f"convert lost the module path {path!r}; masks are keyed by the standard model's paths",
            )


def check_regularizer(
    method: SparsityMethod, model: nn.Module, ctx: StepContext, must_move: bool = True
) -> torch.Tensor | None:
    """The regularizer must be a finite scalar whose gradient reaches the parameters, finitely.

    ``must_move`` asks for at least one nonzero gradient; it is dropped where clamps legitimately
    zero every gradient (a variance init on Sparse VD's -8 floor). Returns the value, or None for
    a method without a regularizer.
    """
    model.train()
    for p in model.parameters():
        p.grad = None
    reg = method.regularizer(model, ctx)
    if reg is None:
        return None
    if not isinstance(reg, torch.Tensor) or reg.numel() != 1:
        _fail(method, f"regularizer must return a scalar tensor or None, got {type(reg).__name__}")
    if not torch.isfinite(reg).all():
        _fail(method, f"regularizer is {float(reg.detach())} at epoch {ctx.epoch}")
    if not reg.requires_grad:
        _fail(method, "regularizer does not depend on any trainable parameter (no gradient)")
    reg.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    bad = [name for name, g in grads.items() if not torch.isfinite(g).all()]
    if bad:
        _fail(method, f"regularizer gradient is not finite for {', '.join(bad)}")
    if must_move and not any(bool((g != 0).any()) for g in grads.values()):
        _fail(method, "regularizer gradient is zero for every parameter")
    for p in model.parameters():
        p.grad = None
    return reg.detach()


def set_low_variance(model: nn.Module, value: float = LOW_LOG_VARIANCE) -> int:
    """Set every per-weight log-variance parameter to ``value``; returns how many tensors were set."""
    count = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.rsplit(".", 1)[-1].endswith(LOG_VARIANCE_SUFFIXES):
                p.fill_(value)
                count += 1
    return count


def check_regularizer_low_variance(setup: Setup) -> bool:
    """Regularizer finite and differentiable from a pretrained-style init with log sigma^2 = -15.

    Returns False (nothing checked) for a method without log-variance parameters.
    """
    model = copy.deepcopy(setup.model)
    if set_low_variance(model) == 0:
        return False
    check_regularizer(setup.method, model, setup.late_context(), must_move=False)
    return True


def step_schedule(total_epochs: int, steps: int) -> tuple[int, list[int]]:
    """(steps per epoch, global steps to take): the run's first step, then its last ones.

    The first step sees warm-ups and schedules at their start, the others at their end, the way a
    resumed run jumps ahead; methods must take their schedule from the StepContext anyway.
    """
    per_epoch = max(1, math.ceil(steps / max(1, total_epochs)))
    total = per_epoch * total_epochs
    return per_epoch, [0, *range(max(1, total - steps + 1), total)][:steps]


def train_steps(setup: Setup, steps: int = 3) -> list[float]:
    """A few optimiser steps of the runner's own training step (``run.loop.Trainer``); returns the losses."""
    method, task, model, cfg = setup.method, setup.task, setup.model, setup.recipe
    per_epoch, schedule = step_schedule(cfg.epochs, steps)
    trainer = Trainer(task, method, model, build_optimizer(cfg, model), cfg, CPU, setup.num_train, per_epoch)
    generator = torch.Generator().manual_seed(0)
    expected = _eval_output(task, setup.reference, setup.x).shape
    losses = []
    model.train()
    task.on_pass_start(model, training=True)
    method.on_train_start(model, (setup.x, setup.y), trainer.context(0, 0))
    for step in schedule:
        epoch = step // per_epoch
        result = trainer.step(setup.x, setup.y, trainer.context(epoch, step), generator)
        if result.output_shape != tuple(expected):
            _fail(
                method, f"train-mode output shape {result.output_shape} != {tuple(expected)} at step {step}"
            )
        value = float(result.loss)
        if not math.isfinite(value):
            _fail(method, f"training loss became {value} at step {step} (epoch {epoch})")
        losses.append(value)
    bad = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        _fail(method, f"parameters became non-finite after training: {', '.join(bad)}")
    # The end of an epoch, as in the runner: a validation pass, the current masks, the method's curves.
    _eval_output(task, model, setup.x)
    check_masks(method, method.masks(model), setup.reference)
    metrics = method.epoch_metrics(model)
    bad = [k for k, v in metrics.items() if not math.isfinite(float(v))]
    if bad:
        _fail(method, f"epoch_metrics are not finite: {', '.join(bad)}")
    return losses


def mask_target(model: nn.Module, key: str) -> tuple[str, str] | None:
    """(layer path, weight name) a mask key refers to, or None when it names no weight.

    A key is a weight layer's path (its first weight tensor, as ``metrics.check_export`` reads it)
    or ``<path>.<name>`` for one of the several weight matrices of an LSTM.
    """
    modules = dict(model.named_modules())
    if isinstance(modules.get(key), WEIGHT_LAYERS):
        return key, _weight_names(modules[key])[0]
    path, _, name = key.rpartition(".")
    if isinstance(modules.get(path), WEIGHT_LAYERS) and name in _weight_names(modules[path]):
        return path, name
    return None


def _weight_names(module: nn.Module) -> list[str]:
    if isinstance(module, nn.LSTM):
        return [name for name, _ in module.named_parameters(recurse=False) if name.startswith("weight")]
    return ["weight"]


def check_masks(method: SparsityMethod, masks: dict[str, torch.Tensor], reference: nn.Module) -> None:
    """Masks are bool and shaped like the weight of the standard layer at the same path."""
    if not isinstance(masks, dict):
        _fail(method, f"masks must be a dict of module path -> bool tensor, got {type(masks).__name__}")
    for key, mask in masks.items():
        target = mask_target(reference, key)
        if target is None:
            _fail(method, f"mask key {key!r} names no weight of a weight layer of the task's model")
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            _fail(method, f"mask for {key} must be a bool tensor, got {getattr(mask, 'dtype', type(mask))}")
        path, name = target
        shape = getattr(reference.get_submodule(path), name).shape
        if mask.shape != shape:
            _fail(method, f"mask for {key} has shape {tuple(mask.shape)}, the weight {tuple(shape)}")


def check_standard_layers(method: SparsityMethod, exported: nn.Module, reference: nn.Module) -> None:
    """The export holds only standard layers and loads into the task's own model (``--init-from``)."""
    if (problem := export_problem(exported, reference)) is not None:
        _fail(method, problem)


def _eval_output(task: Task, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return _forward(task, model, x, training=False)


def check_exported_model(
    method: SparsityMethod,
    model: nn.Module,
    masks: dict[str, torch.Tensor],
    setup: Setup,
    same_outputs: bool = True,
) -> nn.Module:
    """Export: standard layers, zeros where masks are False, model untouched, same eval outputs.

    ``same_outputs`` is off for masks other than ``method.masks`` (threshold curves), which the
    trained model's own eval pass does not apply.
    """
    task, x = setup.task, setup.x
    before = _eval_output(task, model, x)
    exported = method.export(model, masks)
    if not isinstance(exported, nn.Module):
        _fail(method, f"export must return an nn.Module, got {type(exported).__name__}")
    exported.eval()
    check_standard_layers(method, exported, setup.reference)
    try:
        check_export(exported, masks)
    except RuntimeError as exc:
        _fail(method, str(exc))
    after = _eval_output(task, exported, x)
    try:
        again = _eval_output(task, model, x)
    except Exception as exc:  # e.g. a parametrization shared between the model and its copy
        _fail(method, f"the trained model fails after export ({type(exc).__name__}: {exc}); export a copy")
    if not torch.equal(before, again):
        _fail(method, "export changed the trained model (the runner exports it more than once)")
    diff = float((before - after).abs().max())
    if same_outputs and diff > OUTPUT_ATOL:
        _fail(method, f"eval outputs differ by {diff:.3g} before and after export (allowed {OUTPUT_ATOL})")
    return exported


def check_counts(
    method: SparsityMethod, exported: nn.Module, masks: dict[str, torch.Tensor], task: Task
) -> None:
    """The core's per-layer counts of the export equal what the masks say survived.

    Every masked weight keeps exactly its mask's entries nonzero and every weight without a mask
    stays dense, so a method cannot prune weights its masks do not declare (or the reverse).
    """
    table = layer_table(exported, task.example_input(CPU), task.layer_order(exported))
    summary = summarize(exported, table)
    kept: dict[tuple[str, str], int] = {}
    for key, mask in masks.items():
        target = mask_target(exported, key)
        if target is not None:
            kept[target] = int(mask.sum())
    for row in table.itertuples():
        layer = exported.get_submodule(row.layer)
        tensors = {name: getattr(layer, name) for name in _weight_names(layer)}
        expected = sum(kept.get((row.layer, name), t.numel()) for name, t in tensors.items())
        declared = sum(1 for name in tensors if (row.layer, name) in kept)
        if row.weights != sum(t.numel() for t in tensors.values()) or row.nonzeros != expected:
            _fail(
                method,
                f"{row.layer}: the core counts {row.nonzeros}/{row.weights} nonzero weights, its "
                f"{declared} mask(s) keep {expected} (a weight without a mask must stay dense)",
            )
    if summary.nonzeros != int(table.nonzeros.sum()) or summary.weights != int(table.weights.sum()):
        _fail(method, "summary totals disagree with the per-layer table")


class EdgeTrial:
    """A stand-in for an optuna trial that proposes the lowest (or highest) value of every range."""

    def __init__(self, high: bool) -> None:
        self.high = high

    def suggest_float(self, name: str, low: float, high: float, **kwargs: Any) -> float:
        return high if self.high else low

    def suggest_int(self, name: str, low: int, high: int, **kwargs: Any) -> int:
        return high if self.high else low

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return list(choices)[-1 if self.high else 0]


def check_search_space(method: SparsityMethod) -> None:
    """Both ends of the sweep ranges must be valid ``method.``/``train.`` overrides of the configs."""
    for high in (False, True):
        overrides = method.search_space(EdgeTrial(high))
        configs = {"method": copy.deepcopy(method.config), "train": TrainConfig()}
        try:
            apply_overrides(configs, overrides)
        except ConfigError as exc:
            _fail(method, f"search_space proposes an invalid override: {exc}")
        type(method)(configs["method"])
