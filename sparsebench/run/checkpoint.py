"""Per-epoch checkpoints holding everything a resumed run needs to end bit-identical."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from sparsebench.errors import ConfigError, RunNotFoundError

DEFAULT_DIR = Path("mlruns") / "checkpoints"


def checkpoint_root() -> Path:
    return Path(os.environ.get("SPARSEBENCH_CHECKPOINTS", DEFAULT_DIR))


def checkpoint_path(run_id: str, root: Path | None = None) -> Path:
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


def full_run_id(run_id: str, root: Path | None = None) -> str:
    """The run whose checkpoint ``run_id`` names: its full id, or a unique prefix of it.

    Resuming needs the checkpoint on this machine anyway, so the short ids that tables print are
    matched against the checkpoint folders, without asking the tracking server.
    """
    folder = root or checkpoint_root()
    if checkpoint_path(run_id, folder).is_file():
        return run_id
    from sparsebench.tracking import is_run_prefix

    matches = []
    if is_run_prefix(run_id):
        matches = sorted(p.parent.name for p in folder.glob(f"{run_id}*/checkpoint.pt"))
    if len(matches) > 1:
        raise ConfigError(f"run {run_id} is ambiguous ({', '.join(matches)}); give more of the run id")
    if not matches:
        load(run_id, folder)  # raises the missing-checkpoint error
    return matches[0]


def load(run_id: str, root: Path | None = None) -> dict[str, Any]:
    path = checkpoint_path(run_id, root)
    if not path.is_file():
        raise RunNotFoundError(
            f"no checkpoint for run {run_id} at {path}; resume needs the machine (or "
            "SPARSEBENCH_CHECKPOINTS folder) that ran it"
        )
    return torch.load(path, map_location="cpu", weights_only=False)
