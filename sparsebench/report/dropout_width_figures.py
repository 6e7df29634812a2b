"""The figures of the dropout-width section: test error against width, and validation error per epoch.

The first mirrors Kingma et al.'s Figure 1 (panel A: noise on layer inputs, with no dropout and
binary dropout; panel B: independent weight noise) with the paper's points dashed beside ours. With
two seeds a 95 % interval is twelve standard errors wide, so the error bars show the seed range and
every seed is drawn as a dot; the table carries the intervals. The second shows whether the
ordering had settled when training stopped: one panel per width, the mean over seeds with the seed
range as a band.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from sparsebench.report.document import Block
from sparsebench.report.dropout_orderings import VARIANTS
from sparsebench.report.palette import fitted_legend, plain_log_y, style
from sparsebench.report.sections import save

PANELS = (
    ("A: noise on layer inputs", ("none", "binary", "gaussian_A", "variational_A", "variational_A2")),
    ("B: independent weight noise", ("gaussian_B", "variational_B")),
)
CURVE_COLUMNS = 3


def colours() -> dict[str, tuple[float, float, float]]:
    """One colour per variant, the same in both figures (colour-blind-safe palette)."""
    base = sns.color_palette("colorblind", 10)
    picks = (7, 0, 1, 2, 4, 3, 9)  # grey for no dropout
    return {variant: base[i] for variant, i in zip(VARIANTS, picks, strict=True)}


def _panel(
    ax: plt.Axes,
    variants: tuple[str, ...],
    cells: pd.DataFrame,
    stats: pd.DataFrame,
    quoted: dict[tuple[str, int], float],
) -> list[str]:
    """One panel of the error-vs-width figure; returns the variants it drew."""
    palette = colours()
    drawn = []
    for variant in variants:
        mine = stats[stats.variant == variant].sort_values("width")
        seeds = cells[cells.variant == variant]
        paper = sorted((w, e) for (v, w), e in quoted.items() if v == variant)
        if mine.empty and not paper:
            continue
        drawn.append(variant)
        colour = palette[variant]
        if not mine.empty:
            spread = seeds.groupby("width").test.agg(["min", "max"]).loc[mine.width]
            mean = mine.test_mean.to_numpy()
            yerr = np.vstack([mean - spread["min"].to_numpy(), spread["max"].to_numpy() - mean])
            ax.errorbar(
                mine.width, mine.test_mean, yerr=yerr, color=colour, marker="o", ms=4, lw=1.8, capsize=3
            )
            ax.scatter(seeds.width, seeds.test, color=colour, s=9, alpha=0.45, zorder=3)
        if paper:
            xs, ys = zip(*paper, strict=True)
            ax.plot(xs, ys, color=colour, ls="--", lw=1.0, marker="x", ms=4, alpha=0.7)
    widths = sorted({int(w) for w in cells.width} | {w for (v, w) in quoted if v in variants})
    ax.set_xticks(widths)
    if not drawn:
        ax.text(0.5, 0.5, "no rows of this panel", transform=ax.transAxes, ha="center", color="0.4")
        ax.set_yticks([])
    ax.set_xlabel("hidden units per layer")
    ax.set_ylabel("test error %")
    return drawn


def error_vs_width(cells: pd.DataFrame, stats: pd.DataFrame, quoted: dict[tuple[str, int], float]) -> Figure:
    """Figure 1 again: ours (mean, seed range, seeds) and the paper's readings (dashed), two panels."""
    style()
    fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.4), layout="constrained")
    drawn = []
    for ax, (title, variants) in zip(axes, PANELS, strict=True):
        drawn += _panel(ax, variants, cells, stats, quoted)
        ax.set_title(title, fontsize=10)
    palette = colours()
    handles = [plt.Line2D([], [], color=palette[v], marker="o", lw=1.8, ms=4) for v in drawn]
    handles.append(plt.Line2D([], [], color="0.3", ls="--", marker="x", lw=1.0, ms=4))
    labels = [VARIANTS[v] for v in drawn] + ["paper (Figure 1, read off)"]
    fitted_legend(fig, handles, labels, "outside lower center", max_columns=4, fontsize=8.5)
    epochs = sorted({int(e) for e in cells.epochs.dropna()})
    budget = f"{epochs[0]} epochs" if len(epochs) == 1 else "epochs vary"
    fig.suptitle(f"MNIST test error vs width (ours: {budget}; bars: seed range)", fontsize=11)
    return fig


def validation_curves(curves: pd.DataFrame) -> Figure | None:
    """Validation error per epoch, one panel per width: mean over seeds, band = seed range."""
    if curves.empty:
        return None
    style()
    palette = colours()
    widths = sorted({int(w) for w in curves.width})
    rows = math.ceil(len(widths) / CURVE_COLUMNS)
    columns = min(CURVE_COLUMNS, len(widths))
    fig, axes = plt.subplots(
        rows,
        columns,
        figsize=(max(3.8 * columns, 8.0), 3.0 * rows),
        layout="constrained",
        squeeze=False,
        sharex=True,
    )
    drawn = [v for v in VARIANTS if (curves.variant == v).any()]
    for ax, width in zip(axes.flat, widths, strict=False):
        part = curves[curves.width == width]
        for variant in drawn:
            lines = part[part.variant == variant].groupby("epoch").val.agg(["mean", "min", "max"])
            if lines.empty:
                continue
            ax.plot(lines.index, lines["mean"], color=palette[variant], lw=1.5, marker="o", ms=2.5)
            ax.fill_between(lines.index, lines["min"], lines["max"], color=palette[variant], alpha=0.18, lw=0)
        plain_log_y(ax)  # early epochs are far above the end, where the variants differ
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"width {width}", fontsize=10)
        ax.set_ylabel("validation error %")
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    for ax in list(axes.flat)[len(widths) :]:
        ax.set_visible(False)
    handles = [plt.Line2D([], [], color=palette[v], lw=2) for v in drawn]
    fitted_legend(
        fig, handles, [VARIANTS[v] for v in drawn], "outside lower center", max_columns=4, fontsize=8.5
    )
    fig.suptitle("Validation error per epoch (mean over seeds, band: seed range; log axis)", fontsize=11)
    return fig


def draw(
    cells: pd.DataFrame,
    stats: pd.DataFrame,
    curves: pd.DataFrame,
    quoted: dict[tuple[str, int], float],
    out: Path,
) -> tuple[list[Path], list[Block]]:
    """Save both figures under ``out/figures``; the files and the blocks that show them."""
    (out / "figures").mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    blocks: list[Block] = []
    made = [
        (
            error_vs_width(cells, stats, quoted),
            "dropout_width_error.png",
            "Test error against hidden units per layer. Solid: ours, mean over seeds with the seed range as "
            "error bars and each seed as a dot; dashed: the paper's Figure 1, read off the plot.",
        ),
        (
            validation_curves(curves),
            "dropout_width_curves.png",
            "Validation error per epoch at each width: if the lines still cross near the end, the ordering "
            "of the test errors had not settled when training stopped.",
        ),
    ]
    for fig, name, caption in made:
        if fig is None:
            continue
        files.append(save(fig, out, name))
        blocks.append(Block("figure", files[-1].relative_to(out).as_posix(), caption=caption))
    return files, blocks
