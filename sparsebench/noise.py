"""Standard-normal draws shaped like an activation, fast in either memory layout.

On CPU the training model runs channels-last (``sparsebench.runner.place_model``), and torch's
``randn_like`` on a channels-last tensor takes a slow strided path although the memory is dense:
27 ms instead of 2.2 ms per LeNet-5 conv activation of a 100-example batch, more than the two
convolutions it perturbs. Drawing one flat block and viewing it with the tensor's strides gives
the same i.i.d. distribution at the contiguous speed.
"""

from __future__ import annotations

from typing import Any

import torch

from sparsebench.compiled import compiled


def standard_normal_like(t: torch.Tensor) -> torch.Tensor:
    """i.i.d. N(0, 1) with t's shape, dtype, device and strides (contiguous tensors: ``randn_like``)."""
    if t.is_contiguous() or not t.is_contiguous(memory_format=torch.channels_last):
        return torch.randn_like(t)
    flat = torch.randn(t.numel(), dtype=t.dtype, device=t.device)
    return flat.as_strided(t.shape, t.stride())


def draw_and_slope(
    mean: torch.Tensor, var: torch.Tensor, xi: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean + sqrt(var + eps) xi, d out / d var = xi / (2 sqrt(var + eps))) from a given xi.

    Compiled, both come out of one pass over the activation instead of five (add, square root,
    multiply-add, divide, scale), most of the local reparameterisation's cost after the draw itself.
    """
    std = torch.sqrt(var + eps)
    return torch.addcmul(mean, std, xi), (0.5 * xi) / std


COMPILED_DRAW_MIN_ELEMENTS = 1 << 15
"""Below this activation size the compiled call's fixed cost (~50 us: guards, wrapper) exceeds the
passes it saves. Measured in one process, alternating blocks (2026-11-30): LeNet-5 Sparse VD
(activations of 50k-1.2M) 83.5 -> 79.7 ms per step; LeNet-300-100 (<= 30k) 10.4 -> 11.1 ms."""


class _GaussianPreactivation(torch.autograd.Function):
    """mean + sqrt(var + eps) * xi with one saved tensor and a one-multiply backward.

    Autograd through ``addcmul(mean, sqrt(var + eps), xi)`` keeps xi, the standard deviation and
    the square root's output, and its backward makes three passes over the activation (a multiply,
    the square root's division, an add); on LeNet-5's first convolution that is most of the cost of
    the local reparameterisation. d out / d var = xi / (2 std) is formed once in the forward, in
    place of xi, and the backward is g times it.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, mean: torch.Tensor, var: torch.Tensor, eps: float, use_compiled: bool
    ) -> torch.Tensor:
        xi = standard_normal_like(mean)
        if use_compiled and mean.numel() >= COMPILED_DRAW_MIN_ELEMENTS:
            out, slope = compiled(draw_and_slope)(mean, var, xi, eps)
        else:  # eager: in place on xi, no new activation-sized buffer
            std = torch.sqrt(var + eps)
            out = torch.addcmul(mean, std, xi)
            slope = xi.div_(std).mul_(0.5)
        ctx.save_for_backward(slope)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        (d_var,) = ctx.saved_tensors
        return grad, grad * d_var if ctx.needs_input_grad[1] else None, None, None


def gaussian_preactivation(
    mean: torch.Tensor, var: torch.Tensor, eps: float, use_compiled: bool = False
) -> torch.Tensor:
    """A draw of a pre-activation with independent N(mean, var + eps) entries (local reparameterisation).

    The draw uses ``standard_normal_like(mean)``, so its layout and speed follow the activation's;
    ``use_compiled`` fuses the arithmetic around it (``draw_and_slope``) without changing the draw,
    for activations large enough to gain from it.
    """
    return _GaussianPreactivation.apply(mean, var, eps, use_compiled)
