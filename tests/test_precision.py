"""Bit precision of Bayesian Compression (methods.md 4.7 items 3-6; every value of 11.12)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sparsebench.measure.precision import (
    exponent_bits,
    layer_significand_bits,
    precision_report,
    round_model,
    round_to_grid,
    significand_bits,
)


@pytest.mark.parametrize(
    ("variance", "bits"),
    [(0.0, 23), (1e-6, 18), (1e-4, 12), (1e-3, 8), (2.0**-10, 8), (0.01, 5), (0.1, 2), (0.25, 0)],
)
def test_significand_bits_reference_values(variance: float, bits: int) -> None:
    assert int(significand_bits(torch.tensor([variance], dtype=torch.float64))) == bits


def test_closed_form_equals_the_counting_definition() -> None:
    # b(V) = #{t in 1..23 : 2V < 2^-t}, including exact powers of two where ceil is delicate.
    torch.manual_seed(0)
    v = torch.cat(
        [10 ** torch.empty(2000, dtype=torch.float64).uniform_(-9, 0.5), 2.0 ** -torch.arange(0.0, 30)]
    )
    t = torch.arange(1, 24, dtype=torch.float64)
    counted = (2 * v[:, None] < 2.0 ** -t[None, :]).sum(dim=1)
    assert torch.equal(significand_bits(v), counted)


def test_negative_variance_is_rejected() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        significand_bits(torch.tensor([-1e-3]))


@pytest.mark.parametrize(
    ("overflow", "bits"), [(1.0, 1), (1.5, 2), (4.0, 3), (10.0, 4), (100.0, 4), (0.5, 1)]
)
def test_exponent_bits(overflow: float, bits: int) -> None:
    assert exponent_bits(overflow) == bits


@pytest.mark.parametrize("overflow", [0.49, 0.0, math.nan])
def test_exponent_bits_below_one_half_raise_a_clear_error(overflow: float) -> None:
    with pytest.raises(ValueError, match="undefined for a largest kept"):
        exponent_bits(overflow)


def test_layer_bits_are_the_ceiling_of_the_mean_over_kept_weights() -> None:
    v = torch.tensor([1e-3, 1e-3, 0.1, 0.0])  # b = 8, 8, 2, 23
    assert layer_significand_bits(v) == math.ceil((8 + 8 + 2 + 23) / 4)
    keep = torch.tensor([True, True, True, False])  # the removed weight (V = 0) must not count
    assert layer_significand_bits(v, keep) == 6  # ceil(18 / 3)
    assert layer_significand_bits(v, torch.zeros(4, dtype=torch.bool)) == 0


def test_all_dense_layer_with_known_variance() -> None:
    # Every V = 1e-3 (8 bits) and overflow 1.5 (2 exponent bits): 1 + 2 + 8 = 11 bits per weight.
    w = torch.full((6, 5), 0.3)
    w[0, 0] = -1.5
    report = precision_report({"fc": w}, {"fc": torch.full_like(w, 1e-3)})
    assert report.significand_bits == {"fc": 8}
    assert report.exponent_bits == 2
    assert report.bits_per_weight == {"fc": 11}
    assert report.compression_precision == pytest.approx(32 / 11)
    assert report.compression_precision == pytest.approx(2.909, abs=5e-4)
    assert report.compression_structured == 1.0


def test_precision_compression_counts_the_shrunk_layers() -> None:
    # 2 of 4 rows and 1 of 3 columns of fc1 removed; fc2 untouched. Mask given explicitly.
    w1 = torch.ones(4, 3)
    mask1 = torch.ones(4, 3, dtype=torch.bool)
    mask1[2:] = False
    mask1[:, 1] = False
    w2 = torch.full((2, 4), 2.0)
    report = precision_report(
        {"fc1": w1 * mask1, "fc2": w2},
        {"fc1": torch.full((4, 3), 0.01), "fc2": torch.full((2, 4), 1e-6)},
        {"fc1": mask1, "fc2": torch.ones(2, 4, dtype=torch.bool)},
    )
    e = exponent_bits(2.0)
    assert report.shrunk == {"fc1": 4, "fc2": 8}
    assert report.bits_per_weight == {"fc1": 1 + e + 5, "fc2": 1 + e + 18}
    expected = 32 * (12 + 8) / (4 * (1 + e + 5) + 8 * (1 + e + 18))
    assert report.compression_precision == pytest.approx(expected)
    assert report.compression_structured == pytest.approx(20 / 12)
    metrics = report.as_metrics()
    assert metrics["bits_significand.fc1"] == 5 and metrics["bits_exponent"] == e


def test_missing_variances_are_an_error() -> None:
    with pytest.raises(ValueError, match="no posterior variances for fc2"):
        precision_report({"fc1": torch.ones(2, 2), "fc2": torch.ones(2, 2)}, {"fc1": torch.ones(2, 2)})


def test_rounding_to_the_fixed_point_grid() -> None:
    assert round_to_grid(torch.tensor([0.30, -0.30]), 3).tolist() == [0.25, -0.25]
    assert round_to_grid(torch.tensor([0.0625, -0.0625, 0.0]), 3).tolist() == [0.125, 0.0, 0.0]  # halves up


def test_round_model_keeps_zeros_and_leaves_the_original_alone() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(8, 4)
    with torch.no_grad():
        layer.weight[:, :3] = 0.0
    model = nn.Sequential(layer)
    rounded = round_model(model, {"0": 2})
    w = rounded[0].weight
    assert torch.equal(w[:, :3], torch.zeros(4, 3))
    assert torch.equal(w, torch.floor(layer.weight / 0.25 + 0.5) * 0.25)
    assert torch.equal(rounded[0].bias, layer.bias)
    assert not torch.equal(layer.weight, w)
