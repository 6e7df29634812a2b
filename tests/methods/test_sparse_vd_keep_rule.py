"""Sparse VD's keep rule ``log alpha < threshold`` at its boundaries, and one rule everywhere.

A weight *reaching* the threshold is removed, so the rule is strict. Two places pin it: a log alpha
of exactly 3.0 (the default threshold) and the +8 clamp, where many dead weights sit and which is
the last point of the threshold curve. A ``<=`` keeps both, and these tests fail. The training
forward (the fused kernel), the reference formulas, ``keep_mask``, ``masks``/``masks_at`` and the
export must all draw the line in the same place.
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from sparsebench.methods.sparse_vd import (
    LOG_ALPHA_MAX,
    Conv2dSVD,
    LinearSVD,
    SparseVD,
    SparseVDConfig,
    weight_side,
)
from sparsebench.methods.sparse_vd.recurrent import WeightSVD

EPS_THETA = 1e-8

TARGETS = (-2.0, 2.5, 3.0, 3.0, 3.5, 7.5, 20.0, 30.0)
"""Unclamped log alphas of the test weights: below, at and above 3, and two beyond the +8 clamp."""

THETAS = (0.01, -0.02, 0.01, -0.015, 0.02, -0.01, 0.01, -0.03)
"""Weights with |theta|^2 + eps far below 1, so log sigma^2 = target + log(theta^2 + eps) is exact and
subtracting the log back gives the target exactly (both terms have the same binary exponent range)."""


def posterior(layer: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """Fill ``layer`` so its log alphas repeat TARGETS; return the exact clamped log alphas expected."""
    shape = layer.weight.shape
    n = layer.weight.numel()
    theta = torch.tensor(THETAS, dtype=dtype).repeat(n // len(THETAS) + 1)[:n].view(shape)
    target = torch.tensor(TARGETS, dtype=dtype).repeat(n // len(TARGETS) + 1)[:n].view(shape)
    with torch.no_grad():
        layer.weight.copy_(theta)
        layer.log_sigma2.copy_(target + torch.log(theta * theta + EPS_THETA))
    expected = target.clamp(max=LOG_ALPHA_MAX)
    assert torch.equal(layer.log_alpha(), expected), "precondition: the test's log alphas are exact"
    return expected


def layers(dtype: torch.dtype, threshold: float) -> list[nn.Module]:
    cfg = SparseVDConfig(threshold=threshold, train_mask=True, variance_mask="all")
    linear = LinearSVD.from_dense(nn.Linear(8, 4).to(dtype), cfg)
    conv = Conv2dSVD.from_dense(nn.Conv2d(2, 4, 2).to(dtype), cfg)
    matrix = WeightSVD(torch.zeros(4, 8, dtype=dtype), cfg)
    return [linear, conv, matrix]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_log_alpha_exactly_at_the_threshold_is_removed(dtype: torch.dtype) -> None:
    layer = layers(dtype, 3.0)[0]
    log_alpha = posterior(layer, dtype)
    keep = layer.keep_mask()
    assert not keep[log_alpha == 3.0].any() and int((log_alpha == 3.0).sum()) == 8
    assert keep[log_alpha == 2.5].all() and not keep[log_alpha == 3.5].any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_at_threshold_8_every_weight_on_the_clamp_is_removed(dtype: torch.dtype) -> None:
    layer = layers(dtype, 3.0)[0]
    log_alpha = posterior(layer, dtype)
    on_clamp = log_alpha == LOG_ALPHA_MAX
    assert int(on_clamp.sum()) == 8
    keep = layer.keep_mask(LOG_ALPHA_MAX)
    assert not keep[on_clamp].any()
    assert keep[~on_clamp].all()  # 7.5 and below stay


def test_masks_and_masks_at_use_the_strict_rule_on_the_absolute_axis() -> None:
    method = SparseVD(SparseVDConfig())
    model = method.convert(nn.Sequential(OrderedDict(fc=nn.Linear(8, 4))).double())
    log_alpha = posterior(model.fc, torch.float64)
    assert method.curve_axis == "log_alpha_threshold" and method.chosen_level() == 3.0
    assert torch.equal(method.masks(model)["fc"], log_alpha < 3.0)
    assert torch.equal(method.masks_at(model, 3.0)["fc"], method.masks(model)["fc"])
    assert torch.equal(method.masks_at(model, LOG_ALPHA_MAX)["fc"], log_alpha < LOG_ALPHA_MAX)
    assert LOG_ALPHA_MAX in method.curve_levels()  # the curve's last point is the clamp
    exported = method.export(model, method.masks(model))
    assert torch.equal(exported.fc.weight != 0, log_alpha < 3.0)


@pytest.mark.parametrize("threshold", [3.0, LOG_ALPHA_MAX])
@pytest.mark.parametrize("kind", ["linear", "conv", "recurrent"])
def test_training_forward_masks_the_weights_keep_mask_removes(kind: str, threshold: float) -> None:
    """The fused training kernel zeroes exactly the weights ``keep_mask`` drops, boundaries included,
    and (variance_mask=all) takes their noise too; the reference formulas agree."""
    layer = layers(torch.float64, threshold)[["linear", "conv", "recurrent"].index(kind)]
    posterior(layer, torch.float64)
    layer.train()
    theta_used, var = layer._train_weights()
    keep = layer.keep_mask()
    assert (layer.weight != 0).all()
    assert torch.equal(theta_used != 0, keep)
    assert torch.equal(var != 0, keep)
    reference_theta, reference_var = weight_side(
        layer.weight, layer.log_sigma2, threshold, train_mask=True, sigma2_variance=False, mask_variance=True
    )
    assert torch.equal(reference_theta != 0, keep) and torch.equal(reference_var != 0, keep)
    torch.testing.assert_close(theta_used, reference_theta, rtol=0, atol=0)


def test_evaluation_forward_uses_the_same_masks() -> None:
    layer = layers(torch.float64, 3.0)[0]
    log_alpha = posterior(layer, torch.float64)
    layer.eval()
    assert torch.equal(layer._eval_weight() != 0, log_alpha < 3.0)
