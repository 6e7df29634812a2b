"""What an MLflow user expects of a run (#18 item 14): a loadable ``mlflow.pytorch`` model, the source
commit, the dataset as run inputs, and the per-layer table beside the model sparsebench reads."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from sparsebench.registry import TASKS
from sparsebench.tracking import open_store
from tests.conftest import CliResult, copy_tracking_store

REPOSITORY = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def finished(
    mnist_dir: Path, run_cli: Callable[..., CliResult], empty_tracking_store: Path, tmp_path_factory
) -> tuple[str, str]:
    tmp = tmp_path_factory.mktemp("conventions")
    uri = copy_tracking_store(empty_tracking_store, tmp)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPARSEBENCH_CHECKPOINTS", str(tmp / "checkpoints"))
        result = run_cli(
            "run", "--method", "magnitude", "--task", "lenet300_100", "--data-dir", mnist_dir,
            "--set", "train.epochs=1", "--set", "train.val_size=200", "--set", "method.sparsity=0.5",
            "--set", "method.start=0", "--set", "method.end=0",
            "--tracking-uri", uri, "--no-progress", "--json",
        )  # fmt: skip
    assert result.code == 0, result.err
    return uri, json.loads(result.out)["run_id"]


def test_the_model_loads_with_mlflow_pytorch_and_matches_the_exported_weights(
    finished: tuple[str, str],
) -> None:
    import mlflow
    import mlflow.pytorch

    uri, run_id = finished
    mlflow.set_tracking_uri(uri)
    try:
        flavored = mlflow.pytorch.load_model(f"runs:/{run_id}/model")
    finally:
        mlflow.set_tracking_uri(None)
    state = open_store(uri).client.download_artifacts(run_id, "model/model.pt", None)
    payload = torch.load(state, map_location="cpu", weights_only=True)  # the file sparsebench reads
    model = TASKS.get("lenet300_100")().build_model().eval()
    model.load_state_dict(payload["state_dict"])
    inputs = torch.rand(5, 784)  # a batch size other than the traced example's: the batch is dynamic
    with torch.no_grad():
        assert torch.allclose(flavored(inputs), model(inputs), atol=1e-5)
    tags = open_store(uri).client.get_run(run_id).data.tags
    assert tags["model.flavor"] == "mlflow.pytorch (pt2)"


def test_the_run_is_tagged_with_the_source_commit(finished: tuple[str, str]) -> None:
    uri, run_id = finished
    head = subprocess.run(["git", "-C", str(REPOSITORY), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0 or not (REPOSITORY / ".git").exists():
        pytest.skip("not run from a git checkout")
    tags = open_store(uri).client.get_run(run_id).data.tags
    assert tags["mlflow.source.git.commit"] == head.stdout.strip()
    assert tags["mlflow.source.name"] == "sparsebench"


def test_the_data_is_logged_as_mlflow_dataset_inputs(finished: tuple[str, str]) -> None:
    uri, run_id = finished
    inputs = open_store(uri).client.get_run(run_id).inputs.dataset_inputs
    by_role = {
        {t.key: t.value for t in i.tags}["mlflow.data.context"]: (i.dataset, {t.key: t.value for t in i.tags})
        for i in inputs
    }
    assert set(by_role) == {"train", "validation", "test"}
    sizes = {role: int(tags["examples"]) for role, (_, tags) in by_role.items()}
    assert sizes == {"train": 1000, "validation": 200, "test": 300}  # the generated MNIST: 1,200 / 300
    datasets = [dataset for dataset, _ in by_role.values()]
    assert {d.name for d in datasets} == {"mnist"}
    assert all(d.digest for d in datasets) and len({d.digest for d in datasets}) == 3
    profile = json.loads(by_role["test"][0].profile)
    assert profile["features_shape"][0] == 300
    assert "/" not in json.loads(datasets[0].source).get("tags", {}).get("task", "")


def test_tables_and_the_readable_model_stay_artifacts(finished: tuple[str, str]) -> None:
    uri, run_id = finished
    client = open_store(uri).client
    top = {a.path for a in client.list_artifacts(run_id)}
    assert {"per_layer.csv", "run_record.json", "model"} <= top
    model = {a.path for a in client.list_artifacts(run_id, "model")}
    assert {"model/model.pt", "model/MLmodel"} <= model
