"""Pictures of what the first layer of a sparsified network still reads (keep-masks as images).

For MNIST's fully connected first layer each unit's mask is a 28x28 image; these pictures are the
ones the Sparse VD and Bayesian compression papers show, drawn from our own exported masks.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from sparsebench.report.palette import style


def first_layer_masks(
    mask: torch.Tensor, title: str, image_side: int | None, samples: int = 24
) -> Figure | None:
    """Which inputs the first layer still reads: per hidden unit (28x28 for MNIST) and overall.

    For a fully connected first layer each unit's keep-mask is an image; the large panel counts how
    many units read each pixel (0 = the pixel is ignored by the whole network), as in the Sparse
    VD and Bayesian compression papers. For a convolution each filter's kernel mask is drawn.
    """
    style()
    mask = mask.detach().to(torch.bool).cpu()
    if mask.dim() == 2 and image_side and mask.shape[1] == image_side * image_side:
        return _unit_masks(mask, title, image_side, samples)
    if mask.dim() == 4:
        return _kernel_masks(mask, title)
    return None


def _unit_masks(mask: torch.Tensor, title: str, side: int, samples: int) -> Figure:
    kept_per_unit = mask.sum(dim=1)
    alive = torch.nonzero(kept_per_unit > 0).flatten()
    pick = (
        alive[torch.linspace(0, len(alive) - 1, min(samples, len(alive))).round().long()]
        if len(alive)
        else alive
    )
    usage = mask.sum(dim=0).reshape(side, side).float().numpy()
    cols = 6
    rows = max(1, math.ceil(len(pick) / cols))
    fig = plt.figure(figsize=(11.5, max(4.6, 1.5 * rows + 0.9)), layout="constrained")
    left, right = fig.subfigures(1, 2, width_ratios=[1.0, 1.35])
    ax = left.subplots()
    shown = np.ma.masked_where(usage == 0, usage)
    cmap = plt.get_cmap("viridis").with_extremes(bad="black")
    im = ax.imshow(shown, cmap=cmap, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    pixels = int((usage > 0).sum())
    ax.set_title(
        f"units reading each pixel (black: none)\n{pixels} of {side * side} pixels used", fontsize=9.5
    )
    left.colorbar(im, ax=ax, shrink=0.8, label="hidden units")
    axes = right.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
        if i >= len(pick):
            ax.axis("off")
            continue
        unit = int(pick[i])
        ax.imshow(
            mask[unit].reshape(side, side).numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest"
        )
        ax.set_title(f"unit {unit}: {int(kept_per_unit[unit])}", fontsize=7)
    right.suptitle(f"keep-masks of {len(pick)} of {len(alive)} surviving units (white: kept)", fontsize=9.5)
    fig.suptitle(title, fontsize=11)
    return fig


def _kernel_masks(mask: torch.Tensor, title: str) -> Figure:
    out, inp = mask.shape[0], mask.shape[1]
    kernels = mask.reshape(out * inp, *mask.shape[2:])[: 10 * 6]
    cols = min(10, len(kernels))
    rows = math.ceil(len(kernels) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(1.05 * cols + 0.4, 1.15 * rows + 0.8), layout="constrained", squeeze=False
    )
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
        if i >= len(kernels):
            ax.axis("off")
            continue
        ax.imshow(kernels[i].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"{i // inp}: {int(kernels[i].sum())}", fontsize=7)
    kept = int(mask.sum())
    fig.suptitle(f"{title}\nkernel keep-masks (white: kept), {kept} of {mask.numel()} weights", fontsize=10)
    return fig
