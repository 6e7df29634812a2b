"""``GroupMethod``: everything of the two Bayesian Compression methods but the scale prior.

Conversion to group layers, the KL with warm-up, variance clipping, calibration of the per-layer
thresholds on the validation split, masks along the chain, export to standard layers and the
marginal posterior variances for bit precision (docs/methods.md sections 4.4-4.7).
"""

from __future__ import annotations

import copy
import math
from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from sparsebench.config import option
from sparsebench.errors import ConfigError
from sparsebench.method import SparsityMethod, StepContext
from sparsebench.toolkit.kl import kl_warmup
from sparsebench.toolkit.surgery import modules_of_type, replace_modules

from .chain import chain_links, propagate, weight_mask
from .layers import GROUP_LAYERS, GroupConv2d, GroupLinear, GroupScale, _GroupLayer
from .thresholds import fit_two_gaussians


class _ChainMaskHook:
    """Forward pre-hook of a converted model: before an evaluation pass, hand every group layer
    its mask from the whole chain, so the deterministic forward equals the exported model.

    A plain callable rather than a bound method so that ``export`` can recognise and drop it.
    """

    def __init__(self, method: GroupMethod) -> None:
        self.method = method

    def __call__(self, model: nn.Module, args: Any) -> None:
        layers = self.method.layers(model)
        if model.training or not layers:
            return
        masks = self.method.masks(model)
        for path, layer in layers:
            layer.eval_mask = masks[path]


@dataclass
class GroupConfig:
    thresholds: list[float] = option(
        [], "per-layer pruning thresholds on the group score, in network order; [] = automatic"
    )
    fallback_threshold: float = option(
        -3.0, "threshold of a layer whose scores have one mode (automatic thresholds only)"
    )
    clip_var: float = option(0.04, "cap on the weight and bias variances after every step (0 = off)")
    clip_var_layers: list[str] = option(
        ["first_linear"], "layers clip_var applies to: module paths, 'first_linear' (bc: fc1 only) or 'all'"
    )
    calibration_tolerance: float = option(
        0.1,
        "automatic thresholds: after training, shift every layer's threshold to the sparsest "
        "setting whose validation metric is within this of the best (in the metric's units)",
    )
    calibration: Literal["shared", "per_layer"] = option(
        "shared",
        "automatic thresholds: stop at the shared shift, or then lower single layers' thresholds "
        "while the validation metric stays within the tolerance (per_layer: sparser, fits the "
        "validation split harder)",
    )
    kl_weight: float = option(1.0, "extra multiplier of KL/N (1 = the ELBO)")
    kl_warmup_start: int = option(0, "epochs with KL weight 0 before the warm-up ramp (bc: 0)")
    kl_warmup_epochs: int = option(0, "epochs of the linear KL warm-up ramp (0 = full KL at once, as bc)")
    eps0: float = option(1e-8, "floor added to the pre-activation variance inside the square root")
    weight_init: Literal["model", "bc"] = option(
        "model",
        "weight means from the model's layers (the task's init, or --init-from), or bc's "
        "N(0, 1/fan_in) (Linear) and U(+-1/sqrt(fan_in)) (conv) with zero biases",
    )


def bc_reinit_(layer: nn.Linear | nn.Conv2d) -> None:
    """bc's initial weight means (``reset_parameters``, methods.md 4.5), in place."""
    fan_in = layer.weight[0].numel()
    with torch.no_grad():
        if isinstance(layer, nn.Linear):
            layer.weight.normal_(0.0, 1.0 / math.sqrt(fan_in))
        else:
            layer.weight.uniform_(-1.0 / math.sqrt(fan_in), 1.0 / math.sqrt(fan_in))
        if layer.bias is not None:
            layer.bias.zero_()


