"""L1-penalised training with magnitude pruning: the classic "shrink, then cut" baseline.

Rule: the loss gets ``l1 * sum |w|`` over every weight of the Linear and Conv2d layers, which pulls
the weights that the data does not need towards zero. From the fraction ``start`` of training on,
after every optimiser step, each weight whose magnitude is below ``threshold`` is pruned for good;
the survivors keep training (with the penalty) and fill in for the pruned ones.

Where the state lives: the masks are ``KeepMask`` buffers that ``sparsebench.toolkit.masking``
attaches inside the model, so they are in ``model.state_dict()``, every checkpoint holds them and
``--resume`` brings them back. The method object itself holds only its config; every decision is a
function of the step in the ``StepContext``, so a resumed run prunes exactly when an uninterrupted
one would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from sparsebench.config import option
from sparsebench.errors import ConfigError
from sparsebench.method import StepContext
from sparsebench.toolkit.masking import MaskedMethod, effective, mask_of, set_mask, targets
from torch import nn


@dataclass
class L1PruneConfig:
    l1: float = option(3e-5, "coefficient of sum |w| over all weights, added to the mean data loss")
    threshold: float = option(3e-3, "weights with |w| below this are pruned (absolute, per weight)")
    start: float = option(0.5, "fraction of the training steps after which pruning begins")


class L1Prune(MaskedMethod):
    """L1 penalty during training; weights under a magnitude threshold are masked from ``start`` on."""

    name = "l1_prune"
    description = "L1 penalty on the weights, then magnitude pruning below a fixed threshold (example plugin)"
    paper = (
        "Han, Pool, Tran, Dally. Learning both Weights and Connections for Efficient Neural Networks. "
        "NIPS 2015 (L1 variant)"
    )
    Config = L1PruneConfig

    def convert(self, model: nn.Module) -> nn.Module:
        """Check the config before any compute, then give every weight an all-True mask buffer."""
        cfg = self.config
        for key in ("l1", "threshold"):
            value = getattr(cfg, key)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"method.{key} must be a finite number >= 0, got {value}")
        if not 0.0 <= cfg.start <= 1.0:
            raise ConfigError(f"method.start is a fraction of training in [0, 1], got {cfg.start}")
        return super().convert(model)

    def regularizer(self, model: nn.Module, ctx: StepContext) -> torch.Tensor | None:
        """``l1 * sum |w|`` of the effective weights (pruned entries are exact zeros and add nothing)."""
        if self.config.l1 == 0:
            return None
        weights, _ = targets(model)
        return self.config.l1 * sum(getattr(m, name).abs().sum() for m, name in weights)

    def on_step_end(self, model: nn.Module, ctx: StepContext) -> None:
        """Prune the weights now below the threshold; masks only ever lose entries."""
        if ctx.step + 1 < self.start_step(ctx):
            return
        weights, _ = targets(model)
        for module, name in weights:
            keep = effective(module, name).abs() >= self.config.threshold
            set_mask(module, name, keep & mask_of(module, name))

    def start_step(self, ctx: StepContext) -> int:
        """The optimiser step after which pruning starts (at least 1: never before training)."""
        return max(1, round(self.config.start * ctx.total_steps))

    def search_space(self, trial: Any) -> dict[str, Any]:
        return {
            "method.l1": trial.suggest_float("method.l1", 1e-6, 3e-4, log=True),
            "method.threshold": trial.suggest_float("method.threshold", 1e-3, 3e-2, log=True),
        }
