"""The contract between the core and a sparsification method.

A method proposes (which weights survive, what to add to the loss); the core measures (it counts
nonzeros, sparsity, compression and FLOPs on the exported model), so no method can report a
number it did not earn.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from sparsebench.config import TrainConfig


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
    """Base class of every method plugin; only ``masks`` is required."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    Config: ClassVar[type] = NoConfig
    layer_types: ClassVar[tuple[type[nn.Module], ...]] = (nn.Linear, nn.Conv2d)
    """Standard layer types this method knows how to handle (used to say why a task doesn't apply)."""

    def __init__(self, config: Any | None = None) -> None:
        self.config = config if config is not None else self.Config()

    def adjust_recipe(self, task: str, recipe: TrainConfig) -> TrainConfig:
        """Change the task's default recipe where this method needs another (e.g. more epochs)."""
        return recipe

    def convert(self, model: nn.Module) -> nn.Module:
        """Swap standard layers for the method's own (Bayesian, noisy ...). Default: unchanged."""
        return model

    def enable_compile(self, model: nn.Module) -> None:
        """Switch the converted model to compiled kernels; called for long runs (train.compile)."""

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

    def curve_thresholds(self) -> Sequence[float]:
        """Thresholds for a post-hoc error-vs-compression curve from one trained model (none by default)."""
        return ()

    def masks_at(self, model: nn.Module, threshold: float) -> dict[str, torch.Tensor]:
        """Masks had the pruning threshold been ``threshold``; needed when ``curve_thresholds`` is set."""
        raise NotImplementedError(f"{self.name} has no threshold to sweep")

    def export(self, model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
        """A model of standard layers with the masks applied. Default: copy and zero the weights."""
        from sparsebench.measure.counts import mask_target

        exported = copy.deepcopy(model)
        with torch.no_grad():
            for key, mask in masks.items():
                weight = mask_target(exported, key)
                weight.mul_(mask.to(weight.dtype))
        return exported

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
