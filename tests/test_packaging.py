"""The wheel's package list is written by hand in pyproject.toml; these checks keep it from drifting.

``methods/``, ``tasks/`` and ``sweeps/`` live at the top of the repository but install under
``sparsebench.``, so setuptools' automatic discovery cannot be used and a new subpackage (or sweep
spec) is silently left out of a regular install while the editable install the tests use still
finds it. These checks read pyproject.toml and the source tree only; nothing is built (CI's
``.ci/wheel_check.sh`` inspects a real wheel).
"""

from __future__ import annotations

from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]

SOURCE_ROOTS = {"sparsebench": "sparsebench", "methods": "sparsebench.methods", "tasks": "sparsebench.tasks"}
"""Source folder -> the import name it installs as."""

SWEEPS_PACKAGE = "sparsebench.sweeps"


@pytest.fixture(scope="module")
def setuptools_table() -> dict:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)["tool"]["setuptools"]


def source_folder(package: str, package_dir: dict[str, str]) -> Path:
    """The folder setuptools reads ``package`` from: the longest mapped prefix, else the dotted path."""
    for prefix in sorted(package_dir, key=len, reverse=True):
        if package == prefix or package.startswith(prefix + "."):
            rest = package[len(prefix) :].lstrip(".").split(".") if package != prefix else []
            return ROOT.joinpath(package_dir[prefix], *rest)
    return ROOT.joinpath(*package.split("."))


def source_packages() -> dict[str, Path]:
    """Every folder holding an ``__init__.py`` under the source roots, by the name it installs as."""
    found: dict[str, Path] = {}
    for folder, name in SOURCE_ROOTS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / folder).parts
            if "__pycache__" not in parts:
                found[".".join((name, *parts))] = init.parent
    return found


def test_every_source_package_is_listed(setuptools_table: dict) -> None:
    listed = set(setuptools_table["packages"])
    missing = sorted(set(source_packages()) - listed)
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {missing}"


def test_every_listed_package_reads_from_the_right_folder(setuptools_table: dict) -> None:
    package_dir = setuptools_table.get("package-dir", {})
    expected = source_packages()
    for package in setuptools_table["packages"]:
        folder = source_folder(package, package_dir)
        assert folder.is_dir(), f"{package} is listed but its folder {folder} does not exist"
        if package in expected:
            assert folder == expected[package], f"{package} would be read from {folder}"


def test_no_module_folder_lacks_an_init() -> None:
    """A folder of modules without ``__init__.py`` would escape the first check and the wheel."""
    for folder in SOURCE_ROOTS:
        for module in (ROOT / folder).rglob("*.py"):
            if "__pycache__" not in module.parts:
                assert (module.parent / "__init__.py").exists(), f"{module.parent} has no __init__.py"


def test_every_sweep_spec_is_package_data(setuptools_table: dict) -> None:
    sweeps = source_folder(SWEEPS_PACKAGE, setuptools_table.get("package-dir", {}))
    assert SWEEPS_PACKAGE in setuptools_table["packages"]
    patterns = setuptools_table.get("package-data", {}).get(SWEEPS_PACKAGE, [])
    shipped = {path for pattern in patterns for path in sweeps.glob(pattern)}  # setuptools globs alike
    specs = {p for p in sweeps.rglob("*") if p.suffix in (".yaml", ".yml")}
    assert specs, f"no sweep specs found under {sweeps}"
    missing = sorted(str(p.relative_to(sweeps)) for p in specs - shipped)
    assert not missing, f"[tool.setuptools.package-data] {SWEEPS_PACKAGE!r} does not match {missing}"
