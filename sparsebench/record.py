"""The run record: one versioned JSON document per finished run, enough to count, report and replay it.

A record holds the *full* resolved configuration (every key, never differences from the defaults of
the day, so a replay trains the recipe that produced the numbers), the versions and commit of the
code, checksums of the data it read, every final metric, the per-layer table, the threshold curve
and the per-epoch validation curve. It holds no machine paths and no credentials, so it can be
committed; it is written once, atomically, and never edited. ``--refinish``, ``bench``,
``reproduce`` and ``report`` read runs through it.
"""

from __future__ import annotations

import functools
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
from sparsebench.files import folder_problem

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
    problem = folder_problem(path.parent)
    if problem is not None:
        raise ConfigError(f"cannot write the run record {path} ({problem})")


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


@functools.cache
def code_commit() -> str | None:
    """The commit of the code this process loaded: read once, at the first call, then kept.

    A campaign worker imports the code when it starts and trains cells for hours; reading the
    checkout again at each cell would stamp records with commits made after the code in memory was
    loaded. Workers call this when they start; a single run calls it when its training starts.
    """
    return git_commit()


CODE_PATHS = ("sparsebench", "methods", "tasks", "sweeps", "pyproject.toml")
"""What a run executes, relative to the checkout's root: changes elsewhere (reports, docs, the
README, the spec snapshot a campaign rewrites as it starts) leave a run's code as committed."""


def git_commit(start: Path | None = None) -> str | None:
    """The commit of the git checkout holding the package (``+dirty`` when its code has changes), or None."""
    folder = start or Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no", "--"]
            + [f":/{path}" for path in CODE_PATHS],
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


MODEL_SUFFIX = ".model.npz"
"""A record's exported model lives beside it: ``<row>-seed<k>.json`` and ``<row>-seed<k>.model.npz``."""
MODEL_FORMAT = "sparsebench-csr-1"


def model_arrays(state_dict: dict[str, Any]) -> dict[str, Any]:
    """An exported state dict as arrays: every floating tensor of 2+ dimensions as a CSR matrix of
    its rows (a convolution's filters flattened), everything else dense.

    CSR of the exported model keeps exactly its nonzero weights: a sparse LeNet is 20-200 KB, so it
    can be committed beside its record and counted, reported or timed again without retraining.
    """
    import numpy as np
    import scipy.sparse

    arrays: dict[str, Any] = {"__format__": np.array(MODEL_FORMAT)}
    for name, tensor in state_dict.items():
        values = tensor.detach().cpu()
        if values.dim() >= 2 and values.is_floating_point():
            matrix = scipy.sparse.csr_matrix(values.reshape(values.shape[0], -1).numpy())
            arrays[f"{name}::data"] = matrix.data
            arrays[f"{name}::indices"] = matrix.indices.astype(np.int32)
            arrays[f"{name}::indptr"] = matrix.indptr.astype(np.int64)
            arrays[f"{name}::shape"] = np.array(values.shape, dtype=np.int64)
        else:
            arrays[f"{name}::dense"] = values.numpy()
    return arrays


def write_model(state_dict: dict[str, Any], path: Path) -> int:
    """Write the model file atomically (replacing a leftover of a cell whose record was never written);
    returns its size in bytes."""
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez_compressed(tmp, **model_arrays(state_dict))
    size = tmp.stat().st_size
    tmp.replace(path)
    return size


def read_model(path: Path) -> dict[str, Any]:
    """The state dict of a model file, as float tensors; no pickled object is ever loaded."""
    import numpy as np
    import scipy.sparse
    import torch

    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {key: stored[key] for key in stored.files}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read model file {path}: {exc}") from None
    if str(arrays.pop("__format__", "")) != MODEL_FORMAT:
        raise ConfigError(f"{path} is not a sparsebench model file ({MODEL_FORMAT})")
    state: dict[str, Any] = {}
    for key in sorted(arrays):
        name, _, part = key.rpartition("::")
        if part == "dense":
            state[name] = torch.from_numpy(arrays[key].copy())
        elif part == "shape":
            shape = tuple(int(v) for v in arrays[key])
            csr = scipy.sparse.csr_matrix(
                (arrays[f"{name}::data"], arrays[f"{name}::indices"], arrays[f"{name}::indptr"]),
                shape=(shape[0], int(np.prod(shape[1:]))),
            )
            state[name] = torch.from_numpy(csr.toarray()).reshape(shape)
    return state
