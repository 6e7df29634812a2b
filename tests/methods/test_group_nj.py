"""Group NJ and group horseshoe (methods.md 4; checks of 11.11), and their shared machinery."""

from __future__ import annotations

import copy
import math
from collections import OrderedDict

import pytest
import torch
from torch import distributions as D
from torch import nn
from torch.nn import functional as F

from sparsebench.errors import ConfigError
from sparsebench.measure.structured import shrink_sequential, structured_table
from sparsebench.method import StepContext
from sparsebench.methods._group import GroupConv2d, GroupLinear, auto_threshold, fit_two_gaussians
from sparsebench.methods.group_hs import GroupHS, HSScale, kl_lognormal_gamma, kl_lognormal_invgamma
from sparsebench.methods.group_nj import GroupNJ, GroupNJConfig, NJScale
from sparsebench.toolkit.kl import sparse_vd_kl


def mini_lenet5() -> nn.Sequential:
    """LeNet-5 in miniature: conv -> pool -> conv -> pool -> flatten (4 positions per channel) -> fc -> fc."""
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 3, 3),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(3, 4, 3),
            pool2=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(16, 6),
            relu=nn.ReLU(),
            fc2=nn.Linear(6, 3),
        )
    ).double()


def nj_linear(i: int, o: int, bias: bool = True) -> GroupLinear:
    return GroupLinear(nn.Linear(i, o, bias=bias).double(), NJScale(i).double(), eps0=0.0)


def nj_conv(i: int, o: int, k: int, **kw: int) -> GroupConv2d:
    return GroupConv2d(nn.Conv2d(i, o, k, **kw).double(), NJScale(o).double(), eps0=0.0)


def set_(param: torch.Tensor, values: list[float] | torch.Tensor) -> None:
    with torch.no_grad():
        param.copy_(torch.as_tensor(values, dtype=param.dtype).view_as(param))


# --- 11.11: the KL -------------------------------------------------------------------------------


@pytest.mark.parametrize(("mu", "var"), [(0.5, 0.3), (-1.2, 0.05), (0.0, 2.0), (0.03, 1e-3)])
def test_weight_kl_matches_monte_carlo(mu: float, var: float) -> None:
    torch.manual_seed(0)
    layer = nj_linear(1, 1, bias=False)
    set_(layer.weight_mu, [mu])
    set_(layer.weight_logvar, [math.log(var)])
    weight_kl = (layer.kl() - layer.scale.kl()).detach()
    w = mu + math.sqrt(var) * torch.randn(100_000, dtype=torch.float64)
    q, p = D.Normal(mu, math.sqrt(var)), D.Normal(0.0, 1.0)
    mc = (q.log_prob(w) - p.log_prob(w)).mean()
    assert abs(float(weight_kl) - float(mc)) < 0.01


def test_bias_kl_is_the_same_exact_gaussian_kl() -> None:
    layer = nj_linear(2, 3)
    set_(layer.bias_mu, [0.1, -0.4, 2.0])
    set_(layer.bias_logvar, [-1.0, -5.0, 0.5])
    without_bias = (
        layer.kl()
        - layer.scale.kl()
        - 0.5 * (layer.weight_logvar.exp() + layer.weight_mu**2 - 1 - layer.weight_logvar).sum()
    )
    mu, lv = layer.bias_mu, layer.bias_logvar
    expected = sum(0.5 * (math.exp(v) + m * m - 1 - v) for m, v in zip(mu.tolist(), lv.tolist(), strict=True))
    assert float(without_bias.detach()) == pytest.approx(expected, rel=1e-12)


def test_z_kl_is_the_sparse_vd_kl_at_log_alpha_z() -> None:
    scale = NJScale(4).double()
    set_(scale.z_mu, [1.0, -0.5, 2.0, 1e-3])
    set_(scale.z_logvar, [0.0, -3.0, 1.0, -20.0])
    log_alpha = scale.z_logvar - torch.log(scale.z_mu**2 + 1e-8)
    torch.testing.assert_close(scale.log_alpha(), log_alpha)
    assert float(scale.kl().detach()) == pytest.approx(
        float(sparse_vd_kl(log_alpha).sum().detach()), rel=1e-12
    )
    set_(scale.z_mu, [1.0] * 4)
    set_(scale.z_logvar, [0.0] * 4)  # log alpha ~ 0: the approximation's 0.43124 of 11.1
    assert float(scale.kl().detach()) / 4 == pytest.approx(0.43124, abs=2e-5)


