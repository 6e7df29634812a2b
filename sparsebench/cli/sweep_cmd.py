"""``sparsebench sweep``: tune a method with optuna, and show where a sweep stands.

``python -m sparsebench.cli.sweep_cmd ARGS`` is the same as ``sparsebench sweep ARGS``; the
workers of ``--workers N`` are started that way.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from sparsebench.cli._common import add_env_flags, env_from

EXAMPLES = """examples:
  sparsebench sweep --list
  sparsebench sweep sparse_vd_lenet300_100
  sparsebench sweep sparse_vd_lenet300_100 --workers 2
  sparsebench sweep my_spec.yaml
  sparsebench sweep --method sparse_vd --task lenet5 --n-trials 30 --epochs 20
  sparsebench sweep sparse_vd_lenet5 --storage postgresql://user:pw@db-host/sweeps
  sparsebench sweep status sparse_vd_lenet300_100
  sparsebench sweep sparse_vd_lenet300_100 --scaling 1 2 --n-trials 8 --epochs 3

SPEC is the name of a shipped spec (see --list) or the path of a YAML file. Running the same
command again resumes the study; completed trials are never repeated. The same command on several
machines with one PostgreSQL --storage joins them into one study.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="tune a method with optuna (sweep SPEC | sweep status SPEC)",
        description="Create or resume an optuna study from a sweep spec; every trial is an MLflow run.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "target", nargs="*", metavar="[status] SPEC", help="a shipped spec's name (see --list) or a YAML file"
    )
    p.add_argument("--list", action="store_true", help="list the shipped sweep specs (--json for JSON)")
    p.add_argument("--show", action="store_true", help="print the spec's YAML (to copy and edit) and exit")
    p.add_argument("--method", help="sweep this method's own search space (no spec file needed)")
    p.add_argument("--task", help="task for --method")
    p.add_argument("--n-trials", type=int, help="number of trials (overrides the spec)")
    p.add_argument("--epochs", type=int, help="epochs per trial (overrides the spec's budget.epochs)")
    p.add_argument("--storage", help="optuna storage: a journal file path or an SQLAlchemy URL (PostgreSQL)")
    p.add_argument("--study", help="study name (default: the spec's, else METHOD-TASK)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fix a config field for every trial, e.g. train.val_size=1000 (repeatable)",
    )
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine (one per GPU)")
    p.add_argument(
        "--scaling",
        type=int,
        nargs="+",
        metavar="N",
        help="measure trials/hour with each worker count (fresh throwaway studies, one after the other)",
    )
    add_env_flags(p)
    p.add_argument("--json", action="store_true", help="status, --list: print JSON")
    p.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from sparsebench.errors import ConfigError

    if args.list:
        return list_specs(args.json)
    status = bool(args.target) and args.target[0] == "status"
    files = args.target[1:] if status else args.target
    if len(files) > 1:
        raise ConfigError(f"sweep takes one spec, got {len(files)}: {' '.join(files)}")
    if files and (args.method or args.task):
        raise ConfigError("give a spec or --method/--task, not both")
    if not files and not (args.method and args.task):
        raise ConfigError(
            "sweep needs a spec (a name that `sparsebench sweep --list` shows, or a YAML file) "
            "or --method and --task"
        )
    if args.show and files:
        return show_spec(files[0])
    spec = _spec(args, files[0] if files else None)
    env = env_from(args)  # resolved once: the workers get this very store
    if status:
        return show_status(spec, env, args.json)
    if args.scaling:
        return scaling(spec, env, args)
    return run(spec, env, args)


def list_specs(as_json: bool) -> int:
    """The shipped specs: what ``sparsebench sweep NAME`` accepts."""
    from dataclasses import asdict

    from sparsebench.sweep.shipped import shipped_specs

    specs = shipped_specs()
    if as_json:
        print(json.dumps([asdict(s) for s in specs], indent=2))
        return 0
    width = max((len(s.name) for s in specs), default=4)
    print(f"{'NAME':<{width}}  DESCRIPTION")
    for s in specs:
        print(f"{s.name:<{width}}  {s.description}")
    print(
        "\nrun one with: sparsebench sweep NAME   (its YAML, to copy and edit: sparsebench sweep NAME --show)"
    )
    return 0


def show_spec(target: str) -> int:
    """A spec's YAML as written, comments included: a wheel's user has no sweeps/ folder to open."""
    from sparsebench.errors import ConfigError
    from sparsebench.sweep.shipped import not_found_message, resolve

    _, text = resolve(target)
    if text is None:
        raise ConfigError(not_found_message(target))
    print(text, end="" if text.endswith("\n") else "\n")
    return 0


