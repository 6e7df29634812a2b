"""Magnitude (AGP, Han, one-shot) and random pruning: schedules, counts, resume (methods.md 6, 11.14)."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
import torch
from torch import nn

from sparsebench.config import apply_overrides
from sparsebench.env import Env
from sparsebench.errors import ConfigError
from sparsebench.method import StepContext
from sparsebench.methods.magnitude import (
    Magnitude,
    MagnitudeConfig,
    agp_sparsity,
    gradual_target,
    gradual_window,
    iterative_steps,
)
from sparsebench.methods.random_pruning import RandomConfig, RandomPruning
from sparsebench.registry import METHODS, TASKS
from sparsebench.run import checkpoint
from sparsebench.run.plan import RunRequest
from sparsebench.run.train import train
from sparsebench.tasks.lenet300_100 import LeNet300100
from sparsebench.testing import check_method_conformance
from sparsebench.toolkit.masking import effective, keep_masks, mask_of, pruned_count

STEPS_PER_EPOCH, EPOCHS = 10, 20  # 200 steps: t0 = 20, end = 140, 12 updates one epoch apart


def net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(20, 30), nn.Tanh(), nn.Linear(30, 10))  # 600 and 300 weights


def run(method: Magnitude | RandomPruning, model: nn.Module, steps: range, watch=None) -> None:
    """SGD with momentum on random regression data, calling ``on_step_end`` as the runner does."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    for step in steps:
        x, y = torch.randn(32, 20, generator=g), torch.randn(32, 10, generator=g)
        loss = ((model(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        before = {p: effective(m).clone() for p, m in model.named_modules() if isinstance(m, nn.Linear)}
        ctx = StepContext(step // STEPS_PER_EPOCH, step, STEPS_PER_EPOCH, EPOCHS, 1000, opt)
        method.on_step_end(model, ctx)
        if watch is not None:
            watch(step + 1, before)


def pruned(model: nn.Module) -> dict[str, int]:
    return {path: int((~m).sum()) for path, m in keep_masks(model).items()}


# --- AGP schedule ---------------------------------------------------------------------------------


def test_agp_reference_values() -> None:
    values = [agp_sparsity(k, 10, 0.0, 0.9) for k in range(11)]
    assert values[0] == 0.0
    assert values[1] == pytest.approx(0.2439, abs=1e-12)
    assert values[5] == pytest.approx(0.7875, abs=1e-12)
    assert values[10] == pytest.approx(0.9, abs=1e-15)
    increments = [b - a for a, b in zip(values, values[1:], strict=False)]
    assert all(d > 0 for d in increments)
    assert all(later < earlier for earlier, later in zip(increments, increments[1:], strict=False))


def test_agp_with_nonzero_start_and_outside_the_window() -> None:
    assert agp_sparsity(0, 4, 0.5, 0.9) == pytest.approx(0.5)
    assert agp_sparsity(2, 4, 0.5, 0.9) == pytest.approx(0.9 - 0.4 * 0.125)
    assert agp_sparsity(7, 4, 0.5, 0.9) == pytest.approx(0.9)  # frozen after the last update
    assert agp_sparsity(0, 0, 0.0, 0.9) == 0.9


def test_gradual_window_is_10_to_70_percent_updating_every_epoch() -> None:
    cfg = MagnitudeConfig(sparsity=0.9)
    t0, dt, n = gradual_window(EPOCHS * STEPS_PER_EPOCH, STEPS_PER_EPOCH, cfg)
    assert (t0, dt, n) == (20, 10, 12)
    updates = {done: gradual_target(done, t0, dt, n, 0.0, 0.9) for done in range(1, 201)}
    updates = {done: s for done, s in updates.items() if s is not None}
    assert list(updates) == list(range(20, 141, 10))
    assert updates[20] == 0.0 and updates[140] == pytest.approx(0.9)
    assert updates[80] == pytest.approx(agp_sparsity(6, 12, 0.0, 0.9))
    cfg.frequency = 25
    assert gradual_window(200, STEPS_PER_EPOCH, cfg) == (20, 25, 4)  # last update at 120 <= 140


def test_window_shorter_than_one_interval_prunes_once_at_its_end() -> None:
    cfg = MagnitudeConfig(start=0.5, end=0.52)
    t0, dt, n = gradual_window(200, 10, cfg)
    assert (t0, n) == (104, 0)
    assert gradual_target(104, t0, dt, n, 0.0, 0.9) == 0.9
    assert gradual_target(100, t0, dt, n, 0.0, 0.9) is None


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_gradual_pruning_follows_the_schedule_then_freezes(scope: str) -> None:
    method = Magnitude(MagnitudeConfig(sparsity=0.9, scope=scope))
    model = method.convert(net())
    seen: list[int] = []
    history: list[dict[str, torch.Tensor]] = []

    def watch(done: int, before: dict[str, torch.Tensor]) -> None:
        masks = keep_masks(model)
        if history:  # masks only lose entries
            assert all(not (masks[p] & ~history[-1][p]).any() for p in masks)
        target = gradual_target(done, 20, 10, 12, 0.0, 0.9)
        if target is None:
            assert not history or all(torch.equal(masks[p], history[-1][p]) for p in masks)
        else:
            seen.append(done)
            counts = pruned(model)
            if scope == "layer":
                assert counts == {"0": pruned_count(target, 600), "2": pruned_count(target, 300)}
            else:
                assert sum(counts.values()) == pruned_count(target, 900)
            # what was pruned had the smallest magnitudes at the moment of the update
            scores = torch.cat([before[p].abs().flatten() for p in masks])
            keep = torch.cat([masks[p].flatten() for p in masks])
            if scope == "global" and (~keep).any():
                assert scores[~keep].max() <= scores[keep].min()
            for p in masks if scope == "layer" else ():
                if (~masks[p]).any():
                    assert before[p].abs()[~masks[p]].max() <= before[p].abs()[masks[p]].min()
        history.append(masks)

    run(method, model, range(EPOCHS * STEPS_PER_EPOCH), watch)
    assert seen == list(range(20, 141, 10))
    counts = pruned(model)
    assert sum(counts.values()) == (810 if scope == "global" else 540 + 270)
    if scope == "global":
        assert counts["0"] != 540  # the joint ranking does not give uniform layers
    for m in (model[0], model[2]):
        assert (m.weight[~mask_of(m)] == 0).all()


def test_oneshot_prunes_once_at_the_end_fraction() -> None:
    method = Magnitude(MagnitudeConfig(sparsity=0.8, schedule="oneshot", end=0.5))
    model = method.convert(net())
    changes: list[int] = []
    run(
        method,
        model,
        range(200),
        lambda done, _: changes.append(done) if not mask_of(model[0]).all() else None,
    )
    assert changes[0] == 100 and len(changes) == 101  # after steps 100..200
    assert pruned(model) == {"0": 480, "2": 240}


# --- Han's iterative schedule ---------------------------------------------------------------------


def test_iterative_steps_dense_phase_then_rounds() -> None:
    assert iterative_steps(200, 10, rounds=3, retrain_epochs=4) == [80, 120, 160]
    with pytest.raises(ConfigError, match="rounds \\* retrain_epochs < train.epochs"):
        iterative_steps(200, 10, rounds=4, retrain_epochs=5)


def test_iterative_rounds_use_ramped_quality_times_current_std() -> None:
    method = Magnitude(MagnitudeConfig(schedule="iterative", quality=(1.0, 2.0), rounds=3, retrain_epochs=4))
    model = method.convert(net())
    rounds: list[int] = []

    def watch(done: int, before: dict[str, torch.Tensor]) -> None:
        if done not in (80, 120, 160):
            return
        r = (80, 120, 160).index(done) + 1
        rounds.append(done)
        for path, quality in (("0", 1.0), ("2", 2.0)):
            w = before[path]
            threshold = (r / 3) * quality * w.std()
            previous = w != 0  # pruned entries are exactly zero in the effective weight
            assert torch.equal(mask_of(dict(model.named_modules())[path]), previous & (w.abs() >= threshold))

    run(method, model, range(200), watch)
    assert rounds == [80, 120, 160]
    counts = pruned(model)
    # the last round (full quality) prunes most of a trained layer; a larger s prunes more
    assert 0.3 < counts["0"] / 600 < counts["2"] / 300 < 1.0


def test_quality_must_match_the_layers() -> None:
    method = Magnitude(
        MagnitudeConfig(schedule="iterative", quality=(1.0, 2.0, 3.0), rounds=1, retrain_epochs=1)
    )
    model = method.convert(net())
    with pytest.raises(ConfigError, match="quality has 3 values but the model has 2 prunable layers"):
        run(method, model, range(200))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"sparsity": 1.0}, "must be in \\[0, 1\\)"),
        ({"start": 0.8, "end": 0.5}, "start <= method.end"),
        ({"initial_sparsity": 0.95}, "must not exceed"),
        ({"schedule": "iterative", "scope": "global"}, "scope=layer"),
        ({"schedule": "iterative", "quality": (0.0,)}, "positive"),
        ({"frequency": -1}, "frequency"),
    ],
)
def test_bad_configs_are_config_errors(overrides: dict, message: str) -> None:
    cfg = MagnitudeConfig()
    for k, v in overrides.items():
        setattr(cfg, k, v)
    with pytest.raises(ConfigError, match=message):
        Magnitude(cfg).convert(net())


