"""The hard-concrete distribution of Louizos, Welling and Kingma (ICLR 2018) as pure functions.

A gate is drawn by stretching a binary-concrete sample s in (0, 1) to the interval (gamma, zeta) and
clipping it to [0, 1]: z = min(1, max(0, s * (zeta - gamma) + gamma)). The clip puts real
probability mass on exactly 0 and exactly 1, so a closed gate removes its weights exactly, while the
probability of a nonzero gate stays a smooth function of log alpha that gradient descent can lower.
Specified in docs/methods.md section 13; the constants are the paper's and the reference code's
(AMLab-Amsterdam/L0_regularization, ``l0_layers.py``).
"""

from __future__ import annotations

import math

import torch

GAMMA = -0.1
"""Lower end of the stretch interval."""
ZETA = 1.1
"""Upper end of the stretch interval."""
BETA = 2.0 / 3.0
"""Temperature of the binary concrete distribution."""
EPS = 1e-6
"""The uniform noise is drawn from (EPS, 1 - EPS), and P(gate closed) is clamped to the same range,
as the reference does (it keeps log(u) and log(1 - u) finite)."""
LOG_ALPHA_MIN = math.log(1e-2)
LOG_ALPHA_MAX = math.log(1e2)
"""The reference clamps log alpha to [log 1e-2, log 1e2] after every optimiser step."""


def log_alpha_for_droprate(droprate: float) -> float:
    """The log alpha at which a gate starts: log((1 - d) / d) for an initial drop rate d in (0, 1)."""
    return math.log(1.0 - droprate) - math.log(droprate)


def _logit(p: float) -> float:
    return math.log(p) - math.log(1.0 - p)


def prob_closed(log_alpha: torch.Tensor, beta: float = BETA) -> torch.Tensor:
    """P(z = 0) = sigmoid(beta * log(-gamma / zeta) - log alpha), clamped to [EPS, 1 - EPS]."""
    return torch.sigmoid(beta * math.log(-GAMMA / ZETA) - log_alpha).clamp(EPS, 1.0 - EPS)


def prob_open(log_alpha: torch.Tensor, beta: float = BETA) -> torch.Tensor:
    """P(z != 0) = sigmoid(log alpha - beta * log(-gamma / zeta)): the expected L0 of one gate.

    Differentiable in log alpha, which is what makes the L0 penalty trainable (the paper's Eq. 12).
    """
    return 1.0 - prob_closed(log_alpha, beta)


def prob_one(log_alpha: torch.Tensor, beta: float = BETA) -> torch.Tensor:
    """P(z = 1) = sigmoid(log alpha - beta * log((1 - gamma) / (zeta - 1))), the mass clipped to 1."""
    return torch.sigmoid(log_alpha - beta * math.log((1.0 - GAMMA) / (ZETA - 1.0)))


def cdf(z: float, log_alpha: torch.Tensor, beta: float = BETA) -> torch.Tensor:
    """P(gate <= z) for z in [0, 1): the stretched concrete's CDF at the unstretched point.

    At z = 0 this is P(z = 0); inside (0, 1) the distribution is continuous; P(gate <= 1) is 1.
    """
    if not 0.0 <= z < 1.0:
        raise ValueError(f"cdf is defined here for z in [0, 1), got {z}")
    unstretched = (z - GAMMA) / (ZETA - GAMMA)
    return torch.sigmoid(beta * _logit(unstretched) - log_alpha)


def density(z: torch.Tensor, log_alpha: torch.Tensor, beta: float = BETA) -> torch.Tensor:
    """Density of the gate at points strictly inside (0, 1), where it is the stretched concrete's.

    With s = (z - gamma) / (zeta - gamma) and x = beta * logit(s) - log alpha, the CDF is sigmoid(x),
    so the density is sigmoid'(x) * beta / (s (1 - s)) / (zeta - gamma).
    """
    s = (z - GAMMA) / (ZETA - GAMMA)
    x = beta * (torch.log(s) - torch.log1p(-s)) - log_alpha
    sig = torch.sigmoid(x)
    return sig * (1.0 - sig) * beta / (s * (1.0 - s)) / (ZETA - GAMMA)


def sample(
    log_alpha: torch.Tensor,
    beta: float = BETA,
    batch: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Gates drawn by the reparameterisation, shaped like ``log_alpha`` (with a leading ``batch``).

    u ~ U(EPS, 1 - EPS), s = sigmoid((log u - log(1 - u) + log alpha) / beta), then the stretch and
    the clip. The gradient reaches log alpha through s wherever the clip is not active.
    """
    shape = tuple(log_alpha.shape) if batch is None else (batch, *log_alpha.shape)
    u = torch.rand(shape, generator=generator, device=log_alpha.device, dtype=log_alpha.dtype)
    u = u * (1.0 - 2.0 * EPS) + EPS
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / beta)
    return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


def eval_gate(log_alpha: torch.Tensor) -> torch.Tensor:
    """The deterministic gate used at test time: min(1, max(0, sigmoid(log alpha) (zeta - gamma) + gamma)).

    It is exactly 0 once sigmoid(log alpha) <= -gamma / (zeta - gamma) = 1/12, i.e. log alpha <= -log 11.
    """
    return (torch.sigmoid(log_alpha) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)
