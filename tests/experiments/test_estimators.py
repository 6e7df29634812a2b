"""The four gradient estimators on one linear layer, against their closed-form mean and variance.

With a linear loss L = mean_n c . b_n of a single layer b_n = W_n x_n, w = theta * xi, xi ~ N(1, alpha),
the gradient w.r.t. theta is linear in the noise, so its mean and per-weight variance have closed
forms (docs/experiments.md): all three noisy estimators have mean c_o * mean_n x_ni, and variances

- local reparameterisation: c_o^2 / M^2 * sum_n alpha^2 theta^2 x_ni^4 / v_no,
  with v_no = sum_j alpha theta_oj^2 x_nj^2
- separate weight samples: c_o^2 / M^2 * sum_n alpha x_ni^2
- single weight sample: c_o^2 * alpha * (mean_n x_ni)^2

so LRT <= separate always, and separate <= single when the inputs share a sign.
"""

from __future__ import annotations

import math

import pytest
import torch

from sparsebench.experiments.estimators import ESTIMATORS, NoisyStack, minibatch_gradient
from sparsebench.experiments.variance_stats import GroupedVariance

REPEATS = 2000


@pytest.fixture(scope="module")
def layer() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    theta = torch.randn(2, 3, generator=g, dtype=torch.float64)
    log_alpha = torch.log(torch.rand(2, 3, generator=g, dtype=torch.float64) * 0.9 + 0.1)
    x = torch.rand(5, 3, generator=g, dtype=torch.float64) + 0.2  # positive inputs
    c = torch.tensor([1.5, -0.7], dtype=torch.float64)
    return {"theta": theta, "log_alpha": log_alpha, "x": x, "c": c}


def closed_form(layer: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    theta, alpha, x, c = layer["theta"], layer["log_alpha"].exp(), layer["x"], layer["c"]
    m = x.shape[0]
    c2 = (c * c)[:, None]
    v = (x * x) @ (alpha * theta * theta).T  # (M, O)
    lrt = c2 / m**2 * torch.einsum("oi,ni,no->oi", alpha**2 * theta**2, x**4, 1.0 / v)
    separate = c2 / m**2 * alpha * (x * x).sum(0)[None, :]
    single = c2 * alpha * x.mean(0)[None, :] ** 2
    mean = c[:, None] * x.mean(0)[None, :]
    return {"mean": mean, "lrt": lrt, "separate": separate, "single": single, "none": torch.zeros_like(mean)}


DRAWS: dict[str, torch.Tensor] = {}


def draws(layer: dict[str, torch.Tensor], estimator: str) -> torch.Tensor:
    """REPEATS gradients of one estimator on the layer (drawn once per test session)."""
    if estimator not in DRAWS:
        DRAWS[estimator] = _draw(layer, estimator)
    return DRAWS[estimator]


def _draw(layer: dict[str, torch.Tensor], estimator: str) -> torch.Tensor:
    stack = NoisyStack([layer["theta"]], [None], [layer["log_alpha"]], eps0=0.0)
    c = layer["c"]

    def loss(out: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
        return (out * c).sum(1).mean()

    x, y = layer["x"], torch.zeros(layer["x"].shape[0], dtype=torch.long)
    torch.manual_seed(11)
    grads = [minibatch_gradient(stack, x, y, estimator, [0], loss=loss, chunk=2)[0] for _ in range(REPEATS)]
    return torch.stack(grads)


@pytest.mark.parametrize("estimator", ["lrt", "separate", "single"])
def test_noisy_estimators_are_unbiased_with_the_closed_form_variance(layer, estimator: str) -> None:
    exact = closed_form(layer)
    g = draws(layer, estimator)
    # Mean within 5 Monte Carlo standard errors of the exact mean, weight by weight.
    se = (exact[estimator] / REPEATS).sqrt()
    assert torch.all((g.mean(0) - exact["mean"]).abs() <= 5 * se + 1e-12)
    # The gradient is Gaussian (linear in the noise), so the sample variance has relative error
    # sqrt(2 / (R - 1)); 5 of those is the tolerance.
    rel = 5 * math.sqrt(2 / (REPEATS - 1))
    assert torch.allclose(g.var(0), exact[estimator], rtol=rel, atol=0)


def test_no_noise_is_the_exact_gradient(layer) -> None:
    g = draws(layer, "none")
    assert torch.allclose(g, closed_form(layer)["mean"].expand_as(g), atol=1e-12)


def test_lrt_has_the_smallest_variance(layer) -> None:
    exact = closed_form(layer)
    assert torch.all(exact["lrt"] < exact["separate"])
    assert torch.all(exact["separate"] < exact["single"])  # positive inputs: correlated examples
    measured = {e: draws(layer, e).var(0).mean() for e in ("lrt", "separate", "single")}
    assert measured["lrt"] < measured["separate"] < measured["single"]


def test_separate_samples_weigh_uneven_chunks_right() -> None:
    """Without noise, separate samples are the exact gradient whatever the chunks (6 = 4 + 2)."""
    torch.manual_seed(0)
    f64 = torch.float64
    stack = NoisyStack(
        [torch.randn(4, 3, dtype=f64), torch.randn(2, 4, dtype=f64)],
        [torch.zeros(4, dtype=f64), None],
        [torch.full((4, 3), -math.inf, dtype=f64), torch.tensor(-math.inf, dtype=f64)],
    )
    x, y = torch.randn(6, 3, dtype=f64), torch.tensor([0, 1, 0, 1, 1, 0])
    exact = minibatch_gradient(stack, x, y, "none", [0, 1], scale=7.0)
    for chunk in (1, 4, 6, 10):
        got = minibatch_gradient(stack, x, y, "separate", [0, 1], scale=7.0, chunk=chunk)
        for g, e in zip(got, exact, strict=True):
            assert torch.allclose(g, e, atol=1e-12)


def test_grouped_variance_matches_the_pooled_statistic() -> None:
    torch.manual_seed(1)
    values = torch.randn(20, 7, dtype=torch.float64) * torch.arange(1, 8)
    acc = GroupedVariance(group_size=5)
    for row in values:
        acc.add(row)
    mean, se = acc.result()
    expected = [float(values[i : i + 5].var(0).mean()) for i in range(0, 20, 5)]
    assert acc.groups == pytest.approx(expected)
    assert mean == pytest.approx(sum(expected) / 4)
    assert se == pytest.approx(float(torch.tensor(expected).std() / 2))


def test_unknown_estimator_is_refused(layer) -> None:
    stack = NoisyStack([layer["theta"]], [None], [layer["log_alpha"]])
    with pytest.raises(ValueError, match="unknown estimator"):
        minibatch_gradient(stack, layer["x"], torch.zeros(5, dtype=torch.long), "both", [0])  # type: ignore[arg-type]
    assert set(ESTIMATORS) == {"lrt", "separate", "single", "none"}
