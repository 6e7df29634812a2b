"""README's leaderboard is what the committed run records give, regenerated here and compared."""

from __future__ import annotations

from pathlib import Path

import pytest

from sparsebench.campaign.cells import recorded_cells
from sparsebench.report.leaderboard import leaderboard_block, readme_block

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
