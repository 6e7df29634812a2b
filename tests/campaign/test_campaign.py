"""A 2-row x 2-seed campaign on tiny synthetic MNIST, run by two worker processes, then everything that
reads its records: status, a report with no tracking store, import into MLflow, a faithful replay."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from sparsebench import record
from sparsebench.campaign import queue
from sparsebench.campaign.spec import load_campaign
from sparsebench.report.leaderboard import END, START, readme_block
from tests.campaign import RESULTS, write_campaign
from tests.conftest import copy_tracking_store


@dataclass
class Ran:
    root: Path
    spec: Path
    tracking_uri: str
    storage: str
    data: Path
    err: str


@pytest.fixture(scope="module")
def ran(
    tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path, empty_tracking_store: Path, run_cli
) -> Iterator[Ran]:  # noqa: ANN001
    root = tmp_path_factory.mktemp("campaign")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("SPARSEBENCH_CHECKPOINTS", str(root / "checkpoints"))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        spec = write_campaign(root)
        uri = copy_tracking_store(empty_tracking_store, root / "store")
        args = ["--workers", 2, "--device", "cpu", "--data-dir", mnist_dir, "--tracking-uri", uri]
        result = run_cli("campaign", "run", spec.name, *args)
        assert result.code == 0, result.err
        storage = queue.storage_url(
            load_campaign(spec)
        )  # the default: under ./mlruns of the campaign's folder
    yield Ran(root, spec, uri, storage, mnist_dir, result.err + result.out)


@pytest.fixture()
def at_root(ran: Ran, monkeypatch: pytest.MonkeyPatch) -> Ran:
    monkeypatch.chdir(ran.root)
    return ran


def study_of(ran: Ran) -> optuna.Study:
    return queue.load_queue(load_campaign(ran.spec), ran.storage)


def test_two_workers_write_each_cell_s_record_and_model_once(at_root: Ran) -> None:
    runs = at_root.root / RESULTS / "runs"
    keys = ["dense-seed0", "dense-seed1", "svd-seed0", "svd-seed1"]
    assert sorted(p.name for p in runs.glob("*.json")) == [f"{k}.json" for k in keys]
    assert sorted(p.name for p in runs.glob("*.model.npz")) == [f"{k}.model.npz" for k in keys]
    trials = [t for t in study_of(at_root).trials if t.state == TrialState.COMPLETE]
    assert sorted(t.user_attrs["cell"] for t in trials) == keys
    workers = {t.user_attrs["worker"].rsplit(":", 1)[1] for t in trials}
    assert str(os.getpid()) not in workers  # the cells ran in the worker processes
    threads = max(1, len(os.sched_getaffinity(0)) // 2)
    for key in keys:
        rec = record.read(runs / f"{key}.json")
        assert rec.seed == int(key[-1]) and rec.config["train.epochs"] == 1
        assert rec.config["train.threads"] == threads  # the cores split between the two workers
        assert rec.tags["campaign.cell"] == key and rec.tags["campaign"] == "tiny"
        assert rec.data and rec.epochs and rec.layers
    child = record.read(runs / "svd-seed1.json")
    assert child.tags["init_from"] == f"{RESULTS}/runs/dense-seed1.model.npz"  # the parent of its own seed
    spec_copy = json.loads((at_root.root / RESULTS / "campaign.json").read_text())
    assert [r["name"] for r in spec_copy["rows"]] == ["dense", "svd"]


def test_status_shows_every_row_done(at_root: Ran, run_cli) -> None:  # noqa: ANN001
    result = run_cli("campaign", "status", at_root.spec.name, "--json")
    report = json.loads(result.out)
    assert report["totals"]["done"] == 4 and report["totals"]["missing"] == 0
    assert [r["cells"]["done"] for r in report["rows"]] == [[0, 1], [0, 1]]
    text = run_cli("campaign", "status", at_root.spec.name).out
    assert "dense  [########################]  2/2 done" in text and "4/4 cells done" in text


def test_running_again_trains_nothing(at_root: Ran, run_cli) -> None:  # noqa: ANN001
    before = len(study_of(at_root).trials)
    result = run_cli(
        "campaign",
        "run",
        at_root.spec.name,
        "--data-dir",
        at_root.data,
        "--tracking-uri",
        at_root.tracking_uri,
    )
    assert result.code == 0, result.err
    assert len(study_of(at_root).trials) == before
    assert "4/4 cells done" in result.out


def test_a_report_from_records_needs_no_tracking_store(at_root: Ran, run_cli, monkeypatch) -> None:  # noqa: ANN001
    never = at_root.root / "never" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{never}")
    result = run_cli("report", "--records", RESULTS, "--out", "out-records", "--json")
    assert result.code == 0, result.err
    assert not never.exists() and not never.parent.exists()
    out = at_root.root / "out-records"
    board = run_cli("report", "--records", RESULTS, "--leaderboard").out
    assert (out / "leaderboard.md").read_text() == board
    assert "| lenet300_100 | dense | `dense` | 2 |" in board and "1.64 %, 1.0x" in board
    assert "sparsebench report --records reports/tiny --leaderboard" in board
    report = (out / "report.md").read_text()
    assert "Campaign rows" in report and "sparsebench reproduce reports/tiny --row svd" in report.replace(
        "<br>", " "
    )
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 4 and set(runs.setting) == {"dense", "svd"}
    svd0 = runs[runs.run_name == "svd-seed0"].command.iloc[0]
    assert "--set train.seed=0" in svd0 and "--set method.threshold=3.0" in svd0  # every recorded key
    assert f"--init-from {RESULTS}/runs/dense-seed0.model.npz" in svd0
    assert (out / "figures" / "lenet300_100_first_layer_sparse_vd.png").is_file()  # from the model file
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["records"] == RESULTS and manifest["tracking_uri"] is None


def test_readme_block_is_rewritten_between_the_markers(at_root: Ran, run_cli) -> None:  # noqa: ANN001
    readme = at_root.root / "README.md"
    readme.write_text(f"# x\n\nbefore\n\n{START}\nold table\n{END}\n\nafter\n")
    result = run_cli("report", "--records", RESULTS, "--leaderboard", "--readme", readme)
    assert result.code == 0, result.err
    text = readme.read_text()
    assert readme_block(text) == run_cli("report", "--records", RESULTS, "--leaderboard").out
    assert text.startswith("# x\n\nbefore\n\n") and text.endswith(f"{END}\n\nafter\n")
    again = run_cli("report", "--records", RESULTS, "--leaderboard", "--readme", readme)
    assert "already up to date" in again.err
    readme.write_text("no markers\n")
    missing = run_cli("report", "--records", RESULTS, "--leaderboard", "--readme", readme)
    assert missing.code == 2 and "has no <!-- leaderboard:start -->" in missing.err


def test_import_loads_records_into_mlflow_once(at_root: Ran, run_cli, empty_tracking_store: Path) -> None:  # noqa: ANN001
    from sparsebench.tracking import open_store, runs_frame

    uri = copy_tracking_store(empty_tracking_store, at_root.root / "imported")
    first = run_cli("import", RESULTS, "--tracking-uri", uri, "--experiment", "records")
    assert first.code == 0, first.err
    assert sorted(first.out.split()) == ["dense-seed0", "dense-seed1", "svd-seed0", "svd-seed1"]
    again = run_cli("import", RESULTS, "--tracking-uri", uri, "--experiment", "records")
    assert again.out.strip() == "" and "4 already there" in again.err
    store = open_store(uri)
    frame = runs_frame(store, [store.experiment_id("records")])
    assert len(frame) == 4 and set(frame.status) == {"FINISHED"}
    for _, run in frame.iterrows():
        rec = record.read(at_root.root / RESULTS / "runs" / f"{run['tags.campaign.cell']}.json")
        assert run["tags.record.run_id"] == rec.run_id
        assert run["metrics.test_metric"] == pytest.approx(rec.metrics["test_metric"])
        assert run["metrics.compression"] == pytest.approx(rec.metrics["compression"])
        assert run["params.train.seed"] == str(rec.seed)
    report = run_cli(
        "report",
        "--tracking-uri",
        uri,
        "--experiment",
        "records",
        "--no-mlflow",
        "--out",
        "out-store",
        "--json",
    )
    assert report.code == 0, report.err
    assert json.loads(report.out)["runs"] == 4
    assert (at_root.root / "out-store" / "figures" / "lenet300_100_first_layer_sparse_vd.png").is_file()


def test_reproduce_replays_the_recorded_config_inside_the_seeds_spread(at_root: Ran, run_cli) -> None:  # noqa: ANN001
    dry = run_cli("reproduce", RESULTS, "--row", "svd", "--dry-run")
    assert dry.code == 0 and "--set train.seed=0" in dry.out and "dense-seed0.model.npz" in dry.out
    args = ["--row", "svd", "--seed", "1", "--json", "--device", "cpu", "--data-dir", at_root.data]
    result = run_cli("reproduce", RESULTS, *args, "--tracking-uri", at_root.tracking_uri, "--no-progress")
    assert result.code == 0, result.err
    payload = json.loads(result.out)
    assert payload["cell"] == "svd-seed1"
    compared = {c["metric"]: c for c in payload["comparisons"]}
    assert set(compared) == {"test_metric", "compression"}
    assert all(c["inside_spread"] and c["seeds"] == 2 for c in compared.values())
    recorded = record.read(at_root.root / RESULTS / "runs" / "svd-seed1.json").metrics["compression"]
    assert compared["compression"]["new"] == pytest.approx(recorded, rel=1e-6)  # the same recipe, replayed
    wrong = run_cli("reproduce", RESULTS, "--row", "svd", "--seed", "7", "--dry-run")
    assert wrong.code == 2 and "has records of seeds 0, 1" in wrong.err
