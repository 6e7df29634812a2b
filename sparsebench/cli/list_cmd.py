"""``sparsebench list``: the registered methods and tasks, with their configs and origins."""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  sparsebench list
  sparsebench list methods --verbose
  sparsebench list tasks
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "list",
        help="list methods and tasks",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("what", nargs="?", choices=["methods", "tasks"], help="only methods or only tasks")
    p.add_argument("--verbose", "-v", action="store_true", help="paper, config fields with defaults, origin")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from sparsebench.config import describe
    from sparsebench.registry import METHODS, TASKS

    registries = {"methods": METHODS, "tasks": TASKS}
    for kind, registry in registries.items():
        if args.what not in (None, kind):
            continue
        print(f"{kind}:")
        entries = registry.entries()
        width = max((len(e.name) for e in entries), default=0)
        for entry in entries:
            print(f"  {entry.name:<{width}}  {entry.obj.description}")
            if args.verbose:
                print(f"      paper:  {entry.obj.paper}")
                print(f"      origin: {entry.origin}")
                for name, default, help_text in describe(entry.obj.Config):
                    print(f"      {kind[:-1]}.{name} = {default}  # {help_text}")
                for ref in getattr(entry.obj, "references", ()):
                    print(f"      reference: {ref.method} {ref.error} {ref.compression}x ({ref.citation})")
        for name, why in registry.broken.items():
            print(f"  {name:<{width}}  BROKEN plugin: {why}")
    return 0
