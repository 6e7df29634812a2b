"""The report's figures, drawn with seaborn on matplotlib's Agg backend (no display needed).

Each function returns a ``Figure`` and never saves it, so the caller decides names and formats;
colours come from one palette keyed by method so a method looks the same in every figure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")  # before pyplot: reports are drawn on servers and in CI without a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402

from sparsebench.registry import normalize_name  # noqa: E402
from sparsebench.report.aggregate import pareto_mask  # noqa: E402
from sparsebench.task import PaperResult  # noqa: E402

QUOTED_GREY = "#6b6b6b"
HISTORY_PANELS = (
    ("val_metric", "validation {metric}", "linear"),
    ("sparsity", "sparsity % (masks)", "linear"),
    ("kl", "KL divergence", "log"),
    ("train_loss", "training loss (data + regularizer)", "log"),
)


Colour = tuple[float, float, float]


@dataclass
class Palette:
    """One colour per method (stable across figures) and a shade of it per setting of that method."""

    method: dict[str, Colour]
    setting: dict[tuple[str, str], Colour] = field(default_factory=dict)

    def of(self, method: str, setting: str | None = None) -> Colour:
        return (
            self.setting.get((method, setting), self.method[method])
            if setting is not None
            else self.method[method]
        )


def palette(runs: pd.DataFrame) -> Palette:
    """Colour-blind-safe colours by sorted method name; settings of one method run dark to light."""
    names = sorted(set(runs.method))
    base = sns.color_palette("colorblind", max(10, len(names)))
    colours = Palette({name: base[i % len(base)] for i, name in enumerate(names)})
    for method, group in runs.groupby("method"):
        settings = list(dict.fromkeys(group.setting))
        for setting, t in zip(
            settings, np.linspace(-0.45, 0.45, len(settings)) if len(settings) > 1 else [0.0], strict=True
        ):
            colours.setting[(method, setting)] = _shade(colours.method[method], float(t))
    return colours


def _shade(colour: Colour, t: float) -> Colour:
    """Mix towards black (t < 0) or white (t > 0) by |t|."""
    target = 0.0 if t < 0 else 1.0
    return tuple(c + (target - c) * abs(t) for c in colour)  # type: ignore[return-value]


def _style() -> None:
    sns.set_theme(context="notebook", style="whitegrid", font_scale=0.95)


def _compression_axis(ax: plt.Axes, low: float, high: float) -> None:
    """Log axis labelled 1x 2x 5x 10x ... (only decades when the range is wide, so labels never collide)."""
    ax.set_xscale("log")
    ax.set_xlim(low, high)
    subs = (1.0, 2.0, 5.0) if high / low < 2e3 else (1.0,)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def label_of(method: str, setting: str, several: bool) -> str:
    return f"{method} ({setting})" if several and setting != "default" else method


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
    stars are quoted paper numbers.
    """
    _style()
    fig, ax = plt.subplots(figsize=(8.5, 5.2), layout="constrained")
    # What the axes must show: setting means with their bars, the papers and the matched levels.
    # Threshold curves run on to where everything is pruned; they are cut off rather than followed.
    focus_y: list[float] = []
    focus_x: list[float] = [*levels, 1.0]
    for method, mruns in runs.groupby("method", sort=True):
        mcurves = curves[curves.run_id.isin(mruns.run_id)] if not curves.empty else curves
        for run_id, curve in mcurves.groupby("run_id"):
            curve = curve.sort_values("compression")
            setting = mruns.setting[mruns.run_id == run_id].iloc[0]
            ax.plot(
                curve.compression,
                curve.test_metric,
                color=colours.of(method, setting),
                alpha=0.25,
                lw=0.9,
                zorder=1,
            )
        front_points = [_averaged_curve(mcurves, mruns)]
        for setting, sruns in mruns.groupby("setting", sort=False):
            c, e = sruns.compression, sruns.test
            xerr = c.std(ddof=1) if len(sruns) > 1 else 0.0
            yerr = e.std(ddof=1) if len(sruns) > 1 else 0.0
            ax.errorbar(
                c.mean(),
                e.mean(),
                xerr=xerr,
                yerr=yerr,
                fmt="o",
                ms=6.5,
                color=colours.of(method, setting),
                mec="white",
                mew=0.8,
                elinewidth=1.4,
                capsize=3,
                zorder=4,
            )
            focus_y.append(e.mean() + yerr)
            focus_x.append(c.mean() + xerr)
            front_points.append(
                pd.DataFrame({"compression": [c.mean()], "val": [sruns.val.mean()], "test": [e.mean()]})
            )
        points = pd.concat(front_points, ignore_index=True).dropna()
        front = points[pareto_mask(points.compression, points.val)].sort_values("compression")
        settings = mruns.setting.nunique()
        detail = f"{mruns.seed.nunique()} seeds" + (f", {settings} settings" if settings > 1 else "")
        ax.plot(
            front.compression,
            front.test,
            color=colours.of(method),
            lw=2.2,
            zorder=3,
            label=f"{method} ({detail})",
        )
    ours = {normalize_name(m): m for m in runs.method}
    labels = []
    for ref in references:
        mine = ours.get(normalize_name(ref.method))
        colour = colours.of(mine) if mine else QUOTED_GREY
        ax.scatter(
            ref.compression, ref.error, marker="*", s=170, color=colour, edgecolor="black", lw=0.7, zorder=5
        )
        labels.append((ref.compression, ref.error, ref.method, "black" if mine else QUOTED_GREY))
        focus_y.append(ref.error)
        focus_x.append(ref.compression)
    if references:
        ax.scatter(
            [], [], marker="*", s=170, color="white", edgecolor="black", lw=0.7, label="paper (quoted)"
        )
    for level in levels:
        ax.axvline(level, color="0.3", ls=(0, (2, 3)), lw=1, zorder=0)
    xs = [x for x in focus_x if x > 0 and math.isfinite(x)]
    _compression_axis(ax, min(xs) / 1.25, max(xs) * 2.0)
    top = max([v for v in focus_y if math.isfinite(v)] + [0.0])
    top = top * 1.35 if top > 0 else 1.0
    top = min(top, 100.0) if "%" in metric_name else top
    ax.set_ylim(-0.03 * top, top)  # a little room below 0 so points at 0 % error stay visible
    ax.set_xlabel("compression |W| / |W≠0|  (log scale; dotted: matched levels)")
    ax.set_ylabel(f"test {metric_name}")
    ax.set_title(
        f"{runs.task.iloc[0]}: test {metric_name} vs compression (lower right is better)", fontsize=11
    )
    ax.legend(loc="upper left", fontsize=8.5, frameon=True)
    _place_labels(ax, labels)
    return fig


