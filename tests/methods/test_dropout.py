"""Dropout baselines (methods.md sections 5, 11.4 and 11.13): noise moments against their formulas,
Kingma's KL polynomial against quadrature, the alpha <= 1 projection, and the dense-export contract.

Moment checks draw many samples of a layer in training mode and compare the sample mean and
variance with the closed form within 5 standard errors estimated from the same samples.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from itertools import pairwise

import numpy as np
import optuna
import pytest
import torch
from scipy import integrate, stats
from torch import nn

from sparsebench.config import apply_overrides
from sparsebench.env import Env
from sparsebench.errors import ConfigError
from sparsebench.measure.counts import check_export, layer_table, summarize
from sparsebench.method import StepContext
from sparsebench.methods._noise import NOISY_LAYERS, BernoulliNoise
from sparsebench.methods.dropout import VariationalDropout, log_alpha_of
from sparsebench.registry import METHODS, TASKS
from sparsebench.run.plan import RunRequest
from sparsebench.run.train import train
from sparsebench.testing import check_method_conformance
from sparsebench.toolkit.kl import C1, C2, C3, kingma_neg_kl

S = 200_000
N = 55_000

METHOD_CASES = [
    ("binary_dropout", {}),
    ("gaussian_dropout", {"variant": "A"}),
    ("gaussian_dropout", {"variant": "B"}),
    ("variational_dropout", {"variant": "A"}),
    ("variational_dropout", {"variant": "A2"}),
    ("variational_dropout", {"variant": "B"}),
]
CASE_IDS = [f"{name}-{cfg.get('variant', '')}" for name, cfg in METHOD_CASES]


def make(name: str, **settings: object):
    method = METHODS.get(name)()
    apply_overrides({"method": method.config}, {f"method.{k}": v for k, v in settings.items()})
    return method


def ctx(num_train: int = N) -> StepContext:
    return StepContext(epoch=0, step=0, steps_per_epoch=1, total_epochs=1, num_train=num_train)


def mlp(sizes: tuple[int, ...] = (6, 5, 4, 3)) -> nn.Sequential:
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for i, (a, b) in enumerate(pairwise(sizes)):
        layers[f"fc{i + 1}"] = nn.Linear(a, b)
        if i < len(sizes) - 2:
            layers[f"relu{i + 1}"] = nn.ReLU()
    return nn.Sequential(layers).double()


def small_cnn() -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(2, 3, 3, padding=1),
            relu=nn.ReLU(),
            conv2=nn.Conv2d(3, 4, 3, stride=2),
            flatten=nn.Flatten(),
            fc=nn.Linear(4 * 2 * 2, 3),
        )
    ).double()


def identity_layer(n: int) -> nn.Sequential:
    """One Linear that copies its input, so the training output is the noisy input itself."""
    layer = nn.Linear(n, n, bias=False).double()
    with torch.no_grad():
        layer.weight.copy_(torch.eye(n, dtype=torch.float64))
    return nn.Sequential(OrderedDict(fc=layer))


def draw(model: nn.Module, x: torch.Tensor, samples: int = S) -> torch.Tensor:
    """``samples`` training-mode outputs for the fixed batch ``x``: shape (samples, *output)."""
    model.train()
    with torch.no_grad():
        out = model(x.expand(samples, *x.shape).reshape(samples * x.shape[0], *x.shape[1:]))
    return out.reshape(samples, x.shape[0], *out.shape[1:])


def assert_moments(y: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> None:
    """Sample mean and variance over dim 0 equal ``mean`` and ``var`` within 5 standard errors."""
    n = y.shape[0]
    centred = y - y.mean(0)
    sample_var = centred.pow(2).mean(0)
    se_mean = (sample_var / n).sqrt()
    se_var = ((centred.pow(2) - sample_var).pow(2).mean(0) / n).sqrt()
    assert ((y.mean(0) - mean).abs() <= 5 * se_mean + 1e-12).all()
    assert ((sample_var - var).abs() <= 5 * se_var + 1e-12).all()


# --- 11.13: noise moments -------------------------------------------------------------------------


@pytest.mark.parametrize(("p", "alpha"), [(0.5, 1.0), (0.2, 0.25)])
def test_inverted_binary_dropout_has_mean_x_and_variance_alpha_x2(p: float, alpha: float) -> None:
    torch.manual_seed(0)
    model = make("binary_dropout", p_input=p).convert(identity_layer(5))
    x = torch.tensor([[0.5, -1.0, 2.0, 0.0, 3.0], [1.0, 1.5, -0.3, 0.7, -2.0]], dtype=torch.float64)
    y = draw(model, x)
    assert_moments(y, x, alpha * x * x)
    kept = y[:, 0, 0] != 0  # inverted scaling: a kept unit is x / (1 - p)
    torch.testing.assert_close(y[kept, 0, 0], torch.full_like(y[kept, 0, 0], 0.5 / (1 - p)))


@pytest.mark.parametrize(("p", "alpha"), [(0.5, 1.0), (0.2, 0.25)])
def test_gaussian_dropout_a_has_mean_x_and_variance_alpha_x2(p: float, alpha: float) -> None:
    torch.manual_seed(1)
    model = make("gaussian_dropout", variant="A", p_input=p).convert(identity_layer(5))
    x = torch.tensor([[0.5, -1.0, 2.0, 0.1, 3.0]], dtype=torch.float64)
    assert_moments(draw(model, x), x, alpha * x * x)


def explicit_weight_noise(layer: nn.Linear, x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Outputs from one explicitly drawn weight matrix theta * xi, xi ~ N(1, alpha), per sample."""
    theta = layer.weight.detach()
    w = theta * (1 + alpha.sqrt() * torch.randn(S, *theta.shape, dtype=theta.dtype))
    return torch.einsum("bi,soi->sbo", x, w) + layer.bias.detach()


