"""docs/cli.md documents every flag of `campaign` (each action), `import` and the records flags."""

from __future__ import annotations

import argparse
from pathlib import Path

from sparsebench.cli import build_parser

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def _sub(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def _flags(parser: argparse.ArgumentParser) -> list[str]:
    return [
        o
        for a in parser._actions
        if a.help != argparse.SUPPRESS
        for o in a.option_strings
        if o.startswith("--")
    ]


def test_campaign_import_and_records_flags_are_documented() -> None:
    doc = DOC.read_text()
    commands = _sub(build_parser())
    parsers = [*_sub(commands["campaign"]).values(), commands["import"]]
    for command in ("campaign", "import"):
        assert f"\n## {command}\n" in doc and f"[`{command}`](#{command})" in doc
    flags = {f for p in parsers for f in _flags(p)} | {
        "--records",
        "--leaderboard",
        "--readme",
        "--row",
        "--seed",
    }
    missing = sorted(f for f in flags if f != "--help" and f"`{f}" not in doc and f" {f}" not in doc)
    assert not missing, f"docs/cli.md does not name {missing}"
