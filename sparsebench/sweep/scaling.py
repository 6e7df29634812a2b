"""How a sweep's throughput scales with worker processes, measured in one command.

Each worker count runs the same spec as a fresh study in throwaway journal storage, one after the
other, so the counts see the same machine and the same trial budget; trials/hour is finished
trials over the wall time of the whole ``run_sweep`` call (process start-up, data loading and
MLflow logging included, as a user experiences them).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

from sparsebench.env import Env
from sparsebench.errors import ConfigError
from sparsebench.sweep.spec import SweepSpec
from sparsebench.sweep.workers import run_sweep


def measure_scaling(spec: SweepSpec, env: Env, worker_counts: list[int]) -> pd.DataFrame:
    """One row per worker count: trials finished, wall seconds, trials/hour and the ratio to the first."""
    if not worker_counts or any(n < 1 for n in worker_counts):
        raise ConfigError(f"--scaling needs worker counts of at least 1, got {worker_counts}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rows = []
    with tempfile.TemporaryDirectory(prefix="sparsebench-scaling-") as tmp:
        for workers in worker_counts:
            fresh = replace(
                spec,
                study=f"{spec.study}-scaling-{workers}w-{stamp}",
                storage=str(Path(tmp) / f"{workers}w.log"),
            )
            start = time.perf_counter()
            study, codes = run_sweep(fresh, env, workers)
            wall = time.perf_counter() - start
            finished = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
            durations = [
                (t.datetime_complete - t.datetime_start).total_seconds()
                for t in finished
                if t.datetime_start and t.datetime_complete
            ]
            rows.append(
                {
                    "workers": workers,
                    "trials": len(finished),
                    "wall_seconds": wall,
                    "trials_per_hour": 3600.0 * len(finished) / wall,
                    "seconds_per_trial": sum(durations) / max(1, len(durations)),
                    "worker_exit_codes": ",".join(map(str, codes)) or "0",
                }
            )
    table = pd.DataFrame(rows)
    table["ratio"] = table.trials_per_hour / table.trials_per_hour.iloc[0]
    return table
