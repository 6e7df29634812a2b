"""The report's tables: numbers for CSV, formatted strings for Markdown, LaTeX and HTML.

Each table is built twice from the same aggregates: ``numbers`` keeps means, deviations and
interval bounds as floats (for anyone re-plotting), ``display`` shows them the way a paper does
("1.92 ± 0.05", "68x"), so the two can never disagree. Formatting rules are in ``formatting.py``,
the Markdown/LaTeX/CSV writers in ``writers.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from sparsebench.registry import normalize_name
from sparsebench.report.aggregate import group_stats, run_epoch_seconds
from sparsebench.report.formatting import (
    DASH,
    fmt_ci,
    fmt_count,
    fmt_layers,
    fmt_pm,
    fmt_value,
    fmt_x,
    fmt_x_pm,
    is_text,
    show_setting,
    text_column,
)
from sparsebench.task import PaperResult

__all__ = [  # the formatting helpers stay importable from here, where they used to live
    "DASH",
    "Table",
    "fmt_ci",
    "fmt_count",
    "fmt_layers",
    "fmt_pm",
    "fmt_value",
    "fmt_x",
    "fmt_x_pm",
    "is_text",
    "show_setting",
    "text_column",
]

RUN_ID_CHARS = 8
"""Run ids are shown by their first characters (as git shows commits); runs.csv has them whole."""


@dataclass
class Table:
    """One table of the report, in both forms."""

    name: str
    """File stem (``paper``, ``compression`` ...), also the CSV name."""
    title: str
    numbers: pd.DataFrame
    display: pd.DataFrame
    note: str = ""
    task: str = ""


def _keys(stats: pd.DataFrame) -> pd.DataFrame:
    return stats[["task", "method", "setting"]].copy()


def _pm_column(stats: pd.DataFrame, column: str, fmt=fmt_x_pm) -> list[str]:  # noqa: ANN001
    """``mean ± std`` strings of one aggregated column."""
    return [fmt(m, s) for m, s in zip(stats[f"{column}_mean"], stats[f"{column}_std"], strict=True)]


def layer_means(runs: pd.DataFrame, layers: pd.DataFrame) -> pd.DataFrame:
    """Mean and std across seeds of each layer's sparsity, per (task, method, setting)."""
    if layers.empty:
        return pd.DataFrame(columns=["task", "method", "setting", "position", "layer", "sparsity_mean"])
    merged = layers.merge(runs[["run_id", "task", "method", "setting"]], on="run_id")
    return group_stats(merged, ["task", "method", "setting", "position", "layer"], ["sparsity"])


def paper_table(
    runs: pd.DataFrame, layers: pd.DataFrame, references: tuple[PaperResult, ...], metric_name: str
) -> Table:
    """The papers' format: method, error, per-layer sparsity, compression, beside quoted rows.

    The network is the section the table sits in (and the LaTeX caption), so it is not a column.
    """
    numbers = _interleave(_paper_ours(runs, layers), _paper_quoted(runs.task.iloc[0], references))
    notes = numbers.get("note", pd.Series("", index=numbers.index))
    ours = numbers.source == "this report"
    display = pd.DataFrame(
        {
            "method": [
                f"{m} ({n})" if isinstance(n, str) and n else m
                for m, n in zip(numbers.method, notes, strict=True)
            ],
            "setting": numbers.setting,
            "source": ours.map({True: "ours", False: "quoted"}),
            "seeds": numbers.seeds.map(lambda n: DASH if math.isnan(n) else f"{n:.0f}"),
            f"test {metric_name}": [
                fmt_pm(m, s) if mine else fmt_value(m)
                for m, s, mine in zip(numbers.test_mean, numbers.test_std, ours, strict=True)
            ],
            "95 % CI": [
                fmt_ci(lo, hi) for lo, hi in zip(numbers.test_ci_low, numbers.test_ci_high, strict=True)
            ],
            "layer sparsity %": numbers.per_layer_sparsity,
            "compression": _pm_column(numbers, "compression"),
        }
    )
    if not show_setting(runs):
        display = display.drop(columns="setting")
    cited = sorted({ref.citation for ref in references})
    note = "Ours: mean ± sample std over seeds, 95 % CI of the mean from Student's t. Compression = "
    note += "weights / nonzero weights."
    if cited:
        note += f" Rows marked *quoted* are copied from the papers, not recomputed: {'; '.join(cited)}."
    return Table("paper", "Paper format", numbers, display, note)


def _paper_ours(runs: pd.DataFrame, layers: pd.DataFrame) -> pd.DataFrame:
    stats = group_stats(runs, ["task", "method", "setting"], ["test", "val", "compression"])
    per_layer = layer_means(runs, layers)
    numbers = _keys(stats).assign(source="this report", seeds=stats.n)
    for column in ("test_mean", "test_std", "test_ci_low", "test_ci_high", "val_mean"):
        numbers[column] = stats[column]
    for column in ("compression_mean", "compression_std", "compression_ci_low", "compression_ci_high"):
        numbers[column] = stats[column]
    numbers["per_layer_sparsity"] = [
        fmt_layers(_layer_values(per_layer, row.task, row.method, row.setting)) for row in stats.itertuples()
    ]
    return numbers


