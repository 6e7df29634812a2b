"""Nothing in README.md or reports/ cites a run whose record is not committed (issue 19, item 7).

The README once showed numbers and run ids from an MLflow store that was later lost, and reports/
held folders (runs.csv, figures) that no command could rebuild. These checks keep that from coming
back: every folder under reports/ holds the run records behind it, every report made there cites
only those records, README's run ids and picture come from them, and every relative link of README
and docs/ leads somewhere. Each check returns its problems, so a test also runs it on a tree made
wrong on purpose (the old layout) and sees it fail.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd

from sparsebench import record
from sparsebench.campaign.cells import SPEC_COPY, Cell, recorded_cells

ROOT = Path(__file__).resolve().parents[2]
REPORTS = "reports"
MANIFEST = "manifest.json"
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")
RUN_ID = re.compile(r"(?<![\w./-])[0-9a-f]{8,32}(?![\w/-])")
"""An MLflow run id or its prefix (8 hex characters or more) standing alone in prose or code."""
REPORTS_PATH = re.compile(r"(?<![\w/.-])reports/[A-Za-z0-9_.+/-]*[A-Za-z0-9_+-]")


def committed_run_ids(folder: Path) -> set[str]:
    """Run ids of the records a folder under reports/ holds: a campaign's runs/, or one run's record."""
    ids = {record.read(path).run_id for path in recorded_cells(folder).values()}
    if (folder / record.RECORD_NAME).is_file():
        ids.add(record.read(folder / record.RECORD_NAME).run_id)
    return ids


def has_record(folder: Path) -> bool:
    """Whether ``folder`` is an experiment's or a run's folder: it holds a record, a JSON document with
    the full configuration and the versions that made it (``run_record.json``, an experiment's record)."""
    for path in folder.glob("*.json"):
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and {"version", "config", "versions"} <= set(data):
            return True
    return False


def folder_problems(root: Path) -> list[str]:
    """Every entry of reports/ is a campaign results folder (its spec copy, runs/ of records, reports
    made from them, experiments with their records) or an experiment's folder with its record (in it,
    or in a folder of it: ``sparsebench experiment`` may write before the campaign's first cell)."""
    problems = []
    for entry in sorted((root / REPORTS).iterdir()) if (root / REPORTS).is_dir() else []:
        name = entry.relative_to(root).as_posix()
        if not entry.is_dir():
            problems.append(f"{name}: a file directly under reports/; results live in a campaign folder")
        elif (entry / SPEC_COPY).is_file():
            problems += campaign_problems(root, entry)
        elif not (has_record(entry) or any(has_record(c) for c in entry.iterdir() if c.is_dir())):
            problems.append(f"{name}: no {SPEC_COPY} nor a record (no committed record regenerates it)")
    return problems


def campaign_problems(root: Path, folder: Path) -> list[str]:
    """runs/ holds only records and their models; anything else is a report of the records (its
    manifest is checked by ``report_problems``) or an experiment's folder with its record."""
    problems = []
    recorded = {path.stem for path in recorded_cells(folder).values()}
    for child in sorted(folder.iterdir()):
        name = child.relative_to(root).as_posix()
        if child.name == "runs" and child.is_dir():
            for path in sorted(child.iterdir()):
                stem = path.name.removesuffix(record.MODEL_SUFFIX).removesuffix(".json")
                if stem not in recorded or Cell.parse(stem) is None:
                    problems.append(f"{path.relative_to(root).as_posix()}: not a record nor a record's model")
        elif child.name != SPEC_COPY and not (
            child.is_dir() and ((child / MANIFEST).is_file() or has_record(child))
        ):
            problems.append(f"{name}: not runs/, a report made from the records, nor an experiment's record")
    return problems


def report_problems(root: Path) -> list[str]:
    """Every report under reports/ (a folder with a manifest) is made from the records of the folder
    it sits in and cites no other run, in its manifest or its runs.csv."""
    problems = []
    for manifest in sorted((root / REPORTS).rglob(MANIFEST)):
        folder = manifest.parent
        name = folder.relative_to(root).as_posix()
        data = json.loads(manifest.read_text())
        source = data.get("records")
        if not source or (root / source).resolve() not in [folder.resolve(), *folder.resolve().parents]:
            problems.append(
                f"{name}: made from {source or data.get('tracking_uri')!r}, not its folder's records"
            )
            continue
        ids = committed_run_ids(root / source)
        cited = {str(run.get("run_id")) for run in data.get("runs") or []}
        if (folder / "runs.csv").is_file():
            cited |= set(pd.read_csv(folder / "runs.csv", dtype=str).get("run_id", pd.Series()).dropna())
        problems += [f"{name}: cites run {run} with no record in {source}" for run in sorted(cited - ids)]
    return problems


def readme_problems(root: Path) -> list[str]:
    """README's run ids are committed records' ids, the reports/ paths it names exist, and each
    picture is a file a report made from records lists, with the command that makes it in README."""
    text = (root / "README.md").read_text()
    ids = {i for folder in _campaign_folders(root) for i in committed_run_ids(folder)}
    problems = [
        f"README.md cites run {token}, which no committed record has"
        for token in sorted(set(RUN_ID.findall(text)))
        if re.search(r"\d", token)
        and re.search(r"[a-f]", token)
        and not any(i.startswith(token) for i in ids)
    ]
    problems += [
        f"README.md names {path}, which does not exist"
        for path in sorted(set(REPORTS_PATH.findall(text)))
        if not (root / path).exists()
    ]
    made = {}
    for manifest in sorted((root / REPORTS).rglob(MANIFEST)):
        data = json.loads(manifest.read_text())
        for file in data.get("files") or [] if data.get("records") else []:
            made[(manifest.parent / file).relative_to(root).as_posix()] = str(data.get("command"))
    for image in IMAGE.findall(text):
        command = made.get(image)
        if command is None:
            problems.append(f"README.md shows {image}, which no report made from committed records wrote")
        elif command not in text:
            problems.append(f"README.md shows {image} but does not name its command: {command}")
    return problems


def link_problems(root: Path) -> list[str]:
    """Relative links and images of README.md and every page under docs/ lead to files that exist."""
    problems = []
    for page in [root / "README.md", *sorted((root / "docs").rglob("*.md"))]:
        for target in LINK.findall(page.read_text()):
            path = target.split("#", 1)[0]
            if path and not re.match(r"^[a-z][a-z0-9+.-]*:", path) and not (page.parent / path).exists():
                problems.append(f"{page.relative_to(root).as_posix()} links {target}, which does not exist")
    return problems


def _campaign_folders(root: Path) -> list[Path]:
    return sorted(p for p in (root / REPORTS).iterdir() if p.is_dir()) if (root / REPORTS).is_dir() else []


def all_problems(root: Path) -> list[str]:
    return folder_problems(root) + report_problems(root) + readme_problems(root) + link_problems(root)


def test_every_folder_under_reports_holds_the_records_behind_it() -> None:
    assert not folder_problems(ROOT), "\n".join(folder_problems(ROOT))


def test_every_report_under_reports_cites_only_committed_records() -> None:
    assert not report_problems(ROOT), "\n".join(report_problems(ROOT))


def test_readme_cites_only_committed_runs_and_shows_a_picture_made_from_them() -> None:
    problems = readme_problems(ROOT)
    assert not problems, (
        "\n".join(problems) + "\n(regenerate: sparsebench report --records DIR --out DIR/report)"
    )


def test_links_of_readme_and_docs_lead_somewhere() -> None:
    assert not link_problems(ROOT), "\n".join(link_problems(ROOT))


def test_a_dead_link_in_a_nested_docs_page_is_found(tmp_path: Path) -> None:
    (tmp_path / "docs" / "history-reports").mkdir(parents=True)
    (tmp_path / "README.md").write_text("[docs](docs/history-reports/old.md)\n")
    (tmp_path / "docs" / "history-reports" / "old.md").write_text("[gone](../../reports/old/report.md)\n")
    assert link_problems(tmp_path) == [
        "docs/history-reports/old.md links ../../reports/old/report.md, which does not exist"
    ]


def test_the_checks_fail_on_the_old_layout(tmp_path: Path) -> None:
    """The tree before the retirement: an old report of a lost store in reports/, a stray CSV beside
    a campaign's records, README citing a lost run and showing that report's figure, a dead link."""
    shutil.copytree(ROOT / REPORTS, tmp_path / REPORTS)  # README links into every results folder
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    (tmp_path / "docs").mkdir()
    for page in (ROOT / "docs").glob("*.md"):
        shutil.copy(page, tmp_path / "docs" / page.name)
    (tmp_path / "docs" / "history-reports").symlink_to(ROOT / "docs" / "history-reports")
    for entry in ROOT.iterdir():  # the rest of the tree, which docs may link to, as it is
        if entry.name not in {"README.md", "docs", REPORTS, ".git"}:
            (tmp_path / entry.name).symlink_to(entry)
    experiment = {"version": 1, "config": {"train.epochs": 10}, "versions": {"sparsebench": "0"}}
    experiments = ("kingma/gradient-variance", "one-run", "no-campaign-yet/gradient-variance")
    for folder in (tmp_path / REPORTS / name for name in experiments):
        folder.mkdir(parents=True)
        (folder / "record.json").write_text(json.dumps(experiment))
    (tmp_path / REPORTS / "kingma" / SPEC_COPY).write_text("{}")  # a campaign holding an experiment
    assert all_problems(tmp_path) == []  # the copy of today's tree is clean, so each problem below is ours
    old = tmp_path / REPORTS / "mnist-2026-11-30"
    (old / "figures").mkdir(parents=True)
    (old / "figures" / "error.png").write_bytes(b"")
    (old / "runs.csv").write_text("run_id,test\n26aa37fb0123456789abcdef01234567,1.92\n")
    (old / MANIFEST).write_text(json.dumps({"tracking_uri": "sqlite:///mlruns/mlflow.db", "files": []}))
    (tmp_path / REPORTS / "mnist" / "runs" / "runs.csv").write_text("run_id\n")
    (tmp_path / REPORTS / "mnist" / "runs.csv").write_text("run_id\n")
    readme = tmp_path / "README.md"
    readme.write_text(
        readme.read_text()
        + "\n| sparse_vd | 1.92 % | run `26aa37fb` |\n\n![old](reports/mnist-2026-11-30/figures/error.png)\n"
    )
    history = tmp_path / "docs" / "history.md"
    history.write_text(history.read_text() + "\n[old report](../reports/sweep_sparse_vd/report.md)\n")
    problems = "\n".join(all_problems(tmp_path))
    for expected in (
        "reports/mnist-2026-11-30: no campaign.json nor a record",
        "reports/mnist/runs.csv: not runs/, a report made from the records",
        "reports/mnist/runs/runs.csv: not a record",
        "reports/mnist-2026-11-30: made from 'sqlite:///mlruns/mlflow.db'",
        "README.md cites run 26aa37fb",
        "README.md shows reports/mnist-2026-11-30/figures/error.png, which no report made from committed",
        "docs/history.md links ../reports/sweep_sparse_vd/report.md",
    ):
        assert expected in problems, f"{expected!r} not among:\n{problems}"
