"""Report section ``gradient_variance``: Kingma et al. (2015) Table 1 from the experiment's record.

The experiment (``sparsebench experiment gradient-variance``) is not a campaign row: it writes one
record, ``<results folder>/gradient-variance/gradient_variance.json``. This section draws the table
from that record alone (ours with its standard error, the paper's and gngdb's numbers) and the
orderings of the three noisy estimators; without the record it says how to make it.
"""

from __future__ import annotations

from pathlib import Path

from sparsebench.experiments import gradient_variance_record as gvr
from sparsebench.experiments.gradient_variance_table import notes, protocol_line
from sparsebench.report.analyses import AnalysisOutput
from sparsebench.report.document import Block, heading
from sparsebench.report.records import RecordSet
from sparsebench.report.tables import Table

TITLE = "Gradient variance (Kingma, Salimans, Welling 2015, Table 1)"


def record_file(folder: Path) -> Path:
    return folder / gvr.FOLDER / gvr.RECORD_NAME


def section(records: RecordSet, out: Path) -> AnalysisOutput:
    """The comparison and ordering tables, or a one-line note when the record is absent."""
    path = record_file(records.folder)
    if not path.is_file():
        command = f"sparsebench experiment gradient-variance --out {records.folder / gvr.FOLDER}"
        text = f"No gradient-variance record ({gvr.FOLDER}/{gvr.RECORD_NAME}) here; `{command}` makes it."
        return AnalysisOutput([heading(2, TITLE), Block("note", text)])
    rec = gvr.read(path)
    shown, order = gvr.display_frames(rec)
    values = Table(
        "gradient_variance",
        "Average empirical variance of the minibatch gradient",
        gvr.comparison_frame(rec),
        shown,
        note="ours ± standard error over independent groups of repetitions",
        task="analysis",
    )
    ordering = Table(
        "gradient_variance_order",
        "Order of the three noisy estimators (smallest variance first)",
        gvr.ordering_frame(rec),
        order,
        task="analysis",
    )
    blocks = [heading(2, TITLE), Block("p", protocol_line(rec))]
    for table in (values, ordering):
        blocks.append(heading(3, table.title))
        blocks.append(
            Block("table", table=table) if not table.display.empty else Block("p", "No point measured.")
        )
    blocks.append(Block("p", "\n".join(f"- {line}" for line in notes(rec))))
    return AnalysisOutput(blocks, [t for t in (values, ordering) if not t.display.empty], [])
