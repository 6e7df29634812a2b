"""Report section ``matched_sparsity``: test error of every method at the same fractions of weights removed.

The campaign (sweeps/campaigns/matched-sparsity.yaml, docs/matched-sparsity.md) trains magnitude and
random pruning straight to each target and reads Sparse VD and L0 at every target off a small grid of
runs; ``matched_points`` picks, per method, target and seed, the model chosen on validation. This
section draws the figure (test error against sparsity, one line per method, 95 % confidence bands over
seeds), the table (mean ± half-width of the 95 % interval, seeds, the sparsity measured on the exported
model beside the target, what was chosen) and the published findings beside our verdicts
(``matched_findings``). Rows or seeds without records are named, never filled in.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from sparsebench.report.aggregate import group_stats
from sparsebench.report.analyses import AnalysisOutput
from sparsebench.report.document import Block, heading
from sparsebench.report.formatting import DASH, fmt_x
from sparsebench.report.matched_findings import findings, judged, matched_tests_table
from sparsebench.report.matched_points import MatchedPoints, matched_points, pct
from sparsebench.report.records import RecordSet
from sparsebench.report.tables import Table

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from sparsebench.report.palette import Palette

TITLE = "Matched sparsity (Gale, Elsen, Hooker 2019)"
TABLE_NAME = "matched_sparsity"
FIGURE_NAME = "matched_sparsity.png"
METHOD_ORDER = ("magnitude", "random", "sparse_vd", "l0")
LINE_STYLES = {"magnitude": ("o", "-"), "random": ("s", ":"), "sparse_vd": ("^", "-"), "l0": ("D", "--")}
"""Marker and dash per method (others: dots, solid)."""
PROTOCOL = (
    "Each method at the same exact sparsities. Magnitude pruning (gradual, global ranking) and random "
    "pruning (global) train one run per target and seed. Sparse VD and L0 (weight gates) train one run "
    "per point of a hyperparameter grid (KL weight, lambda) and seed, each read at every target by "
    "removing exactly the target's share of weights ranked by log alpha; per target and seed the grid "
    "point with the lowest validation error is kept and its test error reported. Every method gets as "
    "many training runs per seed as there are targets once its grid is complete (the findings say "
    "when one is not). Sparsity is counted on the exported model, at the target or, for an L0 run "
    "that training left sparser, at its own higher sparsity (the table shows it). The per-task "
    "'Matched compression' tables further down answer another question (the best any run of a method "
    "reaches at a compression, interpolated along Pareto fronts, ± std) and differ from this one where "
    "the two protocols do."
)


def section(records: RecordSet, out: Path) -> AnalysisOutput:
    """The figure, the table and the findings, or a note saying which records are missing."""
    points = matched_points(records)
    blocks = [heading(2, TITLE), Block("p", PROTOCOL)]
    if points.chosen.empty:
        blocks.append(Block("note", "No matched-sparsity point has records yet. " + gap_text(points)))
        return AnalysisOutput(blocks)
    stats = summary(points.chosen)
    table = Table(
        TABLE_NAME, "Test error at matched sparsity", stats, display(stats, points), NOTE, "analysis"
    )
    files = []
    figure = draw(stats, records.data.runs)
    if figure is not None:
        from sparsebench.report.sections import save

        (out / "figures").mkdir(parents=True, exist_ok=True)
        files.append(save(figure, out, FIGURE_NAME))
        blocks.append(Block("figure", f"figures/{FIGURE_NAME}", caption=CAPTION))
    blocks += [heading(3, table.title), Block("table", table=table), Block("note", table.note)]
    verdicts = judged(points.chosen)  # one set of paired tests for the findings and their table
    blocks.append(Block("p", "\n".join(findings(points.chosen, points.unfinished, verdicts))))
    tests = matched_tests_table(verdicts)
    if tests is not None:
        blocks += [heading(3, tests.title), Block("table", table=tests), Block("note", tests.note)]
    if points.gaps:
        blocks.append(Block("note", gap_text(points)))
    return AnalysisOutput(blocks, [table] + ([tests] if tests is not None else []), files)


NOTE = (
    "test error: mean ± half-width of the 95 % t interval over seeds (n); sparsity: measured on the "
    "exported model (mean, and the range when seeds differ); chosen: the grid point validation picked "
    "for each seed (one run per target for magnitude and random)."
)
CAPTION = (
    "Test error against sparsity (log axis of the compression 1 / (1 - sparsity), labelled by sparsity); "
    "each point at the mean sparsity measured on its exported models, ticks at the targets; lines: mean "
    "over seeds, bands: 95 % t interval, clipped to the panel."
)


def compression(sparsity):  # noqa: ANN001, ANN201 - a float or an array
    """1 / (1 - s), rounded so that 99 % reads 100x, not 99.99999999999991x."""
    value = np.round(1.0 / (1.0 - np.asarray(sparsity, dtype=float)), 9)
    return float(value) if value.ndim == 0 else value


def gap_text(points: MatchedPoints) -> str:
    if not points.gaps:
        return ""
    shown = points.gaps[:20]
    more = f" (and {len(points.gaps) - len(shown)} more)" if len(points.gaps) > len(shown) else ""
    return "Missing: " + "; ".join(shown) + more + "."


def summary(chosen: pd.DataFrame) -> pd.DataFrame:
    """Seed statistics per (task, target, method) of test error, measured sparsity and validation error."""
    stats = group_stats(chosen, ["task", "target", "method"], ["test", "sparsity", "val"])
    extent = chosen.groupby(["task", "target", "method"]).sparsity.agg(sparsity_min="min", sparsity_max="max")
    stats = stats.merge(extent.reset_index(), on=["task", "target", "method"])
    rank = {m: i for i, m in enumerate(METHOD_ORDER)}
    stats["_rank"] = stats.method.map(lambda m: rank.get(m, len(rank)))
    stats = stats.sort_values(["task", "target", "_rank", "method"]).drop(columns="_rank")
    return stats.reset_index(drop=True)


def fmt_mean_ci(mean: float, low: float, high: float) -> str:
    if pd.isna(mean):
        return DASH
    return f"{mean:.2f}" if pd.isna(low) else f"{mean:.2f} ± {(high - low) / 2:.2f}"


def fmt_sparsity(mean: float, low: float, high: float) -> str:
    if high - low < 5e-7:
        return f"{100 * mean:.2f} %"
    return f"{100 * mean:.2f} % ({100 * low:.2f}–{100 * high:.2f})"


def chosen_words(points: MatchedPoints, task: str, target: float, method: str) -> str:
    """Which grid point each seed's validation chose, e.g. ``lam=2 (seeds 0, 1); lam=4 (seed 2)``."""
    picked = points.chosen[
        (points.chosen.task == task) & (points.chosen.target == target) & (points.chosen.method == method)
    ]
    if picked.candidates.max() <= 1:
        return DASH
    groups = picked.groupby("row", sort=False).seed.apply(lambda s: sorted(int(x) for x in s))
    return "; ".join(
        f"{points.labels.get(row, row)} (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})"
        for row, seeds in groups.items()
    )


