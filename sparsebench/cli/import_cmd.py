"""``sparsebench import``: load a results folder's run records into an MLflow store."""

from __future__ import annotations

import argparse
import sys

EXAMPLES = """examples:
  sparsebench import reports/mnist
  sparsebench import reports/mnist --tracking-uri sqlite:///mnist.db --experiment mnist-records
  mlflow ui --backend-store-uri sqlite:///mnist.db

Each record (<folder>/runs/<row>-seed<k>.json) becomes one finished MLflow run with its params,
metrics, per-epoch curves, tags, per-layer table and, when its file is there, its exported model.
Records already imported into the experiment are skipped, so the command can be repeated.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    from sparsebench.cli._common import add_env_flags

    p = sub.add_parser(
        "import",
        help="load committed run records into an MLflow store",
        description="Load the run records of a campaign's results folder into an MLflow store.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("folder", help="a results folder holding runs/*.json (e.g. reports/mnist)")
    add_env_flags(p, device=False, data_dir=False)
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sparsebench.campaign.importer import import_records
    from sparsebench.cli._common import env_from

    env = env_from(args)
    summary = import_records(Path(args.folder), env.tracking_uri, env.experiment)
    print(
        f"imported {len(summary.imported)} records into experiment {summary.experiment} of "
        f"{env.display_uri}" + (f"; {len(summary.skipped)} already there" if summary.skipped else ""),
        file=sys.stderr,
    )
    for key in summary.imported:
        print(key)
    return 0
