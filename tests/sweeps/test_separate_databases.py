"""One database must not hold both the MLflow store and the optuna storage (both own ``alembic_version``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sparsebench.errors import ConfigError
from sparsebench.sweep.storage import check_separate_databases
from tests.campaign import write_campaign

PG = "postgresql://bench:s3cret@db.example:5432/sparsebench"


@pytest.mark.parametrize(
    ("tracking", "storage"),
    [
        (PG, PG),
        (PG, "postgresql+psycopg://other:pw@db.example:5432/sparsebench"),  # driver and user differ
        ("sqlite:///runs/one.db", "sqlite:///runs/../runs/one.db"),
    ],
)
def test_the_same_database_is_refused_without_its_password(tracking: str, storage: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check_separate_databases(tracking, storage)
    message = str(caught.value)
    assert "one database" in message and "alembic_version" in message
    assert "s3cret" not in message and "pw@" not in message and "\n" not in message


@pytest.mark.parametrize(
    ("tracking", "storage"),
    [
        (PG, "postgresql://bench:s3cret@db.example:5432/optuna"),  # another database, same server
        (PG, "postgresql://bench:s3cret@db2.example:5432/sparsebench"),  # same name, another server
        ("sqlite:///runs/mlflow.db", "sqlite:///runs/optuna.db"),
        ("mlruns", "sqlite:///mlruns/optuna.db"),  # a file store keeps no alembic table
        (PG, "mlruns/optuna-journal.log"),  # the journal file is no database
    ],
)
def test_separate_databases_pass(tracking: str, storage: str) -> None:
    check_separate_databases(tracking, storage)


def test_a_campaign_on_one_database_stops_before_training(tmp_path: Path, run_cli, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'both.db'}"
    result = run_cli("campaign", "run", write_campaign(tmp_path), "--tracking-uri", url, "--storage", url)
    assert result.code == 2 and "one database" in result.err
    assert not (tmp_path / "both.db").exists() and not (tmp_path / "reports").exists()
