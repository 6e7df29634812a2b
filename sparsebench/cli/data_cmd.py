"""``sparsebench data``: download datasets and show where they are looked for."""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  sparsebench data download mnist
  sparsebench data download mnist --data-dir /data
  sparsebench data where
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="download datasets", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["download", "where"])
    p.add_argument("dataset", nargs="?", default="mnist")
    p.add_argument("--data-dir", help="dataset root (default: $SPARSEBENCH_DATA, else ~/.cache/sparsebench/data)")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from sparsebench.data.paths import data_root

    root = data_root(args.data_dir)
    if args.action == "where":
        print(root)
        return 0
    from sparsebench.data.download import download

    for path in download(args.dataset, root):
        print(path)
    return 0
