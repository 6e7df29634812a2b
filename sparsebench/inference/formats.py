"""The storage formats a trained model is exported to, and how each is built from the masked model.

Every format is built from the dense masked model (zeros where weights were removed) by explicit
rules for chains of layers, never by tracing: thinning deletes dead units with
``structured.shrink_sequential``; the CSR formats swap layers for ``sparse_layers``. A format that
cannot represent a model raises ``FormatUnsupported`` with the reason, which the benchmark
reports instead of a timing.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from sparsebench.inference.sparse_layers import FormatUnsupported, sparsify_layers, sparsify_sequential
from sparsebench.measure.structured import shrink_sequential


@dataclass(frozen=True)
class Format:
    name: str
    description: str
    thinned: bool
    backend: Literal["dense", "torch", "scipy"]
    sparse_convs: bool = True
    """CSR formats: also run convolutions as im2col + CSR (else convolutions stay dense)."""

    def build(self, model: nn.Module, example: torch.Tensor, device: torch.device) -> nn.Module:
        """This format of ``model`` on ``device``; raises FormatUnsupported when it cannot be made."""
        if self.backend == "scipy" and device.type != "cpu":
            raise FormatUnsupported("scipy.sparse runs on the CPU only")
        built = copy.deepcopy(model).to(device).eval()
        if self.thinned:
            built = thin(built, example.to(device))
        if self.backend == "dense":
            return built
        if isinstance(built, nn.Sequential):
            return sparsify_sequential(built, self.backend, convs=self.sparse_convs)
        if not self.sparse_convs:
            raise FormatUnsupported("the _fc formats are defined for chains with convolutions")
        return sparsify_layers(built, self.backend)

    def applies_to(self, model: nn.Module) -> bool:
        """The ``_fc`` variants only differ from the full CSR formats when the model has convolutions."""
        has_convs = any(isinstance(m, nn.Conv2d) for m in model.modules())
        return self.sparse_convs or (self.backend != "dense" and has_convs)


def thin(model: nn.Module, example: torch.Tensor) -> nn.Module:
    if not isinstance(model, nn.Sequential):
        raise FormatUnsupported(
            f"thinning rules cover nn.Sequential chains of Linear/Conv2d layers, not {type(model).__name__}"
        )
    try:
        return shrink_sequential(model, example)
    except ValueError as exc:
        raise FormatUnsupported(f"cannot thin this model: {exc}") from exc


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("dense", "the masked model as trained: zeros stored and multiplied", False, "dense"),
        Format("thinned", "dead neurons, filters and inputs removed; the rest dense", True, "dense"),
        Format("torch_csr", "every weight layer as a torch sparse CSR matrix", False, "torch"),
        Format("torch_csr_fc", "Linear layers as torch CSR, convolutions dense", False, "torch", False),
        Format("scipy_csr", "every weight layer as a scipy.sparse CSR matrix (CPU)", False, "scipy"),
        Format("scipy_csr_fc", "Linear layers as scipy CSR, convolutions dense (CPU)", False, "scipy", False),
        Format("thinned_torch_csr", "thinned, then torch CSR", True, "torch"),
        Format("thinned_torch_csr_fc", "thinned, then torch CSR for Linear layers", True, "torch", False),
        Format("thinned_scipy_csr", "thinned, then scipy CSR (CPU)", True, "scipy"),
        Format(
            "thinned_scipy_csr_fc", "thinned, then scipy CSR for Linear layers (CPU)", True, "scipy", False
        ),
    )
}
