"""The ``sparse_vd`` method: convert to per-weight posteriors, the KL with warm-up, masks, export."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from sparsebench.method import SparsityMethod, StepContext
from sparsebench.registry import register_method
from sparsebench.toolkit.exact import (
    ExactAxis,
    check_exact_options,
    exact_keep,
    exact_levels,
    pin_exact_masks,
    pinned_mask,
)
from sparsebench.toolkit.kl import kl_warmup
from sparsebench.toolkit.surgery import modules_of_type, replace_modules

from .fused import EPS_THETA
from .layers import _KL_STASH, SVD_LAYERS, Conv2dSVD, LinearSVD, SparseVDConfig


@register_method("sparse_vd")
class SparseVD(SparsityMethod):
    description = "Sparse Variational Dropout: per-weight learned dropout rates, prune log alpha >= 3"
    paper = "Molchanov, Ashukha, Vetrov. Variational Dropout Sparsifies Deep Neural Networks. ICML 2017"
    Config = SparseVDConfig
    layer_types = (nn.Linear, nn.Conv2d, nn.LSTM, nn.Embedding)
    recipe_kind = "per_weight_alpha"
    curve_axis = ExactAxis("log_alpha_threshold")  # "sparsity" once method.sparsity > 0

    def convert(self, model: nn.Module) -> nn.Module:
        from .recurrent import recurrent_swap

        check_exact_options(self.config.sparsity, self.config.curve_sparsities)

        recurrent = recurrent_swap(model, self.config)

        def swap(path: str, m: nn.Module) -> nn.Module | None:
            if isinstance(m, SVD_LAYERS):
                return None
            if isinstance(m, nn.Dropout):  # the learned weight noise replaces dropout (methods.md 9.3)
                return nn.Identity()
            if (new := recurrent(m)) is not None:
                return new
            if isinstance(m, nn.Linear):
                return LinearSVD.from_dense(m, self.config)
            if isinstance(m, nn.Conv2d):
                return Conv2dSVD.from_dense(m, self.config)
            return None

        return replace_modules(model, swap)

    def enable_compile(self, model: nn.Module) -> None:
        for layer in modules_of_type(model, SVD_LAYERS).values():
            layer.use_compiled = True

    def kl(self, model: nn.Module) -> torch.Tensor:
        return sum(m.kl() for m in modules_of_type(model, SVD_LAYERS).values())  # type: ignore[return-value]

    def regularizer(self, model: nn.Module, ctx: StepContext) -> torch.Tensor | None:
        layers = modules_of_type(model, SVD_LAYERS).values()
        beta = kl_warmup(ctx.epoch, self.config.kl_warmup_start, self.config.kl_warmup_epochs)
        if beta == 0.0:
            for m in layers:  # drop the forward's KL: a later step must not pick up a stale one
                _KL_STASH.pop(m, None)
            return None
        kl = sum(m.training_kl() for m in layers)
        return (beta * self.config.kl_weight / ctx.num_train) * kl  # type: ignore[return-value]

    def epoch_metrics(self, model: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            layers = modules_of_type(model, SVD_LAYERS)
            log_alphas = torch.cat([m.log_alpha().flatten() for m in layers.values()])
            return {"kl": float(self.kl(model)), "mean_log_alpha": float(log_alphas.mean())}

    def calibrate(self, model: nn.Module, validate: Callable[[nn.Module], float]) -> dict[str, float]:
        """With ``method.sparsity``: pin the exact masks, so evaluation computes what export does.

        Returns the share of weights the threshold alone removes (%): where the run landed by itself.
        """
        if self.config.sparsity <= 0.0:
            return {}
        layers = modules_of_type(model, SVD_LAYERS)
        pin_exact_masks(layers, self.masks_at(model, self.config.sparsity))
        removed = sum(int((~m.keep_mask()).sum()) for m in layers.values())
        total = sum(m.weight.numel() for m in layers.values())
        return {"threshold_sparsity": 100.0 * removed / max(1, total)}

    def masks(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The threshold rule; with ``method.sparsity``, the exact masks once ``calibrate`` pinned them
        (after training: ``masks_at(model, method.sparsity)``), the threshold's during training."""
        layers = modules_of_type(model, SVD_LAYERS)
        pinned = {path: pinned_mask(m) for path, m in layers.items()}
        if self.config.sparsity > 0.0 and all(mask is not None for mask in pinned.values()):
            return {path: mask.clone() for path, mask in pinned.items()}  # type: ignore[union-attr]
        return {path: m.keep_mask() for path, m in layers.items()}

    def curve_levels(self) -> Sequence[float]:
        """Absolute log alpha thresholds from -4 to 8 (the clamp) in steps of 0.5; with
        ``method.sparsity``, the exact sparsities instead."""
        if self.config.sparsity > 0.0:
            return exact_levels(self.config.sparsity, self.config.curve_sparsities)
        return tuple(x / 2 for x in range(-8, 17))

    def chosen_level(self) -> float:
        return self.config.sparsity if self.config.sparsity > 0.0 else self.config.threshold

    def masks_at(self, model: nn.Module, level: float) -> dict[str, torch.Tensor]:
        """Keep every weight whose log alpha is below ``level``, an absolute threshold; with
        ``method.sparsity``, ``level`` is an exact sparsity reached by ranking log alpha."""
        layers = modules_of_type(model, SVD_LAYERS)
        if self.config.sparsity <= 0.0:
            return {path: m.keep_mask(level) for path, m in layers.items()}
        with torch.no_grad():
            # -log alpha, unclamped: among the weights at the +8 clamp the noisier still go first
            score = {p: torch.log(m.weight.pow(2) + EPS_THETA) - m.log_sigma2 for p, m in layers.items()}
            return exact_keep(score, level, {p: m.weight.abs() for p, m in layers.items()})

    def export(self, model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
        from .recurrent import LSTMSVD

        def swap(path: str, m: nn.Module) -> nn.Module | None:
            if isinstance(m, LSTMSVD):  # one mask per weight matrix, keyed "<lstm path>.weight_hh_l0"
                return m.to_dense({name: masks[f"{path}.{name}"] for name in m.weight_names})
            return m.to_dense(masks[path]) if isinstance(m, SVD_LAYERS) else None

        return replace_modules(copy.deepcopy(model), swap)

    def search_space(self, trial: Any) -> dict[str, Any]:
        return {
            "method.kl_weight": trial.suggest_float("method.kl_weight", 0.1, 10.0, log=True),
            "method.threshold": trial.suggest_float("method.threshold", 1.0, 4.0),
        }
