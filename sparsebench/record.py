"""The run record: one versioned JSON document per finished run, enough to count, report and replay it.

A record holds the *full* resolved configuration (every key, never differences from the defaults of
the day, so a replay trains the recipe that produced the numbers), the versions and commit of the
code, checksums of the data it read, every final metric, the per-layer table, the threshold curve
and the per-epoch validation curve. It holds no machine paths and no credentials, so it can be
committed; it is written once, atomically, and never edited. ``--refinish``, ``bench``,
``reproduce`` and ``report`` read runs through it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from sparsebench.errors import ConfigError

RECORD_VERSION = 1
RECORD_NAME = "run_record.json"
"""File name of the record among a run's artifacts."""


class EpochPoint(BaseModel):
    """The validation metric and sparsity at the end of one epoch."""

    model_config = ConfigDict(extra="forbid")
    epoch: int
    val_metric: float
    sparsity: float | None = None
    seconds: float | None = None


class RunRecord(BaseModel):
    """Everything a table, a figure or a replay needs from one finished run."""

    model_config = ConfigDict(extra="forbid")
    version: int = RECORD_VERSION
    run_id: str
    task: str
    method: str
    seed: int
    config: dict[str, Any]
    """Every ``section.field`` of the resolved configuration, with ``task.name`` and ``method.name``."""
    versions: dict[str, str]
    """sparsebench, torch, python."""
    git_commit: str | None = None
    """Commit of the checkout the code ran from (``+dirty`` with local changes); None for a wheel."""
    data: dict[str, str] = {}
    """md5 of the uncompressed contents of each data file read, keyed by its path under the data root."""
    metrics: dict[str, float | None]
    """Every final metric (test error, compression, FLOPs, structured and bit-precision compression)."""
    layers: list[dict[str, Any]]
    """The per-layer table of the exported model."""
    threshold_curve: list[dict[str, Any]] = []
    curve_axis: str = ""
    """What the threshold curve's ``level`` column means (e.g. log alpha threshold)."""
    epochs: list[EpochPoint] = []
    training_seconds: float | None = None
    tags: dict[str, str] = {}
    """The user's tags (study, ...) and init_from: what the run was for, not how it went."""

    @field_validator("version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value > RECORD_VERSION:
            raise ValueError(
                f"record version {value} is newer than this sparsebench reads ({RECORD_VERSION})"
            )
        return value

    @field_validator("metrics", mode="before")
    @classmethod
    def _finite_or_none(cls, value: dict[str, Any]) -> dict[str, Any]:
        """JSON has no NaN: a metric that is not a finite number is stored as null."""
        return {
            k: (float(v) if v is not None and math.isfinite(float(v)) else None) for k, v in value.items()
        }

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=1, sort_keys=True, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "record") -> RunRecord:
        """Parse and validate; a malformed record is a one-line ConfigError naming its source."""
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(top level)"
            raise ConfigError(f"{source} is not a valid run record: {where}: {first['msg']}") from None


def write(record: RunRecord, path: Path) -> None:
    """Write atomically and never over an existing record (records are not edited)."""
    if path.exists():
        raise ConfigError(f"{path} exists; run records are written once and never edited")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(record.to_json())
    tmp.replace(path)


def probe_target(path: Path) -> None:
    """Refuse a record path that exists or cannot be written, before the run spends any compute."""
    if path.exists():
        raise ConfigError(f"{path} exists; run records are written once and never edited")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = path.with_name(f".{path.name}.probe")
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"cannot write the run record {path} ({exc.strerror or exc})") from None


def read(path: Path) -> RunRecord:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read run record {path}: {exc.strerror or exc}") from None
    return RunRecord.from_json(text, str(path))


def versions() -> dict[str, str]:
    import torch

    import sparsebench

    return {
        "sparsebench": sparsebench.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def git_commit(start: Path | None = None) -> str | None:
    """The commit of the git checkout holding the package (``+dirty`` with changes), or None."""
    folder = start or Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def data_checksums(data_dir: Path, patterns: tuple[str, ...]) -> dict[str, str]:
    """md5 of the uncompressed contents of each data file a task reads (``name[.gz]`` patterns).

    Uncompressed, so the same data recompressed differently gets the same checksum, comparable with
    the published md5s of the original files.
    """
    sums = {}
    for pattern in patterns:
        stem = pattern.removesuffix("[.gz]")
        for candidate in (data_dir / stem, data_dir / f"{stem}.gz"):
            if candidate.is_file():
                opener = gzip.open if candidate.suffix == ".gz" else open
                digest = hashlib.md5()
                with opener(candidate, "rb") as handle:
                    for block in iter(lambda h=handle: h.read(1 << 20), b""):
                        digest.update(block)
                sums[stem] = digest.hexdigest()
                break
    return sums
