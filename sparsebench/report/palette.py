"""What every figure of the report shares: the theme, one colour per method, the axis and the legend.

Colours come from one palette keyed by method so a method looks the same in every figure; legends
are placed beside the axes and shrunk to fit the figure, so no label is cut off in the PNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: reports are drawn on servers and in CI without a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.legend import Legend  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

QUOTED_GREY = "#6b6b6b"

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


BUILT_IN_COLOURS = {
    "dense": 0,  # blue
    "binary_dropout": 1,  # orange
    "magnitude": 2,  # green
    "sparse_vd": 3,  # vermilion
    "group_nj": 4,  # purple
    "random": 5,  # brown
    "group_hs": 6,  # pink
    "variational_dropout": 7,  # grey
    "gaussian_dropout": 8,  # yellow
    "l0": 9,  # sky blue
}
"""Each built-in method's entry of seaborn's colour-blind palette, fixed so that a method keeps its
colour from one report to the next whatever other methods have records (the order used to follow
the methods present, and a new row recoloured the README's figure). Neighbours on a figure get
colours far apart: random's brown against group_nj's purple, not two oranges."""


def palette(runs: pd.DataFrame) -> Palette:
    """Colour-blind-safe colours fixed for built-in methods; other methods (plugins) take seaborn's
    "dark" colours in name order; settings of one method run dark to light."""
    names = sorted(set(runs.method))
    built_in, dark = sns.color_palette("colorblind", 10), sns.color_palette("dark", 10)
    others = [name for name in names if name not in BUILT_IN_COLOURS]
    fixed = {name: built_in[index] for name, index in BUILT_IN_COLOURS.items() if name in names}
    colours = Palette({**{name: dark[k % 10] for k, name in enumerate(others)}, **fixed})
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


def style() -> None:
    sns.set_theme(context="notebook", style="whitegrid", font_scale=0.95)


def compression_axis(ax: plt.Axes, low: float, high: float) -> None:
    """Log axis labelled 1x 2x 5x 10x ... (only decades when the range is wide, so labels never collide)."""
    ax.set_xscale("log")
    ax.set_xlim(low, high)
    subs = (1.0, 2.0, 5.0) if high / low < 2e3 else (1.0,)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def plain_log_y(ax: plt.Axes) -> None:
    """Log y axis with plain numbers at 1, 1.2, 1.5, 2, 3, 5, 7 per decade: an error axis spans less
    than a decade, where matplotlib's default labels each minor tick as a power of ten."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 1.2, 1.5, 2.0, 3.0, 5.0, 7.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def label_of(method: str, setting: str, several: bool) -> str:
    return f"{method} ({setting})" if several and setting != "default" else method


def fitted_legend(
    fig: Figure, handles: Sequence[Any], labels: Sequence[str], loc: str, max_columns: int = 1, **kwargs: Any
) -> Legend:
    """A figure legend with as many columns as fit the figure's width (down to one).

    ``loc`` is one of constrained layout's ``"outside ..."`` places, so the axes make room for the
    legend; a row of long setting labels wider than the figure would otherwise be cut off in the PNG.
    """
    renderer = fig.canvas.get_renderer()
    columns = max(1, min(max_columns, len(labels)))
    while True:
        legend = fig.legend(handles, labels, loc=loc, ncol=columns, frameon=False, **kwargs)
        if columns == 1 or legend.get_window_extent(renderer).width <= 0.98 * fig.bbox.width:
            return legend
        legend.remove()
        columns -= 1
