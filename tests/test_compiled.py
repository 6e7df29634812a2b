"""Compiled kernels (what long runs use, ``train.compile``) compute what the eager code computes."""

from __future__ import annotations

import copy

import pytest
import torch

from sparsebench.method import StepContext
from sparsebench.registry import METHODS, TASKS
from sparsebench.run.loop import place_model
from sparsebench.toolkit import compiled as compiled_kernels
from sparsebench.toolkit import noise


def one_step_grads(
    method_name: str, compiled: bool, **config: object
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss and gradients of one seeded training step of LeNet-5 under the method (``config`` set on it)."""
    task, method = TASKS.get("lenet5")(), METHODS.get(method_name)()
    for name, value in config.items():
        setattr(method.config, name, value)
    torch.manual_seed(0)
    model = place_model(method.convert(task.build_model()), torch.device("cpu")).train()
    if compiled:
        method.enable_compile(model)
    x, y = torch.randn(6, 1, 28, 28), torch.randint(0, 10, (6,))
    ctx = StepContext(epoch=100, step=0, steps_per_epoch=10, total_epochs=200, num_train=60, optimizer=None)

    def step() -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        loss = task.loss(model(x), y)
        reg = method.regularizer(model, ctx)
        total = loss if reg is None else loss + reg
        total.backward()
        return total.detach()

    step()  # compiling may draw from the global generator: warm up before seeding the draws
    torch.manual_seed(1)  # the same noise draws in both
    total = step()
    return total, {n: copy.deepcopy(p.grad) for n, p in model.named_parameters()}


@pytest.mark.parametrize("method_name", ["sparse_vd", "group_nj", "group_hs"])
def test_a_compiled_training_step_equals_the_eager_one(
    method_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(noise, "COMPILED_DRAW_MIN_ELEMENTS", 0)  # a small batch takes the fused draw too
    monkeypatch.setattr(compiled_kernels, "_COMPILED", {})  # to see which kernels this test compiles
    eager_loss, eager_grads = one_step_grads(method_name, compiled=False)
    loss, grads = one_step_grads(method_name, compiled=True)
    # The compiled path really ran (else this would compare eager with eager).
    draw = "scaled_draw_and_slope" if method_name.startswith("group") else "draw_and_slope"
    assert f"sparsebench.toolkit.noise.{draw}" in compiled_kernels._COMPILED
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-5)
    assert grads.keys() == eager_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, eager_grads[name], rtol=1e-4, atol=1e-5, msg=name)


def test_compiled_weight_gates_of_l0_equal_the_eager_autograd_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fused gate draw and penalty (compiled) against autograd through the reference formulas."""
    from sparsebench.methods.l0 import layers as l0_layers

    monkeypatch.setattr(l0_layers, "COMPILED_DRAW_MIN_ELEMENTS", 0)  # every layer takes the fused nodes
    monkeypatch.setattr(compiled_kernels, "_COMPILED", {})
    eager_loss, eager_grads = one_step_grads("l0", compiled=False, granularity="weight", lam=2.0)
    loss, grads = one_step_grads("l0", compiled=True, granularity="weight", lam=2.0)
    kernels = ("gated_weight_and_slope", "gated_weight_grads", "gate_penalty_and_slope", "gate_penalty_grads")
    for kernel in kernels:
        assert f"sparsebench.methods.l0.fused.{kernel}" in compiled_kernels._COMPILED
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-5)
    assert grads.keys() == eager_grads.keys() and any("log_alpha" in name for name in grads)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, eager_grads[name], rtol=1e-4, atol=1e-5, msg=name)