def display(stats: pd.DataFrame, points: MatchedPoints) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "task": stats.task,
            "target": [f"{pct(t)} ({fmt_x(compression(t))})" for t in stats.target],
            "method": stats.method,
            "test error %": [
                fmt_mean_ci(m, lo, hi)
                for m, lo, hi in zip(stats.test_mean, stats.test_ci_low, stats.test_ci_high, strict=True)
            ],
            "n": stats.n.astype(int),
            "sparsity (exported)": [
                fmt_sparsity(m, lo, hi)
                for m, lo, hi in zip(stats.sparsity_mean, stats.sparsity_min, stats.sparsity_max, strict=True)
            ],
            "chosen": [
                chosen_words(points, task, target, method)
                for task, target, method in zip(stats.task, stats.target, stats.method, strict=True)
            ],
        }
    )
    return frame.reset_index(drop=True)


def draw(stats: pd.DataFrame, runs: pd.DataFrame):  # noqa: ANN201 - a matplotlib Figure, imported lazily
    """One panel per task: mean test error per method against compression, with its 95 % band.

    Colours are the report's (``palette`` over every run, so a method looks the same in each figure);
    each method also has its own marker and dash, since two of the palette's colours are close.
    """
    import matplotlib.pyplot as plt

    from sparsebench.report.palette import fitted_legend, palette, style

    style()
    tasks = list(dict.fromkeys(stats.task))
    methods = [m for m in METHOD_ORDER if m in set(stats.method)] + sorted(
        set(stats.method) - set(METHOD_ORDER)
    )
    colours = palette(runs)
    fig, axes = plt.subplots(
        1, len(tasks), figsize=(5.2 * len(tasks), 4.2), layout="constrained", squeeze=False
    )
    for ax, task in zip(axes[0], tasks, strict=True):
        draw_panel(ax, stats[stats.task == task], methods, colours)
        ax.set_title(task, fontsize=11)
    handles = [
        plt.Line2D([], [], color=colours.of(m), lw=2, marker=LINE_STYLES.get(m, ("o", "-"))[0],
                   ls=LINE_STYLES.get(m, ("o", "-"))[1], ms=5)
        for m in methods
    ]  # fmt: skip
    fitted_legend(fig, handles, methods, "outside right upper", fontsize=9)
    return fig


def draw_panel(ax: Axes, part: pd.DataFrame, methods: list[str], colours: Palette) -> None:
    """One task's lines, each point at the sparsity measured on the exported models (an L0 model that
    training left sparser than its target sits where it is, not at the target), with ticks at the
    targets. Bands are clipped to the panel: a three-seed t interval of a collapsed point can reach
    below 0 % or above 100 %, which a log axis cannot show."""
    from matplotlib.ticker import NullFormatter

    from sparsebench.report.palette import plain_log_y

    positive = part.test_mean[part.test_mean > 0]
    floor = float(positive.min()) / 1.5 if not positive.empty else 0.1
    for method in methods:
        line = part[part.method == method].sort_values("target")
        if line.empty:
            continue
        x = compression(line.sparsity_mean.to_numpy(dtype=float))
        marker, dash = LINE_STYLES.get(method, ("o", "-"))
        ax.plot(x, line.test_mean, marker=marker, ls=dash, ms=5, lw=1.8, color=colours.of(method))
        band = line.test_ci_low.notna().to_numpy()
        low = np.clip(line.test_ci_low.to_numpy(dtype=float)[band], floor, 100.0)
        high = np.clip(line.test_ci_high.to_numpy(dtype=float)[band], floor, 100.0)
        ax.fill_between(x[band], low, high, color=colours.of(method), alpha=0.2, lw=0)
    targets = sorted(part.target.unique())
    ax.set_xscale("log")
    plain_log_y(ax)
    ax.set_ylim(floor, min(ax.get_ylim()[1], 100.0))
    ax.set_xticks([compression(t) for t in targets], [f"{pct(t)}\n{fmt_x(compression(t))}" for t in targets])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("sparsity of the exported model (ticks: targets)")
    ax.set_ylabel("test error % (log)")
