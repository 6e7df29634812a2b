"""The published findings of the matched-sparsity comparison, each judged from our records.

Gale, Elsen and Hooker (2019) compared magnitude pruning, random pruning, Sparse VD and L0
regularisation at matched sparsity on Transformer and ResNet-50. Issue 20 sums up what they found in
three statements; each is turned here into a rule a set of records can pass or fail, so the report
says whether MNIST agrees from the numbers, never from a sentence written by hand:

- magnitude pruning is strong at moderate sparsity: it agrees when at every target up to 95 % it has
  the lowest mean test error; where it is only not significantly worse than the method that has
  (paired t-test over seeds, p >= 0.05), the records are consistent with the finding, no more;
- Sparse VD is best at the highest sparsity: at the highest target both it and another method
  reach, it has the lowest mean test error and every other method is significantly worse (paired
  t-test, p < 0.05). A lowest mean alone is no verdict: where every method has collapsed, means of
  70-90 % error differ by noise;
- L0 regularisation is less reliable: its test error varies more from seed to seed, relative to its
  mean (coefficient of variation, averaged over the targets every compared method reaches with two
  seeds or more), than magnitude pruning's and Sparse VD's. Targets where L0's mean error is over
  twice the others' lowest are named beside it: there the recipe failed, whatever the spread. Only
  models on their target count (an L0 run read at its own higher sparsity is not matched there), and
  the targets where L0 is significantly worse than the lowest mean are named too: Gale et al. found
  L0 unreliable at giving good sparse models at all, which seed spread alone does not show.

The paired tests behind every verdict are a table of their own (``matched_tests_table``).
"""

from __future__ import annotations

import pandas as pd

from sparsebench.report.aggregate import MIN_PAIRS, best_at_levels, matched_summary, paired_tests
from sparsebench.report.matched_points import pct
from sparsebench.report.tables import Table

MAGNITUDE, SPARSE_VD, L0 = "magnitude", "sparse_vd", "l0"
MODERATE = 0.95
"""Targets up to this sparsity count as moderate."""
COLLAPSE = 2.0
"""L0 collapsed at a target where its mean test error exceeds this multiple of the lowest other mean."""
PUBLISHED = (
    f"Magnitude pruning is strong at moderate sparsity (targets up to {pct(MODERATE)})",
    "Sparse VD is best at the highest sparsity",
    "L0 regularisation is less reliable (its results vary more)",
)
CITATION = "Gale, Elsen, Hooker 2019, The State of Sparsity in Deep Neural Networks (Transformer, ResNet-50)"


def judged(chosen: pd.DataFrame) -> pd.DataFrame:
    """Per (task, target, method): mean test error, the best method, and the paired test against it."""
    matched = chosen.rename(columns={"target": "level", "test": "test_metric"})
    matched = matched[["task", "method", "seed", "level", "test_metric"]]
    summary = matched_summary(matched)
    if summary.empty:
        return summary
    return best_at_levels(summary, paired_tests(matched))


TESTS_TABLE = "matched_sparsity_tests"
TESTS_NOTE = (
    "paired t-tests over seeds (n: the seeds both methods ran) against the method with the lowest mean "
    "at each target; p < 0.05 reads significantly worse; not corrected for multiple comparisons. Sparse "
    "VD and L0 pick among their grid points on validation, magnitude and random train one run per target."
)
STANDING_WORDS = {"worse": "significantly worse", "n.s.": "not significantly worse", "": "untested"}


def matched_tests_table(table: pd.DataFrame) -> Table | None:
    """The paired tests every verdict quotes (``judged``'s table, the one ``findings`` was given), as a
    table of their own so that each p can be traced."""
    if table.empty:
        return None
    numbers = table[["task", "level", "method", "n", "test_metric_mean", "best", "vs_best", "p_vs_best"]]
    numbers = numbers.rename(columns={"level": "target"}).sort_values(["task", "target", "test_metric_mean"])
    standing = [
        "lowest mean" if best else STANDING_WORDS[vs]
        for best, vs in zip(numbers.best, numbers.vs_best, strict=True)
    ]
    display = pd.DataFrame(
        {
            "task": numbers.task,
            "target": numbers.target.map(pct),
            "method": numbers.method,
            "n": numbers.n,
            "test error %": numbers.test_metric_mean.map("{:.2f}".format),
            "against the lowest mean": standing,
            "p": ["—" if pd.isna(v) else f"{v:.2g}" for v in numbers.p_vs_best],
        }
    )
    return Table(TESTS_TABLE, "Paired tests behind the findings", numbers, display, TESTS_NOTE, "analysis")


