"""The training step's weight-gate arithmetic as two nodes, each one kernel when compiled.

With one gate per weight, autograd through ``gates.sample``, the product with the weight and the
penalty makes some twenty passes over weight-sized tensors each way, and they cost more than the
layer products themselves (profiled on LeNet-300-100, one thread: 18 ms a step against dense's 2.5,
mostly ``mul``, ``where``, ``ge``/``le``, ``sigmoid`` and their backward). ``GatedWeight`` and
``GatePenalty`` compute the same values and gradients as that autograd graph, written out by hand
so that forward and backward are each one pass (``compiled``). The eager functions below are what
the tests hold against the reference formulas of ``gates``.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch

from sparsebench.toolkit.compiled import compiled

from . import gates

STRETCH = gates.ZETA - gates.GAMMA
LOG_GAMMA_OVER_ZETA = math.log(-gates.GAMMA / gates.ZETA)


def _scalars(like: torch.Tensor, *values: float) -> list[torch.Tensor]:
    """Settings as 0-d tensors: a Python float would be baked into the compiled graph, one compile
    per value (a sweep over lambda would recompile at every trial and soon hit the limit)."""
    return [_scalar(value, like.device, like.dtype) for value in values]


@functools.lru_cache(maxsize=256)
def _scalar(value: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """One 0-d tensor per setting and device, made once: on a GPU each new one is a blocking copy.

    Read-only: the nodes only multiply by it.
    """
    return torch.tensor(value, device=device, dtype=dtype)


def gated_weight_and_slope(
    weight: torch.Tensor, log_alpha: torch.Tensor, u: torch.Tensor, beta: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """weight * z for the gate z drawn from uniform noise ``u`` (as ``gates.sample``), z, dz/d log alpha.

    The clip's gradient passes where the stretched value lies in [0, 1], ends included, as
    ``torch.clamp``'s does, so the slope matches autograd's everywhere.
    """
    u = u * (1.0 - 2.0 * gates.EPS) + gates.EPS
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / beta)
    stretched = s * STRETCH + gates.GAMMA
    z = stretched.clamp(0.0, 1.0)
    inside = (stretched >= 0.0) & (stretched <= 1.0)
    slope = torch.where(inside, s * (1.0 - s) * (STRETCH / beta), torch.zeros_like(s))
    return weight * z, z, slope


def gated_weight_grads(
    grad: torch.Tensor, weight: torch.Tensor, z: torch.Tensor, slope: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of weight * z for the weight and for log alpha."""
    return grad * z, grad * weight * slope


class GatedWeight(torch.autograd.Function):
    """A training draw of weight gates times the weight, one node (weight gates only)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, weight: torch.Tensor, log_alpha: torch.Tensor, beta: float, use_compiled: bool
    ) -> torch.Tensor:
        # The same draw as gates.sample: one uniform per gate, from the global generator.
        u = torch.rand(log_alpha.shape, device=log_alpha.device, dtype=log_alpha.dtype)
        fn = compiled(gated_weight_and_slope) if use_compiled else gated_weight_and_slope
        out, z, slope = fn(weight, log_alpha, u, *_scalars(weight, beta))
        ctx.save_for_backward(weight, z, slope)
        ctx.use_compiled = use_compiled
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        fn = compiled(gated_weight_grads) if ctx.use_compiled else gated_weight_grads
        g_weight, g_log_alpha = fn(grad, *ctx.saved_tensors)
        return g_weight, g_log_alpha, None, None


def gate_penalty_and_slope(
    weight: torch.Tensor,
    log_alpha: torch.Tensor,
    lam: torch.Tensor,
    weight_decay: torch.Tensor,
    beta: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """sum of P(open) * (lam + weight_decay / 2 * w^2) over weights with one gate each (``penalty``),
    with P(open) and dP(open)/d log alpha (zero where ``prob_closed``'s clamp holds, as autograd's)."""
    closed_logit = beta * LOG_GAMMA_OVER_ZETA - log_alpha
    closed = torch.sigmoid(closed_logit)
    inside = (closed >= gates.EPS) & (closed <= 1.0 - gates.EPS)
    p_open = 1.0 - closed.clamp(gates.EPS, 1.0 - gates.EPS)
    slope = torch.where(inside, closed * (1.0 - closed), torch.zeros_like(closed))
    total = (p_open * (lam + 0.5 * weight_decay * weight * weight)).sum()
    return total, p_open, slope


def gate_penalty_grads(
    grad: torch.Tensor,
    weight: torch.Tensor,
    p_open: torch.Tensor,
    slope: torch.Tensor,
    lam: torch.Tensor,
    weight_decay: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of the penalty for the weight and for log alpha."""
    return grad * p_open * weight_decay * weight, grad * slope * (lam + 0.5 * weight_decay * weight * weight)


class GatePenalty(torch.autograd.Function):
    """The weight-gate penalty of ``_L0Gated.penalty`` (weights only) as one node."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        weight: torch.Tensor,
        log_alpha: torch.Tensor,
        lam: float,
        weight_decay: float,
        beta: float,
        use_compiled: bool,
    ) -> torch.Tensor:
        fn = compiled(gate_penalty_and_slope) if use_compiled else gate_penalty_and_slope
        lam_t, decay_t, beta_t = _scalars(weight, lam, weight_decay, beta)
        total, p_open, slope = fn(weight, log_alpha, lam_t, decay_t, beta_t)
        ctx.save_for_backward(weight, p_open, slope, lam_t, decay_t)
        ctx.use_compiled = use_compiled
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        fn = compiled(gate_penalty_grads) if ctx.use_compiled else gate_penalty_grads
        g_weight, g_log_alpha = fn(grad, *ctx.saved_tensors)
        return g_weight, g_log_alpha, None, None, None, None
