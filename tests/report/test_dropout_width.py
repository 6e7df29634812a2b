"""The dropout-width analysis on hand-made records: numbers, figures and computed statements.

Test errors are chosen so that each ordering's verdict is known by hand: at width 100 variational A
beats Gaussian A with every seed (holds) and Gaussian A loses to binary with every seed (reversed);
at width 500 binary against none goes one way with seed 0 and the other with seed 1 (seeds disagree).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from sparsebench.report import dropout_orderings as orderings
from sparsebench.report.build import ReportRequest, make_report
from sparsebench.report.document import markdown
from sparsebench.report.dropout_width import TITLE, section
from sparsebench.report.records import load_records
from sparsebench.report.select import Selection
from tests.report.records_folder import FakeCell, write_records_folder

T_975 = {1: 12.706204736174698, 2: 4.302652729749464}
"""Student's t quantile 0.975 for 1 and 2 degrees of freedom (tables)."""

ERRORS = {  # (variant, width) -> test error % per seed
    ("none", 100): [1.50, 1.60],
    ("binary", 100): [2.00, 2.10],
    ("gaussian_A", 100): [2.20, 2.40],
    ("variational_A", 100): [1.40, 1.50, 1.60],
    ("variational_A2", 100): [1.35, 1.45],
    ("none", 500): [1.30, 1.20],
    ("binary", 500): [1.10, 1.25],
    ("gaussian_A", 500): [1.05, 1.15],
    ("variational_A", 500): [1.00, 1.10],
    ("variational_A2", 500): [0.90, 1.00],
    ("gaussian_B", 500): [1.40],
}
PAPER = {
    ("variational_A", 100): 1.41,
    ("gaussian_A", 100): 2.40,
    ("variational_A2", 100): 1.30,
    ("variational_A", 500): 1.12,
    ("variational_A2", 500): 1.07,
}
METHODS = {"none": "dense", "binary": "binary_dropout", "gaussian_A": "gaussian_dropout"}


def spec_rows() -> list[dict]:
    keys = [*ERRORS, ("variational_B", 500)]  # the last row has no record yet
    rows = []
    for variant, width in keys:
        row = {
            "name": f"w{width}-{variant}",
            "task": "mnist_mlp",
            "method": METHODS.get(variant, "variational_dropout"),
            "labels": {"variant": variant, "width": width},
            "seeds": [0, 1, 2] if len(ERRORS.get((variant, width), [])) == 3 else [0, 1],
        }
        if (variant, width) in PAPER:
            row["paper"] = {"error": PAPER[(variant, width)], "citation": "Figure 1"}
        rows.append(row)
    return rows


