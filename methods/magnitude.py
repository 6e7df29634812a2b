"""Magnitude pruning: Zhu & Gupta 2017 (gradual, AGP), Han et al. 2015 (iterative), shrinkbench (one-shot).

Rule: remove the weights of smallest |w| — along a cubic sparsity schedule during training (AGP,
the default), by a per-layer threshold quality * std(W) in prune/retrain rounds (Han), or once to the
target (one-shot) — then fine-tune the survivors under frozen masks. Specified in docs/methods.md
section 6; the masks are enforced by ``sparsebench.toolkit.masking``.

Every decision is a pure function of the optimiser step, so a resumed run prunes at the same steps
and the masks themselves come back from the checkpoint (they are buffers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from torch import nn

from sparsebench.config import TrainConfig, option
from sparsebench.errors import ConfigError
from sparsebench.method import StepContext, task_family
from sparsebench.registry import register_method
from sparsebench.toolkit.masking import (
    MaskedMethod,
    check_sparsity,
    effective,
    magnitude_scores,
    mask_of,
    set_mask,
    std_threshold_keep,
    targets,
)

if TYPE_CHECKING:
    from sparsebench.task import Task


@dataclass
class MagnitudeConfig:
    sparsity: float = option(0.92, "target fraction s_f of weights removed (0.92 = 12.5x); not for iterative")
    schedule: Literal["gradual", "iterative", "oneshot"] = option(
        "gradual",
        "gradual = Zhu & Gupta's cubic schedule; iterative = Han's prune/retrain rounds with "
        "quality*std thresholds; oneshot = prune to the target once at `end`, then fine-tune",
    )
    scope: Literal["layer", "global"] = option(
        "layer", "layer = the same sparsity in every tensor; global = one magnitude ranking over all"
    )
    initial_sparsity: float = option(0.0, "gradual: s_i, the sparsity of the first mask update")
    start: float = option(0.1, "gradual: fraction of the training steps at the first mask update (t0)")
    end: float = option(
        0.7, "gradual: fraction of the steps when s_f is reached and masks freeze; oneshot: when it prunes"
    )
    frequency: int = option(0, "gradual: optimiser steps between mask updates (0 = one epoch; PTB: 100)")
    quality: tuple[float, ...] = option(
        (2.5,),
        "iterative: Han's per-layer s of the threshold s*std(W), in network order; one value = every "
        "layer (2.5 prunes about 92 percent of a trained LeNet-300-100 layer; [2.5, 2.5, 1.3] for Han's "
        "92-91-74)",
    )
    rounds: int = option(4, "iterative: prune/retrain rounds; the quality ramps linearly up to its value")
    retrain_epochs: int = option(
        20, "iterative: epochs of retraining under fixed masks after each round; the dense phase is the rest"
    )
    prune_biases: bool = option(False, "also prune biases (same rule, separately); papers count weights only")


def agp_sparsity(k: int, n: int, initial: float, final: float) -> float:
    """Sparsity of the k-th of n+1 AGP updates: s_k = s_f + (s_i - s_f)(1 - k/n)^3, k = 0..n.

    Step convention (distiller's, not jaxpruner's off-by-one): update 0 happens at t0 and applies
    s_i; update k happens after t0 + k * frequency optimiser steps; update n applies s_f exactly.
    """
    if n <= 0:
        return final
    frac = min(max(k / n, 0.0), 1.0)
    return final + (initial - final) * (1.0 - frac) ** 3


def gradual_window(total_steps: int, steps_per_epoch: int, cfg: MagnitudeConfig) -> tuple[int, int, int]:
    """(t0, frequency, n): updates happen after t0 + k*frequency optimiser steps, k = 0..n."""
    dt = cfg.frequency or steps_per_epoch
    t0 = max(1, round(cfg.start * total_steps))
    t_end = max(t0, round(cfg.end * total_steps))
    n = (t_end - t0) // dt
    if n == 0:  # a window shorter than one update interval: a single update to s_f at its end
        t0 = t_end
    return t0, dt, n


def gradual_target(done: int, t0: int, dt: int, n: int, initial: float, final: float) -> float | None:
    """The sparsity to apply once ``done`` optimiser steps are finished, or None between updates."""
    if done < t0 or (done - t0) % dt or done > t0 + n * dt:
        return None
    return agp_sparsity((done - t0) // dt, n, initial, final)


def iterative_steps(total_steps: int, steps_per_epoch: int, rounds: int, retrain_epochs: int) -> list[int]:
    """Optimiser steps after which Han's rounds prune: a dense phase, then rounds of prune + retrain."""
    retrain = retrain_epochs * steps_per_epoch
    first = total_steps - rounds * retrain
    if first < steps_per_epoch:
        epochs = total_steps // max(1, steps_per_epoch)
        raise ConfigError(
            f"iterative magnitude pruning needs rounds * retrain_epochs < train.epochs (got {rounds} * "
            f"{retrain_epochs} with {epochs} epochs); lower method.retrain_epochs or method.rounds"
        )
    return [first + r * retrain for r in range(rounds)]