def standing(table: pd.DataFrame, task: str, target: float, method: str) -> tuple[str, str]:
    """(outcome, words) of ``method`` at one target: best, lowest (mean, untested or not significantly),
    tied, worse, behind (untested) or absent."""
    here = table[(table.task == task) & (table.level == target)].dropna(subset=["test_metric_mean"])
    mine = here[here.method == method]
    if mine.empty or len(here) < 2:
        return "absent", f"no comparison at {pct(target)}"
    row, best = mine.iloc[0], here.loc[here.test_metric_mean.idxmin()]
    if bool(row.best):
        return lowest(here, row, target)
    versus = f"{row.test_metric_mean:.2f} % vs {best.method} {best.test_metric_mean:.2f} %"
    if row.vs_best == "n.s.":
        return (
            "tied",
            f"not significantly worse than {best.method} at {pct(target)} "
            f"({versus}, p = {row.p_vs_best:.2g})",
        )
    if row.vs_best == "worse":
        return "worse", f"worse than {best.method} at {pct(target)} ({versus}, p = {row.p_vs_best:.2g})"
    return "behind", f"behind {best.method} at {pct(target)} ({versus}; too few paired seeds to test)"


def lowest(here: pd.DataFrame, row: pd.Series, target: float) -> tuple[str, str]:
    """The method with the lowest mean: ``best`` when every other is significantly worse, else
    ``lowest`` with the closest method that is not (or that had too few paired seeds to test)."""
    others = here[here.index != row.name]
    runner = others.test_metric_mean.min()
    words = f"at {pct(target)} ({row.test_metric_mean:.2f} % vs {runner:.2f} %)"
    unresolved = others[others.vs_best != "worse"].sort_values("test_metric_mean")
    if unresolved.empty:
        largest = others.p_vs_best.max()
        return "best", f"best {words}; every other method significantly worse (p <= {largest:.2g})"
    close = unresolved.iloc[0]
    why = f"p = {close.p_vs_best:.2g}" if close.vs_best == "n.s." else "too few paired seeds to test"
    which = (
        "lowest mean"
        if runner >= row.test_metric_mean
        else f"lowest mean of the methods with {MIN_PAIRS}+ seeds"
    )
    return "lowest", f"{which} {words}, not significantly below {close.method} ({why})"


def magnitude_moderate(table: pd.DataFrame, task: str) -> str:
    targets = sorted(t for t in table[table.task == task].level.unique() if t <= MODERATE + 1e-12)
    results = [standing(table, task, t, MAGNITUDE) for t in targets]
    results = [r for r in results if r[0] != "absent"]
    if not results:
        return "cannot be judged: no moderate target where magnitude pruning and another method have records"
    outcomes = {r[0] for r in results}
    if "worse" in outcomes:
        verdict = "disagrees"
    elif outcomes <= {"best", "lowest"}:
        verdict = "agrees"
    elif outcomes <= {"best", "lowest", "tied"}:
        lowest_somewhere = (
            "not the lowest mean everywhere" if outcomes & {"best", "lowest"} else "never the lowest mean"
        )
        verdict = f"consistent (never shown worse, though {lowest_somewhere})"
    else:
        verdict = "undecided"
    return f"{verdict}: " + "; ".join(r[1] for r in results)


def sparse_vd_highest(table: pd.DataFrame, task: str) -> str:
    here = table[(table.task == task)].dropna(subset=["test_metric_mean"])
    shared = [t for t, g in here.groupby("level") if SPARSE_VD in set(g.method) and len(g) >= 2]
    if not shared:
        return "cannot be judged: no target where Sparse VD and another method both have records"
    outcome, words = standing(table, task, max(shared), SPARSE_VD)
    verdict = {"best": "agrees", "tied": "partly (not the lowest mean, not significantly worse)"}
    return f"{verdict.get(outcome, 'disagrees' if outcome == 'worse' else 'undecided')}: {words}"


def on_target(chosen: pd.DataFrame) -> pd.Series:
    """Which chosen models sit at their target (to one weight): an L0 run that training left sparser
    is read at its own sparsity instead."""
    return chosen.sparsity - chosen.target <= 1.0 / chosen.weights.clip(lower=1) + 1e-12


