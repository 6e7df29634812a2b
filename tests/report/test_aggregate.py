"""Report statistics on hand-made run tables, checked against hand arithmetic and scipy."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from sparsebench.report import aggregate, tables


def test_t_interval_matches_hand_arithmetic_and_scipy() -> None:
    s = aggregate.t_interval([1.0, 2.0, 4.0, math.nan])  # the NaN is a run without the metric
    # mean 7/3; sample variance ((4/3)^2 + (1/3)^2 + (5/3)^2) / 2 = 7/3; t_{0.975, 2} = 4.302653
    assert s.n == 3
    assert s.mean == pytest.approx(7 / 3)
    assert s.std == pytest.approx(math.sqrt(7 / 3))
    half = 4.302652729911275 * math.sqrt(7 / 3) / math.sqrt(3)
    assert (s.ci_low, s.ci_high) == pytest.approx((7 / 3 - half, 7 / 3 + half))
    low, high = stats.t.interval(0.95, df=2, loc=7 / 3, scale=stats.sem([1.0, 2.0, 4.0]))
    assert (s.ci_low, s.ci_high) == pytest.approx((low, high))


def test_t_interval_of_one_value_has_no_spread() -> None:
    s = aggregate.t_interval([1.92])
    assert s.mean == 1.92 and s.n == 1
    assert math.isnan(s.std) and math.isnan(s.ci_low) and math.isnan(s.ci_high)
    assert aggregate.t_interval([]).n == 0


def test_group_stats_means_counts_and_missing_metrics() -> None:
    runs = pd.DataFrame(
        {
            "method": ["a", "a", "a", "b", "b"],
            "test": [1.0, 2.0, 3.0, 5.0, 7.0],
            "peak": [10.0, math.nan, 30.0, math.nan, math.nan],
        }
    )
    out = aggregate.group_stats(runs, ["method"], ["test", "peak"]).set_index("method")
    assert out.loc["a", "n"] == 3 and out.loc["b", "n"] == 2
    assert out.loc["a", "test_mean"] == 2.0 and out.loc["a", "test_std"] == 1.0
    assert out.loc["b", "test_mean"] == 6.0 and out.loc["b", "test_std"] == pytest.approx(math.sqrt(2))
    # t_{0.975,1} = 12.7062: the 2-seed interval is wide, as it should be
    assert out.loc["b", "test_ci_high"] - 6.0 == pytest.approx(12.706204736 * math.sqrt(2) / math.sqrt(2))
    assert out.loc["a", "peak_n"] == 2 and out.loc["a", "peak_mean"] == 20.0
    assert out.loc["b", "peak_n"] == 0 and math.isnan(out.loc["b", "peak_mean"])


def test_pareto_mask_keeps_exactly_the_undominated_points() -> None:
    compression = [1.0, 10.0, 10.0, 5.0, 50.0, 50.0, 20.0, 30.0]
    error = [1.6, 1.7, 1.9, 2.0, 2.5, 2.5, math.nan, 2.6]
    # (10, 1.9) loses to (10, 1.7); (5, 2.0) to (10, 1.7); (30, 2.6) to (50, 2.5); duplicates stay; NaN never
    expected = [True, True, False, False, True, True, False, False]
    assert aggregate.pareto_mask(compression, error).tolist() == expected


def test_pareto_mask_brute_force_on_random_points() -> None:
    rng = np.random.default_rng(0)
    c, e = rng.uniform(1, 100, 60), rng.uniform(0, 5, 60)
    mask = aggregate.pareto_mask(c, e)
    for i in range(60):
        dominated = any(c[j] >= c[i] and e[j] <= e[i] and (c[j] > c[i] or e[j] < e[i]) for j in range(60))
        assert mask[i] == (not dominated)
    front = np.sort(c[mask])
    errors = e[mask][np.argsort(c[mask])]
    assert np.all(np.diff(front) > 0) and np.all(np.diff(errors) > 0)  # a front trades one for the other


def test_interpolate_log_is_linear_in_log_compression() -> None:
    levels = [5.0, 10.0, math.sqrt(1000.0), 20.0, 100.0, 200.0]
    out = aggregate.interpolate_log([100.0, 10.0, 10.0], [4.0, 1.0, 3.0], levels)  # 10x averages to 2.0
    assert math.isnan(out[0]) and math.isnan(out[5])
    assert out[1] == pytest.approx(2.0)
    assert out[2] == pytest.approx(3.0)  # geometric midpoint of 10x and 100x -> arithmetic mean
    assert out[3] == pytest.approx(2.0 + 2.0 * math.log(2.0) / math.log(10.0))
    assert out[4] == pytest.approx(4.0)
    held = aggregate.interpolate_log([10.0, 100.0], [2.0, 4.0], [5.0, 200.0], hold_low=True)
    assert held[0] == 2.0 and math.isnan(held[1])


def _runs(rows: list[tuple[str, str, str, int, float, float, float]]) -> pd.DataFrame:
    return pd.DataFrame(
        rows, columns=["run_id", "method", "setting", "seed", "compression", "val", "test"]
    ).assign(task="t")


def test_matched_errors_follow_the_validation_front_not_the_test_metric() -> None:
    runs = _runs([("r0", "svd", "default", 0, 10.0, 2.0, 2.1)])
    curves = pd.DataFrame(
        {
            "run_id": ["r0"] * 4,
            "threshold": [1.0, 2.0, 3.0, 4.0],
            "compression": [20.0, 20.0, 40.0, 5.0],
            "val_metric": [3.0, 3.5, 5.0, 2.5],
            # (20x, val 3.5) has the best test error but a worse validation error: it must not be chosen;
            # (5x, val 2.5) is dominated by the final model (10x, val 2.0).
            "test_metric": [3.1, 1.0, 5.1, 0.5],
        }
    )
    matched = aggregate.matched_errors(runs, curves, (5.0, math.sqrt(200.0), 20.0, 40.0, 80.0)).set_index(
        "level"
    )
    assert matched.loc[5.0, "test_metric"] == pytest.approx(2.1)  # below the front: its first point
    assert matched.loc[math.sqrt(200.0), "test_metric"] == pytest.approx((2.1 + 3.1) / 2)
    assert matched.loc[20.0, "test_metric"] == pytest.approx(3.1)
    assert matched.loc[40.0, "test_metric"] == pytest.approx(5.1)
    assert 80.0 not in matched.index  # never reached
    spans = aggregate.front_spans(runs, curves)
    assert spans.low.iloc[0] == 10.0 and spans.high.iloc[0] == 40.0


def test_matched_errors_pool_a_seeds_settings() -> None:
    # Two settings of one method (a sweep): seed 0 has a 10x and a 100x model; the front joins them.
    runs = _runs(
        [
            ("a", "mag", "s=0.9", 0, 10.0, 1.0, 1.2),
            ("b", "mag", "s=0.99", 0, 100.0, 3.0, 3.2),
            ("c", "mag", "s=0.9", 1, 10.0, 1.5, 1.4),
        ]
    )
    matched = aggregate.matched_errors(runs, pd.DataFrame(columns=["run_id"]), (10.0, 100.0))
    seed0 = matched[matched.seed == 0].set_index("level").test_metric
    assert seed0[10.0] == pytest.approx(1.2) and seed0[100.0] == pytest.approx(3.2)
    seed1 = matched[matched.seed == 1].set_index("level").test_metric
    assert list(seed1.index) == [10.0] and seed1[10.0] == pytest.approx(1.4)


def _matched(values: dict[str, list[float]], seeds: list[int]) -> pd.DataFrame:
    rows = [
        {"task": "t", "method": m, "seed": s, "level": 10.0, "test_metric": v}
        for m, vs in values.items()
        for s, v in zip(seeds, vs, strict=True)
    ]
    return pd.DataFrame(rows).sample(frac=1.0, random_state=0)  # pairing must not rely on row order


def test_paired_test_pairs_by_seed_and_matches_scipy() -> None:
    a = [2.0, 2.5, 2.2, 9.9]
    b = [1.9, 2.2, 2.0]
    matched = _matched({"a": a, "b": b + [math.nan]}, [0, 1, 2, 3]).dropna()  # seed 3 ran only for a
    test = aggregate.paired_tests(matched).iloc[0]
    assert (test.method_a, test.method_b, test.n_pairs) == ("a", "b", 3)
    # differences 0.1, 0.3, 0.2: mean 0.2, sd 0.1, t = 0.2 / (0.1 / sqrt 3)
    assert test.mean_diff == pytest.approx(0.2)
    assert test.t == pytest.approx(2 * math.sqrt(3))
    assert test.p == pytest.approx(2 * stats.t.sf(2 * math.sqrt(3), df=2))
    assert test.p == pytest.approx(stats.ttest_rel(a[:3], b).pvalue)


def test_paired_test_needs_enough_shared_seeds() -> None:
    test = aggregate.paired_tests(_matched({"a": [1.0, 2.0], "b": [1.5, 2.5]}, [0, 1])).iloc[0]
    assert test.n_pairs == 2 and math.isnan(test.p) and test.mean_diff == pytest.approx(-0.5)


def test_best_at_levels_marks_best_and_significance() -> None:
    matched = _matched(
        {"good": [1.0, 1.1, 1.2, 1.05], "bad": [2.0, 2.2, 2.1, 2.3], "close": [1.1, 1.0, 1.3, 1.0]},
        [0, 1, 2, 3],
    )
    summary = aggregate.matched_summary(matched)
    marked = aggregate.best_at_levels(summary, aggregate.paired_tests(matched)).set_index("method")
    assert bool(marked.loc["good", "best"]) and not bool(marked.loc["bad", "best"])
    assert marked.loc["bad", "vs_best"] == "worse" and marked.loc["bad", "p_vs_best"] < 0.05
    assert marked.loc["close", "vs_best"] == "n.s."
    assert marked.loc["good", "test_metric_mean"] == pytest.approx(np.mean([1.0, 1.1, 1.2, 1.05]))


def test_a_method_with_one_seed_is_never_best() -> None:
    """One lucky seed (0.5) must not take the bold from a method whose three seeds a test can check."""
    three = _matched({"steady": [1.0, 1.1, 1.2], "other": [2.0, 2.1, 2.2]}, [0, 1, 2])
    lucky = _matched({"lucky": [0.5]}, [0])
    matched = pd.concat([three, lucky])
    summary = aggregate.matched_summary(matched)
    marked = aggregate.best_at_levels(summary, aggregate.paired_tests(matched)).set_index("method")
    assert marked.best.to_dict() == {"steady": True, "other": False, "lucky": False}
    assert marked.loc["lucky", "vs_best"] == "" and marked.loc["other", "vs_best"] == "worse"
    only_one = aggregate.matched_summary(lucky)
    assert not aggregate.best_at_levels(only_one, aggregate.paired_tests(lucky)).best.any()


def test_formatting_follows_the_papers() -> None:
    assert tables.fmt_x(280.4) == "280x" and tables.fmt_x(12.34) == "12.3x"
    assert tables.fmt_pm(1.923, 0.051) == "1.92 ± 0.05" and tables.fmt_pm(1.923, math.nan) == "1.92"
    assert tables.fmt_layers((98.94, 97.2, 62.0)) == "98.9-97.2-62.0"
    assert tables.fmt_ci(math.nan, math.nan) == tables.DASH


def test_a_key_only_newer_runs_log_is_not_a_setting() -> None:
    """Runs logged before a config key existed have no value for it: same setting, not a new one."""

    from sparsebench.report.select import setting_labels

    raw = pd.DataFrame(
        {
            "tags.task": ["t"] * 4,
            "tags.method": ["m"] * 4,
            "params.train.seed": ["0", "1", "0", "0"],
            "params.train.amp": [np.nan, "True", "True", np.nan],
            "params.train.compile": [np.nan, "auto", "never", np.nan],
            "params.method.kl_weight": ["1.0", "1.0", "1.0", "2.0"],
        }
    )
    assert list(setting_labels(raw)) == ["kl_weight=1.0", "kl_weight=1.0", "kl_weight=1.0", "kl_weight=2.0"]
