"""The plugin passes the conformance suite sparsebench ships, on the tasks it is meant for.

Run from this folder after ``pip install .``: ``python -m pytest -q tests``.
"""

from __future__ import annotations

import pytest
import torch
from sparsebench.registry import METHODS, TASKS
from sparsebench.testing import check_method_conformance

from sparsebench_l1prune import L1Prune, L1PruneConfig


@pytest.mark.parametrize("task", ["lenet300_100", "lenet5"])
def test_conforms_with_the_default_config(task: str) -> None:
    check_method_conformance(L1Prune(), TASKS.get(task)())


def test_conforms_while_pruning_from_the_first_step() -> None:
    """start=0 prunes during the suite's few steps too, so the masks it checks are not all True."""
    check_method_conformance(L1Prune(L1PruneConfig(threshold=0.01, start=0.0)), TASKS.get("lenet300_100")())


def test_the_entry_point_finds_this_class() -> None:
    assert METHODS.get("l1_prune") is L1Prune


def test_pruning_only_removes_weights_and_keeps_the_masks_in_the_state_dict() -> None:
    """Masks live in the model (so checkpoints keep them) and a weight once pruned stays pruned."""
    from sparsebench.method import StepContext

    torch.manual_seed(0)
    method = L1Prune(L1PruneConfig(threshold=0.01, start=0.0))
    model = method.convert(TASKS.get("lenet300_100")().build_model())
    assert any(key.endswith(".mask") for key in model.state_dict())
    method.on_step_end(model, StepContext(0, 0, 10, 1, 100))
    first = method.masks(model)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.parametrizations.weight.original.fill_(1.0)  # every raw weight well above threshold
    method.on_step_end(model, StepContext(0, 1, 10, 1, 100))
    for path, mask in method.masks(model).items():
        assert torch.equal(mask, first[path])
        assert 0 < int(mask.sum()) < mask.numel()
