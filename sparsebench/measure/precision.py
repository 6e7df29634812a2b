"""Bit precision from posterior uncertainty, and the compression it buys (methods.md 4.7, items 3-6).

Louizos et al. (2017) store each kept weight in a floating-point format whose significand is only
as long as the posterior is sure of: a weight with marginal variance V needs the significand bits
t whose unit round-off 2^-t still lies above 2V. This module turns per-weight variances (from a
method's ``posterior_variances``) into per-layer bit widths, the compression after precision
reduction, and the weights rounded to that precision. It follows bc ``compression.py``, with two
deliberate differences: the shrunk architecture counts whole filters and input channels
(``sparsebench.measure.structured``), and a layer's mean is taken over its kept weights only.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from sparsebench.measure.structured import shrunk_size

FULL_BITS = 32
"""Bits of a weight before reduction (float32)."""
MAX_SIGNIFICAND_BITS = 23
"""Significand bits of float32: the most precision b(V) can ask for."""


def significand_bits(variance: torch.Tensor) -> torch.Tensor:
    """b(V) per weight: how many t in 1..23 have 2V < 2^-t (0 when even 1 bit is finer than V).

    Closed form min(23, max(0, ceil(-log2(2V)) - 1)), exact at powers of two in float64, and
    b(0) = 23 because a certain weight deserves full precision.
    """
    v = variance.detach().to(torch.float64)
    if bool((v < 0).any()) or bool(torch.isnan(v).any()):
        raise ValueError("variances must be non-negative numbers")
    bits = torch.ceil(-torch.log2(2.0 * v)) - 1.0  # -log2(0) = inf -> clamped to 23
    return bits.clamp(0, MAX_SIGNIFICAND_BITS).to(torch.int64)


def layer_significand_bits(variance: torch.Tensor, keep: torch.Tensor | None = None) -> int:
    """ceil of the mean b(V) over a layer's kept weights (bc passes ``mean``); 0 if none is kept."""
    bits = significand_bits(variance)
    if keep is not None:
        bits = bits[keep.to(torch.bool)]
    if bits.numel() == 0:
        return 0
    return math.ceil(float(bits.to(torch.float64).mean()))


def exponent_bits(overflow: float) -> int:
    """Exponent bits shared by all layers, e = ceil(log2(log2(overflow) + 1) + 1), at least 1.

    ``overflow`` is the largest kept |weight|. The formula (bc ``_compute_compression_rate``)
    is undefined below 0.5, where log2(overflow) + 1 turns negative.
    """
    if not overflow >= 0.5:  # also rejects NaN
        raise ValueError(
            f"exponent bits are undefined for a largest kept |weight| of {overflow:.4g} (< 0.5): the "
            "bit-precision formula of Louizos et al. needs at least one weight of magnitude 0.5"
        )
    inner = math.log2(overflow) + 1.0
    if inner <= 0.0:  # overflow exactly 0.5: log2(0) = -inf; one exponent bit still encodes it
        return 1
    return max(1, math.ceil(math.log2(inner) + 1.0))


def round_to_grid(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Round to the fixed-point grid of step 2^-bits, halves up (bc ``special_round``)."""
    step = 2.0**-bits
    return torch.floor(weight / step + 0.5) * step


@dataclass
class PrecisionReport:
    layers: list[str]
    significand_bits: dict[str, int]
    exponent_bits: int
    bits_per_weight: dict[str, int]
    """1 sign + exponent + significand bits of each layer."""
    weights: int
    """|W|: every weight of the listed layers, kept or not."""
    shrunk: dict[str, int]
    """Weights left in each layer once dead filters/neurons and input channels are removed."""

    @property
    def compression_structured(self) -> float:
        return self.weights / max(1, sum(self.shrunk.values()))

    @property
    def compression_precision(self) -> float:
        """32 |W| / sum_l n_l (1 + e + m_l): "compression after precision reduction"."""
        bits = sum(self.shrunk[p] * self.bits_per_weight[p] for p in self.layers)
        return FULL_BITS * self.weights / max(1, bits)

    def as_metrics(self) -> dict[str, float]:
        metrics = {
            "compression_precision": self.compression_precision,
            "bits_exponent": float(self.exponent_bits),
        }
        for p in self.layers:
            metrics[f"bits_significand.{p}"] = float(self.significand_bits[p])
            metrics[f"bits_per_weight.{p}"] = float(self.bits_per_weight[p])
        return metrics


def precision_report(
    weights: Mapping[str, torch.Tensor],
    variances: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor] | None = None,
) -> PrecisionReport:
    """Bit widths and compression of masked weights given their marginal variances.

    Args:
        weights: the exported (already masked) weight of each layer, keyed by module path.
        variances: the marginal posterior variance of every weight, same keys and shapes.
        masks: which weights are kept; by default the nonzero ones.
    """
    missing = sorted(set(weights) - set(variances))
    if missing:
        raise ValueError(f"no posterior variances for {', '.join(missing)}")
    layers = list(weights)
    keeps = {p: (masks[p] if masks is not None else weights[p] != 0).to(torch.bool) for p in layers}
    for p in layers:
        if variances[p].shape != weights[p].shape or keeps[p].shape != weights[p].shape:
            raise ValueError(f"{p}: weight, variance and mask shapes differ")
    kept_abs = [weights[p].detach()[keeps[p]].abs() for p in layers]
    overflow = max((float(a.max()) for a in kept_abs if a.numel()), default=0.0)
    e = exponent_bits(overflow)
    significand = {p: layer_significand_bits(variances[p], keeps[p]) for p in layers}
    return PrecisionReport(
        layers=layers,
        significand_bits=significand,
        exponent_bits=e,
        bits_per_weight={p: 1 + e + significand[p] for p in layers},
        weights=sum(weights[p].numel() for p in layers),
        shrunk={p: shrunk_size(weights[p] * keeps[p]) for p in layers},
    )


def layer_weights(model: nn.Module, paths: list[str]) -> dict[str, torch.Tensor]:
    """The ``weight`` tensor of each named layer of a model of standard layers."""
    modules = dict(model.named_modules())
    return {p: modules[p].weight.detach() for p in paths}


def round_model(model: nn.Module, significand: Mapping[str, int]) -> nn.Module:
    """A copy whose named layers' weights are rounded to each layer's fixed-point grid.

    Zeros stay zero, so the copy keeps every mask; biases are not rounded (bc rounds weights only).
    """
    rounded = copy.deepcopy(model)
    modules = dict(rounded.named_modules())
    with torch.no_grad():
        for path, bits in significand.items():
            weight = modules[path].weight
            weight.copy_(round_to_grid(weight, bits))
    return rounded
