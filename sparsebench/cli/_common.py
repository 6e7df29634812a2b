"""Flags every subcommand that trains, reads or logs runs shares, and the ``Env`` built from them."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sparsebench.env import Env

TRACKING_HELP = "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite under ./mlruns)"


def add_env_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    device: bool = True,
    data_dir: bool = True,
    experiment: bool = True,
    tracking_help: str = TRACKING_HELP,
) -> None:
    """Add --device, --data-dir, --tracking-uri and --experiment (each can be left out)."""
    if device:
        parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:N]")
    if data_dir:
        parser.add_argument(
            "--data-dir", help="dataset root (default: $SPARSEBENCH_DATA, else ~/.cache/sparsebench/data)"
        )
    parser.add_argument("--tracking-uri", help=tracking_help)
    if experiment:
        parser.add_argument("--experiment", default="sparsebench", help="MLflow experiment name")


def env_from(args: argparse.Namespace) -> Env:
    """The command's settings, resolved once (the tracking URI is checked here, before any work)."""
    from sparsebench.env import Env

    return Env.from_args(args)
