"""Cell durations from the records: a row's own median, its grid neighbours' when it has none, and
nothing to go by for a different variant; the time box and the status that read them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sparsebench.campaign import durations
from sparsebench.campaign.spec import load_campaign
from sparsebench.campaign.status import campaign_status, render
from sparsebench.record import RunRecord
from tests.campaign import FAST, RESULTS, write_campaign


def row(name: str, method: str = "l0", **config: Any) -> dict[str, Any]:
    return {"name": name, "task": "lenet300_100", "method": method, "config": {**FAST, **config}}


ROWS = [
    row("lam1", **{"method.lam": 1.0}),
    row("lam2", **{"method.lam": 2.0}),
    row("lam4", **{"method.lam": 4.0}),
    row("weight", **{"method.lam": 1.0, "method.granularity": "weight"}),
    row("long", **{"method.lam": 1.0, "train.epochs": 3}),
    row("vd-A", "variational_dropout", **{"method.variant": "A"}),
    row("vd-B", "variational_dropout", **{"method.variant": "B"}),
]


def put_record(
    root: Path,
    key: str,
    seconds: float | None,
    results: str = RESULTS,
    method: str = "l0",
    config: dict[str, Any] | None = None,
) -> None:
    """A minimal valid run record with this training time (the rest plays no part in the estimate)."""
    folder = root / results / "runs"
    folder.mkdir(parents=True, exist_ok=True)
    run = RunRecord(run_id=key, task="lenet300_100", method=method, seed=0, config=config or {},
                    versions={}, metrics={}, layers=[], training_seconds=seconds)  # fmt: skip
    (folder / f"{key}.json").write_text(run.to_json())


@pytest.fixture()
def spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    monkeypatch.chdir(tmp_path)
    return load_campaign(write_campaign(tmp_path, seeds=[0, 1, 2], rows=ROWS))


def minutes(spec, name: str) -> float | None:  # noqa: ANN001
    estimate = durations.expected_minutes(spec, spec.row(name))
    return None if estimate is None else estimate.minutes


def test_a_row_is_timed_by_the_median_of_its_own_records(spec, tmp_path: Path) -> None:  # noqa: ANN001
    for seed, seconds in enumerate([600, 1200, 6000]):
        put_record(tmp_path, f"lam2-seed{seed}", seconds)
    put_record(tmp_path, "lam1-seed0", 60)
    assert minutes(spec, "lam2") == pytest.approx(20.0)  # the median, not the mean (40)
    assert "3 records of the row" in durations.expected_minutes(spec, spec.row("lam2")).source


def test_a_row_without_records_borrows_its_grid_neighbours_only(spec, tmp_path: Path) -> None:  # noqa: ANN001
    put_record(tmp_path, "lam1-seed0", 300)
    put_record(tmp_path, "lam2-seed0", 900)
    assert minutes(spec, "lam4") == pytest.approx(10.0)  # another lambda of the same grid
    assert minutes(spec, "weight") is None  # another setting (granularity), not another number
    assert minutes(spec, "long") is None  # three times the epochs
    put_record(tmp_path, "vd-A-seed0", 600)
    assert minutes(spec, "vd-B") is None  # Kingma's B costs several times A


def test_a_row_new_to_its_campaign_takes_the_longest_matching_record_of_another(spec, tmp_path: Path) -> None:  # noqa: ANN001
    """Same task, method, epochs, batch and precision elsewhere: the longest, as a variant may cost more."""
    same = {"train.epochs": 1, "train.batch_size": 100, "train.amp": True}  # an old record: no cpu_amp key
    other = "reports/leaderboard"
    put_record(tmp_path, "vd-C-seed0", 600, other, "variational_dropout", {**same, "method.variant": "A"})
    put_record(tmp_path, "vd-D-seed0", 1500, other, "variational_dropout", {**same, "method.variant": "B"})
    put_record(tmp_path, "vd-E-seed0", 9000, other, "variational_dropout", {**same, "train.epochs": 200})
    put_record(tmp_path, "vd-F-seed0", 9000, other, "variational_dropout", {**same, "train.cpu_amp": True})
    put_record(tmp_path, "x-seed0", 9000, other, "a_plugin_not_installed_here", same)
    estimate = durations.expected_minutes(spec, spec.row("vd-A"))
    assert estimate.minutes == pytest.approx(25.0)  # not the 200-epoch or the bf16 record
    assert estimate.source == "longest of 2 records of lenet300_100 / variational_dropout in other campaigns"
    put_record(tmp_path, "vd-A-seed0", 60)  # a record of its own outranks every other campaign's
    assert minutes(spec, "vd-A") == pytest.approx(1.0)
    assert minutes(spec, "weight") is None  # no l0 record anywhere else


def test_records_without_a_usable_time_are_left_out(spec, tmp_path: Path) -> None:  # noqa: ANN001
    put_record(tmp_path, "lam1-seed0", None)
    put_record(tmp_path, "lam1-seed1", 120)
    (tmp_path / RESULTS / "runs" / "lam1-seed2.json").write_text("{not json")
    assert minutes(spec, "lam1") == pytest.approx(2.0)


def test_status_shows_each_row_s_cell_time_and_the_work_left(spec, tmp_path: Path) -> None:  # noqa: ANN001
    put_record(tmp_path, "lam1-seed0", 600)  # 10 min; lam1 has 2 cells left, lam2 and lam4 3 each
    report = campaign_status(spec, spec.rows, "sqlite:///" + (tmp_path / "none.db").as_posix())
    assert report["work_left"]["worker_minutes"] == pytest.approx(80.0)
    assert report["work_left"]["rows_without_estimate"] == ["weight", "long", "vd-A", "vd-B"]
    text = render(report)
    assert "about 10 min a cell" in text and "about 1.3 worker-hours" in text
    assert "4 rows with no record to time them by (weight, long, vd-A and 1 more)" in text
