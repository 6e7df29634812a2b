"""``sparsebench bench``: inference of trained runs in sparse formats, break-even sparsity, training cost.

Three questions, one command: ``bench RUN`` (is the compressed model smaller and faster, in
which format?), ``bench --break-even`` (from which sparsity do CSR kernels pay off here?) and
``bench --train`` (what does a method cost per training step against dense?).
"""

from __future__ import annotations

import argparse
from typing import Any

from sparsebench.cli._common import add_env_flags, env_from

EXAMPLES = """examples:
  sparsebench bench 8d665fe2e6944fd1b39652a56b87c492
  sparsebench bench --runs RUN1 RUN2 --batch-sizes 1 64 1024
  sparsebench bench RUN --threads 0          # every core (torch's default) instead of one
  sparsebench bench RUN --formats dense thinned thinned_scipy_csr --device cuda
  sparsebench bench --break-even --tasks lenet300_100 lenet5
  sparsebench bench --train --tasks lenet300_100 --methods dense sparse_vd --steps 300
  sparsebench bench --train --tasks lenet300_100 --methods dense l0 l0:granularity=weight
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="sparse inference of trained runs; break-even sparsity; training throughput",
        epilog=EXAMPLES,
        description="Inference: every export format of a finished run checked against the dense "
        "masked model on the test set, then timed (latency and throughput per batch size, bytes, "
        "speedup vs dense, share of the ideal speedup) and logged to the run. --break-even: the "
        "sparsity at which CSR beats dense per layer shape. --train: training throughput vs dense.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_ids", nargs="*", metavar="RUN", help="MLflow run ids of finished runs")
    p.add_argument("--runs", nargs="+", default=[], metavar="RUN", help="more run ids")
    p.add_argument("--break-even", action="store_true", help="sweep random masks per layer shape of --tasks")
    p.add_argument("--train", action="store_true", help="training throughput of --methods on --tasks")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads while timing (default 1: ratios stay honest on a shared machine; "
        "0 = torch's default, every core)",
    )
    p.add_argument("--json", action="store_true", help="print the table as JSON records")
    inference = p.add_argument_group("inference (RUN ...)")
    inference.add_argument("--formats", nargs="+", help="formats to time (default: all; see below)")
    inference.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 64, 1024])
    inference.add_argument("--repeats", type=int, default=15, help="timed blocks per measurement")
    inference.add_argument("--warmup", type=int, default=3, help="untimed calls first")
    add_env_flags(inference, device=False, experiment=False)
    inference.add_argument("--no-log", action="store_true", help="do not log the results to the runs")
    shared = p.add_argument_group("--break-even and --train")
    shared.add_argument("--tasks", nargs="+", default=["lenet300_100", "lenet5"])
    shared.add_argument("--backends", nargs="+", choices=["torch", "scipy"], default=["torch", "scipy"])
    shared.add_argument("--out", help="--break-even: also write the full sweep to this CSV file")
    training = p.add_argument_group("--train")
    variants = "method names, or NAME:KEY=VALUE,... with settings of its own (l0:granularity=weight)"
    training.add_argument("--methods", nargs="+", default=["dense", "sparse_vd"], help=variants)
    training.add_argument(
        "--steps", type=int, default=200, help="timed optimiser steps per method, split across --rounds"
    )
    training.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="interleaved rounds the steps are split into (x_dense: the median of the rounds' ratios)",
    )
    training.add_argument(
        "--compile",
        choices=["always", "never"],
        default="always",
        help="use the methods' compiled kernels (what long runs use)",
    )
    training.add_argument(
        "--no-breakdown", action="store_true", help="skip the per-phase and per-operation passes"
    )
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:

    from sparsebench.errors import ConfigError
    from sparsebench.run.plan import configure_cpu, resolve_device

    runs = [*args.run_ids, *args.runs]
    modes = [bool(runs), args.break_even, args.train]
    if sum(modes) != 1:
        raise ConfigError(
            "give run ids to time their inference, or --break-even, or --train (exactly one of them)"
        )
    if args.threads < 0:
        raise ConfigError(f"--threads must be 1 or more (0: torch's default), got {args.threads}")
    configure_cpu(args.threads)
    device = resolve_device(args.device)
    if args.train:
        return _train(args, device)
    if args.break_even:
        return _break_even(args, device)
    return _inference(args, runs, device)


def warn_if_busy(args: argparse.Namespace) -> None:
    """Say loudly, once, that a busy machine makes timings unreliable.

    Called after the input was checked (bad input stays one line) and before anything is timed.
    """
    import sys

    from sparsebench.bench.timing import busy_machine

    if getattr(args, "busy_checked", False):
        return
    args.busy_checked = True
    busy = busy_machine()
    if busy is not None:
        load, cores = busy
        print(
            f"sparsebench bench: WARNING: this machine is busy (1-minute load {load:.1f} on {cores} cores): "
            "timings and speedups can be off by a large factor; time on an idle machine, with --threads 1",
            file=sys.stderr,
        )


def _inference(args: argparse.Namespace, runs: list[str], device: Any) -> int:
    import pandas as pd

    from sparsebench.bench.inference import (
        bench_formats,
        best_rows,
        environment,
        load_run,
        log_to_run,
        resolve_runs,
    )
    from sparsebench.errors import ConfigError
    from sparsebench.inference.formats import FORMATS

    unknown = sorted(set(args.formats or []) - set(FORMATS))
    if unknown:
        raise ConfigError(f"unknown format {', '.join(unknown)}; formats: {', '.join(FORMATS)}")
    if any(b < 1 for b in args.batch_sizes):
        raise ConfigError("--batch-sizes must be positive")
    where = env_from(args)
    store = where.store
    tables = []
    for run_id in resolve_runs(store, runs):  # full ids first: a typo costs no timing
        run = load_run(run_id, store, where.data_dir)
        warn_if_busy(args)
        env = environment(device)
        table = bench_formats(
            run.model,
            run.task.example_input(device),
            run.test_inputs,
            device,
            args.formats,
            tuple(args.batch_sizes),
            run.compression,
            args.repeats,
            args.warmup,
            reset=lambda model, task=run.task: task.on_pass_start(model, training=False),
        )
        table.insert(0, "run_id", run_id)
        table.insert(1, "task", run.task.name)
        table.insert(2, "method", run.method)
        if not args.no_log:
            log_to_run(run_id, store, table, env)
        tables.append(table)
        if not args.json:
            head = f"run {run_id}: {run.task.name} {run.method}, compression {run.compression:.1f}x"
            print(f"{head}; {_env_line(env)}")
            print(_display(table).to_string(index=False))
            for row in best_rows(table).itertuples():
                print(f"  fastest at batch {row.batch_size}: {row.format}, {row.speedup:.2f}x dense")
            print()
    if args.json:
        print(pd.concat(tables).to_json(orient="records"))
    return 0


def _env_line(env: dict[str, Any]) -> str:
    parts = [
        env["device"],
        env.get("gpu") or env["cpu"],
        f"{env['threads']} threads",
        f"torch {env['torch']}",
    ]
    if env.get("load_average_1min") is not None:
        parts.append(f"load {env['load_average_1min']:.2f}")
    return ", ".join(parts)


def _display(table: Any) -> Any:
    """The columns a reader compares, formatted; failures and unsupported pairs keep their reason."""
    import pandas as pd

    def fmt(row: pd.Series) -> dict[str, str]:
        base = {"format": row.format, "batch": str(row.batch_size), "status": row.status}
        if row.status != "ok":
            return {**base, "note": row.reason}
        return {
            **base,
            "ms (median)": f"{row.ms:.4g}",
            "IQR ms": f"{row.ms_q1:.3g}-{row.ms_q3:.3g}",
            "examples/s": f"{row.examples_per_s:,.0f}",
            "speedup": f"{row.speedup:.2f}x",
            "of ideal": f"{100 * row.fraction_of_ideal:.1f}%",
            "bytes": f"{row.bytes:,}",
            "smaller": f"{row.size_ratio:.1f}x",
            "note": row.reason,
        }

    return pd.DataFrame([fmt(r) for _, r in table.iterrows()]).fillna("")


def _break_even(args: argparse.Namespace, device: Any) -> int:
    import pandas as pd
    import torch

    from sparsebench.bench.breakeven import break_even_table, layer_shapes, sweep_layer
    from sparsebench.registry import TASKS

    backends = [b for b in args.backends if device.type == "cpu" or b == "torch"]
    if not backends:
        from sparsebench.errors import ConfigError

        raise ConfigError("scipy.sparse runs on the CPU only; use --backends torch on a GPU")
    tasks = [TASKS.get(name)() for name in args.tasks]  # a misspelt name is refused before any timing
    warn_if_busy(args)
    sweeps = []
    for task in tasks:
        model = task.build_model()
        for shape in layer_shapes(model, task.example_input(torch.device("cpu"))):
            for batch in args.batch_sizes:
                for backend in backends:
                    sweep = sweep_layer(shape, batch, backend, device)
                    sweep.insert(0, "task", task.name)
                    sweeps.append(sweep)
    full = pd.concat(sweeps, ignore_index=True)
    if args.out:
        full.to_csv(args.out, index=False)
    table = pd.concat(
        [break_even_table(group).assign(task=task) for task, group in full.groupby("task", sort=False)]
    )
    table = table[["task", *[c for c in table.columns if c != "task"]]]
    if args.json:
        print(table.to_json(orient="records"))
    else:
        print(f"break-even sparsity on {device} ({_threads()} threads): CSR is faster above it (nan: never)")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    return 0


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _train(args: argparse.Namespace, device: Any) -> int:
    from sparsebench.bench.train import OP_KINDS, PHASES, bench, parse_method_spec
    from sparsebench.errors import ConfigError
    from sparsebench.registry import TASKS
    from sparsebench.run.plan import plan_run

    if args.rounds < 1 or args.steps < args.rounds:
        raise ConfigError(
            f"--rounds must be >= 1 and --steps >= --rounds (got {args.steps} steps, {args.rounds} rounds)"
        )
    for name in args.tasks:  # misspelt names are refused before any timing
        TASKS.get(name)
    for spec in args.methods:  # and settings a method does not have, before any timing
        plan_run(args.tasks[0], *parse_method_spec(spec))
    warn_if_busy(args)
    table = bench(
        args.tasks,
        args.methods,
        device,
        steps=args.steps,
        rounds=args.rounds,
        compile_kernels=args.compile == "always",
        breakdown=not args.no_breakdown,
    )
    if args.json:
        print(table.to_json(orient="records"))
        return 0
    fmt = {"float_format": lambda v: f"{v:.2f}", "index": False}
    shares = [f"%{k}" for k in (*PHASES, *OP_KINDS)]
    print(table[[c for c in table.columns if c not in shares]].to_string(**fmt))
    if set(shares) <= set(table.columns):
        print(
            "\nwhere the time goes, % of a step: by phase (synchronised timers), "
            "by kind of operation (profiler)"
        )
        print(table[["task", "method", *shares]].to_string(**fmt))
    return 0
