"""``sparsebench run``: train one method on one task and print its paper-format row."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

EXAMPLES = """examples:
  sparsebench run --method sparsevd --task lenet300_100
  sparsebench run --method sparse_vd --task lenet5 --set train.epochs=50 --device cuda
  sparsebench run --method dense --task lenet5 --set train.epochs=20
  sparsebench run --method sparse_vd --task lenet5 --init-from <dense run id>
  sparsebench run --resume <run id>
  sparsebench run --refinish <run id>    # thresholds and metrics again, with this code
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
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:N]")
    p.add_argument(
        "--data-dir", help="dataset root (default: $SPARSEBENCH_DATA, else ~/.cache/sparsebench/data)"
    )
    p.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite under ./mlruns)",
    )
    p.add_argument("--experiment", default="sparsebench", help="MLflow experiment name")
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--init-from", metavar="RUN", help="initialise from the exported model of an earlier run")
    p.add_argument(
        "--refinish",
        metavar="RUN",
        help="calibrate, export and score a trained run's last checkpoint again with this code, as a new run",
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
    from sparsebench.config import parse_assignment
    from sparsebench.errors import ConfigError

    if args.refinish and (args.resume or args.method or args.task or args.init_from):
        raise ConfigError("--refinish RUN takes the run's own method, task and config; give it alone")
    if not (args.resume or args.refinish) and not (args.method and args.task):
        raise ConfigError("run needs --method and --task (or --resume RUN); see `sparsebench list`")
    overrides = dict(parse_assignment(text) for text in args.overrides)
    if (args.resume or args.refinish) and overrides:
        raise ConfigError("--set cannot change a resumed or re-finished run; start a new run instead")
    if args.resume and (args.method or args.task or args.init_from):
        raise ConfigError("--resume RUN continues the run's own method, task and config; give it alone")
    if args.stop_after is not None and args.stop_after < 1:
        raise ConfigError(f"--stop-after must be at least 1 epoch, got {args.stop_after}")
    with _sigterm_as_interrupt():
        result = _train(args, overrides)
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
    print(f"MLflow run {result.run_id}; open it with: {_ui_hint(args.tracking_uri)}", file=sys.stderr)
    return 0


def _ui_hint(tracking_uri: str | None) -> str:
    """The ``mlflow ui`` command for the store, shell-quoted, with any password masked."""
    import shlex

    from sparsebench.tracking import default_tracking_uri, mask_uri

    return f"mlflow ui --backend-store-uri {shlex.quote(mask_uri(tracking_uri or default_tracking_uri()))}"


def _train(args: argparse.Namespace, overrides: dict[str, Any]) -> Any:
    from sparsebench.config import parse_assignment
    from sparsebench.run.plan import RunRequest
    from sparsebench.run.refinish import refinish
    from sparsebench.run.train import train

    request = RunRequest(
        task=args.task or "",
        method=args.method or "",
        overrides=overrides,
        device=args.device,
        data_dir=args.data_dir,
        tracking_uri=args.tracking_uri,
        experiment=args.experiment,
        resume=args.resume,
        init_from=args.init_from,
        stop_after=args.stop_after,
        progress=not args.no_progress,
        tags=dict(parse_assignment(text, "--tag", example="study=table1") for text in args.tags),
        keep_checkpoint=args.keep_checkpoint,
        record_path=args.record,
    )
    return refinish(request, args.refinish) if args.refinish else train(request)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """A job scheduler's SIGTERM ends the run like Ctrl-C: marked KILLED, checkpoint kept, resumable."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():  # only the main thread may
        yield
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
