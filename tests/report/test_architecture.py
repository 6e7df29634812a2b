"""The architecture table: units kept per layer counted from records, beside a paper's quoted string."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sparsebench.report.architecture import architecture_table, units_kept
from sparsebench.report.records import load_records

from .records_folder import FakeCell, write_records_folder


def layer(name: str, kind: str, units: tuple[int, int], removed: tuple[int, int]) -> dict[str, object]:
    """One row of a record's per-layer table: (in, out) units and how many of each lost every weight."""
    return {
        "layer": name,
        "kind": kind,
        "shape": f"{units[1]}x{units[0]}",
        "weights": units[0] * units[1],
        "nonzeros": 1,
        "sparsity": 50.0,
        "in_units": units[0],
        "in_units_removed": removed[0],
        "out_units": units[1],
        "out_units_removed": removed[1],
    }


def lenet300(kept_inputs: tuple[int, int, int]) -> list[dict[str, object]]:
    sizes = ((784, 300), (300, 100), (100, 10))
    return [
        layer(f"fc{i + 1}", "Linear", size, (size[0] - kept, 0))
        for i, (size, kept) in enumerate(zip(sizes, kept_inputs, strict=True))
    ]


def test_units_kept_are_filters_of_convolutions_and_inputs_of_linear_layers() -> None:
    layers = pd.DataFrame(
        [
            {**layer("conv1", "Conv2d", (1, 20), (0, 12)), "position": 0},
            {**layer("conv2", "Conv2d", (20, 50), (12, 37)), "position": 1},
            {**layer("fc1", "Linear", (800, 500), (712, 400)), "position": 2},
            {**layer("fc2", "Linear", (500, 10), (400, 0)), "position": 3},
        ]
    )
    assert units_kept(layers.iloc[::-1]) == [8, 13, 88, 100]


def test_table_shows_each_seed_the_mean_and_the_quoted_architecture(tmp_path: Path) -> None:
    rows = [
        {"name": "dense", "task": "lenet300_100", "method": "dense"},
        {
            "name": "l0",
            "task": "lenet300_100",
            "method": "l0",
            "paper": {"error": 1.4, "citation": "L0 Table 1", "architecture": "219-214-100"},
        },
        {
            "name": "l0-sep",
            "task": "lenet300_100",
            "method": "l0",
            "paper": {"error": 1.8, "citation": "x", "architecture": "266-88-33"},
        },
    ]
    cells = [
        FakeCell("dense", 0, 1.7, layers=lenet300((784, 300, 100))),
        FakeCell("l0", 0, 1.5, layers=lenet300((200, 210, 100))),
        FakeCell("l0", 1, 1.6, layers=lenet300((220, 215, 99))),
    ]
    records = load_records(write_records_folder(tmp_path / "camp", rows, cells))
    table = architecture_table(records)
    assert table is not None
    shown = table.display.set_index("row")
    assert "dense" not in shown.index  # removes no unit and quotes nothing
    assert shown.loc["l0", "units kept (each seed)"] == "200-210-100 / 220-215-99"
    assert shown.loc["l0", "mean"] == "210-212-100"  # 212.5 rounds to even
    assert shown.loc["l0", "of"] == "784-300-100"
    assert shown.loc["l0", "paper (quoted)"] == "219-214-100"
    assert shown.loc["l0-sep", "seeds"] == 0 and shown.loc["l0-sep", "paper (quoted)"] == "266-88-33"
