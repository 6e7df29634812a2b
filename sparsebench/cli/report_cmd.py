"""``sparsebench report``: tables, figures and seed statistics from the runs in MLflow."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

EXAMPLES = """examples:
  sparsebench report --task lenet300_100 --name lenet300_100
  sparsebench report --task lenet5 --method sparse_vd --method dense --name lenet5-svd
  sparsebench report --experiment sparsebench --tag campaign=mnist-v1 --name mnist
  sparsebench report --task lenet300_100 --param train.epochs=200 --name lenet300_100-full
  sparsebench report --sweep <sweep parent run id or name> --name sweep-svd --levels 20 50 100
  sparsebench report --task lenet5 --name lenet5 --json    # what was written, for scripts
  sparsebench reproduce reports/lenet5-svd --dry-run
  sparsebench report --records reports/mnist --out /tmp/mnist-report   # from run records, no store
  sparsebench report --records reports/mnist --leaderboard              # README's leaderboard block
  sparsebench report --records reports/mnist --leaderboard --readme README.md   # rewrite it there
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="compare runs: paper-format tables, Pareto plots, seed statistics",
        description="Select finished runs from MLflow and write reports/<name>/ (report.md, report.html, "
        "CSV and LaTeX tables, PNG figures); the report is also logged to MLflow as artifacts.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--experiment", action="append", default=[], help="MLflow experiment name (repeatable; default: all)"
    )
    p.add_argument("--task", action="append", default=[], help="task name (repeatable)")
    p.add_argument("--method", action="append", default=[], help="method name (repeatable)")
    p.add_argument(
        "--tag", action="append", default=[], metavar="KEY=VALUE", help="only runs with this tag (repeatable)"
    )
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only runs with this config value, e.g. train.epochs=200 (repeatable)",
    )
    p.add_argument("--sweep", help="only the trials of this sweep (parent run id, run name or `sweep` tag)")
    p.add_argument(
        "--run", action="append", default=[], metavar="RUN_ID", help="only these run ids (repeatable)"
    )
    p.add_argument("--name", help="report name, the folder under reports/ (default: from the tasks)")
    p.add_argument("--out", help="output folder (default: reports/<name>/)")
    p.add_argument(
        "--levels",
        type=float,
        nargs="+",
        metavar="X",
        help="compression levels of the matched comparison (default: 10 20 50 100)",
    )
    p.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite under ./mlruns)",
    )
    p.add_argument("--no-mlflow", action="store_true", help="do not log the report to MLflow")
    p.add_argument(
        "--json", action="store_true", help="print what was written (folder, files, runs, tables) as JSON"
    )
    records = p.add_argument_group("from run records (no tracking store)")
    records.add_argument(
        "--records", metavar="DIR", help="a campaign's results folder (DIR/runs/*.json); needs --out"
    )
    records.add_argument(
        "--leaderboard", action="store_true", help="print README's leaderboard block from the records"
    )
    records.add_argument(
        "--readme", metavar="FILE", help="with --leaderboard: write the block between FILE's markers"
    )
    p.set_defaults(handler=handle)


def selection_from(args: argparse.Namespace):  # noqa: ANN201 - Selection is imported lazily
    from sparsebench.report.select import Selection

    tags = dict(_pair("--tag", text) for text in args.tag)
    params = dict(_pair("--param", text) for text in args.param)
    return Selection(
        tuple(args.experiment),
        tuple(args.task),
        tuple(args.method),
        tags,
        params,
        args.sweep,
        tuple(args.run),
    )


def _pair(flag: str, text: str) -> tuple[str, str]:
    from sparsebench.config import parse_assignment
    from sparsebench.errors import ConfigError

    if "=" not in text:
        raise ConfigError(f"{flag} expects key=value (e.g. {flag} train.epochs=200), got {text!r}")
    return parse_assignment(text)


def handle(args: argparse.Namespace) -> int:
    """Make the report; Ctrl-C stops it with one line and exit 130 (files may be half written)."""
    try:
        return _report(args)
    except KeyboardInterrupt:
        print(
            "sparsebench report: interrupted; the report folder may be incomplete: run the command again",
            file=sys.stderr,
        )
        return 130


