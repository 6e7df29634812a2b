"""``sparsebench bench``: training throughput of methods side by side, measured in one process."""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  sparsebench bench
  sparsebench bench --tasks lenet300_100 --methods dense sparse_vd --steps 300
  sparsebench bench --device cuda --compile never
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="training throughput of methods vs dense",
        epilog=EXAMPLES,
        description="Seconds per epoch, examples/s and the share of each phase of a step, "
        "for every (task, method) pair, measured in one process.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--tasks", nargs="+", default=["lenet300_100", "lenet5"])
    p.add_argument("--methods", nargs="+", default=["dense", "sparse_vd"])
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--steps", type=int, default=200, help="timed optimiser steps per pair")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument(
        "--compile",
        choices=["always", "never"],
        default="always",
        help="use the methods' compiled kernels (what long runs use)",
    )
    p.add_argument("--no-breakdown", action="store_true", help="skip the per-phase timing pass")
    p.add_argument("--json", action="store_true", help="print the table as JSON records")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    import torch

    from sparsebench.bench import bench
    from sparsebench.runner import resolve_device

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    table = bench(
        args.tasks,
        args.methods,
        resolve_device(args.device),
        steps=args.steps,
        compile_kernels=args.compile == "always",
        breakdown=not args.no_breakdown,
    )
    if args.json:
        print(table.to_json(orient="records"))
    else:
        print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    return 0
