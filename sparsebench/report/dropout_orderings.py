"""Which of Kingma et al.'s orderings of dropout variants hold, at which widths: ours, the paper's, gngdb's.

The paper's Figure 1 claims, in test error, variational dropout <= Gaussian dropout <= binary
dropout <= none, and that A2 (the KL scaled by 1/3) beats A; the Theano replication (gngdb) found A
ahead of A2. Each ordering is a pair of variants judged width by width, from numbers only: our
records (per seed), the paper's figure and the replication's figure (both read off their plots, so
two readings closer than ``TIE`` are a tie). Our seeds are judged by sign, not by a test: the two
variants' runs of one seed share initialisation and batch order, so their difference is a pair, and
"the difference has the same sign for every seed" is plain and checkable, while with two seeds a t
interval is twelve standard errors wide and says nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd

from sparsebench.report.aggregate import t_interval

VARIANTS: dict[str, str] = {
    "none": "no dropout",
    "binary": "binary dropout",
    "gaussian_A": "Gaussian dropout A",
    "variational_A": "variational dropout A",
    "variational_A2": "variational dropout A2",
    "gaussian_B": "Gaussian dropout B",
    "variational_B": "variational dropout B",
}
"""The ``variant`` labels of a campaign's rows, in the paper's legend order, and their names."""

SHORT: dict[str, str] = {
    "none": "none",
    "binary": "binary",
    "gaussian_A": "Gaussian A",
    "variational_A": "variational A",
    "variational_A2": "variational A2",
    "gaussian_B": "Gaussian B",
    "variational_B": "variational B",
}
"""Names short enough for a table cell."""

TIE = 0.02
"""Error points within which two readings off a published plot cannot be told apart."""

REPLICATION_CITATION = (
    "gngdb/variational-dropout README figures (784-n-n-10, i.e. 2 hidden layers; up to 10 runs per point; "
    "the lowest test error over the epochs of early-stopped training), read off the plot (+-0.03)"
)
REPLICATION: dict[str, dict[int, float]] = {
    variant: dict(zip((100, 340, 580, 820, 1060, 1300), values, strict=True))
    for variant, values in {
        "none": (2.59, 2.20, 1.90, 1.62, 1.55, 1.50),
        "binary": (2.88, 1.86, 1.45, 1.45, 1.47, 1.45),
        "gaussian_A": (3.05, 1.66, 1.52, 1.57, 1.48, 1.31),
        "variational_A": (2.83, 1.78, 1.47, 1.48, 1.27, 1.26),
        "variational_A2": (2.96, 1.69, 1.68, 1.64, 1.36, 1.31),
        "gaussian_B": (2.36, 1.69, 1.60, 1.51, 1.43, 1.44),
        "variational_B": (2.31, 1.55, 1.50, 1.48, 1.49, 1.50),
    }.items()
}
"""Test error % by variant and width (hidden units per layer), gngdb's Figure 1 panels."""


@dataclass(frozen=True)
class Ordering:
    """The paper's claim that ``better`` has the lower test error than ``worse``."""

    better: str
    worse: str

    @property
    def name(self) -> str:
        return f"{SHORT[self.better]} <= {SHORT[self.worse]}"


ORDERINGS = (
    Ordering("variational_A", "gaussian_A"),
    Ordering("gaussian_A", "binary"),
    Ordering("binary", "none"),
    Ordering("variational_B", "gaussian_B"),
    Ordering("variational_A2", "variational_A"),
)
CHAIN = ORDERINGS[:3]
"""Variational A <= Gaussian A <= binary <= none: the paper's chain, link by link."""

HOLDS, REVERSED, SPLIT, TIED, MISSING = "holds", "reversed", "seeds disagree", "tie", "no records"


@dataclass(frozen=True)
class Judgement:
    """One ordering at one width, from our seeds."""

    verdict: str
    """``holds``: ``better`` has the lower error with every seed; ``reversed``: ``worse`` has it with
    every seed; ``seeds disagree``; ``no records`` when either side has none. Seeds that only one side
    has are compared by range (every value of one side below every value of the other)."""
    leans: str
    """The direction of the means (``holds``, ``reversed`` or ``tie``); empty when missing."""
    diff: float
    """Mean of worse - better over seeds both have (error points; > 0 means the ordering holds)."""
    diff_low: float
    diff_high: float
    """The smallest and largest per-seed difference (the seed spread of ``diff``)."""
    pairs: int
    seeds: tuple[int, int]
    """Seeds with a record on the better and on the worse side."""


