"""Runs in MLflow -> ``reports/<name>/``: report.md, report.html, CSV and LaTeX tables, PNG figures.

The order is select, aggregate, draw, write, log; nothing is written before the selection is
known to be non-empty, so a report over zero runs leaves no files behind.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from sparsebench.errors import ConfigError, SparsebenchError
from sparsebench.report import aggregate, figures, tables
from sparsebench.report.document import Block, heading, markdown
from sparsebench.report.inference import inference_table
from sparsebench.report.reproduce import MANIFEST, manifest_runs
from sparsebench.report.select import REPORT_EXPERIMENT, RunSet, Selection, load_runs
from sparsebench.task import PaperResult

DEFAULT_LEVELS = (10.0, 20.0, 50.0, 100.0)
FIGURE_DPI = 130


@dataclass
class ReportRequest:
    selection: Selection
    name: str
    out: Path
    tracking_uri: str
    levels: tuple[float, ...] = DEFAULT_LEVELS
    log_to_mlflow: bool = True
    command: str = ""
    """The command line that regenerates this report (shown in it); built from the fields if empty."""


@dataclass
class ReportResult:
    folder: Path
    files: list[Path]
    runs: int
    mlflow_run_id: str | None
    summaries: dict[str, str] = field(default_factory=dict)
    """Markdown of each task's paper-format table, for the terminal."""


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


def check_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ConfigError(f"--name {name!r}: use letters, digits, '.', '_' and '-' only (it names a folder)")
    return name


def default_command(request: ReportRequest) -> str:
    parts = ["sparsebench", "report", *request.selection.as_flags(), "--name", request.name]
    if tuple(request.levels) != DEFAULT_LEVELS:
        parts += ["--levels", *(f"{v:g}" for v in request.levels)]
    return " ".join(shlex.quote(p) for p in parts)


