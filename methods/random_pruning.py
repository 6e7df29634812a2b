"""Random pruning, the control baseline every pruning criterion has to beat (e.g. Liu et al., ICLR 2019).

Rule: remove a uniformly random subset of weights — floor(s * n) per layer, or floor(s * N) over the
whole model — drawn once before training (default) or at the point where
magnitude's one-shot prunes, then train the survivors under the fixed masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from sparsebench.config import option
from sparsebench.errors import ConfigError
from sparsebench.method import StepContext
from sparsebench.registry import register_method
from sparsebench.toolkit.masking import MaskedMethod, Scorer, check_sparsity, mask_of


@dataclass
class RandomConfig:
    sparsity: float = option(0.92, "fraction of weights removed (0.92 = 12.5x)")
    scope: Literal["layer", "global"] = option(
        "layer", "layer = the same sparsity in every tensor; global = one random draw over all weights"
    )
    at: Literal["start", "end"] = option(
        "start", "draw the masks before the first step, or after the fraction `end` of training (dense first)"
    )
    end: float = option(0.7, "with at=end: fraction of the training steps after which the masks are drawn")
    seed: int | None = option(
        None,
        "seed of the mask draw; None = drawn from the run's generator, which train.seed seeds, so each "
        "seed of a row gets its own mask; a number holds one mask fixed across train.seed",
    )
    prune_biases: bool = option(False, "also prune biases (separately, at the same sparsity)")


def random_scorer(seed: int | None) -> Scorer:
    """Uniform scores from a CPU generator, so the masks do not depend on the device: a fresh one
    seeded with ``seed``, or torch's default one (seeded by ``train.seed``) when ``seed`` is None.

    Seeds of a campaign row are meant to sample everything random about a method; for random pruning
    that includes the mask, so the default draws it per run rather than holding it fixed.
    """
    generator = None if seed is None else torch.Generator().manual_seed(seed)

    def score(module: nn.Module, name: str) -> torch.Tensor:
        mask = mask_of(module, name)
        u = torch.rand(mask.shape, generator=generator).to(mask.device)
        return torch.where(mask, u, -1.0)

    return score


@register_method("random")
class RandomPruning(MaskedMethod):
    description = "Random pruning at a fixed sparsity: the control baseline for pruning criteria"
    paper = "(baseline) as in Liu et al. Rethinking the Value of Network Pruning. ICLR 2019"
    Config = RandomConfig

    def convert(self, model: nn.Module) -> nn.Module:
        cfg = self.config
        check_sparsity(cfg.sparsity)
        if not 0.0 <= cfg.end <= 1.0:
            raise ConfigError(f"method.end is a fraction of training in [0, 1], got {cfg.end}")
        model = super().convert(model)
        if cfg.at == "start":
            self.prune(model, cfg.sparsity, cfg.scope, random_scorer(cfg.seed))
        return model

    def on_step_end(self, model: nn.Module, ctx: StepContext) -> None:
        cfg = self.config
        if cfg.at == "end" and ctx.step + 1 == max(1, round(cfg.end * ctx.total_steps)):
            self.prune(model, cfg.sparsity, cfg.scope, random_scorer(cfg.seed))

    def search_space(self, trial: Any) -> dict[str, Any]:
        return {"method.sparsity": trial.suggest_float("method.sparsity", 0.5, 0.995)}
