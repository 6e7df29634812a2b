"""The core's counting rules against hand counts and the papers' own numbers (methods.md sections 8, 11.9)."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from sparsebench.measure.counts import check_export, format_compression, layer_table, paper_row, summarize
from sparsebench.registry import TASKS
from sparsebench.task import PaperResult

CPU = torch.device("cpu")


def task_model(name: str) -> tuple[nn.Module, torch.Tensor, list[str]]:
    torch.manual_seed(0)
    task = TASKS.get(name)()
    model = task.build_model()
    return model, task.example_input(CPU), task.layer_order(model)


def prune_to(model: nn.Module, order: list[str], sparsity_percent: tuple[float, ...]) -> None:
    """Zero the first round(s * n) entries of each layer's weight, in network order."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for path, s in zip(order, sparsity_percent, strict=True):
            flat = modules[path].weight.view(-1)
            flat[: round(s / 100 * flat.numel())] = 0.0


def reference(task_name: str, method: str) -> PaperResult:
    task_cls = TASKS.get(task_name)
    return next(r for r in task_cls.references if r.method == method)


@pytest.mark.parametrize(
    ("task_name", "weights", "biases", "flops"),
    [
        # 2 x (235,200 + 30,000 + 1,000) multiply-adds, each applied once per example.
        ("lenet300_100", 266_200, 410, 532_400),
        # conv1 500 x 24*24, conv2 25,000 x 8*8, fc1 400,000, fc2 5,000 positions-weighted, x2.
        ("lenet5", 430_500, 580, 2 * (500 * 576 + 25_000 * 64 + 400_000 + 5_000)),
    ],
)
def test_task_model_counts(task_name: str, weights: int, biases: int, flops: int) -> None:
    model, example, order = task_model(task_name)
    table = layer_table(model, example, order)
    assert int(table.weights.sum()) == weights
    assert int(table.biases.sum()) == biases
    assert int(table.flops_dense.sum()) == flops


@pytest.mark.parametrize("task_name", ["lenet300_100", "lenet5"])
def test_dense_model_is_one_under_every_rule(task_name: str) -> None:
    model, example, order = task_model(task_name)
    with torch.no_grad():  # the tasks start biases at 0, which the all-parameter rule counts as zeros
        for m in model.modules():
            if isinstance(m, nn.Linear | nn.Conv2d):
                m.bias.fill_(0.1)
    table = layer_table(model, example, order)
    summary = summarize(model, table)
    assert summary.compression == summary.compression_all == summary.flops_reduction == 1.0
    assert (table.sparsity == 0).all()
    assert (table.out_units_removed == 0).all() and (table.in_units_removed == 0).all()
    assert format_compression(summary.compression) == "1.0x"


@pytest.mark.parametrize(
    ("task_name", "kept", "compression", "shown"),
    [("lenet300_100", 21_776, 266_200 / 21_776, "12.2x"), ("lenet5", 36_280, 430_500 / 36_280, "11.9x")],
)
def test_han_kept_fractions_give_twelve_times(
    task_name: str, kept: int, compression: float, shown: str
) -> None:
    """Han et al.'s per-layer kept fractions (8/9/26 % and 66/12/8/19 %) give the published 12x."""
    model, example, order = task_model(task_name)
    published = reference(task_name, "magnitude")
    prune_to(model, order, published.per_layer_sparsity)
    summary = summarize(model, layer_table(model, example, order))
    assert summary.nonzeros == kept
    assert summary.compression == pytest.approx(compression, rel=1e-12)
    assert format_compression(summary.compression) == shown
    assert summary.compression == pytest.approx(published.compression, rel=0.02)


def test_published_sparse_vd_sparsities_give_about_seventy_times() -> None:
    """98.9-97.2-62.0 % is 266,200 / 3,807 = 69.9x; the README's 68x differs by the rounding."""
    model, example, order = task_model("lenet300_100")
    published = reference("lenet300_100", "sparse_vd")
    prune_to(model, order, published.per_layer_sparsity)
    table = layer_table(model, example, order)
    summary = summarize(model, table)
    assert list(table.nonzeros) == [2_587, 840, 380]
    assert summary.compression == pytest.approx(266_200 / 3_807, rel=1e-12)
    assert format_compression(summary.compression) == "69.9x"
    assert summary.compression == pytest.approx(published.compression, rel=0.05)
    assert paper_row("lenet300_100", "sparse_vd", 1.92, table, summary) == (
        "lenet300_100 sparse_vd 1.92% 98.9-97.2-62.0 69.9x"
    )


def tiny_net() -> nn.Module:
    """conv 1->2 3x3 on 5x5 (3x3 output, 9 positions), flatten to 18, linear 18->4."""
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 2, 3), flatten=nn.Flatten(), fc=nn.Linear(18, 4)))


def test_flops_by_hand() -> None:
    model = tiny_net()
    with torch.no_grad():
        model.conv.weight.view(-1)[:5] = 0.0  # 13 of 18 conv weights left
        model.fc.weight.view(-1)[:30] = 0.0  # 42 of 72 linear weights left
    table = layer_table(model, torch.zeros(1, 1, 5, 5))
    assert list(table.layer) == ["conv", "fc"]
    # Conv: weights x output positions multiply-adds; linear: one position; 2 FLOPs per multiply-add.
    assert list(table.flops_dense) == [2 * 18 * 9, 2 * 72]
    assert list(table.flops_sparse) == [2 * 13 * 9, 2 * 42]
    summary = summarize(model, table)
    assert (summary.flops_dense, summary.flops_sparse) == (468, 318)
    assert summary.flops_reduction == pytest.approx(468 / 318)


