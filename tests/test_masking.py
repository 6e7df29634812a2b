"""Keep-masks and exact-count selection (methods.md section 6 and check 14)."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from sparsebench.toolkit.masking import (
    KeepMask,
    attach_masks,
    keep_masks,
    mask_of,
    prune_lowest,
    pruned_count,
    select_global,
    select_layerwise,
    set_mask,
    std_threshold_keep,
    strip_masks,
)


def small_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))  # tanh: no unit can die


def half_mask(shape: tuple[int, ...], seed: int = 1) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < 0.5


# --- exact counts and tie-breaking ---------------------------------------------------------------


@pytest.mark.parametrize(("s", "n", "k"), [(0.3, 10, 3), (0.29, 100, 29), (0.7, 10, 7), (0.92, 1000, 920)])
def test_pruned_count_is_floor_without_float_noise(s: float, n: int, k: int) -> None:
    # 0.29 * 100 is 28.999999999999996 in floating point; the count must still be 29.
    assert pruned_count(s, n) == k


def test_pruned_count_floors_genuine_fractions() -> None:
    assert pruned_count(0.3, 7) == 2  # 2.1
    assert pruned_count(0.999, 10) == 9  # 9.99
    assert pruned_count(0.0, 10) == 0


def test_layerwise_prunes_exactly_floor_of_distinct_magnitudes() -> None:
    torch.manual_seed(0)
    w = torch.randn(37, 11)  # n = 407, floor(0.3 n) = 122
    (keep,) = select_layerwise([w.abs()], 0.3)
    assert int((~keep).sum()) == math.floor(0.3 * w.numel()) == 122
    # the pruned entries are the 122 smallest magnitudes
    smallest = w.abs().flatten().argsort()[:122]
    expected = torch.ones(w.numel(), dtype=torch.bool)
    expected[smallest] = False
    assert torch.equal(keep.flatten(), expected)


def test_ties_are_broken_by_index() -> None:
    scores = torch.tensor([3.0, 1.0, 1.0, 0.5, 1.0, 2.0, 1.0, 4.0])
    keep = prune_lowest(scores, 3)
    # 0.5 first, then the two lowest-index 1.0s (indices 1 and 2); indices 4 and 6 survive.
    assert keep.tolist() == [True, False, False, False, True, True, True, True]


def test_all_equal_scores_prune_exactly_floor_lowest_indices_first() -> None:
    scores = torch.zeros(4, 5)
    (keep,) = select_layerwise([scores], 0.55)  # floor(11.0) = 11
    assert int((~keep).sum()) == 11
    assert (~keep).flatten().tolist() == [True] * 11 + [False] * 9


def test_prune_lowest_edge_counts() -> None:
    s = torch.arange(5.0)
    assert prune_lowest(s, 0).all()
    assert not prune_lowest(s, 5).any()
    assert not prune_lowest(s, 9).any()


def test_global_selects_by_the_joint_quantile() -> None:
    torch.manual_seed(1)
    small = 0.1 * torch.randn(40, 10)  # 400 weights of small magnitude
    large = torch.randn(20, 5)  # 100 weights of larger magnitude
    scores = [small.abs(), large.abs()]
    keep_g = select_global(scores, 0.6)
    joint = torch.cat([s.flatten() for s in scores])
    cutoff = joint.sort().values[pruned_count(0.6, 500) - 1]  # the 300th smallest overall
    for k, s in zip(keep_g, scores, strict=True):
        assert torch.equal(k, s > cutoff)
    assert sum(int((~k).sum()) for k in keep_g) == 300
    # the joint ranking prunes the small tensor much harder than the uniform rule would
    keep_l = select_layerwise(scores, 0.6)
    assert int((~keep_g[0]).sum()) > int((~keep_l[0]).sum()) == 240
    assert int((~keep_g[1]).sum()) < int((~keep_l[1]).sum()) == 60


def test_global_ties_across_tensors_go_to_the_earlier_tensor() -> None:
    a, b = torch.ones(3), torch.ones(3)
    keep_a, keep_b = select_global([a, b], 0.5)
    assert keep_a.tolist() == [False, False, False] and keep_b.tolist() == [True, True, True]


@pytest.mark.parametrize(("quality", "expected"), [(0.5, 0.3829), (1.0, 0.6827), (2.0, 0.9545)])
def test_han_std_threshold_on_standard_normal(quality: float, expected: float) -> None:
    # P(|w| < s * sigma) = erf(s / sqrt 2) for w ~ N(0, sigma^2); std error at 1e6 draws is <= 5e-4.
    torch.manual_seed(0)
    w = torch.randn(1_000_000, dtype=torch.float64)
    pruned = 1.0 - std_threshold_keep(w, quality).double().mean().item()
    assert math.erf(quality / math.sqrt(2)) == pytest.approx(expected, abs=1e-4)
    assert pruned == pytest.approx(expected, abs=0.002)


def test_han_threshold_scales_with_the_layer_std() -> None:
    torch.manual_seed(0)
    w = torch.randn(200_000, dtype=torch.float64)
    assert torch.equal(std_threshold_keep(w, 1.0), std_threshold_keep(7.0 * w, 1.0))


# --- the parametrization ---------------------------------------------------------------------------


def test_masks_are_buffers_in_the_state_dict() -> None:
    net = attach_masks(small_net(), biases=True)
    keys = set(net.state_dict())
    assert {"0.parametrizations.weight.0.mask", "2.parametrizations.weight.0.mask"} <= keys
    assert {"0.parametrizations.bias.0.mask", "0.parametrizations.weight.original"} <= keys
    assert all(net.state_dict()[k].dtype == torch.bool for k in keys if k.endswith("mask"))
    assert "0.parametrizations.weight.0.mask" not in dict(net.named_parameters())


def test_attach_is_idempotent_and_starts_dense() -> None:
    net = attach_masks(small_net())
    set_mask(net[0], "weight", half_mask((5, 6)))
    attach_masks(net)
    assert len(net[0].parametrizations.weight) == 1
    assert torch.equal(mask_of(net[0]), half_mask((5, 6)))
    assert mask_of(net[2]).all()


def test_effective_weight_is_raw_where_kept_and_zero_elsewhere() -> None:
    net = attach_masks(small_net())
    mask = half_mask((5, 6))
    set_mask(net[0], "weight", mask)
    raw = net[0].parametrizations.weight.original
    with torch.no_grad():
        raw[~mask] = float("inf")  # a diverged raw value must still give an exact 0
    assert torch.equal(net[0].weight, torch.where(mask, raw, 0.0))
    assert (net[0].weight[~mask] == 0).all()


def train_steps(net: nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 6, generator=g)
        y = torch.randn(16, 3, generator=g)
        loss = ((net(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


OPTIMIZERS = {
    "sgd_momentum": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-2),
    "nesterov": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
    "adam": lambda ps: torch.optim.Adam(ps, lr=0.05),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=0.05, weight_decay=0.1),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_pruned_weights_stay_zero_under_optimiser_state(name: str) -> None:
    net = attach_masks(small_net())
    opt = OPTIMIZERS[name](net.parameters())
    train_steps(net, opt, 20, seed=0)  # dense phase: momentum / Adam moments are nonzero everywhere
    mask = half_mask((5, 6))
    set_mask(net[0], "weight", mask)
    raw = net[0].parametrizations.weight.original
    kept_before = net[0].weight.detach()[mask].clone()
    for step in range(50):
        train_steps(net, opt, 1, seed=100 + step)
        assert raw.grad is not None and (raw.grad[mask] != 0).any()  # the layer is really learning
        assert (raw.grad[~mask] == 0).all()
        assert (net[0].weight[~mask] == 0).all()
    assert not torch.equal(net[0].weight.detach()[mask], kept_before)
    # the raw values did move under the optimiser state: only the mask keeps them out
    assert (raw.detach()[~mask] != 0).any()


def test_checkpoint_round_trip_keeps_masks_and_training_identical() -> None:
    def fresh() -> tuple[nn.Module, torch.optim.Optimizer]:
        net = attach_masks(small_net(seed=5))
        return net, torch.optim.Adam(net.parameters(), lr=0.05)

    net, opt = fresh()
    train_steps(net, opt, 10, seed=0)
    set_mask(net[0], "weight", half_mask((5, 6)))
    set_mask(net[2], "weight", half_mask((3, 5), seed=2))
    train_steps(net, opt, 10, seed=1)
    buffer = io.BytesIO()
    torch.save({"model": net.state_dict(), "optimizer": opt.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=False)

    resumed, resumed_opt = fresh()  # a freshly converted model has all-True masks
    resumed.load_state_dict(state["model"])
    resumed_opt.load_state_dict(state["optimizer"])
    assert all(
        torch.equal(a, b) for a, b in zip(keep_masks(net).values(), keep_masks(resumed).values(), strict=True)
    )

    train_steps(net, opt, 30, seed=2)
    train_steps(resumed, resumed_opt, 30, seed=2)
    for path in ("0", "2"):
        layer, other = dict(net.named_modules())[path], dict(resumed.named_modules())[path]
        assert torch.equal(layer.weight, other.weight)
        assert (other.weight[~mask_of(other)] == 0).all()
    assert not mask_of(resumed[0]).all()


def test_keep_masks_are_copies_keyed_by_module_path() -> None:
    net = attach_masks(nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(4 * 9, 3)))
    masks = keep_masks(net)
    assert list(masks) == ["0", "2"]
    assert masks["0"].shape == (4, 2, 3, 3) and masks["2"].shape == (3, 36)
    masks["0"][:] = False
    assert mask_of(net[0]).all()


def test_strip_leaves_standard_layers_with_zeros_and_the_same_function() -> None:
    torch.manual_seed(0)
    net = attach_masks(nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(4 * 9, 3)), biases=True)
    set_mask(net[0], "weight", half_mask((4, 2, 3, 3)))
    set_mask(net[2], "bias", torch.tensor([True, False, True]))
    x = torch.randn(5, 2, 5, 5)
    expected = net(x)
    plain = strip_masks(net)
    assert type(plain[0]) is nn.Conv2d and type(plain[2]) is nn.Linear
    assert not any(parametrize.is_parametrized(m) for m in plain.modules())
    assert set(plain.state_dict()) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert int((plain[0].weight == 0).sum()) == int((~half_mask((4, 2, 3, 3))).sum())
    assert plain[2].bias[1] == 0
    torch.testing.assert_close(plain(x), expected, rtol=0, atol=0)


def test_stripping_a_copy_leaves_the_original_working() -> None:
    # torch's remove_parametrizations edits the generated class, which deepcopy shares.
    net = attach_masks(small_net())
    set_mask(net[0], "weight", half_mask((5, 6)))
    x = torch.randn(4, 6)
    expected = net(x)
    plain = strip_masks(copy.deepcopy(net))
    torch.testing.assert_close(net(x), expected, rtol=0, atol=0)
    torch.testing.assert_close(plain(x), expected, rtol=0, atol=0)
    assert parametrize.is_parametrized(net[0], "weight") and type(plain[0]) is nn.Linear
    assert plain[0].weight.requires_grad and isinstance(plain[0].weight, nn.Parameter)


def test_keep_mask_module_copies_its_input() -> None:
    source = torch.ones(3, dtype=torch.bool)
    p = KeepMask(source)
    source[0] = False
    assert p.mask.all()
