"""Seed statistics, Pareto fronts and matched-compression comparisons, on plain pandas frames.

Conventions: compression is "higher is better", the task metric (error, perplexity) "lower is
better"; interpolation happens on a log-compression axis because compression levels multiply
(10x to 20x is the same step as 50x to 100x); the validation metric chooses which points form a
front and the test metric is only read off it, so no test number is used to select.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

CONFIDENCE = 0.95
MIN_PAIRS = 3
"""Fewest seeds both methods must share before a paired test is reported."""
ALPHA = 0.05


@dataclass(frozen=True)
class Stat:
    """Mean, sample standard deviation and a t-based confidence interval of one quantity."""

    mean: float
    std: float
    ci_low: float
    ci_high: float
    n: int


def t_interval(values: object, confidence: float = CONFIDENCE) -> Stat:
    """Student-t interval of the mean; NaNs are dropped, one value gives no spread (NaN)."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    n = len(x)
    if n == 0:
        return Stat(math.nan, math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n == 1:
        return Stat(mean, math.nan, math.nan, math.nan, 1)
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, df=n - 1)) * std / math.sqrt(n)
    return Stat(mean, std, mean - half, mean + half, n)


def group_stats(frame: pd.DataFrame, by: list[str], columns: list[str]) -> pd.DataFrame:
    """One row per group with ``<col>_mean/_std/_ci_low/_ci_high``, ``n`` and ``runs``.

    With a ``seed`` column (not among ``by``), statistics are over *distinct seeds*: runs of one seed
    are replicas (the same initialisation and batch order, differing only by machine noise), so
    they are averaged into one value first and ``n`` counts seeds, while ``runs`` counts runs.
    Without one, ``n`` counts rows. A column's own count is ``<col>_n`` (metrics that some runs
    lack, such as peak memory, have fewer values).
    """
    rows = []
    for keys, group in frame.groupby(by, sort=False, dropna=False):
        row = dict(zip(by, keys if isinstance(keys, tuple) else (keys,), strict=True))
        values = per_seed(group, columns) if "seed" in group and "seed" not in by else group
        row["n"] = len(values)
        row["runs"] = len(group)
        for column in columns:
            s = t_interval(values[column]) if column in values else t_interval([])
            row.update(
                {
                    f"{column}_mean": s.mean,
                    f"{column}_std": s.std,
                    f"{column}_ci_low": s.ci_low,
                    f"{column}_ci_high": s.ci_high,
                    f"{column}_n": s.n,
                }
            )
        rows.append(row)
    return pd.DataFrame(rows)