def curve(final: float) -> list[dict[str, float]]:
    return [{"epoch": e, "val_metric": final + 0.5 / e} for e in range(1, 5)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cells = [
        FakeCell(f"w{w}-{v}", seed, error, config={"train.epochs": 4}, epochs=curve(error))
        for (v, w), values in ERRORS.items()
        for seed, error in enumerate(values)
    ]
    root = tmp_path_factory.mktemp("records")
    return write_records_folder(root / "kingma2015", spec_rows(), cells, analyses=["dropout_width"])


@pytest.fixture(scope="module")
def drawn(folder: Path):  # noqa: ANN201
    """The section drawn once for the module's tests (figures are the slow part)."""
    return section(load_records(folder), folder.parent / "report")


def test_the_table_has_mean_and_95_ci_over_seeds_as_computed_by_hand(drawn) -> None:  # noqa: ANN001
    numbers = drawn.tables[0].numbers.set_index(["variant", "width"])
    none = numbers.loc[("none", 100)]
    assert none.seeds == 2 and none.seeds_planned == 2
    assert none.test_mean == pytest.approx(1.55)
    half = T_975[1] * math.sqrt(0.005) / math.sqrt(2)  # std of (1.5, 1.6) = sqrt(0.005)
    assert none.test_ci_high - none.test_mean == pytest.approx(half, rel=1e-6)
    three = numbers.loc[("variational_A", 100)]
    assert three.seeds == 3 and three.test_mean == pytest.approx(1.5)
    assert (three.test_ci_high - three.test_ci_low) / 2 == pytest.approx(
        T_975[2] * 0.1 / math.sqrt(3), rel=1e-6
    )
    assert three.paper == pytest.approx(1.41)
    one = numbers.loc[("gaussian_B", 500)]
    assert one.seeds == 1 and math.isnan(one.test_ci_low)
    display = drawn.tables[0].display.set_index("variant")
    assert display.loc["none", "100"] == f"1.55 ± {half:.2f} (2)"
    assert display.loc["Gaussian B", "500"] == "1.40 (1)"
    assert display.loc["variational B", "500"] == "—"  # planned, no record yet
    assert display.loc["Gaussian B", "100"] == ""  # not a point of the campaign


def test_both_figures_are_written_and_listed(drawn, folder: Path) -> None:  # noqa: ANN001
    names = sorted(p.name for p in drawn.files)
    assert names == ["dropout_width_curves.png", "dropout_width_error.png"]
    for path in drawn.files:
        assert path.parent == folder.parent / "report" / "figures"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    shown = [b.text for b in drawn.blocks if b.kind == "figure"]
    assert shown == ["figures/dropout_width_error.png", "figures/dropout_width_curves.png"]


def verdicts(drawn) -> dict[tuple[str, int], pd.Series]:  # noqa: ANN001
    judged = drawn.tables[1].numbers
    return {(r.ordering, r.width): r for _, r in judged.iterrows()}


def test_an_ordering_that_holds_with_every_seed_is_said_to_hold(drawn) -> None:  # noqa: ANN001
    found = verdicts(drawn)[("variational A <= Gaussian A", 100)]
    assert found.verdict == "holds" and found.paper == "holds"
    assert found.mean_diff == pytest.approx(0.85)  # (2.2 - 1.4 + 2.4 - 1.5) / 2, seeds 0 and 1 paired
    assert (found.diff_low, found.diff_high, found.pairs) == (pytest.approx(0.8), pytest.approx(0.9), 2)
    text = markdown(drawn.blocks)
    assert (
        "**variational dropout A ≤ Gaussian dropout A** (test error). Ours: holds (every seed) at 100" in text
    )


def test_an_ordering_that_fails_is_said_to_be_reversed_and_a_split_one_to_split(drawn) -> None:  # noqa: ANN001
    found = verdicts(drawn)
    assert found[("Gaussian A <= binary", 100)].verdict == "reversed"
    assert found[("Gaussian A <= binary", 100)].mean_diff == pytest.approx(-0.25)
    split = found[("binary <= none", 500)]
    assert split.verdict == "seeds disagree" and split.leans == "holds"  # +0.20 and -0.05
    assert (split.diff_low, split.diff_high) == (pytest.approx(-0.05), pytest.approx(0.20))
    text = markdown(drawn.blocks)
    assert "Ours: holds (every seed) at 500; reversed at 100." in text  # Gaussian A <= binary
    assert "seeds disagree at 500 (mean lower)" in text  # binary <= none


def test_a2_against_a_is_compared_with_the_paper_and_the_replication(drawn) -> None:  # noqa: ANN001
    paragraph = next(b.text for b in drawn.blocks if b.text.startswith("**variational dropout A2"))
    assert "Ours: holds (every seed) at 100, 500." in paragraph
    assert "Paper (Figure 1): holds at 100, 500." in paragraph
    assert "Replication: holds at 340; reversed at 100, 580, 820, 1060, 1300." in paragraph
    assert "ours side with the paper, not the replication." in paragraph
    assert "over the last 2 of 4 epochs the direction of the means held at 100, 500." in paragraph


def test_a_width_where_seeds_disagree_takes_no_side_in_the_summary(drawn) -> None:  # noqa: ANN001
    paragraph = next(b.text for b in drawn.blocks if b.text.startswith("**binary dropout ≤ no dropout"))
    # 100: reversed with every seed; 500: seeds disagree although the mean leans to "holds"
    assert "In ours (counting widths where every seed agrees) it is reversed at most widths" in paragraph


def test_the_whole_chain_is_named_where_every_link_holds_and_no_width_reads_as_such(drawn) -> None:  # noqa: ANN001
    text = markdown(drawn.blocks)
    # width 500: means 1.05 <= 1.10 <= 1.175 <= 1.25; width 100 breaks at Gaussian A vs binary
    assert "holds, by our means, at widths 500; in the paper's figure at no width;" in text


def test_rows_without_records_or_with_fewer_seeds_are_named(drawn) -> None:  # noqa: ANN001
    note = drawn.blocks[-1].text
    assert "Rows without records yet (1 of 12): w500-variational_B." in note
    assert "w500-gaussian_B (1 of 2)" in note


def test_no_records_for_the_figure_says_so_and_draws_nothing(tmp_path: Path) -> None:
    rows = [*spec_rows(), {"name": "other", "task": "lenet300_100", "method": "dense"}]
    folder = write_records_folder(tmp_path / "c", rows, [FakeCell("other", 0, 1.7)], ["dropout_width"])
    output = section(load_records(folder), tmp_path / "out")
    assert output.files == [] and output.tables == []
    assert output.blocks[-1].text.startswith("No records yet for the rows of this figure.")
    assert "w100-none" in output.blocks[-1].text


def test_rows_without_labels_are_not_drawn(tmp_path: Path) -> None:
    rows = [{"name": "plain", "task": "lenet300_100", "method": "dense", "labels": {"width": 100}}]
    folder = write_records_folder(tmp_path / "c", rows, [FakeCell("plain", 0, 1.7)], ["dropout_width"])
    output = section(load_records(folder), tmp_path / "out")
    assert "No campaign row carries the labels variant and width" in output.blocks[-1].text


@pytest.mark.parametrize(
    ("better", "worse", "expected"),
    [
        (1.00, 1.02, "tie"),
        (1.00, 1.03, "holds"),
        (1.03, 1.00, "reversed"),
        (0.98, 1.00, "tie"),
        (None, 1.0, ""),
    ],
)
def test_quoted_readings_closer_than_the_reading_precision_tie(better, worse, expected: str) -> None:  # noqa: ANN001
    assert orderings.judge_quoted(better, worse) == expected


def test_seeds_only_one_side_has_are_compared_by_range() -> None:
    apart = orderings.judge(pd.Series([1.0, 1.1], index=[0, 1]), pd.Series([1.2, 1.3], index=[2, 3]))
    assert (apart.verdict, apart.pairs) == ("holds", 0) and apart.diff == pytest.approx(0.2)
    mixed = orderings.judge(pd.Series([1.0, 1.25], index=[0, 1]), pd.Series([1.2, 1.3], index=[2, 3]))
    assert mixed.verdict == "seeds disagree"
    assert orderings.judge(pd.Series([1.0]), pd.Series(dtype=float)).verdict == "no records"


def test_an_ordering_that_flips_near_the_end_is_not_settled() -> None:
    rows = []
    for epoch, (a, a2) in enumerate([(2.0, 1.8), (1.6, 1.5), (1.40, 1.45), (1.30, 1.25)], start=1):
        rows += [("variational_A", 100, 0, epoch, a), ("variational_A2", 100, 0, epoch, a2)]
        rows += [("variational_A", 500, 0, epoch, a), ("variational_A2", 500, 0, epoch, a2 - 0.2)]
    history = pd.DataFrame(rows, columns=["variant", "width", "seed", "epoch", "val"])
    assert orderings.settled(history, orderings.ORDERINGS[-1]) == {100: False, 500: True}


def test_the_report_from_records_carries_the_section_and_its_csv(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    make_report(ReportRequest(Selection(), "kingma2015", out, "", records=folder, log_to_mlflow=False))
    assert f"## {TITLE}" in (out / "report.md").read_text()
    table = pd.read_csv(out / "tables" / "dropout_width.csv")
    assert len(table) == 12 and {"test_mean", "test_ci_low", "paper", "seeds_planned"} <= set(table.columns)
    assert (out / "figures" / "dropout_width_error.png").is_file()
