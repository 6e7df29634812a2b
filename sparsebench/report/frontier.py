"""The report's main figure: test error against compression, each method's front and the papers.

The axes are chosen to show the frontier, where methods differ: compression on a log axis (levels
multiply), error from zero to a little above the points that matter. A point far worse than the
best (a collapsed run, random pruning at 50x) would squash every front into a line at the bottom,
so it is drawn as a triangle on the top edge with its value printed instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.text import Annotation
from matplotlib.transforms import Bbox

from sparsebench.registry import normalize_name
from sparsebench.report.aggregate import pareto_mask
from sparsebench.report.formatting import plural
from sparsebench.report.palette import QUOTED_GREY, Colour, Palette, compression_axis, fitted_legend, style
from sparsebench.task import PaperResult

OUTLIER_FACTOR = 5.0
"""A point whose error is more than this many times the best error of the figure is an outlier."""


@dataclass
class Point:
    """One marker of the figure: a setting's mean over seeds, or a quoted paper number."""

    x: float
    y: float
    colour: Colour
    xerr: float = 0.0
    yerr: float = 0.0
    method: str = ""
    """Our method's name; empty for a quoted paper number."""


def error_axis_top(points: Sequence[Point], percent: bool) -> float:
    """Top of the error axis: room for every point that is not an outlier, with its error bar.

    A point is shown when its error is at most ``OUTLIER_FACTOR`` x the best (lowest positive) error
    of the figure, or when it is its method's best point: each of our methods keeps at least its
    best setting in view, even when all of them are far from the papers (a short trial run).
    Points above are outliers, marked on the edge by ``mark_outliers``. A quarter of headroom keeps
    the labels of the highest points inside; a metric in percent never needs more than 100.
    """
    ys = [p for p in points if math.isfinite(p.y)]
    if not ys:
        return 1.0
    positive = [p.y for p in ys if p.y > 0]
    cap = OUTLIER_FACTOR * min(positive) if positive else math.inf
    for method in {p.method for p in ys if p.method}:
        cap = max(cap, min(p.y for p in ys if p.method == method))
    shown = [p.y + (p.yerr if math.isfinite(p.yerr) else 0.0) for p in ys if p.y <= cap]
    top = 1.25 * max(shown) if shown and max(shown) > 0 else 1.0
    return min(top, 100.0) if percent else top


def error_vs_compression(
    runs: pd.DataFrame,
    curves: pd.DataFrame,
    references: tuple[PaperResult, ...],
    metric_name: str,
    levels: tuple[float, ...],
    colours: Palette,
) -> Figure:
    """Test metric against compression (log axis): runs, seed spread, each method's front, the papers.

    Markers are setting means with error bars of one std over seeds in both directions; thin lines
    are single runs' threshold curves; the bold line is each method's Pareto front over its setting
    means and seed-averaged curves, chosen on the validation metric (so it may bend up in test);
    stars are quoted paper numbers; triangles on the top edge are points beyond the error axis.
    """
    style()
    fig, ax = plt.subplots(figsize=(10.0, 5.2), layout="constrained")
    settings = {method: setting_points(mruns, colours) for method, mruns in runs.groupby("method", sort=True)}
    quoted, labels = reference_points(runs, references, colours)
    every = [p for points in settings.values() for p in points] + quoted
    top = error_axis_top(every, "%" in metric_name)
    for method, mruns in runs.groupby("method", sort=True):
        mcurves = curves[curves.run_id.isin(mruns.run_id)] if not curves.empty else curves
        _draw_curves(ax, mruns, mcurves, colours)
        _draw_front(ax, str(method), mruns, mcurves, colours)
        for p in settings[method]:
            if p.y <= top:
                _draw_mean(ax, p)
    for p in quoted:
        ax.scatter(p.x, p.y, marker="*", s=170, color=p.colour, edgecolor="black", lw=0.7, zorder=5)
    for level in levels:
        ax.axvline(level, color="0.3", ls=(0, (2, 3)), lw=1, zorder=0)
    xs = [x for p in every for x in (p.x, p.x + p.xerr) if x > 0 and math.isfinite(x)] + [*levels, 1.0]
    compression_axis(ax, min(xs) / 1.25, max(xs) * 2.0)
    ax.set_ylim(-0.03 * top, top)  # a little room below 0 so points at 0 % error stay visible
    outliers = mark_outliers(ax, [p for p in every if p.y > top], top)
    ax.set_xlabel("compression |W| / |W≠0|  (log scale; dotted: matched levels)")
    ax.set_ylabel(f"test {metric_name}")
    ax.set_title(
        f"{runs.task.iloc[0]}: test {metric_name} vs compression (lower right is better)",
        fontsize=11,
        pad=12,  # room for the outlier triangles on the top edge
    )
    _legend(fig, ax, bool(quoted), outliers)
    shown = [(p.x, p.y) for p in every if p.y <= top and math.isfinite(p.x) and math.isfinite(p.y)]
    _place_labels(ax, [lab for lab in labels if lab[1] <= top], shown)
    return fig


