"""The report's tables: numbers for CSV, formatted strings for Markdown, LaTeX and HTML.

Each table is built twice from the same aggregates: ``numbers`` keeps means, deviations and
interval bounds as floats (for anyone re-plotting), ``display`` shows them the way a paper does
("1.92 ± 0.05", "68x"), so the two can never disagree.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from sparsebench.report.aggregate import group_stats, run_epoch_seconds
from sparsebench.task import PaperResult

DASH = "—"


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


# ---------------------------------------------------------------- formatting


def fmt_value(value: float, digits: int = 2) -> str:
    return DASH if value is None or math.isnan(value) else f"{value:.{digits}f}"


def fmt_pm(mean: float, std: float, digits: int = 2) -> str:
    """``mean ± std``, or the mean alone when one run gives no spread."""
    if mean is None or math.isnan(mean):
        return DASH
    if std is None or math.isnan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def fmt_ci(low: float, high: float, digits: int = 2) -> str:
    if low is None or math.isnan(low):
        return DASH
    return f"[{low:.{digits}f}, {high:.{digits}f}]"


def fmt_x(value: float) -> str:
    """A compression ratio as the papers print it: ``280x``, ``12.3x``."""
    if value is None or math.isnan(value):
        return DASH
    return f"{value:.0f}x" if value >= 100 else f"{value:.1f}x"


def fmt_x_pm(mean: float, std: float) -> str:
    if mean is None or math.isnan(mean):
        return DASH
    if std is None or math.isnan(std):
        return fmt_x(mean)
    digits = 0 if mean >= 100 else 1
    return f"{fmt_x(mean)} ± {std:.{digits}f}"


def fmt_layers(values: list[float] | tuple[float, ...] | None) -> str:
    """Per-layer sparsity in the papers' dashed form, e.g. ``98.9-97.2-62.0``."""
    if not values:
        return DASH
    return "-".join(f"{v:.1f}" for v in values)


def fmt_count(value: float) -> str:
    return DASH if value is None or math.isnan(value) else f"{value:,.0f}"


# ---------------------------------------------------------------- builders


def _keys(stats: pd.DataFrame) -> pd.DataFrame:
    return stats[["task", "method", "setting"]].copy()


def show_setting(runs: pd.DataFrame) -> bool:
    """A setting column is only worth showing when some method has more than one."""
    return bool((runs.setting != "default").any())


def layer_means(runs: pd.DataFrame, layers: pd.DataFrame) -> pd.DataFrame:
    """Mean and std across seeds of each layer's sparsity, per (task, method, setting)."""
    if layers.empty:
        return pd.DataFrame(columns=["task", "method", "setting", "position", "layer", "sparsity_mean"])
    merged = layers.merge(runs[["run_id", "task", "method", "setting"]], on="run_id")
    return group_stats(merged, ["task", "method", "setting", "position", "layer"], ["sparsity"])


