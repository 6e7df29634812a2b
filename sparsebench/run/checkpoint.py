"""Per-epoch checkpoints holding everything a resumed run needs to end bit-identical.

Checkpoints live beside the tracking store (``<store dir>/checkpoints/<run id>/``) so ``--resume``
works from any directory, or under ``$SPARSEBENCH_CHECKPOINTS``. They are loaded with
``weights_only=True``: a checkpoint is tensors, numbers and strings, and a crafted pickle in a
shared folder must not run code. A run holds a lock on its folder while it trains, so a second
process cannot resume it at the same time.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from filelock import FileLock, Timeout

from sparsebench.errors import ConfigError, RunNotFoundError
from sparsebench.files import folder_problem

FALLBACK_DIR = Path("mlruns") / "checkpoints"
"""For stores without a local folder (PostgreSQL, a tracking server): under the working directory."""

RUN_ID = re.compile(r"[0-9a-f]{6,32}")
"""A run id or a unique prefix of one (MLflow ids are 32 lower-case hex digits)."""


def checkpoint_root(tracking_uri: str | None = None) -> Path:
    """``$SPARSEBENCH_CHECKPOINTS``, else ``checkpoints/`` beside a local store, else ./mlruns/checkpoints."""
    if env := os.environ.get("SPARSEBENCH_CHECKPOINTS"):
        return Path(env)
    if tracking_uri:
        parsed = urlparse(tracking_uri)
        if parsed.scheme == "sqlite" and tracking_uri.startswith("sqlite:///"):
            return Path(tracking_uri.removeprefix("sqlite:///")).parent / "checkpoints"
        if parsed.scheme in ("file", ""):
            return Path(parsed.path or tracking_uri) / "checkpoints"
    return FALLBACK_DIR


def checkpoint_path(run_id: str, root: Path | None = None) -> Path:
    """The checkpoint of ``run_id``, refusing anything but a run id (no path can escape the root)."""
    if not RUN_ID.fullmatch(run_id):
        raise ConfigError(f"{run_id!r} is not a run id (6 to 32 lower-case hex characters)")
    return (root or checkpoint_root()) / run_id / "checkpoint.pt"


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "shuffle": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["shuffle"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically, so a run killed mid-write still has its previous checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def probe_writable(folder: Path, what: str) -> None:
    """Fail before training, not after the first epoch, when ``folder`` cannot be written."""
    problem = folder_problem(folder)
    if problem is not None:
        raise ConfigError(
            f"{what} {folder} is not writable ({problem}); choose another with "
            "SPARSEBENCH_CHECKPOINTS or --tracking-uri"
        )


def full_run_id(run_id: str, root: Path | None = None) -> str:
    """The run whose checkpoint ``run_id`` names: its full id, or a unique prefix of it.

    Resuming needs the checkpoint on this machine anyway, so the short ids that tables print are
    matched against the checkpoint folders, without asking the tracking server.
    """
    folder = root or checkpoint_root()
    if checkpoint_path(run_id, folder).is_file():
        return run_id
    matches = sorted(p.parent.name for p in folder.glob(f"{run_id}*/checkpoint.pt"))
    if len(matches) > 1:
        raise ConfigError(f"run {run_id} is ambiguous ({', '.join(matches)}); give more of the run id")
    if not matches:
        load(run_id, folder)  # raises the missing-checkpoint error
    return matches[0]


def load(run_id: str, root: Path | None = None) -> dict[str, Any]:
    """The checkpoint's contents; a missing, truncated, corrupt or foreign file is a one-line error."""
    path = checkpoint_path(run_id, root)
    if not path.is_file():
        raise RunNotFoundError(
            f"no checkpoint for run {run_id} at {path}; resume needs the machine (or "
            "SPARSEBENCH_CHECKPOINTS folder) that ran it, and a finished run keeps its checkpoint "
            "only when started with --keep-checkpoint"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"checkpoint {path} cannot be loaded safely ({first[:160]}); it is corrupt, truncated "
            "or not a sparsebench checkpoint"
        ) from None
    missing = {"task", "method", "config", "model", "optimizer", "rng", "epoch", "step"} - set(payload or {})
    if not isinstance(payload, dict) or missing:
        raise ConfigError(f"checkpoint {path} is not a sparsebench checkpoint (missing {sorted(missing)})")
    return payload


def run_lock(run_id: str, root: Path | None = None) -> RunLock:
    """A lock held while a run trains; taking it fails at once when another process holds it.

    Usage: ``with run_lock(run_id): ...``; a second ``--resume`` of the same run gets a ConfigError.
    """
    path = checkpoint_path(run_id, root).parent / "lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    return RunLock(FileLock(str(path), timeout=0), run_id)


class RunLock:
    """An OS file lock (released by the kernel when a process dies, so SIGKILL leaves none behind)."""

    def __init__(self, lock: FileLock, run_id: str) -> None:
        self.lock = lock
        self.run_id = run_id

    def acquire(self) -> None:
        try:
            self.lock.acquire()
        except Timeout:
            raise ConfigError(
                f"run {self.run_id} is being trained by another process right now; wait for it to "
                "stop (Ctrl-C there keeps its checkpoint), then resume"
            ) from None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def discard(run_id: str, root: Path | None = None) -> None:
    """Delete a finished run's checkpoint folder (a VGG Sparse VD checkpoint is ~343 MiB)."""
    shutil.rmtree(checkpoint_path(run_id, root).parent, ignore_errors=True)
