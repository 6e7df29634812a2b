"""Sparse VD's layers: nn.Linear and nn.Conv2d with a Gaussian posterior on every weight.

Training uses the local reparameterisation trick (noise on the pre-activations) with the fused
weight side of ``fused.py``; evaluation and export use the posterior mean of the kept weights.
The recurrent layers (``recurrent.py``) build on the same mixin.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F
from torch.optim.optimizer import register_optimizer_step_post_hook

from sparsebench.config import option
from sparsebench.toolkit.compiled import compiled
from sparsebench.toolkit.exact import pinned_mask
from sparsebench.toolkit.layout import strided_like
from sparsebench.toolkit.noise import gaussian_preactivation
from sparsebench.toolkit.surgery import copy_as, standard_layer

from .fused import FusedSVD, clamped_log_alpha, keeps, kl_side


@dataclass
class SparseVDConfig:
    threshold: float = option(3.0, "prune weights with log alpha >= threshold")
    init_log_sigma2: float = option(
        -10.0, "initial log sigma^2 (ars: -10 from scratch, -15 for VGG pretrained)"
    )
    kl_warmup_start: int = option(5, "epochs with KL weight 0 before the warm-up ramp")
    kl_warmup_epochs: int = option(15, "epochs of the linear KL warm-up ramp (0 = jump to 1)")
    kl_weight: float = option(1.0, "extra multiplier of KL/N (1 = the ELBO)")
    train_mask: bool = option(
        True, "zero weights above the threshold in the training forward too (ars LeNets)"
    )
    variance_mask: Literal["ars", "all", "none"] = option(
        "ars",
        "with train_mask, whether masked weights also leave the variance: ars = as the paper's code "
        "(they keep their noise in Linear layers, leave it in conv and recurrent ones), all = "
        "everywhere (chainer), none = nowhere",
    )
    variance_from: Literal["clamped_alpha", "sigma2"] = option(
        "clamped_alpha", "training variance from clamped alpha * theta^2 (ars) or from exp(log sigma^2)"
    )
    eps0: float = option(1e-8, "floor added to the pre-activation variance inside the square root")
    sparsity: float = option(
        0.0,
        "0 = prune by the threshold; in (0, 1): after training remove exactly this fraction of the "
        "weights, the highest log alpha over all layers first (matched-sparsity comparisons; training "
        "is unchanged), and read the threshold curve at exact sparsities",
    )
    curve_sparsities: list[float] = option(
        [], "with method.sparsity: more exact sparsities the threshold curve reads (e.g. every target)"
    )


_KL_STASH: weakref.WeakKeyDictionary[nn.Module, tuple[torch.Tensor, tuple[int, ...]]] = (
    weakref.WeakKeyDictionary()
)
"""The KL each layer's last training forward computed, with the parameter versions it saw. Kept
outside the modules so that copying or pickling a model never meets a tensor of the graph."""


def _forget_stashed_kls(*_: object) -> None:
    """Any optimiser step may have moved the parameters: no stashed KL survives it.

    The parameter versions alone cannot tell: fused Adam (the runner's optimiser) updates the
    parameters without bumping ``_version``; they still catch in-place edits outside optimisers.
    """
    _KL_STASH.clear()


register_optimizer_step_post_hook(_forget_stashed_kls)


class _SparseVDMixin:
    """Weight-side computations shared by the Linear and Conv2d layers."""

    weight: nn.Parameter
    log_sigma2: nn.Parameter
    masked_noise_in_ars: bool = False
    """Whether ars keeps the noise of masked weights in this kind of layer (its dense layers do)."""

    def _init_variational(self, cfg: SparseVDConfig) -> None:
        self.cfg = cfg
        self.log_sigma2 = nn.Parameter(torch.full_like(self.weight, cfg.init_log_sigma2))
        self.use_compiled = False

    def log_alpha(self) -> torch.Tensor:
        """Clamped log alpha of every weight."""
        return clamped_log_alpha(self.weight, self.log_sigma2)

    def keep_mask(self, threshold: float | None = None) -> torch.Tensor:
        """Weights kept at ``threshold`` (default: the configured one), by the training forward's rule."""
        with torch.no_grad():
            return keeps(self.log_alpha(), self.cfg.threshold if threshold is None else threshold)

    def kl(self) -> torch.Tensor:
        """KL of this layer's weights to the log-uniform prior (approximation of Eq. 14)."""
        fn = compiled(kl_side) if self.use_compiled else kl_side
        return fn(self.weight, self.log_sigma2)  # type: ignore[operator]

    def _param_key(self) -> tuple[int, ...]:
        return (self.weight.data_ptr(), self.weight._version, self.log_sigma2._version)

    def training_kl(self) -> torch.Tensor:
        """The KL for this step's loss: the one the training forward computed, when still valid.

        The forward's fused kernel computes the KL in the same pass as the variance weights, and its
        backward returns both gradients in one pass. It is used once, and only if no optimiser step
        or other in-place edit has touched the parameters since; otherwise the KL is recomputed.
        """
        stash = _KL_STASH.pop(self, None)
        if stash is not None:
            kl, key = stash
            if key == self._param_key() and (kl.requires_grad or not torch.is_grad_enabled()):
                return kl
        return self.kl()

    def _train_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean weight, per-weight variance) for the local reparameterisation.

        The threshold goes in as a tensor, not a float: a float would be baked into the compiled
        graph, one compile per value (a sweep over method.threshold recompiles at every trial).
        """
        threshold = torch.tensor(self.cfg.threshold, dtype=self.weight.dtype, device=self.weight.device)
        theta, var, kl = FusedSVD.apply(
            self.weight,
            self.log_sigma2,
            threshold,
            (self.cfg.train_mask, self.cfg.variance_from == "sigma2", self._mask_variance()),
            self.use_compiled,
        )
        _KL_STASH[self] = (kl, self._param_key())
        return theta, var

    def _mask_variance(self) -> bool:
        rule = self.cfg.variance_mask
        return rule == "all" or (rule == "ars" and not self.masked_noise_in_ars)

    def _eval_weight(self) -> torch.Tensor:
        exact = pinned_mask(self)  # method.sparsity: the run's exact masks, pinned after training
        return self.weight * (self.keep_mask() if exact is None else exact)


class LinearSVD(nn.Linear, _SparseVDMixin):
    """nn.Linear with a per-weight Gaussian posterior, trained with the LRT."""

    # ars' dense layers compute the variance from the unmasked theta (methods.md 2.2, item 4). On
    # LeNet-300-100 that gave 1.92 % at 108x against 2.09-2.19 % at 124x with masked noise: a weight
    # just past the threshold still costs the data term its noise, so it can come back.
    masked_noise_in_ars = True

    @classmethod
    def from_dense(cls, layer: nn.Linear, cfg: SparseVDConfig) -> LinearSVD:
        new = copy_as(cls, layer)
        new._init_variational(cfg)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.linear(x, self._eval_weight(), self.bias)
        theta, var = self._train_weights()
        mean = F.linear(x, theta, self.bias)
        return gaussian_preactivation(mean, F.linear(x * x, var), self.cfg.eps0, self.use_compiled)

    def to_dense(self, mask: torch.Tensor) -> nn.Linear:
        return standard_layer(self, self.weight.detach() * mask, self.bias)


class Conv2dSVD(nn.Conv2d, _SparseVDMixin):
    """nn.Conv2d with a per-weight Gaussian posterior; noise per example, channel and position."""

    @classmethod
    def from_dense(cls, layer: nn.Conv2d, cfg: SparseVDConfig) -> Conv2dSVD:
        new = copy_as(cls, layer)
        new._init_variational(cfg)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self._conv_forward(x, self._eval_weight(), self.bias)
        theta, var = (strided_like(t, self.weight) for t in self._train_weights())
        mean = self._conv_forward(x, theta, self.bias)
        return gaussian_preactivation(
            mean, self._conv_forward(x * x, var, None), self.cfg.eps0, self.use_compiled
        )

    def to_dense(self, mask: torch.Tensor) -> nn.Conv2d:
        return standard_layer(self, self.weight.detach() * mask, self.bias)


SVD_LAYERS = (_SparseVDMixin,)
"""Every layer built on the per-weight posterior: LinearSVD, Conv2dSVD and the recurrent ones of
recurrent.py (embedding, softmax, each LSTM weight matrix), which import this module."""
