"""The report's gradient_variance section draws Table 1 from the experiment's record alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from sparsebench.experiments import gradient_variance_record as gvr
from sparsebench.report.build import ReportRequest, make_report
from sparsebench.report.records import load_records
from sparsebench.report.select import Selection
from tests.report.records_folder import FakeCell, write_records_folder

ROWS = [{"name": "dense", "task": "lenet300_100", "method": "dense"}]


def fake_record(epochs: tuple[int, ...] = (10, 40)) -> gvr.GradientVarianceRecord:
    """Made-up variances in which LRT is smallest in the top layer but not in the bottom one."""
    points = []
    for epoch in epochs:
        values = {
            ("lrt", "top"): 100.0, ("separate", "top"): 200.0, ("single", "top"): 400.0,
            ("none", "top"): 50.0,
            ("lrt", "bottom"): 30.0, ("separate", "bottom"): 20.0, ("single", "bottom"): 40.0,
            ("none", "bottom"): 10.0,
        }  # fmt: skip
        cells = [
            gvr.Cell(estimator=e, layer=layer, variance=v / epoch, std_error=v / epoch / 10,
                     group_variances=[v / epoch] * 5, repeats=10)
            for (e, layer), v in values.items()
        ]  # fmt: skip
        points.append(gvr.Point(epoch=epoch, test_error=2.0, train_loss=0.1, training_seconds=1.0,
                                seconds_per_repeat={"lrt": 0.1}, cells=cells))  # fmt: skip
    config = {"network": "784-1024-1024-1024-10 ReLU", "batch_size": 1000, "groups": 5}
    return gvr.GradientVarianceRecord(
        config=config, versions={"sparsebench": "test"}, points=points, finished=True
    )


@pytest.fixture()
def records_folder(tmp_path: Path) -> Path:
    return write_records_folder(
        tmp_path / "kingma2015", ROWS, [FakeCell("dense", 0, 2.0)], ["gradient_variance"]
    )


def test_the_section_renders_ours_the_paper_and_the_orderings(records_folder: Path, tmp_path: Path) -> None:
    from sparsebench.report.gradient_variance import section

    gvr.write(fake_record(), records_folder / gvr.FOLDER / gvr.RECORD_NAME)
    output = section(load_records(records_folder), tmp_path / "out")
    values, order = output.tables
    assert len(values.numbers) == 16  # 2 points x 2 layers x 4 estimators
    first = values.numbers.iloc[0].to_dict()
    assert first["epochs"] == 10 and first["layer"] == "top" and first["ours"] == pytest.approx(10.0)
    assert first["paper"] == 7.8e3 and first["replication"] == 2.4e4
    # 40 epochs stands beside the paper's 100-epoch column.
    later = values.numbers[(values.numbers["epochs"] == 40) & (values.numbers["layer"] == "bottom")]
    assert set(later["paper_epochs"]) == {100} and later["paper"].iloc[0] == 1.1e2
    assert order.numbers["lrt_smallest"].tolist() == [True, False, True, False]
    assert order.numbers["paper"].tolist() == ["lrt<separate<single"] * 4
    assert order.numbers["separate/lrt"].tolist() == pytest.approx([2.0, 2 / 3, 2.0, 2 / 3])
    assert order.numbers["separate/lrt paper"].iloc[0] == pytest.approx(1.4e4 / 7.8e3)
    assert "7.8e+03 (10 ep.)" in values.display["paper"].tolist()


def test_orderings_within_two_standard_errors_are_ties() -> None:
    rec = fake_record((10,))
    for cell in rec.points[0].cells:
        if cell.layer == "top" and cell.estimator == "single":
            cell.variance, cell.std_error = 21.0, 1.0  # separate: 20 +- 2
    order = gvr.ordering_frame(rec)
    assert order["ours"].tolist() == ["lrt<separate≈single", "separate<lrt≈single"]
    assert order["lrt_smallest_beyond_2se"].tolist() == [True, False]


def test_without_the_record_the_section_is_a_note(records_folder: Path, tmp_path: Path) -> None:
    from sparsebench.report.gradient_variance import section

    output = section(load_records(records_folder), tmp_path / "out")
    assert output.tables == []
    assert [b.kind for b in output.blocks] == ["h2", "note"]
    assert "sparsebench experiment gradient-variance" in output.blocks[-1].text


def test_report_from_records_includes_the_table(records_folder: Path, tmp_path: Path) -> None:
    gvr.write(fake_record((10,)), records_folder / gvr.FOLDER / gvr.RECORD_NAME)
    out = tmp_path / "report"
    make_report(
        ReportRequest(Selection(), "kingma2015", out, "", records=records_folder, log_to_mlflow=False)
    )
    text = (out / "report.md").read_text()
    assert "Gradient variance (Kingma, Salimans, Welling 2015, Table 1)" in text
    assert "lrt<separate<single" in text
    assert (out / "tables" / "gradient_variance.csv").is_file()
