"""``sparsebench.toolkit.kl`` against quadrature of the exact KL (methods.md sections 11.1-11.4 and 11.10).

The exact Sparse VD KL to the log-uniform prior, normalised to vanish as alpha -> infinity, is
E log|xi + alpha^(-1/2)| - E log|xi| with xi ~ N(0, 1) (section 2.4); it is computed here by
adaptive quadrature split at the integrable log singularity, independent of the code under test.
"""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
import pytest
import torch
from scipy import integrate

from sparsebench.toolkit.kl import kingma_neg_kl, kl_warmup, sparse_vd_kl, sparse_vd_kl_sum

E_LOG_ABS_NORMAL = -(np.euler_gamma + math.log(2.0)) / 2  # E log|xi| = -0.6351814
_NORMAL_PDF = 1.0 / math.sqrt(2.0 * math.pi)


def exact_kl(log_alpha: float) -> float:
    """KL(log alpha) by quadrature of E log|xi + mu|, mu = exp(-log_alpha / 2)."""
    mu = math.exp(-log_alpha / 2)

    def integrand(t: float) -> float:
        return _NORMAL_PDF * math.exp(-0.5 * t * t) * math.log(abs(t + mu))

    # The normal mass beyond |t| = 40 is below 1e-300; split at the singularity t = -mu and at 0.
    lo, hi = -40.0, 40.0
    cuts = sorted({lo, hi, 0.0} | {c for c in (-mu - 1.0, -mu, -mu + 1.0) if lo < c < hi})
    value = sum(integrate.quad(integrand, a, b, limit=200)[0] for a, b in pairwise(cuts))
    return value - E_LOG_ABS_NORMAL


def approx_kl(log_alpha: float | np.ndarray) -> np.ndarray:
    return sparse_vd_kl(torch.as_tensor(log_alpha, dtype=torch.float64)).numpy()


REFERENCE = [  # log alpha: (exact, approx), methods.md section 11.1
    (-8.0, 4.63501, 4.63590),
    (-4.0, 2.62575, 2.63421),
    (-2.0, 1.54415, 1.54053),
    (0.0, 0.42669, 0.43124),
    (2.0, 0.06617, 0.06842),
    (3.0, 0.02469, 0.02542),
    (4.0, 0.00913, 0.00933),
    (8.0, 0.00017, 0.00017),
]


def test_exact_kl_quadrature_is_right_where_it_is_known() -> None:
    # alpha -> infinity: the KL vanishes; alpha = 1 (mu = 1): E log|xi + 1| by a second route.
    assert abs(exact_kl(40.0)) < 1e-8
    rng = np.random.default_rng(0)
    sample = np.log(np.abs(rng.standard_normal(1_000_000) + 1.0))
    standard_error = sample.std() / math.sqrt(sample.size)
    assert abs(exact_kl(0.0) - (sample.mean() - E_LOG_ABS_NORMAL)) < 5 * standard_error


@pytest.mark.parametrize(("log_alpha", "exact", "approx"), REFERENCE)
def test_reference_table(log_alpha: float, exact: float, approx: float) -> None:
    assert exact_kl(log_alpha) == pytest.approx(exact, abs=1e-5)
    assert float(approx_kl(log_alpha)) == pytest.approx(approx, abs=1e-5)


def test_approximation_error_on_the_fit_range() -> None:
    grid = np.linspace(-10.0, 10.0, 201)
    error = approx_kl(grid) - np.array([exact_kl(x) for x in grid])
    assert np.abs(error).max() <= 0.0095
    # The signed error of section 2.4, worst near log alpha = -3.5.
    assert error.min() >= -0.0045 and error.max() <= 0.0095
    assert grid[np.abs(error).argmax()] == pytest.approx(-3.5, abs=0.3)


def test_kl_is_nonnegative_and_strictly_decreasing() -> None:
    grid = np.linspace(-20.0, 20.0, 20001)
    values = approx_kl(grid)
    assert values.min() >= -0.005
    assert np.all(np.diff(values) < 0)
    assert float(approx_kl(8.0)) < 2e-4


@pytest.mark.parametrize(("log_alpha", "slope"), [(-4.0, -0.5065), (0.0, -0.3591), (3.0, -0.0254)])
def test_autograd_derivative(log_alpha: float, slope: float) -> None:
    x = torch.tensor(log_alpha, dtype=torch.float64, requires_grad=True)
    sparse_vd_kl(x).backward()
    assert float(x.grad) == pytest.approx(slope, abs=1e-4)


def test_slope_tends_to_minus_one_half_for_small_alpha() -> None:
    x = torch.tensor(-30.0, dtype=torch.float64, requires_grad=True)
    sparse_vd_kl(x).backward()
    assert float(x.grad) == pytest.approx(-0.5, abs=1e-9)


def test_summed_kl_equals_the_sum_of_per_weight_terms() -> None:
    torch.manual_seed(0)
    log_alpha = torch.empty(37, 11, dtype=torch.float64).uniform_(-8, 8)
    assert float(sparse_vd_kl_sum(log_alpha)) == pytest.approx(
        float(sparse_vd_kl(log_alpha).sum()), rel=1e-12
    )


@pytest.mark.parametrize(("low", "lower", "upper"), [(0.1, -0.6755, -0.6669), (1e-3, -0.6755, -0.6358)])
def test_kingma_polynomial_is_the_exact_kl_up_to_a_near_constant(
    low: float, lower: float, upper: float
) -> None:
    # methods.md section 11.4: -KL_exact - (0.5 log alpha + c1 alpha + c2 alpha^2 + c3 alpha^3).
    alphas = np.exp(np.linspace(math.log(low), 0.0, 200))
    gap = -np.array([exact_kl(math.log(a)) for a in alphas]) - kingma_neg_kl(torch.tensor(alphas)).numpy()
    assert lower - 1e-4 <= gap.min() and gap.max() <= upper + 1e-4
    assert gap.min() <= lower + 1e-3 and gap.max() >= upper - 1e-3  # the bounds are attained


@pytest.mark.parametrize(
    ("epoch", "beta"),
    [(0, 0.0), (1, 0.0), (4, 0.0), (5, 0.0), (6, 1 / 15), (12, 7 / 15), (19, 14 / 15), (20, 1.0), (200, 1.0)],
)
def test_default_warmup_schedule(epoch: int, beta: float) -> None:
    assert kl_warmup(epoch, start=5, ramp=15) == pytest.approx(beta, abs=1e-15)


def test_zero_ramp_jumps_to_full_kl() -> None:
    assert [kl_warmup(e, start=0, ramp=0) for e in range(3)] == [1.0, 1.0, 1.0]
    assert [kl_warmup(e, start=2, ramp=0) for e in range(4)] == [0.0, 0.0, 1.0, 1.0]
