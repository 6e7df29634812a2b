"""The group layers: Linear (input neurons are the groups) and Conv2d (output filters are).

Every group has a random scale z multiplying all of its weights, w = z * w~, with q(w~) =
N(mu, sigma^2) under an N(0, 1) prior and a variational bias under an N(0, 1) prior. Training
draws z per example (local reparameterisation); evaluation uses the posterior means under the
mask of the whole chain. The prior and posterior of z are the method's (``GroupScale``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import nn
from torch.nn import functional as F

from sparsebench.toolkit.kl import gaussian_kl_standard_normal
from sparsebench.toolkit.layout import strided_like
from sparsebench.toolkit.noise import gaussian_preactivation
from sparsebench.toolkit.surgery import standard_layer

from .thresholds import auto_threshold

INIT_LOGVAR, INIT_STD = -9.0, 1e-2
"""bc initialises every log variance ~ N(-9, 0.01^2) (bc ``BayesianLayers.py``, methods.md 4.5)."""


class GroupScale(nn.Module, ABC):
    """The posterior q(z) of one layer's G group scales."""

    @abstractmethod
    def sample(self, batch: int) -> torch.Tensor:
        """(batch, G) draws, independent per example: the 'local' in local reparameterisation."""

    @abstractmethod
    def mean(self) -> torch.Tensor:
        """E_q[z], shape (G,): the deterministic evaluation uses it (section 4.3)."""

    @abstractmethod
    def variance(self) -> torch.Tensor:
        """Var_q[z], shape (G,): enters the marginal weight variance of section 4.7."""

    @abstractmethod
    def kl(self) -> torch.Tensor:
        """KL(q(z) || p(z)) of this layer, a scalar."""

    @abstractmethod
    def prune_score(self) -> torch.Tensor:
        """(G,) scores; a group is removed when its score reaches the layer's threshold."""


class _GroupLayer(nn.Module):
    """Parameters and computations common to the Linear and Conv2d group layers.

    ``threshold`` is a buffer so that the threshold chosen by calibration travels with the model
    (NaN means "choose automatically from the current scores").
    """

    group_dim: int
    """Weight axis of the groups: 1 (inputs) for Linear, 0 (output filters) for Conv2d."""
    fallback_threshold: float = 0.0
    """Used by ``auto_threshold`` when this layer's scores have a single mode (set by the method)."""
    use_compiled: bool = False
    """Fuse the training draw's element-wise work into compiled kernels (``GroupMethod.enable_compile``)."""

    def _init_variational(
        self, weight: torch.Tensor, bias: torch.Tensor | None, scale: GroupScale, eps0: float
    ) -> None:
        self.weight_mu = nn.Parameter(weight.detach().clone())
        self.weight_logvar = nn.Parameter(_logvar_like(weight))
        if bias is not None:
            self.bias_mu = nn.Parameter(bias.detach().clone())
            self.bias_logvar = nn.Parameter(_logvar_like(bias))
        else:
            self.register_parameter("bias_mu", None)
            self.register_parameter("bias_logvar", None)
        self.scale = scale.to(weight.device, weight.dtype)
        self.eps0 = eps0
        self.clip_var: float | None = None
        self.register_buffer("threshold", torch.tensor(math.nan, dtype=weight.dtype, device=weight.device))

    @property
    def num_groups(self) -> int:
        return self.weight_mu.shape[self.group_dim]

    def _on_group_axis(self, v: torch.Tensor) -> torch.Tensor:
        """Reshape a (G,) vector so it broadcasts over the weight's group axis."""
        shape = [1] * self.weight_mu.dim()
        shape[self.group_dim] = -1
        return v.view(shape)

    def kl(self) -> torch.Tensor:
        """KL of z (the method's) + the exact KL of w~ and of the bias to N(0, 1) (section 4.4)."""
        total = self.scale.kl() + gaussian_kl_standard_normal(self.weight_mu, self.weight_logvar)
        if self.bias_mu is not None:
            total = total + gaussian_kl_standard_normal(self.bias_mu, self.bias_logvar)
        return total

    @torch.no_grad()
    def clip_variances(self) -> None:
        """bc's ``clip_var``: cap the weight and bias variances; z's variance is never clipped."""
        if self.clip_var is None:
            return
        cap = math.log(self.clip_var)
        self.weight_logvar.clamp_(max=cap)
        if self.bias_logvar is not None:
            self.bias_logvar.clamp_(max=cap)

    def current_threshold(self) -> float:
        """The calibrated or configured threshold, else the automatic one.

        The automatic one is a mixture fit, so it is cached until the scale parameters change:
        every evaluation batch asks for it, but only optimiser steps can move it. The cache is keyed
        on the values (one number per group, cheap to compare), not on ``_version``, which fused
        Adam leaves unchanged: keyed on versions, the first epoch's fit stayed for the whole run.
        """
        t = float(self.threshold)
        if math.isfinite(t):
            return t
        values = [p.detach().clone() for p in self.scale.parameters()]
        cached = getattr(self, "_auto_cache", None)
        if (
            cached is None
            or cached[1] != self.fallback_threshold
            or not all(torch.equal(a, b) for a, b in zip(cached[0], values, strict=True))
        ):
            cached = (
                values,
                self.fallback_threshold,
                auto_threshold(self.scale.prune_score(), self.fallback_threshold),
            )
            self._auto_cache = cached
        return cached[2]

    @torch.no_grad()
    def group_keep(self, threshold: float | None = None) -> torch.Tensor:
        """Bool (G,): groups this layer keeps by its own scores (before propagation)."""
        t = self.current_threshold() if threshold is None else threshold
        return self.scale.prune_score() < t

    def mean_weight(self) -> torch.Tensor:
        """Posterior mean E[z] * mu of every weight, in the standard layer's shape."""
        return self.weight_mu * self._on_group_axis(self.scale.mean())

    def posterior_variance(self) -> torch.Tensor:
        """Var[z w~] = E[z]^2 s^2 + Var[z] mu^2 + Var[z] s^2 for independent z and w~ (section 4.7)."""
        s2 = self.weight_logvar.exp()
        mz = self._on_group_axis(self.scale.mean())
        vz = self._on_group_axis(self.scale.variance())
        return mz * mz * s2 + vz * self.weight_mu * self.weight_mu + vz * s2

    def mean_bias(self) -> torch.Tensor | None:
        """Posterior mean of the bias as the standard layer would hold it (overridden for conv)."""
        return self.bias_mu

    def standard_params(self, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight, bias) of the deterministic standard layer under ``mask``."""
        return self.mean_weight() * mask, self.mean_bias()

    def eval_params(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight, bias) of the deterministic forward: the exported layer's, bit for bit.

        The mask is the one the method installed for the whole chain before this evaluation
        pass (``GroupMethod``'s pre-hook on the model); a layer run on its own falls back to
        its own groups only.
        """
        mask = self.eval_mask
        if mask is None:
            mask = self._on_group_axis(self.group_keep()).expand_as(self.weight_mu)
        return self.standard_params(mask.to(self.weight_mu.dtype))

    eval_mask: torch.Tensor | None = None


