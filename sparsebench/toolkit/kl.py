"""KL divergences of the variational methods, in one place so every method uses the same numbers."""

from __future__ import annotations

import torch
from torch.nn import functional as F

# Molchanov et al. 2017, Eq. 14: -KL ~ k1*sigmoid(k2 + k3*log_alpha) - 0.5*log(1 + 1/alpha) - k1.
K1, K2, K3 = 0.63576, 1.87320, 1.48695

# Kingma et al. 2015, Sec. 3.3 (valid for alpha <= 1):
# -KL ~ const + 0.5*log(alpha) + c1*alpha + c2*alpha^2 + c3*alpha^3.
C1, C2, C3 = 1.16145124, -1.50204118, 0.58629921


def sparse_vd_kl(log_alpha: torch.Tensor) -> torch.Tensor:
    """Per-element KL(q || log-uniform prior) approximation; >= 0 and -> 0 as alpha -> infinity."""
    return K1 - K1 * torch.sigmoid(K2 + K3 * log_alpha) + 0.5 * F.softplus(-log_alpha)


def sparse_vd_kl_sum(log_alpha: torch.Tensor) -> torch.Tensor:
    """Sum of ``sparse_vd_kl`` with the constant hoisted out: one fewer pass over the weights."""
    return (
        K1 * log_alpha.numel()
        - K1 * torch.sigmoid(K2 + K3 * log_alpha).sum()
        + 0.5 * F.softplus(-log_alpha).sum()
    )


def kingma_neg_kl(alpha: torch.Tensor) -> torch.Tensor:
    """Kingma's polynomial for -KL up to its constant; valid for alpha <= 1 only."""
    return 0.5 * torch.log(alpha) + C1 * alpha + C2 * alpha**2 + C3 * alpha**3


def gaussian_kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Sum of KL(N(mu, exp(logvar)) || N(0, 1)) over elements (exact)."""
    return 0.5 * (logvar.exp() + mu * mu - 1.0 - logvar).sum()


def kl_warmup(epoch: int, start: int, ramp: int) -> float:
    """beta_t of the ars schedule: 0 before ``start``, linear over ``ramp`` epochs, then 1."""
    if epoch < start:
        return 0.0
    if ramp <= 0:
        return 1.0
    return min(1.0, (epoch - start) / ramp)