def _check_records_flags(args: argparse.Namespace) -> None:
    from sparsebench.errors import ConfigError

    if args.records is None:
        if args.leaderboard or args.readme:
            raise ConfigError("--leaderboard and --readme read run records: give --records DIR")
        return
    selecting = [f for f in ("experiment", "task", "method", "tag", "param", "run") if getattr(args, f)]
    selecting += [f for f in ("sweep", "tracking_uri") if getattr(args, f)]
    if selecting:
        flags = ", ".join("--" + f.replace("_", "-") for f in selecting)
        raise ConfigError(f"--records reads run records, not a tracking store: drop {flags}")
    if args.readme and not args.leaderboard:
        raise ConfigError("--readme writes the leaderboard: add --leaderboard")
    if not args.leaderboard and not args.out:
        raise ConfigError("--records needs --out DIR (where the report goes), or --leaderboard")
    if not Path(args.records).is_dir():
        raise ConfigError(f"--records {args.records}: no such folder")


def _leaderboard(args: argparse.Namespace) -> int:
    from sparsebench.report.leaderboard import leaderboard_block, replace_block

    block = leaderboard_block(Path(args.records))
    if not args.readme:
        print(block, end="")
        return 0
    readme = Path(args.readme)
    text = readme.read_text() if readme.is_file() else ""
    updated = replace_block(text, block, args.readme)
    if updated != text:
        readme.write_text(updated)
    print(
        f"{args.readme}: leaderboard {'updated' if updated != text else 'already up to date'}",
        file=sys.stderr,
    )
    return 0


def _records_report(args: argparse.Namespace) -> int:
    from sparsebench.report.build import DEFAULT_LEVELS, ReportRequest, check_name, make_report

    folder = Path(args.records)
    name = check_name(args.name or folder.resolve().name)
    request = ReportRequest(
        selection=selection_from(args),
        name=name,
        out=Path(args.out),
        tracking_uri="",
        levels=tuple(args.levels) if args.levels else DEFAULT_LEVELS,
        log_to_mlflow=False,
        records=folder,
    )
    return _print_result(make_report(request), args)


def _report(args: argparse.Namespace) -> int:

    from sparsebench.cli._common import env_from

    _check_records_flags(args)
    if args.leaderboard:
        return _leaderboard(args)
    if args.records:
        return _records_report(args)
    return _store_report(args, env_from(args).tracking_uri)


def _store_report(args: argparse.Namespace, tracking_uri: str) -> int:

    from sparsebench.report.build import DEFAULT_LEVELS, ReportRequest, check_name, make_report
    from sparsebench.report.manifest import portable_path, portable_uri

    selection = selection_from(args)
    name = check_name(args.name or "-".join(args.task) or "-".join(args.experiment) or args.sweep or "report")
    out = Path(args.out) if args.out else Path("reports") / name
    levels = tuple(args.levels) if args.levels else DEFAULT_LEVELS
    # The command is written into the report: no absolute path of this machine, no store password.
    flags = ["sparsebench", "report", *selection.as_flags(), "--name", name]
    if args.out:
        flags += ["--out", portable_path(args.out)]
    if args.levels:
        flags += ["--levels", *(f"{v:g}" for v in levels)]
    if args.tracking_uri:
        flags += ["--tracking-uri", portable_uri(args.tracking_uri)]
    request = ReportRequest(
        selection=selection,
        name=name,
        out=out,
        tracking_uri=tracking_uri,
        levels=levels,
        log_to_mlflow=not args.no_mlflow,
        command=" ".join(shlex.quote(f) for f in flags),
    )
    return _print_result(make_report(request), args)


def _print_result(result: Any, args: argparse.Namespace) -> int:
    if args.json:  # stdout carries the JSON only
        print(json.dumps(result_json(result), indent=2))
    else:
        for task, table in result.summaries.items():
            print(f"## {task}\n\n{table}\n")
    print(
        f"wrote {result.folder}/report.md and report.html ({len(result.files)} files, {result.runs} runs)",
        file=sys.stderr,
    )
    if result.mlflow_run_id:
        print(
            f"logged to MLflow as run {result.mlflow_run_id} (experiment sparsebench-reports)",
            file=sys.stderr,
        )
    return 0


def result_json(result: Any) -> dict[str, Any]:
    """What a script needs from a report: where it is, its files, how many runs, each task's table."""
    folder = result.folder
    return {
        "folder": str(folder),
        "files": sorted(
            str(Path(f).relative_to(folder)) if Path(f).is_relative_to(folder) else str(f)
            for f in result.files
        ),
        "runs": result.runs,
        "mlflow_run_id": result.mlflow_run_id,
        "tables": dict(result.summaries),
    }
