"""The ``l0`` method: convert to gated layers, the expected-L0 penalty / N, the clamp, masks, export."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from sparsebench.config import TrainConfig, option
from sparsebench.errors import ConfigError
from sparsebench.method import SparsityMethod, StepContext, task_family
from sparsebench.registry import register_method
from sparsebench.toolkit.exact import (
    ExactAxis,
    check_exact_options,
    exact_keep,
    exact_levels,
    pin_exact_masks,
)
from sparsebench.toolkit.surgery import modules_of_type, replace_modules

from . import gates
from .layers import L0_LAYERS, GateSpec, L0Conv2d, L0Linear, kaiming_init_

if TYPE_CHECKING:
    from sparsebench.task import Task


@dataclass
class L0Config:
    granularity: Literal["group", "weight"] = option(
        "group",
        "group = one gate per input unit of a Linear layer and per output feature map of a conv (the "
        "paper's MNIST runs); weight = one gate per weight (Gale et al.'s State of Sparsity)",
    )
    lam: float = option(
        0.1,
        "lambda: L0 cost of one expected nonzero weight, divided by N as in the reference (the paper's "
        "lambda = lam / N; its MNIST runs: 0.1)",
        low=0.0,
    )
    lams: list[float] = option(
        [], "per-layer lambdas in network order (same units as lam); [] = lam everywhere"
    )
    droprate_init: float = option(
        0.5, "initial drop rate of the gates: log alpha starts at log((1 - d) / d)", low=0.0, low_open=True
    )
    droprate_init_input: float = option(
        0.2,
        "initial drop rate of group gates on the model's input (a first Linear layer's input units), "
        "as the reference's MLP",
        low=0.0,
        low_open=True,
    )
    temperature: float = option(
        gates.BETA, "temperature beta of the hard-concrete gates", low=0.0, low_open=True
    )
    local_rep: bool = option(
        False, "a separate gate sample per example (group gates only) instead of one per minibatch"
    )
    weight_decay: float = option(
        5e-4,
        "precision of the Gaussian prior on the gated weights, divided by N like lam (the reference's "
        "layer weight_decay; its LeNet-5 script: 5e-4)",
        low=0.0,
    )
    weight_init: Literal["model", "kaiming"] = option(
        "model", "weights from the model (the task's init, or --init-from), or the reference's N(0, 2/fan_in)"
    )
    sparsity: float = option(
        0.0,
        "0 = remove the weights whose test-time gate is closed; in (0, 1), weight gates only: remove "
        "exactly this fraction, the lowest gate log alpha over all layers first (matched-sparsity "
        "comparisons; training is unchanged), and read a curve at exact sparsities",
    )
    curve_sparsities: list[float] = option(
        [], "with method.sparsity: more exact sparsities the curve reads (e.g. every target)"
    )


@register_method("l0")
class L0(SparsityMethod):
    description = "L0 regularization: hard-concrete gates, expected-L0 penalty, closed gates removed"
    paper = "Louizos, Welling, Kingma. Learning Sparse Neural Networks through L0 Regularization. ICLR 2018"
    Config = L0Config
    layer_types = (nn.Linear, nn.Conv2d)
    curve_axis = ExactAxis("")  # no curve of its own; "sparsity" once method.sparsity > 0

    def _check_config(self) -> None:
        """Refuse settings the option ranges cannot express; called from ``convert``, once the
        command line's overrides are in the config."""
        cfg = self.config
        for name in ("droprate_init", "droprate_init_input"):
            if not 0.0 < getattr(cfg, name) < 1.0:
                raise ConfigError(f"method.{name} must be in (0, 1), got {getattr(cfg, name)}")
        if cfg.local_rep and cfg.granularity != "group":
            raise ConfigError(
                "method.local_rep samples gates per example, which needs method.granularity=group "
                "(per-example weight gates would need a weight matrix per example)"
            )
        if any(value < 0 for value in cfg.lams):
            raise ConfigError(f"method.lams must be >= 0, got {list(cfg.lams)}")
        check_exact_options(cfg.sparsity, cfg.curve_sparsities)
        if cfg.sparsity > 0.0 and cfg.granularity != "weight":
            raise ConfigError(
                "method.sparsity ranks single weights by their gates, which needs method.granularity=weight "
                "(a group gate would have to be split)"
            )

    def adjust_recipe(self, task: Task | str, recipe: TrainConfig) -> TrainConfig:
        """The reference's MNIST training: Adam 1e-3 at a constant rate, batch 100, 200 epochs."""
        if task_family(task) == "mnist":
            recipe.epochs, recipe.batch_size, recipe.optimizer = 200, 100, "adam"
            recipe.lr, recipe.lr_schedule, recipe.weight_decay = 1e-3, "constant", 0.0
        return recipe

    def _specs(self, model: nn.Module) -> list[GateSpec]:
        """One GateSpec per Linear/Conv2d layer of ``model`` in module order."""
        cfg = self.config
        layers = list(modules_of_type(model, (nn.Linear, nn.Conv2d)).items())
        lams = list(cfg.lams) or [cfg.lam] * len(layers)
        if len(lams) != len(layers):
            raise ConfigError(
                f"method.lams has {len(lams)} values but the model has {len(layers)} layers "
                f"({', '.join(p for p, _ in layers)}); give one per layer, or [] for method.lam everywhere"
            )
        specs = []
        for k, (_, layer) in enumerate(layers):
            on_input = cfg.granularity == "group" and k == 0 and isinstance(layer, nn.Linear)
            droprate = cfg.droprate_init_input if on_input else cfg.droprate_init
            specs.append(
                GateSpec(cfg.granularity, lams[k], cfg.weight_decay, droprate, cfg.temperature, cfg.local_rep)
            )
        return specs

    def convert(self, model: nn.Module) -> nn.Module:
        self._check_config()
        specs = dict(zip(modules_of_type(model, (nn.Linear, nn.Conv2d)), self._specs(model), strict=True))

        def swap(path: str, m: nn.Module) -> nn.Module | None:
            if isinstance(m, L0_LAYERS) or path not in specs:
                return None
            if self.config.weight_init == "kaiming":
                kaiming_init_(m)  # type: ignore[arg-type]
            if isinstance(m, nn.Linear):
                return L0Linear.from_dense(m, specs[path])
            return L0Conv2d.from_dense(m, specs[path])  # type: ignore[arg-type]

        return replace_modules(model, swap)

    def enable_compile(self, model: nn.Module) -> None:
        """Weight gates' draw and penalty as compiled kernels (group gates are too small to gain)."""
        for layer in self.layers(model).values():
            layer.use_compiled = True

    @staticmethod
    def layers(model: nn.Module) -> dict[str, L0Linear | L0Conv2d]:
        return modules_of_type(model, L0_LAYERS)  # type: ignore[return-value]

    def regularizer(self, model: nn.Module, ctx: StepContext) -> torch.Tensor | None:
        """(sum over layers of lam * E[L0] + the expected L2 of the gated weights) / N."""
        penalties = [layer.penalty() for layer in self.layers(model).values()]
        if not penalties:
            return None
        return torch.stack(penalties).sum() / ctx.num_train

    def on_step_end(self, model: nn.Module, ctx: StepContext) -> None:
        for layer in self.layers(model).values():
            layer.clamp_()

    def epoch_metrics(self, model: nn.Module) -> dict[str, float]:
        """The expected L0 as a fraction of the weights, and the test-time gates still open."""
        with torch.no_grad():
            layers = self.layers(model).values()
            expected = sum(float(m.expected_nonzeros()) for m in layers)
            weights = sum(m.weight.numel() for m in layers)
            gates_open = sum(int((m.eval_gates() > 0).sum()) for m in layers)
            gates_all = sum(m.log_alpha.numel() for m in layers)
        return {
            "expected_l0_fraction": expected / max(1, weights),
            "open_gates": float(gates_open),
            "open_gate_fraction": gates_open / max(1, gates_all),
        }

    def calibrate(self, model: nn.Module, validate: Callable[[nn.Module], float]) -> dict[str, float]:
        """With ``method.sparsity``: pin the exact masks, so evaluation computes what export does.

        Returns the share of weights whose gates training closed (%), which the exact target then
        tops up: where the run landed by itself.
        """
        if self.config.sparsity <= 0.0:
            return {}
        layers = self.layers(model)
        pin_exact_masks(layers, self.masks_at(model, self.config.sparsity))
        closed = sum(int((~layer.gate_open_mask()).sum()) for layer in layers.values())
        return {"gate_sparsity": 100.0 * closed / max(1, sum(m.weight.numel() for m in layers.values()))}

    def masks(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """A weight is kept where its test-time gated value is nonzero (a closed gate removes it).

        With ``method.sparsity`` the exact masks ``calibrate`` pinned count too, so after training
        these are ``masks_at(model, method.sparsity)``; during training (per-epoch sparsity) they are
        the gates' own, which shows where lambda takes the run.
        """
        return {path: layer.keep_mask() for path, layer in self.layers(model).items()}

    def curve_levels(self) -> Sequence[float]:
        """The exact sparsities of ``method.sparsity`` and ``method.curve_sparsities`` (none without)."""
        if self.config.sparsity > 0.0:
            return exact_levels(self.config.sparsity, self.config.curve_sparsities)
        return ()

    def chosen_level(self) -> float | None:
        return self.config.sparsity if self.config.sparsity > 0.0 else None

    def masks_at(self, model: nn.Module, level: float) -> dict[str, torch.Tensor]:
        """Exactly the fraction ``level`` removed: the lowest gate log alpha first (the gates least
        likely open), |weight| among gates at the same value (the clamp), and every closed gate too.

        A weight whose test-time gate is closed stays removed even when the ranking would keep it,
        so a run that training left sparser than ``level`` is counted at its own, higher sparsity.
        """
        if self.config.sparsity <= 0.0:
            raise NotImplementedError("l0 reads a curve only with method.sparsity > 0")
        layers = self.layers(model)
        with torch.no_grad():
            scores = {path: layer.log_alpha.expand_as(layer.weight) for path, layer in layers.items()}
            ranked = exact_keep(scores, level, {path: layer.weight.abs() for path, layer in layers.items()})
        return {path: ranked[path] & layer.gate_open_mask() for path, layer in layers.items()}

    def export(self, model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
        """Standard layers holding the test-time gated weights; ``masks`` are what those zeros give.

        The weights are multiplied by the test-time gate (not only masked), so the exported model
        computes what the converted model's evaluation pass computes.
        """

        def swap(path: str, m: nn.Module) -> nn.Module | None:
            if not isinstance(m, L0_LAYERS):
                return None
            dense = m.to_dense()
            if path in masks:  # a mask narrower than the gates' own (another level) removes more
                with torch.no_grad():
                    dense.weight.mul_(masks[path].to(dense.weight.dtype))
            return dense

        return replace_modules(copy.deepcopy(model), swap)

    def search_space(self, trial: Any) -> dict[str, Any]:
        return {"method.lam": trial.suggest_float("method.lam", 1e-3, 100.0, log=True)}
