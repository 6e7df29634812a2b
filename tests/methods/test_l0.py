"""L0 regularization (``l0``): the hard-concrete math against sampling, the layers, export and a run
(docs/methods.md section 13)."""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

from sparsebench.env import Env
from sparsebench.errors import ConfigError
from sparsebench.method import StepContext
from sparsebench.methods.l0 import gates
from sparsebench.methods.l0.layers import L0Conv2d, L0Linear
from sparsebench.methods.l0.method import L0, L0Config
from sparsebench.registry import METHODS, TASKS
from sparsebench.run.plan import RunRequest
from sparsebench.run.train import train
from sparsebench.task import resolve_recipe
from sparsebench.testing import check_method_conformance
from sparsebench.tracking import load_exported

SAMPLES = 400_000
"""Gate draws per Monte Carlo check; the tolerances below are 5 standard errors of these estimates."""


def draws(log_alpha: float, beta: float = gates.BETA, seed: int = 0) -> torch.Tensor:
    la = torch.full((SAMPLES,), log_alpha, dtype=torch.float64)
    return gates.sample(la, beta, generator=torch.Generator().manual_seed(seed))


def tolerance(p: float) -> float:
    """Five standard errors of a frequency estimated from SAMPLES draws (plus float slack)."""
    return 5.0 * math.sqrt(max(p * (1.0 - p), 1e-12) / SAMPLES) + 1e-9


# --- the hard-concrete distribution ----------------------------------------------------------------


@pytest.mark.parametrize("log_alpha", [-3.0, -1.0, 0.0, 1.5, 4.0])
@pytest.mark.parametrize("beta", [gates.BETA, 0.5])
def test_expected_l0_is_the_probability_that_a_gate_is_nonzero(log_alpha: float, beta: float) -> None:
    z = draws(log_alpha, beta)
    closed_form = float(gates.prob_open(torch.tensor(log_alpha, dtype=torch.float64), beta))
    estimate = float((z != 0).double().mean())
    assert abs(estimate - closed_form) < tolerance(closed_form)


def test_expected_l0_hand_values() -> None:
    """log alpha = 0: sigmoid((2/3) log 11) = 11^(2/3) / (1 + 11^(2/3)) = 0.831822..."""
    p = float(gates.prob_open(torch.tensor(0.0, dtype=torch.float64)))
    assert p == pytest.approx(11 ** (2 / 3) / (1 + 11 ** (2 / 3)), abs=1e-12)
    assert p == pytest.approx(0.831822, abs=1e-6)
    # log alpha = -(2/3) log 11 sits where the penalty's sigmoid is at one half
    assert float(gates.prob_open(torch.tensor(-(2 / 3) * math.log(11)))) == pytest.approx(0.5, abs=1e-6)


@pytest.mark.parametrize("log_alpha", [-1.0, 0.0, 2.0])
def test_gate_has_point_masses_at_exactly_zero_and_one(log_alpha: float) -> None:
    z = draws(log_alpha, seed=1)
    la = torch.tensor(log_alpha, dtype=torch.float64)
    p0, p1 = float(gates.prob_closed(la)), float(gates.prob_one(la))
    assert abs(float((z == 0).double().mean()) - p0) < tolerance(p0)
    assert abs(float((z == 1).double().mean()) - p1) < tolerance(p1)
    assert p0 > 0.01 and p1 > 0.01  # both masses are real, not rounding
    assert bool(((z >= 0) & (z <= 1)).all())


