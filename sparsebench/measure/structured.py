"""Structured compression: the weights left once whole neurons, filters and input channels go.

Louizos et al. (2017) report "compression after pruning" as the size of the architecture shrunk
by deleting dead units (methods.md 4.7 item 2, 8). For every weight tensor laid out (out, in, ...)
we delete the outputs whose weights are all zero and the inputs whose weights are all zero, and
count what is left: n = kept outputs x kept inputs x kernel size. Unlike bc's ``compress_matrix``
a conv tensor (O, I, k, k) is shrunk by whole output filters and whole input channels, which is
what a smaller dense network can actually drop; individual zeros inside kept units still count.

``shrink_sequential`` builds that smaller dense network for a chain of Linear/Conv2d layers, so
the count is backed by a model one can run (and the tests check it computes the same function).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import asdict, dataclass

import pandas as pd
import torch
from torch import nn

from sparsebench.measure.counts import WEIGHT_LAYERS, weight_tensors
from sparsebench.toolkit.surgery import standard_layer


def alive_units(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bool (out,) and (in,): units with at least one nonzero weight in a tensor (out, in, ...)."""
    nz = weight != 0
    return nz.flatten(1).any(dim=1), nz.transpose(0, 1).flatten(1).any(dim=1)


def shrunk_size(weight: torch.Tensor) -> int:
    """Entries left after deleting all-zero outputs (rows, filters) and inputs (columns, channels)."""
    if weight.dim() < 2:
        return int((weight != 0).sum())
    out_alive, in_alive = alive_units(weight)
    return int(out_alive.sum()) * int(in_alive.sum()) * math.prod(weight.shape[2:])


@dataclass
class StructuredLayer:
    layer: str
    weights: int
    shrunk: int
    """Weights of the layer once its dead outputs and inputs are deleted."""
    out_units: int
    out_kept: int
    in_units: int
    in_kept: int


def structured_table(model: nn.Module, order: list[str] | None = None) -> pd.DataFrame:
    """One row per weight layer of a model of standard layers (LSTM: its tensors summed)."""
    modules = dict(model.named_modules())
    paths = order or [p for p, m in modules.items() if isinstance(m, WEIGHT_LAYERS)]
    rows = []
    for path in paths:
        tensors = [t.detach() for t in weight_tensors(modules[path])]
        first = tensors[0]
        out_alive, in_alive = alive_units(first) if first.dim() >= 2 else (first != 0, first != 0)
        rows.append(
            StructuredLayer(
                layer=path,
                weights=sum(t.numel() for t in tensors),
                shrunk=sum(shrunk_size(t) for t in tensors),
                out_units=len(out_alive),
                out_kept=int(out_alive.sum()),
                in_units=len(in_alive),
                in_kept=int(in_alive.sum()),
            )
        )
    return pd.DataFrame([asdict(r) for r in rows])


def structured_metrics(model: nn.Module, order: list[str] | None = None) -> dict[str, float]:
    """``compression_structured`` = sum |W| / sum n over the weight layers, plus ``weights_structured``."""
    table = structured_table(model, order)
    shrunk = int(table.shrunk.sum())
    return {
        "compression_structured": float(table.weights.sum()) / max(1, shrunk),
        "weights_structured": float(shrunk),
    }


# ----------------------------------------------------------------------------------------------
# The physically smaller model
# ----------------------------------------------------------------------------------------------


