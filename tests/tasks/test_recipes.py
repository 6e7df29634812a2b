"""Recipes are data the task and the method declare, and every built-in pair keeps its old recipe.

``recipes_c401f1d.json`` holds the TrainConfig that ``plan_run(task, method, overrides)`` resolved
for every built-in (task, method) pair, written from the code as it was when tasks still compared
method names (commit c401f1d). Whatever the recipe machinery becomes, those numbers stay.
"""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from torch import nn

from sparsebench.config import TrainConfig, apply_overrides
from sparsebench.errors import PluginError
from sparsebench.method import SparsityMethod
from sparsebench.registry import METHODS, TASKS
from sparsebench.task import RECIPE_KINDS, STANDARD_RECIPE, Task, resolve_recipe
from sparsebench.tasks.lenet300_100 import LeNet300100

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = json.loads((Path(__file__).with_name("recipes_c401f1d.json")).read_text())["recipes"]


def case_id(case: dict[str, Any]) -> str:
    extra = ",".join(f"{k}={v}" for k, v in case["overrides"].items())
    return f"{case['task']}-{case['method']}" + (f"-{extra}" if extra else "")


def build(task_name: str, method_name: str, overrides: dict[str, Any]) -> tuple[Task, SparsityMethod]:
    task_cls, method_cls = TASKS.get(task_name), METHODS.get(method_name)
    task, method = task_cls(task_cls.Config()), method_cls(method_cls.Config())
    apply_overrides({"task": task.config, "method": method.config}, overrides)
    return task, method


def assert_same_recipe(got: TrainConfig, want: dict[str, Any]) -> None:
    """Every field the old code set; a field added to TrainConfig since is not pinned here."""
    values = dataclasses.asdict(got)
    assert {k: values[k] for k in want} == want


@pytest.mark.parametrize("case", EXPECTED, ids=case_id)
def test_resolved_recipe_is_the_one_the_old_code_gave(case: dict[str, Any]) -> None:
    task, method = build(case["task"], case["method"], case["overrides"])
    assert_same_recipe(resolve_recipe(task, method), case["train"])


@pytest.mark.parametrize("case", EXPECTED, ids=case_id)
def test_the_run_plan_resolves_the_same_recipe(case: dict[str, Any]) -> None:
    from sparsebench.run.plan import plan_run

    assert_same_recipe(plan_run(case["task"], case["method"], dict(case["overrides"])).train, case["train"])


ADDED_AFTER_THE_PIN = frozenset({"l0"})
"""Methods built in after the table was generated: their recipes are pinned by their own tests."""
TASKS_ADDED_AFTER_THE_PIN = frozenset({"mnist_mlp"})
"""Tasks built in after the table was generated: pinned by their own tests (tests/tasks/test_mnist_mlp.py)."""


def test_the_pinned_table_covers_every_built_in_pair() -> None:
    pairs = {(c["task"], c["method"]) for c in EXPECTED}
    methods = set(METHODS.builtin_names()) - ADDED_AFTER_THE_PIN
    tasks = set(TASKS.builtin_names()) - TASKS_ADDED_AFTER_THE_PIN
    assert pairs == {(t, m) for t in tasks for m in methods}


def test_each_call_gives_a_fresh_recipe() -> None:
    """The method and ``--set train.*`` edit the recipe in place; the task's table must not change."""
    task, method = build("lenet5", "magnitude", {})
    first = resolve_recipe(task, method)
    first.lr = 123.0
    assert resolve_recipe(task, method).lr == 1e-3


class MyVD(SparsityMethod):
    """A third-party method asking for the recipe Sparse VD gets, by declaring the same kind."""

    recipe_kind = "per_weight_alpha"

    def masks(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {}


class Unusual(SparsityMethod):
    recipe_kind = "no_task_publishes_this"

    def masks(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {}


@pytest.mark.parametrize("task_name", ["lenet300_100", "lenet5", "vgg_like", "ptb_lstm"])
def test_a_third_party_method_gets_the_recipe_of_the_kind_it_declares(task_name: str) -> None:
    task = TASKS.get(task_name)()
    builtin = resolve_recipe(task, METHODS.get("sparse_vd")())
    assert resolve_recipe(task, MyVD()) == builtin
    assert resolve_recipe(task, Unusual()) == task.recipe_for(STANDARD_RECIPE)


class MnistLike(LeNet300100):
    """A third-party task of the MNIST family with a recipe of its own (SGD with L2)."""

    family: ClassVar[str] = "mnist"

    def recipes(self) -> dict[str, TrainConfig]:
        return {STANDARD_RECIPE: TrainConfig(optimizer="sgd", lr=0.05, weight_decay=1e-4, batch_size=64)}


def test_a_third_party_task_of_a_family_gets_the_methods_adjustments_for_that_family() -> None:
    task = MnistLike()
    group = resolve_recipe(task, METHODS.get("group_nj")())
    assert (group.optimizer, group.lr, group.batch_size) == ("adam", 1e-3, 128)  # bc's, as on the LeNets
    # Han's L2 is added only where the family's recipe has none: this task's own 1e-4 stays.
    assert resolve_recipe(task, METHODS.get("magnitude")()).weight_decay == 1e-4
    assert resolve_recipe(task, METHODS.get("dense")()).batch_size == 64


def test_a_task_without_a_standard_recipe_is_a_plugin_error() -> None:
    class NoStandard(LeNet300100):
        def recipes(self) -> dict[str, TrainConfig]:
            return {"per_weight_alpha": TrainConfig()}

    with pytest.raises(PluginError, match="standard"):
        resolve_recipe(NoStandard(), METHODS.get("dense")())


def test_every_declared_recipe_kind_is_documented() -> None:
    for name in TASKS.builtin_names():
        assert set(TASKS.get(name)().recipes()) <= set(RECIPE_KINDS), name
    for name in METHODS.builtin_names():
        assert METHODS.get(name).recipe_kind in RECIPE_KINDS, name


def test_old_call_sites_with_names_still_resolve() -> None:
    """``method.adjust_recipe(task.name, task.default_recipe(method.name))`` until the callers move."""
    for case in EXPECTED:
        task, method = build(case["task"], case["method"], case["overrides"])
        assert_same_recipe(method.adjust_recipe(task.name, task.default_recipe(method.name)), case["train"])


def python_files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def test_no_method_module_imports_a_task_module() -> None:
    for path in python_files("methods"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            assert not any(n.startswith("sparsebench.tasks") for n in names), f"{path} imports {names}"


def test_no_task_module_compares_anything_with_a_method_name() -> None:
    """Tasks may quote published numbers per method (PaperResult), but never branch on a name."""
    method_names = set(METHODS.builtin_names())
    for path in python_files("tasks"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Compare):
                continue
            constants = [
                c.value
                for operand in (node.left, *node.comparators)
                for c in ast.walk(operand)
                if isinstance(c, ast.Constant) and isinstance(c.value, str)
            ]
            named = method_names.intersection(constants)
            assert not named, f"{path}:{node.lineno} compares with the method name(s) {sorted(named)}"
