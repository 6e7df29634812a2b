"""What a report records about its runs so they can be re-run, and the re-running itself.

A report's ``manifest.json`` lists each run with its typed config and a ``sparsebench run``
command that differs from the plugins' defaults only where the run did; ``reproduce`` replays
those configs through the same runner, parents (``--init-from``) before children.
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from sparsebench.errors import ConfigError, SparsebenchError

MANIFEST = "manifest.json"
IDENTITY_KEYS = ("task.name", "method.name")
REPRODUCTION_TAG = "reproduction_of_report"


def default_config(task: str, method: str) -> dict[str, Any] | None:
    """The flat config a plain ``sparsebench run`` would use, or None if a plugin is missing."""
    from sparsebench.run.runner import plan_run

    try:
        return plan_run(task, method, {}).flat_config()
    except SparsebenchError:
        return None


def overrides_of(config: dict[str, Any], defaults: dict[str, Any] | None) -> dict[str, Any]:
    """The config keys a run changed from the defaults (all of them when defaults are unknown)."""
    keep = {}
    for key, value in config.items():
        if key in IDENTITY_KEYS:
            continue
        if defaults is None or key == "train.seed" or _normal(defaults.get(key)) != _normal(value):
            keep[key] = value
    return keep


def _normal(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def set_value(value: Any) -> str:
    """A value as ``--set`` parses it back (YAML): JSON for lists, booleans and null."""
    if isinstance(value, (bool, list, tuple, dict)) or value is None:
        return json.dumps(_normal(value))
    return str(value)


def run_command(task: str, method: str, overrides: dict[str, Any], init_from: str = "") -> str:
    parts = ["sparsebench", "run", "--task", task, "--method", method]
    for key, value in overrides.items():
        parts += ["--set", f"{key}={set_value(value)}"]
    if init_from:
        parts += ["--init-from", init_from]
    return " ".join(shlex.quote(p) for p in parts)


def manifest_runs(runs: pd.DataFrame, configs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One manifest entry per run: identity, typed config, changed keys and the command."""
    defaults: dict[tuple[str, str], dict[str, Any] | None] = {}
    entries = []
    for row in runs.itertuples():
        key = (row.task, row.method)
        if key not in defaults:
            defaults[key] = default_config(row.task, row.method)
        config = configs.get(row.run_id) or {}
        overrides = overrides_of(config, defaults[key])
        entries.append(
            {
                "run_id": row.run_id,
                "task": row.task,
                "method": row.method,
                "setting": row.setting,
                "seed": None if pd.isna(row.seed) else int(row.seed),
                "init_from": row.init_from or "",
                "test": _float(row.test),
                "compression": _float(row.compression),
                "overrides": overrides,
                "command": run_command(row.task, row.method, overrides, row.init_from or ""),
            }
        )
    return entries


def _float(value: Any) -> float | None:
    return None if pd.isna(value) else float(value)


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST if folder.is_dir() else folder
    if not path.exists():
        raise ConfigError(
            f"{folder} holds no {MANIFEST}; give the folder of a report made by `sparsebench report`"
        )
    return json.loads(path.read_text())


def replay_order(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs whose ``--init-from`` parent is also in the report come after that parent."""
    ids = {e["run_id"] for e in entries}
    first = [e for e in entries if e["init_from"] not in ids]
    later = [e for e in entries if e["init_from"] in ids]
    ordered, done = list(first), {e["run_id"] for e in first}
    while later:
        ready = [e for e in later if e["init_from"] in done]
        if not ready:
            raise ConfigError("the report's runs initialise from each other in a cycle; re-run them by hand")
        ordered += ready
        done |= {e["run_id"] for e in ready}
        later = [e for e in later if e not in ready]
    return ordered


@dataclass
class Replayed:
    old: dict[str, Any]
    new_run_id: str
    test: float
    compression: float


@dataclass
class ReproduceRequest:
    folder: Path
    only: tuple[str, ...] = ()
    device: str = "auto"
    data_dir: str | None = None
    tracking_uri: str | None = None
    experiment: str = "sparsebench"
    progress: bool = True
    extra_tags: dict[str, str] = field(default_factory=dict)


def reproduce(request: ReproduceRequest) -> list[Replayed]:
    """Re-run a report's runs with their recorded configs; new runs are tagged with the report's name."""
    from sparsebench.run.runner import RunRequest, train

    manifest = read_manifest(request.folder)
    entries = replay_order(manifest["runs"])
    if request.only:
        unknown = set(request.only) - {e["run_id"] for e in entries}
        if unknown:
            raise ConfigError(
                f"--only {', '.join(sorted(unknown))}: not a run of this report (see its runs.csv)"
            )
        entries = [e for e in entries if e["run_id"] in request.only]
    new_ids: dict[str, str] = {}
    replayed = []
    for i, entry in enumerate(entries, 1):
        parent = new_ids.get(entry["init_from"], entry["init_from"])
        print(f"[{i}/{len(entries)}] {entry['command']}", file=sys.stderr)
        result = train(
            RunRequest(
                task=entry["task"],
                method=entry["method"],
                overrides=entry["overrides"],
                device=request.device,
                data_dir=request.data_dir,
                tracking_uri=request.tracking_uri,
                experiment=request.experiment,
                init_from=parent or None,
                progress=request.progress,
                tags={
                    REPRODUCTION_TAG: manifest["name"],
                    "reproduces": entry["run_id"],
                    **request.extra_tags,
                },
            )
        )
        new_ids[entry["run_id"]] = result.run_id
        replayed.append(
            Replayed(
                entry, result.run_id, result.test_metric, result.summary.get("compression", float("nan"))
            )
        )
    return replayed
