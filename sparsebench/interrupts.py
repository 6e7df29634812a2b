"""Ctrl-C and a scheduler's SIGTERM: where they may stop a run, and where they must wait.

A run stops on ``KeyboardInterrupt``: the runner marks it KILLED, keeps its checkpoint and prints the
resume command. Python raises that exception wherever the main thread happens to be, which is fine in
the middle of a training step but not inside a write to the tracking store: there SQLAlchemy catches
it while closing its cursor, logs "Error closing cursor" with a full traceback, and the write is half
done. Store writes therefore hold both signals for the few milliseconds they take and deliver them
right after.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _in_main_thread() -> bool:
    """Only the main thread may install signal handlers (and only it receives the signals)."""
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """A job scheduler's SIGTERM ends the block like Ctrl-C, so the run is marked KILLED and resumable."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    if not _in_main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM while the block runs, then deliver each one received, once.

    Delivery re-raises the signal under the handlers the block found, so whatever they do (raise
    ``KeyboardInterrupt``, end the process by default) happens right after the block, never inside it.
    """
    if not _in_main_thread():
        yield
        return
    received: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    previous = {number: signal.signal(number, hold) for number in HELD_SIGNALS}
    try:
        yield
    finally:
        for number, handler in previous.items():
            # None: a handler installed outside Python; the default is the closest we can restore.
            signal.signal(number, signal.SIG_DFL if handler is None else handler)
        for number in dict.fromkeys(received):
            signal.raise_signal(number)
