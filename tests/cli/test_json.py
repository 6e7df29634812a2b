"""``--json`` for scripts: stdout holds one JSON document and nothing else (progress stays on stderr)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from sparsebench.report import build, select
from sparsebench.report.select import RunSet
from tests.conftest import CliResult
from tests.report import synthetic


def test_list_json_has_every_entry_with_its_config(run_cli: Callable[..., CliResult]) -> None:
    from sparsebench.methods.sparse_vd import SparseVD
    from sparsebench.registry import METHODS, TASKS

    result = run_cli("list", "--json")
    assert result.code == 0, result.err
    listing = json.loads(result.out)
    assert set(listing) == {"methods", "tasks"}
    assert [e["name"] for e in listing["methods"]["entries"]] == [e.name for e in METHODS.entries()]
    assert [e["name"] for e in listing["tasks"]["entries"]] == [e.name for e in TASKS.entries()]
    (svd,) = [e for e in listing["methods"]["entries"] if e["name"] == "sparse_vd"]
    threshold = {c["key"]: c for c in svd["config"]}["threshold"]
    assert threshold["default"] == SparseVD.Config().threshold and threshold["help"]
    (lenet,) = [e for e in listing["tasks"]["entries"] if e["name"] == "lenet300_100"]
    assert {"method", "error", "compression", "citation"} <= set(lenet["references"][0])
    only_tasks = json.loads(run_cli("list", "tasks", "--json").out)
    assert set(only_tasks) == {"tasks"} and only_tasks["tasks"]["broken"] == []


@pytest.fixture
def synthetic_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The report reads hand-made runs instead of a store (the report's own tests do the same)."""

    def load_runs(selection: select.Selection, tracking_uri: str) -> RunSet:
        runs = synthetic.runs_frame()
        return RunSet(
            runs=runs,
            layers=synthetic.layers_frame(runs),
            curves=synthetic.curves_frame(runs),
            history=synthetic.history_frame(runs),
            configs={},
            tracking_uri=tracking_uri,
            inference=pd.DataFrame(columns=["run_id", "format", "device", "batch_size", "status", "ms"]),
        )

    monkeypatch.setattr(build, "load_runs", load_runs)
    monkeypatch.setattr(select, "load_model", lambda *args, **kwargs: None)  # no model artifacts


def test_report_json_says_what_was_written(
    synthetic_runs: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_cli: Callable[..., CliResult]
) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "reports" / "study"
    result = run_cli("report", "--tracking-uri", "sqlite:///s.db", "--out", out, "--no-mlflow", "--json")
    assert result.code == 0, result.err
    written = json.loads(result.out)
    assert written["folder"] == str(out)
    assert {"report.md", "report.html", "manifest.json"} <= set(written["files"])
    assert all((out / name).is_file() for name in written["files"])
    assert written["runs"] == len(synthetic.runs_frame())
    assert written["mlflow_run_id"] is None
    assert written["tables"] and all(isinstance(t, str) and t for t in written["tables"].values())
    assert "wrote " in result.err  # the human summary stays on stderr