def judge(better: pd.Series, worse: pd.Series) -> Judgement:
    """Our verdict from per-seed test errors, each Series indexed by seed."""
    better, worse = better.dropna(), worse.dropna()
    seeds = (len(better), len(worse))
    if better.empty or worse.empty:
        return Judgement(MISSING, "", math.nan, math.nan, math.nan, 0, seeds)
    paired = (worse - better).dropna()
    diff = t_interval(paired).mean if len(paired) else float(worse.mean() - better.mean())
    up, down = (paired > 0).all(), (paired < 0).all()
    if not len(paired):  # no seed in common: every value of one side against every value of the other
        up, down = better.max() < worse.min(), worse.max() < better.min()
    verdict = HOLDS if up else REVERSED if down else SPLIT
    leans = HOLDS if diff > 0 else REVERSED if diff < 0 else TIED
    low, high = (float(paired.min()), float(paired.max())) if len(paired) else (math.nan, math.nan)
    return Judgement(verdict, leans, float(diff), low, high, len(paired), seeds)


def judge_quoted(better: float | None, worse: float | None) -> str:
    """A published pair of readings: ``holds``, ``reversed`` or ``tie`` (within ``TIE``); "" if absent."""
    if better is None or worse is None or math.isnan(better) or math.isnan(worse):
        return ""
    gap = round(worse - better, 6)  # readings have two decimals; no float noise at the tie's edge
    return HOLDS if gap > TIE else REVERSED if gap < -TIE else TIED


def judge_all(points: pd.DataFrame, paper: dict[tuple[str, int], float]) -> pd.DataFrame:
    """Every ordering at every width of ``points`` (``variant``, ``width``, ``seed``, ``test``)."""
    rows = []
    widths = sorted({int(w) for w in points.width}) if not points.empty else []
    widths = sorted(set(widths) | {w for _, w in paper})
    by_cell = {key: g.set_index("seed").test for key, g in points.groupby(["variant", "width"])}
    empty = pd.Series(dtype=float)
    for ordering in ORDERINGS:
        for width in widths:
            ours = judge(
                by_cell.get((ordering.better, width), empty), by_cell.get((ordering.worse, width), empty)
            )
            rows.append(
                {
                    "ordering": ordering.name,
                    "better": ordering.better,
                    "worse": ordering.worse,
                    "width": width,
                    "verdict": ours.verdict,
                    "leans": ours.leans,
                    "mean_diff": ours.diff,
                    "diff_low": ours.diff_low,
                    "diff_high": ours.diff_high,
                    "pairs": ours.pairs,
                    "paper": judge_quoted(
                        paper.get((ordering.better, width)), paper.get((ordering.worse, width))
                    ),
                }
            )
    return pd.DataFrame(rows)


def replication_verdicts(ordering: Ordering) -> dict[int, str]:
    better, worse = REPLICATION[ordering.better], REPLICATION[ordering.worse]
    return {w: judge_quoted(better[w], worse[w]) for w in sorted(better)}


def widths_text(widths: Iterable[int]) -> str:
    return ", ".join(str(w) for w in widths) or "no width"


def at_widths(widths: list[int]) -> str:
    """``widths 100, 250`` or ``no width``: the object of "holds at ..."."""
    return f"widths {widths_text(widths)}" if widths else "no width"


def where(verdicts: dict[int, str]) -> str:
    """``holds at 100, 250; reversed at 500`` from width -> verdict (empty verdicts left out)."""
    parts = []
    for kind in (HOLDS, TIED, REVERSED):
        found = [w for w, v in verdicts.items() if v == kind]
        if found:
            parts.append(f"{'ties' if kind == TIED else kind} at {widths_text(found)}")
    return "; ".join(parts) or "no widths to compare"


def majority(verdicts: Iterable[str]) -> str:
    """``holds`` / ``reversed`` when more widths go that way than the other, ``mixed`` when as many
    go each way (or all tie), "" when there is no verdict at all."""
    values = [v for v in verdicts if v]
    up, down = values.count(HOLDS), values.count(REVERSED)
    if not values:
        return ""
    return HOLDS if up > down else REVERSED if down > up else "mixed"


def ours_text(frame: pd.DataFrame) -> str:
    """Our verdicts of one ordering, width by width: where it holds, where seeds disagree, where not."""
    parts = []
    for kind, words in ((HOLDS, "holds (every seed)"), (SPLIT, "seeds disagree"), (REVERSED, "reversed")):
        part = frame[frame.verdict == kind]
        if part.empty:
            continue
        if kind == SPLIT:
            means = {HOLDS: "mean lower", REVERSED: "mean higher", TIED: "means equal"}
            at = ", ".join(f"{w} ({means[lean]})" for w, lean in zip(part.width, part.leans, strict=True))
        else:
            at = widths_text(part.width)
        parts.append(f"{words} at {at}")
    missing = frame[frame.verdict == MISSING]
    if not missing.empty:
        parts.append(f"no records at {widths_text(missing.width)}")
    return "; ".join(parts)


def spread_text(frame: pd.DataFrame) -> str:
    """``100: +0.05 (seeds +0.02 to +0.08, 2 pairs)`` per width with records on both sides."""
    parts = []
    for row in frame[frame.verdict != MISSING].itertuples():
        text = f"{row.width}: {row.mean_diff:+.2f}"
        if row.pairs >= 2:
            text += f" (seeds {row.diff_low:+.2f} to {row.diff_high:+.2f}, {row.pairs} pairs)"
        elif row.pairs == 1:
            text += " (1 seed pair)"
        parts.append(text)
    return "; ".join(parts)