def test_flops_of_a_strided_padded_conv_and_a_batch_first_lstm() -> None:
    conv = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1))
    table = layer_table(conv, torch.zeros(1, 3, 6, 6))
    assert int(table.flops_dense[0]) == 2 * 108 * 9  # 6x6 -> 3x3 output positions

    class Tagger(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(11, 3)
            self.lstm = nn.LSTM(3, 4, batch_first=True)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.lstm(self.embed(tokens))[0]

    table = layer_table(Tagger(), torch.zeros(1, 5, dtype=torch.int64))  # one sequence of 5 tokens
    rows = table.set_index("layer")
    assert int(rows.weights["lstm"]) == 4 * 4 * (3 + 4)
    assert int(rows.flops_dense["lstm"]) == 2 * 112 * 5  # every weight once per time step
    assert int(rows.flops_dense["embed"]) == 0  # a lookup, no multiply-adds


def test_units_removed() -> None:
    model = nn.Sequential(OrderedDict(conv=nn.Conv2d(2, 3, 2), flatten=nn.Flatten(), fc=nn.Linear(3, 5)))
    with torch.no_grad():
        model.conv.weight[0].zero_()  # filter 0: an output channel with no incoming weight
        model.conv.weight[:, 1].zero_()  # input channel 1: read by no filter
        model.fc.weight[1].zero_()  # output unit 1
        model.fc.weight[:, 2].zero_()  # input unit 2
        model.fc.weight[0, 0] = 0.0  # a single zero removes no unit
    table = layer_table(model, torch.zeros(1, 2, 2, 2)).set_index("layer")
    columns = ["out_units", "out_units_removed", "in_units", "in_units_removed"]
    assert table.loc["conv", columns].tolist() == [3, 1, 2, 1]
    assert table.loc["fc", columns].tolist() == [5, 1, 3, 1]
    assert int(table.loc["conv", "nonzeros"]) == 2 * 1 * 4  # filters 1 and 2 keep input channel 0
    assert int(table.loc["fc", "nonzeros"]) == 15 - 3 - 5 + 1 - 1


def test_paper_row_format() -> None:
    model = tiny_net()
    with torch.no_grad():
        model.conv.weight.view(-1)[:9] = 0.0
    table = layer_table(model, torch.zeros(1, 1, 5, 5))
    summary = summarize(model, table)
    assert paper_row("toy", "magnitude", 0.754, table, summary) == "toy magnitude 0.75% 50.0-0.0 1.1x"
    assert paper_row("ptb", "sparse_vd", 109.2249, table, summary, unit="ppl") == (
        "ptb sparse_vd 109.22 ppl 50.0-0.0 1.1x"
    )


@pytest.mark.parametrize(
    ("value", "shown"), [(1.0, "1.0x"), (12.24, "12.2x"), (99.94, "99.9x"), (280.4, "280x")]
)
def test_compression_format(value: float, shown: str) -> None:
    assert format_compression(value) == shown


def test_summary_counts_every_parameter_for_the_all_parameter_rule() -> None:
    model = tiny_net()
    with torch.no_grad():
        model.fc.weight.view(-1)[:8] = 0.0
        model.fc.bias[:2] = 0.0
    summary = summarize(model, layer_table(model, torch.zeros(1, 1, 5, 5)))
    assert (summary.weights, summary.nonzeros) == (90, 82)
    assert (summary.params_all, summary.nonzero_params_all) == (96, 86)
    assert summary.compression_all == pytest.approx(96 / 86)


def test_check_export_accepts_a_faithful_export() -> None:
    model = tiny_net()
    keep = torch.ones(4, 18, dtype=torch.bool)
    keep[0, :5] = False
    with torch.no_grad():
        model.fc.weight[~keep] = 0.0
    check_export(model, {"fc": keep})


def test_check_export_raises_on_a_leaked_weight() -> None:
    model = tiny_net()
    keep = torch.ones(4, 18, dtype=torch.bool)
    keep[0, :5] = False
    with torch.no_grad():
        model.fc.weight[~keep] = 0.0
        model.fc.weight[0, 3] = 1e-30  # one removed weight that is not exactly zero
    with pytest.raises(RuntimeError, match="fc has 1 nonzero weights that its mask removed"):
        check_export(model, {"fc": keep})


def test_check_export_raises_on_a_wrong_key_or_shape() -> None:
    model = tiny_net()
    with pytest.raises(RuntimeError, match="has no layer"):
        check_export(model, {"fc9": torch.ones(4, 18, dtype=torch.bool)})
    with pytest.raises(RuntimeError, match=r"shape \(18, 4\)"):
        check_export(model, {"fc": torch.ones(18, 4, dtype=torch.bool)})


class LanguageModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 3)
        self.lstm = nn.LSTM(3, 4, batch_first=True)
        self.head = nn.Linear(4, 11)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(self.embed(tokens))[0])


def test_check_export_reads_per_matrix_lstm_masks() -> None:
    model = LanguageModel()
    masks = {name: torch.rand(p.shape) > 0.5 for name, p in model.named_parameters() if "lstm.weight" in name}
    with torch.no_grad():
        for name, keep in masks.items():
            model.get_parameter(name).mul_(keep)
    check_export(model, masks)  # faithful: must pass
    with torch.no_grad():
        model.lstm.weight_hh_l0[~masks["lstm.weight_hh_l0"]] = 1.0
    with pytest.raises(RuntimeError, match="weight_hh_l0"):
        check_export(model, masks)
