"""Sparse Variational Dropout (Molchanov, Ashukha, Vetrov, ICML 2017, arXiv 1701.05369).

Rule: every weight gets a Gaussian posterior N(theta, sigma^2) with its own dropout rate
alpha = sigma^2 / theta^2, learned under a log-uniform prior; a weight whose log alpha reaches 3
is removed. Specified in docs/methods.md sections 1-2.
"""

from __future__ import annotations

import copy
import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F
from torch.optim.optimizer import register_optimizer_step_post_hook

from sparsebench.config import option
from sparsebench.method import SparsityMethod, StepContext
from sparsebench.registry import register_method
from sparsebench.toolkit.compiled import compiled
from sparsebench.toolkit.kl import K1, K2, K3, kl_warmup, sparse_vd_kl_sum
from sparsebench.toolkit.layout import strided_like
from sparsebench.toolkit.noise import gaussian_preactivation
from sparsebench.toolkit.surgery import modules_of_type, replace_modules, standard_layer

LOG_ALPHA_MIN, LOG_ALPHA_MAX = -8.0, 8.0
EPS_THETA = 1e-8


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


def clamped_log_alpha(theta: torch.Tensor, log_sigma2: torch.Tensor) -> torch.Tensor:
    """log alpha = log sigma^2 - log theta^2, clamped to [-8, 8] (zero gradient outside)."""
    return torch.clamp(log_sigma2 - torch.log(theta * theta + EPS_THETA), LOG_ALPHA_MIN, LOG_ALPHA_MAX)


def weight_side(
    theta: torch.Tensor,
    log_sigma2: torch.Tensor,
    threshold: float | torch.Tensor,
    train_mask: bool,
    sigma2_variance: bool,
    mask_variance: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean weight, per-weight variance) of a training step's local reparameterisation.

    The reference formulation, differentiated by autograd; the training path uses ``FusedSVD``,
    which computes the same values (and the KL) with a hand-written backward.
    """
    la = clamped_log_alpha(theta, log_sigma2)
    keep = la < threshold
    masked = theta * keep if train_mask else theta
    noisy = masked if mask_variance else theta
    if sigma2_variance:
        var = torch.exp(log_sigma2) * keep if train_mask and mask_variance else torch.exp(log_sigma2)
    else:
        var = torch.exp(la) * noisy * noisy
    return masked, var


def kl_side(theta: torch.Tensor, log_sigma2: torch.Tensor) -> torch.Tensor:
    """KL of one layer's weights, straight from the parameters."""
    return sparse_vd_kl_sum(clamped_log_alpha(theta, log_sigma2))


EXP_NEG_K2 = math.exp(-K2)


def fused_forward(
    theta: torch.Tensor,
    log_sigma2: torch.Tensor,
    threshold: torch.Tensor,
    train_mask: bool,
    sigma2_variance: bool,
    mask_variance: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean weight, variance, KL, unclamped log alpha) in one pass over the weights.

    Written for few transcendental functions per weight, which are what this pass costs on a CPU:
    sigmoid(k2 + k3 l) = 1 / (1 + e^-k2 e^(-k3 l)) and softplus(-l) = log(1 + 1/alpha) reuse alpha.
    The unclamped log alpha is returned for the backward, which would otherwise recompute a log.
    """
    u = log_sigma2 - torch.log(theta * theta + EPS_THETA)
    la = torch.clamp(u, LOG_ALPHA_MIN, LOG_ALPHA_MAX)
    alpha = torch.exp(la)
    keep = (la < threshold).to(theta.dtype)
    theta_used = theta * keep if train_mask else theta
    noisy = theta_used if mask_variance else theta
    if sigma2_variance:
        var = torch.exp(log_sigma2) * keep if train_mask and mask_variance else torch.exp(log_sigma2)
    else:
        var = alpha * noisy * noisy
    sig = 1.0 / (1.0 + EXP_NEG_K2 * torch.exp(-K3 * la))
    kl = K1 * theta.numel() - K1 * sig.sum() + 0.5 * torch.log1p(1.0 / alpha).sum()
    return theta_used, var, kl, u


def fused_backward(
    theta: torch.Tensor,
    log_sigma2: torch.Tensor,
    u: torch.Tensor,
    threshold: torch.Tensor,
    g_theta: torch.Tensor | None,
    g_var: torch.Tensor | None,
    g_kl: torch.Tensor | None,
    train_mask: bool,
    sigma2_variance: bool,
    mask_variance: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of ``fused_forward`` for theta and log sigma^2, in one pass over the weights.

    The clamp's gradient is torch.clamp's: it passes where -8 <= u <= 8 and is zero outside.
    """
    la = torch.clamp(u, LOG_ALPHA_MIN, LOG_ALPHA_MAX)
    alpha = torch.exp(la)
    keep = (la < threshold).to(theta.dtype)
    noisy = theta * keep if train_mask and mask_variance else theta
    d_theta = torch.zeros_like(theta)
    d_la = torch.zeros_like(theta)
    d_log_sigma2 = torch.zeros_like(theta)
    if g_theta is not None:
        d_theta = g_theta * keep if train_mask else g_theta
    if g_var is not None:
        if sigma2_variance:
            var = torch.exp(log_sigma2) * keep if train_mask and mask_variance else torch.exp(log_sigma2)
            d_log_sigma2 = g_var * var
        else:
            scaled = g_var * alpha
            d_la = scaled * (noisy * noisy)
            d_theta = d_theta + 2.0 * scaled * noisy
    if g_kl is not None:
        sig = 1.0 / (1.0 + EXP_NEG_K2 * torch.exp(-K3 * la))
        # d/dl of -k1 sigmoid(k2 + k3 l) + 0.5 softplus(-l); sigmoid(-l) = 1 / (1 + alpha)
        d_la = d_la - g_kl * (K1 * K3 * sig * (1.0 - sig) + 0.5 / (1.0 + alpha))
    d_u = d_la * ((u >= LOG_ALPHA_MIN) & (u <= LOG_ALPHA_MAX)).to(theta.dtype)
    d_theta = d_theta - d_u * (2.0 * theta / (theta * theta + EPS_THETA))
    return d_theta, d_log_sigma2 + d_u