@pytest.mark.parametrize("log_alpha", [-1.0, 0.0, 2.0])
def test_gate_cdf_and_density_inside_the_interval_match_sampling(log_alpha: float) -> None:
    z = draws(log_alpha, seed=2)
    la = torch.tensor(log_alpha, dtype=torch.float64)
    edges = [0.0, 0.1, 0.3, 0.5, 0.7, 0.9]
    for t in edges:
        p = float(gates.cdf(t, la))
        assert abs(float((z <= t).double().mean()) - p) < tolerance(p), t
    for a, b in zip(edges, [*edges[1:], 0.999], strict=True):
        mass = float(gates.cdf(b, la) - gates.cdf(a, la))
        grid = torch.linspace(a, b, 20_001, dtype=torch.float64)
        integral = float(torch.trapezoid(gates.density(grid, la), grid))
        assert integral == pytest.approx(mass, abs=2e-4), (a, b)  # the density integrates to the CDF
        estimate = float(((z > a) & (z <= b)).double().mean())
        assert abs(estimate - mass) < tolerance(mass), (a, b)


def test_gate_gradient_reaches_log_alpha_and_noise_is_clamped() -> None:
    la = torch.zeros(1000, requires_grad=True)
    gates.sample(la).sum().backward()
    assert la.grad is not None and bool((la.grad >= 0).all()) and float(la.grad.sum()) > 0


def test_eval_gate_hand_values() -> None:
    la = torch.tensor(
        [0.0, math.log(3.0), math.log(11.0), 1.0, 3.0, -3.0, -math.log(11.0) - 1e-3], dtype=torch.float64
    )
    got = gates.eval_gate(la)
    # sigmoid(0) = 1/2 -> 0.6 - 0.1; sigmoid(log 3) = 3/4 -> 0.9 - 0.1; sigmoid(log 11) = 11/12 -> 1.0
    expected = [0.5, 0.8, 1.0, 1.2 / (1 + math.exp(-1.0)) - 0.1, 1.0, 0.0, 0.0]
    assert got.tolist() == pytest.approx(expected, abs=1e-12)
    assert float(gates.eval_gate(torch.tensor(-3.0))) == 0.0  # exactly zero: a closed gate removes


def test_droprate_sets_the_starting_log_alpha() -> None:
    assert gates.log_alpha_for_droprate(0.5) == 0.0
    assert gates.log_alpha_for_droprate(0.2) == pytest.approx(math.log(4.0))


# --- layers, penalty, masks and export ---------------------------------------------------------------


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict(fc1=nn.Linear(12, 8), relu=nn.ReLU(), fc2=nn.Linear(8, 5)))


def convnet(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        OrderedDict(conv=nn.Conv2d(2, 6, 3), relu=nn.ReLU(), flat=nn.Flatten(), fc=nn.Linear(6 * 4 * 4, 3))
    )


def test_first_linear_group_gates_start_at_the_input_droprate() -> None:
    model = L0(L0Config()).convert(mlp())
    assert float(model.fc1.log_alpha.detach().mean()) == pytest.approx(math.log(4.0), abs=0.01)  # 0.2
    assert float(model.fc2.log_alpha.detach().mean()) == pytest.approx(0.0, abs=0.01)  # 0.5
    assert model.fc1.log_alpha.shape == (12,) and model.fc2.log_alpha.shape == (8,)
    conv = L0(L0Config()).convert(convnet())
    assert conv.conv.log_alpha.shape == (6,)  # output feature maps; not the input droprate
    assert float(conv.conv.log_alpha.detach().mean()) == pytest.approx(0.0, abs=0.01)
    weight = L0(L0Config(granularity="weight")).convert(convnet())
    assert weight.conv.log_alpha.shape == weight.conv.weight.shape


def test_penalty_is_lambda_times_expected_l0_plus_gated_l2_over_n() -> None:
    method = L0(L0Config(lams=[0.3, 2.0], weight_decay=0.7))
    model = method.convert(convnet())
    n = 1234
    reg = method.regularizer(model, StepContext(0, 0, 1, 1, n))
    conv, fc = model.conv, model.fc
    with torch.no_grad():
        p_conv = gates.prob_open(conv.log_alpha)  # per filter: 18 weights and its bias go with it
        filt = conv.weight.pow(2).sum(dim=(1, 2, 3)) + conv.bias.pow(2)
        expected = (p_conv * (0.3 * 19 + 0.35 * filt)).sum()
        p_fc = gates.prob_open(fc.log_alpha)  # per input unit: 3 weights; the bias is not gated
        expected += (p_fc * (2.0 * 3 + 0.35 * fc.weight.pow(2).sum(dim=0))).sum()
        expected += 0.35 * fc.bias.pow(2).sum()
    assert float(reg.detach()) == pytest.approx(float(expected) / n, rel=1e-6)
    reg.backward()
    assert conv.log_alpha.grad is not None and bool((conv.log_alpha.grad > 0).all())