def last_epochs(epochs: int) -> int:
    """How many final epochs must agree for an ordering to count as settled: the last third, >= 2."""
    return max(2, math.ceil(epochs / 3))


def settled(history: pd.DataFrame, ordering: Ordering) -> dict[int, bool]:
    """Width -> whether the means' direction (validation error) is one and the same over the last epochs.

    ``history`` has ``variant``, ``width``, ``seed``, ``epoch``, ``val``. Only widths where both
    variants have per-epoch points appear.
    """
    if history.empty:
        return {}
    means = history.groupby(["variant", "width", "epoch"]).val.mean()
    out = {}
    for width in sorted({int(w) for w in history.width}):
        try:
            gap = (means.loc[(ordering.worse, width)] - means.loc[(ordering.better, width)]).dropna()
        except KeyError:
            continue
        if gap.empty:
            continue
        tail = gap.sort_index().iloc[-last_epochs(int(gap.index.max())) :]
        signs = {1 if g > 0 else -1 if g < 0 else 0 for g in tail}
        out[width] = len(signs) == 1 and 0 not in signs
    return out


def seed_votes(frame: pd.DataFrame) -> list[str]:
    """Our vote per width for ``majority``: a direction only where every seed agrees, else a tie.

    A width where the seeds disagree is within our noise, so it counts as a reading of a plot
    closer than the reading precision does: present, but for neither side.
    """
    return [v if v in (HOLDS, REVERSED) else TIED for v in frame.verdict if v != MISSING]


def agreement(ours: str, paper: str, replication: str) -> str:
    """One sentence comparing the majority directions over widths (``majority``; ours by ``seed_votes``)."""
    word = {
        HOLDS: "holds at most widths",
        REVERSED: "is reversed at most widths",
        "mixed": "splits evenly",
        "": "has no reading at these widths",
    }
    text = (
        f"In ours (counting widths where every seed agrees) it {word[ours]}, in the paper's figure it "
        f"{word[paper]}, in the replication's it "
        f"{word[replication]}"
    )
    if ours in ("mixed", ""):
        return text + ", so ours take no side."
    if ours == paper and ours == replication:
        return text + ": ours agree with both."
    if ours == paper:
        return text + ": ours side with the paper, not the replication."
    if ours == replication:
        return text + ": ours side with the replication, not the paper."
    return text + ": ours agree with neither."


def ordering_paragraph(ordering: Ordering, frame: pd.DataFrame, history: pd.DataFrame) -> str:
    """The computed statement about one ordering: ours, the paper's, the replication's, convergence."""
    part = frame[frame.ordering == ordering.name]
    paper = {int(w): v for w, v in zip(part.width, part.paper, strict=True) if v}
    repl = replication_verdicts(ordering)
    better, worse = VARIANTS[ordering.better], VARIANTS[ordering.worse]
    lines = [f"**{better} ≤ {worse}** (test error).", f"Ours: {ours_text(part)}."]
    spread = spread_text(part)
    if spread:
        lines.append(f"Difference {worse} − {better} in error points, mean over seeds: {spread}.")
    lines.append(f"Paper (Figure 1): {where(paper)}. Replication: {where(repl)}.")
    if (part.verdict == MISSING).all():
        return " ".join([*lines, "Nothing to compare in ours yet."])
    lines.append(agreement(majority(seed_votes(part)), majority(paper.values()), majority(repl.values())))
    steady = settled(history, ordering)
    if steady:
        epochs = int(history.epoch.max())
        stable = [w for w, ok in steady.items() if ok]
        moving = [w for w, ok in steady.items() if not ok]
        said = [f"held at {widths_text(stable)}"] if stable else []
        said += [f"still changed at {widths_text(moving)}"] if moving else []
        lines.append(
            f"By validation error, over the last {last_epochs(epochs)} of {epochs} epochs the direction of "
            f"the means {' and '.join(said)}."
        )
    return " ".join(lines)


def chain_text(frame: pd.DataFrame) -> str:
    """Widths where the whole chain variational A <= Gaussian A <= binary <= none holds (ours: means)."""
    names = [o.name for o in CHAIN]
    part = frame[frame.ordering.isin(names)]
    ours, paper = [], []
    for width, group in part.groupby("width"):
        if len(group) == len(names) and (group.leans == HOLDS).all():
            ours.append(int(width))
        if len(group) == len(names) and (group.paper == HOLDS).all():
            paper.append(int(width))
    repl = [w for w in REPLICATION["none"] if all(replication_verdicts(o)[w] == HOLDS for o in CHAIN)]
    return (
        "The whole chain variational A ≤ Gaussian A ≤ binary ≤ no dropout holds, by our means, at "
        f"{at_widths(ours)}; in the paper's figure at {at_widths(paper)}; in the replication's at "
        f"{at_widths(repl)}."
    )
