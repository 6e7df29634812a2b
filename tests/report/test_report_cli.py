"""``report`` and ``reproduce`` on hand-made runs: what the files may hold, and one-line errors.

The MLflow read (``load_runs``) is replaced by hand-made frames, so these tests run in seconds and
check the report's own rules: no password or absolute path in what it writes, degenerate runs
named and left out, bad output folders, bad manifests and Ctrl-C answered with one line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from sparsebench.cli import main
from sparsebench.report import build, select
from sparsebench.report.manifest import portable_path, portable_uri
from sparsebench.report.select import RunSet
from tests.report import synthetic

PASSWORD_URI = "postgresql://alice:s3cret@db.example:5432/mlflow"


@pytest.fixture
def fake_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """``load_runs`` answers with the synthetic study (and a degenerate run); no model artifacts."""

    def load_runs(selection: select.Selection, tracking_uri: str) -> RunSet:
        runs = synthetic.runs_frame(degenerate=True)
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
    monkeypatch.setattr(select, "load_model", lambda tracking_uri, run_id: None)


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def _report(tmp_path: Path, uri: str, capsys: pytest.CaptureFixture) -> Path:
    out = tmp_path / "reports" / "study"
    code = main(["report", "--tracking-uri", uri, "--out", str(out), "--no-mlflow", "--name", "study"])
    assert code == 0, capsys.readouterr().err
    return out


def test_report_files_hold_no_password_and_no_absolute_path(
    fake_store: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    out = _report(tmp_path, PASSWORD_URI, capsys)
    for name in ("manifest.json", "report.md", "report.html"):
        text = (out / name).read_text()
        assert "s3cret" not in text, name
        assert str(tmp_path) not in text, name
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tracking_uri"] == "postgresql://alice:***@db.example:5432/mlflow"
    assert "--out reports/study" in manifest["command"] and "alice:***@" in manifest["command"]
    assert all(not Path(f).is_absolute() for f in manifest["files"])
    assert "sparsebench reproduce reports/study" in (out / "report.md").read_text()


def test_a_file_store_is_written_relative_to_where_the_report_was_made(
    fake_store: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    out = _report(tmp_path, f"sqlite:///{tmp_path}/store/mlflow.db", capsys)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tracking_uri"] == "sqlite:///store/mlflow.db"
    assert "--tracking-uri sqlite:///store/mlflow.db" in manifest["command"]
    assert str(tmp_path) not in (out / "manifest.json").read_text()


def test_portable_uri_and_path() -> None:
    base = Path("/home/alice/project")
    assert (
        portable_uri("sqlite:////home/alice/project/mlruns/mlflow.db", base) == "sqlite:///mlruns/mlflow.db"
    )
    assert portable_uri("sqlite:///mlruns/mlflow.db", base) == "sqlite:///mlruns/mlflow.db"
    assert portable_uri("file:///home/alice/project/mlruns", base) == "mlruns"
    assert portable_uri("/home/alice/store", base) == "../store"
    assert portable_uri("https://bob:pw@mlflow.example/", base) == "https://bob:***@mlflow.example/"
    assert portable_path("/home/alice/project/reports/x", base) == "reports/x"
    assert portable_path("reports/x", base) == "reports/x"


def test_degenerate_runs_are_named_and_left_out_of_the_statistics(
    fake_store: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    out = _report(tmp_path, "sqlite:///store.db", capsys)
    text = (out / "report.md").read_text()
    assert "Left out of every table and figure but the runs list: 1 degenerate run" in text
    matched = pd.read_csv(out / "tables" / "matched.csv")
    assert "group_nj" not in set(matched.method)
    assert "group_nj" not in set(pd.read_csv(out / "tables" / "paper.csv").method)
    assert "group_nj" in set(pd.read_csv(out / "runs.csv").method)  # still listed, and in the manifest
    section = text.split("### Matched compression")[1].split("###")[0]
    assert "266200x" not in section


def test_report_out_naming_a_file_is_one_line(
    fake_store: None, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    for out in (target, target / "sub"):
        assert main(["report", "--tracking-uri", "sqlite:///x.db", "--out", str(out), "--no-mlflow"]) == 2
        assert "is a file, not a folder" in _one_line(capsys.readouterr().err)
    assert target.read_text() == "mine"


def test_ctrl_c_during_report_is_one_line_and_exit_130(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    def interrupted(selection: select.Selection, tracking_uri: str) -> RunSet:
        raise KeyboardInterrupt

    monkeypatch.setattr(build, "load_runs", interrupted)
    out = tmp_path / "r"
    assert main(["report", "--tracking-uri", "sqlite:///x.db", "--out", str(out), "--no-mlflow"]) == 130
    assert "interrupted" in _one_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "not a readable JSON manifest"),
        ('{"name": "x", "runs": [', "not a readable JSON manifest"),
        ("[1, 2]", "a manifest is a JSON object"),
        ('{"runs": []}', "no 'name'"),
        ('{"name": "x"}', "no 'runs'"),
        ('{"name": "x", "runs": [1]}', "run entry 1 is not an object"),
        ('{"name": "x", "runs": [{"run_id": "a", "method": "dense"}]}', "run entry 1 has no 'task'"),
    ],
)
def test_malformed_or_incomplete_manifest_is_one_line(
    content: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "manifest.json").write_text(content)
    for extra in (["--dry-run"], ["--device", "cpu"]):
        assert main(["reproduce", str(tmp_path), *extra]) == 2
        assert message in _one_line(capsys.readouterr().err)


def test_manifest_that_is_not_text_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "manifest.json").write_bytes(b"\xff\xfe\x00garbage")
    assert main(["reproduce", str(tmp_path), "--dry-run"]) == 2
    assert "not a readable JSON manifest" in _one_line(capsys.readouterr().err)


def test_reproduce_only_takes_a_unique_prefix(
    fake_store: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    out = _report(tmp_path, "sqlite:///store.db", capsys)
    capsys.readouterr()
    entries = json.loads((out / "manifest.json").read_text())["runs"]
    first = entries[0]
    assert main(["reproduce", str(out), "--dry-run", "--only", first["run_id"][:8]]) == 0
    assert capsys.readouterr().out.strip() == first["command"]
    assert main(["reproduce", str(out), "--dry-run", "--only", "zzzzzzzz"]) == 2
    assert "not a run of this report" in _one_line(capsys.readouterr().err)
