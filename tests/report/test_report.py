"""A report made from real (tiny) MLflow runs: every table and figure, its numbers, HTML, reproduce."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import torch

import sparsebench.cli as cli
from sparsebench.env import Env
from sparsebench.report.reproduce import REPRODUCTION_TAG
from sparsebench.report.select import REPORT_EXPERIMENT, NoMatchingRunsError, Selection, load_runs
from sparsebench.run.plan import RunRequest
from sparsebench.run.train import train
from sparsebench.tasks.lenet300_100 import LeNet300100
from sparsebench.tracking import make_client

# Little noise and a small KL so two epochs on the generated data give a real error-compression curve.
SPARSE_VD = {
    "method.kl_weight": 1e-3,
    "method.init_log_sigma2": -14.0,
    "method.kl_warmup_start": 0,
    "method.kl_warmup_epochs": 0,
}
LEVELS = ("2", "5", "10")
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def main():
    """``sparsebench`` main with the report subcommands registered (a no-op once the CLI lists them)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, "SUBCOMMANDS", tuple(dict.fromkeys((*cli.SUBCOMMANDS, "report", "reproduce"))))
        yield cli.main


@pytest.fixture(scope="module")
def store(
    tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path
) -> tuple[str, dict[tuple[str, int], str]]:
    """Two methods x two seeds of LeNet-300-100, two epochs each, in a fresh sqlite store."""
    root = tmp_path_factory.mktemp("report_store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    ids = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPARSEBENCH_CHECKPOINTS", str(root / "checkpoints"))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        torch.manual_seed(0)
        for method, extra in (("dense", {}), ("sparse_vd", SPARSE_VD)):
            for seed in (0, 1):
                overrides = {"train.epochs": 2, "train.val_size": 200, "train.seed": seed, **extra}
                result = train(
                    RunRequest(
                        "lenet300_100",
                        method,
                        overrides,
                        env=Env.resolve(tracking_uri=uri, data_dir=str(mnist_dir), device="cpu"),
                        progress=False,
                        tags={"campaign": "tiny"},
                    )
                )
                ids[(method, seed)] = result.run_id
    return uri, ids


