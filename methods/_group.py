"""Group-sparsity machinery shared by the two Bayesian Compression methods (Louizos et al. 2017).

Rule shared by ``group_nj`` and ``group_hs``: every group (an input neuron of a Linear layer, an
output filter of a Conv2d layer) has a random scale z that multiplies all of its weights,
w = z * w~, with q(w~) = N(mu, sigma^2) under an N(0, 1) prior and a variational bias under an
N(0, 1) prior; the two methods differ only in the prior and posterior of z (``GroupScale``).
Specified in docs/methods.md section 4.

What lives here: the layers (local reparameterisation with a per-example z), the weight and bias
KL, variance clipping, the chain of layers along which a removed group also removes the matching
rows/columns of its neighbours (section 4.6), the automatic per-layer threshold, the export to
standard layers, and the marginal posterior variance used for bit precision (section 4.7).
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from sparsebench.config import option
from sparsebench.errors import ConfigError
from sparsebench.method import SparsityMethod, StepContext
from sparsebench.toolkit.kl import gaussian_kl_standard_normal, kl_warmup
from sparsebench.toolkit.layout import strided_like
from sparsebench.toolkit.noise import gaussian_preactivation
from sparsebench.toolkit.surgery import modules_of_type, replace_modules, standard_layer

SCORE_CLIP = 20.0
"""Scores are clipped to +-this for the mixture fit only: a dead group's log alpha can grow without
bound and would otherwise drag the pruned component's mean (and the midpoint) arbitrarily far."""

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


# ----------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# The chain: which groups of one layer remove which rows/columns of its neighbours
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Link:
    """How the outputs of one weight layer feed the inputs of the next.

    ``positions`` is the number of next-layer inputs per output unit: 1 between layers of the
    same kind, H*W when a conv's (C, H, W) output is flattened into a Linear layer.
    """

    positions: int


