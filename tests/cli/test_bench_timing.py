"""``bench`` times with one thread by default and warns loudly, before timing, on a busy machine."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from sparsebench.bench import timing
from tests.conftest import CliResult

BREAK_EVEN = ("bench", "--break-even", "--tasks", "lenet300_100")
WARNING = "sparsebench bench: WARNING: this machine is busy"


class Timed(Exception):
    """Raised where the first measurement would start: the test has seen what it needs by then."""


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """What the timing code would start with (threads, what stderr already holds); nothing is timed."""
    from sparsebench.bench import breakeven

    state: dict[str, Any] = {}

    def first_measurement(*args: Any, **kwargs: Any) -> Any:
        state["threads"] = torch.get_num_threads()
        state["stderr"] = sys.stderr.getvalue()  # run_cli captures stderr in a StringIO
        raise Timed

    monkeypatch.setattr(breakeven, "sweep_layer", first_measurement)
    before = torch.get_num_threads()
    yield state
    torch.set_num_threads(before)


def bench(run_cli: Callable[..., CliResult], *flags: str) -> None:
    with pytest.raises(Timed):
        run_cli(*BREAK_EVEN, *flags)


def idle(monkeypatch: pytest.MonkeyPatch, per_core: float) -> None:
    cores = os.cpu_count() or 1
    monkeypatch.setattr(os, "getloadavg", lambda: (per_core * cores, 0.0, 0.0))


@pytest.mark.parametrize(("flags", "threads"), [((), 1), (("--threads", "3"), 3), (("--threads", "0"), 2)])
def test_one_thread_unless_asked(
    flags: tuple[str, ...],
    threads: int,
    seen: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    run_cli: Callable[..., CliResult],
) -> None:
    """Default 1; ``--threads 0`` keeps torch's own count (2 here, as a fresh process would have its own)."""
    idle(monkeypatch, 0.0)
    torch.set_num_threads(2)
    bench(run_cli, *flags)
    assert seen["threads"] == threads


def test_a_busy_machine_is_warned_about_before_timing(
    seen: dict[str, Any], monkeypatch: pytest.MonkeyPatch, run_cli: Callable[..., CliResult]
) -> None:
    idle(monkeypatch, 0.9)
    bench(run_cli, "--json")
    (line,) = seen["stderr"].splitlines()  # said once, before the timing started
    assert line.startswith(WARNING) and f"on {os.cpu_count()} cores" in line and "--threads 1" in line


def test_an_idle_machine_gets_no_warning(
    seen: dict[str, Any], monkeypatch: pytest.MonkeyPatch, run_cli: Callable[..., CliResult]
) -> None:
    idle(monkeypatch, 0.3)
    bench(run_cli)
    assert seen["stderr"] == ""


def test_bad_input_on_a_busy_machine_is_still_one_line(
    monkeypatch: pytest.MonkeyPatch, run_cli: Callable[..., CliResult]
) -> None:
    idle(monkeypatch, 0.9)
    result = run_cli("bench", "--break-even", "--tasks", "lenet301")
    assert result.code == 2 and len(result.err.splitlines()) == 1 and "did you mean" in result.err


def test_busy_threshold_and_platforms_without_load(monkeypatch: pytest.MonkeyPatch) -> None:
    cores = os.cpu_count() or 1
    monkeypatch.setattr(os, "getloadavg", lambda: (0.6 * cores, 0.0, 0.0))
    assert timing.busy_machine() == (pytest.approx(0.6 * cores), cores)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.4 * cores, 0.0, 0.0))
    assert timing.busy_machine() is None
    monkeypatch.delattr(os, "getloadavg")
    assert timing.busy_machine() is None


def test_negative_threads_is_one_line(run_cli: Callable[..., CliResult]) -> None:
    result = run_cli(*BREAK_EVEN, "--threads", "-1")
    assert result.code == 2 and len(result.err.splitlines()) == 1 and "--threads must be" in result.err