@pytest.fixture(scope="module")
def report(main, store, tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Path:
    uri, ids = store
    out = tmp_path_factory.mktemp("reports") / "tiny"
    timed = ["bench", ids[("sparse_vd", 0)], "--tracking-uri", uri, "--data-dir", str(mnist_dir)]
    assert (
        main([*timed, "--batch-sizes", "1", "8", "--repeats", "1", "--formats", "thinned", "torch_csr"]) == 0
    )
    code = main(
        [
            "report",
            "--tracking-uri",
            uri,
            "--task",
            "lenet300_100",
            "--name",
            "tiny",
            "--out",
            str(out),
            "--levels",
            *LEVELS,
        ]
    )
    assert code == 0
    return out


def _mlflow_metrics(uri: str, run_id: str) -> dict[str, float]:
    return make_client(uri).get_run(run_id).data.metrics


def test_report_holds_every_table_and_figure(report: Path) -> None:
    text = (report / "report.md").read_text()
    for title in (
        "Paper format",
        "Compression by counting rule",
        "Matched compression",
        "Training cost",
        "Sparse inference",
        "Runs",
    ):
        assert f"### {title}" in text or f"## {title}" in text
    figures = {p.name for p in (report / "figures").glob("*.png")}
    assert figures == {
        "lenet300_100_error_vs_compression.png",
        "lenet300_100_layer_sparsity.png",
        "lenet300_100_training_curves.png",
        "lenet300_100_first_layer_sparse_vd.png",  # dense removes nothing, so it gets no mask picture
    }
    for name in figures:
        image = matplotlib.image.imread(report / "figures" / name)
        assert image.shape[0] > 300 and image.shape[1] > 500 and image[..., :3].std() > 0.05
        assert f"(figures/{name})" in text  # linked from the Markdown
    for name in ("paper", "compression", "matched", "paired_tests", "cost", "inference"):
        assert (report / "tables" / f"{name}.csv").stat().st_size > 0
        assert (report / "tables" / f"lenet300_100_{name}.tex").read_text().startswith("\\begin{table}")
    manifest = json.loads((report / "manifest.json").read_text())
    listed = {p.relative_to(report).as_posix() for p in report.rglob("*") if p.is_file()}
    assert set(manifest["files"]) == listed


def test_paper_table_numbers_come_from_the_runs(report: Path, store) -> None:
    uri, ids = store
    paper = pd.read_csv(report / "tables" / "paper.csv")
    ours = paper[paper.source == "this report"].set_index("method")
    for method in ("dense", "sparse_vd"):
        metrics = [_mlflow_metrics(uri, ids[(method, seed)]) for seed in (0, 1)]
        tests = [m["test_metric"] for m in metrics]
        assert ours.loc[method, "seeds"] == 2
        assert ours.loc[method, "test_mean"] == pytest.approx(np.mean(tests))
        assert ours.loc[method, "test_std"] == pytest.approx(np.std(tests, ddof=1))
        assert ours.loc[method, "compression_mean"] == pytest.approx(
            np.mean([m["compression"] for m in metrics])
        )
    assert ours.loc["dense", "compression_mean"] == 1.0
    assert ours.loc["dense", "per_layer_sparsity"] == "0.0-0.0-0.0"
    quoted = paper[paper.source.str.startswith("paper (quoted)")].set_index("method")
    for ref in LeNet300100.references:
        assert quoted.loc[ref.method, "test_mean"] == ref.error
        assert quoted.loc[ref.method, "compression_mean"] == ref.compression
    # A quoted row sits right after our row of the same method.
    order = list(paper.method + "/" + paper.source.str[:5])
    assert order.index("sparse_vd/paper") == order.index("sparse_vd/this ") + 1
    runs = pd.read_csv(report / "runs.csv")
    assert set(runs.run_id) == set(ids.values())


def test_matched_table_interpolates_within_each_method_s_points(report: Path, store) -> None:
    uri, ids = store
    matched = pd.read_csv(report / "tables" / "matched.csv")
    svd = matched[matched.method == "sparse_vd"]
    assert set(svd.level) == {float(v) for v in LEVELS}  # the curves of both seeds reach 10x
    curves = pd.concat(
        pd.read_csv(
            make_client(uri).download_artifacts(
                ids[("sparse_vd", s)], "threshold_curve.csv", str(report.parent)
            )
        )
        for s in (0, 1)
    )
    low, high = curves.test_metric.min(), curves.test_metric.max()
    assert ((svd.test_metric_mean >= low - 1e-9) & (svd.test_metric_mean <= high + 1e-9)).all()
    assert (svd.n == 2).all()
    assert matched[matched.method == "dense"].empty  # 1x never reaches 2x


def test_html_is_self_contained(report: Path) -> None:
    page = (report / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == len(list((report / "figures").glob("*.png")))
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page)
    for title in ("Paper format", "Matched compression", "Training cost"):
        assert f"<h3>{title}</h3>" in page
    assert '<tr class="quoted">' in page


def test_report_is_logged_to_mlflow(report: Path, store) -> None:
    uri, _ = store
    client = make_client(uri)
    experiment = client.get_experiment_by_name(REPORT_EXPERIMENT)
    run = client.search_runs([experiment.experiment_id])[0]
    assert run.data.tags["sparsebench.report"] == "tiny"
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.md", "report.html", "manifest.json", "figures", "tables"} <= names
    assert json.loads((report / "manifest.json").read_text())["mlflow_report_run"] == run.info.run_id


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium (.ci/chromium.sh)")
def test_html_renders_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    shot = tmp_path / "shot.png"
    done = subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1200,3000",
            (report / "report.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert not re.search(r"CONSOLE|net::ERR_|Uncaught", done.stderr), done.stderr[-2000:]
    image = matplotlib.image.imread(shot)[..., :3]
    assert image.shape[:2] == (3000, 1200)
    assert image.std() > 0.05  # not a blank page
    # Coloured pixels (saturated, unlike text and table rules) come from the embedded figures.
    saturation = image.max(axis=2) - image.min(axis=2)
    assert (saturation > 0.3).sum() > 5000


def test_zero_matching_runs_exit_2_and_write_nothing(main, store, tmp_path: Path, capsys) -> None:
    uri, _ = store
    before = _report_runs(uri)
    cases = (
        ["--task", "lenet5"],
        ["--method", "group_nj"],
        ["--tag", "campaign=other"],
        ["--experiment", "nope"],
        ["--param", "train.epochs=200"],
    )
    for flags in cases:
        out = tmp_path / "empty"
        assert main(["report", "--tracking-uri", uri, "--out", str(out), *flags]) == 2
        assert not out.exists()
        assert "no finished training runs match" in capsys.readouterr().err
    assert _report_runs(uri) == before  # no report run logged either


def _report_runs(uri: str) -> int:
    client = make_client(uri)
    experiment = client.get_experiment_by_name(REPORT_EXPERIMENT)
    return len(client.search_runs([experiment.experiment_id])) if experiment else 0


def test_selection_by_method_tag_and_run(store) -> None:
    uri, ids = store
    assert set(load_runs(Selection(methods=("Sparse-VD",)), uri).runs.seed) == {0, 1}
    assert len(load_runs(Selection(tags={"campaign": "tiny"}), uri).runs) == 4
    by_seed = load_runs(Selection(params={"train.seed": "1"}), uri).runs
    assert set(by_seed.run_id) == {ids[("dense", 1)], ids[("sparse_vd", 1)]}
    assert set(load_runs(Selection(params={"method.kl_weight": "0.001"}), uri).runs.method) == {"sparse_vd"}
    picked = load_runs(Selection(run_ids=(ids[("dense", 1)],)), uri).runs
    assert list(picked.run_id) == [ids[("dense", 1)]]
    with pytest.raises(NoMatchingRunsError):
        load_runs(Selection(experiments=("no-such-experiment",)), uri)


def test_sweep_selection_takes_the_trials_of_one_parent(store, mnist_dir: Path) -> None:
    from sparsebench.tracking import Tracker

    uri, _ = store
    # Tagged like the parent run `sparsebench sweep` opens (sparsebench.sweep.study.ensure_parent_run).
    tags = {"sweep.study": "svd-sweep", "sweep.role": "parent"}
    parent = Tracker.open(uri, "sweeps", tags=tags, run_name="sweep-svd-sweep")
    trial = train(
        RunRequest(
            "lenet300_100",
            "dense",
            {"train.epochs": 1, "train.val_size": 200},
            env=Env.resolve(tracking_uri=uri, data_dir=str(mnist_dir), device="cpu", experiment="sweeps"),
            progress=False,
            parent_run_id=parent.run_id,
        )
    )
    try:
        for name in ("svd-sweep", "sweep-svd-sweep", parent.run_id):  # study, run name, run id
            assert list(load_runs(Selection(sweep=name), uri).runs.run_id) == [trial.run_id]
    finally:  # the other tests select from this store too
        make_client(uri).delete_run(trial.run_id)
        make_client(uri).delete_run(parent.run_id)


def test_reproduce_replays_a_run_to_the_same_numbers(
    main, report: Path, store, mnist_dir: Path, capsys
) -> None:
    uri, ids = store
    manifest = json.loads((report / "manifest.json").read_text())
    assert main(["reproduce", str(report), "--dry-run"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert sorted(printed) == sorted(e["command"] for e in manifest["runs"])
    svd = next(e for e in manifest["runs"] if e["run_id"] == ids[("sparse_vd", 1)])
    assert "--set train.seed=1" in svd["command"] and "--set method.kl_weight=0.001" in svd["command"]
    assert "train.lr=" not in svd["command"]  # only what differs from the defaults

    original = ids[("dense", 1)]
    code = main(
        [
            "reproduce",
            str(report),
            "--only",
            original,
            "--device",
            "cpu",
            "--data-dir",
            str(mnist_dir),
            "--tracking-uri",
            uri,
            "--no-progress",
        ]
    )
    assert code == 0
    client = make_client(uri)
    new = [
        r
        for r in client.search_runs([client.get_run(original).info.experiment_id])
        if r.data.tags.get("reproduces") == original
    ]
    assert len(new) == 1 and new[0].data.tags[REPRODUCTION_TAG] == "tiny"
    old_metrics = _mlflow_metrics(uri, original)
    assert new[0].data.metrics["test_metric"] == old_metrics["test_metric"]
    assert new[0].data.metrics["compression"] == old_metrics["compression"]
    # A later report of the same selection now also sees the reproduction; clean up for the other tests.
    client.delete_run(new[0].info.run_id)


def test_rerunning_a_report_replaces_its_files(main, store, tmp_path: Path) -> None:
    uri, _ = store
    out = tmp_path / "again"
    args = [
        "report",
        "--tracking-uri",
        uri,
        "--method",
        "dense",
        "--out",
        str(out),
        "--no-mlflow",
        "--name",
        "r",
    ]
    assert main(args) == 0
    stale = out / "figures" / "lenet300_100_first_layer_sparse_vd.png"
    shutil.copy(out / "figures" / "lenet300_100_error_vs_compression.png", stale)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"].append(stale.relative_to(out).as_posix())
    (out / "manifest.json").write_text(json.dumps(manifest))
    mine = out / "notes.txt"
    mine.write_text("kept")
    assert main(args) == 0
    assert not stale.exists() and mine.read_text() == "kept"


def test_inference_table_picks_the_fastest_correct_format_of_the_logged_timings(report: Path, store) -> None:
    uri, ids = store
    run_id = ids[("sparse_vd", 0)]
    local = make_client(uri).download_artifacts(run_id, "inference/cpu.csv", str(report.parent / "dl"))
    logged = pd.read_csv(local)
    table = pd.read_csv(report / "tables" / "inference.csv")
    assert set(table.run_id) == {run_id} and sorted(table.batch_size) == [1, 8]
    for row in table.itertuples():
        at_batch = logged[(logged.batch_size == row.batch_size) & (logged.status == "ok")]
        assert row.fastest_ms == pytest.approx(at_batch.ms.min())
        assert row.fastest_format == at_batch.loc[at_batch.ms.idxmin(), "format"]
        assert row.dense_ms == pytest.approx(at_batch[at_batch.format == "dense"].ms.iloc[0])
        assert row.smallest_bytes == at_batch.bytes.min()
