"""A report's ``manifest.json``: what it was made from, its files, and how to re-run each of its runs.

Each run is listed with its typed config and a ``sparsebench run`` command that differs from the
plugins' defaults only where the run did. Manifests are committed and shared, so they hold no
absolute path of the machine that made them and no password: file stores and the output folder
are written relative to the directory the report was made from, other URIs with ``user:***``.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

import pandas as pd

from sparsebench.config import IDENTITY_KEYS
from sparsebench.errors import ConfigError, SparsebenchError
from sparsebench.tracking import mask_uri

MANIFEST = "manifest.json"
RUN_FIELDS = {"run_id": str, "task": str, "method": str, "init_from": str, "overrides": dict, "command": str}
"""What ``reproduce`` reads from each run entry, with its type."""
FILE_SCHEMES = ("sqlite:///", "file://")


def portable_path(path: str | Path, base: Path | None = None) -> str:
    """``path`` relative to ``base`` (the working directory): what a regenerate command can use anywhere."""
    text = os.fspath(path)
    if not os.path.isabs(text):
        return Path(text).as_posix()
    return Path(os.path.relpath(text, base or Path.cwd())).as_posix()


def portable_uri(uri: str, base: Path | None = None) -> str:
    """A tracking URI fit for a shared file: a file store's path made relative, any password masked.

    ``sqlite:////abs/store/mlflow.db`` becomes ``sqlite:///store/mlflow.db`` (three slashes: a path
    relative to where the command runs), ``file:///abs/mlruns`` and ``/abs/mlruns`` a relative path.
    """
    for scheme in FILE_SCHEMES:
        if uri.startswith(scheme):
            path = uri[len(scheme) :]
            if scheme == "file://" or os.path.isabs(path):
                return (scheme if scheme == "sqlite:///" else "") + portable_path(path, base)
            return uri
    if os.path.isabs(uri):
        return portable_path(uri, base)
    return mask_uri(uri)


def default_config(task: str, method: str) -> dict[str, Any] | None:
    """The flat config a plain ``sparsebench run`` would use, or None if a plugin is missing."""
    from sparsebench.run.plan import plan_run

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


def replay_overrides(task: str, method: str, config: dict[str, Any]) -> dict[str, Any]:
    """A record's whole configuration, with the values of options added since it was written."""
    from sparsebench.run.plan import recorded_overrides

    try:
        return recorded_overrides(task, method, config)
    except SparsebenchError:  # a plugin not installed here: the record's keys are all there is
        return overrides_of(config, None)


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


def manifest_runs(
    runs: pd.DataFrame, configs: dict[str, dict[str, Any]], full: bool = False
) -> list[dict[str, Any]]:
    """One manifest entry per run: identity, typed config, changed keys and the command.

    With ``full`` (a report from run records, which hold every key) the overrides are the whole
    configuration, so the command replays the run whatever the defaults of the day are.
    """
    defaults: dict[tuple[str, str], dict[str, Any] | None] = {}
    entries = []
    for row in runs.itertuples():
        key = (row.task, row.method)
        if key not in defaults:
            defaults[key] = None if full else default_config(row.task, row.method)
        config = configs.get(row.run_id) or {}
        if full:
            overrides = replay_overrides(row.task, row.method, config)
        else:
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
    """The manifest of a report folder (or the file itself), checked to hold what ``reproduce`` reads.

    A hand-edited, truncated or foreign file is refused with one line naming what is wrong, before
    anything is trained.
    """
    path = folder / MANIFEST if folder.is_dir() else folder
    if not path.is_file():
        raise ConfigError(
            f"{folder} holds no {MANIFEST}; give the folder of a report made by `sparsebench report`"
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} is not a readable JSON manifest ({exc}); make the report again") from None
    check_manifest(manifest, path)
    return manifest


def check_manifest(manifest: Any, path: Path) -> None:
    """Raise ``ConfigError`` naming the first field a manifest lacks or holds with the wrong type."""
    fix = "make the report again with `sparsebench report`"
    if not isinstance(manifest, dict):
        raise ConfigError(f"{path}: a manifest is a JSON object, not {type(manifest).__name__}; {fix}")
    if not isinstance(manifest.get("name"), str) or not isinstance(manifest.get("runs"), list):
        missing = "name" if not isinstance(manifest.get("name"), str) else "runs"
        raise ConfigError(
            f"{path} is incomplete: no '{missing}' ({'text' if missing == 'name' else 'list'}); {fix}"
        )
    for i, entry in enumerate(manifest["runs"], 1):
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: run entry {i} is not an object; {fix}")
        for field, kind in RUN_FIELDS.items():
            if not isinstance(entry.get(field), kind):
                raise ConfigError(
                    f"{path} is incomplete: run entry {i} has no '{field}' ({kind.__name__}); {fix}"
                )