HAN_L2 = 5e-4
"""Han et al. train the dense net with L2 before pruning (L2 beats L1 after retraining); 5e-4 is the
weight decay of Caffe's LeNet solvers, which their LeNet experiments ran on (methods.md 6.1, 9.2)."""

HAN_FAMILIES = ("mnist",)
"""Task families whose recipes (ars') have no L2 where Han's LeNet experiments had Caffe's."""


def han_recipe(task: Task | str, recipe: TrainConfig) -> TrainConfig:
    """The task's recipe with Han's L2 on the MNIST family's tasks, whose recipes (ars') have none.

    Measured on LeNet-300-100 (global 12.5x, 100 epochs, one seed each): weight decay 0 -> 1.80 %,
    1e-4 -> 1.74 %, 5e-4 -> 1.64 % test error.
    """
    if task_family(task) in HAN_FAMILIES and recipe.weight_decay == 0.0:
        recipe.weight_decay = HAN_L2
    return recipe


@register_method("magnitude")
class Magnitude(MaskedMethod):
    description = "Magnitude pruning: gradual (Zhu & Gupta AGP, default), iterative (Han) or one-shot"
    paper = (
        "Zhu & Gupta. To prune, or not to prune. arXiv 1710.01878 (2017); Han, Pool, Tran, Dally. "
        "Learning both Weights and Connections for Efficient Neural Networks. NIPS 2015"
    )
    Config = MagnitudeConfig

    def adjust_recipe(self, task: Task | str, recipe: TrainConfig) -> TrainConfig:
        return han_recipe(task, recipe)

    def convert(self, model: nn.Module) -> nn.Module:
        self.validate()
        return super().convert(model)

    def validate(self) -> None:
        cfg = self.config
        check_sparsity(cfg.sparsity)
        check_sparsity(cfg.initial_sparsity, "method.initial_sparsity")
        if cfg.initial_sparsity > cfg.sparsity:
            raise ConfigError("method.initial_sparsity must not exceed method.sparsity")
        if not 0.0 <= cfg.start <= cfg.end <= 1.0:
            raise ConfigError(f"need 0 <= method.start <= method.end <= 1, got {cfg.start} and {cfg.end}")
        if cfg.frequency < 0:
            raise ConfigError("method.frequency must be >= 0 (0 = one epoch of steps)")
        if cfg.schedule == "iterative":
            if cfg.scope != "layer":
                raise ConfigError("schedule=iterative thresholds each layer (Han); set method.scope=layer")
            if cfg.rounds < 1 or cfg.retrain_epochs < 0:
                raise ConfigError("method.rounds must be >= 1 and method.retrain_epochs >= 0")
            if not cfg.quality or min(cfg.quality) <= 0:
                raise ConfigError("method.quality needs positive values, e.g. [1.5] or [1.8, 1.8, 1.2]")

    def on_step_end(self, model: nn.Module, ctx: StepContext) -> None:
        cfg = self.config
        done = ctx.step + 1
        if cfg.schedule == "iterative":
            steps = iterative_steps(ctx.total_steps, ctx.steps_per_epoch, cfg.rounds, cfg.retrain_epochs)
            if done in steps:
                self.prune_by_std(model, (steps.index(done) + 1) / cfg.rounds)
            return
        if cfg.schedule == "oneshot":
            target = cfg.sparsity if done == max(1, round(cfg.end * ctx.total_steps)) else None
        else:
            t0, dt, n = gradual_window(ctx.total_steps, ctx.steps_per_epoch, cfg)
            target = gradual_target(done, t0, dt, n, cfg.initial_sparsity, cfg.sparsity)
        if target is not None:
            self.prune(model, target, cfg.scope, magnitude_scores)

    def qualities(self, n_layers: int) -> list[float]:
        quality = list(self.config.quality)
        if len(quality) == 1:
            return quality * n_layers
        if len(quality) != n_layers:
            raise ConfigError(
                f"method.quality has {len(quality)} values but the model has {n_layers} prunable layers; "
                "give one value per layer in network order, or a single value"
            )
        return quality

    def prune_by_std(self, model: nn.Module, ramp: float) -> None:
        """One of Han's rounds: prune |w| < ramp * quality_l * std(W_l), the std recomputed now."""
        weights, biases = targets(model, self.prune_biases)
        per_layer = dict(zip((id(m) for m, _ in weights), self.qualities(len(weights)), strict=True))
        for module, name in weights + biases:
            keep = std_threshold_keep(effective(module, name), ramp * per_layer[id(module)])
            set_mask(module, name, keep & mask_of(module, name))

    def search_space(self, trial: Any) -> dict[str, Any]:
        cfg = self.config
        if cfg.schedule == "iterative":
            return {
                "method.quality": trial.suggest_float("method.quality", 0.5, 3.0),
                "method.rounds": trial.suggest_int("method.rounds", 1, 6),
            }
        space = {"method.sparsity": trial.suggest_float("method.sparsity", 0.5, 0.995)}
        if cfg.schedule == "gradual":
            space["method.start"] = trial.suggest_float("method.start", 0.0, 0.3)
        space["method.end"] = trial.suggest_float("method.end", 0.4, 0.9)
        return space
