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
import functools
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

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
    Ctrl-C pressed a second time (on a store that hangs) stops the block at once.
    """
    if not _in_main_thread():
        yield
        return
    received: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and signum in received:
            raise KeyboardInterrupt
        received.append(signum)

    previous: dict[int, Any] = {}
    try:
        for number in HELD_SIGNALS:  # inside the try: a signal pending here still gets undone
            previous[number] = signal.signal(number, hold)
        yield
    finally:
        restores = [functools.partial(_restore, number, handler) for number, handler in previous.items()]
        deliveries = [functools.partial(signal.raise_signal, number) for number in dict.fromkeys(received)]
        _each_despite_interrupts([*restores, *deliveries])


def _restore(number: int, handler: Any) -> None:
    """Put ``handler`` back; None (one installed outside Python) becomes the default, the closest."""
    signal.signal(number, signal.SIG_DFL if handler is None else handler)


def _each_despite_interrupts(steps: list[Callable[[], object]]) -> None:
    """Run every step even when one raises (``signal.signal`` runs pending handlers first, and one of
    them may raise ``KeyboardInterrupt``): a handler left as ``hold`` would swallow every later Ctrl-C."""
    if not steps:
        return
    try:
        steps[0]()
    finally:
        _each_despite_interrupts(steps[1:])
