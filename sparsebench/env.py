"""Where a command works: device, data, tracking store, experiment and checkpoints, resolved once.

The CLI builds one ``Env`` per command from its flags and the environment variables, and passes it
down; library code takes the ``Env`` (or the ``Store`` it opens) instead of re-reading
``$MLFLOW_TRACKING_URI`` or falling back to ``./mlruns`` on its own, so every part of a command
writes to the same store and the same checkpoint folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparsebench.data.paths import data_root
from sparsebench.tracking.uris import EXPERIMENT, mask_uri, resolve_uri

if TYPE_CHECKING:
    from sparsebench.tracking.store import Store


@dataclass(frozen=True)
class Env:
    """The resolved settings every subcommand shares."""

    tracking_uri: str
    """The resolved MLflow tracking URI (``--tracking-uri`` > $MLFLOW_TRACKING_URI > ./mlruns)."""
    data_dir: Path
    """The dataset root (``--data-dir`` > $SPARSEBENCH_DATA > the per-user cache)."""
    checkpoint_root: Path
    """Where run checkpoints go: $SPARSEBENCH_CHECKPOINTS, else beside a local store."""
    device: str = "auto"
    """As given (auto, cpu, cuda[:N]); checked when a command needs torch."""
    experiment: str = EXPERIMENT

    @classmethod
    def resolve(
        cls,
        tracking_uri: str | None = None,
        data_dir: str | Path | None = None,
        device: str = "auto",
        experiment: str | None = None,
    ) -> Env:
        """Resolve each setting once, in its documented order of precedence."""
        from sparsebench.run.checkpoint import checkpoint_root

        uri = resolve_uri(tracking_uri)
        return cls(
            tracking_uri=uri,
            data_dir=data_root(data_dir),
            checkpoint_root=checkpoint_root(uri).absolute(),
            device=device or "auto",
            experiment=experiment or EXPERIMENT,
        )

    @classmethod
    def from_args(cls, args: Any) -> Env:
        """From parsed CLI flags (``sparsebench.cli._common.add_env_flags``); absent flags take defaults."""
        experiment = getattr(args, "experiment", None)
        return cls.resolve(
            tracking_uri=getattr(args, "tracking_uri", None),
            data_dir=getattr(args, "data_dir", None),
            device=getattr(args, "device", None) or "auto",
            experiment=experiment if isinstance(experiment, str) else None,
        )

    @property
    def store(self) -> Store:
        """The opened tracking store (opened on first use, then cached per URI)."""
        from sparsebench.tracking.store import open_store

        return open_store(self.tracking_uri)

    @property
    def display_uri(self) -> str:
        """The tracking URI as it may be printed (no password)."""
        return mask_uri(self.tracking_uri)
