"""``sparsebench`` command line: one module per subcommand, heavy imports deferred to the command."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys

from sparsebench.errors import SparsebenchError

SUBCOMMANDS = (
    "run", "sweep", "campaign", "report", "reproduce", "import", "bench", "experiment", "list", "data", "gc",
    "completion",
)  # fmt: skip


def package_version() -> str:
    """The installed distribution's version, so a wheel reports what pip installed.

    ``sparsebench.__version__`` is the fallback for a source tree run without installing it.
    """
    from importlib import metadata

    try:
        return metadata.version("sparsebench")
    except metadata.PackageNotFoundError:
        from sparsebench import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparsebench",
        description="Train, tune and compare neural-network sparsification methods.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n  sparsebench run --method sparsevd --task lenet5\n"
            "  sparsebench list methods --verbose"
        ),
    )
    parser.add_argument("--version", action="version", version=f"sparsebench {package_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"sparsebench.cli.{name}_cmd").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except SparsebenchError as exc:
        print(f"sparsebench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Ctrl-C while data loads, a run is planned or a store is read. Commands that can leave
        # work half done say what was kept themselves (a training run marks itself KILLED and keeps
        # its checkpoint; report and sweep too); elsewhere one line and the shell's code for SIGINT.
        print(f"sparsebench {args.command}: interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # ``sparsebench list | head``: the reader left; the rest of stdout goes nowhere, quietly.
        with contextlib.suppress(OSError, ValueError):  # a stdout without a descriptor (tests)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