def _paper_quoted(task: str, references: tuple[PaperResult, ...]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "task": task,
                "method": ref.method,
                "setting": "",
                "note": ref.note,
                "source": f"paper (quoted): {ref.citation}",
                "seeds": math.nan,
                "test_mean": ref.error,
                "compression_mean": ref.compression,
                "per_layer_sparsity": fmt_layers(ref.per_layer_sparsity),
            }
            for ref in references
        ]
    )


COMPRESSION_COLUMNS = {
    "compression": "weights only",
    "compression_all": "with biases",
    "compression_structured": "structured",
    "compression_precision": "reduced precision",
    "flops_reduction": "FLOPs reduction",
}
"""Aggregated column -> its header in the compression table."""
OPTIONAL_COMPRESSION = ("compression_structured", "compression_precision")


def compression_table(runs: pd.DataFrame) -> Table:
    """Compression under each counting rule, and the FLOPs it saves."""
    columns = ["weights", "nonzeros", *COMPRESSION_COLUMNS]
    stats = group_stats(runs, ["task", "method", "setting"], columns)
    numbers = _keys(stats).assign(seeds=stats.n)
    for c in columns:
        numbers[f"{c}_mean"] = stats[f"{c}_mean"]
        numbers[f"{c}_std"] = stats[f"{c}_std"]
    display = pd.DataFrame(
        {
            "method": numbers.method,
            "setting": numbers.setting,
            "seeds": numbers.seeds.astype(str),
            "weights": numbers.weights_mean.map(fmt_count),
            "nonzero weights": numbers.nonzeros_mean.map(fmt_count),
            **{header: _pm_column(stats, column) for column, header in COMPRESSION_COLUMNS.items()},
        }
    )
    for optional in OPTIONAL_COMPRESSION:
        if stats[f"{optional}_n"].sum() == 0:
            display = display.drop(columns=COMPRESSION_COLUMNS[optional])
    if not show_setting(runs):
        display = display.drop(columns="setting")
    note = ""
    if numbers.weights_mean.nunique() == 1:  # one network: say its size once instead of in every row
        note = f"Every row: {fmt_count(numbers.weights_mean.iloc[0])} weights. "
        display = display.drop(columns="weights")
    note += (
        "Weights only: weight tensors / their nonzeros (the papers' number). With biases: every parameter "
        "of the exported model. Structured: whole rows, filters and channels removed (Bayesian "
        "compression). Reduced precision: bits of the kept weights at the precision their posterior "
        "variance allows. FLOPs: 2 x multiply-adds per example, dense / with zero "
        "weights skipped."
    )
    return Table("compression", "Compression by counting rule", numbers, display, note)


def cost_table(runs: pd.DataFrame, history: pd.DataFrame) -> Table:
    """Training cost: seconds per epoch (and peak memory once the runner logs it)."""
    per_run = runs.assign(epoch_seconds=runs.run_id.map(run_epoch_seconds(history)))
    per_run["train_minutes"] = per_run.epoch_seconds * per_run.epochs / 60.0
    stats = group_stats(
        per_run,
        ["task", "method", "setting"],
        ["epochs", "epoch_seconds", "examples_per_second", "train_minutes", "peak_memory_mb"],
    )
    devices = per_run.groupby(["task", "method", "setting"], sort=False).device.agg(
        lambda d: ", ".join(sorted({str(x) for x in d.dropna()}))
    )
    numbers = _keys(stats).assign(seeds=stats.n)
    for c in ("epochs", "epoch_seconds", "examples_per_second", "train_minutes", "peak_memory_mb"):
        numbers[f"{c}_mean"] = stats[f"{c}_mean"]
        numbers[f"{c}_std"] = stats[f"{c}_std"]
    numbers["device"] = [devices.get((r.task, r.method, r.setting), "") for r in stats.itertuples()]
    display = pd.DataFrame(
        {
            "method": numbers.method,
            "setting": numbers.setting,
            "seeds": numbers.seeds.astype(str),
            "device": numbers.device,
            "epochs": numbers.epochs_mean.map(lambda v: fmt_value(v, 0)),
            "s / epoch": [
                fmt_pm(m, s) for m, s in zip(stats.epoch_seconds_mean, stats.epoch_seconds_std, strict=True)
            ],
            "examples / s": stats.examples_per_second_mean.map(fmt_count),
            "training min": [
                fmt_pm(m, s, 1)
                for m, s in zip(stats.train_minutes_mean, stats.train_minutes_std, strict=True)
            ],
            "peak memory MB": [
                fmt_pm(m, s, 0)
                for m, s in zip(stats.peak_memory_mb_mean, stats.peak_memory_mb_std, strict=True)
            ],
        }
    )
    if stats.peak_memory_mb_n.sum() == 0:
        display = display.drop(columns="peak memory MB")
    if not show_setting(runs):
        display = display.drop(columns="setting")
    note = (
        "Seconds per epoch: training passes only (validation excluded), averaged over epochs, then "
        "mean ± std over seeds. Times depend on the device and on other load on it. Peak memory: the CUDA "
        "allocator's peak on GPU, the process's peak resident memory on CPU."
    )
    return Table("cost", "Training cost", numbers, display, note)