def test_prune_biases_prunes_biases_separately() -> None:
    method = Magnitude(MagnitudeConfig(sparsity=0.5, schedule="oneshot", end=0.5, prune_biases=True))
    model = method.convert(net())
    run(method, model, range(200))
    assert pruned(model) == {"0": 300, "2": 150}
    assert int((model[0].bias == 0).sum()) == 15 and int((model[2].bias == 0).sum()) == 5
    assert list(method.masks(model)) == ["0", "2"]  # the core's masks stay weight masks
    exported = method.export(model, method.masks(model))
    assert int((exported[0].bias == 0).sum()) == 15


# --- random pruning ---------------------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_random_prunes_exact_counts_at_start_reproducibly(scope: str) -> None:
    a = RandomPruning(RandomConfig(sparsity=0.7, scope=scope, seed=0)).convert(net())
    b = RandomPruning(RandomConfig(sparsity=0.7, scope=scope, seed=0)).convert(net(seed=3))
    c = RandomPruning(RandomConfig(sparsity=0.7, scope=scope, seed=1)).convert(net())
    counts = pruned(a)
    if scope == "layer":
        assert counts == {"0": 420, "2": 210}
    else:
        assert sum(counts.values()) == 630
    # the draw depends on the mask seed only, not on the weights
    assert all(torch.equal(x, y) for x, y in zip(keep_masks(a).values(), keep_masks(b).values(), strict=True))
    assert not torch.equal(keep_masks(a)["0"], keep_masks(c)["0"])


