"""Standard-normal draws for the local reparameterisation, in either memory layout."""

from __future__ import annotations

import torch

from sparsebench.noise import standard_normal_like


def test_channels_last_draws_keep_the_layout_and_are_standard_normal() -> None:
    torch.manual_seed(0)
    t = torch.empty(400, 20, 8, 8).to(memory_format=torch.channels_last)
    xi = standard_normal_like(t)
    assert xi.shape == t.shape and xi.stride() == t.stride() and xi.dtype == t.dtype
    assert abs(float(xi.mean())) < 0.01 and abs(float(xi.std()) - 1.0) < 0.01
    # Independent across channels and positions: neighbours in memory are uncorrelated.
    pairs = xi.permute(0, 2, 3, 1).reshape(-1, 20)
    corr = torch.corrcoef(pairs[:, :2].T)[0, 1]
    assert abs(float(corr)) < 0.02


def test_contiguous_draws_are_randn_like_draws() -> None:
    t = torch.empty(3, 4, 5)
    torch.manual_seed(1)
    a = standard_normal_like(t)
    torch.manual_seed(1)
    assert torch.equal(a, torch.randn_like(t))
