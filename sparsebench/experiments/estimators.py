"""Four estimators of one minibatch's gradient for a ReLU network with Gaussian weight noise.

Kingma, Salimans, Welling (2015), section 5.1 and Table 1: every weight is ``w = theta * xi`` with
``xi ~ N(1, alpha)`` (variance ``alpha * theta^2``), and the gradient of the minibatch estimate of
the expected log-likelihood with respect to the means ``theta`` can be drawn in four ways:

- ``lrt``: the local reparameterisation trick, a fresh draw of every pre-activation per example
  (``sparsebench.toolkit.noise.gaussian_preactivation``, the draw the training step uses);
- ``separate``: an independent weight matrix per example, built by definition (chunks of examples,
  each with its own ``(chunk, out, in)`` weights), so memory stays bounded by the chunk;
- ``single``: one weight matrix shared by the whole minibatch (the usual SGVB estimator);
- ``none``: no noise at all, only the data subsampling (the paper's "minimal variance" row).

The network is given as a ``NoisyStack`` (its layers' means, biases and log alphas), so the same
code serves the trained Table 1 network and a one-layer test with a closed-form variance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch.nn import functional as F

from sparsebench.toolkit.noise import gaussian_preactivation

Estimator = Literal["lrt", "separate", "single", "none"]
ESTIMATORS: tuple[Estimator, ...] = ("lrt", "separate", "single", "none")
LABELS: dict[str, str] = {
    "lrt": "local reparameterization",
    "separate": "separate weight samples",
    "single": "single weight sample",
    "none": "no dropout",
}
"""The paper's row names, in its order."""

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss(output, target)``: the mean loss over the examples given."""


@dataclass
class NoisyStack:
    """A fully connected network as the estimators see it: ``activation`` between the layers."""

    weights: list[torch.Tensor]
    """The means theta, (out, in) per layer."""
    biases: list[torch.Tensor | None]
    log_alphas: list[torch.Tensor]
    """log alpha per layer, broadcastable to its weight (a scalar, or one per weight)."""
    activation: Callable[[torch.Tensor], torch.Tensor] = F.relu
    eps0: float = 1e-8
    """Floor on the LRT's pre-activation variance, as in the training layers."""

    def __post_init__(self) -> None:
        if not len(self.weights) == len(self.biases) == len(self.log_alphas):
            raise ValueError("a NoisyStack needs one bias and one log alpha per weight")

    def noise_std(self, k: int) -> torch.Tensor:
        """sqrt(alpha) of layer k: the standard deviation of its multiplicative noise xi."""
        return torch.exp(0.5 * self.log_alphas[k])


def _leaves(stack: NoisyStack, layers: Sequence[int]) -> list[torch.Tensor]:
    """Detached copies of the means, differentiable only for the layers whose gradient is wanted."""
    return [w.detach().requires_grad_(k in layers) for k, w in enumerate(stack.weights)]


def _forward(
    stack: NoisyStack, thetas: list[torch.Tensor], x: torch.Tensor, layer: Callable[..., torch.Tensor]
) -> torch.Tensor:
    """Run the stack with ``layer(k, h, theta_k)`` computing each layer's pre-activation."""
    h = x
    last = len(thetas) - 1
    for k, theta in enumerate(thetas):
        h = layer(k, h, theta)
        if k < last:
            h = stack.activation(h)
    return h


def _lrt_layer(stack: NoisyStack) -> Callable[..., torch.Tensor]:
    def layer(k: int, h: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        mean = F.linear(h, theta, stack.biases[k])
        var = F.linear(h * h, torch.exp(stack.log_alphas[k]) * theta * theta)
        return gaussian_preactivation(mean, var, stack.eps0)

    return layer


def _single_layer(stack: NoisyStack) -> Callable[..., torch.Tensor]:
    def layer(k: int, h: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        xi = 1.0 + stack.noise_std(k) * torch.randn_like(theta)
        return F.linear(h, theta * xi, stack.biases[k])

    return layer


def _plain_layer(stack: NoisyStack) -> Callable[..., torch.Tensor]:
    def layer(k: int, h: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        return F.linear(h, theta, stack.biases[k])

    return layer


def _separate_layer(stack: NoisyStack) -> Callable[..., torch.Tensor]:
    """Each example n of the chunk gets its own W_n = theta * xi_n, all xi_n independent."""

    def layer(k: int, h: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        n = h.shape[0]
        xi = torch.randn((n, *theta.shape), dtype=theta.dtype, device=theta.device)
        xi.mul_(stack.noise_std(k)).add_(1.0)
        out = torch.bmm(theta * xi, h.unsqueeze(2)).squeeze(2)
        bias = stack.biases[k]
        return out if bias is None else out + bias

    return layer


LAYER_RULES = {"lrt": _lrt_layer, "single": _single_layer, "none": _plain_layer}


def minibatch_gradient(
    stack: NoisyStack,
    x: torch.Tensor,
    y: torch.Tensor,
    estimator: Estimator,
    layers: Sequence[int],
    loss: LossFn = F.cross_entropy,
    scale: float = 1.0,
    chunk: int = 16,
) -> list[torch.Tensor]:
    """``scale`` times the gradient of the minibatch's mean loss w.r.t. each listed layer's theta.

    With ``scale`` = N (training examples) this is the gradient of the paper's minibatch estimate
    N/M sum_i L_i. Noise comes from torch's global generator. ``chunk`` bounds how many examples
    share one ``(chunk, out, in)`` weight tensor under ``separate``; the other estimators take the
    minibatch in one pass.
    """
    layers = list(layers)
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose from {', '.join(ESTIMATORS)}")
    thetas = _leaves(stack, layers)
    wanted = [thetas[k] for k in layers]
    if estimator != "separate":
        out = _forward(stack, thetas, x, LAYER_RULES[estimator](stack))
        grads = torch.autograd.grad(loss(out, y), wanted)
        return [g * scale for g in grads]
    total = [torch.zeros_like(t) for t in wanted]
    rule = _separate_layer(stack)
    m = x.shape[0]
    for start in range(0, m, max(1, chunk)):
        xs, ys = x[start : start + chunk], y[start : start + chunk]
        out = _forward(stack, thetas, xs, rule)
        # The chunk's share of the minibatch mean: its mean loss weighted by its size.
        grads = torch.autograd.grad(loss(out, ys) * (xs.shape[0] / m), wanted)
        for acc, g in zip(total, grads, strict=True):
            acc.add_(g)
    return [g * scale for g in total]
