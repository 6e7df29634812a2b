"""Standard-normal draws shaped like an activation, fast in either memory layout.

On CPU the training model runs channels-last (``sparsebench.run.loop.place_model``), and torch's
``randn_like`` on a channels-last tensor takes a slow strided path although the memory is dense:
27 ms instead of 2.2 ms per LeNet-5 conv activation of a 100-example batch, more than the two
convolutions it perturbs. Drawing one flat block and viewing it with the tensor's strides gives
the same i.i.d. distribution at the contiguous speed.
"""

from __future__ import annotations

from typing import Any

import torch

from sparsebench.toolkit.compiled import compiled


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


def scaled_draw_and_slope(
    mean: torch.Tensor, var: torch.Tensor, scale: torch.Tensor, xi: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``draw_and_slope`` of (scale * mean, scale^2 * var) without forming either product."""
    std = torch.sqrt(scale * scale * var + eps)
    return torch.addcmul(scale * mean, std, xi), (0.5 * xi) / std


def scaled_draw_grads(
    grad: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, scale: torch.Tensor, slope: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of scale * mean + sqrt(scale^2 var + eps) xi for mean, var and the scale.

    d/d scale = mean + scale * var * xi / std = mean + 2 scale var slope, summed over the axes the
    scale was broadcast along.
    """
    g_mean = grad * scale
    g_var = g_mean * scale * slope
    g_scale = (grad * (mean + 2.0 * scale * var * slope)).sum_to_size(scale.shape)
    return g_mean, g_var, g_scale


class _ScaledGaussianPreactivation(torch.autograd.Function):
    """scale * mean + sqrt(scale^2 var + eps) * xi as one node (group layers' z on conv outputs).

    Autograd through the two products and the draw makes a pass over the activation for each
    product and each of the draw's steps, forward and backward; this node makes one each way when
    compiled. It keeps about what autograd would (mean, var, the scale and the draw's slope).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, mean: torch.Tensor, var: torch.Tensor, scale: torch.Tensor, eps: float, use_compiled: bool
    ) -> torch.Tensor:
        xi = standard_normal_like(mean)
        fused = use_compiled and mean.numel() >= COMPILED_DRAW_MIN_ELEMENTS
        draw = compiled(scaled_draw_and_slope) if fused else scaled_draw_and_slope
        out, slope = draw(mean, var, scale, xi, eps)
        ctx.save_for_backward(mean, var, scale, slope)
        ctx.fused = fused
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        grads = compiled(scaled_draw_grads) if ctx.fused else scaled_draw_grads
        return (*grads(grad, *ctx.saved_tensors), None, None)


def gaussian_preactivation(
    mean: torch.Tensor,
    var: torch.Tensor,
    eps: float,
    use_compiled: bool = False,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """A draw of a pre-activation with independent N(mean, var + eps) entries (local reparameterisation).

    The draw uses ``standard_normal_like(mean)``, so its layout and speed follow the activation's;
    ``use_compiled`` fuses the arithmetic around it (``draw_and_slope``) without changing the draw,
    for activations large enough to gain from it. With ``scale`` (broadcastable to ``mean``) the
    pre-activation is N(scale * mean, scale^2 * var + eps), as when a group layer's z multiplies
    a convolution's output.
    """
    if scale is not None:
        return _ScaledGaussianPreactivation.apply(mean, var, scale, eps, use_compiled)
    return _GaussianPreactivation.apply(mean, var, eps, use_compiled)