def test_random_default_mask_follows_the_run_seed() -> None:
    """Without method.seed each train.seed draws its own mask, and the same train.seed the same one."""

    def mask_after(seed: int) -> torch.Tensor:
        model = net()
        torch.manual_seed(seed)  # what the runner does with train.seed before convert
        return keep_masks(RandomPruning(RandomConfig(sparsity=0.7)).convert(model))["0"]

    assert torch.equal(mask_after(5), mask_after(5))
    assert not torch.equal(mask_after(5), mask_after(6))
    assert int((~mask_after(6)).sum()) == 420


def test_random_masks_ignore_magnitude() -> None:
    torch.manual_seed(0)
    model = RandomPruning(RandomConfig(sparsity=0.5)).convert(nn.Linear(200, 100))
    w = effective(model).abs()
    raw = model.parametrizations.weight.original.detach().abs()
    keep = mask_of(model)
    assert (w[~keep] == 0).all()
    # kept and pruned raw magnitudes have the same distribution: means within 5 standard errors
    se = raw.std() * math.sqrt(2 / 10_000)
    assert abs(float(raw[keep].mean() - raw[~keep].mean())) < 5 * se


def test_random_at_end_draws_once_after_dense_training() -> None:
    method = RandomPruning(RandomConfig(sparsity=0.6, at="end", end=0.25))
    model = method.convert(net())
    assert mask_of(model[0]).all()
    drawn: list[int] = []
    run(
        method, model, range(200), lambda done, _: drawn.append(done) if not mask_of(model[0]).all() else None
    )
    assert drawn[0] == 50 and len(drawn) == 151
    assert pruned(model) == {"0": 360, "2": 180}