def _place_labels(ax: plt.Axes, items: list[tuple[float, float, str, str]]) -> None:
    """Name each point beside it, trying positions around it until the text overlaps nothing drawn.

    Paper references often sit close together (e.g. 108x and 111x at 1 % error), where a fixed
    offset would print one name over another.
    """
    if not items:
        return
    renderer = ax.figure.canvas.get_renderer()
    ax.figure.canvas.draw()
    taken = [ax.get_legend().get_window_extent(renderer)] if ax.get_legend() else []
    for x, y, _, _ in items:  # the stars themselves are obstacles too
        px, py = ax.transData.transform((x, y))
        taken.append(Bbox.from_extents(px - 8, py - 8, px + 8, py + 8))
    spots = [
        ((0, 9), "center", "bottom"),
        ((0, -9), "center", "top"),
        ((9, 0), "left", "center"),
        ((-9, 0), "right", "center"),
        ((9, 9), "left", "bottom"),
        ((-9, -9), "right", "top"),
        ((0, 22), "center", "bottom"),
        ((0, -22), "center", "top"),
    ]
    for x, y, text, colour in sorted(items, key=lambda item: item[0]):
        for offset, ha, va in spots:
            label = ax.annotate(
                text,
                (x, y),
                xytext=offset,
                textcoords="offset points",
                ha=ha,
                va=va,
                fontsize=8,
                color=colour,
                zorder=6,
            )
            box = label.get_window_extent(renderer)
            if not any(box.overlaps(t) for t in taken) or offset == spots[-1][0]:
                taken.append(box)
                break
            label.remove()