class FusedSVD(torch.autograd.Function):
    """The weight side of a Sparse VD layer and its KL as one autograd node.

    Autograd through the reference formulas makes separate passes over every weight for log alpha,
    the mask, the variance and the KL, and as many again backwards; this node makes one pass each
    way, and both passes compile to single kernels (``use_compiled``).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        theta: torch.Tensor,
        log_sigma2: torch.Tensor,
        threshold: torch.Tensor,
        flags: tuple[bool, bool, bool],
        use_compiled: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``flags`` = (train_mask, sigma2_variance, mask_variance) of ``fused_forward``."""
        fn = compiled(fused_forward) if use_compiled else fused_forward
        theta_used, var, kl, u = fn(theta, log_sigma2, threshold, *flags)  # type: ignore[operator]
        ctx.save_for_backward(theta, log_sigma2, u, threshold)
        ctx.set_materialize_grads(False)  # an unused output (the KL during warm-up) gets None: no work
        ctx.flags = flags
        ctx.use_compiled = use_compiled
        return theta_used, var, kl

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, g_theta: torch.Tensor | None, g_var: torch.Tensor | None, g_kl: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        theta, log_sigma2, u, threshold = ctx.saved_tensors
        fn = compiled(fused_backward) if ctx.use_compiled else fused_backward
        d_theta, d_log_sigma2 = fn(  # type: ignore[operator]
            theta, log_sigma2, u, threshold, g_theta, g_var, g_kl, *ctx.flags
        )
        return d_theta, d_log_sigma2, None, None, None


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
        with torch.no_grad():
            return self.log_alpha() < (self.cfg.threshold if threshold is None else threshold)

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
        return self.weight * self.keep_mask()


class LinearSVD(nn.Linear, _SparseVDMixin):
    """nn.Linear with a per-weight Gaussian posterior, trained with the LRT."""

    # ars' dense layers compute the variance from the unmasked theta (methods.md 2.2, item 4). On
    # LeNet-300-100 that gave 1.92 % at 108x against 2.09-2.19 % at 124x with masked noise: a weight
    # just past the threshold still costs the data term its noise, so it can come back.
    masked_noise_in_ars = True

    @classmethod
    def from_dense(cls, layer: nn.Linear, cfg: SparseVDConfig) -> LinearSVD:
        new = cls(layer.in_features, layer.out_features, bias=layer.bias is not None)
        new.to(layer.weight.device, layer.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(layer.weight)
            if layer.bias is not None:
                new.bias.copy_(layer.bias)
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
        new = cls(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            groups=layer.groups,
            bias=layer.bias is not None,
            padding_mode=layer.padding_mode,
        )
        new.to(layer.weight.device, layer.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(layer.weight)
            if layer.bias is not None:
                new.bias.copy_(layer.bias)
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
methods/sparse_vd_rnn.py (embedding, softmax, each LSTM weight matrix), which import this module."""


@register_method("sparse_vd")
class SparseVD(SparsityMethod):
    description = "Sparse Variational Dropout: per-weight learned dropout rates, prune log alpha >= 3"
    paper = "Molchanov, Ashukha, Vetrov. Variational Dropout Sparsifies Deep Neural Networks. ICML 2017"
    Config = SparseVDConfig
    layer_types = (nn.Linear, nn.Conv2d, nn.LSTM, nn.Embedding)
    recipe_kind = "per_weight_alpha"

    def convert(self, model: nn.Module) -> nn.Module:
        # Imported here, not at the top: sparse_vd_rnn builds on this module.
        from sparsebench.methods.sparse_vd_rnn import recurrent_swap

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

    def masks(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return self.masks_at(model, self.config.threshold)

    def curve_thresholds(self) -> Sequence[float]:
        return tuple(x / 2 for x in range(-8, 17))  # log alpha from -4 to 8 in steps of 0.5

    def masks_at(self, model: nn.Module, threshold: float) -> dict[str, torch.Tensor]:
        return {path: m.keep_mask(threshold) for path, m in modules_of_type(model, SVD_LAYERS).items()}

    def export(self, model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
        from sparsebench.methods.sparse_vd_rnn import LSTMSVD

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
