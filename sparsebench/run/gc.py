"""Removing the checkpoints no run needs any more (``sparsebench gc``).

A checkpoint is what lets a stopped run continue, and it is large (~343 MiB for a VGG Sparse VD
run), so finished runs delete theirs unless ``--keep-checkpoint`` was given. What is left behind
(kept ones, failed runs, runs deleted from the store, runs paused long ago) is collected here.

What may go is decided from the tracking store, never guessed from the files: a run that is
FINISHED or FAILED, or that was deleted from the store, loses its folder; a KILLED run (paused or
interrupted, resumable) only with ``older_than_days``, and so does a folder whose run the store
never had: the checkpoint root can be shared by several stores (``$SPARSEBENCH_CHECKPOINTS``, or
the fallback folder of remote stores), and another store's resumable run must not be lost to a gc
pointed at this one. A RUNNING run never goes, and neither does a run whose lock another process
holds. The lock is held while its folder is deleted, so a
``--resume`` starting at that moment is refused instead of reading a half-deleted checkpoint.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparsebench.errors import ConfigError
from sparsebench.run import checkpoint
from sparsebench.tracking.reader import DELETED

if TYPE_CHECKING:
    from sparsebench.tracking import Store

ABSENT = "ABSENT"
"""The status of a run the store never had (another store's, or its store was replaced)."""
DONE = ("FINISHED", "FAILED", DELETED)
KEPT_UNTIL_OLD = {
    "KILLED": "paused or interrupted, resumable",
    ABSENT: "not a run of this tracking store (another store's, or the store was replaced)",
}
DAY_S = 86400.0


@dataclass
class Folder:
    """One run's checkpoint folder and what gc did (or would do) with it."""

    run_id: str
    status: str
    bytes: int
    age_days: float
    removed: bool = False
    reason: str = ""

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "age_days": round(self.age_days, 3)}


@dataclass
class GcResult:
    """Every checkpoint folder found under ``root``, removed or kept with the reason."""

    root: Path
    dry_run: bool
    folders: list[Folder] = field(default_factory=list)

    @property
    def removed(self) -> list[Folder]:
        return [f for f in self.folders if f.removed]

    @property
    def kept(self) -> list[Folder]:
        return [f for f in self.folders if not f.removed]

    @property
    def bytes_freed(self) -> int:
        return sum(f.bytes for f in self.removed)

    def as_json(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "dry_run": self.dry_run,
            "bytes_freed": self.bytes_freed,
            "removed": [f.as_json() for f in self.removed],
            "kept": [f.as_json() for f in self.kept],
        }


def run_folders(root: Path) -> list[Path]:
    """The run folders under ``root``: directories named by a run id (probe files and others are not)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and checkpoint.RUN_ID.fullmatch(p.name))


def collect(
    store: Store | None,
    root: Path,
    older_than_days: float | None = None,
    dry_run: bool = False,
    now: float | None = None,
) -> GcResult:
    """Remove (or with ``dry_run`` only list) the checkpoint folders under ``root`` no run needs.

    ``store`` is the tracking store that owns the runs; it may be None only when ``root`` holds no
    run folder (there is nothing to decide then).
    """
    if older_than_days is not None and not (math.isfinite(older_than_days) and older_than_days >= 0):
        raise ConfigError(f"--older-than must be a number of days >= 0, got {older_than_days}")
    result = GcResult(root, dry_run)
    paths = run_folders(root)
    if not paths:
        return result
    if store is None:
        raise ConfigError("gc needs the tracking store that owns the runs to decide which checkpoints may go")
    from sparsebench.tracking import run_states

    statuses = run_states(store)  # run id -> status; DELETED for runs deleted from the store
    clock = time.time() if now is None else now
    for path in paths:
        folder = Folder(path.name, statuses.get(path.name, ABSENT), folder_bytes(path), age_days(path, clock))
        folder.reason = _verdict(folder, older_than_days)
        if not folder.reason:
            _remove(path, folder, dry_run)
        result.folders.append(folder)
    return result


def _verdict(folder: Folder, older_than_days: float | None) -> str:
    """Why the folder must stay, or "" when it may go."""
    if folder.status in DONE:
        return ""
    if (why := KEPT_UNTIL_OLD.get(folder.status)) is not None:
        if older_than_days is None:
            return f"{why} (--older-than DAYS removes such folders older than that)"
        if folder.age_days < older_than_days:
            return f"{why}, {folder.age_days:.1f} days old (< {older_than_days:g})"
        return ""
    return f"{folder.status} in the tracking store"


def _remove(path: Path, folder: Folder, dry_run: bool) -> None:
    """Delete the folder while holding the run's lock; a held lock or an OS error keeps it."""
    lock_file = path / "lock"
    if dry_run and not lock_file.exists():  # no lock file: nobody trains it (and a dry run adds none)
        folder.removed = True
        return
    lock = checkpoint.run_lock(folder.run_id, path.parent)
    try:
        lock.acquire()
    except ConfigError:
        folder.reason = "being trained by another process right now"
        return
    try:
        if not dry_run:
            shutil.rmtree(path)
        folder.removed = True
    except OSError as exc:
        folder.reason = f"could not delete: {exc.strerror or exc}"
    finally:
        with contextlib.suppress(OSError):
            lock.lock.release()


def folder_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (links are not followed)."""
    total = 0
    for item in path.rglob("*"):
        with contextlib.suppress(OSError):
            if item.is_file() and not item.is_symlink():
                total += item.lstat().st_size
    return total


def age_days(path: Path, now: float) -> float:
    """Days since the run's last checkpoint was written (the folder's own time when it has none)."""
    saved = path / "checkpoint.pt"
    try:
        mtime = (saved if saved.exists() else path).stat().st_mtime
    except OSError:
        return 0.0
    return max(0.0, (now - mtime) / DAY_S)


def human_bytes(n: int) -> str:
    """``1.5 GiB``: binary units, as ``du -h`` shows them."""
    if n < 1024:
        return f"{n} B"
    value = n / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