def test_regularizer_is_kl_over_n() -> None:
    torch.manual_seed(0)
    method = GroupNJ()
    model = method.convert(mini_lenet5())
    ctx = StepContext(epoch=0, step=0, steps_per_epoch=10, total_epochs=1, num_train=1234)
    reg = method.regularizer(model, ctx)
    assert float(reg.detach()) == pytest.approx(float(method.kl(model).detach()) / 1234, rel=1e-12)
    reg.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    warm = GroupNJ(GroupNJ.Config(kl_warmup_start=2, kl_warmup_epochs=4))
    assert warm.regularizer(model, ctx) is None


# --- 11.11: posterior and forward ----------------------------------------------------------------


def test_marginal_variance_matches_monte_carlo() -> None:
    torch.manual_seed(0)
    layer = nj_linear(3, 2)
    set_(layer.scale.z_mu, [0.8, -0.5, 1.3])
    set_(layer.scale.z_logvar, [math.log(0.1), math.log(0.3), math.log(0.05)])
    set_(layer.weight_mu, [0.4, -1.0, 0.05, 2.0, 0.0, -0.3])
    set_(layer.weight_logvar, [math.log(v) for v in (0.02, 0.2, 0.01, 0.5, 0.04, 1e-3)])
    n = 1_000_000
    z = layer.scale.z_mu + layer.scale.z_logvar.mul(0.5).exp() * torch.randn(n, 1, 3, dtype=torch.float64)
    w = layer.weight_mu + layer.weight_logvar.mul(0.5).exp() * torch.randn(n, 2, 3, dtype=torch.float64)
    mc = (z * w).var(dim=0)
    torch.testing.assert_close(layer.posterior_variance().detach(), mc, rtol=0.02, atol=0)


def test_conv_posterior_puts_z_on_the_output_channel_axis() -> None:
    # 3 filters and a 3-wide kernel: bc's broadcast of z (O,) onto the last axis would run silently.
    torch.manual_seed(0)
    layer = nj_conv(2, 3, 3)
    set_(layer.scale.z_mu, [1.0, 2.0, -3.0])
    set_(layer.scale.z_logvar, [math.log(v) for v in (0.1, 0.2, 0.3)])
    mean, var = layer.mean_weight().detach(), layer.posterior_variance().detach()
    s2 = layer.weight_logvar.exp()
    for o, (mz, vz) in enumerate([(1.0, 0.1), (2.0, 0.2), (-3.0, 0.3)]):
        torch.testing.assert_close(mean[o], layer.weight_mu[o] * mz)
        expected = mz * mz * s2[o] + vz * layer.weight_mu[o] ** 2 + vz * s2[o]
        torch.testing.assert_close(var[o], expected.detach())
    assert not torch.allclose(mean, (layer.weight_mu * layer.scale.z_mu).detach())  # the bc bug


