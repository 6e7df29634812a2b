"""The training-throughput benchmark: interleaved rounds, ratios per round, where the time goes."""

from __future__ import annotations

import pytest
import torch

from sparsebench.bench import train as train_bench
from sparsebench.bench.train import OP_KINDS, PHASES, TrainingLoop, bench, op_kind

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("aten::addmm", "layers"),
        ("aten::mm", "layers"),
        ("aten::mkldnn_convolution", "layers"),
        ("aten::convolution_backward", "layers"),
        ("aten::normal_", "noise"),
        ("aten::bernoulli_", "noise"),
        ("aten::_fused_adam_", "optimizer_ops"),
        ("aten::_foreach_add_", "optimizer_ops"),
        ("aten::mul", "other_ops"),
        ("aten::randperm", "other_ops"),  # the data shuffle is not the method's noise
        ("## Call CompiledFxGraph fabc ##", "other_ops"),
        ("triton_poi_fused_add_mul_0", "other_ops"),  # an Inductor kernel's range on CUDA
        ("FusedSVD", None),  # ranges around the work: their time is the step's rest, framework
        ("Optimizer.step#Adam.step", None),
        ("autograd::engine::evaluate_function: AddmmBackward0", None),
    ],
)
def test_profiler_events_are_sorted_into_kinds(name: str, kind: str | None) -> None:
    assert op_kind(name) == kind


def test_rounds_rotate_the_order_and_x_dense_is_the_median_of_round_ratios(monkeypatch) -> None:
    """Each round times every method once, starting one later; the ratio is taken within rounds."""
    calls: list[str] = []
    # Load changes between blocks: per round dense takes 1, 3, 3, 3 s and sparse_vd 2, 6, 6, 2 s.
    # The rounds' ratios are 2, 2, 2, 2/3 (median 2); the ratio of the medians would be 4/3.
    times = {"dense": [1.0, 3.0, 3.0, 3.0], "sparse_vd": [2.0, 6.0, 6.0, 2.0]}

    def fake_seconds(self: TrainingLoop, n: int) -> float:
        name = self.method.name
        calls.append(name)
        timed_round = (len(calls) - 1) // 2 - 1  # the first two calls are the warm-up
        return 1.0 if timed_round < 0 else times[name][timed_round]

    monkeypatch.setattr(TrainingLoop, "seconds_per_step", fake_seconds)
    table = bench(
        ["lenet300_100"], ["dense", "sparsevd", "sparse-vd"], CPU, steps=8, warmup=1,
        num_train=400, compile_kernels=False, breakdown=False, rounds=4,
    )  # fmt: skip
    assert list(table.method) == ["dense", "sparse_vd"]  # spellings of one method are timed once
    assert calls[2:] == ["dense", "sparse_vd", "sparse_vd", "dense"] * 2
    rows = table.set_index("method")
    assert rows.loc["sparse_vd", "x_dense"] == pytest.approx(2.0)
    assert rows.loc["dense", "x_dense"] == pytest.approx(1.0)
    assert rows.loc["dense", "ms_per_step"] == pytest.approx(3000.0)  # median of 1, 3, 3, 3 s


def test_breakdowns_add_up_and_only_the_noisy_method_draws_noise() -> None:
    table = bench(
        ["lenet300_100"], ["dense", "sparse_vd"], CPU, steps=4, warmup=1,
        num_train=500, compile_kernels=False, breakdown=True, rounds=2,
    ).set_index("method")  # fmt: skip
    for method, row in table.iterrows():
        assert sum(row[f"%{p}"] for p in PHASES) == pytest.approx(100.0), method
        assert sum(row[f"%{k}"] for k in OP_KINDS) == pytest.approx(100.0), method
        assert row.layers_ms > 0 and row["%layers"] > 0
    assert table.loc["dense", "%noise"] == 0.0  # a dense step draws nothing (the shuffle is data)
    assert table.loc["sparse_vd", "%noise"] > 0.0  # the local reparameterisation's xi
    for method, row in table.iterrows():  # the floor is the layers' share of the measured ratio
        assert row.layers_x_dense == pytest.approx(row.x_dense * row["%layers"] / 100), method


def test_without_dense_there_is_no_ratio() -> None:
    table = bench(
        ["lenet300_100"], ["sparse_vd"], CPU, steps=2, warmup=1,
        num_train=300, compile_kernels=False, breakdown=False, rounds=2,
    )  # fmt: skip
    assert table.x_dense.isna().all() and table.ms_per_step.gt(0).all()


def test_native_stderr_is_restored_after_profiling(capfd) -> None:
    import os

    with train_bench._quiet_native_stderr():
        os.write(2, b"hidden\n")
    os.write(2, b"shown\n")
    err = capfd.readouterr().err
    assert "hidden" not in err and "shown" in err


def test_x_dense_compares_time_per_example_across_batch_sizes(monkeypatch) -> None:
    """group_nj's recipe takes batches of 128, dense's 100: an epoch, not a step, is the unit."""
    per_step = {"dense": 1.0, "group_nj": 2.56}
    monkeypatch.setattr(TrainingLoop, "seconds_per_step", lambda self, n: per_step[self.method.name])
    table = bench(
        ["lenet300_100"], ["dense", "group_nj"], CPU, steps=2, warmup=1,
        num_train=6400, compile_kernels=False, breakdown=False, rounds=2,  # whole batches of both
    ).set_index("method")  # fmt: skip
    assert table.loc["group_nj", "batch_size"] == 128 and table.loc["dense", "batch_size"] == 100
    assert table.loc["group_nj", "x_dense"] == pytest.approx(2.56 / 128 / (1.0 / 100))
    ratio_of_epochs = table.loc["group_nj", "seconds_per_epoch"] / table.loc["dense", "seconds_per_epoch"]
    assert table.loc["group_nj", "x_dense"] == pytest.approx(ratio_of_epochs)


def test_a_method_variant_is_timed_beside_its_default(monkeypatch) -> None:
    """``l0:granularity=weight`` is its own row, with the setting applied to that row's model only."""
    granularity: dict[str, str] = {}

    def fake_seconds(self: TrainingLoop, n: int) -> float:
        granularity[self.spec] = getattr(self.method.config, "granularity", "")
        return 1.0

    monkeypatch.setattr(TrainingLoop, "seconds_per_step", fake_seconds)
    table = bench(
        ["lenet300_100"], ["dense", "l0", "l0: granularity=weight, lam=2"], CPU, steps=2, warmup=1,
        num_train=300, compile_kernels=False, breakdown=False, rounds=2,
    )  # fmt: skip
    assert list(table.method) == ["dense", "l0", "l0:granularity=weight,lam=2"]  # spaces dropped
    assert granularity == {"dense": "", "l0": "group", "l0:granularity=weight,lam=2": "weight"}


def test_a_setting_the_method_lacks_is_refused_before_timing() -> None:
    from sparsebench.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown config key 'method.granularity'"):
        TrainingLoop("lenet300_100", "sparse_vd:granularity=weight", None, CPU, False)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="--methods expects key=value"):
        train_bench.parse_method_spec("l0:weight")
    with pytest.raises(ConfigError, match="sets lam twice"):
        train_bench.parse_method_spec("l0:lam=1,lam=2")
