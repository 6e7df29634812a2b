"""``sparsebench data``: download datasets and show where they are looked for."""

from __future__ import annotations

import argparse
import sys

EXAMPLES = """examples:
  sparsebench data download mnist
  sparsebench data download mnist --data-dir /data
  SPARSEBENCH_MNIST_MIRROR=https://example.org/mnist/ sparsebench data download mnist
  sparsebench data where
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data",
        help="download datasets",
        description="Download a dataset into the data root (verifying every file) or print that root.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("action", choices=["download", "where"])
    p.add_argument("dataset", nargs="?", default="mnist", help="dataset to download (default: mnist)")
    p.add_argument(
        "--data-dir", help="dataset root (default: $SPARSEBENCH_DATA, else ~/.cache/sparsebench/data)"
    )
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from sparsebench.data.paths import data_root

    root = data_root(args.data_dir)
    if args.action == "where":
        print(root)
        return 0
    from sparsebench.data.download import download

    paths = download(args.dataset, root)
    for path in paths:
        print(path)
    print(f"{args.dataset}: {len(paths)} files verified in {root}", file=sys.stderr)
    return 0