def test_zero_noise_linear_equals_dense_layer_with_mu_times_mu_z() -> None:
    torch.manual_seed(0)
    layer = nj_linear(5, 4)
    set_(layer.scale.z_mu, torch.randn(5, dtype=torch.float64))
    for lv in (layer.scale.z_logvar, layer.weight_logvar, layer.bias_logvar):
        set_(lv, torch.full_like(lv, -60.0))
    x = torch.randn(7, 5, dtype=torch.float64)
    expected = F.linear(x, layer.weight_mu * layer.scale.z_mu, layer.bias_mu)
    torch.testing.assert_close(layer.train()(x), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(layer.eval()(x), expected, rtol=0, atol=1e-12)  # default threshold keeps all


def test_zero_noise_conv_equals_dense_conv_with_z_on_filters_and_bias() -> None:
    torch.manual_seed(0)
    layer = nj_conv(3, 4, 3, padding=1, stride=2)
    set_(layer.scale.z_mu, [0.5, -1.0, 2.0, 1.5])
    for lv in (layer.scale.z_logvar, layer.weight_logvar, layer.bias_logvar):
        set_(lv, torch.full_like(lv, -60.0))
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    z = layer.scale.z_mu
    expected = F.conv2d(x, layer.weight_mu * z[:, None, None, None], layer.bias_mu * z, stride=2, padding=1)
    torch.testing.assert_close(layer.train()(x), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(layer.eval()(x), expected, rtol=0, atol=1e-12)


def _moments_within_se(samples: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, k: float = 5.0) -> None:
    n = samples.shape[0]
    centred = samples - samples.mean(dim=0)
    sample_var = centred.pow(2).mean(dim=0)
    se_mean = (sample_var / n).sqrt()
    se_var = (
        (centred.pow(4).mean(dim=0) - sample_var**2) / n
    ).sqrt()  # from the 4th moment: z*w is not normal
    assert ((samples.mean(dim=0) - mean).abs() <= k * se_mean).all()
    assert ((sample_var - var).abs() <= k * se_var).all()


def test_lrt_linear_moments_match_the_marginal_posterior() -> None:
    # E[y] = (x mu_z) mu^T + b and Var[y] = x^2 V^T + sigma_b^2 with V the marginal weight variance.
    torch.manual_seed(0)
    layer = nj_linear(5, 3).train()
    set_(layer.scale.z_mu, [1.0, 0.7, -0.4, 1.2, 0.9])
    set_(layer.scale.z_logvar, torch.log(torch.tensor([0.05, 0.2, 0.1, 0.01, 0.3])))
    set_(layer.weight_logvar, torch.empty(15).uniform_(-4, -1))
    set_(layer.bias_logvar, [-2.0, -3.0, -1.0])
    x = torch.randn(4, 5, dtype=torch.float64)
    reps = 50_000
    with torch.no_grad():
        y = layer(x.repeat(reps, 1)).view(reps, 4, 3)
        mean = F.linear(x * layer.scale.z_mu, layer.weight_mu, layer.bias_mu)
        var = F.linear(x * x, layer.posterior_variance(), layer.bias_logvar.exp())
    _moments_within_se(y, mean, var)


def test_lrt_conv_moments_with_one_z_per_example_and_filter() -> None:
    torch.manual_seed(1)
    layer = nj_conv(3, 4, 3, padding=1, stride=2).train()
    set_(layer.scale.z_mu, [1.0, 0.5, -0.8, 1.5])
    set_(layer.scale.z_logvar, torch.log(torch.tensor([0.1, 0.05, 0.2, 0.02])))
    set_(layer.weight_logvar, torch.empty(4 * 3 * 9).uniform_(-5, -2))
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    reps = 40_000
    with torch.no_grad():
        y = layer(x.repeat(reps, 1, 1, 1)).view(reps, 2, 4, 3, 3)
        m = F.conv2d(x, layer.weight_mu, layer.bias_mu, stride=2, padding=1)
        v = F.conv2d(x * x, layer.weight_logvar.exp(), layer.bias_logvar.exp(), stride=2, padding=1)
        mz, vz = layer.scale.z_mu[:, None, None], layer.scale.z_logvar.exp()[:, None, None]
    _moments_within_se(y, mz * m, vz * m * m + (mz * mz + vz) * v)
    # z is shared over the positions of a filter: two positions covary by Var[z] m1 m2.
    a, b = y[:, 0, 0, 0, 0], y[:, 0, 0, 1, 1]
    prod = (a - a.mean()) * (b - b.mean())
    expected = vz[0, 0, 0] * m[0, 0, 0, 0] * m[0, 0, 1, 1]
    assert abs(float(prod.mean() - expected)) <= 5 * float(prod.std()) / math.sqrt(reps)


# --- 11.11: clipping -----------------------------------------------------------------------------


def test_clip_var_caps_weight_and_bias_log_variances_after_a_step() -> None:
    torch.manual_seed(0)
    method = GroupNJ(GroupNJ.Config(clip_var=0.04, clip_var_layers=["all"]))
    model = method.convert(mini_lenet5())
    for name, p in model.named_parameters():
        if "logvar" in name:
            set_(p, torch.zeros_like(p))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ctx = StepContext(0, 0, 1, 1, 100, optimizer)
    loss = model(torch.randn(4, 1, 14, 14, dtype=torch.float64)).pow(2).mean() + method.regularizer(
        model, ctx
    )
    loss.backward()
    optimizer.step()
    method.on_step_end(model, ctx)
    for name, p in model.named_parameters():
        if name.endswith(("weight_logvar", "bias_logvar")):
            assert float(p.max()) <= math.log(0.04) + 1e-12  # = -3.2189
        if name.endswith("z_logvar"):  # z's variance is never clipped
            assert float(p.max()) > math.log(0.04)


def test_default_clip_var_applies_to_the_first_linear_layer_only() -> None:
    method = GroupNJ()
    model = method.convert(mini_lenet5())
    clips = {path: layer.clip_var for path, layer in method.layers(model)}
    assert clips == {"conv1": None, "conv2": None, "fc1": 0.04, "fc2": None}


# --- conversion, masks, propagation, export ------------------------------------------------------


def test_convert_takes_the_standard_weights_and_bc_initial_variances() -> None:
    torch.manual_seed(0)
    dense = mini_lenet5()
    model = GroupNJ().convert(copy.deepcopy(dense))
    torch.testing.assert_close(model.fc1.weight_mu.detach(), dense.fc1.weight.detach())
    torch.testing.assert_close(model.conv2.bias_mu.detach(), dense.conv2.bias.detach())
    assert abs(float(model.fc1.scale.z_mu.mean()) - 1.0) < 0.01
    assert abs(float(model.conv1.weight_logvar.mean()) + 9.0) < 0.02


def kill(layer: nn.Module, groups: list[int]) -> None:
    """Set log alpha_z = +5 (removed) on ``groups`` and -9 elsewhere, with mu_z = 1."""
    lv = torch.full_like(layer.scale.z_logvar, -9.0)
    lv[groups] = 5.0
    set_(layer.scale.z_logvar, lv)
    set_(layer.scale.z_mu, torch.ones_like(layer.scale.z_mu))


def test_group_masks_propagate_along_the_chain_through_the_flatten() -> None:
    torch.manual_seed(0)
    method = GroupNJ(GroupNJ.Config(thresholds=[-3.0, -3.0, -3.0, -3.0]))
    model = method.convert(mini_lenet5())
    kill(model.conv1, [1])
    kill(model.conv2, [2])
    kill(model.fc1, [0, 1, 2, 3, 13])  # all 4 inputs of conv2's filter 0, and one input of filter 3
    kill(model.fc2, [5])
    masks = method.masks(model)

    conv1 = torch.ones(3, 1, 3, 3, dtype=torch.bool)
    conv1[1] = False
    conv2 = torch.ones(4, 3, 3, 3, dtype=torch.bool)
    conv2[:, 1] = False  # conv1's dead filter is a dead input channel
    conv2[[0, 2]] = False  # own z (2) and every flattened input dropped by fc1 (0)
    fc1 = torch.ones(6, 16, dtype=torch.bool)
    fc1[:, 0:4] = False
    fc1[:, 8:12] = False  # conv2's filter 2 kills its 4 flattened inputs
    fc1[:, 13] = False
    fc1[5] = False  # fc2 drops input 5, so fc1's neuron 5 goes
    fc2 = torch.ones(3, 6, dtype=torch.bool)
    fc2[:, 5] = False
    for path, expected in {"conv1": conv1, "conv2": conv2, "fc1": fc1, "fc2": fc2}.items():
        assert torch.equal(masks[path], expected), path

    model.eval()
    exported = method.export(model, masks).eval()
    assert not exported._forward_pre_hooks  # a plain model: the evaluation mask hook stays behind
    assert all(
        type(m) in (nn.Conv2d, nn.Linear, nn.MaxPool2d, nn.Flatten, nn.ReLU) for m in exported.children()
    )
    for path, mask in masks.items():
        weight = dict(exported.named_modules())[path].weight
        assert not bool(weight[~mask].any())
        expected_w = dict(model.named_modules())[path].mean_weight().detach() * mask
        torch.testing.assert_close(weight.detach(), expected_w)
    assert float(exported.conv1.bias[1]) == 0.0 and float(exported.conv2.bias[2]) == 0.0
    x = torch.randn(5, 1, 14, 14, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), model(x), rtol=0, atol=1e-12)
        small = shrink_sequential(exported, x[:1])
        torch.testing.assert_close(small(x), exported(x), rtol=0, atol=1e-12)
    assert sum(m.weight.numel() for m in small.modules() if isinstance(m, (nn.Linear, nn.Conv2d))) == int(
        structured_table(exported).shrunk.sum()
    )


def test_posterior_variances_have_the_export_shapes() -> None:
    torch.manual_seed(0)
    method = GroupNJ()
    model = method.convert(mini_lenet5())
    variances = method.posterior_variances(model)
    exported = method.export(model, method.masks(model))
    modules = dict(exported.named_modules())
    assert list(variances) == ["conv1", "conv2", "fc1", "fc2"]
    for path, v in variances.items():
        assert v.shape == modules[path].weight.shape and not v.requires_grad
        torch.testing.assert_close(v, dict(model.named_modules())[path].posterior_variance().detach())


def test_curve_shift_keeps_more_groups_as_it_grows() -> None:
    torch.manual_seed(0)
    method = GroupNJ(GroupNJ.Config(thresholds=[0.0, 0.0, 0.0, 0.0]))
    model = method.convert(mini_lenet5())
    for _, layer in method.layers(model):
        set_(layer.scale.z_logvar, torch.linspace(-6, 6, layer.num_groups))
    kept = [sum(int(m.sum()) for m in method.masks_at(model, s).values()) for s in method.curve_levels()]
    assert kept == sorted(kept) and kept[0] < kept[-1]
    assert method.masks_at(model, 0.0)["fc2"].equal(method.masks(model)["fc2"])


def test_config_errors_name_the_fix() -> None:
    with pytest.raises(ConfigError, match="one per layer"):
        GroupNJ(GroupNJ.Config(thresholds=[-3.0])).convert(mini_lenet5())
    with pytest.raises(ConfigError, match="first_linear"):
        GroupNJ(GroupNJ.Config(clip_var_layers=["fc9"])).convert(mini_lenet5())


def test_not_applicable_when_a_linear_layer_feeds_a_conv() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Unflatten(1, (1, 2, 2)), nn.Conv2d(1, 2, 1))
    assert "chain" in GroupNJ().not_applicable(model)
    assert GroupNJ().not_applicable(mini_lenet5()) is None


