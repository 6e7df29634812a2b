"""Runs in MLflow -> ``reports/<name>/``: report.md, report.html, CSV and LaTeX tables, PNG figures.

The order is check, select, aggregate, draw, write, log; nothing is written before the output
folder is known to be usable and the selection non-empty, so a failed report leaves no files.
What is written is fit to share: no absolute path of this machine, no password of the store.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from sparsebench.errors import ConfigError
from sparsebench.report import aggregate, figures, tables, writers
from sparsebench.report.analyses import run_analyses
from sparsebench.report.document import Block, heading, markdown
from sparsebench.report.formatting import plural
from sparsebench.report.leaderboard import campaign_tables, leaderboard_block
from sparsebench.report.manifest import MANIFEST, manifest_runs, portable_path, portable_uri
from sparsebench.report.records import load_records
from sparsebench.report.sections import TaskData, TaskInfo, table_blocks, task_info, task_section
from sparsebench.report.select import REPORT_EXPERIMENT, NoMatchingRunsError, RunSet, Selection, load_runs

__all__ = ["DEFAULT_LEVELS", "ReportRequest", "ReportResult", "TaskInfo", "make_report", "task_info"]

DEFAULT_LEVELS = (10.0, 20.0, 50.0, 100.0)


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
    records: Path | None = None
    """A campaign's results folder: the report is made from its run records, with no tracking store."""


@dataclass
class ReportResult:
    folder: Path
    files: list[Path]
    runs: int
    mlflow_run_id: str | None
    summaries: dict[str, str] = field(default_factory=dict)
    """Markdown of each task's paper-format table, for the terminal."""


def check_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ConfigError(f"--name {name!r}: use letters, digits, '.', '_' and '-' only (it names a folder)")
    return name


def check_out(out: Path) -> Path:
    """The output folder must be a folder, or creatable as one: checked before anything is read."""
    if out.exists() and not out.is_dir():
        raise ConfigError(
            f"--out {out} is a file, not a folder; give a folder for the report (e.g. reports/NAME)"
        )
    existing = next((p for p in out.parents if p.exists()), Path("."))
    if not existing.is_dir():
        raise ConfigError(f"--out {out}: {existing} is a file, not a folder; give a folder for the report")
    if not os.access(out if out.exists() else existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"--out {out}: {out if out.exists() else existing} is not writable; give another folder"
        )
    return out


def check_levels(levels: tuple[float, ...]) -> None:
    if not levels or any(not (0 < v < float("inf")) for v in levels):
        raise ConfigError("--levels must be positive compression ratios, e.g. --levels 10 20 50 100")


def default_command(request: ReportRequest) -> str:
    if request.records is not None:
        parts = ["sparsebench", "report", "--records", portable_path(request.records)]
        return " ".join(shlex.quote(p) for p in [*parts, "--out", portable_path(request.out)])
    parts = ["sparsebench", "report", *request.selection.as_flags(), "--name", request.name]
    if tuple(request.levels) != DEFAULT_LEVELS:
        parts += ["--levels", *(f"{v:g}" for v in request.levels)]
    return " ".join(shlex.quote(p) for p in parts)


def make_report(request: ReportRequest) -> ReportResult:
    """Write the report folder (and log it to MLflow); raises NoMatchingRunsError before writing."""
    check_name(request.name)
    check_levels(request.levels)
    out = check_out(request.out)
    records = load_records(request.records) if request.records is not None else None
    data = records.data if records is not None else load_runs(request.selection, request.tracking_uri)
    kept, curves, dropped = aggregate.drop_degenerate(data.runs, data.curves)
    if kept.empty:
        raise NoMatchingRunsError(
            f"every selected run is degenerate (a model that keeps no weight, or a metric that is not "
            f"finite: {', '.join(dropped.run_id.str[:8])}); nothing written"
        )
    _clear_previous(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    (out / "tables").mkdir(exist_ok=True)
    command = request.command or default_command(request)
    blocks = _preamble(request, data.runs, command) + _left_out(dropped)
    extra: list[tables.Table] = []
    analysis_files: list[Path] = []
    if records is not None:
        extra = campaign_tables(records)
        blocks += [heading(2, "Campaign rows"), *(b for t in extra for b in table_blocks(t))]
        analysed = run_analyses(records, out)
        blocks += analysed.blocks
        extra += analysed.tables
        analysis_files = analysed.files
    body, all_tables, written, summaries = _sections(replace(data, runs=kept, curves=curves), request, out)
    written += analysis_files
    entries = manifest_runs(data.runs, data.configs, full=records is not None)
    runs_table = tables.runs_table(data.runs, {e["run_id"]: e["command"] for e in entries})
    blocks += body + _runs_blocks(runs_table)
    written += _write_pages(request, blocks, [*extra, *all_tables, runs_table], out)
    if records is not None:
        (out / "leaderboard.md").write_text(leaderboard_block(records.folder))
        written.append(out / "leaderboard.md")
    log = request.log_to_mlflow and records is None
    tracker = _open_report_run(request, len(data.runs)) if log else None
    try:
        _write_manifest(request, out, command, written, entries, tracker)
        if tracker is not None:  # only this report's files, not whatever else lives in the folder
            for path in written:
                folder = path.parent.relative_to(out).as_posix()
                tracker.log_artifact(path, None if folder == "." else folder)
            tracker.finish()
    except BaseException:
        if tracker is not None:
            tracker.finish("KILLED")  # not left RUNNING in the store; the caller reports the error
        raise
    return ReportResult(out, written, len(data.runs), tracker.run_id if tracker else None, summaries)


def _write_manifest(
    request: ReportRequest,
    out: Path,
    command: str,
    written: list[Path],
    entries: list[dict[str, Any]],
    tracker: Any,
) -> None:
    manifest = {
        "name": request.name,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "selection": request.selection.describe() if request.records is None else "run records",
        "tracking_uri": portable_uri(request.tracking_uri) if request.records is None else None,
        "records": portable_path(request.records) if request.records is not None else None,
        "levels": list(request.levels),
        "mlflow_report_run": tracker.run_id if tracker else None,
        "files": sorted(p.relative_to(out).as_posix() for p in written),
        "runs": entries,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))


