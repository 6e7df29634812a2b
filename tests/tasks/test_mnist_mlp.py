"""The width/depth MNIST MLP (Kingma et al. 2015, Figure 1): its network, its options and its recipes.

The task was built in after recipes_c401f1d.json was pinned, so its recipes are pinned here: it must
train every method exactly as LeNet-300-100 does (same family, same published recipe), and adding it
must leave LeNet-300-100 itself as it was.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from sparsebench.config import apply_overrides, check_ranges
from sparsebench.errors import ConfigError
from sparsebench.measure.counts import layer_table
from sparsebench.registry import METHODS, TASKS
from sparsebench.run.plan import plan_run
from sparsebench.tasks.mnist_mlp import MnistMlp, build_mlp, weight_count

PINNED = json.loads(Path(__file__).with_name("recipes_c401f1d.json").read_text())["recipes"]


def task_with(**options: int) -> MnistMlp:
    task = MnistMlp()
    apply_overrides({"task": task.config}, {f"task.{k}": v for k, v in options.items()})
    return task


def test_the_task_is_registered_with_its_options_and_family() -> None:
    assert TASKS.get("mnist_mlp") is MnistMlp
    assert "mnist_mlp" in TASKS.builtin_names()
    assert (MnistMlp.Config().width, MnistMlp.Config().depth) == (100, 3)
    assert MnistMlp.family == "mnist"  # the methods' MNIST recipe changes apply to it


@pytest.mark.parametrize(("width", "depth"), [(100, 3), (250, 3), (1250, 3), (7, 1), (30, 2)])
def test_layers_and_weight_count_follow_width_and_depth(width: int, depth: int) -> None:
    with torch.device("meta"):
        model = task_with(width=width, depth=depth).build_model()
    linears = [(name, m) for name, m in model.named_children() if isinstance(m, nn.Linear)]
    assert [name for name, _ in linears] == [f"fc{i}" for i in range(1, depth + 2)]
    shapes = [tuple(m.weight.shape) for _, m in linears]
    assert shapes == [(width, 784)] + [(width, width)] * (depth - 1) + [(10, width)]
    assert sum(m.weight.numel() for _, m in linears) == weight_count(width, depth)
    relus = [m for m in model.children() if isinstance(m, nn.ReLU)]
    assert len(relus) == depth


def test_paper_widths_have_the_weight_counts_worked_out_by_hand() -> None:
    # 784 w + 2 w^2 + 10 w for three hidden layers of w units.
    assert weight_count(100, 3) == 78_400 + 20_000 + 1_000
    assert weight_count(1250, 3) == 980_000 + 3_125_000 + 12_500
    assert weight_count(300, 1) == 235_200 + 3_000


def test_forward_shape_and_flops_count_through_the_core() -> None:
    task = task_with(width=50, depth=2)
    torch.manual_seed(0)
    model = task.build_model()
    assert model(torch.randn(4, 784)).shape == (4, 10)
    table = layer_table(model, task.example_input(torch.device("cpu")), task.layer_order(model))
    assert list(table.layer) == ["fc1", "fc2", "fc3"]
    assert int(table.weights.sum()) == weight_count(50, 2)
    assert int(table.flops_dense.sum()) == 2 * weight_count(50, 2)  # one multiply-add per weight


def test_initialisation_is_glorot_uniform_with_zero_biases() -> None:
    torch.manual_seed(0)
    model = build_mlp(400, 2)
    for layer in (model.fc1, model.fc2, model.fc3):
        fan_out, fan_in = layer.weight.shape
        bound = (6.0 / (fan_in + fan_out)) ** 0.5
        assert float(layer.weight.detach().abs().max()) <= bound
        assert float(layer.weight.detach().abs().max()) > 0.95 * bound  # spread over the whole interval
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))


@pytest.mark.parametrize(("key", "value"), [("task.width", 0), ("task.depth", 0)])
def test_a_width_or_depth_below_one_is_refused_before_any_compute(key: str, value: int) -> None:
    task = MnistMlp()
    apply_overrides({"task": task.config}, {key: value})
    with pytest.raises(ConfigError, match=key.split(".")[1]):
        check_ranges({"task": task.config})


def test_every_method_trains_as_it_does_on_lenet300_100() -> None:
    """Same family, same published recipe: each method's resolved recipe is LeNet-300-100's."""
    for method in METHODS.builtin_names():
        ours = plan_run("mnist_mlp", method, {"task.width": 500}).train
        lenet = plan_run("lenet300_100", method, {}).train
        assert ours == lenet, method


def test_the_standard_recipe_is_pinned() -> None:
    recipe = dataclasses.asdict(MnistMlp().recipe_for("standard"))
    assert {k: recipe[k] for k in ("epochs", "batch_size", "optimizer", "lr", "lr_schedule")} == {
        "epochs": 200,
        "batch_size": 100,
        "optimizer": "adam",
        "lr": 1e-3,
        "lr_schedule": "linear",
    }


def test_lenet300_100_is_unchanged_by_the_new_task() -> None:
    """Its network (266,200 weights in 300-100) and every pinned recipe are what they were."""
    model = TASKS.get("lenet300_100")().build_model()
    assert [tuple(m.weight.shape) for m in model if isinstance(m, nn.Linear)] == [
        (300, 784),
        (100, 300),
        (10, 100),
    ]
    for case in (c for c in PINNED if c["task"] == "lenet300_100"):
        got = dataclasses.asdict(plan_run("lenet300_100", case["method"], dict(case["overrides"])).train)
        assert {k: got[k] for k in case["train"]} == case["train"], case["method"]


def test_mnist_pipeline_gives_flat_784_inputs(mnist_dir: Path) -> None:
    """The family's loader (a small MNIST in the real idx format) reshaped to the MLP's input."""
    splits = MnistMlp().load_data(mnist_dir, torch.device("cpu"), val_size=200)
    assert (splits.train.num_examples, splits.val.num_examples, splits.test.num_examples) == (1_000, 200, 300)
    x, y = next(splits.test.iterate(8, shuffle=False, generator=None, drop_last=False))
    assert x.shape == (8, 784) and y.shape == (8,)
    assert MnistMlp().build_model()(x).shape == (8, 10)
