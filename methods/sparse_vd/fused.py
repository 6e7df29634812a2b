"""The weight side of a Sparse VD layer: log alpha, the keep rule, the LRT variance and the KL.

``weight_side`` and ``kl_side`` are the reference formulas, differentiated by autograd; the training
path runs ``FusedSVD``, which computes the same values in one pass over the weights each way and
compiles to single kernels. Both use ``keeps``, the one place the pruning rule is written.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from sparsebench.toolkit.compiled import compiled
from sparsebench.toolkit.kl import K1, K2, K3, sparse_vd_kl_sum

LOG_ALPHA_MIN, LOG_ALPHA_MAX = -8.0, 8.0
EPS_THETA = 1e-8


def keeps(log_alpha: torch.Tensor, threshold: float | torch.Tensor) -> torch.Tensor:
    """The pruning rule: a weight stays while log alpha < threshold, strictly.

    A weight exactly at the threshold is removed ("a weight whose log alpha reaches 3"), and so is
    every weight at the +8 clamp when the threshold is 8, where many dead weights sit.
    """
    return log_alpha < threshold


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
    keep = keeps(la, threshold)
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
    keep = keeps(la, threshold).to(theta.dtype)
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
    keep = keeps(la, threshold).to(theta.dtype)
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
