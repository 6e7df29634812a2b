"""Dense training without sparsification: the reference row of every table (compression 1.0)."""

from __future__ import annotations

import torch
from torch import nn

from sparsebench.method import SparsityMethod
from sparsebench.registry import register_method
from sparsebench.toolkit.surgery import modules_of_type


@register_method("dense")
class Dense(SparsityMethod):
    description = "No sparsification; the task's plain model and recipe"
    paper = "(baseline)"
    layer_types = (nn.Linear, nn.Conv2d, nn.LSTM, nn.Embedding)

    def masks(self, model: nn.Module) -> dict[str, torch.Tensor]:
        layers = modules_of_type(model, (nn.Linear, nn.Conv2d, nn.Embedding))
        return {path: torch.ones_like(m.weight, dtype=torch.bool) for path, m in layers.items()}
