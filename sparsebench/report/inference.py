"""The report's sparse-inference table, from what ``sparsebench bench RUN`` logged to each run."""

from __future__ import annotations

import pandas as pd

from sparsebench.report.formatting import fmt_count, fmt_value, fmt_x, show_setting
from sparsebench.report.tables import Table


def inference_table(runs: pd.DataFrame, inference: pd.DataFrame) -> Table | None:
    """Per timed run, device and batch size: dense time, the fastest correct format, the smallest one."""
    timed = inference[inference.run_id.isin(set(runs.run_id)) & (inference.status == "ok")]
    if timed.empty:
        return None
    keys = runs.set_index("run_id")[["method", "setting"]]
    rows = []
    for (run_id, device, batch), group in timed.groupby(["run_id", "device", "batch_size"], sort=False):
        dense = group[group.format == "dense"]
        if dense.empty:
            continue
        fastest, smallest = group.loc[group.ms.idxmin()], group.loc[group.bytes.idxmin()]
        rows.append(
            {
                "method": keys.loc[run_id, "method"],
                "setting": keys.loc[run_id, "setting"],
                "run_id": run_id,
                "compression": fastest.ideal,
                "device": device,
                "batch_size": int(batch),
                "dense_ms": dense.ms.iloc[0],
                "fastest_format": fastest.format,
                "fastest_ms": fastest.ms,
                "speedup": fastest.speedup,
                "fraction_of_ideal": fastest.fraction_of_ideal,
                "smallest_format": smallest.format,
                "smallest_bytes": smallest.bytes,
                "dense_bytes": dense.bytes.iloc[0],
            }
        )
    if not rows:
        return None
    numbers = pd.DataFrame(rows).sort_values(["method", "setting", "run_id", "device", "batch_size"])
    display = _display(numbers)
    if not show_setting(runs):
        display = display.drop(columns="setting")
    said = []  # a column with one value is said once in the note rather than in every row
    if numbers.device.nunique() == 1:
        display = display.drop(columns="device")
        said.append(f"Timed on {numbers.device.iloc[0]}.")
    if numbers.dense_bytes.nunique() == 1:
        display = display.drop(columns="dense bytes")
        said.append(f"The dense model takes {fmt_count(numbers.dense_bytes.iloc[0])} bytes.")
    note = (
        " ".join([*said, ""])
        + "From `sparsebench bench RUN` (each run's `inference/<device>.csv`, environment beside it). "
        "Every format's outputs match the dense masked model on the whole test set before it is timed; "
        "times are medians over timed blocks, speedups against dense in the same process; the ideal "
        "speedup is the compression ratio (the fraction of it reached is in inference.csv). Fastest and "
        "smallest: the format with the least time and the one with the fewest bytes. The per-format "
        "rows are in the runs' CSV files."
    )
    return Table(
        "inference", "Sparse inference", numbers.reset_index(drop=True), display.reset_index(drop=True), note
    )


def _display(numbers: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "method": numbers.method,
            "setting": numbers.setting,
            "run": numbers.run_id.str[:8],
            "compression": numbers.compression.map(fmt_x),
            "device": numbers.device,
            "batch": numbers.batch_size.astype(str),
            "dense ms": numbers.dense_ms.map(lambda v: fmt_value(v, 3)),
            "fastest": numbers.fastest_format,
            "ms": numbers.fastest_ms.map(lambda v: fmt_value(v, 3)),
            "speedup": numbers.speedup.map(lambda v: f"{v:.2f}x"),
            "smallest": numbers.smallest_format,
            "bytes": numbers.smallest_bytes.map(fmt_count),
            "dense bytes": numbers.dense_bytes.map(fmt_count),
        }
    )
