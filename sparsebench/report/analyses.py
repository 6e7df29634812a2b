"""Report sections a campaign declares beyond its rows' table (``analyses:`` in the campaign spec).

A leaderboard is one table of rows; some campaigns ask a question across rows instead: error at
matched sparsity, error against network width, the variance of gradient estimators. Each such
question is one module here with a ``section(records, out)`` function, drawn from the same records
as the rest of the report, so ``sparsebench report --records DIR`` regenerates it with no store. The
names are declared in ``sparsebench.campaign.spec.AnalysisName`` (checked when the spec is read);
this table says which module draws each one, imported only when a campaign asks for it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args

from sparsebench.campaign.spec import AnalysisName
from sparsebench.report.document import Block
from sparsebench.report.records import RecordSet
from sparsebench.report.tables import Table

MODULES: dict[str, str] = {
    "matched_sparsity": "sparsebench.report.matched_sparsity",
    "dropout_width": "sparsebench.report.dropout_width",
    "gradient_variance": "sparsebench.report.gradient_variance",
}
"""Analysis name -> the module whose ``section(records, out) -> AnalysisOutput`` draws it."""

assert set(MODULES) == set(get_args(AnalysisName)), "every declared analysis needs a module"


@dataclass
class AnalysisOutput:
    """What one analysis adds to a report: its blocks, its tables (written as CSV and LaTeX too) and
    the files it wrote under the report folder (figures), so the manifest lists them."""

    blocks: list[Block] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    def extend(self, other: AnalysisOutput) -> None:
        self.blocks += other.blocks
        self.tables += other.tables
        self.files += other.files


def run_analyses(records: RecordSet, out: Path) -> AnalysisOutput:
    """Every analysis the campaign declares, in its order; figures go to ``out/figures``."""
    total = AnalysisOutput()
    for name in records.analyses:
        if name not in MODULES:  # a spec copy written by a newer sparsebench: say so in the report
            total.blocks.append(
                Block("note", f"Analysis {name!r} is not known to this sparsebench; skipped.")
            )
            continue
        module = importlib.import_module(MODULES[name])
        total.extend(module.section(records, out))
    return total