def _sections(
    data: RunSet, request: ReportRequest, out: Path
) -> tuple[list[Block], list[tables.Table], list[Path], dict[str, str]]:
    """Every task's section, its tables, the figure files and the terminal summary of each task."""
    colours = figures.palette(data.runs)
    blocks: list[Block] = []
    all_tables: list[tables.Table] = []
    files: list[Path] = []
    summaries = {}
    for task, runs in data.runs.groupby("task", sort=True):
        info = task_info(str(task))
        section, task_tables, task_files = task_section(
            info, TaskData.of(runs, data), request.levels, colours, out
        )
        blocks += section
        all_tables += task_tables
        files += task_files
        summaries[str(task)] = writers.to_markdown(task_tables[0].display)
    return blocks, all_tables, files, summaries


def _runs_blocks(runs_table: tables.Table) -> list[Block]:
    return [
        heading(2, "Runs"),
        Block("note", runs_table.note),
        Block("table", table=runs_table),
        Block("p", "The `sparsebench run` command of every run is in `runs.csv` and `manifest.json`."),
    ]


def _write_pages(
    request: ReportRequest, blocks: list[Block], all_tables: list[tables.Table], out: Path
) -> list[Path]:
    """LaTeX and CSV tables, runs.csv, report.md and report.html; returns their paths (and the manifest's)."""
    from sparsebench.report.html import render

    written = []
    task_tables = [t for t in all_tables if t.name != "runs"]
    for table in task_tables:
        path = out / "tables" / f"{table.task}_{table.name}.tex"
        path.write_text(writers.to_latex(table))
        written.append(path)
    written += writers.write_csv(task_tables, out / "tables")
    runs_csv = out / "runs.csv"
    next(t for t in all_tables if t.name == "runs").numbers.to_csv(runs_csv, index=False)
    (out / "report.md").write_text(markdown(blocks))
    (out / "report.html").write_text(render(blocks, f"sparsebench report: {request.name}", out))
    return written + [runs_csv, out / "report.md", out / "report.html", out / MANIFEST]


def _clear_previous(out: Path) -> None:
    """Remove the files an earlier report wrote here (and only those), so none goes stale."""
    manifest = out / MANIFEST
    if not manifest.is_file():
        return
    try:
        old = json.loads(manifest.read_text()).get("files", [])
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return
    for name in old if isinstance(old, list) else []:
        path = (out / str(name)).resolve()
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


def _preamble(request: ReportRequest, runs: pd.DataFrame, command: str) -> list[Block]:
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    methods = ", ".join(sorted(runs.method.unique()))
    if request.records is not None:
        folder = shlex.quote(portable_path(request.records))
        source, again = f"the run records in `{portable_path(request.records)}/runs`", "the same records"
        replay = f"sparsebench reproduce {folder} --row ROW [--seed K]"
        replay_words = (
            "Replay a row from its record (the exact recorded configuration) and compare with its seeds:"
        )
    else:
        source = f"`{portable_uri(request.tracking_uri)}` (selection: {request.selection.describe()})"
        again = "the same MLflow store"
        replay = f"sparsebench reproduce {shlex.quote(portable_path(request.out))}"
        replay_words = (
            "Train the runs behind it again (same configs and seeds; new runs are tagged with this report):"
        )
    return [
        heading(1, f"sparsebench report: {request.name}"),
        Block(
            "p",
            f"{plural(len(runs), 'finished run')} ({methods}) on {', '.join(sorted(runs.task.unique()))}, "
            f"generated {now} from {source}.",
        ),
        Block("p", f"Regenerate this report from {again}:"),
        Block("code", command),
        Block("p", replay_words),
        Block("code", replay),
        Block(
            "note",
            "Error is the task's test metric of the exported model (weights the method removed are exact "
            "zeros); every count is made by the core on that model. A ± is either the sample std over seeds "
            "or the half-width of the 95 % Student's t interval of the mean: each table's note says "
            "which (the leaderboard and the matched-sparsity table use the interval, so the same runs "
            "read wider there). *Quoted* rows are the papers' published numbers, not recomputed here.",
        ),
    ]


def _left_out(dropped: pd.DataFrame) -> list[Block]:
    """Say which runs no table or figure counts, and why (``aggregate.degenerate``)."""
    if dropped.empty:
        return []
    ids = ", ".join(f"`{r[:8]}`" for r in dropped.run_id)
    return [
        Block(
            "note",
            f"Left out of every table and figure but the runs list: {plural(len(dropped), 'degenerate run')} "
            f"({ids}): the final model keeps no weight, or its compression or test metric is not finite. "
            "Threshold-curve points of that kind are left out too.",
        )
    ]
