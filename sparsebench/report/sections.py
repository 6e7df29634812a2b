"""One task's part of a report: its tables, its figures and the words between them.

``build.py`` selects the runs and writes the files; this module turns one task's runs into blocks
(``document.py``), tables (``tables.py``) and saved PNG figures.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from sparsebench.errors import ConfigError, SparsebenchError
from sparsebench.report import aggregate, figures, tables
from sparsebench.report.document import Block, heading
from sparsebench.report.inference import inference_table
from sparsebench.report.select import RunSet
from sparsebench.task import PaperResult

FIGURE_DPI = 130


@dataclass
class TaskInfo:
    """What the report needs from a task plugin; usable even when the plugin is not installed."""

    name: str
    description: str = ""
    metric_name: str = "metric"
    references: tuple[PaperResult, ...] = ()
    image_side: int | None = None


def task_info(name: str) -> TaskInfo:
    from sparsebench.registry import TASKS

    try:
        cls = TASKS.get(name)
    except SparsebenchError:
        print(f"sparsebench report: task {name!r} is not installed; no paper numbers for it", file=sys.stderr)
        return TaskInfo(name)
    if cls.metric.higher_is_better:
        raise ConfigError(
            f"task {name} scores higher-is-better; reports only rank lower-is-better metrics so far"
        )
    size = math.prod(getattr(cls, "input_shape", ()) or (0,))
    side = math.isqrt(size)
    return TaskInfo(
        name,
        cls.description,
        cls.metric.name,
        tuple(cls.references),
        side if side * side == size and side >= 8 else None,
    )


@dataclass
class TaskData:
    """One task's slice of the run set."""

    runs: pd.DataFrame
    layers: pd.DataFrame
    curves: pd.DataFrame
    history: pd.DataFrame
    inference: pd.DataFrame
    tracking_uri: str
    model_files: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, runs: pd.DataFrame, data: RunSet) -> TaskData:
        ids = set(runs.run_id)
        inference = data.inference
        return cls(
            runs,
            data.layers[data.layers.run_id.isin(ids)],
            data.curves[data.curves.run_id.isin(ids)],
            data.history[data.history.run_id.isin(ids)],
            inference[inference.run_id.isin(ids)] if not inference.empty else inference,
            data.tracking_uri,
            {k: v for k, v in data.model_files.items() if k in ids},
        )


def task_section(
    info: TaskInfo, task: TaskData, levels: tuple[float, ...], colours: figures.Palette, out: Path
) -> tuple[list[Block], list[tables.Table], list[Path]]:
    """The blocks of one task's section, its tables (tagged with the task) and the figures it saved."""
    blocks = [heading(2, f"{info.name}" + (f" — {info.description}" if info.description else ""))]
    table_blocks, task_tables = task_tables_of(info, task, levels)
    figure_blocks, files = task_figures(info, task, levels, colours, out)
    return blocks + table_blocks + figure_blocks, task_tables, files


def task_tables_of(
    info: TaskInfo, task: TaskData, levels: tuple[float, ...]
) -> tuple[list[Block], list[tables.Table]]:
    runs, metric = task.runs, info.metric_name
    paper = tables.paper_table(runs, task.layers, info.references, metric)
    compression = tables.compression_table(runs)
    matched = aggregate.matched_errors(runs, task.curves, levels)
    summary = aggregate.matched_summary(matched)
    tests = aggregate.paired_tests(matched)
    marked = aggregate.best_at_levels(summary, tests) if not summary.empty else summary
    spans = aggregate.front_spans(runs, task.curves)
    matched_table = tables.matched_table(marked, spans, levels, metric, aggregate.MIN_PAIRS, aggregate.ALPHA)
    tests_table = tables.tests_table(tests)
    cost = tables.cost_table(runs, task.history)
    blocks = table_blocks(paper) + table_blocks(compression) + table_blocks(matched_table)
    if tests.p.notna().any():
        blocks += table_blocks(tests_table)
    else:
        blocks.append(
            Block(
                "note",
                f"No paired tests: they need at least {aggregate.MIN_PAIRS} seeds that two "
                "methods share at a compression level both reach.",
            )
        )
    blocks += table_blocks(cost)
    timed = inference_table(runs, task.inference)
    if timed is not None:
        blocks += table_blocks(timed)
    task_tables = [paper, compression, matched_table, tests_table, cost, *([timed] if timed else [])]
    for table in task_tables:
        table.task = info.name
    return blocks, task_tables