class Gather(nn.Module):
    """Keeps the listed features along one axis: the inputs a shrunk layer no longer reads."""

    def __init__(self, index: torch.Tensor, dim: int = 1) -> None:
        super().__init__()
        self.dim = dim
        self.register_buffer("index", index.to(torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(self.dim, self.index)


_LAYERS = (nn.Linear, nn.Conv2d)
_PER_CHANNEL = (nn.BatchNorm1d, nn.BatchNorm2d)


def shrink_sequential(model: nn.Sequential, example: torch.Tensor) -> nn.Sequential:
    """A smaller dense copy of a chain of Linear/Conv2d layers with their dead units removed.

    Between two weight layers only per-channel modules may sit (activations, pooling, flatten,
    dropout, BatchNorm), and a conv's (C, H, W) output is flattened channel-major into a Linear
    layer. A unit between layers A and B is removed when B reads none of it (its input
    weights in B are all zero) or when A computes nothing for it (its row in A is zero) and the
    constant it then emits can be folded into B's bias: always into a Linear B, into a conv B
    when the constant is spatially uniform and B does not pad. Inputs a layer reads none of
    (the first layer's dead pixels, single dead positions of a flattened channel) are dropped
    by a ``Gather``. The last layer keeps all its outputs (the model's output shape stays).

    Args:
        model: the masked model (zeros where weights were removed), in eval mode semantics.
        example: one input batch, used to learn the activation shapes between layers.
    """
    names, children = zip(*model.named_children(), strict=True) if len(model) else ((), ())
    layer_ids = _chain_layers(names, children)
    outputs = _activations(model, example)
    weight = {i: children[i].weight.detach() for i in layer_ids}
    alive = {i: alive_units(weight[i]) for i in layer_ids}  # (row alive, column alive)
    out_keep = {i: torch.ones_like(alive[i][0]) for i in layer_ids}
    in_keep = {i: alive[i][1].clone() for i in layer_ids}
    bias_add = {i: torch.zeros(weight[i].shape[0], dtype=weight[i].dtype) for i in layer_ids}
    gathers: dict[int, torch.Tensor] = {}

    for a, b in zip(layer_ids[:-1], layer_ids[1:], strict=True):
        units = weight[a].shape[0]
        per_unit = weight[b].shape[1] // units
        if per_unit * units != weight[b].shape[1] or (isinstance(children[b], nn.Conv2d) and per_unit != 1):
            raise ValueError(f"{names[a]} -> {names[b]}: the layer sizes do not form a chain")
        unread = ~alive[b][1].view(units, per_unit).any(dim=1)
        emitted = _emitted_constants(children, a, b, outputs[a])  # (units, per_unit or H*W)
        idle = ~alive[a][0] & ~unread
        foldable = idle & _foldable(children[b], emitted)
        if isinstance(children[b], nn.Linear):
            folded = weight[b].view(-1, units, per_unit) * emitted.view(1, units, per_unit)
        else:
            folded = weight[b].sum(dim=(2, 3)) * emitted[:, 0].view(1, units)
            folded = folded.unsqueeze(-1)
        bias_add[b] += (folded * foldable.view(1, units, 1)).sum(dim=(1, 2))
        removed = unread | foldable
        out_keep[a] &= ~removed
        block = (~removed).repeat_interleave(per_unit)
        in_keep[b] = block & alive[b][1]
        if per_unit > 1 and bool((block & ~alive[b][1]).any()):
            gathers[b] = torch.nonzero(in_keep[b][block]).flatten()
            # indices into the kept channels' flattened blocks, in order

    first = layer_ids[0]
    if not bool(in_keep[first].all()):
        gathers[first] = torch.nonzero(in_keep[first]).flatten()

    return _assemble(names, children, gathers, (out_keep, in_keep, bias_add))


def _assemble(
    names: tuple[str, ...],
    children: tuple[nn.Module, ...],
    gathers: dict[int, torch.Tensor],
    keeps: tuple[dict[int, torch.Tensor], dict[int, torch.Tensor], dict[int, torch.Tensor]],
) -> nn.Sequential:
    """The shrunk chain: kept rows and columns of each layer, folded biases, input gathers."""
    out_keep, in_keep, bias_add = keeps
    new: OrderedDict[str, nn.Module] = OrderedDict()
    current_channels = None
    for i, (name, m) in enumerate(zip(names, children, strict=True)):
        if i in gathers:
            new[f"{name}_inputs"] = Gather(gathers[i].to(m.weight.device if hasattr(m, "weight") else "cpu"))
        if isinstance(m, _LAYERS):
            new[name] = _shrink_layer(m, out_keep[i], in_keep[i], bias_add[i])
            current_channels = out_keep[i]
        elif isinstance(m, _PER_CHANNEL):
            new[name] = _shrink_norm(m, current_channels)
        else:
            new[name] = m
    return nn.Sequential(new)


def _chain_layers(names: tuple[str, ...], children: tuple[nn.Module, ...]) -> list[int]:
    """Positions of the weight layers, after checking that only per-channel modules sit between them."""
    layer_ids = [i for i, m in enumerate(children) if isinstance(m, _LAYERS)]
    if not layer_ids:
        raise ValueError("the model has no Linear or Conv2d layer")
    for i, m in enumerate(children):
        stateless = not any(True for _ in m.parameters()) and not any(True for _ in m.buffers())
        inside = layer_ids[0] < i < layer_ids[-1]
        if not (isinstance(m, _LAYERS) or stateless or (inside and isinstance(m, _PER_CHANNEL))):
            raise ValueError(f"{names[i]} ({type(m).__name__}) cannot sit in a shrinkable chain")
    return layer_ids


@torch.no_grad()
def _activations(model: nn.Sequential, example: torch.Tensor) -> list[torch.Tensor]:
    was_training = model.training
    model.eval()
    outs, x = [], example
    for m in model:
        x = m(x)
        outs.append(x)
    model.train(was_training)
    return outs


@torch.no_grad()
def _emitted_constants(children: tuple, a: int, b: int, out_a: torch.Tensor) -> torch.Tensor:
    """What each unit of layer a delivers to layer b when its weights are all zero (only its bias).

    Returned as (units, values per unit): per flattened position for a Linear b, per spatial
    position for a conv b. The modules in between act per channel, so all units go at once.
    """
    layer = children[a]
    shape = (1, *out_a.shape[1:])
    bias = layer.bias if layer.bias is not None else torch.zeros(shape[1], dtype=out_a.dtype)
    x = bias.detach().view(1, -1, *([1] * (len(shape) - 2))).expand(shape).clone()
    was = [m.training for m in children[a + 1 : b]]
    for m in children[a + 1 : b]:
        m.eval()
        x = m(x)
    for m, t in zip(children[a + 1 : b], was, strict=True):
        m.train(t)
    return x.reshape(shape[1], -1)


def _foldable(layer: nn.Module, emitted: torch.Tensor) -> torch.Tensor:
    """Bool per unit: its constant can move into the next layer's bias exactly."""
    zero = (emitted == 0).all(dim=1)
    if isinstance(layer, nn.Linear):
        return torch.ones_like(zero)
    uniform = (emitted == emitted[:, :1]).all(dim=1)
    unpadded = all(p == 0 for p in layer.padding) if isinstance(layer.padding, tuple) else False
    return zero | (uniform & unpadded)


def _shrink_layer(
    m: nn.Module, out_keep: torch.Tensor, in_keep: torch.Tensor, bias_add: torch.Tensor
) -> nn.Module:
    extra = bias_add[out_keep]
    bias = None
    if m.bias is not None or bool((extra != 0).any()):
        bias = (m.bias.detach()[out_keep] if m.bias is not None else torch.zeros_like(extra)) + extra
    return standard_layer(m, m.weight.detach()[out_keep][:, in_keep], bias)


def _shrink_norm(m: nn.Module, keep: torch.Tensor | None) -> nn.Module:
    if keep is None:
        raise ValueError("a BatchNorm before the first weight layer cannot be shrunk")
    new = type(m)(int(keep.sum()), eps=m.eps, momentum=m.momentum, affine=m.affine)
    like = m.weight if m.affine else m.running_mean
    if like is not None:
        new.to(like.device, like.dtype)
    with torch.no_grad():
        if m.affine:
            new.weight.copy_(m.weight[keep])
            new.bias.copy_(m.bias[keep])
        if m.running_mean is not None:
            new.running_mean.copy_(m.running_mean[keep])
            new.running_var.copy_(m.running_var[keep])
    new.eval()
    return new