def chain_links(layers: list[tuple[str, nn.Module]]) -> list[Link]:
    """Links between consecutive Linear/Conv2d layers taken in registration (= forward) order.

    Raises ValueError with the reason when the layers cannot form a chain (a Linear feeding a
    conv, mismatched sizes, grouped convolutions), which ``not_applicable`` reports.
    """
    for path, m in layers:
        if getattr(m, "groups", 1) != 1:
            raise ValueError(f"{path} is a grouped convolution")
    links = []
    for (pa, a), (pb, b) in zip(layers[:-1], layers[1:], strict=True):
        out_a = _out_units(a)
        in_b = _in_units(b)
        if isinstance(b, (nn.Conv2d, GroupConv2d)):
            if not isinstance(a, (nn.Conv2d, GroupConv2d)):
                raise ValueError(f"{pa} (Linear) feeds the convolution {pb}")
            if out_a != in_b:
                raise ValueError(f"{pa} has {out_a} output channels but {pb} takes {in_b}")
            links.append(Link(1))
        elif isinstance(a, (nn.Linear, GroupLinear)):
            if out_a != in_b:
                raise ValueError(f"{pa} has {out_a} outputs but {pb} takes {in_b}")
            links.append(Link(1))
        else:
            if in_b % out_a != 0:
                raise ValueError(f"{pb} takes {in_b} inputs, not a multiple of {pa}'s {out_a} channels")
            links.append(Link(in_b // out_a))  # flattened (C, H, W): channel c owns a block of H*W
    return links


def _out_units(m: nn.Module) -> int:
    return m.out_features if isinstance(m, (nn.Linear, GroupLinear)) else m.out_channels


def _in_units(m: nn.Module) -> int:
    return m.in_features if isinstance(m, (nn.Linear, GroupLinear)) else m.in_channels


def propagate(
    layers: list[tuple[str, _GroupLayer]], group_keeps: list[torch.Tensor]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(output keep, input keep) per layer once every layer's own group keeps are combined.

    A unit between two layers survives only if both sides keep it: a Linear layer's input
    neuron dies with its own z and kills the previous layer's matching output row; a conv filter
    dies with its own z and kills the next layer's input channel, or, after a flatten, the block
    of H*W inputs it feeds (a dead filter of LeNet-5's conv2 removes 16 inputs of fc1). A filter
    whose every flattened input is dropped by the Linear layer's z dies too (section 4.6).
    """
    links = chain_links(layers)  # type: ignore[arg-type]
    n = len(layers)
    outs: list[torch.Tensor] = [torch.ones(0, dtype=torch.bool)] * n
    ins: list[torch.Tensor] = [torch.ones(0, dtype=torch.bool)] * n
    first = layers[0][1]
    ins[0] = group_keeps[0] if isinstance(first, GroupLinear) else _all(first.in_channels, group_keeps[0])
    for k, link in enumerate(links):
        a, b = layers[k][1], layers[k + 1][1]
        keep_a = group_keeps[k] if isinstance(a, GroupConv2d) else _all(_out_units(a), group_keeps[k])
        keep_b = group_keeps[k + 1] if isinstance(b, GroupLinear) else _all(_in_units(b), group_keeps[k])
        if link.positions == 1:
            both = keep_a & keep_b
            outs[k], ins[k + 1] = both, both
        else:
            per_input = keep_b & keep_a.repeat_interleave(link.positions)
            outs[k] = per_input.view(-1, link.positions).any(dim=1)
            ins[k + 1] = per_input
    last = layers[-1][1]
    outs[-1] = group_keeps[-1] if isinstance(last, GroupConv2d) else _all(_out_units(last), group_keeps[-1])
    return {path: (outs[k], ins[k]) for k, (path, _) in enumerate(layers)}


def _all(n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.ones(n, dtype=torch.bool, device=like.device)


def weight_mask(layer: _GroupLayer, out_keep: torch.Tensor, in_keep: torch.Tensor) -> torch.Tensor:
    """Bool mask shaped like the layer's weight: M[o, i, ...] = keep_out[o] * keep_in[i]."""
    extra = [1] * (layer.weight_mu.dim() - 2)
    mask = out_keep.view(-1, 1, *extra) & in_keep.view(1, -1, *extra)
    return mask.expand_as(layer.weight_mu).clone()


# ----------------------------------------------------------------------------------------------
# Thresholds
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MixtureFit:
    means: tuple[float, float]
    stds: tuple[float, float]
    weights: tuple[float, float]

    @property
    def midpoint(self) -> float:
        return 0.5 * (self.means[0] + self.means[1])

    @property
    def separation(self) -> float:
        """Ashman's D; above 2 the two components are cleanly separated (the histogram is bimodal)."""
        spread = math.sqrt(self.stds[0] ** 2 + self.stds[1] ** 2)
        return math.sqrt(2.0) * abs(self.means[1] - self.means[0]) / spread


def fit_two_gaussians(values: torch.Tensor, iterations: int = 300) -> MixtureFit:
    """Maximum-likelihood 2-component 1-D Gaussian mixture by EM, started at the 10/90 % quantiles."""
    x = values.detach().double().flatten().clamp(-SCORE_CLIP, SCORE_CLIP).cpu()
    floor = 1e-4  # keeps a component from collapsing onto a single repeated value
    mu = torch.quantile(x, torch.tensor([0.1, 0.9], dtype=torch.float64))
    var = torch.full((2,), float(x.var(unbiased=False)) + floor, dtype=torch.float64)
    w = torch.full((2,), 0.5, dtype=torch.float64)
    for _ in range(iterations):
        logp = -0.5 * (x[:, None] - mu) ** 2 / var - 0.5 * var.log() + w.log()
        r = torch.softmax(logp, dim=1)
        nk = r.sum(0) + 1e-12
        w = (nk / len(x)).clamp_min(1e-12)
        mu = (r * x[:, None]).sum(0) / nk
        var = (r * (x[:, None] - mu) ** 2).sum(0) / nk + floor
    order = mu.argsort()
    mu, sd, w = mu[order], var[order].sqrt(), w[order]
    return MixtureFit((float(mu[0]), float(mu[1])), (float(sd[0]), float(sd[1])), (float(w[0]), float(w[1])))


MIN_SEPARATION = 2.0


def auto_threshold(scores: torch.Tensor, fallback: float) -> float:
    """Midpoint between the two modes of a 2-component fit to the scores (methods.md 4.6).

    The midpoint is used when the fit finds two separated modes (Ashman's D >= 2) and the upper
    one lies above ``fallback``, a threshold that is sensible on its own (bc's -3 for log alpha),
    so that it is a mode of removed groups. Otherwise the layer has no such mode (one mode, or kept
    groups with a tail below the fallback) and a midpoint would cut through kept groups; the
    fallback then decides the layer. The kept mode itself may straddle the fallback: after a long
    run LeNet-300-100's input groups sit around -5 to -1 and the dead ones near +10, where bc's
    -3 would remove half of the kept ones.
    """
    scores = scores.detach()
    if scores.numel() < 2 or float(scores.max() - scores.min()) < 1e-6:
        return fallback
    fit = fit_two_gaussians(scores)
    removed_mode = fit.means[1] > fallback
    return fit.midpoint if fit.separation >= MIN_SEPARATION and removed_mode else fallback


# ----------------------------------------------------------------------------------------------
# The method: everything but the scale prior
# ----------------------------------------------------------------------------------------------


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
        validation split: of the shifts of ``curve_thresholds``, the one with the fewest weights
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
        for shift in self.curve_thresholds():
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

    def curve_thresholds(self) -> Sequence[float]:
        """Shifts added to every layer's threshold (not absolute thresholds): -6 to +6 by 0.5."""
        return tuple(x / 2 for x in range(-12, 13))

    def masks_at(self, model: nn.Module, threshold: float) -> dict[str, torch.Tensor]:
        """Masks with every layer's threshold moved by ``threshold`` (a shift; 0 = the chosen ones)."""
        layers = self.layers(model)
        keeps = [layer.group_keep(layer.current_threshold() + threshold) for _, layer in layers]
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
