"""``sparsebench run``: train one method on one task and print its paper-format row."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparsebench.cli._common import add_env_flags, env_from
from sparsebench.interrupts import sigterm_as_interrupt

if TYPE_CHECKING:
    from sparsebench.env import Env

EXAMPLES = """examples:
  sparsebench run --method sparsevd --task lenet300_100
  sparsebench run --method sparse_vd --task lenet5 --set train.epochs=50 --device cuda
  sparsebench run --method dense --task lenet5 --set train.epochs=20
  sparsebench run --method sparse_vd --task lenet5 --init-from <dense run id>
  sparsebench run --resume <run id>
  sparsebench run --refinish <run id>    # thresholds and metrics again, with this code
  sparsebench run --method sparse_vd --task lenet5 --print-config > lenet5.yaml
  sparsebench run --config lenet5.yaml --set train.epochs=20
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="train one method on one task",
        description="Train one method on one task, log it to MLflow and print its paper-format row.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--method", help="method name (see `sparsebench list methods`)")
    p.add_argument("--task", help="task name (see `sparsebench list tasks`)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. train.epochs=20 or method.threshold=2.5 (repeatable)",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help="a YAML mapping of --set keys to values (train.epochs: 20); --set given too wins over it",
    )
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the full resolved configuration as YAML (usable as --config) and exit without running",
    )
    add_env_flags(p)
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--init-from", metavar="RUN", help="initialise from the exported model of an earlier run")
    p.add_argument(
        "--refinish",
        metavar="RUN",
        help="calibrate, export and score a trained run's last checkpoint again with this code, as a new run "
        "(options added since the run take today's defaults)",
    )
    p.add_argument(
        "--tag",
        dest="tags",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="MLflow tag on the run, e.g. study=table1 (repeatable; reports select by tag)",
    )
    p.add_argument("--stop-after", type=int, metavar="EPOCHS", help="stop resumably after this many epochs")
    p.add_argument(
        "--record",
        metavar="FILE",
        help="also write the finished run's record (full config, versions, data checksums, metrics) as JSON",
    )
    p.add_argument(
        "--keep-checkpoint",
        action="store_true",
        help="keep the last checkpoint when the run finishes (needed by a later --refinish)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    overrides = resolve_overrides(args)
    check_flags(args, overrides)
    if args.print_config:
        return print_config(args, overrides)
    if args.config:  # a bad value in the file: one line naming the file, before any data is read
        plan_from_file(args, overrides)
    env = env_from(args)  # resolved once; an unknown store scheme is refused before any data is read
    with sigterm_as_interrupt():
        result = _train(args, overrides, env)
    if result.status != "FINISHED":
        return 130 if result.status == "KILLED" else 0
    if args.json:
        print(
            json.dumps(
                {
                    "run_id": result.run_id,
                    "row": result.row,
                    "val_metric": result.val_metric,
                    "test_metric": result.test_metric,
                    **result.summary,
                }
            )
        )
    else:
        cols = ["layer", "shape", "weights", "nonzeros", "sparsity", "out_units_removed", "in_units_removed"]
        print(result.table[cols].to_string(index=False, float_format=lambda v: f"{v:.2f}"))
        print(result.row)
    print(f"MLflow run {result.run_id}; open it with: {_ui_hint(env)}", file=sys.stderr)
    return 0


def check_flags(args: argparse.Namespace, overrides: dict[str, Any]) -> None:
    """Refuse combinations of flags that cannot mean what the user wants, before anything runs."""
    from sparsebench.errors import ConfigError

    if (args.resume or args.refinish) and (overrides or args.config):
        raise ConfigError("--set and --config cannot change a resumed or re-finished run; start a new run")
    if args.refinish and (args.resume or args.method or args.task or args.init_from):
        raise ConfigError("--refinish RUN takes the run's own method, task and config; give it alone")
    if args.print_config and (args.resume or args.refinish):
        raise ConfigError("--print-config shows a new run's configuration; a resumed run keeps its own")
    if not (args.resume or args.refinish) and not (args.method and args.task):
        raise ConfigError("run needs --method and --task (or --resume RUN); see `sparsebench list`")
    if args.resume and (args.method or args.task or args.init_from):
        raise ConfigError("--resume RUN continues the run's own method, task and config; give it alone")
    if args.stop_after is not None and args.stop_after < 1:
        raise ConfigError(f"--stop-after must be at least 1 epoch, got {args.stop_after}")


def resolve_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The values of ``--config FILE``, then of ``--set`` (which win); the file may name task and method.

    ``task.name`` and ``method.name`` in the file (as ``--print-config`` writes them) stand for
    ``--task`` and ``--method`` unless those flags are given.
    """
    from sparsebench.config import parse_assignment

    overrides = read_config_file(args.config) if args.config else {}
    for key, flag in (("task.name", "task"), ("method.name", "method")):
        name = overrides.pop(key, None)
        if name is not None and not getattr(args, flag):
            setattr(args, flag, str(name))
    overrides.update(parse_assignment(text) for text in args.overrides)
    return overrides


def read_config_file(path: str) -> dict[str, Any]:
    """``{"train.epochs": 20}`` from a YAML file of flat keys or of sections (``train: {epochs: 20}``)."""
    import yaml

    from sparsebench.errors import ConfigError

    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"--config {path}: cannot read it ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise ConfigError(f"--config {path} is not valid YAML{line}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path} must map --set keys to values, e.g. 'train.epochs: 20'")
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and "." not in str(key):  # a section written nested
            flat.update({f"{key}.{name}": inner for name, inner in value.items()})
        else:
            flat[str(key)] = value
    return flat


def plan_from_file(args: argparse.Namespace, overrides: dict[str, Any]) -> Any:
    """The run's plan; an error caused by a value from ``--config`` says so (``--set`` ones need not)."""
    from sparsebench.errors import ConfigError
    from sparsebench.run.plan import plan_run

    try:
        return plan_run(args.task, args.method, overrides)
    except ConfigError as exc:
        if not args.config:
            raise
        from_set = {text.partition("=")[0].strip() for text in args.overrides}
        from_file = set(read_config_file(args.config)) - from_set
        if any(key in str(exc) for key in from_file):
            raise ConfigError(f"{exc} (in --config {args.config})") from None
        raise


def print_config(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    """Every key of the resolved configuration as YAML; no data, store or checkpoint is touched."""
    import yaml

    flat = plan_from_file(args, overrides).flat_config()
    print(yaml.safe_dump(flat, sort_keys=False, default_flow_style=False), end="")
    return 0


def _ui_hint(store: Env | str) -> str:
    """The ``mlflow ui`` command for the store (an Env or its URI), shell-quoted, password masked."""
    import shlex

    from sparsebench.tracking import mask_uri

    uri = store if isinstance(store, str) else store.tracking_uri
    return f"mlflow ui --backend-store-uri {shlex.quote(mask_uri(uri))}"


def _train(args: argparse.Namespace, overrides: dict[str, Any], env: Env) -> Any:
    from sparsebench.config import parse_assignment
    from sparsebench.run.plan import RunRequest
    from sparsebench.run.refinish import refinish
    from sparsebench.run.train import train

    request = RunRequest(
        task=args.task or "",
        method=args.method or "",
        overrides=overrides,
        env=env,
        resume=args.resume,
        init_from=args.init_from,
        stop_after=args.stop_after,
        progress=not args.no_progress,
        tags=dict(parse_assignment(text, "--tag", example="study=table1") for text in args.tags),
        keep_checkpoint=args.keep_checkpoint,
        record_path=args.record,
    )
    return refinish(request, args.refinish) if args.refinish else train(request)