def test_gaussian_dropout_b_variance_is_alpha_x2_theta2_and_matches_per_weight_noise() -> None:
    torch.manual_seed(2)
    plain = mlp((5, 4))
    p, alpha = 0.3, torch.tensor(0.3 / 0.7, dtype=torch.float64)
    model = make("gaussian_dropout", variant="B", p_input=p, eps0=0.0).convert(copy.deepcopy(plain))
    x = torch.randn(4, 5, dtype=torch.float64)
    theta = plain.fc1.weight.detach()
    mean = plain(x).detach()
    var = alpha * (x * x) @ (theta * theta).T
    assert_moments(draw(model, x), mean, var)
    assert_moments(explicit_weight_noise(plain.fc1, x, alpha), mean, var)


def output_covariance(y: torch.Tensor) -> torch.Tensor:
    """Sample covariance between the first two outputs of example 0."""
    a, b = y[:, 0, 0], y[:, 0, 1]
    return ((a - a.mean()) * (b - b.mean())).mean()


def test_type_a_noise_is_shared_by_a_units_outgoing_weights_and_type_b_is_not() -> None:
    torch.manual_seed(3)
    plain = mlp((5, 4))
    x = torch.tensor([[1.0, -2.0, 0.5, 1.5, -1.0]], dtype=torch.float64)
    theta = plain.fc1.weight.detach()
    alpha = 1.0  # p = 0.5
    cov_a = (alpha * x[0] ** 2 * theta[0] * theta[1]).sum()
    y_a = draw(make("gaussian_dropout", variant="A", p_input=0.5).convert(copy.deepcopy(plain)), x)
    y_b = draw(make("gaussian_dropout", variant="B", p_input=0.5).convert(copy.deepcopy(plain)), x)
    se = math.sqrt(float((y_a[:, 0, 0].var() * y_a[:, 0, 1].var()) / S))
    assert abs(float(output_covariance(y_a) - cov_a)) <= 5 * se
    assert abs(float(output_covariance(y_b))) <= 5 * se
    assert abs(float(cov_a)) > 20 * se  # the two cases are distinguishable at this S


def test_conv_weight_noise_variance_is_alpha_conv_of_squares() -> None:
    torch.manual_seed(4)
    plain = small_cnn()
    method = make("gaussian_dropout", variant="B", conv_noise="element", p_input=0.2, eps0=0.0)
    model = method.convert(copy.deepcopy(plain))
    conv = plain.conv1
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    y = draw(nn.Sequential(model.conv1), x, 100_000)
    mean = conv(x).detach()
    var = 0.25 * nn.functional.conv2d(x * x, conv.weight.detach() ** 2, padding=1)
    assert_moments(y, mean, var)


def test_channel_noise_drops_whole_feature_maps_and_element_noise_does_not() -> None:
    torch.manual_seed(5)
    x = torch.ones(400, 3, 4, 4)
    per_channel = BernoulliNoise(0.5, per_channel=True).sample(x)
    flat = per_channel.flatten(2)
    assert torch.equal(flat, flat[:, :, :1].expand_as(flat))  # one draw per example and channel
    assert set(per_channel.unique().tolist()) == {0.0, 2.0}
    assert abs(float((flat[:, :, 0] == 0).double().mean()) - 0.5) < 5 * math.sqrt(0.25 / 1200)
    element = BernoulliNoise(0.5, per_channel=False).sample(x).flatten(2)
    assert not torch.equal(element, element[:, :, :1].expand_as(element))


