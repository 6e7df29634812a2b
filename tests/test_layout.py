"""The architecture rules, checked on the source (an AST walk), so they cannot drift.

- every module of ``sparsebench/``, ``methods/`` and ``tasks/`` is at most 400 lines and every
  function at most 60 (short modules and functions are what make a part readable on its own);
- ``mlflow`` is imported only in ``sparsebench/tracking/`` (one door to the store) and ``optuna``
  only in the sweep and campaign packages;
- methods never import tasks and tasks never import methods (a recipe difference is data).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for folder in ("sparsebench", "methods", "tasks") for p in sorted((ROOT / folder).rglob("*.py"))]
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60

FUNCTION_ALLOW_LIST: dict[str, str] = {}
"""``path:function`` -> why it may be longer than MAX_FUNCTION_LINES (keep this short)."""

IMPORT_HOMES = {
    "mlflow": ("sparsebench/tracking/",),
    "optuna": ("sparsebench/sweep/", "sparsebench/campaign/"),
}


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def imported_modules(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_the_walk_sees_the_package() -> None:
    names = {relative(p) for p in SOURCES}
    assert {"sparsebench/run/loop.py", "sparsebench/tracking/__init__.py", "tasks/lenet5.py"} <= names


@pytest.mark.parametrize("path", SOURCES, ids=relative)
def test_module_is_short(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{relative(path)} has {lines} lines (at most {MAX_MODULE_LINES})"


@pytest.mark.parametrize("path", SOURCES, ids=relative)
def test_functions_are_short(path: Path) -> None:
    tree = ast.parse(path.read_text())
    long = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            key = f"{relative(path)}:{node.name}"
            if length > MAX_FUNCTION_LINES and key not in FUNCTION_ALLOW_LIST:
                long.append(f"{node.name} ({length} lines)")
    assert not long, f"{relative(path)}: functions over {MAX_FUNCTION_LINES} lines: {', '.join(long)}"


@pytest.mark.parametrize("path", SOURCES, ids=relative)
def test_heavy_libraries_have_one_home(path: Path) -> None:
    imported = imported_modules(ast.parse(path.read_text()))
    for library, homes in IMPORT_HOMES.items():
        uses = {name for name in imported if name == library or name.startswith(f"{library}.")}
        if uses:
            assert relative(path).startswith(homes), (
                f"{relative(path)} imports {sorted(uses)}; only {homes} may"
            )


@pytest.mark.parametrize("path", SOURCES, ids=relative)
def test_methods_and_tasks_do_not_import_each_other(path: Path) -> None:
    imported = imported_modules(ast.parse(path.read_text()))
    name = relative(path)
    if name.startswith("methods/"):
        assert not {m for m in imported if m.startswith("sparsebench.tasks")}, name
    if name.startswith("tasks/"):
        assert not {m for m in imported if m.startswith("sparsebench.methods")}, name


def test_the_allow_list_names_real_functions() -> None:
    for key in FUNCTION_ALLOW_LIST:
        path, _, function = key.partition(":")
        tree = ast.parse((ROOT / path).read_text())
        assert any(getattr(n, "name", None) == function for n in ast.walk(tree)), key
