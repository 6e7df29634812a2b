"""Cells (one row, one seed), their files in the results folder, and which of them are done.

``<results>/runs/<row>-seed<k>.json`` is a cell's run record; ``<row>-seed<k>.model.npz`` beside it is
the exported model in CSR, kept when it is under ``MODEL_LIMIT_BYTES`` or when another row starts from
it. A cell is done when its record exists: the record is written last, atomically, and never edited.
``<results>/campaign.json`` holds the spec the records were made under (rows, paper numbers), so a
report can be rebuilt from the folder alone.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparsebench import record

if TYPE_CHECKING:
    from sparsebench.campaign.spec import CampaignSpec, Row

RUNS = "runs"
SPEC_COPY = "campaign.json"
MODEL_LIMIT_BYTES = 1_000_000
"""Sparse models at most this large (1 MB) are kept beside their records (LeNets in CSR: 20-200 KB)."""
CELL_NAME = re.compile(r"^(?P<row>.+)-seed(?P<seed>\d+)$")


@dataclass(frozen=True, order=True)
class Cell:
    row: str
    seed: int

    @property
    def key(self) -> str:
        return f"{self.row}-seed{self.seed}"

    @classmethod
    def parse(cls, key: str) -> Cell | None:
        match = CELL_NAME.match(key)
        return None if match is None else cls(match["row"], int(match["seed"]))


def runs_folder(results: Path) -> Path:
    return results / RUNS


def record_path(results: Path, cell: Cell) -> Path:
    return runs_folder(results) / f"{cell.key}.json"


def model_path(results: Path, cell: Cell) -> Path:
    return runs_folder(results) / f"{cell.key}{record.MODEL_SUFFIX}"


def cells_of(rows: tuple[Row, ...]) -> list[Cell]:
    return [Cell(row.name, seed) for row in rows for seed in row.seeds]


def is_done(results: Path, cell: Cell) -> bool:
    return record_path(results, cell).is_file()


def parent_cell(spec: CampaignSpec, cell: Cell) -> Cell | None:
    parent = spec.row(cell.row).init_from_row
    return None if parent is None else Cell(parent, cell.seed)


def parent_ready(spec: CampaignSpec, cell: Cell) -> bool:
    """Whether a cell that starts from another row's model can start here (its parent's files exist)."""
    parent = parent_cell(spec, cell)
    if parent is None:
        return True
    return is_done(spec.results, parent) and model_path(spec.results, parent).is_file()


def needed_as_parent(spec: CampaignSpec, cell: Cell) -> bool:
    return any(row.init_from_row == cell.row and cell.seed in row.seeds for row in spec.rows)


def recorded_cells(results: Path) -> dict[Cell, Path]:
    """Every record file of the results folder, by cell (file names that are no cell are skipped)."""
    found = {}
    folder = runs_folder(results)
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        cell = Cell.parse(path.stem)
        if cell is not None:
            found[cell] = path
    return found


def save_model(spec: CampaignSpec, cell: Cell, state_dict: dict[str, Any]) -> Path | None:
    """Write the cell's exported model when another row starts from it, or when it is sparse and at
    most ``MODEL_LIMIT_BYTES``: a dense model (dense, dropout rows) has no zeros to store compactly,
    and nothing a report or a timing would read from it."""
    needed = needed_as_parent(spec, cell)
    if not needed and not has_zero_weights(state_dict):
        return None
    path = model_path(spec.results, cell)
    size = record.write_model(state_dict, path)
    if size <= MODEL_LIMIT_BYTES or needed:
        return path
    path.unlink()
    return None


def has_zero_weights(state_dict: dict[str, Any]) -> bool:
    """Whether any weight matrix or filter bank has an exact zero (the model was sparsified)."""
    return any(t.dim() >= 2 and t.is_floating_point() and bool((t == 0).any()) for t in state_dict.values())


def spec_copy_text(spec: CampaignSpec) -> str:
    """What ``campaign.json`` holds for ``spec``: compare it with the committed copy to find drift."""
    return json.dumps(spec.public_dict(), indent=1, sort_keys=True) + "\n"


def spec_copy_state(spec: CampaignSpec) -> str:
    """``missing``, ``current`` or ``stale``: the results folder's copy against the spec."""
    path = spec.results / SPEC_COPY
    if not path.is_file():
        return "missing"
    return "current" if path.read_text() == spec_copy_text(spec) else "stale"


def write_spec_copy(spec: CampaignSpec) -> bool:
    """Keep ``campaign.json`` in step with the spec (atomically; it is no record, so it may change).

    Returns whether the file changed.
    """
    if spec_copy_state(spec) == "current":
        return False
    path, text = spec.results / SPEC_COPY, spec_copy_text(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return True


def read_spec_copy(results: Path) -> dict[str, Any] | None:
    """The spec copy of a results folder, or None when there is none (records alone still report)."""
    path = results / SPEC_COPY
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None