def test_per_channel_learned_alpha_scales_each_channel_by_its_own_variance() -> None:
    torch.manual_seed(6)
    model = make("variational_dropout", conv_noise="channel").convert(small_cnn())
    alpha = torch.tensor([1.0, 0.25], dtype=torch.float64)
    with torch.no_grad():
        model.conv1.noise.log_alpha.copy_(alpha.log().view(2, 1, 1))
    noisy = model.conv1.noise.sample(torch.full((100_000, 2, 3, 3), 2.0, dtype=torch.float64)).flatten(2)
    assert torch.equal(noisy, noisy[:, :, :1].expand_as(noisy))  # one draw per example and channel
    assert_moments(noisy[:, :, 0], torch.full((2,), 2.0, dtype=torch.float64), 4 * alpha)


# --- rates, conversion and the dense-export contract ------------------------------------------------


def test_p_input_goes_to_the_first_weight_layer_and_p_hidden_to_the_rest() -> None:
    model = make("binary_dropout", p_input=0.1, p_hidden=0.4).convert(mlp())
    assert [model.fc1.noise.p, model.fc2.noise.p, model.fc3.noise.p] == [0.1, 0.4, 0.4]
    la = make("variational_dropout", p_input=0.2, p_hidden=0.5).convert(mlp())
    assert la.fc1.noise.log_alpha.shape == (6,)  # one alpha per input unit
    torch.testing.assert_close(
        la.fc1.noise.log_alpha.detach(), torch.full((6,), math.log(0.25), dtype=torch.float64)
    )
    torch.testing.assert_close(la.fc2.noise.log_alpha.detach(), torch.zeros(5, dtype=torch.float64))
    lb = make("variational_dropout", variant="B").convert(mlp())
    assert lb.fc2.noise.log_alpha.shape == lb.fc2.weight.shape  # one alpha per weight


def test_default_conv_noise_leaves_convs_plain_and_fc_layers_use_the_hidden_rate() -> None:
    model = make("binary_dropout").convert(small_cnn())
    assert type(model.conv1) is nn.Conv2d and type(model.conv2) is nn.Conv2d
    assert model.fc.noise.p == 0.5  # the network input reaches conv1, so fc reads hidden units
    noisy = make("variational_dropout", conv_noise="element").convert(small_cnn())
    assert noisy.conv1.noise.log_alpha.shape == (2, 1, 1)
    assert math.isclose(float(noisy.conv1.noise.log_alpha.detach()[0]), math.log(0.25))


def test_zero_rate_leaves_the_layer_plain() -> None:
    model = make("gaussian_dropout", p_input=0.0).convert(mlp())
    assert type(model.fc1) is nn.Linear and isinstance(model.fc2, NOISY_LAYERS)


@pytest.mark.parametrize(("name", "settings"), METHOD_CASES, ids=CASE_IDS)
def test_eval_mode_is_deterministic_and_equals_the_plain_and_exported_model(
    name: str, settings: dict
) -> None:
    torch.manual_seed(7)
    plain = small_cnn()
    x = torch.randn(5, 2, 6, 6, dtype=torch.float64)
    expected = plain(x)
    method = make(name, conv_noise="element", **settings)
    model = method.convert(plain).eval()
    assert all(isinstance(m, NOISY_LAYERS) for m in (model.conv1, model.conv2, model.fc))
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
    torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)
    assert not torch.equal(model.train()(x), expected)  # and training really is noisy
    masks = method.masks(model)
    assert set(masks) == {"conv1", "conv2", "fc"}
    assert all(
        m.dtype == torch.bool and m.all() and m.shape == model.get_submodule(p).weight.shape
        for p, m in masks.items()
    )
    exported = method.export(model, masks).eval()
    check_export(exported, masks)
    assert {type(m) for m in exported.modules()} <= {nn.Sequential, nn.Conv2d, nn.ReLU, nn.Flatten, nn.Linear}
    assert not any("noise" in name for name, _ in exported.named_parameters())
    torch.testing.assert_close(exported(x), expected, rtol=0, atol=0)
    summary = summarize(exported, layer_table(exported, x[:1]))
    assert summary.compression == 1.0 and summary.compression_all == 1.0


