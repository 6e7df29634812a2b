"""table.md and table.csv of a gradient-variance record: ours with error, the paper's, gngdb's."""

from __future__ import annotations

from pathlib import Path

from sparsebench.experiments import gradient_variance_record as gvr
from sparsebench.report.writers import to_markdown


def protocol_line(rec: gvr.GradientVarianceRecord) -> str:
    """One sentence saying what was measured, from the record's configuration."""
    c = rec.config
    return (
        f"Network {c.get('network', '?')}, {c.get('method', '?')}, Adam {c.get('lr')} with minibatches of "
        f"{c.get('train_batch_size')}; after each point, the average over a layer's weights of the variance "
        f"of N x the gradient of a {c.get('batch_size')}-example minibatch's mean loss (N = training "
        f"examples), over fresh minibatches and noise; error = standard error over "
        f"{c.get('groups')} independent groups of repetitions."
    )


def notes(rec: gvr.GradientVarianceRecord) -> list[str]:
    """Sources and caveats shown under the table."""
    lines = [
        f"Paper: {gvr.PAPER_CITATION}; its test error was {gvr.PAPER_TEST_ERROR[10]} % after 10 epochs and "
        f"{gvr.PAPER_TEST_ERROR[100]} % after 100.",
        f"gngdb: {gvr.REPLICATION_CITATION}. Issue 21 quotes these numbers as the paper's; the paper's "
        "own Table 1 is the 'paper' column.",
        "Each of our points stands beside the paper's nearer point (10 or 100 epochs, log scale).",
    ]
    tests = ", ".join(f"{p.test_error:.2f} % after {p.epoch}" for p in rec.points)
    if tests:
        lines.append(f"Our test error: {tests} epochs.")
    if rec.note:
        lines.append(f"Note: {rec.note}.")
    if not rec.finished:
        lines.append("The run had not finished when this table was written.")
    return lines


def markdown_page(rec: gvr.GradientVarianceRecord) -> str:
    """The whole table page: protocol, the comparison, the orderings, the notes."""
    shown, order = gvr.display_frames(rec)
    parts = [
        "# Gradient variance (Kingma, Salimans, Welling 2015, Table 1)",
        protocol_line(rec),
        "## Average empirical variance of the minibatch gradient",
        to_markdown(shown) if not shown.empty else "No point measured yet.",
        "## Order of the three noisy estimators (smallest variance first)",
        to_markdown(order) if not order.empty else "No point measured yet.",
        "\n".join(f"- {line}" for line in notes(rec)),
    ]
    return "\n\n".join(parts) + "\n"


def write_tables(rec: gvr.GradientVarianceRecord, out: Path) -> list[Path]:
    """``table.md`` (display) and ``table.csv`` (numbers) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    md, csv = out / "table.md", out / "table.csv"
    md.write_text(markdown_page(rec))
    gvr.comparison_frame(rec).to_csv(csv, index=False)
    return [md, csv]