def setting_points(mruns: pd.DataFrame, colours: Palette) -> list[Point]:
    """One point per setting of a method: means over seeds, one std as the bars (none for one seed)."""
    points = []
    for setting, sruns in mruns.groupby("setting", sort=False):
        several = len(sruns) > 1
        points.append(
            Point(
                float(sruns.compression.mean()),
                float(sruns.test.mean()),
                colours.of(str(sruns.method.iloc[0]), str(setting)),
                float(sruns.compression.std(ddof=1)) if several else 0.0,
                float(sruns.test.std(ddof=1)) if several else 0.0,
                str(sruns.method.iloc[0]),
            )
        )
    return points


def reference_points(
    runs: pd.DataFrame, references: tuple[PaperResult, ...], colours: Palette
) -> tuple[list[Point], list[tuple[float, float, str, str]]]:
    """Quoted paper numbers in the colour of our method of the same name (grey when we have none)."""
    ours = {normalize_name(m): m for m in runs.method}
    points, labels = [], []
    for ref in references:
        mine = ours.get(normalize_name(ref.method))
        points.append(Point(ref.compression, ref.error, colours.of(mine) if mine else QUOTED_GREY))
        labels.append((ref.compression, ref.error, ref.method, "black" if mine else QUOTED_GREY))
    return points, labels


def mark_outliers(ax: plt.Axes, points: list[Point], top: float) -> int:
    """Each point above the axis as a triangle on the top edge, its error printed under it."""
    for p in points:
        ax.plot(p.x, top, marker="^", ms=9, color=p.colour, mec="black", mew=0.7, clip_on=False, zorder=6)
        ax.annotate(
            f"{p.y:.3g}",
            (p.x, top),
            xytext=(0, -9),
            textcoords="offset points",
            ha="center",
            va="top",
            fontsize=7.5,
            zorder=6,
        )
    return len(points)


def _draw_curves(ax: plt.Axes, mruns: pd.DataFrame, mcurves: pd.DataFrame, colours: Palette) -> None:
    """Each run's threshold curve, thin and faint: the spread behind the front."""
    for run_id, curve in mcurves.groupby("run_id"):
        curve = curve.sort_values("compression")
        row = mruns[mruns.run_id == run_id].iloc[0]
        ax.plot(
            curve.compression,
            curve.test_metric,
            color=colours.of(row.method, row.setting),
            alpha=0.25,
            lw=0.9,
            zorder=1,
        )


def _draw_mean(ax: plt.Axes, p: Point) -> None:
    ax.errorbar(
        p.x,
        p.y,
        xerr=p.xerr,
        yerr=p.yerr,
        fmt="o",
        ms=6.5,
        color=p.colour,
        mec="white",
        mew=0.8,
        elinewidth=1.4,
        capsize=3,
        zorder=4,
    )


def _draw_front(
    ax: plt.Axes, method: str, mruns: pd.DataFrame, mcurves: pd.DataFrame, colours: Palette
) -> None:
    """The method's validation Pareto front over setting means and seed-averaged curves, in test."""
    means = mruns.groupby("setting", sort=False)[["compression", "val", "test"]].mean()
    points = pd.concat([_averaged_curve(mcurves, mruns), means], ignore_index=True).dropna()
    front = points[pareto_mask(points.compression, points.val)].sort_values("compression")
    settings = mruns.setting.nunique()
    detail = plural(mruns.seed.nunique(), "seed") + (
        f", {plural(settings, 'setting')}" if settings > 1 else ""
    )
    ax.plot(
        front.compression,
        front.test,
        color=colours.of(method),
        lw=2.2,
        zorder=3,
        label=f"{method} ({detail})",
    )


def _legend(fig: Figure, ax: plt.Axes, quoted: bool, outliers: int) -> None:
    """Methods, then the marker kinds, beside the axes: inside the figure, never over the data."""
    handles, labels = ax.get_legend_handles_labels()
    star = dict(marker="*", ms=12, color="white", mec="black", mew=0.7, ls="none")
    if quoted:
        handles.append(Line2D([], [], **star))
        labels.append("paper (quoted)")
    if outliers:
        handles.append(Line2D([], [], marker="^", ms=8, color="0.6", mec="black", mew=0.7, ls="none"))
        labels.append("beyond the axis (value printed)")
    fitted_legend(fig, handles, labels, "outside right upper", fontsize=8.5)


