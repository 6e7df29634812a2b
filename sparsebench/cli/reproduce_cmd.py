"""``sparsebench reproduce``: train the runs behind a report again, from the configs it recorded."""

from __future__ import annotations

import argparse
import sys

from sparsebench.cli._common import add_env_flags, env_from


def add_parser(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser(
        "reproduce",
        help="re-run the runs behind a report",
        description="Train every run listed in a report's manifest.json again, with its recorded config and "
        "seed; new runs are tagged reproduction_of_report=<name> so they can be reported on their own.",
        epilog="examples:\n  sparsebench reproduce reports/lenet5-svd --dry-run\n"
        "  sparsebench reproduce reports/lenet5-svd --device cuda\n"
        "  sparsebench reproduce reports/lenet5-svd --only <run id>\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("report", help="a report folder (holding manifest.json)")
    r.add_argument("--dry-run", action="store_true", help="print the commands, train nothing")
    r.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="RUN_ID",
        help="re-run only this run, by id or a unique prefix of 6+ characters (repeatable)",
    )
    add_env_flags(r)
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.set_defaults(handler=handle_reproduce)


def handle_reproduce(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sparsebench.report.manifest import read_manifest
    from sparsebench.report.reproduce import (
        REPRODUCTION_TAG,
        ReproduceRequest,
        replay_order,
        reproduce,
        select_only,
    )

    folder = Path(args.report)
    manifest = read_manifest(folder)
    if args.dry_run:
        for entry in select_only(replay_order(manifest["runs"]), args.only):
            print(entry["command"])
        return 0
    env = env_from(args)
    replayed = reproduce(
        ReproduceRequest(
            folder=folder,
            only=tuple(args.only),
            device=env.device,
            data_dir=str(env.data_dir),
            tracking_uri=env.tracking_uri,
            experiment=env.experiment,
            progress=not args.no_progress,
        )
    )
    print(
        "old run                           new run                           test (old -> new)   compression"
    )
    for r in replayed:
        old_test, old_c = r.old.get("test"), r.old.get("compression")
        print(
            f"{r.old['run_id']}  {r.new_run_id}  {_num(old_test)} -> {_num(r.test)}   "
            f"{_num(old_c)}x -> {_num(r.compression)}x"
        )
    print(
        f"report on the new runs with: sparsebench report --tag {REPRODUCTION_TAG}={manifest['name']} "
        f"--name {manifest['name']}-reproduced",
        file=sys.stderr,
    )
    return 0


def _num(value: float | None) -> str:
    return "—" if value is None or value != value else f"{value:.2f}"
