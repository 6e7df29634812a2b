"""The contract between the core and a sparsification method.

A method proposes (which weights survive, what to add to the loss); the core measures (it counts
nonzeros, sparsity, compression and FLOPs on the exported model), so no method can report a
number it did not earn.

Every hook the core calls is declared on ``SparsityMethod`` below with what it means and when it
runs; a method overrides the ones it needs. In run order: ``adjust_recipe`` (planning),
``convert`` and ``enable_compile`` (building the model), ``on_train_start`` (once, with data),
then per step ``regularizer`` and ``on_step_end``, per epoch ``epoch_metrics``, and after
training ``calibrate``, ``masks``, ``export``, ``posterior_variances`` and the threshold curve
(``curve_levels`` / ``masks_at``).
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from sparsebench.config import TrainConfig

if TYPE_CHECKING:
    from sparsebench.task import Task


@dataclass
class NoConfig:
    """A method without tunable settings."""


@dataclass
class StepContext:
    """Where training stands, handed to every hook so schedules need no state of their own."""

    epoch: int
    """0-based epoch."""
    step: int
    """Optimiser steps taken before this one (0-based global step)."""
    steps_per_epoch: int
    total_epochs: int
    num_train: int
    """N of the ELBO: training examples (tokens for language models)."""
    optimizer: torch.optim.Optimizer | None = None

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.total_epochs

    @property
    def progress(self) -> float:
        """Fraction of training done, in [0, 1]."""
        return min(1.0, self.step / max(1, self.total_steps))


class SparsityMethod(ABC):
    """Base class of every method plugin; only ``masks`` is required.

    Where state lives: everything a method decides during training (masks, calibrated thresholds,
    schedules' progress) must live in the model, as parameters or buffers (e.g. the mask buffers
    of ``sparsebench.toolkit.masking``), or be recomputable from the ``StepContext``. A checkpoint
    holds only the model's and the optimiser's state, so anything kept on the method object is
    lost on ``--resume``, and ``--refinish`` builds a fresh method object from the config. The
    method object holds its config and nothing a run depends on.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    Config: ClassVar[type] = NoConfig
    layer_types: ClassVar[tuple[type[nn.Module], ...]] = (nn.Linear, nn.Conv2d)
    """Standard layer types this method knows how to handle (used to say why a task doesn't apply)."""
    recipe_kind: ClassVar[str] = "standard"
    """Which of a task's published recipes this method trains with (``sparsebench.task.RECIPE_KINDS``);
    a task that publishes none of that kind gives its standard recipe."""
    curve_axis: ClassVar[str] = ""
    """What the levels of ``curve_levels`` and ``masks_at`` measure, named for the x axis of the
    threshold curve, e.g. ``log_alpha_threshold`` (an absolute threshold on log alpha) or
    ``threshold_shift`` (an offset added to every layer's own threshold). "" = no curve."""

    def __init__(self, config: Any | None = None) -> None:
        self.config = config if config is not None else self.Config()

    def adjust_recipe(self, task: Task, recipe: TrainConfig) -> TrainConfig:
        """Change the task's recipe where this method needs another (e.g. another optimiser).

        Key the change on what the task declares (``task.family``, its config), never on its
        name, so a third-party task of the same family gets the same change. ``recipe`` is a
        fresh object the method may edit and return. Call sites that still pass the task's
        registered name get it resolved by ``task_family``.
        """
        return recipe

    def convert(self, model: nn.Module) -> nn.Module:
        """Swap standard layers for the method's own (Bayesian, noisy ...). Default: unchanged."""
        return model

    def enable_compile(self, model: nn.Module) -> None:
        """Switch the converted model to compiled kernels; called for long runs (train.compile)."""

    def on_train_start(
        self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], ctx: StepContext
    ) -> None:
        """Once per run, before the first optimiser step: one training batch ``(x, y)`` on the device.

        For decisions that need data before training (pruning at initialisation scores weights
        on a batch). Not called again on ``--resume``: whatever it decided must be in the model
        (see the class docstring), where the checkpoint brings it back. Default: nothing.
        """

    def regularizer(self, model: nn.Module, ctx: StepContext) -> torch.Tensor | None:
        """Term added to the mean data loss, already scaled (e.g. beta_t * KL / N)."""
        return None

    def on_step_end(self, model: nn.Module, ctx: StepContext) -> None:
        """Called after each optimiser step (projections, clipping, pruning schedules)."""

    def epoch_metrics(self, model: nn.Module) -> dict[str, float]:
        """Method-specific numbers worth a curve (e.g. the KL); logged every epoch."""
        return {}

    def calibrate(self, model: nn.Module, validate: Callable[[nn.Module], float]) -> dict[str, float]:
        """Once after training, before ``masks``: choose thresholds etc. on the validation split.

        ``validate(exported_model)`` returns the task's validation metric (lower is better) of a
        model of standard layers. Returns the chosen values, which the core logs as metrics.
        """
        return {}

    @abstractmethod
    def masks(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Boolean keep-masks keyed by module path, each shaped like that module's weight."""

    def curve_levels(self) -> Sequence[float]:
        """Levels on ``curve_axis`` for an error-vs-compression curve of one trained model (none here)."""
        return ()

    def chosen_level(self) -> float | None:
        """The level on ``curve_axis`` that ``masks`` uses: the run's own point on its curve.

        ``masks_at(model, chosen_level())`` must equal ``masks(model)``. None when there is no curve.
        """
        return None

    def masks_at(self, model: nn.Module, level: float) -> dict[str, torch.Tensor]:
        """The masks had the method's pruning level been ``level``, read on ``curve_axis``.

        One meaning for every method: ``level`` is a point of the axis the method names, and the
        masks are what ``masks`` would return at that point, with nothing else changed (no
        retraining, no recalibration). Needed when ``curve_levels`` is non-empty.
        """
        raise NotImplementedError(f"{self.name} has no pruning level to sweep")

    def curve_thresholds(self) -> Sequence[float]:
        """Old name of ``curve_levels``, kept until every call site uses the new one."""
        return self.curve_levels()

    def export(self, model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
        """A model of standard layers with the masks applied. Default: copy and zero the weights."""
        from sparsebench.measure.counts import mask_target

        exported = copy.deepcopy(model)
        with torch.no_grad():
            for key, mask in masks.items():
                weight = mask_target(exported, key)
                weight.mul_(mask.to(weight.dtype))
        return exported

    def posterior_variances(self, model: nn.Module) -> dict[str, torch.Tensor] | None:
        """Marginal posterior variance of every weight, for methods with a posterior; else None.

        Keyed by module path like ``masks``, each shaped like the exported layer's weight. The core
        turns them into bit widths and the compression after precision reduction (docs/methods.md
        section 4.7); None (the default) means the method has no posterior and no such numbers.
        """
        return None

    def search_space(self, trial: Any) -> dict[str, Any]:
        """Config overrides (``method.<field>`` keys) an optuna trial proposes for a sweep."""
        return {}

    def not_applicable(self, model: nn.Module) -> str | None:
        """Why this method cannot sparsify ``model``, or None when it can."""
        weighted = [
            m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.LSTM, nn.Embedding))
        ]
        unknown = [type(m).__name__ for m in weighted if not isinstance(m, self.layer_types)]
        if unknown:
            names = ", ".join(sorted(set(unknown)))
            return (
                f"{self.name} handles {', '.join(t.__name__ for t in self.layer_types)} layers, not {names}"
            )
        return None


def task_family(task: Task | str) -> str:
    """``task.family``; a registered task name (what older call sites pass) is looked up first."""
    if isinstance(task, str):
        from sparsebench.registry import TASKS

        return TASKS.get(task).family if task in TASKS else ""
    return task.family