@pytest.mark.parametrize(("name", "settings"), METHOD_CASES, ids=CASE_IDS)
@pytest.mark.parametrize(("task", "conv_noise"), [("lenet300_100", "none"), ("lenet5", "element")])
def test_every_variant_passes_the_core_conformance_checks(
    name: str, settings: dict, task: str, conv_noise: str
) -> None:
    method = make(name, conv_noise=conv_noise, max_norm=3.0, **settings)
    check_method_conformance(method, TASKS.get(task)())


def test_max_norm_caps_each_units_incoming_weights() -> None:
    torch.manual_seed(8)
    method = make("binary_dropout", max_norm=1.0)
    model = method.convert(mlp())
    with torch.no_grad():
        model.fc1.weight.mul_(torch.tensor([0.1, 5.0, 0.2, 9.0, 0.3], dtype=torch.float64)[:, None])
    before = model.fc1.weight.detach().clone()
    method.on_step_end(model, ctx())
    norms = model.fc1.weight.norm(dim=1)
    assert (norms <= 1.0 + 1e-12).all()
    small = before.norm(dim=1) <= 1.0
    assert torch.equal(model.fc1.weight[small], before[small])
    torch.testing.assert_close(norms[~small], torch.ones(int((~small).sum()), dtype=torch.float64))


@pytest.mark.parametrize(
    ("name", "settings"),
    [
        ("binary_dropout", {"p_input": 1.0}),
        ("gaussian_dropout", {"p_hidden": -0.1}),
        ("variational_dropout", {"p_hidden": 0.6}),
        ("variational_dropout", {"p_input": 0.0}),
        ("gaussian_dropout", {"variant": "B", "conv_noise": "channel"}),
    ],
)
def test_impossible_settings_are_config_errors(name: str, settings: dict) -> None:
    with pytest.raises(ConfigError):
        make(name, **settings).convert(small_cnn())


@pytest.mark.parametrize("name", ["binary_dropout", "gaussian_dropout", "variational_dropout"])
def test_search_space_proposes_valid_rates(name: str) -> None:
    method = make(name)
    trial = optuna.trial.FixedTrial({"method.p_input": 0.3, "method.p_hidden": 0.45})
    proposal = method.search_space(trial)
    assert proposal == {"method.p_input": 0.3, "method.p_hidden": 0.45}
    apply_overrides({"method": method.config}, proposal)
    method.convert(mlp())  # accepted by the method's own checks


# --- variational dropout: KL, scaling, projection ------------------------------------------------


def neg_poly(alpha: float) -> float:
    return -(0.5 * math.log(alpha) + C1 * alpha + C2 * alpha**2 + C3 * alpha**3)


def test_variational_a_regularizer_has_one_kl_term_per_input_unit_divided_by_n() -> None:
    method = make("variational_dropout", variant="A", p_input=0.2, p_hidden=0.5)
    model = method.convert(mlp())
    expected = (6 * neg_poly(0.25) + (5 + 4) * neg_poly(1.0)) / N
    torch.testing.assert_close(float(method.regularizer(model, ctx()).detach()), expected, rtol=1e-12, atol=0)


def test_variational_b_regularizer_has_one_kl_term_per_weight() -> None:
    method = make("variational_dropout", variant="B", p_input=0.2, p_hidden=0.5)
    model = method.convert(mlp())
    expected = (30 * neg_poly(0.25) + (20 + 12) * neg_poly(1.0)) / N
    torch.testing.assert_close(float(method.regularizer(model, ctx()).detach()), expected, rtol=1e-12, atol=0)


def test_a2_kl_is_exactly_a_third_of_a() -> None:
    torch.manual_seed(9)
    model = make("variational_dropout", variant="A").convert(mlp())
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, NOISY_LAYERS):
                m.noise.log_alpha.uniform_(-5.0, 0.0)
    reg_a = make("variational_dropout", variant="A").regularizer(model, ctx())
    reg_a2 = make("variational_dropout", variant="A2").regularizer(model, ctx())
    torch.testing.assert_close(reg_a2, reg_a / 3, rtol=1e-15, atol=0)


@pytest.mark.parametrize("variant", ["A", "A2", "B"])
@pytest.mark.parametrize("p", [0.01, 0.5])
def test_regularizer_is_finite_and_differentiable_and_raises_alpha(variant: str, p: float) -> None:
    method = make("variational_dropout", variant=variant, p_input=p, p_hidden=p, conv_noise="element")
    model = method.convert(small_cnn())
    reg = method.regularizer(model, ctx())
    assert torch.isfinite(reg)
    reg.backward()
    for m in model.modules():
        if isinstance(m, NOISY_LAYERS):
            grad = m.noise.log_alpha.grad
            assert grad is not None and torch.isfinite(grad).all()
            assert (grad < 0).all()  # for alpha <= 1 the prior always pushes alpha up


