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
        "  sparsebench reproduce reports/lenet5-svd --only <run id>\n"
        "  sparsebench reproduce reports/mnist --row lenet300_100-sparse_vd --seed 1  # from its record\n"
        "  sparsebench reproduce reports/mnist --row lenet300_100-sparse_vd --dry-run\n\n"
        "With --row, the cell's run record (FOLDER/runs/<row>-seed<k>.json) is replayed with its full\n"
        "recorded configuration; the new test error and compression are compared with the row's seeds.\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("report", help="a report folder (holding manifest.json), or with --row a results folder")
    r.add_argument("--row", help="replay this campaign row from its run record (FOLDER/runs/ROW-seedK.json)")
    r.add_argument("--seed", type=int, help="with --row: the seed to replay (default: the row's lowest)")
    r.add_argument("--json", action="store_true", help="with --row: print the comparison as JSON")
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

    from sparsebench.errors import ConfigError

    if args.row is not None:
        if args.only:
            raise ConfigError("--only picks runs of a report's manifest; with --row give --seed")
        return replay_row(args)
    if args.seed is not None or args.json:
        raise ConfigError("--seed and --json go with --row (a campaign row replayed from its record)")

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
            env=env,
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


def replay_row(args: argparse.Namespace) -> int:
    """Replay one cell from its record: say what differs, train, compare with the row's seeds."""
    import json
    from pathlib import Path

    from sparsebench.report.manifest import run_command
    from sparsebench.report.replay import compare, plan_replay, replay_tags, verdict
    from sparsebench.run.plan import RunRequest
    from sparsebench.run.train import train

    env = env_from(args)
    folder = Path(args.report)
    plan = plan_replay(folder, args.row, args.seed, env.data_dir)
    rec = plan.record
    command = run_command(rec.task, rec.method, plan.overrides, plan.init_from or "")
    if args.dry_run:
        print(command)
        return 0
    print(f"replaying {plan.cell.key} from its record: {command}", file=sys.stderr)
    for difference in plan.differences:
        print(f"note: {difference}; the result may differ for that reason alone", file=sys.stderr)
    result = train(
        RunRequest(
            task=rec.task,
            method=rec.method,
            overrides=plan.overrides,
            env=env,
            init_from=plan.init_from,
            progress=not args.no_progress,
            tags=replay_tags(plan, folder),
        )
    )
    if result.status != "FINISHED":
        return 130
    comparisons = compare(plan, {"test_metric": result.test_metric, **result.summary})
    if args.json:
        rows = [{**vars(c), "inside_spread": c.inside_spread, "inside_ci": c.inside_ci} for c in comparisons]
        payload = {"cell": plan.cell.key, "run_id": result.run_id, "differences": plan.differences}
        print(json.dumps({**payload, "comparisons": rows}, indent=2))
        return 0
    seeds = ", ".join(str(s) for s in sorted(plan.row_records))
    print(f"{plan.cell.key} replayed as run {result.run_id}; row {args.row}, recorded seeds {seeds}:")
    for c in comparisons:
        print(f"  {verdict(c)}")
    return 0
