"""Structured compression (methods.md 4.7 item 2, 8) and the physically shrunk model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsebench.measure.structured import (
    Gather,
    shrink_sequential,
    shrunk_size,
    structured_metrics,
    structured_table,
)
from sparsebench.registry import TASKS


def weight_count(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))


def test_shrunk_size_of_hand_built_linear_mask() -> None:
    w = torch.ones(5, 4)
    w[1] = 0  # a dead output neuron
    w[:, 2] = 0  # a dead input
    w[0, 0] = 0  # a single zero inside kept units still costs its slot
    assert shrunk_size(w) == 4 * 3


def test_conv_counts_whole_filters_and_input_channels() -> None:
    w = torch.ones(6, 4, 3, 3)
    w[[0, 3]] = 0  # two dead filters
    w[:, 1] = 0  # one dead input channel
    w[1, 2, 0, 0] = 0  # an isolated zero: no structure removed
    w[2, 0, :, :2] = 0  # a partly zero kernel: still a kept (filter, channel) pair
    assert shrunk_size(w) == 4 * 3 * 9
    # bc's (A*B, C*D) reshape would instead delete the all-zero (filter, channel) rows and the
    # kernel positions: it does not correspond to removing filters; ours does.


def test_table_and_metrics_on_a_masked_model() -> None:
    model = nn.Sequential(nn.Linear(10, 6), nn.ReLU(), nn.Linear(6, 3))
    with torch.no_grad():
        model[0].weight[:, :4] = 0  # 4 dead inputs
        model[0].weight[5] = 0  # a dead neuron ...
        model[2].weight[:, 5] = 0  # ... and its outgoing column
    table = structured_table(model)
    assert table.shrunk.tolist() == [5 * 6, 3 * 5]
    assert table.in_kept.tolist() == [6, 5] and table.out_kept.tolist() == [5, 3]
    metrics = structured_metrics(model)
    assert metrics["compression_structured"] == pytest.approx((60 + 18) / (30 + 15))
    assert metrics["weights_structured"] == 45


def test_all_dense_model_has_structured_compression_one() -> None:
    model = TASKS.get("lenet5")().build_model()
    assert structured_metrics(model)["compression_structured"] == 1.0


def _lenet5_with_group_masks() -> nn.Sequential:
    """LeNet-5 with masks as group pruning leaves them: a removed unit's row and column both go."""
    torch.manual_seed(0)
    model = TASKS.get("lenet5")().build_model().double()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.bias.uniform_(-0.5, 0.5)
        dead1, dead2, dead_fc1 = [2, 7], [0, 5, 9, 31], list(range(10, 400))
        model.conv1.weight[dead1] = 0
        model.conv2.weight[:, dead1] = 0
        model.conv2.weight[dead2] = 0
        for c in dead2:  # a dead conv2 filter kills its 16 flattened inputs of fc1
            model.fc1.weight[:, 16 * c : 16 * (c + 1)] = 0
        model.fc1.weight[:, [16 * 1 + 3, 16 * 4]] = 0  # single dead inputs of live channels
        model.fc1.weight[dead_fc1] = 0
        model.fc2.weight[:, dead_fc1] = 0
    return model.eval()


def test_physically_shrunk_lenet5_equals_the_masked_model() -> None:
    model = _lenet5_with_group_masks()
    x = torch.randn(16, 1, 28, 28, dtype=torch.float64)
    small = shrink_sequential(model, x[:1]).eval()
    assert small.conv1.weight.shape == (18, 1, 5, 5)
    assert small.conv2.weight.shape == (46, 18, 5, 5)
    assert small.fc1.weight.shape == (110, 46 * 16 - 2)
    assert isinstance(small.fc1_inputs, Gather)
    torch.testing.assert_close(small(x), model(x), rtol=0, atol=1e-10)
    assert weight_count(small) == int(structured_table(model).shrunk.sum())


def test_physically_shrunk_lenet300_equals_the_masked_model() -> None:
    torch.manual_seed(1)
    model = TASKS.get("lenet300_100")().build_model().double()
    with torch.no_grad():
        model.fc1.bias.uniform_(-0.2, 0.2)
        model.fc2.bias.uniform_(-0.2, 0.2)
        pixels = torch.randperm(784)[:500]
        model.fc1.weight[:, pixels] = 0  # input pixels the first layer no longer reads
        dead1, dead2 = torch.randperm(300)[:240], torch.randperm(100)[:70]
        model.fc1.weight[dead1] = 0
        model.fc2.weight[:, dead1] = 0
        model.fc2.weight[dead2] = 0
        model.fc3.weight[:, dead2] = 0
    model.eval()
    x = torch.randn(32, 784, dtype=torch.float64)
    small = shrink_sequential(model, x[:1]).eval()
    assert small.fc1.weight.shape == (60, 284) and small.fc3.weight.shape == (10, 30)
    torch.testing.assert_close(small(x), model(x), rtol=0, atol=1e-10)
    assert weight_count(small) == int(structured_table(model).shrunk.sum())


def test_idle_unit_with_a_live_column_is_folded_into_the_next_bias() -> None:
    # Row dead but read downstream: the unit emits relu(bias), a constant the next layer absorbs.
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).double()
    with torch.no_grad():
        model[0].weight[1] = 0
        model[0].bias[1] = 0.7
        model[0].weight[3] = 0
        model[0].bias[3] = -0.4  # relu kills it: removable without any folding
        model[2].weight[:, 4] = 0  # read by nobody
    x = torch.randn(8, 6, dtype=torch.float64)
    small = shrink_sequential(model, x[:1])
    assert small[0].weight.shape == (2, 6) and small[2].weight.shape == (3, 2)
    torch.testing.assert_close(small(x), model(x), rtol=0, atol=1e-12)
    assert weight_count(small) <= int(structured_table(model).shrunk.sum())


def test_padded_conv_keeps_an_idle_channel_it_cannot_fold() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(3 * 4 * 4, 5),
    ).double()
    with torch.no_grad():
        model[0].weight[1] = 0
        model[0].bias[1] = 0.5  # constant 0.5 meets zero padding in conv2: not uniform, kept
        model[0].weight[2] = 0
        model[0].bias[2] = -1.0  # relu(-1) = 0: nothing to fold, removed
        model[2].weight[0] = 0
        model[6].weight[:, 0:16] = 0  # conv2 channel 0 is read by nobody
        model[3].running_mean.uniform_(-1, 1)
        model[3].running_var.uniform_(0.5, 2)
    model.eval()
    x = torch.randn(4, 2, 8, 8, dtype=torch.float64)
    small = shrink_sequential(model, x[:1]).eval()
    assert small[0].weight.shape == (3, 2, 3, 3)
    assert small[2].weight.shape == (2, 3, 3, 3) and small[3].num_features == 2
    assert small[6].weight.shape == (5, 32)
    torch.testing.assert_close(small(x), model(x), rtol=0, atol=1e-10)


def test_unsupported_module_in_the_chain_is_rejected() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="LayerNorm"):
        shrink_sequential(model, torch.randn(1, 4))
