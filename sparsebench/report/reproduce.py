"""Re-running a report: the runs its ``manifest.json`` lists, with their recorded configs.

``reproduce`` replays those configs through the same runner, parents (``--init-from``) before
children; what the manifest holds and how it is checked is in ``manifest.py``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparsebench.env import Env
from sparsebench.errors import ConfigError
from sparsebench.report.manifest import MANIFEST, manifest_runs, read_manifest

__all__ = ["MANIFEST", "REPRODUCTION_TAG", "ReproduceRequest", "manifest_runs", "read_manifest", "reproduce"]

REPRODUCTION_TAG = "reproduction_of_report"


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


MIN_PREFIX = 6
"""Shortest run-id prefix ``--only`` accepts (the report's runs table shows the first 8 characters)."""


def select_only(entries: list[dict[str, Any]], only: tuple[str, ...] | list[str]) -> list[dict[str, Any]]:
    """The entries ``--only`` names, by whole run id or a unique prefix; all of them when it names none."""
    if not only:
        return entries
    chosen = set()
    for text in only:
        hits = [
            e["run_id"]
            for e in entries
            if e["run_id"] == text or (len(text) >= MIN_PREFIX and e["run_id"].startswith(text))
        ]
        if len(hits) != 1:
            why = (
                "not a run of this report" if not hits else f"matches {len(hits)} runs, give more characters"
            )
            raise ConfigError(f"--only {text}: {why} (see the report's runs.csv)")
        chosen.add(hits[0])
    return [e for e in entries if e["run_id"] in chosen]


@dataclass
class Replayed:
    old: dict[str, Any]
    new_run_id: str
    test: float
    compression: float


@dataclass
class ReproduceRequest:
    folder: Path
    env: Env
    only: tuple[str, ...] = ()
    progress: bool = True
    extra_tags: dict[str, str] = field(default_factory=dict)


def reproduce(request: ReproduceRequest) -> list[Replayed]:
    """Re-run a report's runs with their recorded configs; new runs are tagged with the report's name."""
    from sparsebench.run.plan import RunRequest
    from sparsebench.run.train import train

    manifest = read_manifest(request.folder)
    entries = select_only(replay_order(manifest["runs"]), request.only)
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
                env=request.env,
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
