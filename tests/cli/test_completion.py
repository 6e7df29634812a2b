"""``sparsebench completion {bash,zsh}``: scripts generated from the parser itself (shtab, optional)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import CliResult

COMPLETE = """
source {script}
complete_words() {{
  COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMP_LINE="$*"; COMP_POINT=${{#COMP_LINE}}
  _shtab_sparsebench; printf '%s\\n' "${{COMPREPLY[@]}}"
}}
echo "== commands"; complete_words sparsebench g
echo "== flags"; complete_words sparsebench gc --dr
echo "== methods"; complete_words sparsebench run --method spars
echo "== tasks"; complete_words sparsebench bench --train --tasks lenet
"""


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completes_commands_flags_and_plugin_names(
    tmp_path: Path, run_cli: Callable[..., CliResult]
) -> None:
    pytest.importorskip("shtab")
    result = run_cli("completion", "bash")
    assert result.code == 0, result.err
    script = tmp_path / "sparsebench.bash"
    script.write_text(result.out)
    done = subprocess.run(
        ["bash", "-c", COMPLETE.format(script=script)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    sections = dict(part.split("\n", 1) for part in done.stdout.split("== ")[1:])
    assert "gc" in sections["commands"].split() and "run" not in sections["commands"].split()
    assert sections["flags"].split() == ["--dry-run"]
    assert "sparse_vd" in sections["methods"].split() and "dense" not in sections["methods"].split()
    assert {"lenet300_100", "lenet5"} <= set(sections["tasks"].split())


def test_zsh_script_names_every_command(run_cli: Callable[..., CliResult]) -> None:
    pytest.importorskip("shtab")
    from sparsebench.cli import SUBCOMMANDS

    result = run_cli("completion", "zsh")
    assert result.code == 0, result.err
    assert result.out.startswith("#compdef sparsebench")
    for command in SUBCOMMANDS:
        assert f"\n    {command}:" in result.out, command


def test_without_shtab_it_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, run_cli: Callable[..., CliResult]
) -> None:
    monkeypatch.setitem(sys.modules, "shtab", None)  # import shtab now raises ImportError
    result = run_cli("completion", "bash")
    assert result.code == 2 and result.out == ""
    assert result.err.splitlines() == [
        "sparsebench: error: shell completion needs the shtab package: pip install 'sparsebench[completion]'"
    ]


def test_the_real_parser_stays_lenient(run_cli: Callable[..., CliResult]) -> None:
    """Completion lists names as choices on its own copy; ``run --method sparsevd`` must still parse."""
    pytest.importorskip("shtab")
    from sparsebench.cli import build_parser

    run_cli("completion", "bash")
    args = build_parser().parse_args(["run", "--method", "SparseVD", "--task", "lenet5"])
    assert args.method == "SparseVD"
