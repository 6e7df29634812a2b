"""Targets: does each row's mean over seeds reach what its campaign aims at, and if not, by how much.

A campaign row may declare a ``target:`` (``campaign.spec.Target``): an error to stay under and the
compressions to reach. A table of means leaves a missed target for the reader to spot; here each row
with a target gets one verdict computed from its records: met, or not met with the gap in the units
a reader compares (points of error, the fraction of the aimed compression reached), beside the
spec's note of what was tried. With fewer than ``MIN_SEEDS`` distinct seeds a row is not judged: one
seed differs from another by up to 0.15 points on MNIST, more than some gaps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from sparsebench.report.aggregate import group_stats
from sparsebench.report.formatting import fmt_x
from sparsebench.report.records import RecordRow, RecordSet
from sparsebench.report.tables import Table

MIN_SEEDS = 3
"""Distinct seeds a row needs before its mean is judged against its target."""
KINDS = {
    "compression": "weights-only",
    "compression_structured": "structured",
    "compression_precision": "with bits",
}
"""Target key (also the run table's column) -> how a compression is named in a verdict."""
PRECISION_ERROR = "test_precision"
"""A with-bits target also holds the error of the model rounded to those bits (the records' mean)."""
METRICS = ("test", *KINDS, PRECISION_ERROR)
TOLERANCE = 1e-9
"""Means are compared with this slack so that a mean equal to its target (float sums) counts as met."""


@dataclass
class Verdict:
    """One row's target and how its records compare with it."""

    row: str
    target: dict[str, Any]
    seeds: int
    means: dict[str, float] = field(default_factory=dict)
    """Mean over distinct seeds of the test error and of each compression the target names."""
    gaps: dict[str, float] = field(default_factory=dict)
    """Error: mean minus target (points); a compression: mean / target (NaN when not recorded)."""

    @property
    def judged(self) -> bool:
        return self.seeds >= MIN_SEEDS

    @property
    def met(self) -> bool | None:
        """None when not judged; else whether the error and every named compression reach the target."""
        if not self.judged:
            return None
        errors = ("test", PRECISION_ERROR)
        error_ok = all(g <= TOLERANCE for k, g in self.gaps.items() if k in errors)
        return error_ok and all(g >= 1 - TOLERANCE for k, g in self.gaps.items() if k not in errors)


def verdicts(records: RecordSet) -> list[Verdict]:
    """A verdict for every row with a target, in the spec's order (rows without records included)."""
    stats = group_stats(records.data.runs, ["setting"], list(METRICS))
    by_row = {str(r["setting"]): r for r in stats.to_dict("records")}
    found = []
    for row in records.rows:
        if not row.target or row.target.get("error") is None:
            continue
        found.append(judge(row, by_row.get(row.name)))
    return found


def judge(row: RecordRow, stats: dict[str, Any] | None) -> Verdict:
    """``row``'s verdict from its aggregated statistics (None: the row has no records yet)."""
    target = {k: v for k, v in (row.target or {}).items() if v is not None}
    verdict = Verdict(row.name, target, int(stats["n"]) if stats else 0)
    if stats is None:
        return verdict
    for key in METRICS:
        goal = target.get("error" if key == "test" else key)
        if goal is None:
            continue
        mean = float(stats[f"{key}_mean"])
        verdict.means[key] = mean
        verdict.gaps[key] = mean - float(goal) if key == "test" else mean / float(goal)
    rounded = float(stats.get(f"{PRECISION_ERROR}_mean", math.nan))
    if "compression_precision" in target and not math.isnan(rounded):
        verdict.means[PRECISION_ERROR] = rounded
        verdict.gaps[PRECISION_ERROR] = rounded - float(target["error"])
    return verdict


def target_text(target: dict[str, Any]) -> str:
    """``<= 0.75 %, >= 280x`` with each compression the target names."""
    parts = [f"<= {float(target['error']):.2f} %"]
    for key, kind in KINDS.items():
        if target.get(key) is not None:
            name = "" if key == "compression" else f" {kind}"
            parts.append(f">= {fmt_x(float(target[key]))}{name}")
    return ", ".join(parts)


def means_text(verdict: Verdict) -> str:
    if not verdict.means:
        return "no records yet"
    parts = [error_text(verdict.means["test"], verdict.gaps.get("test", 1.0))]
    for key, kind in KINDS.items():
        if key in verdict.means:
            value = verdict.means[key]
            shown = "not recorded" if math.isnan(value) else fmt_x(value)
            parts.append(shown if key == "compression" else f"{shown} {kind}")
    if PRECISION_ERROR in verdict.means:
        parts[-1] += f" at {error_text(verdict.means[PRECISION_ERROR], verdict.gaps[PRECISION_ERROR])}"
    return ", ".join(parts)


def error_text(mean: float, gap: float) -> str:
    """A mean error with two decimals, or three when two would print the target itself (1.923 vs 1.92)."""
    return f"{mean:.3f} %" if 0 < abs(gap) < 0.005 else f"{mean:.2f} %"


def verdict_text(verdict: Verdict) -> str:
    """``met``, ``not met: +0.20 points error, 0.86x of the 280x target``, or why it is not judged."""
    if not verdict.judged:
        return f"n = {verdict.seeds} < {MIN_SEEDS}, not judged"
    gaps = []
    for key, gap in verdict.gaps.items():
        if key in ("test", PRECISION_ERROR):
            # a gap that rounds to 0.00 at two decimals still decides met / not met: show it
            points = f"{gap:+.2f}" if abs(gap) >= 0.005 or gap == 0 else f"{gap:+.3f}"
            where = " at reduced precision" if key == PRECISION_ERROR else ""
            gaps.append(f"{points} points error{where}")
            continue
        if math.isnan(gap):
            gaps.append(f"{KINDS[key]} compression not recorded")
            continue
        kind = "" if key == "compression" else f" {KINDS[key]}"
        gaps.append(f"{gap:.2f}x of the {fmt_x(float(verdict.target[key]))}{kind} target")
    return f"{'met' if verdict.met else 'not met'}: {', '.join(gaps)}"


def targets_table(records: RecordSet) -> Table | None:
    """The report's table of targets and verdicts; None when no row of the campaign declares one."""
    found = verdicts(records)
    if not found:
        return None
    notes = {row.name: str((row.target or {}).get("note") or "") for row in records.rows}
    display = pd.DataFrame(
        [
            {
                "row": v.row,
                "target": target_text(v.target),
                "seeds": v.seeds,
                "ours (mean)": means_text(v),
                "verdict": verdict_text(v),
                "what was tried": notes.get(v.row, ""),
            }
            for v in found
        ]
    )
    numbers = pd.DataFrame(
        [
            {
                "row": v.row,
                "seeds": v.seeds,
                "met": v.met,
                **{f"target_{k}": val for k, val in v.target.items() if k != "note"},
                **{f"mean_{k}": val for k, val in v.means.items()},
                **{f"gap_{k}": val for k, val in v.gaps.items()},
            }
            for v in found
        ]
    )
    return Table("targets", "Targets", numbers, display, NOTE, task=records.campaign)


NOTE = (
    f"Each target is the campaign spec's (`target:` of a row): the mean over at least {MIN_SEEDS} "
    "distinct seeds must be at most its test error and at least each compression it names; a target "
    "with bits also needs the model rounded to those bits under its error. Gaps: "
    "the mean's test error minus the target's (points; negative is better), and the mean compression "
    "as a multiple of the target's (1x or more reaches it). What was tried is the spec's note."
)
