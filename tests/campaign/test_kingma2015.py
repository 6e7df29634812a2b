"""The shipped kingma2015 campaign: seven dropout variants x six widths, each row labelled and planned."""

from __future__ import annotations

from pathlib import Path

import torch

from sparsebench.campaign.spec import load_campaign, shipped_names
from sparsebench.report.dropout_orderings import VARIANTS
from sparsebench.run.plan import plan_run

ROOT = Path(__file__).resolve().parents[2]
WIDTHS = (100, 250, 500, 750, 1000, 1250)
"""The x axis of Kingma et al. 2015, Figure 1 (hidden units per layer)."""
METHOD_OF = {
    "none": ("dense", None),
    "binary": ("binary_dropout", None),
    "gaussian_A": ("gaussian_dropout", "A"),
    "variational_A": ("variational_dropout", "A"),
    "variational_A2": ("variational_dropout", "A2"),
    "gaussian_B": ("gaussian_dropout", "B"),
    "variational_B": ("variational_dropout", "B"),
}


def test_the_campaign_is_shipped_and_the_name_and_the_file_agree(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    assert "kingma2015" in shipped_names()
    monkeypatch.chdir(tmp_path)
    by_name = load_campaign("kingma2015")
    assert (
        by_name.public_dict()["rows"]
        == load_campaign(ROOT / "sweeps/campaigns/kingma2015.yaml").public_dict()["rows"]
    )
    assert by_name.results == Path("reports/kingma2015")
    assert by_name.raw.analyses == ["dropout_width", "gradient_variance"]


def test_every_variant_at_every_width_once_with_labels_that_match_the_config() -> None:
    spec = load_campaign("kingma2015")
    points = set()
    for row in spec.rows:
        variant, width = row.labels["variant"], row.labels["width"]
        method, option = METHOD_OF[variant]
        assert (row.task, row.method) == ("mnist_mlp", method), row.name
        assert row.config["task.width"] == width, row.name
        assert row.config.get("method.variant") == option, row.name
        assert "task.depth" not in row.config  # the task's default: 3 hidden layers, as the paper
        points.add((variant, width))
    assert len(spec.rows) == len(points) == len(VARIANTS) * len(WIDTHS)
    assert points == {(v, w) for v in VARIANTS for w in WIDTHS}


def test_two_seeds_and_one_epoch_budget_for_every_row() -> None:
    spec = load_campaign("kingma2015")
    assert all(len(row.seeds) >= 2 for row in spec.rows)
    budgets = {row.config["train.epochs"] for row in spec.rows}
    assert len(budgets) == 1
    assert f"{budgets.pop()} epochs per cell" in spec.description


def test_rows_run_widest_first_so_the_long_cells_start_first() -> None:
    widths = [row.labels["width"] for row in load_campaign("kingma2015").rows]
    assert widths == sorted(widths, reverse=True)


def test_every_row_plans_and_its_network_converts_and_runs() -> None:
    """The narrowest row of each variant end to end: plan, build, convert, one training forward."""
    spec = load_campaign("kingma2015")
    for row in spec.rows:
        plan = plan_run(row.task, row.method, row.overrides(row.seeds[0]))
        assert plan.task.config.width == row.labels["width"] and plan.task.config.depth == 3
        if row.labels["width"] != min(WIDTHS):
            continue
        torch.manual_seed(0)
        model = plan.method.convert(plan.task.build_model())
        model.train()
        assert model(torch.randn(5, 784)).shape == (5, 10), row.name


def test_the_quoted_paper_points_keep_the_figures_shape() -> None:
    """Readings off Figure 1: A2 under A from 250 units on, no dropout flat past 750, all below 2.5 %."""
    paper = {
        (r.labels["variant"], r.labels["width"]): r.paper.error for r in load_campaign("kingma2015").rows
    }
    assert all(0.9 <= e <= 2.5 for e in paper.values())
    assert all(paper[("variational_A2", w)] < paper[("variational_A", w)] for w in WIDTHS[1:])
    assert {paper[("none", w)] for w in (750, 1000, 1250)} == {1.18}
    assert paper[("gaussian_A", 100)] > paper[("binary", 100)] > paper[("none", 100)]
