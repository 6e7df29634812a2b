"""Swap modules of a model in place, keeping their paths (so masks keyed by path stay valid)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

LayerT = TypeVar("LayerT", bound=nn.Module)


def replace_modules(model: nn.Module, swap: Callable[[str, nn.Module], nn.Module | None]) -> nn.Module:
    """Call ``swap(path, module)`` on every descendant; a non-None result replaces the module.

    Replaced modules are not descended into, so a method's own layer is never converted twice.
    """
    if (new_root := swap("", model)) is not None:
        return new_root

    def visit(parent: nn.Module, prefix: str) -> None:
        for name, child in list(parent.named_children()):
            path = f"{prefix}.{name}" if prefix else name
            new = swap(path, child)
            if new is not None:
                setattr(parent, name, new)
            else:
                visit(child, path)

    visit(model, "")
    return model


def copy_as(cls: type[LayerT], layer: nn.Module) -> LayerT:
    """A ``cls`` (a subclass of ``layer``'s Linear or Conv2d type) with its geometry, device, dtype,
    weight and bias: how a method swaps a standard layer for its own before adding its parameters."""
    if isinstance(layer, nn.Conv2d):
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
    else:
        new = cls(layer.in_features, layer.out_features, bias=layer.bias is not None)
    new.to(layer.weight.device, layer.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(layer.weight)
        if layer.bias is not None:
            new.bias.copy_(layer.bias)
    return new


def modules_of_type(model: nn.Module, types: type | tuple[type, ...]) -> dict[str, nn.Module]:
    return {path: m for path, m in model.named_modules() if isinstance(m, types)}


def standard_layer(like: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """A plain ``nn.Linear`` / ``nn.Conv2d`` holding ``weight`` and ``bias``, shaped by the tensors.

    Exports (Sparse VD, Group NJ) and the thinned model all end in standard layers; the conv
    geometry (kernel, stride, padding, dilation, groups) comes from ``like``.
    """
    if weight.dim() == 2:
        out: nn.Module = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    else:
        groups = getattr(like, "groups", 1)
        out = nn.Conv2d(
            weight.shape[1] * groups,
            weight.shape[0],
            like.kernel_size,
            stride=like.stride,
            padding=like.padding,
            dilation=like.dilation,
            groups=groups,
            bias=bias is not None,
            padding_mode=getattr(like, "padding_mode", "zeros"),
        )
    out.to(weight.device, weight.dtype)
    with torch.no_grad():
        out.weight.copy_(weight)
        if bias is not None:
            out.bias.copy_(bias)
    return out