def table_blocks(table: tables.Table) -> list[Block]:
    return [heading(3, table.title), Block("table", table=table), Block("note", table.note)]


FRONTIER_CAPTION = (
    "Test {metric} vs compression (log axis). Dots: mean of each setting with one-std error bars over "
    "seeds; thin lines: each run's threshold curve; bold line: the method's Pareto front (chosen on "
    "validation); stars: quoted paper numbers; triangles on the top edge: points beyond the axis, their "
    "value printed; dotted verticals: the matched levels."
)


def task_figures(
    info: TaskInfo, task: TaskData, levels: tuple[float, ...], colours: figures.Palette, out: Path
) -> tuple[list[Block], list[Path]]:
    runs, name = task.runs, info.name
    blocks = [heading(3, "Figures")]
    files: list[Path] = []

    def add(fig: Any, stem: str, caption: str) -> None:
        files.append(save(fig, out, f"{name}_{stem}.png"))
        blocks.append(Block("figure", files[-1].relative_to(out).as_posix(), caption=caption))

    fig = figures.error_vs_compression(runs, task.curves, info.references, info.metric_name, levels, colours)
    add(fig, "error_vs_compression", FRONTIER_CAPTION.format(metric=info.metric_name))
    fig = (
        figures.layer_sparsity(runs, task.layers, info.references, colours) if not task.layers.empty else None
    )
    if fig is not None:
        caption = "Sparsity of each layer's weights (mean over seeds, one-std bars); "
        caption += "hatched: quoted from the paper."
        unsparse = sorted(set(runs.method) - set(_sparse_methods(runs, task.layers)))
        add(
            fig,
            "layer_sparsity",
            caption + (f" Not drawn (no zero weights): {', '.join(unsparse)}." if unsparse else ""),
        )
    fig = figures.training_curves(runs, task.history, info.metric_name, colours)
    if fig is not None:
        caption = (
            "Per-epoch validation metric, sparsity of the current masks, KL term and training loss "
            "(mean over seeds, band: one std)."
        )
        add(fig, "training_curves", caption)
    for method, fig, title in mask_figures(info, task):
        add(fig, f"first_layer_{method}", f"{method}: {title}")
    return blocks, files


def _sparse_methods(runs: pd.DataFrame, layers: pd.DataFrame) -> list[str]:
    merged = layers.merge(runs[["run_id", "method"]], on="run_id")
    peak = merged.groupby("method").sparsity.max()
    return list(peak[peak > 0].index)


def save(fig: Any, out: Path, name: str) -> Path:
    import matplotlib.pyplot as plt

    path = out / "figures" / name
    fig.savefig(path, dpi=FIGURE_DPI)
    plt.close(fig)
    return path


def mask_figures(info: TaskInfo, task: TaskData) -> list[tuple[str, Any, str]]:
    """First-layer keep-masks of one run per method, for tasks whose input is a square image."""
    runs, layers = task.runs, task.layers
    if info.image_side is None or layers.empty:
        return []
    made = []
    for method, mruns in runs.groupby("method", sort=True):
        setting = mruns.setting.value_counts().index[0]
        run = mruns[mruns.setting == setting].sort_values("seed").iloc[0]
        first = layers[(layers.run_id == run.run_id) & (layers.position == 0)]
        if first.empty:
            continue
        model = run_model(task, run.run_id)
        if model is None:
            continue
        layer = str(first.layer.iloc[0])
        mask = model.get("masks", {}).get(layer)
        if mask is None and f"{layer}.weight" in model.get("state_dict", {}):
            mask = model["state_dict"][f"{layer}.weight"] != 0
        if mask is None or bool(mask.all()):
            continue  # nothing removed: an all-white picture says less than the tables
        title = f"{info.name} {method}, first layer {layer} (run {run.run_id[:8]}, seed {run.seed:.0f})"
        fig = figures.first_layer_masks(mask, title, info.image_side)
        if fig is not None:
            made.append(
                (str(method), fig, "first-layer keep-mask; which inputs the sparsified network still reads.")
            )
    return made


def run_model(task: TaskData, run_id: str) -> dict[str, Any] | None:
    """A run's exported model: the model file beside its record (a report from records), else the
    store's artifact."""
    if run_id in task.model_files:
        from sparsebench.record import read_model

        return {"state_dict": read_model(task.model_files[run_id]), "masks": {}}
    if not task.tracking_uri:
        return None
    from sparsebench.report.select import load_model

    return load_model(task.tracking_uri, run_id)