def make_report(request: ReportRequest) -> ReportResult:
    """Write the report folder (and log it to MLflow); raises NoMatchingRunsError before writing."""
    check_name(request.name)
    if not request.levels or any(not (v > 0) for v in request.levels):
        raise ConfigError("--levels must be positive compression ratios, e.g. --levels 10 20 50 100")
    data = load_runs(request.selection, request.tracking_uri)
    out = request.out
    _clear_previous(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    (out / "tables").mkdir(exist_ok=True)
    command = request.command or default_command(request)
    colours = figures.palette(data.runs)
    blocks = _preamble(request, data, command)
    all_tables: list[tables.Table] = []
    written: list[Path] = []
    summaries = {}
    for task, runs in data.runs.groupby("task", sort=True):
        info = task_info(str(task))
        section, task_tables, task_files = _task_section(info, runs, data, request.levels, colours, out)
        blocks += section
        all_tables += task_tables
        written += task_files
        summaries[str(task)] = tables.to_markdown(task_tables[0].display)
    entries = manifest_runs(data.runs, data.configs)
    commands = {e["run_id"]: e["command"] for e in entries}
    runs_table = tables.runs_table(data.runs, commands)
    all_tables.append(runs_table)
    blocks += [
        heading(2, "Runs"),
        Block("note", runs_table.note),
        Block("table", table=runs_table),
        Block("p", "The `sparsebench run` command of every run is in `runs.csv` and `manifest.json`."),
    ]
    for table in all_tables:
        if table.name != "runs":
            path = out / "tables" / f"{table.task}_{table.name}.tex"
            path.write_text(tables.to_latex(table))
            written.append(path)
    written += tables.write_csv([t for t in all_tables if t.name != "runs"], out / "tables")
    runs_csv = out / "runs.csv"
    runs_table.numbers.to_csv(runs_csv, index=False)
    (out / "report.md").write_text(markdown(blocks))
    from sparsebench.report.html import render

    (out / "report.html").write_text(render(blocks, f"sparsebench report: {request.name}", out))
    written += [runs_csv, out / "report.md", out / "report.html", out / MANIFEST]
    tracker = _open_report_run(request, len(data.runs)) if request.log_to_mlflow else None
    manifest = {
        "name": request.name,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "selection": request.selection.describe(),
        "tracking_uri": request.tracking_uri,
        "levels": list(request.levels),
        "mlflow_report_run": tracker.run_id if tracker else None,
        "files": sorted(str(p.relative_to(out)) for p in written),
        "runs": entries,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    if tracker is not None:  # only this report's files, not whatever else lives in the folder
        for path in written:
            folder = path.parent.relative_to(out).as_posix()
            tracker.log_artifact(path, None if folder == "." else folder)
        tracker.finish()
    return ReportResult(out, written, len(data.runs), tracker.run_id if tracker else None, summaries)


def _clear_previous(out: Path) -> None:
    """Remove the files an earlier report wrote here (and only those), so none goes stale."""
    manifest = out / MANIFEST
    if not manifest.exists():
        return
    try:
        old = json.loads(manifest.read_text()).get("files", [])
    except json.JSONDecodeError:
        return
    for name in old:
        path = (out / name).resolve()
        if out.resolve() in path.parents and path.is_file():
            path.unlink()


def _open_report_run(request: ReportRequest, runs: int) -> Any:
    from sparsebench.tracking import Tracker

    return Tracker.open(
        request.tracking_uri,
        REPORT_EXPERIMENT,
        tags={
            "sparsebench.report": request.name,
            "selection": request.selection.describe(),
            "runs": str(runs),
        },
        run_name=f"report-{request.name}",
    )


def _preamble(request: ReportRequest, data: RunSet, command: str) -> list[Block]:
    runs = data.runs
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    methods = ", ".join(sorted(runs.method.unique()))
    return [
        heading(1, f"sparsebench report: {request.name}"),
        Block(
            "p",
            f"{len(runs)} finished runs ({methods}) on {', '.join(sorted(runs.task.unique()))}, generated "
            f"{now} from `{request.tracking_uri}` (selection: {request.selection.describe()}).",
        ),
        Block("p", "Regenerate this report from the same MLflow store:"),
        Block("code", command),
        Block(
            "p",
            "Train the runs behind it again (same configs and seeds; new runs are tagged with this report):",
        ),
        Block("code", f"sparsebench reproduce {request.out}"),
        Block(
            "note",
            "Error is the task's test metric of the exported model (weights the method removed are exact "
            "zeros); every count is made by the core on that model. Mean ± sample std over seeds; 95 % CI of "
            "the mean from Student's t. *Quoted* rows are the papers' published numbers, not recomputed "
            "here.",
        ),
    ]


def _task_section(
    info: TaskInfo,
    runs: pd.DataFrame,
    data: RunSet,
    levels: tuple[float, ...],
    colours: figures.Palette,
    out: Path,
) -> tuple[list[Block], list[tables.Table], list[Path]]:
    ids = set(runs.run_id)
    layers = data.layers[data.layers.run_id.isin(ids)]
    curves = data.curves[data.curves.run_id.isin(ids)]
    history = data.history[data.history.run_id.isin(ids)]
    metric = info.metric_name

    paper = tables.paper_table(runs, layers, info.references, metric)
    compression = tables.compression_table(runs)
    matched = aggregate.matched_errors(runs, curves, levels)
    summary = aggregate.matched_summary(matched)
    tests = aggregate.paired_tests(matched)
    marked = aggregate.best_at_levels(summary, tests) if not summary.empty else summary
    spans = aggregate.front_spans(runs, curves)
    matched_table = tables.matched_table(marked, spans, levels, metric, aggregate.MIN_PAIRS, aggregate.ALPHA)
    tests_table = tables.tests_table(tests)
    cost = tables.cost_table(runs, history)

    blocks = [heading(2, f"{info.name}" + (f" — {info.description}" if info.description else ""))]
    blocks += _table_blocks(paper) + _table_blocks(compression) + _table_blocks(matched_table)
    if tests.p.notna().any():
        blocks += _table_blocks(tests_table)
    else:
        blocks.append(
            Block(
                "note",
                f"No paired tests: they need at least {aggregate.MIN_PAIRS} seeds that two "
                "methods share at a compression level both reach.",
            )
        )
    blocks += _table_blocks(cost)
    timed = inference_table(runs, data.inference)
    if timed is not None:
        blocks += _table_blocks(timed)

    blocks.append(heading(3, "Figures"))
    files: list[Path] = []
    fig = figures.error_vs_compression(runs, curves, info.references, metric, levels, colours)
    files.append(_save(fig, out, f"{info.name}_error_vs_compression.png"))
    blocks.append(
        Block(
            "figure",
            _rel(files[-1], out),
            caption=f"Test {metric} vs compression (log axis). Dots: mean of each setting with one-std "
            "error bars over seeds; thin lines: each run's threshold curve; bold line: the "
            "method's Pareto front (chosen on validation); stars: quoted paper numbers; dotted "
            "verticals: the matched levels.",
        )
    )
    fig = figures.layer_sparsity(runs, layers, info.references, colours) if not layers.empty else None
    if fig is not None:
        files.append(_save(fig, out, f"{info.name}_layer_sparsity.png"))
        unsparse = sorted(set(runs.method) - set(_sparse_methods(runs, layers)))
        caption = (
            "Sparsity of each layer's weights (mean over seeds, one-std bars); hatched: quoted from the "
            "paper."
        )
        if unsparse:
            caption += f" Not drawn (no zero weights): {', '.join(unsparse)}."
        blocks.append(Block("figure", _rel(files[-1], out), caption=caption))
    fig = figures.training_curves(runs, history, metric, colours)
    if fig is not None:
        files.append(_save(fig, out, f"{info.name}_training_curves.png"))
        blocks.append(
            Block(
                "figure",
                _rel(files[-1], out),
                caption="Per-epoch validation metric, sparsity of the current masks, KL term and "
                "training loss (mean over seeds, band: one std).",
            )
        )
    for method, path, caption in _mask_figures(info, runs, layers, data.tracking_uri, out):
        files.append(path)
        blocks.append(Block("figure", _rel(path, out), caption=f"{method}: {caption}"))
    task_tables = [paper, compression, matched_table, tests_table, cost, *([timed] if timed else [])]
    for table in task_tables:
        table.task = info.name
    return blocks, task_tables, files


def _sparse_methods(runs: pd.DataFrame, layers: pd.DataFrame) -> list[str]:
    merged = layers.merge(runs[["run_id", "method"]], on="run_id")
    peak = merged.groupby("method").sparsity.max()
    return list(peak[peak > 0].index)


def _table_blocks(table: tables.Table) -> list[Block]:
    return [heading(3, table.title), Block("table", table=table), Block("note", table.note)]


def _save(fig: Any, out: Path, name: str) -> Path:
    import matplotlib.pyplot as plt

    path = out / "figures" / name
    fig.savefig(path, dpi=FIGURE_DPI)
    plt.close(fig)
    return path


def _rel(path: Path, out: Path) -> str:
    return str(path.relative_to(out))


def _mask_figures(
    info: TaskInfo, runs: pd.DataFrame, layers: pd.DataFrame, tracking_uri: str, out: Path
) -> list[tuple[str, Path, str]]:
    """First-layer keep-masks of one run per method, for tasks whose input is a square image."""
    from sparsebench.report.select import load_model

    if info.image_side is None or layers.empty:
        return []
    made = []
    for method, mruns in runs.groupby("method", sort=True):
        setting = mruns.setting.value_counts().index[0]
        run = mruns[mruns.setting == setting].sort_values("seed").iloc[0]
        first = layers[(layers.run_id == run.run_id) & (layers.position == 0)]
        if first.empty:
            continue
        model = load_model(tracking_uri, run.run_id)
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
        if fig is None:
            continue
        path = _save(fig, out, f"{info.name}_first_layer_{method}.png")
        made.append((method, path, "first-layer keep-mask; which inputs the sparsified network still reads."))
    return made
