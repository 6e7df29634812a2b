"""Small file-system checks shared by everything that writes before it trains.

A run that finds its checkpoint folder, its tracking store or its record path unwritable after an
hour of training has lost the hour; each of them is probed first, with this one probe, and each
caller words the error for its own flag.
"""

from __future__ import annotations

import os
from pathlib import Path


def folder_problem(folder: Path) -> str | None:
    """Why ``folder`` cannot be created and written to, or None when it can (a file is made and removed)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".sparsebench-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        return str(exc.strerror or exc)
    return None