# --- the contract with the core ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("magnitude", {"method.schedule": "oneshot", "method.end": 1.0, "method.sparsity": 0.9}),
        ("magnitude", {"method.scope": "global", "method.schedule": "oneshot", "method.end": 1.0}),
        ("random", {"method.sparsity": 0.95}),
    ],
)
@pytest.mark.parametrize("task_name", ["lenet300_100", "lenet5"])
def test_conformance_with_real_masks(name: str, overrides: dict, task_name: str) -> None:
    # end = 1.0 prunes on the last step the checker takes, so masks and export are non-trivial.
    method_cls = METHODS.get(name)
    method = method_cls(method_cls.Config())
    apply_overrides({"method": method.config}, overrides)
    check_method_conformance(method, TASKS.get(task_name)())


def test_search_space_proposes_valid_overrides() -> None:
    for name, schedule in (
        ("magnitude", "gradual"),
        ("magnitude", "iterative"),
        ("magnitude", "oneshot"),
        ("random", None),
    ):
        method = METHODS.get(name)()
        if schedule:
            method.config.schedule = schedule
        study = optuna.create_study()
        space = method.search_space(study.ask())
        assert space and all(k.startswith("method.") for k in space)
        apply_overrides({"method": method.config}, space)  # every key a real field of the right type
        method.convert(LeNet300100().build_model())
        if "method.sparsity" in space:
            assert 0.5 <= method.config.sparsity < 1.0


def test_resumed_run_keeps_masks_and_ends_identical(mnist_dir: Path, tracking_uri: str) -> None:
    # 1000 training examples / batch 100 = 10 steps per epoch; 4 epochs: updates after 4, 14, 24 steps.
    overrides = {"train.epochs": 4, "train.val_size": 200, "method.sparsity": 0.8, "train.threads": 1}
    env = Env.resolve(tracking_uri=tracking_uri, data_dir=mnist_dir)
    common = dict(task="lenet300_100", method="magnitude", env=env)
    full = train(RunRequest(**common, overrides=overrides, progress=False, keep_checkpoint=True))
    paused = train(RunRequest(**common, overrides=overrides, progress=False, stop_after=2))
    assert paused.status == "PAUSED"
    masks_at_pause = {k: v for k, v in checkpoint.load(paused.run_id)["model"].items() if k.endswith("mask")}
    assert sum(int((~m).sum()) for m in masks_at_pause.values()) > 0  # mid-schedule, already sparse
    resumed = train(
        RunRequest(
            task="",
            method="",
            env=env,
            resume=paused.run_id,
            progress=False,
            keep_checkpoint=True,
        )
    )
    a = checkpoint.load(full.run_id)["model"]
    b = checkpoint.load(resumed.run_id)["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.summary["nonzeros"] == full.summary["nonzeros"] == 53_240  # 20 % of 266,200
    assert resumed.test_metric == full.test_metric


def test_magnitude_trains_mnist_tasks_with_hans_l2_unless_told_otherwise() -> None:
    from sparsebench.run.plan import plan_run

    for task in ("lenet300_100", "lenet5"):
        assert plan_run(task, "magnitude", {}).train.weight_decay == 5e-4
        assert plan_run(task, "magnitude", {"train.weight_decay": 0.0}).train.weight_decay == 0.0
        assert plan_run(task, "dense", {}).train.weight_decay == 0.0
    assert (
        plan_run("ptb_lstm", "magnitude", {}).train.weight_decay
        == plan_run("ptb_lstm", "dense", {}).train.weight_decay
    )