def _logvar_like(t: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(t).normal_(INIT_LOGVAR, INIT_STD)


class GroupLinear(_GroupLayer):
    """Linear layer whose input neurons are the groups; z multiplies the input (bc ``LinearGroupNJ``)."""

    group_dim = 1

    def __init__(self, layer: nn.Linear, scale: GroupScale, eps0: float) -> None:
        super().__init__()
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self._init_variational(layer.weight, layer.bias, scale, eps0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.linear(x, *self.eval_params())
        self.eval_mask = None  # parameters are about to change: the installed mask goes stale
        z = self.scale.sample(x.shape[0])
        u = x * z.view(x.shape[0], *([1] * (x.dim() - 2)), -1)
        mean = F.linear(u, self.weight_mu, self.bias_mu)
        bias_var = None if self.bias_logvar is None else self.bias_logvar.exp()
        var = F.linear(u * u, self.weight_logvar.exp(), bias_var)
        return gaussian_preactivation(mean, var, self.eps0, self.use_compiled)

    def to_standard(self, mask: torch.Tensor) -> nn.Linear:
        return standard_layer(self, *self.standard_params(mask))


class GroupConv2d(_GroupLayer):
    """Conv2d layer whose output filters are the groups; z scales each output channel and its bias."""

    group_dim = 0

    def __init__(self, layer: nn.Conv2d, scale: GroupScale, eps0: float) -> None:
        super().__init__()
        if layer.groups != 1 or layer.padding_mode != "zeros":
            raise ValueError("group layers support Conv2d with groups=1 and zero padding only")
        self.in_channels, self.out_channels = layer.in_channels, layer.out_channels
        self.kernel_size, self.stride = layer.kernel_size, layer.stride
        self.padding, self.dilation = layer.padding, layer.dilation
        self._init_variational(layer.weight, layer.bias, scale, eps0)

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation)

    def mean_bias(self) -> torch.Tensor | None:
        # z multiplies the whole pre-activation, bias included (bc Conv2dGroupNJ.forward).
        return None if self.bias_mu is None else self.bias_mu * self.scale.mean()

    def standard_params(self, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        weight, bias = super().standard_params(mask)
        if bias is not None and bool(mask.any()):
            # A filter with no weight left is a removed filter: its bias goes with it. Its output
            # only ever meets zeroed input weights of the next layer, so nothing downstream changes.
            bias = bias * mask.flatten(1).any(dim=1).to(bias.dtype)
        return weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self._conv(x, *self.eval_params())
        self.eval_mask = None
        bias_var = None if self.bias_logvar is None else self.bias_logvar.exp()
        mean = self._conv(x, self.weight_mu, self.bias_mu)
        var = self._conv(x * x, strided_like(self.weight_logvar.exp(), self.weight_mu), bias_var)
        z = self.scale.sample(x.shape[0])[:, :, None, None]
        return gaussian_preactivation(mean, var, self.eps0, self.use_compiled, scale=z)

    def to_standard(self, mask: torch.Tensor) -> nn.Conv2d:
        return standard_layer(self, *self.standard_params(mask))


GROUP_LAYERS = (GroupLinear, GroupConv2d)
