"""A plain ``postgresql://`` tracking URI works with what the ``[postgres]`` extra installs (#18 item 9).

SQLAlchemy 2.1 resolves a plain ``postgresql://`` URL to psycopg 3 (2.0 chose psycopg2), so an extra
that installs only psycopg2 leaves the documented URL failing. The server test needs a PostgreSQL
server: ``.ci/postgres.sh`` prints the URL to export as SPARSEBENCH_TEST_POSTGRES.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from sparsebench.tracking import Tracker, open_store
from tests.conftest import CliResult

URL = os.environ.get("SPARSEBENCH_TEST_POSTGRES")


SCHEMA = "sparsebench_tracking_test"
"""MLflow's tables go in a schema of their own: optuna (the sweep tests) keeps its tables, and its own
``alembic_version``, in ``public`` of the same database."""


def plain(url: str) -> str:
    """``postgresql+psycopg2://...`` -> ``postgresql://...``: the driver left to SQLAlchemy."""
    return re.sub(r"^postgresql\+[a-z0-9_]+://", "postgresql://", url)


def in_own_schema(url: str) -> str:
    """``url`` with its tables in SCHEMA (created here if needed) instead of ``public``."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
    engine.dispose()
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{SCHEMA}"


def test_the_driver_sqlalchemy_picks_for_a_plain_postgresql_url_is_installed() -> None:
    if not any(importlib.util.find_spec(m) for m in ("psycopg", "psycopg2")):
        pytest.skip("no PostgreSQL driver installed (the [postgres] extra is not)")
    from sqlalchemy.engine import make_url

    dialect = make_url("postgresql://user@host/db").get_dialect()
    module = {"psycopg": "psycopg", "psycopg2": "psycopg2"}.get(dialect.driver, dialect.driver)
    importlib.import_module(module)  # fails when the extra installs another driver than this one


@pytest.mark.skipif(not URL, reason="set SPARSEBENCH_TEST_POSTGRES (see .ci/postgres.sh)")
def test_a_run_logs_to_a_plain_postgresql_url(
    mnist_dir: Path, run_cli: Callable[..., CliResult], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert URL is not None
    uri = in_own_schema(plain(URL))
    monkeypatch.chdir(tmp_path)  # artifacts of a database store go under ./mlruns of the process
    experiment = f"plain-url-{uuid.uuid4().hex[:10]}"
    result = run_cli(
        "run", "--method", "dense", "--task", "lenet300_100", "--data-dir", mnist_dir,
        "--set", "train.epochs=1", "--set", "train.val_size=200",
        "--tracking-uri", uri, "--experiment", experiment, "--no-progress", "--json",
    )  # fmt: skip
    assert result.code == 0, result.err
    password = re.search(r"://[^:/@]+:([^@]+)@", uri)
    if password:
        assert f":{password.group(1)}@" not in result.err and ":***@" in result.err  # the ui hint masks it
    run_id = json.loads(result.out)["run_id"]
    store = open_store(uri)
    run = store.client.get_run(run_id)
    assert run.info.status == "FINISHED" and "test_metric" in run.data.metrics
    tracker = Tracker.open(store, experiment)  # and the same store takes another writer
    tracker.log_metrics({"x": 1.0})
    tracker.finish()
