"""Many machines: `campaign run` processes joined only by a PostgreSQL storage share the cells.

Needs a server: ``sudo .ci/postgres.sh`` prints the URL to export as SPARSEBENCH_TEST_POSTGRES.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from optuna.trial import TrialState

from sparsebench.campaign import queue
from sparsebench.campaign.spec import load_campaign
from tests.campaign import FAST, RESULTS, worker_process, write_campaign

URL = os.environ.get("SPARSEBENCH_TEST_POSTGRES")
pytestmark = pytest.mark.skipif(not URL, reason="set SPARSEBENCH_TEST_POSTGRES (see .ci/postgres.sh)")


def test_two_commands_sharing_one_storage_train_every_cell_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mnist_dir: Path, quick_tracking_uri: str
) -> None:
    monkeypatch.chdir(tmp_path)
    name = f"pg-{uuid.uuid4().hex[:10]}"
    rows = [{"name": "a", "task": "lenet300_100", "method": "dense", "config": dict(FAST)}]
    heartbeat = {"interval": 1, "grace_period": 3}
    spec = write_campaign(
        tmp_path, name=name, seeds=[0, 1, 2, 3], rows=rows, storage=URL, heartbeat=heartbeat
    )
    args = ["--device", "cpu", "--data-dir", mnist_dir, "--no-progress"]
    env = {"MLFLOW_TRACKING_URI": quick_tracking_uri, "SPARSEBENCH_CHECKPOINTS": str(tmp_path / "ck")}
    procs = [worker_process(spec, *args, env=env) for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err.decode()[-3000:]
    assert sorted(p.stem for p in (tmp_path / RESULTS / "runs").glob("*.json")) == [
        f"a-seed{k}" for k in range(4)
    ]
    loaded = load_campaign(spec)
    trials = queue.load_queue(loaded, queue.storage_url(loaded)).trials
    trained = [t for t in trials if t.state == TrialState.COMPLETE and "run_id" in t.user_attrs]
    assert sorted(t.user_attrs["cell"] for t in trained) == [f"a-seed{k}" for k in range(4)]