def matched_table(
    summary: pd.DataFrame,
    spans: pd.DataFrame,
    levels: tuple[float, ...],
    metric_name: str,
    min_pairs: int,
    alpha: float,
) -> Table:
    """Each method's test metric at common compression levels, best marked and tested against."""
    numbers = summary.copy()
    rows = []
    for span in spans.itertuples():
        method = span.method
        row = {"method": method, "highest compression": fmt_x(span.high)}
        for level in levels:
            match = numbers[(numbers.method == method) & (numbers.level == level)]
            row[f"{fmt_x(level)}"] = _matched_cell(match.iloc[0]) if not match.empty else DASH
        rows.append(row)
    display = pd.DataFrame(rows)
    note = (
        f"Test {metric_name} of each method at the same compression, over every run of the method whatever "
        f"its setting: each seed's points (every setting's final model and threshold curve) are cut to "
        f"their Pareto front on the validation metric, the test "
        f"metric is interpolated along it on a log-compression axis, then mean ± std over seeds (n). Below "
        f"a front's lowest compression its first point counts (a model at least that compressed exists); "
        f"{DASH}: beyond the highest compression any seed reached. **Bold**: lowest mean at that level "
        f"among methods with {min_pairs} seeds or more; † worse than it (paired t-test over shared seeds, "
        f"p < {alpha}); ≈ not shown worse by that test (p ≥ {alpha}: with {min_pairs} seeds it detects only "
        f"large gaps, so ≈ is no proof of a tie); no mark: fewer than {min_pairs} shared seeds."
    )
    return Table("matched", "Matched compression", numbers, display, note)


def _matched_cell(row: pd.Series) -> str:
    text = f"{fmt_pm(row.test_metric_mean, row.test_metric_std)} (n={row.n})"
    if row.best:
        return f"**{text}**"
    return text + {"worse": " †", "n.s.": " ≈"}.get(row.vs_best, "")


def tests_table(tests: pd.DataFrame) -> Table:
    display = pd.DataFrame(
        {
            "level": tests.level.map(fmt_x),
            "method A": tests.method_a,
            "method B": tests.method_b,
            "shared seeds": tests.n_pairs.astype(str),
            "mean A − B": tests.mean_diff.map(fmt_value),
            "t": tests.t.map(fmt_value),
            "p": tests.p.map(lambda p: DASH if math.isnan(p) else f"{p:.3g}"),
        }
    )
    note = "Paired t-test (scipy.stats.ttest_rel) of the matched test metric, pairing runs by seed."
    return Table("paired_tests", "Paired tests at matched compression", tests, display, note)


def runs_table(runs: pd.DataFrame, commands: dict[str, str]) -> Table:
    numbers = runs.assign(command=runs.run_id.map(commands))
    display = pd.DataFrame(
        {
            "run id": numbers.run_id.str[:RUN_ID_CHARS],
            "method": numbers.method,
            "setting": numbers.setting,
            "seed": numbers.seed.map(lambda s: fmt_value(s, 0)),
            "test": numbers.test.map(fmt_value),
            "val": numbers.val.map(fmt_value),
            "compression": numbers.compression.map(fmt_x),
        }
    )
    if not show_setting(runs):
        display = display.drop(columns="setting")
    note = (
        f"Every number above comes from these MLflow runs (ids by their first {RUN_ID_CHARS} characters; "
        "runs.csv has them whole)."
    )
    return Table("runs", "Runs", numbers, display, note)


def _layer_values(per_layer: pd.DataFrame, task: str, method: str, setting: str) -> list[float]:
    if per_layer.empty:
        return []
    rows = per_layer[(per_layer.task == task) & (per_layer.method == method) & (per_layer.setting == setting)]
    return list(rows.sort_values("position").sparsity_mean)


def _interleave(ours: pd.DataFrame, quoted: pd.DataFrame) -> pd.DataFrame:
    """Each quoted row right after our rows of the same method; quoted-only methods at the end."""
    if quoted.empty:
        return ours.reset_index(drop=True)
    quoted_key = quoted.method.map(normalize_name)
    parts, used = [], set()
    for method, group in ours.groupby("method", sort=False):
        parts.append(group)
        match = quoted[quoted_key == normalize_name(method)]
        parts.append(match)
        used |= set(match.index)
    parts.append(quoted.drop(index=list(used)))
    return pd.concat([p for p in parts if not p.empty], ignore_index=True)
