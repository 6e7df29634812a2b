"""Campaign-declared analyses: the spec names them, the records carry them, the report draws them."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pandas as pd
import pytest

from sparsebench.campaign.spec import campaign_from_dict
from sparsebench.errors import ConfigError
from sparsebench.report import analyses
from sparsebench.report.analyses import AnalysisOutput, run_analyses
from sparsebench.report.build import ReportRequest, make_report
from sparsebench.report.document import Block
from sparsebench.report.records import load_records
from sparsebench.report.select import Selection
from sparsebench.report.tables import Table
from tests.report.records_folder import FakeCell, write_records_folder

ROWS = [
    {"name": "dense", "task": "lenet300_100", "method": "dense", "labels": {"width": 100}},
    {"name": "dense-wide", "task": "lenet300_100", "method": "dense", "labels": {"width": 400}},
]
CELLS = [FakeCell("dense", s, 2.0 + s / 10) for s in range(3)] + [FakeCell("dense-wide", 0, 1.5)]


def spec(**fields: object) -> dict:
    data = {"name": "c", "results": "reports/c", "rows": [dict(r) for r in ROWS]}
    return {**data, **fields}


def test_a_spec_declares_known_analyses_and_labels_its_rows() -> None:
    checked = campaign_from_dict(spec(analyses=["dropout_width"]))
    assert checked.raw.analyses == ["dropout_width"]
    assert [row.labels for row in checked.rows] == [{"width": 100}, {"width": 400}]
    assert checked.public_dict()["analyses"] == ["dropout_width"]


def test_an_unknown_analysis_is_one_line_naming_the_key() -> None:
    with pytest.raises(ConfigError) as caught:
        campaign_from_dict(spec(analyses=["widht"]))
    assert "analyses[0]" in str(caught.value) and "\n" not in str(caught.value)


def test_every_declared_analysis_has_a_module() -> None:
    from typing import get_args

    from sparsebench.campaign.spec import AnalysisName

    assert set(analyses.MODULES) == set(get_args(AnalysisName))


@pytest.fixture()
def fake_analysis(monkeypatch: pytest.MonkeyPatch) -> list:
    """Stands in for a real analysis: records what it was given and adds one table."""
    seen: list = []

    def section(records, out: Path) -> AnalysisOutput:  # noqa: ANN001
        seen.append(records)
        widths = pd.DataFrame(
            {"row": [r.name for r in records.rows], "width": [r.labels["width"] for r in records.rows]}
        )
        table = Table("widths", "Rows by width", widths, widths, task="analysis")
        return AnalysisOutput([Block("p", "fake analysis ran")], [table], [])

    module = types.ModuleType("fake_analysis_module")
    module.section = section  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_analysis_module", module)
    monkeypatch.setitem(analyses.MODULES, "dropout_width", "fake_analysis_module")
    return seen


def test_records_carry_the_analyses_and_row_labels(tmp_path: Path, fake_analysis: list) -> None:
    folder = write_records_folder(tmp_path / "c", ROWS, CELLS, analyses=["dropout_width", "not_known"])
    records = load_records(folder)
    assert records.analyses == ("dropout_width", "not_known")
    assert {r.name: r.labels for r in records.rows} == {"dense": {"width": 100}, "dense-wide": {"width": 400}}
    output = run_analyses(records, tmp_path / "out")
    assert fake_analysis == [records]
    assert [t.name for t in output.tables] == ["widths"]
    assert "'not_known' is not known" in output.blocks[-1].text


def test_the_report_from_records_holds_the_analysis_and_its_table(
    tmp_path: Path, fake_analysis: list
) -> None:
    folder = write_records_folder(tmp_path / "c", ROWS, CELLS, analyses=["dropout_width"])
    out = tmp_path / "report"
    make_report(ReportRequest(Selection(), "c", out, "", records=folder, log_to_mlflow=False))
    assert "fake analysis ran" in (out / "report.md").read_text()
    widths = pd.read_csv(out / "tables" / "widths.csv")
    assert widths.to_dict("list") == {"row": ["dense", "dense-wide"], "width": [100, 400]}
