"""Conformance checks that any method plugin can reuse in its own tests.

The core trusts a method only through the contract of ``sparsebench.method``: masks keyed by
module path and shaped like the weights, an export of standard layers that holds zeros where the
masks say, a finite regularizer that trains the parameters. These checks hold a plugin to that
contract on a real task model with random data, driving the hooks in the runner's order, so a
plugin that passes here can be trusted by ``sparsebench run``. A third-party plugin reuses them
like optuna's ``optuna/testing/pytest_samplers.py``::

    from sparsebench.registry import TASKS
    from sparsebench.testing import check_method_conformance

    def test_my_method_conforms():
        check_method_conformance(MyMethod(), TASKS.get("lenet5")())

Every failed check raises ``ConformanceError`` (an ``AssertionError``, so pytest reports it as a
test failure) naming the method and what it got wrong.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sparsebench.measure.exported import STANDARD_LAYERS
from sparsebench.method import SparsityMethod
from sparsebench.task import Task
from sparsebench.testing.checks import (
    LOW_LOG_VARIANCE,
    ConformanceError,
    NotApplicableError,
    _fail,
    _forward,
    check_convert_keeps_shapes,
    check_counts,
    check_exported_model,
    check_masks,
    check_regularizer,
    check_regularizer_low_variance,
    check_search_space,
    prepare,
    random_batch,
    set_low_variance,
    step_schedule,
    train_steps,
)
from sparsebench.testing.resume import check_resume_keeps_state

__all__ = [
    "LOW_LOG_VARIANCE",
    "STANDARD_LAYERS",
    "ConformanceError",
    "NotApplicableError",
    "check_method_conformance",
    "check_regularizer_low_variance",
    "check_resume_keeps_state",
    "prepare",
    "random_batch",
    "set_low_variance",
    "step_schedule",
]


def check_method_conformance(
    method: SparsityMethod, task: Task, steps: int = 3, batch_size: int = 8, seed: int = 0
) -> None:
    """Every check in the order of a run: sweep space, convert, regularizer, steps, masks, export, counts.

    Raises ``NotApplicableError`` when the method declares it cannot handle the task's model.
    """
    check_search_space(method)
    setup = prepare(method, task, batch_size=batch_size, seed=seed)
    check_convert_keeps_shapes(setup)
    check_regularizer(method, setup.model, setup.late_context())
    check_regularizer_low_variance(setup)
    train_steps(setup, steps)

    model = setup.model.eval()

    def validate(m: nn.Module) -> float:  # the task's metric on the random batch, like runner.evaluate
        with torch.no_grad():
            out = _forward(task, m, setup.x, training=False)
        return task.finalize_metric(float(task.score_sum(out, setup.y)), len(setup.x))

    calibration = method.calibrate(model, validate)
    bad = {k: v for k, v in calibration.items() if not math.isfinite(float(v))}
    if bad:
        _fail(method, f"calibrate returned non-finite values {bad}")
    masks = method.masks(model)
    check_masks(method, masks, setup.reference)
    exported = check_exported_model(method, model, masks, setup)
    check_counts(method, exported, masks, task)
    thresholds = list(method.curve_levels())
    for t in thresholds[:1] + thresholds[-1:]:  # the ends of a threshold curve, as runner.threshold_curve
        curve_masks = method.masks_at(model, t)
        check_masks(method, curve_masks, setup.reference)
        curve_export = check_exported_model(method, model, curve_masks, setup, same_outputs=False)
        check_counts(method, curve_export, curve_masks, task)
    check_curve_axis(method, model, masks)
    check_resume_keeps_state(method, task, batch_size=batch_size, seed=seed)


def check_curve_axis(method: SparsityMethod, model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """A threshold curve names its axis and passes through the run's own point (``chosen_level``)."""
    if not list(method.curve_levels()):
        return
    if not method.curve_axis:
        _fail(method, "curve_levels is set but curve_axis does not name what the levels are")
    level = method.chosen_level()
    if level is None:
        _fail(method, "curve_levels is set but chosen_level() is None")
    at_level = method.masks_at(model, level)
    differ = sorted(k for k in masks if k not in at_level or not torch.equal(masks[k], at_level[k]))
    if differ or set(at_level) != set(masks):
        _fail(method, f"masks_at(model, chosen_level()) differs from masks(model) for {differ}")