def scaling(spec: Any, env: Any, args: argparse.Namespace) -> int:
    from dataclasses import replace

    from sparsebench.sweep.scaling import measure_scaling

    # Its own MLflow experiment, so throwaway trials never mix with a real study's runs.
    table = measure_scaling(spec, replace(env, experiment=f"{env.experiment}-scaling"), args.scaling)
    if args.json:
        print(table.to_json(orient="records"))
        return 0
    print(
        f"sweep scaling of {spec.study}: {spec.n_trials} trials x {spec.epochs or 'recipe'} epochs per count"
    )
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    last = table.iloc[-1]
    print(f"{int(last.workers)} workers: {last.ratio:.2f}x the trials/hour of {int(table.workers.iloc[0])}")
    return 0


def _spec(args: argparse.Namespace, path: str | None) -> Any:
    """The spec with the command line's changes, validated again as a whole."""
    from sparsebench.config import parse_assignment
    from sparsebench.errors import ConfigError
    from sparsebench.sweep.spec import default_spec, load_spec, spec_from_dict

    spec = load_spec(path) if path else default_spec(args.method, args.task)
    data = spec.to_dict()
    if args.n_trials is not None:
        data["n_trials"] = args.n_trials
    if args.epochs is not None:
        data["budget"]["epochs"] = args.epochs
    for key in ("storage", "study"):
        if getattr(args, key):
            data[key] = getattr(args, key)
    data["fixed"].update(parse_assignment(text) for text in args.overrides)
    try:
        return spec_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path or 'sweep'} with the command-line options: {exc}") from exc


def run(spec: Any, env: Any, args: argparse.Namespace) -> int:
    from sparsebench.sweep.status import interrupted_message
    from sparsebench.sweep.storage import check_separate_databases, storage_url
    from sparsebench.sweep.workers import exit_status, run_sweep, run_worker, worker_problems

    check_separate_databases(env.tracking_uri, storage_url(spec))
    try:
        if args.worker_index is not None:
            run_worker(spec, env, args.worker_index)
            return 0
        _, codes = run_sweep(spec, env, args.workers)
    except KeyboardInterrupt:
        if args.worker_index is None:  # a worker's parent says it once for all of them
            print(f"\n{interrupted_message(spec, continue_command(args))}", file=sys.stderr)
        return 130
    if problems := worker_problems(codes):
        print(f"sparsebench: {'; '.join(problems)}; see their messages above", file=sys.stderr)
    show_status(spec, env, as_json=False)
    return exit_status(codes)


def continue_command(args: argparse.Namespace) -> str:
    """The command that continues this sweep: this one, with any password in a URI masked."""
    import shlex

    from sparsebench.tracking import mask_uri

    words = ["sparsebench", "sweep", *(args.target or ["--method", args.method, "--task", args.task])]
    options = {
        "--n-trials": args.n_trials,
        "--epochs": args.epochs,
        "--storage": args.storage and mask_uri(args.storage),
        "--study": args.study,
        "--workers": args.workers if args.workers != 1 else None,
        "--device": args.device if args.device != "auto" else None,
        "--data-dir": args.data_dir,
        "--tracking-uri": args.tracking_uri and mask_uri(args.tracking_uri),
        "--experiment": args.experiment if args.experiment != "sparsebench" else None,
    }
    for flag, value in options.items():
        if value is not None:
            words += [flag, str(value)]
    for text in args.overrides:
        words += ["--set", text]
    return shlex.join(words)


def show_status(spec: Any, env: Any, as_json: bool) -> int:
    """Trial counts, the selected trials (by validation only) and where to look further."""
    from sparsebench.sweep.status import status_report

    report = status_report(spec, env)
    if as_json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    c = report["counts"]
    print(f"study {report['study']} ({report['task']} / {report['method']}) in {report['storage']}")
    print(
        f"trials: {c['complete']} done, {c['running']} running, {c['waiting']} queued, {c['pruned']} pruned, "
        f"{c['failed']} failed (diverged), {c['lost']} lost (re-run or retried) of {report['n_trials']}"
    )
    title = "Pareto front" if len(report["objectives"]) > 1 else "best trials"
    print(f"{title} (chosen on validation; the test column is reported, never used to choose):")
    rows = report["best"]
    if not rows:
        print("  (no completed trial yet)")
    else:
        print(_table(rows, report["objectives"]))
    for trial in report["failures"]:
        print(f"  trial {trial['number']} failed: {trial['reason']}")
    if report["trials_per_hour"]:
        print(f"throughput: {report['trials_per_hour']:.1f} trials/hour (first start to last finish)")
    print(f"\noptuna dashboard: {report['dashboard']}")
    print(f"MLflow UI:        {report['mlflow_ui']}")
    return 0


def _table(rows: list[dict[str, Any]], objectives: list[str]) -> str:
    import pandas as pd

    frame = pd.DataFrame(
        [{k: v for k, v in row.items() if k != "params"} | row["params"] for row in rows]
    ).rename(columns={"number": "trial", "val_metric": "val", "test_metric": "test (reported)"})
    return frame.to_string(index=False, float_format=lambda v: f"{v:.4g}")


def main(argv: list[str] | None = None) -> int:
    """``sparsebench sweep`` as its own program (how ``--workers`` starts its processes)."""
    from sparsebench.cli import main as cli_main

    return cli_main(["sweep", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
