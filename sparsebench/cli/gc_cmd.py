"""``sparsebench gc``: delete the checkpoints that no run needs any more, and say what that freed."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from sparsebench.cli._common import add_env_flags, env_from

EXAMPLES = """examples:
  sparsebench gc --dry-run
  sparsebench gc
  sparsebench gc --older-than 30            # also paused/interrupted runs not touched for 30 days
  sparsebench gc --tracking-uri sqlite:///runs/mlflow.db --json
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "gc",
        help="delete checkpoints of finished, failed and deleted runs",
        description="Delete the checkpoint folders (beside the tracking store, or under "
        "$SPARSEBENCH_CHECKPOINTS) of runs the store shows FINISHED or FAILED or no longer has; with "
        "--older-than also of paused or interrupted (KILLED) runs whose last checkpoint is older. A "
        "RUNNING run, or one another process is training, is never touched. Run statuses come from "
        "the store: when several stores share one $SPARSEBENCH_CHECKPOINTS, try --dry-run first.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--older-than",
        type=float,
        metavar="DAYS",
        help="also delete resumable (KILLED) runs whose last checkpoint is at least DAYS old",
    )
    p.add_argument("--dry-run", action="store_true", help="only say what would be deleted")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    add_env_flags(p, device=False, data_dir=False, experiment=False)
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from sparsebench.errors import ConfigError
    from sparsebench.run.gc import collect, run_folders
    from sparsebench.tracking.uris import sqlite_path

    if args.older_than is not None and not (math.isfinite(args.older_than) and args.older_than >= 0):
        raise ConfigError(f"--older-than must be a number of days >= 0, got {args.older_than:g}")
    env = env_from(args)
    root = env.checkpoint_root
    store = None
    if run_folders(root):  # only then is the store read (and an absent one is an error, not created)
        database = sqlite_path(env.tracking_uri)
        if database is not None and not database.exists():
            raise ConfigError(
                f"no tracking store at {env.display_uri}, so the runs of the checkpoints in {root} "
                "cannot be checked; give the store that ran them with --tracking-uri"
            )
        store = env.store
    result = collect(store, root, args.older_than, args.dry_run)
    if args.json:
        print(json.dumps(result.as_json(), indent=2))
    else:
        _print_text(result)
    return 0


def _print_text(result: Any) -> None:
    from sparsebench.run.gc import human_bytes

    verb = "would remove" if result.dry_run else "removed"
    for folder in result.removed:
        size = human_bytes(folder.bytes)
        print(f"{verb} {folder.run_id} ({folder.status}, {size}, {folder.age_days:.1f} days old)")
    for folder in result.kept:
        print(f"kept {folder.run_id} ({folder.status}, {human_bytes(folder.bytes)}): {folder.reason}")
    freed = "would free" if result.dry_run else "freed"
    print(
        f"{freed} {human_bytes(result.bytes_freed)} ({len(result.removed)} of {len(result.folders)} "
        f"checkpoint folders under {result.root})"
    )