# --- automatic thresholds ------------------------------------------------------------------------


def test_auto_threshold_is_the_midpoint_between_two_modes() -> None:
    torch.manual_seed(0)
    scores = torch.cat([torch.randn(200) * 0.5 - 7.0, torch.randn(100) * 1.5 + 4.0])
    fit = fit_two_gaussians(scores)
    assert fit.means[0] == pytest.approx(-7.0, abs=0.15) and fit.means[1] == pytest.approx(4.0, abs=0.4)
    assert auto_threshold(scores, fallback=-3.0) == pytest.approx(fit.midpoint)
    assert auto_threshold(torch.randn(300) - 6.0, fallback=-3.0) == -3.0  # one mode: no cut inside it
    # A tight mode with a tail is "bimodal" to the fit, but both modes sit below the fallback.
    tail = torch.cat([torch.randn(90) * 0.2 - 7.0, torch.randn(10) * 0.3 - 5.8])
    assert fit_two_gaussians(tail).separation > 2
    assert auto_threshold(tail, fallback=-3.0) == -3.0


def needs_early_groups(exported: nn.Module) -> float:
    """A validation error for calibration tests: 0 while every filter of conv1, filters 0-1 of
    conv2 and fc1's inputs 0-7 are alive, 10 otherwise."""
    alive = (
        bool(exported.conv1.weight.flatten(1).any(dim=1).all())
        and bool(exported.conv2.weight[:2].flatten(1).any(dim=1).all())
        and bool(exported.fc1.weight[:, :8].any(dim=0).all())
    )
    return 0.0 if alive else 10.0


