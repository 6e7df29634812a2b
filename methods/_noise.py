"""Noisy twins of nn.Linear and nn.Conv2d for the dropout baselines (docs/methods.md section 5).

A noisy layer is the standard layer (same class hierarchy, same parameters, same module path) plus
a ``noise`` child that perturbs it in training only. In eval mode it computes exactly what the
standard layer computes, so export is a plain copy of the weights and the masks keyed by path
need no translation.

Two kinds of noise, named by where it enters (Kingma et al. 2015):
- input noise (type A): the layer's input is multiplied by noise drawn per example and per input
  unit (or per channel), so one draw is shared by all of that unit's outgoing weights;
- weight noise (type B): every weight is multiplied by its own N(1, alpha) draw, sampled through
  the local reparameterisation trick as a Gaussian pre-activation.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from sparsebench.toolkit.noise import gaussian_preactivation


class InputNoise(nn.Module):
    """Multiplicative noise on a layer's input; the layer then runs unchanged on the noisy input."""

    def sample(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def perturb(self, layer: NoisyLayer, x: torch.Tensor) -> torch.Tensor:
        return layer.op(self.sample(x), layer.weight, layer.bias)


class BernoulliNoise(InputNoise):
    """Inverted binary dropout: keep with probability 1 - p and scale by 1 / (1 - p), so E = x.

    ``per_channel`` drops whole feature maps of a conv input (one draw per example and channel),
    the usual choice when neighbouring pixels are too correlated for element-wise dropout to act.
    """

    def __init__(self, p: float, per_channel: bool = False) -> None:
        super().__init__()
        self.p = p
        self.per_channel = per_channel

    def sample(self, x: torch.Tensor) -> torch.Tensor:
        if self.per_channel:
            return F.dropout2d(x, self.p, training=True)
        return F.dropout(x, self.p, training=True)

    def extra_repr(self) -> str:
        return f"p={self.p}, per_channel={self.per_channel}"


class GaussianNoise(InputNoise):
    """x * xi with xi ~ N(1, alpha): the moments of binary dropout when alpha = p / (1 - p).

    ``log_alpha`` is a scalar for fixed Gaussian dropout, or one value per input unit when it is
    learned (variational dropout A): shape (in_features,) for a Linear, (channels, 1, 1) for a
    conv, so it broadcasts over the input either way.
    """

    def __init__(self, log_alpha: torch.Tensor, learned: bool, per_channel: bool = False) -> None:
        super().__init__()
        self.per_channel = per_channel
        if learned:
            self.log_alpha = nn.Parameter(log_alpha)
        else:
            self.register_buffer("log_alpha", log_alpha)

    def sample(self, x: torch.Tensor) -> torch.Tensor:
        shape = (*x.shape[:2], *([1] * (x.dim() - 2))) if self.per_channel else x.shape
        xi = torch.randn(shape, device=x.device, dtype=x.dtype)
        return x + x * torch.exp(0.5 * self.log_alpha) * xi


class WeightNoise(nn.Module):
    """Per-weight noise w = theta * xi, xi ~ N(1, alpha), drawn as a pre-activation through the LRT.

    The pre-activation is N(x theta^T + b, alpha (x*x)(theta*theta)^T): Wang & Manning's fast
    dropout rescaled for inverted dropout, and Kingma's type B. ``log_alpha`` is a scalar (fixed)
    or shaped like the weight (learned). ``eps0`` floors the variance so that an all-zero input
    (a dead ReLU row) does not put an infinite derivative of the square root into the backward.
    """

    def __init__(self, log_alpha: torch.Tensor, learned: bool, eps0: float) -> None:
        super().__init__()
        self.eps0 = eps0
        if learned:
            self.log_alpha = nn.Parameter(log_alpha)
        else:
            self.register_buffer("log_alpha", log_alpha)

    def perturb(self, layer: NoisyLayer, x: torch.Tensor) -> torch.Tensor:
        theta = layer.weight
        mean = layer.op(x, theta, layer.bias)
        var = layer.op(x * x, torch.exp(self.log_alpha) * theta * theta, None)
        return gaussian_preactivation(mean, var, self.eps0)

    def extra_repr(self) -> str:
        return f"eps0={self.eps0}"


Noise = BernoulliNoise | GaussianNoise | WeightNoise


class NoisyLayer:
    """Forward shared by the noisy Linear and Conv2d: the plain layer in eval, ``noise`` in training."""

    weight: nn.Parameter
    bias: nn.Parameter | None
    noise: Noise
    training: bool

    def op(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.op(x, self.weight, self.bias)
        return self.noise.perturb(self, x)

    def plain(self) -> nn.Module:
        """The standard layer with this layer's current weights (the exported form)."""
        raise NotImplementedError


def _copy_params(src: nn.Module, dst: nn.Module) -> None:
    with torch.no_grad():
        dst.weight.copy_(src.weight)
        if src.bias is not None:
            dst.bias.copy_(src.bias)


class NoisyLinear(NoisyLayer, nn.Linear):
    """nn.Linear with training-time noise."""

    @classmethod
    def wrap(cls, layer: nn.Linear, noise: Noise) -> NoisyLinear:
        w = layer.weight
        new = cls(layer.in_features, layer.out_features, layer.bias is not None, w.device, w.dtype)
        _copy_params(layer, new)
        new.noise = noise.to(w.device)
        return new

    def op(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, weight, bias)

    def plain(self) -> nn.Linear:
        w = self.weight
        out = nn.Linear(self.in_features, self.out_features, self.bias is not None, w.device, w.dtype)
        _copy_params(self, out)
        return out


def _conv_args(layer: nn.Conv2d) -> dict[str, Any]:
    return {
        "in_channels": layer.in_channels,
        "out_channels": layer.out_channels,
        "kernel_size": layer.kernel_size,
        "stride": layer.stride,
        "padding": layer.padding,
        "dilation": layer.dilation,
        "groups": layer.groups,
        "bias": layer.bias is not None,
        "padding_mode": layer.padding_mode,
        "device": layer.weight.device,
        "dtype": layer.weight.dtype,
    }


class NoisyConv2d(NoisyLayer, nn.Conv2d):
    """nn.Conv2d with training-time noise; weight noise is independent per output element."""

    @classmethod
    def wrap(cls, layer: nn.Conv2d, noise: Noise) -> NoisyConv2d:
        new = cls(**_conv_args(layer))
        _copy_params(layer, new)
        new.noise = noise.to(layer.weight.device)
        return new

    def op(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return self._conv_forward(x, weight, bias)

    def plain(self) -> nn.Conv2d:
        out = nn.Conv2d(**_conv_args(self))
        _copy_params(self, out)
        return out


NOISY_LAYERS = (NoisyLinear, NoisyConv2d)
