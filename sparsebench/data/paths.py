"""Where datasets live: ``--data-dir``, else ``$SPARSEBENCH_DATA``, else a per-user cache folder."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "SPARSEBENCH_DATA"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sparsebench" / "data"


def data_root(cli_value: str | os.PathLike | None = None) -> Path:
    """Resolve the data root in the documented order of precedence."""
    if cli_value:
        return Path(cli_value).expanduser()
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    return default_cache_dir()