def test_calibrate_fixes_and_returns_the_chosen_thresholds() -> None:
    """Base thresholds (midpoint, or the fallback for a single mode), then one shift chosen on the
    validation metric: the sparsest one that keeps every group the validation needs."""
    torch.manual_seed(0)
    method = GroupNJ(GroupNJConfig(calibration="shared"))
    model = method.convert(mini_lenet5())
    # fc1's inputs: 8 needed (-8), 4 dispensable between the modes (-2), 4 dead (+6).
    scores = torch.cat([torch.full((8,), -8.0), torch.full((4,), -2.0), torch.full((4,), 6.0)])
    set_(model.fc1.scale.z_logvar, (scores + 0.1 * torch.randn(16)).double())
    midpoint = auto_threshold(model.fc1.scale.prune_score(), -3.0)
    assert -6.0 < midpoint < 0.0

    chosen = method.calibrate(model, needs_early_groups)
    # The sparsest acceptable masks remove fc1's inputs 8-15: fc1's threshold at most -2.3, and above
    # -7.7; conv1's filters (log alpha -9 +- 0.03 at init, fallback -3) need a shift above -6. Of the
    # shifts on the 0.5 grid that give those masks, ties go to the largest.
    grid = method.curve_levels()
    want = max(g for g in grid if -7.7 < midpoint + g <= -2.3 and g > -6.0)
    assert chosen["shift"] == want
    assert chosen["val_chosen"] == 0.0 and chosen["val_best"] == 0.0
    assert chosen["threshold.fc1"] == pytest.approx(midpoint + want)
    assert chosen["threshold.conv1"] == pytest.approx(-3.0 + want)
    assert float(model.fc1.threshold) == pytest.approx(chosen["threshold.fc1"])
    assert int(model.fc1.group_keep().sum()) == 8
    assert int(model.conv1.group_keep().sum()) == 3


