"""Timing statistics and the break-even search."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from torch import nn

from sparsebench.bench.breakeven import (
    break_even_point,
    break_even_table,
    layer_shapes,
    random_masked,
    sweep_layer,
)
from sparsebench.bench.timing import measure

CPU = torch.device("cpu")


def test_measure_reports_the_per_call_time_of_a_known_delay() -> None:
    timing = measure(lambda: time.sleep(0.002), CPU, repeats=5, warmup=1, block_seconds=0.01)
    assert 0.002 <= timing.q1_s <= timing.median_s <= timing.q3_s < 0.02
    assert timing.calls_per_block >= 2 and timing.blocks == 5  # a block lasts at least 10 ms


def test_fast_calls_are_timed_in_blocks() -> None:
    calls = []
    timing = measure(lambda: calls.append(1), CPU, repeats=3, warmup=2, block_seconds=0.002)
    assert timing.calls_per_block > 100
    assert timing.median_s < 1e-4


@pytest.mark.parametrize(
    "ratio, expected",
    [
        ([2.0, 1.5, 1.0 / 1.5, 0.5], 0.5 + 0.5 * 0.1),  # crossing halfway in log ratio between 0.5 and 0.6
        ([0.9, 0.8, 0.7, 0.5], 0.0),  # sparse faster everywhere
        ([3.0, 2.0, 1.5, 1.1], math.nan),  # never faster
        ([0.9, 1.2, 2.0, 0.5], 0.6 + 0.1 * math.log(2) / math.log(4)),  # the last crossing counts
    ],
)
def test_break_even_point(ratio: list[float], expected: float) -> None:
    sparsity = np.array([0.4, 0.5, 0.6, 0.7])
    got = break_even_point(sparsity, np.array(ratio))
    assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected)


def test_random_masks_have_exactly_the_requested_zeros() -> None:
    layer = nn.Conv2d(3, 8, 5)
    masked = random_masked(layer, 0.9, torch.Generator().manual_seed(0))
    assert int((masked.weight == 0).sum()) == round(0.9 * layer.weight.numel())
    assert masked.weight.shape == layer.weight.shape and masked is not layer


def test_layer_shapes_and_a_sweep() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    shapes = layer_shapes(model, torch.zeros(1, 1, 8, 8))
    assert [(s.layer, s.input_shape, s.label) for s in shapes] == [
        ("0", (1, 8, 8), "4x1x3x3"),
        ("3", (144,), "10x144"),
    ]
    sweep = sweep_layer(shapes[1], 4, "torch", CPU, sparsities=(0.5, 0.99))
    assert list(sweep.sparsity) == [0.5, 0.99] and (sweep.dense_ms > 0).all() and (sweep.sparse_ms > 0).all()
    table = break_even_table(sweep)
    assert len(table) == 1 and table.max_sparsity.iloc[0] == 0.99
