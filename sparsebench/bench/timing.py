"""Timing a call: warm-up, blocks long enough for the clock, median and interquartile range.

One call of a small model at batch 1 lasts tens of microseconds, below what a single timer read
resolves reliably, so calls are timed in blocks sized to last ``block_seconds`` and
the per-call time is the block time over its length; on CUDA each block is synchronised, so queued
kernels are counted. The clock is ``torch.utils.benchmark``'s.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils import benchmark

BUSY_LOAD_PER_CORE = 0.5
"""Above this 1-minute load average per core, other processes take a share of the timed code's time."""


@dataclass(frozen=True)
class Timing:
    median_s: float
    q1_s: float
    q3_s: float
    calls_per_block: int
    blocks: int

    @property
    def iqr_s(self) -> float:
        return self.q3_s - self.q1_s


def measure(
    fn: Callable[[], object],
    device: torch.device,
    repeats: int = 15,
    warmup: int = 3,
    block_seconds: float = 0.01,
) -> Timing:
    """Seconds per call of ``fn``: median and quartiles over ``repeats`` blocks of ``block_seconds``.

    ``torch.utils.benchmark.Timer`` times each block (synchronising CUDA around it) with the
    caller's thread count: its default of one thread would silently change what is measured. The
    block length is doubled until a block lasts ``block_seconds``, then exactly ``repeats`` blocks
    are timed, so every timing has the same number of samples behind its quartiles.
    """
    for _ in range(warmup):
        fn()
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    calls = 1
    while calls < 1 << 16:
        elapsed = timer.timeit(calls).mean * calls
        if elapsed >= block_seconds:
            break
        calls = min(1 << 16, max(calls * 2, int(calls * block_seconds / max(elapsed, 1e-9))))
    per_call = sorted(timer.timeit(calls).mean for _ in range(max(1, repeats)))
    if len(per_call) >= 2:
        q1, median, q3 = statistics.quantiles(per_call, n=4, method="inclusive")
    else:
        q1 = median = q3 = per_call[0]
    return Timing(median, q1, q3, calls, len(per_call))


def busy_machine() -> tuple[float, int] | None:
    """(1-minute load average, cores) when the machine is busy, else None (also where load is unknown).

    On a loaded machine the timed code waits for cores in bursts, unevenly across formats and
    methods: with torch's default thread count an identical dense copy of a model was once timed
    at 51.6x the original; with one thread it came out at 1.00x.
    """
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average on this platform
        return None
    cores = os.cpu_count() or 1
    return (load, cores) if load > BUSY_LOAD_PER_CORE * cores else None
