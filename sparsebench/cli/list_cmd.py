"""``sparsebench list``: the registered methods and tasks, with their configs and origins."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

EXAMPLES = """examples:
  sparsebench list
  sparsebench list methods --verbose
  sparsebench list tasks
  sparsebench list methods --json
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
    p.add_argument("--json", action="store_true", help="everything --verbose shows, as one JSON object")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from sparsebench.config import describe
    from sparsebench.registry import METHODS, TASKS

    registries = {"methods": METHODS, "tasks": TASKS}
    if args.json:
        chosen = {kind: r for kind, r in registries.items() if args.what in (None, kind)}
        print(json.dumps({kind: registry_json(r) for kind, r in chosen.items()}, indent=2, default=str))
        return 0
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


def registry_json(registry: Any) -> dict[str, Any]:
    """A registry for scripts: each entry with its paper, origin, config fields and references."""
    from sparsebench.config import field_help

    entries = []
    for entry in registry.entries():
        obj = entry.obj
        config = [
            {"key": f.name, "default": _default(f), "help": field_help(f)}
            for f in dataclasses.fields(obj.Config)
        ]
        entries.append(
            {
                "name": entry.name,
                "description": obj.description,
                "paper": obj.paper,
                "origin": entry.origin,
                "config": config,
                "references": [dataclasses.asdict(ref) for ref in getattr(obj, "references", ())],
            }
        )
    broken = [{"name": name, "reason": why} for name, why in registry.broken.items()]
    return {"entries": entries, "broken": broken}


def _default(f: dataclasses.Field) -> Any:
    """A field's default as a JSON value (tuples become lists); None when the field has none."""
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return None
    return list(value) if isinstance(value, tuple) else value
