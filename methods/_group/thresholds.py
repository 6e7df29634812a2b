"""Automatic per-layer thresholds: the midpoint between the two modes of a layer's group scores.

Section 4.6 of docs/methods.md: fit a 2-component Gaussian mixture to a layer's scores by EM and
cut midway between the component means when the fit finds two separated modes, one of them of
removed groups; otherwise the method's fallback threshold decides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SCORE_CLIP = 20.0
"""Scores are clipped to +-this for the mixture fit only: a dead group's log alpha can grow without
bound and would otherwise drag the pruned component's mean (and the midpoint) arbitrarily far."""


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
