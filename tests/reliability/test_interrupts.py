"""Ctrl-C and SIGTERM wait for a store write to end, then stop the run as before."""

from __future__ import annotations

import os
import signal

import pytest

from sparsebench.interrupts import interrupts_held, sigterm_as_interrupt
from sparsebench.tracking.writer import Tracker


def test_ctrl_c_inside_the_block_is_delivered_after_it() -> None:
    finished = []
    with pytest.raises(KeyboardInterrupt), interrupts_held():
        os.kill(os.getpid(), signal.SIGINT)
        finished.append("the write")
    assert finished == ["the write"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_sigterm_reaches_the_handler_the_block_found_once() -> None:
    delivered: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda number, frame: delivered.append(number))
    try:
        with interrupts_held():
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
            assert delivered == []
        assert delivered == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_quiet_block_delivers_nothing_and_restores_the_handlers() -> None:
    before = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    with interrupts_held():
        pass
    assert {number: signal.getsignal(number) for number in before} == before


def test_sigterm_in_a_run_becomes_keyboard_interrupt_and_the_old_handler_returns() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), sigterm_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) == before


def test_a_metric_write_interrupted_by_ctrl_c_is_whole(quick_tracking_uri: str) -> None:
    """The signal lands inside ``log_metrics``; the batch is stored and the interrupt follows it."""
    tracker = Tracker.open(quick_tracking_uri, "sparsebench")
    client = tracker.client
    original = client.log_batch

    def interrupted_write(*args: object, **kwargs: object) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        original(*args, **kwargs)

    client.log_batch = interrupted_write  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        tracker.log_metrics({"val_metric": 1.5, "sparsity": 0.25}, step=3)
    client.log_batch = original  # type: ignore[method-assign]
    logged = client.get_run(tracker.run_id).data.metrics
    assert logged == {"val_metric": 1.5, "sparsity": 0.25}


def test_ctrl_c_twice_stops_a_block_that_hangs() -> None:
    """A store that never answers must not make the process deaf: the second Ctrl-C ends the block."""
    finished = []
    with pytest.raises(KeyboardInterrupt), interrupts_held():
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        finished.append("the rest of the write")
    assert finished == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