def variation(chosen: pd.DataFrame, task: str, methods: tuple[str, ...]) -> tuple[dict[str, float], int]:
    """Per method, the coefficient of variation of test error over seeds, averaged over the targets at
    which every one of ``methods`` has two seeds or more, all on target, and how many targets that is.
    Shared targets only: a method averaged over targets the others lack (or that collapsed for it
    alone) would be judged on other ground; on target only: a model read at its own higher sparsity
    is not matched there, and the same model chosen at two targets would count twice."""
    here = chosen[(chosen.task == task) & chosen.method.isin(methods)]
    here = here.assign(on_target=on_target(here))
    per_point = (
        here.groupby(["method", "target"])
        .agg(std=("test", "std"), mean=("test", "mean"), count=("test", "count"), on=("on_target", "all"))
        .reset_index()
    )
    per_point = per_point[(per_point["count"] >= 2) & (per_point["mean"] > 0) & per_point["on"]]
    present = per_point.groupby("target").method.nunique()
    shared = present[present == len(methods)].index
    if len(shared) == 0:
        return {}, 0
    per_point = per_point[per_point.target.isin(shared)]
    cv = (per_point["std"] / per_point["mean"]).groupby(per_point.method).mean()
    return {m: float(cv[m]) for m in methods}, len(shared)


def l0_reliability(chosen: pd.DataFrame, table: pd.DataFrame, task: str) -> str:
    methods = tuple(m for m in (L0, MAGNITUDE, SPARSE_VD) if m in set(chosen[chosen.task == task].method))
    cv, shared = variation(chosen, task, methods) if L0 in methods and len(methods) > 1 else ({}, 0)
    if not shared:
        return (
            "cannot be judged: L0 and magnitude pruning or Sparse VD need two seeds at a shared target, "
            "each model on the target"
        )
    words = ", ".join(f"{m} {100 * v:.1f} %" for m, v in cv.items())
    verdict = "agrees" if all(cv[L0] > v for m, v in cv.items() if m != L0) else "disagrees"
    return (
        f"{verdict}: seed-to-seed variation of the test error (std / mean, averaged over the {shared} "
        f"target{'s' if shared != 1 else ''} all of them reach with two seeds or more, on target; point "
        f"estimates from few seeds) {words}{collapses(chosen, task)}{behind_best(table, task)}"
    )


def behind_best(table: pd.DataFrame, task: str) -> str:
    """A clause naming the targets where L0 is significantly worse than the method with the lowest
    mean: Gale et al.'s L0 was unreliable in giving good sparse models at all, which seed spread
    alone does not show."""
    worse = table[(table.task == task) & (table.method == L0) & (table.vs_best == "worse")]
    if worse.empty:
        return ""
    where = ", ".join(
        f"{pct(r.level)} (p = {r.p_vs_best:.2g})" for r in worse.sort_values("level").itertuples()
    )
    return f"; L0 is significantly worse than the lowest mean at {where}"


def collapses(chosen: pd.DataFrame, task: str) -> str:
    """A clause naming the targets where L0's mean test error is over twice the lowest mean there:
    a collapse is a failure of the recipe at that sparsity, which the variation figure alone hides."""
    means = chosen[chosen.task == task].groupby(["target", "method"]).test.mean().unstack("method")
    if L0 not in means:
        return ""
    others = means.drop(columns=L0).min(axis=1)
    failed = means.index[means[L0] > COLLAPSE * others]
    if failed.empty:
        return ""
    where = ", ".join(f"{pct(t)} ({means[L0][t]:.2f} % vs {others[t]:.2f} %)" for t in failed)
    return f"; besides, L0's error collapses at {where}"


def findings(
    chosen: pd.DataFrame, unfinished: dict[str, list[str]] | None = None, table: pd.DataFrame | None = None
) -> list[str]:
    """Markdown lines: each published finding, then the verdict of every task's records; a task with
    an unfinished grid (``MatchedPoints.unfinished``) gets its verdicts marked provisional."""
    if chosen.empty:
        return []
    tasks = sorted(chosen.task.unique())
    unfinished = {t: m for t, m in (unfinished or {}).items() if t in tasks and m}
    table = judged(chosen) if table is None else table
    lines = [f"Published findings ({CITATION}) beside what our records say:"]
    rules = (magnitude_moderate, sparse_vd_highest, lambda t, task: l0_reliability(chosen, t, task))
    for claim, rule in zip(PUBLISHED, rules, strict=True):
        lines.append(f"- **{claim}.**")
        for task in tasks:
            mark = "provisional, " if unfinished.get(task) else ""
            lines.append(f"  - {task}: {mark}{rule(table, task)}")
    for task, methods in sorted(unfinished.items()):
        lines.append(
            f"\nProvisional for {task}: grids with points that lack records for every seed "
            f"({'; '.join(methods)}); a missing point may win the validation choice at any target, "
            "so each verdict there may still change."
        )
    return lines
