"""Helpers shared by the campaign tests: a small campaign file and in-process / process commands."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

RESULTS = "reports/tiny"
FAST = {"train.epochs": 1, "train.val_size": 200}


def write_campaign(folder: Path, name: str = "tiny", **fields: Any) -> Path:
    """Two rows x two seeds on LeNet-300-100, one epoch each; the second row starts from the first."""
    data: dict[str, Any] = {
        "name": name,
        "results": RESULTS,
        "seeds": [0, 1],
        "rows": [
            {
                "name": "dense",
                "task": "lenet300_100",
                "method": "dense",
                "config": dict(FAST),
                "paper": {"error": 1.64, "compression": 1.0, "citation": "Molchanov et al. 2017"},
            },
            {
                "name": "svd",
                "task": "lenet300_100",
                "method": "sparse_vd",
                "config": dict(FAST),
                "init_from_row": "dense",
                "paper": {"error": 1.92, "compression": 68.0, "citation": "Molchanov et al. 2017"},
            },
        ],
    }
    data.update(fields)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def worker_process(spec: Path, *argv: object, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``sparsebench campaign run SPEC ARGS`` as its own process (another worker, another machine)."""
    command = [sys.executable, "-m", "sparsebench.cli.campaign_cmd", "run", str(spec), *map(str, argv)]
    return subprocess.Popen(
        command, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
