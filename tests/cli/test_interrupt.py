"""Ctrl-C outside the training loop (data loading, planning, reading a store) is one line and exit 130."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CliResult


def ctrl_c(*args: Any, **kwargs: Any) -> Any:
    raise KeyboardInterrupt


def interrupted(run_cli: Callable[..., CliResult], *argv: object) -> CliResult:
    try:
        return run_cli(*argv)
    except KeyboardInterrupt:  # what the old main let through: a traceback for the user
        pytest.fail("KeyboardInterrupt escaped sparsebench.cli.main")


def test_ctrl_c_while_a_run_loads_its_data(
    mnist_dir: Path,
    quick_tracking_uri: str,
    run_cli: Callable[..., CliResult],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sparsebench.tasks import _mnist

    monkeypatch.setattr(_mnist, "load_mnist", ctrl_c)
    result = interrupted(
        run_cli, "run", "--method", "dense", "--task", "lenet300_100", "--data-dir", mnist_dir,
        "--tracking-uri", quick_tracking_uri, "--no-progress",
    )  # fmt: skip
    assert result.code == 130
    assert result.err == "sparsebench run: interrupted (Ctrl-C)\n"
    assert result.out == ""


def test_ctrl_c_in_a_command_outside_training(
    run_cli: Callable[..., CliResult], monkeypatch: pytest.MonkeyPatch
) -> None:
    from sparsebench.registry import METHODS

    monkeypatch.setattr(METHODS, "entries", ctrl_c)
    result = interrupted(run_cli, "list")
    assert (result.code, result.err) == (130, "sparsebench list: interrupted (Ctrl-C)\n")


SLOW_DATA = """
import sys, time
from sparsebench.tasks import _mnist

def slow(root):
    print("loading data", file=sys.stderr, flush=True)
    time.sleep(300)

_mnist.load_mnist = slow
from sparsebench.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigint_while_a_real_process_loads_data(mnist_dir: Path, tmp_path: Path) -> None:
    """SIGINT as a terminal sends it, while the data loads: one line, exit 130, no traceback."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SPARSEBENCH_CHECKPOINTS": str(tmp_path / "ck")}
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_DATA, "run", "--method", "dense", "--task", "lenet300_100",
         "--data-dir", str(mnist_dir), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
         "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:  # wait until the command is inside the data loading
        seen.append(line)
        if line.startswith("loading data"):
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, "".join(seen) + err
    assert "Traceback" not in err and err == "sparsebench run: interrupted (Ctrl-C)\n"
    assert out == ""


def test_a_reader_that_leaves_early_is_no_traceback(tmp_path: Path) -> None:
    """``sparsebench list --json | head -1``: the pipe closes before the output is written."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the command writes
    proc = subprocess.run(
        [sys.executable, "-m", "sparsebench", "list", "--verbose"],
        stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120,
    )  # fmt: skip
    os.close(write_end)
    assert proc.returncode == 141, proc.stderr
    assert proc.stderr == ""
