"""``sparsebench campaign``: run the cells of a campaign that have no record yet, and show where it stands.

``python -m sparsebench.cli.campaign_cmd ARGS`` is the same as ``sparsebench campaign ARGS``; the
workers of ``--workers N`` are started that way.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import TYPE_CHECKING, Any

from sparsebench.cli._common import add_env_flags, env_from

if TYPE_CHECKING:
    from sparsebench.campaign.spec import CampaignSpec

EXAMPLES = """examples:
  sparsebench campaign check sweeps/campaigns/mnist.yaml
  sparsebench campaign check mnist --update-copy    # after editing a spec (paper numbers, labels)
  sparsebench campaign run sweeps/campaigns/mnist.yaml --workers 2 --max-time 150
  sparsebench campaign run mnist --rows lenet5-dense-20ep,lenet5-sparse_vd
  sparsebench campaign run mnist --storage postgresql+psycopg2://user:pw@db-host/campaigns
  sparsebench campaign status mnist
  sparsebench campaign status mnist --json

SPEC is a campaign YAML file or the name of a shipped one. A cell (row x seed) is done when its
record exists in the results folder (<results>/runs/<row>-seed<k>.json); running the same command
again runs only what is missing. The same command on several machines with one PostgreSQL --storage
shares the work; each machine writes the records of its cells, to be committed from there.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "campaign",
        help="run declared rows x seeds into committed run records (campaign run | status | check)",
        description="A campaign spec declares rows (task, method, configuration) and seeds; each finished "
        "cell writes its run record (and small exported model) into the campaign's results folder.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    run = actions.add_parser("run", help="run the missing cells", epilog=EXAMPLES,
                             formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    _spec_flags(run)
    run.add_argument("--workers", type=int, default=1, help="worker processes on this machine (default 1)")
    run.add_argument(
        "--max-time",
        type=float,
        metavar="MINUTES",
        help="take no new cell after this many minutes (the cell in training finishes), nor one its "
        "row's records say needs longer than the minutes left",
    )
    add_env_flags(run)
    run.add_argument("--no-progress", action="store_true", help="no progress bar per cell")
    run.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    run.add_argument("--since", default=None, help=argparse.SUPPRESS)
    run.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    run.set_defaults(handler=handle_run)
    status = actions.add_parser("status", help="done / running / missing per row")
    _spec_flags(status)
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=handle_status)
    check = actions.add_parser("check", help="validate the spec against the plugins and list its cells")
    check.add_argument("spec", help="a campaign YAML file or a shipped campaign's name")
    check.add_argument(
        "--update-copy",
        action="store_true",
        help="write the spec's copy (campaign.json, read by reports) into the results folder after an edit",
    )
    check.set_defaults(handler=handle_check)


def _spec_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="a campaign YAML file or a shipped campaign's name")
    p.add_argument("--rows", help="only these rows (comma-separated names)")
    p.add_argument("--storage", help="optuna storage URL (default: the spec's, else sqlite under ./mlruns)")


def _rows(args: argparse.Namespace) -> list[str] | None:
    if not args.rows:
        return None
    return [name.strip() for name in args.rows.split(",") if name.strip()]


def _storage(args: argparse.Namespace, spec: Any) -> str:
    import os

    from sparsebench.campaign.queue import STORAGE_VARIABLE, storage_url

    inherited = os.environ.get(STORAGE_VARIABLE) if args.worker_index is not None else None
    return storage_url(spec, args.storage or inherited)


def handle_run(args: argparse.Namespace) -> int:
    import datetime as dt

    from sparsebench.campaign.queue import check_rows
    from sparsebench.campaign.spec import load_campaign
    from sparsebench.campaign.worker import WorkerOptions
    from sparsebench.errors import ConfigError
    from sparsebench.sweep.storage import check_separate_databases

    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    if args.max_time is not None and not (math.isfinite(args.max_time) and args.max_time >= 0):
        raise ConfigError(f"--max-time must be a number of minutes >= 0, got {args.max_time}")
    spec = load_campaign(args.spec)
    rows = check_rows(spec, _rows(args))
    env = env_from(args)
    options = WorkerOptions(
        storage=_storage(args, spec),
        env=env,
        max_time=args.max_time,
        since=dt.datetime.fromisoformat(args.since) if args.since else dt.datetime.now(),
        threads=args.threads,
        progress=not args.no_progress and args.workers == 1 and args.worker_index is None,
        label="campaign" if args.worker_index is None else f"worker {args.worker_index}",
    )
    check_separate_databases(options.env.tracking_uri, options.storage)
    try:
        return _run(spec, rows, options, args)
    except KeyboardInterrupt:
        if args.worker_index is None:
            print(
                "\nsparsebench campaign: interrupted; finished cells keep their records. Run the same "
                "command again to continue with what is missing",
                file=sys.stderr,
            )
        return 130


def _run(spec: Any, rows: Any, options: Any, args: argparse.Namespace) -> int:
    from sparsebench.campaign.status import campaign_status, render
    from sparsebench.campaign.worker import run_campaign, run_worker
    from sparsebench.sweep.workers import exit_status, worker_problems

    if args.worker_index is not None:
        summary = run_worker(spec, rows, options)
        return 1 if summary.failed else 0
    summary, codes = run_campaign(spec, rows, options, args.workers)
    if problems := worker_problems(codes):
        print(f"sparsebench: {'; '.join(problems)}; see their messages above", file=sys.stderr)
    print(render(campaign_status(spec, rows, options.storage)))
    if summary is not None:
        return 1 if summary.failed else 0
    return exit_status(codes)


def handle_status(args: argparse.Namespace) -> int:
    from sparsebench.campaign.spec import load_campaign
    from sparsebench.campaign.status import campaign_status, render

    args.worker_index = None
    spec = load_campaign(args.spec)
    report = campaign_status(spec, spec.select(_rows(args)), _storage(args, spec))
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


def handle_check(args: argparse.Namespace) -> int:
    from sparsebench.campaign.cells import cells_of
    from sparsebench.campaign.spec import load_campaign

    spec = load_campaign(args.spec)
    cells = cells_of(spec.rows)
    print(f"campaign {spec.name}: {len(spec.rows)} rows, {len(cells)} cells, records in {spec.results}/runs")
    width = max(len(r.name) for r in spec.rows)
    for row in spec.rows:
        start = f"  from {row.init_from_row}" if row.init_from_row else ""
        config = " ".join(f"{k}={v}" for k, v in row.config.items())
        seeds = ",".join(map(str, row.seeds))
        print(f"  {row.name:<{width}}  {row.task} / {row.method}  seeds {seeds}{start}  {config}".rstrip())
    print(_copy_state(spec, args.update_copy))
    return 0


def _copy_state(spec: CampaignSpec, update: bool) -> str:
    """One line on the results folder's copy of the spec, which reports read (rows, paper numbers)."""
    from sparsebench.campaign.cells import SPEC_COPY, spec_copy_state, write_spec_copy

    path = spec.results / SPEC_COPY
    if update:
        return f"{path}: {'written' if write_spec_copy(spec) else 'already up to date'}"
    return (
        f"{path}: "
        + {
            "missing": "none yet (campaign run writes it)",
            "current": "up to date",
            "stale": "differs from the spec; reports read it: add --update-copy to write it",
        }[spec_copy_state(spec)]
    )


def main(argv: list[str] | None = None) -> int:
    """``sparsebench campaign`` as its own program (how ``--workers`` starts its processes)."""
    from sparsebench.cli import main as cli_main

    return cli_main(["campaign", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
