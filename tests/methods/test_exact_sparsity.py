"""Exact-sparsity pruning (``method.sparsity``) of Sparse VD and L0 weight gates, and its toolkit rule.

The matched-sparsity comparison reads every method at the same fraction of weights removed; these
tests hold the exported model to that fraction (within one weight), the ranking to the method's own
score, and the default (no ``method.sparsity``) to the old rules, so existing records keep their
meaning.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsebench.config import apply_overrides
from sparsebench.errors import ConfigError
from sparsebench.measure.counts import layer_table, summarize
from sparsebench.method import SparsityMethod
from sparsebench.registry import METHODS, TASKS
from sparsebench.testing import check_method_conformance
from sparsebench.toolkit.exact import SPARSITY_AXIS, exact_keep, exact_levels

TARGETS = (0.9, 0.95, 0.98, 0.99, 0.995)
EXACT = {
    "sparse_vd": {"method.sparsity": 0.95, "method.curve_sparsities": list(TARGETS)},
    "l0": {"method.granularity": "weight", "method.sparsity": 0.95, "method.curve_sparsities": list(TARGETS)},
}


def configured(name: str, overrides: dict) -> SparsityMethod:
    cls = METHODS.get(name)
    method = cls(cls.Config())
    apply_overrides({"method": method.config}, overrides)
    return method


def trained_like(name: str, task: str = "lenet300_100", seed: int = 0) -> tuple[SparsityMethod, nn.Module]:
    """A converted model whose scores are spread out as after training (random log alphas)."""
    method = configured(name, EXACT[name])
    torch.manual_seed(seed)
    model = method.convert(TASKS.get(task)().build_model()).eval()
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "log_sigma2"):
                module.log_sigma2.normal_(-6.0, 4.0)
            if hasattr(module, "log_alpha") and isinstance(module.log_alpha, nn.Parameter):
                module.log_alpha.normal_(1.0, 2.0)
    return method, model


def test_exact_keep_removes_floor_of_s_n_lowest_first_ties_by_secondary_then_index() -> None:
    primary = {"a": torch.tensor([3.0, 1.0, 2.0]), "b": torch.tensor([[1.0, 5.0], [1.0, 0.5]])}
    keep = exact_keep(primary, 3 / 7)  # 3 of 7 go: 0.5 (b), then the two 1.0s of lower index (a[1], b[0,0])
    assert keep["a"].tolist() == [True, False, True]
    assert keep["b"].tolist() == [[False, True], [True, False]]
    secondary = {"a": torch.tensor([0.0, 9.0, 0.0]), "b": torch.tensor([[9.0, 0.0], [1.0, 0.0]])}
    keep = exact_keep(primary, 3 / 7, secondary)  # among the 1.0s the lowest secondary goes: b[1,0], a[1]
    assert keep["a"].tolist() == [True, False, True]
    assert keep["b"].tolist() == [[True, True], [False, False]]
    assert exact_levels(0.95, [0.99, 0.9, 0.95]) == (0.9, 0.95, 0.99)


@pytest.mark.parametrize("name", sorted(EXACT))
def test_the_exported_model_has_exactly_the_target_sparsity(name: str) -> None:
    method, model = trained_like(name)
    assert method.curve_axis == SPARSITY_AXIS and type(method).curve_axis != SPARSITY_AXIS
    assert method.curve_levels() == TARGETS and method.chosen_level() == 0.95
    task = TASKS.get("lenet300_100")()
    for target in TARGETS:
        exported = method.export(model, method.masks_at(model, target))
        summary = summarize(exported, layer_table(exported, task.example_input(torch.device("cpu"))))
        measured = 1.0 - summary.nonzeros / summary.weights
        assert abs(measured - target) <= 1.0 / summary.weights, (target, measured)


def test_sparse_vd_removes_the_highest_log_alpha_and_leaves_training_alone() -> None:
    method, model = trained_like("sparse_vd")
    layers = {p: m for p, m in model.named_modules() if hasattr(m, "log_sigma2")}
    masks = method.masks_at(model, 0.99)
    log_alpha = {p: (m.log_sigma2 - torch.log(m.weight.pow(2) + 1e-8)).detach() for p, m in layers.items()}
    kept = torch.cat([log_alpha[p][masks[p]] for p in layers])
    removed = torch.cat([log_alpha[p][~masks[p]] for p in layers])
    assert kept.max() <= removed.min()  # one threshold on log alpha separates them, as the rule says
    assert all(m.cfg.threshold == 3.0 for m in layers.values())  # the training forward keeps its rule


def test_l0_keeps_closed_gates_removed_so_a_sparser_run_counts_at_its_own_sparsity() -> None:
    method, model = trained_like("l0")
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "log_alpha"):
                module.log_alpha.fill_(-4.0)  # every gate closed at test time
                module.log_alpha[..., :1] = 4.0  # except one input column per layer
    masks = method.masks_at(model, 0.9)
    open_weights = sum(int(m.keep_mask().sum()) for m in model.modules() if hasattr(m, "keep_mask"))
    assert sum(int(m.sum()) for m in masks.values()) == open_weights  # fewer than 10 % open: all of them


def test_without_the_option_the_old_rules_hold() -> None:
    svd = configured("sparse_vd", {})
    assert svd.curve_axis == "log_alpha_threshold" and svd.chosen_level() == 3.0
    assert len(svd.curve_levels()) == 25
    l0 = configured("l0", {"method.granularity": "weight"})
    assert l0.curve_axis == "" and l0.curve_levels() == () and l0.chosen_level() is None


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        ("sparse_vd", {"method.sparsity": 1.0}, "method.sparsity is the exact fraction"),
        ("sparse_vd", {"method.curve_sparsities": [0.9]}, "needs method.sparsity > 0"),
        ("sparse_vd", {"method.sparsity": 0.9, "method.curve_sparsities": [0.0]}, "must lie in (0, 1)"),
        ("l0", {"method.sparsity": 0.9}, "needs method.granularity=weight"),
    ],
)
def test_bad_exact_settings_are_config_errors(name: str, overrides: dict, message: str) -> None:
    method = configured(name, overrides)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        method.convert(TASKS.get("lenet300_100")().build_model())


@pytest.mark.parametrize("name", sorted(EXACT))
@pytest.mark.parametrize("task_name", ["lenet300_100", "lenet5"])
def test_exact_mode_conforms(name: str, task_name: str) -> None:
    torch.manual_seed(0)
    check_method_conformance(configured(name, EXACT[name]), TASKS.get(task_name)())


@pytest.mark.parametrize("name", sorted(EXACT))
def test_masks_follow_the_own_rule_in_training_and_the_exact_target_once_calibrated(name: str) -> None:
    method, model = trained_like(name)
    own = {k: v.clone() for k, v in method.masks(model).items()}  # per-epoch sparsity: the method's rule
    reference = configured(name, {"method.granularity": "weight"} if name == "l0" else {})
    assert all(torch.equal(own[k], m) for k, m in reference.masks(model).items())
    calibration = method.calibrate(model, lambda m: 0.0)
    rule_sparsity = 100.0 * sum(int((~m).sum()) for m in own.values()) / sum(m.numel() for m in own.values())
    assert next(iter(calibration.values())) == pytest.approx(rule_sparsity)
    exact = method.masks_at(model, 0.95)
    assert all(torch.equal(method.masks(model)[k], exact[k]) for k in exact)
    x = torch.randn(8, 784)
    with torch.no_grad():  # the evaluation pass now computes what the exported model computes
        assert torch.allclose(model(x), method.export(model, exact).eval()(x), atol=1e-5)