def test_per_layer_calibration_prunes_a_layer_the_shared_shift_cannot_reach() -> None:
    """conv2's needed filters sit just below its base threshold, fc1's dispensable inputs far
    below fc1's: no common shift removes the latter without killing the former."""
    torch.manual_seed(0)
    fc1_scores = torch.cat([torch.full((8,), -8.0), torch.full((4,), -2.0), torch.full((4,), 10.0)])
    conv2_scores = torch.tensor([-1.0, -1.0, 1.0, 1.0])

    kept = {}
    for rule in ("shared", "per_layer"):
        method = GroupNJ(GroupNJConfig(calibration=rule))
        model = method.convert(mini_lenet5())
        set_(model.fc1.scale.z_logvar, (fc1_scores + 0.01 * torch.randn(16)).double())
        set_(model.conv2.scale.z_logvar, conv2_scores.double())
        # The premise: fc1's base keeps the dispensable inputs, conv2's sits 1 above its needed filters.
        assert auto_threshold(model.fc1.scale.prune_score(), -3.0) > -1.0
        assert auto_threshold(model.conv2.scale.prune_score(), -3.0) == pytest.approx(0.0, abs=0.05)
        chosen = method.calibrate(model, needs_early_groups)
        assert chosen["val_chosen"] == 0.0
        kept[rule] = int(model.fc1.group_keep().sum())
        masks = method.masks(model)
        assert needs_early_groups(method.export(model, masks)) == 0.0
        kept[rule + " weights"] = sum(int(m.sum()) for m in masks.values())
    assert kept["shared"] == 12 and kept["per_layer"] == 8
    assert kept["per_layer weights"] < kept["shared weights"]


def test_configured_thresholds_are_not_shifted() -> None:
    method = GroupNJ(GroupNJConfig(thresholds=[-2.0, -3.0, -4.0, -5.0]))
    model = method.convert(mini_lenet5())
    chosen = method.calibrate(model, validate=lambda m: 0.0)
    assert "shift" not in chosen
    assert [chosen[f"threshold.{p}"] for p in ("conv1", "conv2", "fc1", "fc2")] == [-2.0, -3.0, -4.0, -5.0]


def test_auto_threshold_cuts_between_modes_even_when_the_kept_mode_straddles_the_fallback() -> None:
    """After a long run the kept groups of a layer spread around -3 and the dead ones sit near +10;
    bc's -3 would remove half of the kept ones."""
    torch.manual_seed(0)
    scores = torch.cat([torch.randn(300) * 1.0 - 3.0, torch.randn(200) * 0.7 + 10.0])
    threshold = auto_threshold(scores, fallback=-3.0)
    assert 2.0 < threshold < 5.0
    assert int((scores[:300] < threshold).sum()) == 300


# --- group horseshoe -----------------------------------------------------------------------------


def test_product_of_gamma_and_inverse_gamma_is_half_cauchy() -> None:
    torch.manual_seed(0)
    tau0, n = 1e-3, 1_000_000
    s_a = D.Gamma(0.5, tau0**-2).sample((n,)).double()
    s_b = 1.0 / D.Gamma(0.5, 1.0).sample((n,)).double()
    s = (s_a * s_b).sqrt()
    assert float(s.median()) == pytest.approx(tau0, rel=0.01)  # half-Cauchy median = its scale
    assert float((s < 3 * tau0).double().mean()) == pytest.approx(2 / math.pi * math.atan(3), abs=0.003)