LABEL_SPOTS = (
    ((0, 9), "center", "bottom"),
    ((0, -9), "center", "top"),
    ((9, 0), "left", "center"),
    ((-9, 0), "right", "center"),
    ((9, 9), "left", "bottom"),
    ((9, -9), "left", "top"),
    ((-9, 9), "right", "bottom"),
    ((-9, -9), "right", "top"),
    ((0, 22), "center", "bottom"),
    ((0, -22), "center", "top"),
)
"""Where a name may go beside its point, in order of preference: (offset in points, ha, va)."""
COINCIDENT_PX = 12.0
"""Markers closer than this (pixels) to a named point count as the same place."""
POINTED_SPOTS = (
    ((0, -30), "center", "top"),
    ((24, -24), "left", "top"),
    ((-24, -24), "right", "top"),
    ((0, 30), "center", "bottom"),
    ((24, 24), "left", "bottom"),
    ((-24, 24), "right", "bottom"),
)
"""Farther spots, with a thin line to the point, for a point crowded by other markers."""


def _place_labels(
    ax: plt.Axes, items: list[tuple[float, float, str, str]], markers: list[tuple[float, float]]
) -> None:
    """Name each point beside it, trying positions around it until the text overlaps nothing drawn.

    Paper references often sit close together (e.g. 108x and 111x at 1 % error), where a fixed
    offset would print one name over another. Every marker (``markers``: our setting means and the
    stars) is an obstacle: a name printed beside one of our points reads as that point's name.
    Where no spot is free, the name goes where it covers the fewest pixels.
    """
    if not items:
        return
    renderer = ax.figure.canvas.get_renderer()
    ax.figure.canvas.draw()
    centres = [tuple(ax.transData.transform(xy)) for xy in markers]
    taken = [Bbox.from_extents(px - 8, py - 8, px + 8, py + 8) for px, py in centres]
    for x, y, text, colour in sorted(items, key=lambda item: item[0]):
        own = tuple(ax.transData.transform((x, y)))
        # Markers on top of the point (ours under the paper's star) share its name; others must not.
        others = [c for c in centres if math.dist(c, own) > COINCIDENT_PX]
        best: tuple[float, Annotation] | None = None
        for (offset, ha, va), pointed in [(spot, False) for spot in LABEL_SPOTS] + [
            (spot, True) for spot in POINTED_SPOTS
        ]:
            arrow = {"arrowstyle": "-", "color": "0.45", "lw": 0.6, "shrinkB": 5} if pointed else None
            label = ax.annotate(
                text, (x, y), xytext=offset, textcoords="offset points", ha=ha, va=va, fontsize=8,
                color=colour, arrowprops=arrow,
            )  # fmt: skip
            box = label.get_window_extent(renderer)
            cost = sum(_overlap_area(box, t) for t in taken)
            crowded = any(_distance(box, c) < 2.0 * _distance(box, own) for c in others)
            if crowded and not pointed:
                cost += box.width * box.height  # about as near another marker: it could read as its name
            if best is not None and cost >= best[0]:
                label.remove()
                continue
            if best is not None:
                best[1].remove()
            best = (cost, label)
            if cost == 0:
                break
        if best is not None:
            taken.append(best[1].get_window_extent(renderer))


def _distance(box: Bbox, point: tuple[float, float]) -> float:
    """Pixels from ``point`` to the nearest edge of ``box`` (0 inside it)."""
    dx = max(box.x0 - point[0], 0.0, point[0] - box.x1)
    dy = max(box.y0 - point[1], 0.0, point[1] - box.y1)
    return math.hypot(dx, dy)


def _overlap_area(a: Bbox, b: Bbox) -> float:
    """Pixels two boxes share (0 when apart): where no spot is free, a name goes where it hides least."""
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(0.0, width) * max(0.0, height)


def _averaged_curve(curves: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """A setting's threshold curve averaged over seeds, threshold by threshold."""
    if curves.empty:
        return pd.DataFrame(columns=["compression", "val", "test"])
    merged = curves.merge(runs[["run_id", "setting"]], on="run_id")
    mean = merged.groupby(["setting", "threshold"], as_index=False)[
        ["compression", "val_metric", "test_metric"]
    ].mean()
    return mean.rename(columns={"val_metric": "val", "test_metric": "test"})[["compression", "val", "test"]]
