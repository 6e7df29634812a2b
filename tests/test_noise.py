"""Standard-normal draws for the local reparameterisation, in either memory layout."""

from __future__ import annotations

import functools

import pytest
import torch

from sparsebench.toolkit import noise
from sparsebench.toolkit.noise import gaussian_preactivation, standard_normal_like


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


def reference_preactivation(mean: torch.Tensor, var: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.addcmul(mean, torch.sqrt(var + eps), standard_normal_like(mean))


@pytest.mark.parametrize("use_compiled", [False, True], ids=["eager", "compiled"])
def test_the_fused_draw_and_its_gradients_equal_autograd_through_the_formula(
    use_compiled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    fused = functools.partial(gaussian_preactivation, use_compiled=use_compiled)
    monkeypatch.setattr(noise, "COMPILED_DRAW_MIN_ELEMENTS", 0)  # the test tensors are small
    for layout in (torch.contiguous_format, torch.channels_last):
        torch.manual_seed(2)
        mean0 = torch.randn(6, 5, 4, 3).to(memory_format=layout)
        var0 = torch.rand(6, 5, 4, 3).to(memory_format=layout) + 0.1
        g = torch.randn(6, 5, 4, 3)
        results = []
        for fn in (fused, reference_preactivation):
            mean, var = mean0.clone().requires_grad_(), var0.clone().requires_grad_()
            torch.manual_seed(3)
            out = fn(mean, var, 1e-8)
            out.backward(g)
            results.append((out, mean.grad, var.grad))
        (out, d_mean, d_var), (ref, ref_mean, ref_var) = results
        if use_compiled:  # same draws; the compiled kernel may round the last bit differently
            torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
        else:
            assert torch.equal(out, ref)  # same draws, same arithmetic: runs stay reproducible
        assert torch.equal(d_mean, ref_mean)
        assert out.stride() == mean0.stride()  # the activation's layout is kept
        torch.testing.assert_close(d_var, ref_var, rtol=1e-6, atol=0)


def test_the_fused_draw_has_the_requested_moments_and_no_gradient_for_a_constant_variance() -> None:
    torch.manual_seed(4)
    mean = torch.linspace(-2, 2, 8).repeat(40_000, 1).requires_grad_()
    var = torch.linspace(0.1, 3, 8).repeat(40_000, 1)
    out = gaussian_preactivation(mean, var, 0.0)
    torch.testing.assert_close(out.mean(0), mean[0].detach(), atol=0.03, rtol=0)
    torch.testing.assert_close(out.var(0), var[0], atol=0, rtol=0.03)
    out.sum().backward()
    assert torch.equal(mean.grad, torch.ones_like(mean)) and var.grad is None


@pytest.mark.parametrize("use_compiled", [False, True], ids=["eager", "compiled"])
def test_the_scaled_draw_equals_the_draw_of_the_scaled_moments(
    use_compiled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """N(z mean, z^2 var) in one node: same draws and the same gradients for mean, var and z
    (z broadcast over positions, as a group conv's per-example, per-filter scale)."""
    monkeypatch.setattr(noise, "COMPILED_DRAW_MIN_ELEMENTS", 0)
    torch.manual_seed(5)
    mean0 = torch.randn(6, 5, 4, 3).to(memory_format=torch.channels_last)
    var0 = torch.rand(6, 5, 4, 3).to(memory_format=torch.channels_last) + 0.1
    z0 = torch.randn(6, 5, 1, 1)
    g = torch.randn(6, 5, 4, 3)
    results = []
    for fused in (True, False):
        mean, var, z = (t.clone().requires_grad_() for t in (mean0, var0, z0))
        torch.manual_seed(6)
        if fused:
            out = gaussian_preactivation(mean, var, 1e-8, use_compiled, scale=z)
        else:
            out = gaussian_preactivation(z * mean, z * z * var, 1e-8)
        out.backward(g)
        results.append((out, mean.grad, var.grad, z.grad))
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert results[0][3].shape == z0.shape
