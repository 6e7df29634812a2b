"""Seed statistics count distinct seeds: two runs of one seed are replicas, averaged into one value."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from sparsebench.report.aggregate import group_stats, t_interval


def frame(seeds: list[float], errors: list[float]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "task": "t",
            "method": "m",
            "setting": "default",
            "seed": seeds,
            "test": errors,
            "run_id": range(len(seeds)),
        }
    )


def test_two_runs_of_one_seed_are_one_seed_not_a_spread_of_zero() -> None:
    (row,) = group_stats(frame([0, 0], [6.43, 6.43]), ["task", "method", "setting"], ["test"]).itertuples()
    assert row.n == 1 and row.runs == 2
    assert row.test_mean == pytest.approx(6.43) and math.isnan(row.test_std) and math.isnan(row.test_ci_low)


def test_replicas_are_averaged_before_the_interval_over_seeds() -> None:
    runs = frame([0, 0, 1, 2], [1.0, 3.0, 2.5, 3.5])  # seed 0 twice: 1.0 and 3.0 -> 2.0
    (row,) = group_stats(runs, ["task", "method", "setting"], ["test"]).itertuples()
    expected = t_interval([2.0, 2.5, 3.5])
    assert row.n == 3 and row.runs == 4
    assert row.test_mean == pytest.approx(expected.mean)
    assert (row.test_ci_low, row.test_ci_high) == pytest.approx((expected.ci_low, expected.ci_high))


def test_a_run_without_a_seed_counts_on_its_own() -> None:
    (row,) = group_stats(frame([math.nan, math.nan, 1], [1.0, 2.0, 3.0]), ["task"], ["test"]).itertuples()
    assert row.n == 3


def test_without_a_seed_column_rows_are_counted() -> None:
    layers = pd.DataFrame({"layer": ["fc1", "fc1"], "sparsity": [90.0, 92.0]})
    (row,) = group_stats(layers, ["layer"], ["sparsity"]).itertuples()
    assert row.n == 2 and row.sparsity_mean == pytest.approx(91.0)
