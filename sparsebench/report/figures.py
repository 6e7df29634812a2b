"""The report's figures, drawn with seaborn on matplotlib's Agg backend (no display needed).

Each function returns a ``Figure`` and never saves it, so the caller decides names and formats.
The error-vs-compression figure lives in ``frontier.py``, the keep-mask pictures in
``mask_figures.py``, the shared theme, colours and legend in ``palette.py``; they are re-exported
here so the report builder has one module to draw from.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from sparsebench.registry import normalize_name
from sparsebench.report.frontier import error_vs_compression
from sparsebench.report.mask_figures import first_layer_masks
from sparsebench.report.palette import Palette, fitted_legend, label_of, palette, style
from sparsebench.task import PaperResult

__all__ = [
    "Palette",
    "error_vs_compression",
    "first_layer_masks",
    "layer_sparsity",
    "palette",
    "training_curves",
]

HISTORY_PANELS = (
    ("val_metric", "validation {metric}", "linear"),
    ("sparsity", "sparsity % (masks)", "linear"),
    ("kl", "KL divergence", "log"),
    ("train_loss", "training loss (data + regularizer)", "log"),
)


def layer_sparsity(
    runs: pd.DataFrame,
    layers: pd.DataFrame,
    references: tuple[PaperResult, ...],
    colours: Palette,
) -> Figure | None:
    """Per-layer sparsity bars (mean, one std over seeds) beside hatched quoted bars."""
    style()
    data = _sparsity_bars(runs, layers, references)
    if data is None:
        return None
    order = list(data.dropna(subset=["position"]).sort_values("position").layer.drop_duplicates())
    labels = list(
        dict.fromkeys(sorted(data.label, key=lambda s: (s.replace(" (quoted)", ""), "(quoted)" in s)))
    )
    label_colour = {}
    for lab in labels:
        row = data[data.label == lab].iloc[0]
        quoted = lab.endswith("(quoted)")
        label_colour[lab] = colours.of(row.method) if quoted else colours.of(row.method, row.setting)
    width = max(6.0, 1.5 + 1.1 * len(order) * max(1, len(labels)) ** 0.6)
    fig, ax = plt.subplots(figsize=(width, 4.4), layout="constrained")
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
        legend=False,
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
    _bar_legend(fig, labels, label_colour)
    return fig


def _sparsity_bars(
    runs: pd.DataFrame, layers: pd.DataFrame, references: tuple[PaperResult, ...]
) -> pd.DataFrame | None:
    """Our layers' sparsity per run with a label, and the quoted per-layer numbers as extra rows."""
    several = bool((runs.setting != "default").any())
    data = layers.merge(runs[["run_id", "method", "setting"]], on="run_id")
    # Methods that zero nothing (dense, dropout) would only add empty bars; the caption names them.
    peak = data.groupby("method").sparsity.max()
    data = data[data.method.isin(peak[peak > 0].index)]
    if data.empty:
        return None
    data = data.assign(
        label=[label_of(m, s, several) for m, s in zip(data.method, data.setting, strict=True)]
    )
    order = list(data.sort_values("position").layer.drop_duplicates())
    quoted_rows = []
    for ref in references:
        match = [m for m in runs.method.unique() if normalize_name(m) == normalize_name(ref.method)]
        if match and ref.per_layer_sparsity and len(ref.per_layer_sparsity) == len(order):
            for layer, value in zip(order, ref.per_layer_sparsity, strict=True):
                quoted_rows.append(
                    {"layer": layer, "sparsity": value, "label": f"{match[0]} (quoted)", "method": match[0]}
                )
    return pd.concat([data, pd.DataFrame(quoted_rows)], ignore_index=True)


def _bar_legend(fig: Figure, labels: list[str], label_colour: dict) -> None:
    handles = [
        plt.Rectangle(
            (0, 0),
            1,
            1,
            facecolor=label_colour[lab],
            hatch="///" if lab.endswith("(quoted)") else None,
            alpha=0.55 if lab.endswith("(quoted)") else 1.0,
            edgecolor="black" if lab.endswith("(quoted)") else "none",
        )
        for lab in labels
    ]
    fitted_legend(fig, handles, labels, "outside right upper", fontsize=8)


def training_curves(
    runs: pd.DataFrame,
    history: pd.DataFrame,
    metric_name: str,
    colours: Palette,
) -> Figure | None:
    """Per-epoch curves, mean over seeds with a one-std band; KL and loss on log axes."""
    style()
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
    fitted_legend(fig, handles, labels, "outside lower center", max_columns=6, fontsize=8.5)
    fig.suptitle(f"{runs.task.iloc[0]}: training curves (mean over seeds, band = one std)", fontsize=11)
    return fig
