"""Keep the largest weights of each layer: a stand-in third-party method for the plugin tests.

An installed distribution in miniature: this package and ``sbplugin_demo-0.1.dist-info`` beside it,
whose ``entry_points.txt`` names ``TopK`` in the ``sparsebench.methods`` group. Tests put this
folder on ``PYTHONPATH`` and ``importlib.metadata`` finds it as it would an installed wheel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sparsebench.config import option
from sparsebench.method import SparsityMethod


@dataclass
class TopKConfig:
    keep_fraction: float = option(0.5, "fraction of each layer's weights kept, by magnitude")


class TopK(SparsityMethod):
    description = "keep the largest weights of each layer (plugin test)"
    paper = "none (test plugin)"
    Config = TopKConfig

    def masks(self, model: nn.Module) -> dict[str, torch.Tensor]:
        masks = {}
        for path, m in model.named_modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                w = m.weight.detach().abs().flatten()
                keep = torch.zeros_like(w, dtype=torch.bool)
                keep[w.topk(round(self.config.keep_fraction * w.numel())).indices] = True
                masks[path] = keep.view_as(m.weight)
        return masks


class Misnamed(TopK):
    """Declares a name of its own that its entry point (``renamed_topk``) contradicts."""

    name = "topk_by_another_name"
