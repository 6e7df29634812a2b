"""The report's figures drawn from hand-made runs: axes that show the frontier, legends that fit."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest
from matplotlib.lines import Line2D

from sparsebench.report import aggregate, figures
from sparsebench.report.frontier import OUTLIER_FACTOR, Point, error_axis_top
from sparsebench.tasks.lenet300_100 import LeNet300100
from tests.report import synthetic

LEVELS = (10.0, 20.0, 50.0, 100.0)


@pytest.fixture
def runs():
    return synthetic.runs_frame()


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _frontier(runs):
    curves = synthetic.curves_frame(runs)
    kept, kept_curves, _ = aggregate.drop_degenerate(runs, curves)
    return figures.error_vs_compression(
        kept, kept_curves, tuple(LeNet300100.references), "error %", LEVELS, figures.palette(kept)
    )


def test_error_axis_shows_the_frontier_and_marks_the_outlier_on_the_edge(runs) -> None:
    fig = _frontier(runs)
    ax = fig.axes[0]
    low, top = ax.get_ylim()
    # Every point within 5x the best error fits (4.43 % is the worst of them); 38.65 % does not squash it.
    assert 4.43 < top < 10 and low < 0
    assert ax.get_xscale() == "log"
    edge = [
        line
        for line in ax.lines
        if line.get_marker() == "^" and not line.get_clip_on() and line.get_ydata()[0] == pytest.approx(top)
    ]
    assert len(edge) == 1 and edge[0].get_xdata()[0] == pytest.approx(50.0)
    assert "38.6" in [t.get_text() for t in ax.texts]


def test_error_axis_top_rule() -> None:
    best = Point(1.0, 2.0, (0, 0, 0), yerr=0.1)
    near = Point(10.0, 2.0 * OUTLIER_FACTOR, (0, 0, 0), yerr=0.5)
    far = Point(50.0, 2.0 * OUTLIER_FACTOR + 0.01, (0, 0, 0))
    assert error_axis_top([best, near, far], percent=True) == pytest.approx(1.25 * 10.5)
    # Each of our methods keeps its best point in view, however far from the others it is.
    ours = Point(1.2, 14.0, (0, 0, 0), yerr=2.0, method="sparse_vd")
    worse = Point(1.5, 30.0, (0, 0, 0), method="sparse_vd")
    assert error_axis_top([best, ours, worse], percent=True) == pytest.approx(1.25 * 16.0)
    assert error_axis_top([Point(1.0, 90.0, (0, 0, 0))], percent=True) == 100.0  # never past 100 %
    assert error_axis_top([Point(1.0, 0.0, (0, 0, 0))], percent=True) == 1.0  # all at zero error


def _legend_texts(fig) -> list[str]:
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    return [t.get_text() for legend in legends for t in legend.get_texts()]


def test_legends_say_1_seed_and_2_seeds(runs) -> None:
    texts = _legend_texts(_frontier(runs))
    assert "dense (1 seed)" in texts and "sparse_vd (2 seeds)" in texts
    assert "magnitude (1 seed, 3 settings)" in texts
    assert not any("1 seeds" in t or "1 settings" in t for t in texts)


def _all_figures(runs):
    colours = figures.palette(runs)
    refs = tuple(LeNet300100.references)
    return {
        "frontier": _frontier(runs),
        "layers": figures.layer_sparsity(runs, synthetic.layers_frame(runs), refs, colours),
        "curves": figures.training_curves(runs, synthetic.history_frame(runs), "error %", colours),
    }


def test_legends_lie_inside_the_figure_and_off_the_data(runs) -> None:
    for name, fig in _all_figures(runs).items():
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
        assert legends, name
        for legend in legends:
            box = legend.get_window_extent(renderer)
            assert box.x0 >= -1 and box.y0 >= -1, name
            assert box.x1 <= fig.bbox.width + 1 and box.y1 <= fig.bbox.height + 1, name
            for ax in fig.axes:
                assert not box.overlaps(ax.get_window_extent(renderer)), name


def test_the_frontier_is_drawn_with_the_methods_in_the_legend(runs) -> None:
    fig = _frontier(runs)
    handles = fig.legends[0].legend_handles
    assert any(isinstance(h, Line2D) and h.get_marker() == "^" for h in handles)
    assert "beyond the axis (value printed)" in _legend_texts(fig)


def test_a_crowded_paper_name_never_sits_nearer_another_marker() -> None:
    """The README figure's case: the sparse_vd star at 68x between dns (56x) and two of our points.

    Every spot beside the star is about as near another marker, so the name goes farther, with a
    line to its own star; a name whose point stands alone stays right beside it, with no line.
    """
    from sparsebench.report.frontier import _distance, _place_labels

    fig, ax = plt.subplots(figsize=(10.0, 5.2))
    ax.set_xscale("log")
    ax.set_xlim(0.8, 400)
    ax.set_ylim(0, 4)
    star, alone = (68.0, 1.92), (2.0, 1.0)
    markers = [star, alone, (56.0, 1.99), (50.0, 1.75), (108.0, 1.92), (23.0, 1.94)]
    _place_labels(ax, [(*star, "sparse_vd", "black"), (*alone, "dense", "black")], markers)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    labels = {t.get_text(): t for t in ax.texts}
    box = labels["sparse_vd"].get_window_extent(renderer)
    others = [ax.transData.transform(m) for m in markers if m != star]
    assert labels["sparse_vd"].arrow_patch is not None
    assert min(_distance(box, tuple(c)) for c in others) > 8  # clear of every other marker's dot
    assert labels["dense"].arrow_patch is None and labels["dense"].xyann == (0, 9)


def test_a_method_keeps_its_colour_whatever_else_has_records() -> None:
    """A new row (group_nj) must not recolour sparse_vd in the README figure; plugins get their own."""
    import pandas as pd

    def colours_of(methods: list[str]) -> dict[str, tuple[float, float, float]]:
        runs = pd.DataFrame({"method": methods, "setting": ["default"] * len(methods)})
        return figures.palette(runs).method

    before = colours_of(["dense", "magnitude", "random", "sparse_vd"])
    after = colours_of(["dense", "group_nj", "magnitude", "random", "sparse_vd", "my_plugin", "other_plugin"])
    assert all(after[name] == before[name] for name in before)
    assert len(set(after.values())) == len(after)  # every method its own colour, plugins included
