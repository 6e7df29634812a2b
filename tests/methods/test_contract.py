"""The method interface: every hook the core calls is declared, and the threshold curve has one meaning.

``masks_at(model, level)`` reads ``level`` on the axis the method names in ``curve_axis``, and the
method's own masks are the curve's point at ``chosen_level()``; a curve without a named axis, or
whose chosen point is not the run's masks, would plot numbers from different scales in one column.
"""

from __future__ import annotations

import inspect

import pytest
import torch

from sparsebench.config import TrainConfig
from sparsebench.method import SparsityMethod, StepContext
from sparsebench.registry import METHODS, TASKS

HOOKS = (
    "adjust_recipe",
    "convert",
    "enable_compile",
    "on_train_start",
    "regularizer",
    "on_step_end",
    "epoch_metrics",
    "calibrate",
    "masks",
    "export",
    "curve_levels",
    "chosen_level",
    "masks_at",
    "search_space",
    "not_applicable",
    "posterior_variances",
)


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_the_core_calls_is_declared_and_documented(hook: str) -> None:
    member = getattr(SparsityMethod, hook)
    assert callable(member) and inspect.getdoc(member), f"SparsityMethod.{hook} needs a docstring"


def test_the_class_docstring_says_where_state_must_live() -> None:
    doc = inspect.getdoc(SparsityMethod) or ""
    assert "buffers" in doc and "--resume" in doc


def test_defaults_change_nothing() -> None:
    class Minimal(SparsityMethod):
        def masks(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
            return {}

    method, model = Minimal(), torch.nn.Linear(2, 2)
    ctx = StepContext(epoch=0, step=0, steps_per_epoch=1, total_epochs=1, num_train=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert method.on_train_start(model, (torch.zeros(1, 2), torch.zeros(1)), ctx) is None
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert method.curve_levels() == () and method.chosen_level() is None and method.curve_axis == ""
    recipe = TrainConfig()
    assert method.adjust_recipe(TASKS.get("lenet5")(), recipe) is recipe
    with pytest.raises(NotImplementedError):
        method.masks_at(model, 0.0)


CURVED = [n for n in METHODS.builtin_names() if METHODS.get(n)().curve_levels()]


def test_the_built_in_curves_are_the_ones_expected() -> None:
    assert set(CURVED) == {"sparse_vd", "group_nj", "group_hs"}
    assert METHODS.get("sparse_vd").curve_axis == "log_alpha_threshold"
    assert METHODS.get("group_nj").curve_axis == METHODS.get("group_hs").curve_axis == "threshold_shift"


@pytest.mark.parametrize("name", CURVED)
def test_a_curve_names_its_axis_and_passes_through_the_runs_own_masks(name: str) -> None:
    method = METHODS.get(name)()
    assert method.curve_axis, f"{name} has curve levels but no curve_axis naming them"
    levels = list(method.curve_levels())
    assert levels == sorted(levels) and method.chosen_level() in levels
    torch.manual_seed(0)
    model = method.convert(TASKS.get("lenet300_100")().build_model()).eval()
    own = method.masks(model)
    at_chosen = method.masks_at(model, method.chosen_level())
    assert own.keys() == at_chosen.keys()
    assert all(torch.equal(own[k], at_chosen[k]) for k in own)
    kept = [sum(int(m.sum()) for m in method.masks_at(model, lv).values()) for lv in (levels[0], levels[-1])]
    assert kept[0] <= kept[-1]  # higher level, more kept, on either axis