def paper_table(
    runs: pd.DataFrame, layers: pd.DataFrame, references: tuple[PaperResult, ...], metric_name: str
) -> Table:
    """The papers' format: network, method, error, per-layer sparsity, compression, beside quoted rows."""
    stats = group_stats(runs, ["task", "method", "setting"], ["test", "val", "compression"])
    per_layer = layer_means(runs, layers)
    numbers = _keys(stats).assign(
        source="this report",
        seeds=stats.n,
        test_mean=stats.test_mean,
        test_std=stats.test_std,
        test_ci_low=stats.test_ci_low,
        test_ci_high=stats.test_ci_high,
        val_mean=stats.val_mean,
        compression_mean=stats.compression_mean,
        compression_std=stats.compression_std,
        compression_ci_low=stats.compression_ci_low,
        compression_ci_high=stats.compression_ci_high,
    )
    numbers["per_layer_sparsity"] = [
        fmt_layers(list(_layer_values(per_layer, row.task, row.method, row.setting)))
        for row in stats.itertuples()
    ]
    task = runs.task.iloc[0]
    quoted = pd.DataFrame(
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
    numbers = _interleave(numbers, quoted)
    display = pd.DataFrame(
        {
            "network": numbers.task,
            "method": [
                f"{m} ({n})" if isinstance(n, str) and n else m
                for m, n in zip(
                    numbers.method, numbers.get("note", pd.Series("", index=numbers.index)), strict=True
                )
            ],
            "setting": numbers.setting,
            "source": numbers.source.map(lambda s: "ours" if s == "this report" else "quoted"),
            "seeds": numbers.seeds.map(lambda n: DASH if math.isnan(n) else f"{n:.0f}"),
            f"test {metric_name}": [
                fmt_pm(m, s) if src == "this report" else fmt_value(m)
                for m, s, src in zip(numbers.test_mean, numbers.test_std, numbers.source, strict=True)
            ],
            "95 % CI": [
                fmt_ci(lo, hi) for lo, hi in zip(numbers.test_ci_low, numbers.test_ci_high, strict=True)
            ],
            "per-layer sparsity %": numbers.per_layer_sparsity,
            "compression": [
                fmt_x_pm(m, s) for m, s in zip(numbers.compression_mean, numbers.compression_std, strict=True)
            ],
        }
    )
    if not show_setting(runs):
        display = display.drop(columns="setting")
    cited = sorted({ref.citation for ref in references})
    note = (
        f"Ours: mean ± sample std over seeds, 95 % CI of the mean from Student's t. Compression = "
        f"weights / nonzero weights. Rows marked *quoted* are copied from the papers, not recomputed: "
        f"{'; '.join(cited)}."
        if cited
        else "Mean ± sample std over seeds, 95 % CI of the mean from Student's t. "
        "Compression = weights / nonzero weights."
    )
    return Table("paper", "Paper format", numbers, display, note)


def compression_table(runs: pd.DataFrame) -> Table:
    """Compression under each counting rule, and the FLOPs it saves."""
    columns = [
        "weights",
        "nonzeros",
        "compression",
        "compression_all",
        "compression_structured",
        "compression_precision",
        "flops_reduction",
    ]
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
            "weights only": [
                fmt_x_pm(m, s) for m, s in zip(stats.compression_mean, stats.compression_std, strict=True)
            ],
            "with biases": [
                fmt_x_pm(m, s)
                for m, s in zip(stats.compression_all_mean, stats.compression_all_std, strict=True)
            ],
            "structured": [
                fmt_x_pm(m, s)
                for m, s in zip(
                    stats.compression_structured_mean, stats.compression_structured_std, strict=True
                )
            ],
            "after precision reduction": [
                fmt_x_pm(m, s)
                for m, s in zip(
                    stats.compression_precision_mean, stats.compression_precision_std, strict=True
                )
            ],
            "FLOPs reduction": [
                fmt_x_pm(m, s)
                for m, s in zip(stats.flops_reduction_mean, stats.flops_reduction_std, strict=True)
            ],
        }
    )
    for optional, column in (
        ("compression_structured", "structured"),
        ("compression_precision", "after precision reduction"),
    ):
        if stats[f"{optional}_n"].sum() == 0:
            display = display.drop(columns=column)
    if not show_setting(runs):
        display = display.drop(columns="setting")
    note = (
        "Weights only: weight tensors / their nonzeros (the papers' number). With biases: every parameter "
        "of the exported model. Structured: whole rows, filters and channels removed (Bayesian "
        "compression). After "
        "precision reduction: bits of the kept weights at the precision their posterior variance allows. "
        "FLOPs: 2 x multiply-adds per example, dense / with zero weights skipped."
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
        f"Test {metric_name} of each method at the same compression: each seed's points (every setting's "
        f"final model and threshold curve) are cut to their Pareto front on the validation metric, the test "
        f"metric is interpolated along it on a log-compression axis, then mean ± std over seeds (n). Below "
        f"a front's lowest compression its first point counts (a model at least that compressed exists); "
        f"{DASH}: beyond the highest compression any seed reached. **Bold**: lowest mean at that level; "
        f"† worse than it, ≈ not distinguishable from it (paired t-test over shared seeds, p < {alpha}); "
        f"no mark: fewer than {min_pairs} shared seeds."
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
            "run id": numbers.run_id,
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
    return Table("runs", "Runs", numbers, display, "Every number above comes from these MLflow runs.")


def _layer_values(per_layer: pd.DataFrame, task: str, method: str, setting: str) -> list[float]:
    if per_layer.empty:
        return []
    rows = per_layer[(per_layer.task == task) & (per_layer.method == method) & (per_layer.setting == setting)]
    return list(rows.sort_values("position").sparsity_mean)


def _interleave(ours: pd.DataFrame, quoted: pd.DataFrame) -> pd.DataFrame:
    """Each quoted row right after our rows of the same method; quoted-only methods at the end."""
    from sparsebench.registry import normalize_name

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


# ---------------------------------------------------------------- writers


def is_text(value: object) -> bool:
    """Words rather than a formatted number ("1.92 ± 0.05", "[1.8, 2.0]", "68x", "—")."""
    return isinstance(value, str) and not re.match(r"^[\s\d.,±x%()\[\]=n*†≈—-]+$", value)


def text_column(values: pd.Series) -> bool:
    """Columns of words read left-aligned, columns of numbers right-aligned so the digits line up."""
    return any(is_text(v) for v in values)


def to_markdown(display: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (no extra dependency: pandas needs ``tabulate`` for this)."""
    header = [str(c) for c in display.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in display.itertuples(index=False):
        lines.append("| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |")
    return "\n".join(lines)


def to_latex(table: Table) -> str:
    """A booktabs table (``\\usepackage{booktabs}``) through pandas' Styler."""
    task = table.task.replace("_", r"\_")  # pandas escapes the cells, not the caption
    text = table.display.replace(r"\*\*(.*)\*\*", r"\1", regex=True).to_latex(
        index=False,
        escape=True,
        caption=f"{task}: {table.title}" if task else table.title,
        column_format="".join("l" if text_column(table.display[c]) else "r" for c in table.display.columns),
        label=f"tab:{table.task}-{table.name}",
    )
    return (
        text.replace("±", r"$\pm$").replace(DASH, "--").replace("†", r"$^\dagger$").replace("≈", r"$\approx$")
    )


def write_csv(tables: list[Table], folder: Path) -> list[Path]:
    """One CSV per table name, the tasks stacked (numbers, not strings)."""
    by_name: dict[str, list[pd.DataFrame]] = {}
    for table in tables:
        by_name.setdefault(table.name, []).append(table.numbers)
    paths = []
    for name, frames in by_name.items():
        path = folder / f"{name}.csv"
        pd.concat(frames, ignore_index=True).to_csv(path, index=False)
        paths.append(path)
    return paths