class GroupMethod(SparsityMethod):
    """A Bayesian Compression method; subclasses supply the scale posterior and its prior."""

    Config = GroupConfig
    curve_axis = "threshold_shift"

    @abstractmethod
    def make_scale(self, num_groups: int) -> GroupScale:
        """A freshly initialised q(z) for one layer's groups."""

    def not_applicable(self, model: nn.Module) -> str | None:
        if (reason := super().not_applicable(model)) is not None:
            return reason
        layers = list(modules_of_type(model, (nn.Linear, nn.Conv2d)).items())
        if not layers:
            return f"{self.name} needs Linear or Conv2d layers"
        for path, m in layers:
            if isinstance(m, nn.Conv2d) and m.padding_mode != "zeros":
                return f"{path} uses padding_mode={m.padding_mode!r}; only zero padding is supported"
        try:
            chain_links(layers)
        except ValueError as exc:
            return f"its weight layers must form a chain in module order ({exc})"
        return None

    def enable_compile(self, model: nn.Module) -> None:
        for _, layer in self.layers(model):
            layer.use_compiled = True

    def convert(self, model: nn.Module) -> nn.Module:
        def swap(path: str, m: nn.Module) -> nn.Module | None:
            if isinstance(m, GROUP_LAYERS) or not isinstance(m, (nn.Linear, nn.Conv2d)):
                return None
            if self.config.weight_init == "bc":
                bc_reinit_(m)
            if isinstance(m, nn.Linear):
                return GroupLinear(m, self.make_scale(m.in_features), self.config.eps0)
            if isinstance(m, nn.Conv2d):
                return GroupConv2d(m, self.make_scale(m.out_channels), self.config.eps0)
            return None

        model = replace_modules(model, swap)
        # Evaluation must apply the masks of the whole chain: with BatchNorm between two convs a
        # removed filter still emits a constant that only the next layer's mask stops.
        model.register_forward_pre_hook(_ChainMaskHook(self))
        layers = self.layers(model)
        thresholds = list(self.config.thresholds)
        if thresholds and len(thresholds) != len(layers):
            raise ConfigError(
                f"method.thresholds has {len(thresholds)} values but the model has {len(layers)} layers "
                f"({', '.join(p for p, _ in layers)}); give one per layer, or [] for automatic"
            )
        clipped = self._clip_paths(layers)
        for k, (path, layer) in enumerate(layers):
            layer.fallback_threshold = self.config.fallback_threshold
            layer.clip_var = self.config.clip_var if path in clipped and self.config.clip_var > 0 else None
            if thresholds:
                layer.threshold.fill_(thresholds[k])
        return model

    def _clip_paths(self, layers: list[tuple[str, _GroupLayer]]) -> set[str]:
        paths = [p for p, _ in layers]
        chosen: set[str] = set()
        for name in self.config.clip_var_layers:
            if name == "all":
                chosen.update(paths)
            elif name == "first_linear":
                chosen.update([p for p, m in layers if isinstance(m, GroupLinear)][:1])
            elif name in paths:
                chosen.add(name)
            else:
                raise ConfigError(
                    f"method.clip_var_layers names {name!r}, which is not a layer; use one of "
                    f"{', '.join(paths)}, 'first_linear' or 'all'"
                )
        return chosen

    @staticmethod
    def layers(model: nn.Module) -> list[tuple[str, _GroupLayer]]:
        """The group layers in network (registration) order."""
        return list(modules_of_type(model, GROUP_LAYERS).items())  # type: ignore[arg-type]

    def kl(self, model: nn.Module) -> torch.Tensor:
        return sum(layer.kl() for _, layer in self.layers(model))  # type: ignore[return-value]

    def regularizer(self, model: nn.Module, ctx: StepContext) -> torch.Tensor | None:
        beta = kl_warmup(ctx.epoch, self.config.kl_warmup_start, self.config.kl_warmup_epochs)
        if beta == 0.0:
            return None
        return (beta * self.config.kl_weight / ctx.num_train) * self.kl(model)

    def on_step_end(self, model: nn.Module, ctx: StepContext) -> None:
        for _, layer in self.layers(model):
            layer.clip_variances()

    def epoch_metrics(self, model: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            metrics = {"kl": float(self.kl(model))}
            for path, layer in self.layers(model):
                metrics[f"groups_kept.{path}"] = float(layer.group_keep().sum())
            return metrics

    def calibrate(self, model: nn.Module, validate: Callable[[nn.Module], float]) -> dict[str, float]:
        """Fix each layer's threshold on the validation split (section 4.6).

        First each layer gets its base threshold: the configured one, else the mixture midpoint.
        Unless thresholds were configured, one shift common to all layers is then chosen on the
        validation split: of the shifts of ``curve_levels``, the one with the fewest weights
        left whose validation metric is within ``calibration_tolerance`` of the best shift's.
        Groups between the two modes are often dispensable, which a midpoint cannot know. With
        ``calibration = per_layer`` single layers are then lowered further (``lower_layers``). Returns
        the chosen values, which the core logs, with each layer's mode separation (Ashman's D;
        below 2 the layer had a single mode and got ``fallback_threshold``).
        """
        chosen: dict[str, float] = {}
        layers = self.layers(model)
        for path, layer in layers:
            layer.threshold.fill_(layer.current_threshold())
            scores = layer.scale.prune_score().detach()
            if scores.numel() >= 2 and float(scores.max() - scores.min()) >= 1e-6:
                chosen[f"separation.{path}"] = fit_two_gaussians(scores).separation
        if not self.config.thresholds:
            shift, best, picked = self.select_shift(model, validate)
            for _, layer in layers:
                layer.threshold.add_(shift)
            if self.config.calibration == "per_layer" and math.isfinite(best):
                picked = self.lower_layers(model, validate, best + self.config.calibration_tolerance, picked)
            chosen.update({"shift": shift, "val_best": best, "val_chosen": picked})
        for path, layer in layers:
            chosen[f"threshold.{path}"] = float(layer.threshold)
        return chosen

    @torch.no_grad()
    def select_shift(
        self, model: nn.Module, validate: Callable[[nn.Module], float]
    ) -> tuple[float, float, float]:
        """(shift, best validation metric, validation metric at the shift) of the sparsest shift
        within ``calibration_tolerance`` of the best; ties go to the larger (safer) shift."""
        points = []
        for shift in self.curve_levels():
            masks = self.masks_at(model, shift)
            if not any(bool(m.any()) for m in masks.values()):
                continue  # nothing left: not a model
            nonzeros = sum(int(m.sum()) for m in masks.values())
            points.append((shift, nonzeros, validate(self.export(model, masks).eval())))
        if not points:
            return 0.0, math.nan, math.nan
        best = min(v for _, _, v in points)
        within = [p for p in points if p[2] <= best + self.config.calibration_tolerance]
        shift, _, picked = min(within, key=lambda p: (p[1], -p[0]))
        return shift, best, picked

    @torch.no_grad()
    def lower_layers(
        self, model: nn.Module, validate: Callable[[nn.Module], float], limit: float, current: float
    ) -> float:
        """Greedily lower single layers' thresholds while the validation metric stays <= ``limit``.

        One shift for all layers stops at the first layer whose needed groups sit close to its
        threshold, although another layer may still hold many dispensable groups (on LeNet-300-100
        the 784 input pixels carry most weights). Each round tries, for every layer, the next
        step of 0.5 down that removes at least one of its groups, and keeps the candidate that
        leaves the fewest weights. Returns the validation metric of the final masks.
        """
        layers = self.layers(model)
        step = 0.5
        while True:
            candidates = []
            for _, layer in layers:
                original = float(layer.threshold)
                scores = layer.scale.prune_score().detach()
                kept = scores[scores < original]
                if kept.numel() <= 1:
                    continue  # removing a layer's last group leaves no model
                steps = math.floor((original - float(kept.max())) / step) + 1
                lowered = original - steps * step
                layer.threshold.fill_(lowered)
                masks = self.masks_at(model, 0.0)
                layer.threshold.fill_(original)
                if not all(bool(m.any()) for m in masks.values()):
                    continue
                value = validate(self.export(model, masks).eval())
                if value <= limit:
                    candidates.append((sum(int(m.sum()) for m in masks.values()), value, lowered, layer))
            if not candidates:
                return current
            _, current, lowered, layer = min(candidates, key=lambda c: (c[0], c[1]))
            layer.threshold.fill_(lowered)

    def masks(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return self.masks_at(model, 0.0)

    def curve_levels(self) -> Sequence[float]:
        """Shifts added to every layer's own threshold (not absolute thresholds): -6 to +6 by 0.5.

        Each layer scores its groups on a scale of its own (log alpha_z, -E[log z]) with its own
        threshold, so one absolute number cannot serve every layer; a common shift can.
        """
        return tuple(x / 2 for x in range(-12, 13))

    def chosen_level(self) -> float:
        return 0.0

    def masks_at(self, model: nn.Module, level: float) -> dict[str, torch.Tensor]:
        """Masks with every layer's threshold moved by ``level`` (a shift; 0 = the chosen ones)."""
        layers = self.layers(model)
        keeps = [layer.group_keep(layer.current_threshold() + level) for _, layer in layers]
        units = propagate(layers, keeps)
        return {path: weight_mask(layer, *units[path]) for path, layer in layers}

    def export(self, model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
        exported = copy.deepcopy(model)
        # The copy is a plain model: drop the mask hook it inherited (torch keeps hooks in this dict).
        for key, hook in list(exported._forward_pre_hooks.items()):
            if isinstance(hook, _ChainMaskHook):
                del exported._forward_pre_hooks[key]
        with torch.no_grad():
            return replace_modules(
                exported, lambda path, m: m.to_standard(masks[path]) if isinstance(m, GROUP_LAYERS) else None
            )

    @torch.no_grad()
    def posterior_variances(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Marginal variance V of every weight in the exported layer's shape (section 4.7, item 1).

        Unmasked: the precision code reads only the kept weights.
        """
        return {path: layer.posterior_variance().detach().clone() for path, layer in self.layers(model)}

    def search_space(self, trial: Any) -> dict[str, Any]:
        return {
            "method.kl_weight": trial.suggest_float("method.kl_weight", 0.1, 10.0, log=True),
            "method.clip_var": trial.suggest_float("method.clip_var", 0.005, 0.2, log=True),
        }
