"""No password in what a sweep prints, logs or puts on a worker's command line (issue 18, item 2)."""

from __future__ import annotations

import sys
from pathlib import Path

import optuna
import pytest

from sparsebench.env import Env
from sparsebench.sweep import status, workers
from sparsebench.sweep.spec import load_spec, public_dict
from sparsebench.tracking import mask_uri
from tests.sweeps import mlflow_store, sweep_cli, write_spec  # noqa: F401 - a fixture

SECRET = "s3cr@t/pw"
STORAGE = "postgresql+psycopg2://alice:s3cr%40t@db.example:5432/sweeps"
TRACKING = f"postgresql://alice:{SECRET}@db.example/mlflow?sslmode=require"


@pytest.mark.parametrize(
    ("uri", "masked"),
    [
        ("postgresql+psycopg2://user:pw@host/db", "postgresql+psycopg2://user:***@host/db"),
        (TRACKING, "postgresql://alice:***@db.example/mlflow?sslmode=require"),
        ("https://bob:tok@mlflow.example:5000", "https://bob:***@mlflow.example:5000"),
        (
            "postgresql://db/x?user=a&password=pw&sslmode=require",
            "postgresql://db/x?user=a&password=***&sslmode=require",
        ),
        ("https://bob@mlflow.example", "https://bob@mlflow.example"),  # a user name is no secret
        ("sqlite:////home/a@b/mlruns/mlflow.db", "sqlite:////home/a@b/mlruns/mlflow.db"),
        ("http://localhost:5000", "http://localhost:5000"),
        ("/tmp/journal.log", "/tmp/journal.log"),
    ],
)
def test_mask_uri_hides_passwords_only(uri: str, masked: str) -> None:
    assert mask_uri(uri) == masked


def test_status_prints_no_password(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mlflow_store: str,  # noqa: F811
) -> None:
    spec_path = write_spec(tmp_path, storage=STORAGE, n_trials=1)
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())  # stands in for the server
    study.add_trial(
        optuna.trial.create_trial(
            value=0.1,
            params={"train.lr": 1e-3},
            distributions={"train.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)},
            user_attrs={"val_metric": 0.1, "test_metric": 0.2, "compression": 1.0},
        )
    )
    monkeypatch.setattr(status, "load_existing_study", lambda s: study)
    monkeypatch.setattr(status, "find_parent_run", lambda s, env: None)
    for extra in ([], ["--json"]):
        result = sweep_cli("status", spec_path, "--tracking-uri", TRACKING, *extra)
        assert result.code == 0, result.err
        assert "s3cr" not in result.out + result.err and "alice:***@db.example" in result.out
    text = sweep_cli("status", spec_path, "--tracking-uri", TRACKING).out
    assert (
        "optuna dashboard: optuna-dashboard 'postgresql+psycopg2://alice:***@db.example:5432/sweeps'" in text
    )
    assert "MLflow UI:        mlflow ui --backend-store-uri 'postgresql://alice:***@db.example/mlflow" in text


def test_the_spec_kept_in_mlflow_and_the_study_has_no_password(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, storage=STORAGE))
    assert spec.storage == STORAGE  # the workers need the real URL ...
    assert (
        public_dict(spec)["storage"] == "postgresql+psycopg2://alice:***@db.example:5432/sweeps"
    )  # ... logs not


class FakeProcess:
    """A worker process that records how it was started and exits at once."""

    started: list[tuple[list[str], dict[str, str]]] = []

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        FakeProcess.started.append((command, env))

    def wait(self) -> int:
        return 0


def test_workers_get_the_tracking_uri_from_the_environment_not_argv(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mlflow_store: str,  # noqa: F811
) -> None:
    spec = load_spec(write_spec(tmp_path, storage=str(tmp_path / "journal.log")))
    monkeypatch.setattr(workers.subprocess, "Popen", FakeProcess)
    FakeProcess.started = []
    env = Env.resolve(tracking_uri=mlflow_store, experiment="argv", device="cpu")
    workers.run_sweep(spec, env, workers=2)
    assert len(FakeProcess.started) == 2
    for command, env in FakeProcess.started:
        assert not any(mlflow_store in word or "sqlite" in word for word in command)  # `ps` shows argv
        assert env[workers.TRACKING_URI_VARIABLE] == mlflow_store
        assert command[:3] == [sys.executable, "-m", "sparsebench.cli.sweep_cmd"]


def test_a_worker_reads_the_tracking_uri_from_its_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(workers.TRACKING_URI_VARIABLE, "sqlite:////elsewhere/mlflow.db")
    assert Env.resolve().tracking_uri == "sqlite:////elsewhere/mlflow.db"