@pytest.mark.parametrize("variant", ["A", "B"])
def test_projected_step_keeps_log_alpha_at_most_zero(variant: str) -> None:
    torch.manual_seed(10)
    method = make("variational_dropout", variant=variant, p_input=0.5, p_hidden=0.4, conv_noise="element")
    model = method.convert(small_cnn())
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    loss = model(torch.randn(8, 2, 6, 6, dtype=torch.float64)).pow(2).mean() + method.regularizer(
        model, ctx(1)
    )
    loss.backward()
    optimizer.step()
    before = {p: la.detach().clone() for p, la in method.log_alphas(model).items()}
    assert any((la > 0).any() for la in before.values())  # the step left the feasible set
    method.on_step_end(model, ctx(1))
    for path, la in method.log_alphas(model).items():
        assert (la <= 0).all()
        inside = before[path] <= 0
        assert torch.equal(la[inside], before[path][inside])  # a projection moves only what is outside


def test_epoch_metrics_report_the_learned_alphas() -> None:
    method = make("variational_dropout", variant="B", p_input=0.2, p_hidden=0.5)
    model = method.convert(mlp())
    metrics = method.epoch_metrics(model)
    assert math.isclose(metrics["mean_alpha.fc1"], 0.25) and math.isclose(metrics["mean_alpha.fc3"], 1.0)
    assert metrics["alpha_at_bound.fc1"] == 0.0 and metrics["alpha_at_bound.fc2"] == 1.0
    assert math.isclose(metrics["kl"], float(method.regularizer(model, ctx()).detach()) * N, rel_tol=1e-12)


def test_log_alpha_of_matches_the_binary_dropout_variance() -> None:
    assert log_alpha_of(0.5) == 0.0
    assert math.isclose(math.exp(log_alpha_of(0.2)), 0.25)
    assert isinstance(make("variational_dropout"), VariationalDropout)


# --- 11.4: Kingma's polynomial against the exact KL --------------------------------------------------

EULER_LOG2 = (np.euler_gamma + math.log(2.0)) / 2  # -E log|xi| for xi ~ N(0, 1)


def exact_kl(alpha: float) -> float:
    """KL(N(theta, alpha theta^2) || log-uniform) = E log|xi + alpha^-1/2| + (gamma + log 2) / 2.

    Split at the log singularity and at 0 so quad sees the bulk of the normal density even when
    the singularity is far out (alpha small).
    """
    m = alpha**-0.5

    def integrand(t: float) -> float:
        return stats.norm.pdf(t) * math.log(abs(t + m))

    edges = [-np.inf, -m, 0.0, np.inf]
    return sum(integrate.quad(integrand, lo, hi)[0] for lo, hi in pairwise(edges)) + EULER_LOG2


@pytest.mark.parametrize(("low", "lower", "upper"), [(0.1, -0.6755, -0.6669), (1e-3, -0.6755, -0.6358)])
def test_kingma_polynomial_is_the_exact_kl_up_to_a_near_constant(
    low: float, lower: float, upper: float
) -> None:
    alphas = np.geomspace(low, 1.0, 25)
    exact = np.array([-exact_kl(a) for a in alphas])
    gap = exact - kingma_neg_kl(torch.tensor(alphas)).numpy()
    assert gap.min() >= lower - 1e-4 and gap.max() <= upper + 1e-4
    assert gap.max() - gap.min() <= upper - lower + 2e-4


def test_exact_kl_reproduces_the_reference_table() -> None:
    for log_alpha, value in [(-4, 2.62575), (0, 0.42669), (3, 0.02469)]:
        assert abs(exact_kl(math.exp(log_alpha)) - value) < 1e-5


# --- the runner end to end ---------------------------------------------------------------------------


def test_one_epoch_through_the_runner_gives_a_dense_row(mnist_dir, tracking_uri: str) -> None:
    """Variational B exercises every hook (convert, regularizer, projection, export) in the real loop."""
    overrides = {"train.epochs": 1, "train.val_size": 200, "train.threads": 1, "method.variant": "B"}
    result = train(
        RunRequest(
            "lenet300_100",
            "variational_dropout",
            overrides,
            env=Env.resolve(tracking_uri=tracking_uri, data_dir=str(mnist_dir), device="cpu"),
            progress=False,
        )
    )
    assert result.status == "FINISHED"
    assert result.summary["compression"] == 1.0 and result.summary["nonzeros"] == 266_200
    assert result.test_metric < 50.0  # chance is 90 %: the noisy model learned
