"""``sparsebench experiment``: experiments that measure something other than a trained row's error.

``gradient-variance`` reproduces Table 1 of Kingma, Salimans, Welling (2015): the variance of the
minibatch gradient under the local reparameterisation trick, separate weight samples per example,
one weight sample per minibatch and no noise (docs/experiments.md).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

DEFAULT_OUT = "reports/kingma2015/gradient-variance"

EXAMPLES = f"""examples:
  sparsebench experiment gradient-variance                      # 10 and 100 epochs -> {DEFAULT_OUT}
  sparsebench experiment gradient-variance --epochs 10 40 --repeats 40 --separate-repeats 10
  OMP_NUM_THREADS=1 sparsebench experiment gradient-variance --max-hours 1.5 --out /tmp/gv
"""

INT_OPTIONS: dict[str, tuple[int, str]] = {
    "repeats": (50, "minibatch gradients per estimator and point (fresh minibatch and noise each)"),
    "separate_repeats": (0, "repetitions of the slow separate-weight-samples estimator (0 = --repeats)"),
    "groups": (5, "independent groups the repetitions are cut into for the standard error"),
    "batch_size": (1000, "examples per measured minibatch (the paper: 1000)"),
    "train_batch_size": (200, "examples per training step"),
    "width": (1024, "units per hidden layer"),
    "hidden_layers": (3, "hidden layers"),
    "seed": (0, "seed of initialisation, batch order and noise"),
    "val_size": (5000, "training examples held out (the data task's fixed validation split)"),
    "chunk": (16, "examples sharing one per-example weight tensor in the separate estimator (memory)"),
    "threads": (0, "torch CPU threads (0 = torch's default)"),
}
FLOAT_OPTIONS: dict[str, tuple[float, str]] = {
    "lr": (1e-3, "Adam learning rate"),
    "p_input": (0.2, "initial drop rate (alpha = p / (1 - p)) of the input layer's weights"),
    "p_hidden": (0.5, "initial drop rate of every other layer's weights"),
    "max_hours": (0.0, "stop training early enough to measure within this wall time (0 = no limit)"),
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "experiment",
        help="run a paper's measurement experiment (gradient-variance)",
        description="Experiments that reproduce a paper's measurement rather than a trained row.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    inner = p.add_subparsers(dest="experiment_name", metavar="EXPERIMENT")
    gv = inner.add_parser(
        "gradient-variance",
        help="Kingma et al. 2015 Table 1: variance of four minibatch gradient estimators",
        description="Train the paper's 784-1024-1024-1024-10 network with variational dropout B and, "
        "after each --epochs point, measure the average variance of the bottom and top layer's "
        "minibatch gradient under the local reparameterisation trick, separate weight samples, a "
        "single weight sample and no noise. Writes gradient_variance.json, table.md and table.csv.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    gv.add_argument("--epochs", nargs="+", default=["10", "100"], help="points of training (default: 10 100)")
    for name, (default, text) in {**INT_OPTIONS, **FLOAT_OPTIONS}.items():
        gv.add_argument(
            f"--{name.replace('_', '-')}", default=str(default), help=f"{text} (default: {default})"
        )
    gv.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    gv.add_argument("--overwrite", action="store_true", help="replace a record already in --out")
    gv.add_argument(
        "--data-dir", help="dataset root (default: $SPARSEBENCH_DATA, else ~/.cache/sparsebench/data)"
    )
    gv.set_defaults(handler=handle_gradient_variance)
    p.set_defaults(handler=lambda args: p.print_help() or 2)


def _number(flag: str, text: str, kind: type) -> Any:
    from sparsebench.errors import ConfigError

    try:
        return kind(text)
    except ValueError:
        raise ConfigError(
            f"--{flag.replace('_', '-')} expects {'an integer' if kind is int else 'a number'}, got {text!r}"
        ) from None


def config_from(args: argparse.Namespace) -> Any:
    """The experiment's configuration from the flags; malformed numbers are one-line errors."""
    from sparsebench.experiments.gradient_variance import GradientVarianceConfig

    values: dict[str, Any] = {"epochs": tuple(_number("epochs", e, int) for e in args.epochs)}
    values |= {k: _number(k, getattr(args, k), int) for k in INT_OPTIONS if k != "threads"}
    values |= {k: _number(k, getattr(args, k), float) for k in FLOAT_OPTIONS}
    cfg = GradientVarianceConfig(**values)
    cfg.check()
    return cfg


def handle_gradient_variance(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sparsebench.data.paths import data_root
    from sparsebench.errors import ConfigError
    from sparsebench.experiments import gradient_variance_record as gvr
    from sparsebench.experiments.gradient_variance import run
    from sparsebench.run.plan import configure_cpu

    cfg = config_from(args)
    threads = _number("threads", args.threads, int)
    if threads < 0:
        raise ConfigError(f"--threads must be at least 0, got {threads}")
    out = Path(args.out)
    if (out / gvr.RECORD_NAME).exists() and not args.overwrite:
        raise ConfigError(f"{out / gvr.RECORD_NAME} exists; pass --overwrite to replace it or choose --out")
    configure_cpu(threads)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    rec = run(cfg, data_root(args.data_dir), out, log)
    print((out / "table.md").read_text() if rec.points else "no point was measured")
    return 0
