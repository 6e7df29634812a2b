"""``sparsebench completion SHELL``: a tab-completion script for bash or zsh, generated with shtab.

argparse has no completion of its own; shtab turns the parser itself into a script, so every
subcommand and flag completes as ``--help`` lists it. The script is static: method and task names
are written into it, so regenerate it after installing a plugin.
"""

from __future__ import annotations

import argparse
from typing import Any

SHELLS = ("bash", "zsh")
EXAMPLES = """examples:
  sparsebench completion bash > ~/.local/share/bash-completion/completions/sparsebench
  sparsebench completion zsh > "${fpath[1]}/_sparsebench"    # then start a new shell
"""
PLUGIN_FLAGS = {"method": "METHODS", "methods": "METHODS", "task": "TASKS", "tasks": "TASKS"}
"""Flags (by dest) whose values are registered names: completed from the registries."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "completion",
        help="print a shell completion script (bash, zsh)",
        description="Print a tab-completion script for the shell; it needs the optional shtab "
        "package (pip install 'sparsebench[completion]').",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("shell", choices=SHELLS, help="the shell to complete in")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from sparsebench.cli import build_parser
    from sparsebench.errors import ConfigError

    try:
        import shtab
    except ImportError:
        raise ConfigError(
            "shell completion needs the shtab package: pip install 'sparsebench[completion]'"
        ) from None
    parser = build_parser()
    annotate(parser, shtab)
    script = shtab.complete(parser, shell=args.shell)
    print(script, end="" if script.endswith("\n") else "\n")
    return 0


def annotate(parser: argparse.ArgumentParser, shtab: Any) -> None:
    """Teach the completion what values flags take: plugin names, files and folders.

    Only this copy of the parser is changed (``choices`` here would make argparse itself strict).
    """
    from sparsebench import registry

    seen: set[int] = set()
    stack = [parser]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(action.choices.values())
            elif action.dest in PLUGIN_FLAGS and action.option_strings:
                action.choices = [e.name for e in getattr(registry, PLUGIN_FLAGS[action.dest]).entries()]
            elif action.dest == "data_dir":
                action.complete = shtab.DIRECTORY  # type: ignore[attr-defined]
            elif action.metavar == "FILE" or action.dest == "out":
                action.complete = shtab.FILE  # type: ignore[attr-defined]