def per_seed(group: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """One row per distinct seed: the mean of its runs' values (a run without a seed is its own)."""
    own = pd.Series([f"run {i}" for i in range(len(group))], index=group.index, dtype=object)
    key = group.seed.astype(object).where(group.seed.notna(), own)
    present = [c for c in columns if c in group]
    numbers = group[present].apply(pd.to_numeric, errors="coerce")
    return numbers.groupby(key.to_numpy(), sort=False).mean()


def pareto_mask(compression: object, error: object) -> np.ndarray:
    """True for points no other point beats: at least as compressed and as accurate, better in one.

    Identical points do not dominate each other, so duplicates stay on the front together.
    NaN points are never on it.
    """
    c = np.asarray(compression, dtype=float)
    e = np.asarray(error, dtype=float)
    ok = ~(np.isnan(c) | np.isnan(e))
    mask = np.zeros(len(c), dtype=bool)
    for i in np.flatnonzero(ok):
        others = ok & (c >= c[i]) & (e <= e[i]) & ((c > c[i]) | (e < e[i]))
        mask[i] = not others.any()
    return mask


def pareto_front(points: pd.DataFrame, x: str = "compression", y: str = "val_metric") -> pd.DataFrame:
    """The non-dominated rows of ``points``, sorted by compression."""
    if points.empty:
        return points
    return points[pareto_mask(points[x], points[y])].sort_values([x, y]).reset_index(drop=True)


def interpolate_log(
    compression: object, values: object, levels: object, hold_low: bool = False
) -> np.ndarray:
    """Linear interpolation of ``values`` over log(compression); NaN outside the covered range.

    Repeated compression values are averaged first so the abscissa is strictly increasing. With
    ``hold_low`` a level below the lowest compression takes the value there instead of NaN: on a
    Pareto front that point is a model at least as compressed as the level asks.
    """
    frame = pd.DataFrame({"c": np.asarray(compression, float), "v": np.asarray(values, float)}).dropna()
    frame = frame[frame.c > 0].groupby("c", as_index=False).v.mean()
    out = np.full(len(np.atleast_1d(levels)), np.nan)
    if frame.empty:
        return out
    log_c = np.log(frame.c.to_numpy())
    log_levels = np.log(np.asarray(levels, dtype=float))
    low = -np.inf if hold_low else log_c[0] - 1e-12
    inside = (log_levels >= low) & (log_levels <= log_c[-1] + 1e-12)
    out[inside] = np.interp(log_levels[inside], log_c, frame.v.to_numpy())  # np.interp holds the end values
    return out


def degenerate(frame: pd.DataFrame, columns: tuple[str, ...], weights: object = None) -> pd.Series:
    """True for points that are no compression result: left out of fronts, matched tables and plots.

    The rule: a point is degenerate when

    - its ``compression`` or any of ``columns`` (metrics, a curve's threshold) is not finite: a
      ``method.threshold=nan`` run or curve row, a diverged metric;
    - its compression is below 1: weights / nonzero weights cannot be, so the count is broken;
    - its model keeps no weight: ``nonzeros`` is 0 where logged, or the compression reaches the
      network's weight count ``weights`` (``weights / max(1, nonzeros)`` gets there only with at most
      one weight left). Such a model reads nothing; its "266200x" (LeNet-300-100 fully pruned) would
      stretch every axis and span while saying nothing about the method.
    """
    bad = pd.Series(False, index=frame.index)
    for column in ("compression", *columns):
        if column in frame:
            bad |= ~np.isfinite(pd.to_numeric(frame[column], errors="coerce").astype(float))
    if "compression" in frame:
        compression = pd.to_numeric(frame.compression, errors="coerce")
        bad |= compression < 1.0 - 1e-9
        if weights is not None:
            size = pd.to_numeric(pd.Series(weights, index=frame.index), errors="coerce")
            bad |= (size > 1) & (compression >= size)
    if "nonzeros" in frame:
        bad |= pd.to_numeric(frame.nonzeros, errors="coerce") == 0
    return bad


def drop_degenerate(
    runs: pd.DataFrame, curves: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Runs and curve points that are compression results, and the runs left out (``degenerate``).

    A run is judged by its final model (test metric and compression); a curve point by its
    threshold, both metrics and compression, against its run's weight count.
    """
    size = runs.weights if "weights" in runs else None
    bad_runs = degenerate(runs, ("test",), size)
    kept = runs[~bad_runs]
    if curves.empty:
        return kept, curves, runs[bad_runs]
    curve_size = curves.run_id.map(runs.set_index("run_id").weights) if size is not None else None
    bad_points = degenerate(curves, ("threshold", "val_metric", "test_metric"), curve_size)
    return kept, curves[~bad_points & curves.run_id.isin(kept.run_id)], runs[bad_runs]


def run_points(runs: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame:
    """Every (compression, val, test) point a run produced: its final model and its threshold curve.

    Degenerate points (``degenerate``: not finite, or a model that keeps no weight) are left out.
    """
    runs, curves, _ = drop_degenerate(runs, curves)
    finals = runs[["run_id", "compression", "val", "test"]].rename(
        columns={"val": "val_metric", "test": "test_metric"}
    )
    finals = finals.assign(source="final")
    parts = [finals]
    if not curves.empty:
        parts.append(curves[["run_id", "compression", "val_metric", "test_metric"]].assign(source="curve"))
    points = pd.concat(parts, ignore_index=True)
    return points.merge(runs[["run_id", "task", "method", "setting", "seed"]], on="run_id")


def seed_fronts(runs: pd.DataFrame, curves: pd.DataFrame) -> dict[tuple, pd.DataFrame]:
    """Validation Pareto front of each (task, method, seed) over all of that seed's points.

    A seed's points are every setting's final model and threshold curve with that seed, so a
    method tuned over several settings is judged by the best it reached, as chosen on validation.
    """
    points = run_points(runs, curves)
    return {
        key: pareto_front(group, "compression", "val_metric")
        for key, group in points.groupby(["task", "method", "seed"], sort=False, dropna=False)
    }


def matched_errors(runs: pd.DataFrame, curves: pd.DataFrame, levels: tuple[float, ...]) -> pd.DataFrame:
    """Test metric of each (task, method, seed) at each compression level.

    The test metric is interpolated along the seed's validation front (``seed_fronts``) on a
    log-compression axis. Below the front's lowest compression the front's first point answers
    (a model at least that compressed exists); beyond its highest the level is left out (not
    reached), since nothing says how a more compressed model would do.
    """
    rows = []
    for (task, method, seed), front in seed_fronts(runs, curves).items():
        values = interpolate_log(front.compression, front.test_metric, levels, hold_low=True)
        for level, value in zip(levels, values, strict=True):
            if not math.isnan(value):
                rows.append(
                    {"task": task, "method": method, "seed": seed, "level": level, "test_metric": value}
                )
    return pd.DataFrame(rows, columns=["task", "method", "seed", "level", "test_metric"])


def front_spans(runs: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame:
    """The compression range of each method's seed fronts (lowest and highest over its seeds)."""
    rows = [
        {"task": task, "method": method, "low": front.compression.min(), "high": front.compression.max()}
        for (task, method, _seed), front in seed_fronts(runs, curves).items()
    ]
    frame = pd.DataFrame(rows, columns=["task", "method", "low", "high"])
    return frame.groupby(["task", "method"], as_index=False, sort=False).agg(
        low=("low", "min"), high=("high", "max")
    )


def matched_summary(matched: pd.DataFrame) -> pd.DataFrame:
    """Mean, std and 95 % CI across seeds of the matched-compression test metric."""
    if matched.empty:
        return pd.DataFrame(columns=["task", "method", "level", "n"])
    return group_stats(matched, ["task", "method", "level"], ["test_metric"])


def paired_tests(matched: pd.DataFrame, min_pairs: int = MIN_PAIRS) -> pd.DataFrame:
    """Paired t-tests between every two methods of a task at each level, pairing runs by seed.

    A seed pairs the two methods' runs because it fixes initialisation and batch order, so the
    difference of a pair removes that shared noise. Pairs fewer than ``min_pairs`` give no test.
    """
    columns = ["task", "level", "method_a", "method_b", "n_pairs", "mean_diff", "t", "p"]
    rows = []
    for (task, level), group in matched.groupby(["task", "level"], sort=False):
        wide = group.pivot_table(index="seed", columns="method", values="test_metric", aggfunc="mean")
        for a, b in itertools.combinations(sorted(wide.columns), 2):
            pair = wide[[a, b]].dropna()
            diff = pair[a] - pair[b]
            n = len(pair)
            if n >= min_pairs and diff.std(ddof=1) > 0:
                result = stats.ttest_rel(pair[a], pair[b])
                t, p = float(result.statistic), float(result.pvalue)
            elif n >= min_pairs:  # identical differences: no spread, a t statistic is undefined
                t, p = math.nan, (1.0 if diff.abs().max() == 0 else 0.0)
            else:
                t, p = math.nan, math.nan
            rows.append(
                {
                    "task": task,
                    "level": level,
                    "method_a": a,
                    "method_b": b,
                    "n_pairs": n,
                    "mean_diff": float(diff.mean()) if n else math.nan,
                    "t": t,
                    "p": p,
                }
            )
    return pd.DataFrame(rows, columns=columns)


def best_at_levels(
    summary: pd.DataFrame, tests: pd.DataFrame, alpha: float = ALPHA, min_seeds: int = MIN_PAIRS
) -> pd.DataFrame:
    """Mark, per task and level, the method with the lowest mean and who differs from it.

    Adds ``best`` (bool) and ``vs_best`` to ``summary``: ``worse`` when the paired test against
    the best has p < alpha, ``n.s.`` when it has not, and empty when seeds were too few to test.
    Only a method with ``min_seeds`` seeds or more can be best: one seed's lucky error is no lead
    that a test could confirm.
    """
    out = summary.copy()
    out["best"] = False
    out["vs_best"] = ""
    out["p_vs_best"] = math.nan
    for (_task, _level), group in out.groupby(["task", "level"], sort=False):
        valid = group.dropna(subset=["test_metric_mean"])
        testable = valid[valid.n >= min_seeds]
        if testable.empty:
            continue
        best_index = testable.test_metric_mean.idxmin()
        best = out.at[best_index, "method"]
        out.at[best_index, "best"] = True
        for index in valid.index.drop(best_index):
            method = out.at[index, "method"]
            pair = tests[
                (tests.task == out.at[index, "task"])
                & (tests.level == out.at[index, "level"])
                & (
                    ((tests.method_a == method) & (tests.method_b == best))
                    | ((tests.method_a == best) & (tests.method_b == method))
                )
            ]
            if pair.empty or math.isnan(pair.p.iloc[0]):
                continue
            p = float(pair.p.iloc[0])
            out.at[index, "p_vs_best"] = p
            out.at[index, "vs_best"] = "worse" if p < alpha else "n.s."
    return out


def run_epoch_seconds(history: pd.DataFrame) -> pd.Series:
    """Mean seconds per training epoch of each run (validation excluded, as the runner times it)."""
    seconds = history[history.key == "epoch_seconds"]
    return seconds.groupby("run_id").value.mean()
