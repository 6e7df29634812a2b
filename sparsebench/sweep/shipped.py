"""The sweep specs shipped with the package, by name: ``sparsebench sweep sparse_vd_lenet300_100``.

The specs live in ``sweeps/`` of the repository and install as package data of ``sparsebench.sweeps``,
so they are read through ``importlib.resources``: a user of a wheel has no ``sweeps/`` folder to point
a path at, and every message that sends users to a spec names what ``sparsebench sweep --list`` shows.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

PACKAGE = "sparsebench.sweeps"
LIST_HINT = "`sparsebench sweep --list` shows the shipped specs"


@dataclass(frozen=True)
class ShippedSpec:
    """One shipped spec as ``--list`` shows it."""

    name: str
    task: str
    method: str
    description: str


def shipped_names() -> list[str]:
    """Names of the shipped specs (file names without ``.yaml``), sorted."""
    folder = resources.files(PACKAGE)
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def shipped_text(name: str) -> str | None:
    """The YAML of the shipped spec ``name`` (``.yaml`` optional), or None when there is none."""
    name = name.removesuffix(".yaml")
    if name not in shipped_names():
        return None
    return resources.files(PACKAGE).joinpath(f"{name}.yaml").read_text(encoding="utf-8")


def shipped_specs() -> list[ShippedSpec]:
    """Every shipped spec with its task, method and the one-line description its header gives."""
    out = []
    for name in shipped_names():
        text = shipped_text(name) or ""
        data = yaml.safe_load(text) or {}
        out.append(ShippedSpec(name, str(data.get("task", "")), str(data.get("method", "")), _summary(text)))
    return out


def resolve(target: str | Path) -> tuple[str, str | None]:
    """``(label, text)`` of a spec given as a file path or a shipped name; text None when neither exists.

    A path that exists wins, so a user's own ``sparse_vd_lenet5.yaml`` in the current directory is
    read rather than the shipped spec of the same name.
    """
    path = Path(target)
    if path.is_file():
        return str(target), path.read_text(encoding="utf-8")
    if len(path.parts) == 1:
        return str(target), shipped_text(str(target))
    return str(target), None


def not_found_message(target: str | Path) -> str:
    """Why ``target`` names no spec, the closest shipped name, and where the names are listed."""
    stem = Path(str(target)).name.removesuffix(".yaml")
    close = difflib.get_close_matches(stem, shipped_names(), n=1)
    hint = f"did you mean `sparsebench sweep {close[0]}`? " if close else ""
    return f"sweep spec {target} not found: no such file, nor a shipped spec name; {hint}{LIST_HINT}"


def _summary(text: str) -> str:
    """The first header comment that is not a usage line."""
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        comment = line.lstrip("#").strip()
        if comment and "sparsebench sweep" not in comment:
            return comment
    return ""
