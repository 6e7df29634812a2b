"""Every number of a comparison table, counted by the core on the exported model.

Counting rules (docs/counting.md explains them at length):
- weights: the weight tensors of Linear, Conv, LSTM and Embedding layers; biases, BatchNorm and
  variational parameters are not weights;
- compression = weights / nonzero weights (the papers' number); ``compression_all`` counts
  every parameter of the exported model, biases included;
- FLOPs per example = 2 x multiply-accumulates of the weight layers, dense and with zeros skipped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pandas as pd
import torch
from torch import nn

WEIGHT_LAYERS = (nn.Linear, nn.Conv2d, nn.LSTM, nn.Embedding)


@dataclass
class LayerStats:
    layer: str
    kind: str
    shape: str
    weights: int
    nonzeros: int
    sparsity: float
    """% of exactly-zero weights."""
    biases: int
    out_units: int
    out_units_removed: int
    """Output neurons / filters whose every incoming weight is zero."""
    in_units: int
    in_units_removed: int
    """Input neurons / channels whose every outgoing weight is zero."""
    flops_dense: int
    flops_sparse: int


def weight_tensors(module: nn.Module) -> list[torch.Tensor]:
    if isinstance(module, nn.LSTM):
        return [p for name, p in module.named_parameters(recurse=False) if name.startswith("weight")]
    return [module.weight]


def bias_count(module: nn.Module) -> int:
    return sum(p.numel() for name, p in module.named_parameters(recurse=False) if name.startswith("bias"))


def units_removed(weight: torch.Tensor) -> tuple[int, int, int, int]:
    """(out units, out removed, in units, in removed) of a weight laid out (out, in, ...)."""
    nz = weight != 0
    if weight.dim() == 1:
        return weight.shape[0], int((~nz).sum()), 0, 0
    per_out = nz.flatten(1).any(dim=1)
    per_in = nz.transpose(0, 1).flatten(1).any(dim=1)
    return nz.shape[0], int((~per_out).sum()), nz.shape[1], int((~per_in).sum())


def output_positions(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """How many times each weight layer is applied per example (spatial positions, time steps)."""
    positions: dict[str, int] = {}
    hooks = []
    for path, m in model.named_modules():
        if not isinstance(m, WEIGHT_LAYERS):
            continue

        def hook(mod: nn.Module, inputs: tuple, output: object, path: str = path) -> None:
            out = output[0] if isinstance(output, tuple) else output
            if isinstance(mod, nn.Linear):
                positions[path] = out.numel() // mod.out_features
            elif isinstance(mod, nn.Conv2d):
                positions[path] = out.numel() // mod.out_channels
            elif isinstance(mod, nn.LSTM):
                positions[path] = out.shape[0] * out.shape[1] // max(1, example.shape[0])
            else:  # an embedding lookup costs no multiply-adds
                positions[path] = 0

        hooks.append(m.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return positions


def layer_table(model: nn.Module, example: torch.Tensor, order: list[str] | None = None) -> pd.DataFrame:
    """One row per weight layer of a model of standard layers, in network order."""
    modules = dict(model.named_modules())
    paths = order or [p for p, m in modules.items() if isinstance(m, WEIGHT_LAYERS)]
    positions = output_positions(model, example)
    rows = []
    for path in paths:
        m = modules[path]
        if not isinstance(m, WEIGHT_LAYERS):
            raise TypeError(f"{path} is a {type(m).__name__}; export must produce standard layers only")
        tensors = weight_tensors(m)
        total = sum(t.numel() for t in tensors)
        nonzero = sum(int((t != 0).sum()) for t in tensors)
        out_u, out_rm, in_u, in_rm = units_removed(tensors[0])
        pos = positions.get(path, 0)
        rows.append(
            LayerStats(
                layer=path,
                kind=type(m).__name__,
                shape="x".join(str(s) for s in tensors[0].shape)
                if len(tensors) == 1
                else f"{len(tensors)} tensors",
                weights=total,
                nonzeros=nonzero,
                sparsity=100.0 * (total - nonzero) / total,
                biases=bias_count(m),
                out_units=out_u,
                out_units_removed=out_rm,
                in_units=in_u,
                in_units_removed=in_rm,
                flops_dense=2 * total * pos,
                flops_sparse=2 * nonzero * pos,
            )
        )
    return pd.DataFrame([asdict(r) for r in rows])


@dataclass
class Summary:
    weights: int
    nonzeros: int
    compression: float
    params_all: int
    nonzero_params_all: int
    compression_all: float
    flops_dense: int
    flops_sparse: int
    flops_reduction: float

    def as_metrics(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def summarize(model: nn.Module, table: pd.DataFrame) -> Summary:
    weights, nonzeros = int(table.weights.sum()), int(table.nonzeros.sum())
    params = [p.detach() for p in model.parameters()]
    params_all = sum(p.numel() for p in params)
    nonzero_all = sum(int((p != 0).sum()) for p in params)
    fd, fs = int(table.flops_dense.sum()), int(table.flops_sparse.sum())
    return Summary(
        weights=weights,
        nonzeros=nonzeros,
        compression=weights / max(1, nonzeros),
        params_all=params_all,
        nonzero_params_all=nonzero_all,
        compression_all=params_all / max(1, nonzero_all),
        flops_dense=fd,
        flops_sparse=fs,
        flops_reduction=fd / max(1, fs),
    )


def mask_target(model: nn.Module, key: str) -> torch.Tensor:
    """The weight a mask applies to: ``key`` is a module path (its ``weight``) or ``<path>.<parameter>``.

    The second form names one of several weight matrices of a module, e.g. ``lstm.weight_hh_l0``.
    """
    modules = dict(model.named_modules())
    if key in modules:
        return weight_tensors(modules[key])[0]
    path, _, name = key.rpartition(".")
    if path in modules and isinstance(getattr(modules[path], name, None), torch.Tensor):
        return getattr(modules[path], name)
    raise RuntimeError(f"mask for {key!r} has no layer or weight in the exported model")


def check_export(exported: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """The exported model must hold zeros wherever a mask says a weight was removed."""
    for key, mask in masks.items():
        weight = mask_target(exported, key)
        if weight.shape != mask.shape:
            raise RuntimeError(f"mask for {key} has shape {tuple(mask.shape)}, weight {tuple(weight.shape)}")
        leaked = int(((weight != 0) & ~mask.to(weight.device)).sum())
        if leaked:
            raise RuntimeError(f"exported {key} has {leaked} nonzero weights that its mask removed")


def format_compression(value: float) -> str:
    return f"{value:.0f}x" if value >= 100 else f"{value:.1f}x"


def paper_row(
    task: str, method: str, error: float, table: pd.DataFrame, summary: Summary, unit: str = "%"
) -> str:
    """The papers' one-line format, e.g. ``lenet5 sparse_vd 0.75% 67-98-99.8-95 280x``."""
    sparsity = "-".join(f"{s:.1f}" for s in table.sparsity)
    value = f"{error:.2f}{unit}" if unit == "%" else f"{error:.2f} {unit}"
    return f"{task} {method} {value} {sparsity} {format_compression(summary.compression)}"
