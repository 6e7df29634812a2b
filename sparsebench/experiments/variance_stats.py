"""The average empirical variance of a minibatch gradient, and its own standard error.

Table 1 of Kingma et al. (2015) reports, per layer, the variance of each weight's minibatch gradient
averaged over the layer's weights. Here each repetition draws a fresh minibatch (uniformly, without
replacement, from the training split) and fresh noise; the repetitions are cut into ``groups``
independent blocks, the statistic is computed within each block, and the spread of the block
values gives the standard error of their mean (batch means). Every estimator sees the same
sequence of minibatches, so their differences are not blurred by different data.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from sparsebench.experiments.estimators import Estimator, NoisyStack, minibatch_gradient


@dataclass
class GroupedVariance:
    """Running per-weight sums of one layer's gradients, closed into a variance every ``group_size``."""

    group_size: int
    groups: list[float] = field(default_factory=list)
    _sum: torch.Tensor | None = None
    _sumsq: torch.Tensor | None = None
    _n: int = 0

    def add(self, grad: torch.Tensor) -> None:
        g = grad.detach().to(torch.float64).flatten()
        if self._sum is None or self._sumsq is None:
            self._sum, self._sumsq = torch.zeros_like(g), torch.zeros_like(g)
        self._sum += g
        self._sumsq += g * g
        self._n += 1
        if self._n == self.group_size:
            n = self._n
            per_weight = (self._sumsq - self._sum * self._sum / n) / (n - 1)
            self.groups.append(float(per_weight.clamp_min(0.0).mean()))
            self._sum, self._sumsq, self._n = None, None, 0

    def result(self) -> tuple[float, float]:
        """(mean over groups, its standard error); the error is NaN with a single group."""
        k = len(self.groups)
        if k == 0:
            raise ValueError("no complete group of repetitions")
        mean = sum(self.groups) / k
        if k == 1:
            return mean, math.nan
        var = sum((v - mean) ** 2 for v in self.groups) / (k - 1)
        return mean, math.sqrt(var / k)


@dataclass
class Measurement:
    """One estimator's statistic for each layer asked for, and the time of one repetition."""

    estimator: Estimator
    variances: dict[int, GroupedVariance]
    repeats: int
    seconds_per_repeat: float


def batch_order(num_examples: int, batch_size: int, seed: int) -> torch.Generator:
    """The generator that draws the minibatches; the same seed gives every estimator the same ones."""
    if batch_size > num_examples:
        raise ValueError(f"minibatch of {batch_size} from {num_examples} examples")
    return torch.Generator().manual_seed(seed)


def measure(
    stack: NoisyStack,
    x: torch.Tensor,
    y: torch.Tensor,
    estimator: Estimator,
    layers: Sequence[int],
    repeats: int,
    groups: int,
    batch_size: int,
    seed: int,
    scale: float,
    chunk: int = 16,
    progress: Callable[[int], None] | None = None,
) -> Measurement:
    """``repeats`` minibatch gradients of ``estimator`` (``scale`` times the mean-loss gradient)."""
    if repeats < 2 * groups or groups < 1:
        raise ValueError(f"{repeats} repeats cannot fill {groups} groups of at least 2")
    size = repeats // groups
    stats = {k: GroupedVariance(size) for k in layers}
    order = batch_order(x.shape[0], batch_size, seed)
    torch.manual_seed(seed + 1)  # the noise: its own stream, so the batches do not depend on it
    start = time.perf_counter()
    for r in range(size * groups):
        idx = torch.randperm(x.shape[0], generator=order)[:batch_size]
        grads = minibatch_gradient(stack, x[idx], y[idx], estimator, layers, scale=scale, chunk=chunk)
        for k, g in zip(layers, grads, strict=True):
            stats[k].add(g)
        if progress is not None:
            progress(r + 1)
    seconds = (time.perf_counter() - start) / (size * groups)
    return Measurement(estimator, stats, size * groups, seconds)
