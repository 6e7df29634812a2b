"""Architecture: the units each campaign row keeps per layer, beside the paper's, as the papers print them.

Structured methods (group NJ and horseshoe, L0 with group gates) are published with their
"architecture", one count per layer of what is left: the output filters of a convolution and the
input units of a Linear layer (L0's Table 1 writes LeNet-300-100 as 219-214-100: the pixels, first
and second hidden units still read). Compression alone cannot be compared with that, so this table
counts the same thing in every record's per-layer table (the exported model's units that lost every
weight), per seed, and quotes the paper's string beside it. A row appears when one of its seeds
removed a whole unit or when its paper quotes an architecture.
"""

from __future__ import annotations

import pandas as pd

from sparsebench.report.formatting import DASH
from sparsebench.report.records import RecordSet
from sparsebench.report.tables import Table

SEPARATOR = "-"


def units_kept(layers: pd.DataFrame, removed: bool = True) -> list[int]:
    """Per weight layer, in network order: filters kept by a convolution, input units kept by the rest
    (with ``removed=False``, the dense model's counts)."""
    kept = []
    for layer in layers.sort_values("position").itertuples():
        conv = str(layer.kind).startswith("Conv")
        units, gone = (
            (layer.out_units, layer.out_units_removed) if conv else (layer.in_units, layer.in_units_removed)
        )
        kept.append(int(units) - (int(gone) if removed else 0))
    return kept


def architecture_text(counts: list[int] | list[float]) -> str:
    return SEPARATOR.join(f"{round(c):d}" for c in counts)


def row_architectures(records: RecordSet) -> dict[str, dict[int, tuple[list[int], list[int]]]]:
    """``{row: {seed: (units kept, full sizes)}}`` from each record's per-layer table."""
    runs, layers = records.data.runs, records.data.layers
    found: dict[str, dict[int, tuple[list[int], list[int]]]] = {}
    if layers.empty or "in_units_removed" not in layers:
        return found
    by_id = runs.set_index("run_id")
    for run_id, own in layers.groupby("run_id"):
        run = by_id.loc[run_id]
        kept = (units_kept(own), units_kept(own, removed=False))
        found.setdefault(str(run["setting"]), {})[int(run["seed"])] = kept
    return found


def architecture_table(records: RecordSet) -> Table | None:
    """Units kept per layer for each row that removes units or quotes a paper's architecture."""
    per_row = row_architectures(records)
    lines = []
    for row in records.rows:
        quoted = str((row.paper or {}).get("architecture") or "")
        seeds = per_row.get(row.name, {})
        removes = any(kept != full for kept, full in seeds.values())
        if not (removes or quoted):
            continue
        ordered = [seeds[s] for s in sorted(seeds)]
        mean = pd.DataFrame([kept for kept, _ in ordered]).mean().tolist() if ordered else []
        lines.append(
            {
                "task": row.task,
                "row": row.name,
                "seeds": len(ordered),
                "of": architecture_text(ordered[0][1]) if ordered else DASH,
                "units kept (each seed)": " / ".join(architecture_text(k) for k, _ in ordered) or DASH,
                "mean": architecture_text(mean) if mean else DASH,
                "paper (quoted)": quoted or DASH,
            }
        )
    if not lines:
        return None
    display = pd.DataFrame(lines)
    note = (
        "Units kept per weight layer of the exported model, as the papers print an architecture: output "
        "filters of a convolution (gone when all its weights are zero), input units of a Linear layer "
        "(gone when every weight they feed is zero); 'of' is the dense model's. Paper architectures "
        "are quoted, not recomputed."
    )
    return Table("architecture", "Architecture: units kept per layer", display.copy(), display, note)
