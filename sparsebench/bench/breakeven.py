"""Break-even sparsity: per layer shape of a task, above which sparsity a CSR kernel beats dense.

Random masks at a grid of sparsities, the dense kernel (``F.linear`` / ``F.conv2d``, what the
dense model runs) against the sparse one (a CSR product on feature-major activations for Linear,
im2col + CSR for Conv2d, as the CSR formats run them), timed in one process. The answer depends
on the machine, the batch size and the backend, which is why it is measured, not quoted.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from sparsebench.bench.timing import measure
from sparsebench.inference.sparse_layers import Backend, CsrConv2d, _csr, _product

DEFAULT_SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)


@dataclass(frozen=True)
class LayerShape:
    layer: str
    module: nn.Module
    input_shape: tuple[int, ...]
    """Input of one example (without the batch dimension)."""

    @property
    def label(self) -> str:
        w = self.module.weight
        return "x".join(str(s) for s in w.shape)


def layer_shapes(model: nn.Module, example: torch.Tensor) -> list[LayerShape]:
    """The Linear and Conv2d layers of a model with the input shape each one sees."""
    seen: dict[str, tuple[int, ...]] = {}

    def record(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            seen.setdefault(name, tuple(args[0].shape[1:]))

        return hook

    hooks = [
        m.register_forward_hook(record(name))
        for name, m in model.named_modules()
        if isinstance(m, (nn.Linear, nn.Conv2d))
    ]
    with torch.no_grad():
        model.eval()(example)
    for h in hooks:
        h.remove()
    modules = dict(model.named_modules())
    return [LayerShape(name, modules[name], shape) for name, shape in seen.items()]


def random_masked(module: nn.Module, sparsity: float, generator: torch.Generator) -> nn.Module:
    """A copy of the layer with random weights of which exactly round(sparsity x n) are zero."""
    layer = copy.deepcopy(module).requires_grad_(False)
    weight = torch.randn(module.weight.shape, generator=generator)
    zeros = round(sparsity * weight.numel())
    weight.view(-1)[torch.randperm(weight.numel(), generator=generator)[:zeros]] = 0
    layer.weight.copy_(weight)
    if layer.bias is not None:
        layer.bias.copy_(torch.randn(layer.bias.shape, generator=generator))
    return layer


def _kernels(layer: nn.Module, x: torch.Tensor, backend: Backend):  # noqa: ANN202 - two closures
    if isinstance(layer, nn.Conv2d):
        sparse = CsrConv2d(layer, backend)
        return (lambda: F.conv2d(x, layer.weight, layer.bias, layer.stride, layer.padding)), (
            lambda: sparse(x)
        )
    weight = _csr(layer.weight, backend)
    bias = None if layer.bias is None else layer.bias.detach().reshape(-1, 1)
    columns = x.t().contiguous()
    if backend == "scipy":
        columns, bias = columns.numpy(), None if bias is None else bias.numpy()
    return (lambda: F.linear(x, layer.weight, layer.bias)), (lambda: _product(weight, bias, columns, backend))


def sweep_layer(
    shape: LayerShape,
    batch_size: int,
    backend: Backend,
    device: torch.device,
    sparsities: tuple[float, ...] = DEFAULT_SPARSITIES,
    seed: int = 0,
) -> pd.DataFrame:
    """Dense and sparse time of one layer at each sparsity (one row each)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((batch_size, *shape.input_shape), generator=generator).to(device)
    rows = []
    for sparsity in sparsities:
        layer = random_masked(shape.module, sparsity, generator).to(device)
        dense, sparse = _kernels(layer, x, backend)
        with torch.inference_mode():
            dense_s = measure(dense, device, repeats=7, block_seconds=0.005).median_s
            sparse_s = measure(sparse, device, repeats=7, block_seconds=0.005).median_s
        rows.append(
            {
                "layer": shape.layer,
                "shape": shape.label,
                "batch_size": batch_size,
                "backend": backend,
                "sparsity": sparsity,
                "dense_ms": dense_s * 1000,
                "sparse_ms": sparse_s * 1000,
                "ratio": sparse_s / dense_s,
            }
        )
    return pd.DataFrame(rows)


def break_even_point(sparsity: np.ndarray, ratio: np.ndarray) -> float:
    """The sparsity above which sparse stays faster (ratio < 1), interpolated on log(ratio).

    0.0 when sparse is faster across the grid's start, NaN when it never becomes faster. The
    crossing is the last one from slower to faster, so noise at low sparsity does not count.
    """
    faster = ratio < 1
    if not faster[-1]:
        return math.nan
    slower = np.flatnonzero(~faster)
    if len(slower) == 0:
        return 0.0
    i = slower[-1]
    lo, hi = math.log(ratio[i]), math.log(ratio[i + 1])
    t = lo / (lo - hi)
    return float(sparsity[i] + t * (sparsity[i + 1] - sparsity[i]))


def break_even_table(sweeps: pd.DataFrame) -> pd.DataFrame:
    """One row per (layer, batch size, backend): the break-even sparsity and the ratio at the ends."""
    rows = []
    for (layer, shape, batch, backend), group in sweeps.groupby(
        ["layer", "shape", "batch_size", "backend"], sort=False
    ):
        group = group.sort_values("sparsity")
        rows.append(
            {
                "layer": layer,
                "shape": shape,
                "batch_size": batch,
                "backend": backend,
                "break_even_sparsity": break_even_point(group.sparsity.to_numpy(), group.ratio.to_numpy()),
                "dense_ms": group.dense_ms.median(),
                "max_sparsity": group.sparsity.iloc[-1],
                "speedup_at_max_sparsity": group.dense_ms.iloc[-1] / group.sparse_ms.iloc[-1],
            }
        )
    return pd.DataFrame(rows)
