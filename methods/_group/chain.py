"""The chain: which groups of one layer remove which rows/columns of its neighbours (section 4.6).

A unit between two weight layers survives only if both sides keep it; after a flatten, a conv
filter owns a block of H*W inputs of the next Linear layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .layers import GroupConv2d, GroupLinear, _GroupLayer


@dataclass(frozen=True)
class Link:
    """How the outputs of one weight layer feed the inputs of the next.

    ``positions`` is the number of next-layer inputs per output unit: 1 between layers of the
    same kind, H*W when a conv's (C, H, W) output is flattened into a Linear layer.
    """

    positions: int


def chain_links(layers: list[tuple[str, nn.Module]]) -> list[Link]:
    """Links between consecutive Linear/Conv2d layers taken in registration (= forward) order.

    Raises ValueError with the reason when the layers cannot form a chain (a Linear feeding a
    conv, mismatched sizes, grouped convolutions), which ``not_applicable`` reports.
    """
    for path, m in layers:
        if getattr(m, "groups", 1) != 1:
            raise ValueError(f"{path} is a grouped convolution")
    links = []
    for (pa, a), (pb, b) in zip(layers[:-1], layers[1:], strict=True):
        out_a = _out_units(a)
        in_b = _in_units(b)
        if isinstance(b, (nn.Conv2d, GroupConv2d)):
            if not isinstance(a, (nn.Conv2d, GroupConv2d)):
                raise ValueError(f"{pa} (Linear) feeds the convolution {pb}")
            if out_a != in_b:
                raise ValueError(f"{pa} has {out_a} output channels but {pb} takes {in_b}")
            links.append(Link(1))
        elif isinstance(a, (nn.Linear, GroupLinear)):
            if out_a != in_b:
                raise ValueError(f"{pa} has {out_a} outputs but {pb} takes {in_b}")
            links.append(Link(1))
        else:
            if in_b % out_a != 0:
                raise ValueError(f"{pb} takes {in_b} inputs, not a multiple of {pa}'s {out_a} channels")
            links.append(Link(in_b // out_a))  # flattened (C, H, W): channel c owns a block of H*W
    return links


def _out_units(m: nn.Module) -> int:
    return m.out_features if isinstance(m, (nn.Linear, GroupLinear)) else m.out_channels


def _in_units(m: nn.Module) -> int:
    return m.in_features if isinstance(m, (nn.Linear, GroupLinear)) else m.in_channels


def propagate(
    layers: list[tuple[str, _GroupLayer]], group_keeps: list[torch.Tensor]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(output keep, input keep) per layer once every layer's own group keeps are combined.

    A unit between two layers survives only if both sides keep it: a Linear layer's input
    neuron dies with its own z and kills the previous layer's matching output row; a conv filter
    dies with its own z and kills the next layer's input channel, or, after a flatten, the block
    of H*W inputs it feeds (a dead filter of LeNet-5's conv2 removes 16 inputs of fc1). A filter
    whose every flattened input is dropped by the Linear layer's z dies too (section 4.6).
    """
    links = chain_links(layers)  # type: ignore[arg-type]
    n = len(layers)
    outs: list[torch.Tensor] = [torch.ones(0, dtype=torch.bool)] * n
    ins: list[torch.Tensor] = [torch.ones(0, dtype=torch.bool)] * n
    first = layers[0][1]
    ins[0] = group_keeps[0] if isinstance(first, GroupLinear) else _all(first.in_channels, group_keeps[0])
    for k, link in enumerate(links):
        a, b = layers[k][1], layers[k + 1][1]
        keep_a = group_keeps[k] if isinstance(a, GroupConv2d) else _all(_out_units(a), group_keeps[k])
        keep_b = group_keeps[k + 1] if isinstance(b, GroupLinear) else _all(_in_units(b), group_keeps[k])
        if link.positions == 1:
            both = keep_a & keep_b
            outs[k], ins[k + 1] = both, both
        else:
            per_input = keep_b & keep_a.repeat_interleave(link.positions)
            outs[k] = per_input.view(-1, link.positions).any(dim=1)
            ins[k + 1] = per_input
    last = layers[-1][1]
    outs[-1] = group_keeps[-1] if isinstance(last, GroupConv2d) else _all(_out_units(last), group_keeps[-1])
    return {path: (outs[k], ins[k]) for k, (path, _) in enumerate(layers)}


def _all(n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.ones(n, dtype=torch.bool, device=like.device)


def weight_mask(layer: _GroupLayer, out_keep: torch.Tensor, in_keep: torch.Tensor) -> torch.Tensor:
    """Bool mask shaped like the layer's weight: M[o, i, ...] = keep_out[o] * keep_in[i]."""
    extra = [1] * (layer.weight_mu.dim() - 2)
    mask = out_keep.view(-1, 1, *extra) & in_keep.view(1, -1, *extra)
    return mask.expand_as(layer.weight_mu).clone()