def _averaged_curve(curves: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """A setting's threshold curve averaged over seeds, threshold by threshold."""
    if curves.empty:
        return pd.DataFrame(columns=["compression", "val", "test"])
    merged = curves.merge(runs[["run_id", "setting"]], on="run_id")
    mean = merged.groupby(["setting", "threshold"], as_index=False)[
        ["compression", "val_metric", "test_metric"]
    ].mean()
    return mean.rename(columns={"val_metric": "val", "test_metric": "test"})[["compression", "val", "test"]]


def layer_sparsity(
    runs: pd.DataFrame,
    layers: pd.DataFrame,
    references: tuple[PaperResult, ...],
    colours: Palette,
) -> Figure | None:
    """Per-layer sparsity bars (mean, one std over seeds) beside hatched quoted bars."""
    _style()
    several = bool((runs.setting != "default").any())
    data = layers.merge(runs[["run_id", "method", "setting"]], on="run_id")
    # Methods that zero nothing (dense, dropout) would only add empty bars; the caption names them.
    peak = data.groupby("method").sparsity.max()
    data = data[data.method.isin(peak[peak > 0].index)]
    if data.empty:
        return None
    data["label"] = [label_of(m, s, several) for m, s in zip(data.method, data.setting, strict=True)]
    order = list(data.sort_values("position").layer.drop_duplicates())
    quoted_rows = []
    for ref in references:
        match = [m for m in runs.method.unique() if normalize_name(m) == normalize_name(ref.method)]
        if match and ref.per_layer_sparsity and len(ref.per_layer_sparsity) == len(order):
            for layer, value in zip(order, ref.per_layer_sparsity, strict=True):
                quoted_rows.append(
                    {"layer": layer, "sparsity": value, "label": f"{match[0]} (quoted)", "method": match[0]}
                )
    data = pd.concat([data, pd.DataFrame(quoted_rows)], ignore_index=True)
    labels = list(
        dict.fromkeys(sorted(data.label, key=lambda s: (s.replace(" (quoted)", ""), "(quoted)" in s)))
    )
    label_colour = {}
    for lab in labels:
        row = data[data.label == lab].iloc[0]
        label_colour[lab] = (
            colours.of(row.method) if lab.endswith("(quoted)") else colours.of(row.method, row.setting)
        )
    fig, ax = plt.subplots(
        figsize=(max(6.0, 1.5 + 1.1 * len(order) * max(1, len(labels)) ** 0.6), 4.4), layout="constrained"
    )
    sns.barplot(
        data=data,
        x="layer",
        y="sparsity",
        hue="label",
        order=order,
        hue_order=labels,
        palette=label_colour,
        saturation=1.0,  # the same colours as the other figures
        errorbar="sd",
        capsize=0.15,
        err_kws={"linewidth": 1.2},
        ax=ax,
    )
    for container, lab in zip(ax.containers, labels, strict=False):
        if lab.endswith("(quoted)"):
            for bar in container:
                bar.set_hatch("///")
                bar.set_alpha(0.55)
                bar.set_edgecolor("black")
    for container in ax.containers:
        ax.bar_label(container, fmt="%.0f", fontsize=7, padding=2)
    ax.set_ylim(0, 109)
    ax.set_ylabel("sparsity % (zero weights)")
    ax.set_xlabel("layer (network order)")
    ax.set_title(f"{runs.task.iloc[0]}: per-layer sparsity (error bars: std over seeds)", fontsize=11)
    ax.legend(title=None, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return fig


def training_curves(
    runs: pd.DataFrame,
    history: pd.DataFrame,
    metric_name: str,
    colours: Palette,
) -> Figure | None:
    """Per-epoch curves, mean over seeds with a one-std band; KL and loss on log axes."""
    _style()
    several = bool((runs.setting != "default").any())
    data = history.merge(runs[["run_id", "method", "setting"]], on="run_id")
    if data.empty:
        return None
    data["label"] = [label_of(m, s, several) for m, s in zip(data.method, data.setting, strict=True)]
    panels = [(k, t.format(metric=metric_name), s) for k, t, s in HISTORY_PANELS if (data.key == k).any()]
    labels = list(dict.fromkeys(data.sort_values(["method"], kind="stable").label))
    label_colour = {}
    for lab in labels:
        row = data[data.label == lab].iloc[0]
        label_colour[lab] = colours.of(row.method, row.setting)
    fig, axes = plt.subplots(
        1, len(panels), figsize=(3.9 * len(panels), 3.6), layout="constrained", squeeze=False
    )
    for ax, (key, title, scale) in zip(axes[0], panels, strict=True):
        part = data[data.key == key]
        if scale == "log":
            part = part[part.value > 0]
        sns.lineplot(
            data=part,
            x="step",
            y="value",
            hue="label",
            hue_order=labels,
            palette=label_colour,
            errorbar="sd",
            marker="o",
            markersize=3.5,
            ax=ax,
            legend=False,
        )
        ax.set_yscale(scale)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel("")
    handles = [plt.Line2D([], [], color=label_colour[lab], lw=2, marker="o", ms=4) for lab in labels]
    fig.legend(
        handles, labels, loc="outside lower center", ncol=min(6, len(labels)), fontsize=8.5, frameon=False
    )
    fig.suptitle(f"{runs.task.iloc[0]}: training curves (mean over seeds, band = one std)", fontsize=11)
    return fig


def first_layer_masks(
    mask: torch.Tensor, title: str, image_side: int | None, samples: int = 24
) -> Figure | None:
    """Which inputs the first layer still reads: per hidden unit (28x28 for MNIST) and overall.

    For a fully connected first layer each unit's keep-mask is an image; the large panel counts how
    many units read each pixel (0 = the pixel is ignored by the whole network), as in the Sparse
    VD and Bayesian compression papers. For a convolution each filter's kernel mask is drawn.
    """
    _style()
    mask = mask.detach().to(torch.bool).cpu()
    if mask.dim() == 2 and image_side and mask.shape[1] == image_side * image_side:
        return _unit_masks(mask, title, image_side, samples)
    if mask.dim() == 4:
        return _kernel_masks(mask, title)
    return None


def _unit_masks(mask: torch.Tensor, title: str, side: int, samples: int) -> Figure:
    kept_per_unit = mask.sum(dim=1)
    alive = torch.nonzero(kept_per_unit > 0).flatten()
    pick = (
        alive[torch.linspace(0, len(alive) - 1, min(samples, len(alive))).round().long()]
        if len(alive)
        else alive
    )
    usage = mask.sum(dim=0).reshape(side, side).float().numpy()
    cols = 6
    rows = max(1, math.ceil(len(pick) / cols))
    fig = plt.figure(figsize=(11.5, max(4.6, 1.5 * rows + 0.9)), layout="constrained")
    left, right = fig.subfigures(1, 2, width_ratios=[1.0, 1.35])
    ax = left.subplots()
    shown = np.ma.masked_where(usage == 0, usage)
    cmap = plt.get_cmap("viridis").with_extremes(bad="black")
    im = ax.imshow(shown, cmap=cmap, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    pixels = int((usage > 0).sum())
    ax.set_title(
        f"units reading each pixel (black: none)\n{pixels} of {side * side} pixels used", fontsize=9.5
    )
    left.colorbar(im, ax=ax, shrink=0.8, label="hidden units")
    axes = right.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
        if i >= len(pick):
            ax.axis("off")
            continue
        unit = int(pick[i])
        ax.imshow(
            mask[unit].reshape(side, side).numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest"
        )
        ax.set_title(f"unit {unit}: {int(kept_per_unit[unit])}", fontsize=7)
    right.suptitle(f"keep-masks of {len(pick)} of {len(alive)} surviving units (white: kept)", fontsize=9.5)
    fig.suptitle(title, fontsize=11)
    return fig


def _kernel_masks(mask: torch.Tensor, title: str) -> Figure:
    out, inp = mask.shape[0], mask.shape[1]
    kernels = mask.reshape(out * inp, *mask.shape[2:])[: 10 * 6]
    cols = min(10, len(kernels))
    rows = math.ceil(len(kernels) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(1.05 * cols + 0.4, 1.15 * rows + 0.8), layout="constrained", squeeze=False
    )
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
        if i >= len(kernels):
            ax.axis("off")
            continue
        ax.imshow(kernels[i].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"{i // inp}: {int(kernels[i].sum())}", fontsize=7)
    kept = int(mask.sum())
    fig.suptitle(f"{title}\nkernel keep-masks (white: kept), {kept} of {mask.numel()} weights", fontsize=10)
    return fig