def close_some_gates(model: nn.Module) -> None:
    """Every other gate of every layer at the lower clamp (closed), the rest wide open."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (L0Linear, L0Conv2d)):
                flat = m.log_alpha.view(-1)
                flat.fill_(gates.LOG_ALPHA_MAX)
                flat[::2] = gates.LOG_ALPHA_MIN


@pytest.mark.parametrize("granularity", ["group", "weight"])
@pytest.mark.parametrize("build", [mlp, convnet])
def test_export_equals_eval_and_holds_exact_zeros_where_gates_close(granularity: str, build) -> None:
    method = L0(L0Config(granularity=granularity))
    reference = build()
    model = method.convert(build())
    close_some_gates(model)
    with torch.no_grad():
        for layer in method.layers(model).values():  # nonzero biases: a gated conv bias must go too
            layer.bias.add_(0.1)
    x = torch.randn(7, *((12,) if build is mlp else (2, 6, 6)), generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        before = model(x)
    masks = method.masks(model)
    exported = method.export(model, masks).eval()
    with torch.no_grad():
        assert torch.equal(exported(x), before)
    assert exported.state_dict().keys() == reference.state_dict().keys()
    assert all(
        type(m) in (nn.Linear, nn.Conv2d, nn.ReLU, nn.Flatten, nn.Sequential) for m in exported.modules()
    )
    for path, layer in method.layers(model).items():
        weight = exported.get_submodule(path).weight
        assert torch.equal(masks[path], weight != 0)
        closed = layer.eval_gates() == 0
        assert bool(closed.any()) and bool((~closed).any())
        if granularity == "weight":
            assert bool((weight[closed] == 0).all())
        elif isinstance(layer, L0Conv2d):
            assert bool((weight[closed] == 0).all()) and bool(
                (exported.get_submodule(path).bias[closed] == 0).all()
            )
        else:
            assert bool((weight[:, closed] == 0).all())


def test_step_end_clamps_log_alpha_like_the_reference() -> None:
    method = L0(L0Config(granularity="weight"))
    model = method.convert(mlp())
    with torch.no_grad():
        model.fc1.log_alpha.fill_(9.0)
        model.fc2.log_alpha.fill_(-9.0)
    method.on_step_end(model, StepContext(0, 0, 1, 1, 10))
    assert float(model.fc1.log_alpha.max()) == pytest.approx(math.log(100.0))
    assert float(model.fc2.log_alpha.min()) == pytest.approx(math.log(0.01))


def test_one_sample_per_minibatch_or_per_example() -> None:
    x = torch.ones(64, 12)
    shared = L0(L0Config()).convert(mlp()).train()
    out = shared.fc1(x)
    assert torch.equal(out, out[:1].expand_as(out))  # the same gates for every example
    local = L0(L0Config(local_rep=True)).convert(mlp()).train()
    out = local.fc1(x)
    assert not torch.equal(out, out[:1].expand_as(out))
    conv = L0(L0Config(local_rep=True)).convert(convnet()).train()
    maps = conv.conv(torch.ones(64, 2, 6, 6))
    assert not torch.equal(maps, maps[:1].expand_as(maps))
    local.eval()
    with torch.no_grad():
        assert torch.equal(local(x), local(x))  # evaluation is deterministic


def test_epoch_metrics_start_at_the_initial_open_probability() -> None:
    method = L0(L0Config(granularity="weight"))
    model = method.convert(mlp())
    metrics = method.epoch_metrics(model)
    assert metrics["expected_l0_fraction"] == pytest.approx(0.831821, abs=0.005)
    assert metrics["open_gates"] == 12 * 8 + 8 * 5 and metrics["open_gate_fraction"] == 1.0
    close_some_gates(model)
    assert method.epoch_metrics(model)["open_gates"] == 48 + 20


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"lams": [0.1]}, "method.lams has 1 values"),
        ({"granularity": "weight", "local_rep": True}, "granularity=group"),
        ({"droprate_init": 1.0}, "droprate_init must be in"),
        ({"lams": [0.1, -1.0]}, "must be >= 0"),
    ],
)
def test_bad_settings_are_config_errors(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        L0(L0Config(**overrides)).convert(mlp())


@pytest.mark.parametrize("task_name", ["lenet300_100", "lenet5"])
def test_mnist_recipe_is_the_reference_scripts(task_name: str) -> None:
    recipe = resolve_recipe(TASKS.get(task_name)(), L0())
    assert (recipe.epochs, recipe.batch_size, recipe.optimizer, recipe.lr) == (200, 100, "adam", 1e-3)
    assert recipe.lr_schedule == "constant" and recipe.weight_decay == 0.0


def test_search_space_proposes_lambda_on_a_log_scale() -> None:
    optuna = pytest.importorskip("optuna")
    study = optuna.create_study()
    trial = study.ask()
    proposal = L0().search_space(trial)
    assert set(proposal) == {"method.lam"} and 1e-3 <= proposal["method.lam"] <= 100.0
    distribution = trial.distributions["method.lam"]
    assert distribution.log and (distribution.low, distribution.high) == (1e-3, 100.0)
    assert METHODS.get("l0") is L0


# --- conformance and a run -----------------------------------------------------------------------------


@pytest.mark.parametrize("task_name", ["lenet300_100", "lenet5"])
@pytest.mark.parametrize("config", [{"granularity": "group"}, {"granularity": "weight"}, {"local_rep": True}])
def test_conformance(task_name: str, config: dict) -> None:
    check_method_conformance(L0(L0Config(**config)), TASKS.get(task_name)())


@pytest.mark.parametrize("granularity", ["group", "weight"])
def test_a_short_run_prunes_and_the_core_counts_the_closed_gates(
    granularity: str, mnist_dir, tracking_uri: str
) -> None:
    """300 steps on the synthetic MNIST: the model learns and closes most gates (N is only 1,000, so a
    small lambda is already strong), and the core's counts are exactly the closed gates' zeros."""
    overrides = {
        "train.epochs": 15,
        "train.val_size": 200,
        "train.batch_size": 50,
        "train.threads": 1,
        "train.lr": 0.02,
        "method.granularity": granularity,
        "method.lam": 0.01,
    }
    request = RunRequest(
        "lenet300_100",
        "l0",
        overrides,
        env=Env.resolve(tracking_uri=tracking_uri, data_dir=str(mnist_dir), device="cpu"),
        progress=False,
    )
    result = train(request)
    assert result.status == "FINISHED"
    assert result.test_metric < 50.0  # chance is 90 %
    summary = result.summary
    assert summary["compression"] > 3.0
    exported = load_exported(tracking_uri, result.run_id, "test")
    assert exported is not None
    state, masks = exported["state_dict"], exported["masks"]
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    assert set(masks) == {"fc1", "fc2", "fc3"} and total == 266_200
    assert summary["nonzeros"] == kept
    assert summary["compression"] == pytest.approx(total / kept)
    for path, mask in masks.items():
        assert torch.equal(state[f"{path}.weight"] != 0, mask)
    if granularity == "group":  # whole input units go: every column of fc1 is all zero or all kept
        columns = masks["fc1"].sum(dim=0)
        assert bool(((columns == 0) | (columns == 300)).all()) and int((columns == 0).sum()) > 392
