"""configure_cpu: the thread count and the denormal flush every training entry point sets."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from sparsebench.run.plan import configure_cpu

SMALLEST_NORMAL = torch.finfo(torch.float32).tiny


@pytest.fixture()
def restore_cpu_state() -> Iterator[None]:
    threads = torch.get_num_threads()
    flushing = float(torch.tensor([1e-40]) * 1.0) == 0.0
    yield
    torch.set_num_threads(threads)
    torch.set_flush_denormal(flushing)


def adam_moment_of_a_pruned_weight(steps: int) -> torch.Tensor:
    """Adam's first moment of a weight whose gradient is zero after one real step (a masked weight)."""
    w = torch.nn.Parameter(torch.ones(8))
    opt = torch.optim.Adam([w], lr=1e-3)
    w.grad = torch.full_like(w, 1e-3)
    opt.step()
    for _ in range(steps):
        w.grad = torch.zeros_like(w)
        opt.step()
    return opt.state[w]["exp_avg"]


@pytest.mark.usefixtures("restore_cpu_state")
def test_without_the_flush_a_pruned_weights_moment_sticks_in_the_denormal_range() -> None:
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU has no denormal flush")
    moment = adam_moment_of_a_pruned_weight(2000)
    # 0.9 x a few ulps rounds back to itself: the moment never reaches zero and stays slow forever.
    assert bool((moment != 0).all())
    assert bool((moment.abs() < SMALLEST_NORMAL).all())


@pytest.mark.usefixtures("restore_cpu_state")
def test_configure_cpu_flushes_denormals_so_the_moment_reaches_zero() -> None:
    torch.set_flush_denormal(False)
    configure_cpu(0)
    assert float(torch.tensor([1e-40]) * 1.0) == 0.0
    assert bool((adam_moment_of_a_pruned_weight(2000) == 0).all())


@pytest.mark.usefixtures("restore_cpu_state")
def test_configure_cpu_sets_threads_only_when_asked() -> None:
    before = torch.get_num_threads()
    configure_cpu(0)
    assert torch.get_num_threads() == before
    configure_cpu(1)
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize(
    ("amp", "cpu_amp", "dtype"),
    [(True, False, torch.float32), (True, True, torch.bfloat16), (False, True, torch.float32)],
)
def test_cpu_runs_stay_fp32_unless_cpu_amp_asks(amp: bool, cpu_amp: bool, dtype: torch.dtype) -> None:
    """``train.amp`` alone is the CUDA setting; bf16 on a CPU needs ``train.cpu_amp`` as well."""
    from sparsebench.run.loop import autocast

    layer = torch.nn.Linear(8, 4)
    with autocast(torch.device("cpu"), amp, cpu_amp):
        out = layer(torch.randn(2, 8))
    assert out.dtype == dtype
