"""README's leaderboard is what the committed run records give, regenerated here and compared."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sparsebench.campaign.cells import recorded_cells
from sparsebench.report.leaderboard import leaderboard_block, readme_block
from sparsebench.report.matched_points import matched_points
from sparsebench.report.records import load_records

ROOT = Path(__file__).resolve().parents[2]
SOURCE = Path("reports/mnist")
"""The results folder README's leaderboard is made from (relative: the block names it)."""
FIX = "regenerate it: sparsebench report --records reports/mnist --leaderboard --readme README.md"


def test_readme_leaderboard_matches_the_committed_records(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    readme = readme_block((ROOT / "README.md").read_text())
    assert readme == leaderboard_block(SOURCE), f"README's leaderboard differs from the records; {FIX}"


def test_a_report_from_the_records_alone_rebuilds_readme_s_leaderboard(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    run_cli,  # noqa: ANN001
) -> None:
    if not recorded_cells(ROOT / SOURCE):
        pytest.skip("no run records are committed in reports/mnist/runs yet")
    monkeypatch.chdir(ROOT)
    store = tmp_path / "absent" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")  # any use of a store would create it
    result = run_cli("report", "--records", SOURCE, "--out", tmp_path / "report")
    assert result.code == 0, result.err
    assert not store.parent.exists()
    written = (tmp_path / "report" / "leaderboard.md").read_text()
    assert written == readme_block((ROOT / "README.md").read_text()), FIX


MATCHED_METHODS = {"Sparse VD": "sparse_vd", "magnitude": "magnitude", "L0": "l0", "random": "random"}
"""README's names for the matched comparison's methods -> the records' method names."""


def test_readme_matched_sparsity_errors_are_the_committed_records_means() -> None:
    """The matched-sparsity line quotes mean test errors by hand; each must be the records' mean at
    that target, so a new record that moves one fails here instead of leaving README stale."""
    text = " ".join((ROOT / "README.md").read_text().split())
    quoted = re.search(r"At (\d+(?:\.\d+)?) %: (.+?) test error", text)
    assert quoted, "README's matched-sparsity line no longer reads 'At <target> %: <method> <error> %, ...'"
    target = float(quoted.group(1)) / 100
    points = matched_points(load_records(ROOT / "reports" / "matched-sparsity")).chosen
    means = points[(points.task == "lenet300_100") & (abs(points.target - target) < 1e-9)]
    means = means.groupby("method").test.mean()
    found = re.findall(r"([A-Za-z0-9 ]+?) (\d+\.\d\d) %", quoted.group(2))
    errors = {MATCHED_METHODS[name.strip(", ")]: error for name, error in found}
    assert set(errors) == set(means.index), "README names other methods than the records at that target"
    for method, error in errors.items():
        assert error == f"{means[method]:.2f}", f"README's {method} at {quoted.group(1)} %: update it"