@pytest.mark.parametrize(("mu", "var"), [(0.3, 0.2), (-2.0, 0.05), (1.0, 1.0)])
def test_lognormal_kls_match_monte_carlo(mu: float, var: float) -> None:
    torch.manual_seed(0)
    n = 1_000_000
    q = D.LogNormal(mu, math.sqrt(var))
    x = q.sample((n,)).double()
    m, lv = torch.tensor(mu, dtype=torch.float64), torch.tensor(math.log(var), dtype=torch.float64)
    for prior, closed in [
        (D.Gamma(0.5, 3.0), kl_lognormal_gamma(m, lv, 0.5, 3.0)),
        (D.InverseGamma(0.5, 2.0), kl_lognormal_invgamma(m, lv, 0.5, 2.0)),
    ]:
        ratio = q.log_prob(x) - prior.log_prob(x)
        se = float(ratio.std()) / math.sqrt(n)
        assert abs(float(closed) - float(ratio.mean())) < 5 * se + 1e-6


def test_hs_scale_moments_and_initial_value() -> None:
    torch.manual_seed(0)
    scale = HSScale(3, tau0=1e-5).double()
    torch.testing.assert_close(scale.mean().detach(), torch.ones(3, dtype=torch.float64), rtol=1e-3, atol=0)
    set_(scale.za_mu, [-1.0, 0.0, 0.5])
    set_(scale.za_logvar, [math.log(0.4), math.log(0.1), math.log(1.0)])
    z = scale.sample(1_000_000).detach()
    torch.testing.assert_close(z.mean(0), scale.mean().detach(), rtol=0.01, atol=0)
    torch.testing.assert_close(z.var(0), scale.variance().detach(), rtol=0.03, atol=0)
    m, v = scale.log_moments()
    torch.testing.assert_close(scale.prune_score(), v - m)
    scale.score = "median"
    torch.testing.assert_close(scale.prune_score(), -m)


def test_hs_mode_score_is_minus_the_log_of_the_density_peak() -> None:
    """The default score finds the scale a group's posterior is densest at, so a group whose q(z)
    widens back toward the prior scores higher than one with the same median and a narrow q(z)."""
    scale = HSScale(2, tau0=1e-5).double()
    set_(scale.za_mu, [0.0, 0.0])
    set_(scale.za_logvar, [math.log(0.01), math.log(4.0)])
    m, v = (t.detach() for t in scale.log_moments())
    grid = torch.linspace(-12.0, 3.0, 300_001, dtype=torch.float64)  # log z
    log_density = -grid[:, None] - (grid[:, None] - m) ** 2 / (2 * v)  # log pdf of z, up to a constant
    peak = grid[log_density.argmax(0)]
    torch.testing.assert_close(scale.prune_score().detach(), -peak, rtol=0, atol=1e-4)
    assert float(scale.prune_score()[1]) > float(scale.prune_score()[0]) + 0.9


def test_group_hs_trains_exports_and_gives_precision_variances() -> None:
    torch.manual_seed(0)
    method = GroupHS()
    dense = mini_lenet5()
    model = method.convert(copy.deepcopy(dense))
    x = torch.randn(4, 1, 14, 14, dtype=torch.float64)
    ctx = StepContext(0, 0, 1, 1, 100)
    reg = method.regularizer(model, ctx)
    assert torch.isfinite(reg)
    (model.train()(x).sum() + reg).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    exported = method.export(model, method.masks(model)).eval()
    with torch.no_grad():
        torch.testing.assert_close(exported(x), model(x), rtol=0, atol=1e-12)
    # z starts at 1 (up to its tiny variance), so the exported net starts as the dense one.
    torch.testing.assert_close(exported.fc1.weight, dense.fc1.weight, rtol=1e-3, atol=0)
    assert set(method.posterior_variances(model)) == {"conv1", "conv2", "fc1", "fc2"}


def test_hs_tau0_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="tau0"):
        GroupHS(GroupHS.Config(tau0=0.0)).convert(mini_lenet5())


