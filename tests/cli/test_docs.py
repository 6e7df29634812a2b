"""docs/cli.md keeps up with the parser: every command has a section and every long flag is named."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from sparsebench.cli import build_parser

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
CHECKED = ("run", "list", "bench", "data", "gc", "completion")
"""Commands whose every flag is pinned here (the others' sections are kept by their own tests)."""


def subparsers() -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


@pytest.mark.parametrize("command", CHECKED)
def test_every_flag_is_documented(command: str) -> None:
    doc = DOC.read_text()
    assert f"\n## {command}\n" in doc and f"[`{command}`](#{command})" in doc
    flags = [o for a in subparsers()[command]._actions for o in a.option_strings if o.startswith("--")]
    missing = [f for f in flags if f != "--help" and f"`{f}" not in doc and f" {f}" not in doc]
    assert not missing, f"docs/cli.md does not name {missing} of `sparsebench {command}`"


def test_report_json_is_documented() -> None:
    assert "| `--json` | print what was written" in DOC.read_text()