def test_bc_weight_init_redraws_the_means() -> None:
    torch.manual_seed(0)
    model = GroupNJ(GroupNJ.Config(weight_init="bc")).convert(mini_lenet5())
    fc1 = model.fc1.weight_mu.detach()  # N(0, 1/16)
    assert float(fc1.std()) == pytest.approx(0.25, rel=0.2)
    conv2 = model.conv2.weight_mu.detach()  # U(+-1/sqrt(27))
    assert float(conv2.abs().max()) <= 1 / math.sqrt(27)
    assert not bool(model.conv2.bias_mu.any())


def test_eval_applies_the_chain_masks_even_through_batchnorm() -> None:
    # A removed filter followed by BatchNorm emits a constant; only the next layer's mask stops it,
    # so the converted model's evaluation must use the propagated masks to equal the export.
    torch.manual_seed(0)
    model = nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(2, 4, 3, padding=1),
            bn1=nn.BatchNorm2d(4),
            relu1=nn.ReLU(),
            conv2=nn.Conv2d(4, 3, 3, padding=1),
            bn2=nn.BatchNorm2d(3),
            relu2=nn.ReLU(),
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            fc=nn.Linear(3, 2),
        )
    ).double()
    with torch.no_grad():
        model.bn1.running_mean.uniform_(-1, 1)
        model.bn1.bias.uniform_(0.5, 1.0)
    method = GroupNJ(GroupNJ.Config(thresholds=[-3.0, -3.0, -3.0]))
    model = method.convert(model).eval()
    kill(model.conv1, [1, 3])
    x = torch.randn(3, 2, 5, 5, dtype=torch.float64)
    masks = method.masks(model)
    assert not bool(masks["conv2"][:, [1, 3]].any())
    exported = method.export(model, masks).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), exported(x), rtol=0, atol=1e-12)
        alone = model.conv2.eval()  # without the chain, conv2 would still read the BN constant
        alone.eval_mask = None
        assert not torch.allclose(
            alone(model.relu1(model.bn1(model.conv1(x)))),
            exported.conv2(exported.relu1(exported.bn1(exported.conv1(x)))),
        )


def test_the_automatic_threshold_follows_a_fused_adam_step() -> None:
    """Fused Adam moves the scale parameters without bumping their version; the cached mixture fit
    must notice anyway (it once kept the first epoch's fallback for a whole run)."""
    torch.manual_seed(0)
    method = GroupNJ(GroupNJConfig())
    model = method.convert(mini_lenet5())
    layer = model.fc1
    assert layer.current_threshold() == -3.0  # one mode at init: the fallback
    logvar = layer.scale.z_logvar
    optimizer = torch.optim.Adam([logvar], lr=12.0, fused=True)
    direction = torch.cat([torch.ones(8), -torch.ones(8)]).to(logvar)
    (direction * logvar).sum().backward()  # half the groups to about -21, half to about +3
    version = logvar._version
    optimizer.step()
    assert logvar._version == version  # the premise: the version alone cannot tell
    midpoint = auto_threshold(layer.scale.prune_score(), -3.0)
    assert midpoint < -6.0
    assert layer.current_threshold() == pytest.approx(midpoint)


@pytest.mark.parametrize("in_channels", [1, 3])
def test_group_conv_trains_channels_last_with_mean_and_variance_in_one_layout(in_channels: int) -> None:
    """place_model finds the group conv by its 4-D weights; with one input channel (LeNet-5's conv1)
    exp(log variance) loses the channels-last strides, and the variance convolution must not
    answer in the other layout (the mixed pair made LeNet-5 group_nj's convolutions 1.4x slower)."""
    from sparsebench.run.loop import place_model

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(in_channels, 6, 3), nn.Flatten(), nn.Linear(6 * 16, 2))
    model = place_model(GroupNJ().convert(net), torch.device("cpu")).train()
    conv = model[0]
    assert conv.weight_mu.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(4, in_channels, 6, 6)
    seen = []
    original = conv._conv
    conv._conv = lambda inp, w, b: seen.append(original(inp, w, b)) or seen[-1]
    model(x).sum().backward()
    mean, var = seen
    assert mean.stride() == var.stride() and mean.is_contiguous(memory_format=torch.channels_last)
    assert conv.weight_logvar.grad is not None and torch.isfinite(conv.weight_logvar.grad).all()
