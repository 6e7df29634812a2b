"""A labelled split held as tensors on the training device, batched by index.

Small datasets (MNIST, CIFAR) fit on any GPU many times over, so a batch is one gather:
no DataLoader workers, no per-sample Python.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from sparsebench.errors import ConfigError


class TensorBatches:
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if len(x) != len(y):
            raise ValueError(f"inputs and labels differ in length: {len(x)} vs {len(y)}")
        self.x = x
        self.y = y
        self.num_examples = len(x)

    def num_batches(self, batch_size: int, drop_last: bool) -> int:
        full, rest = divmod(self.num_examples, batch_size)
        return full if drop_last or rest == 0 else full + 1

    def iterate(
        self, batch_size: int, shuffle: bool, generator: torch.Generator | None, drop_last: bool
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = self.num_examples
        order = torch.randperm(n, generator=generator).to(self.x.device) if shuffle else None
        for b in range(self.num_batches(batch_size, drop_last)):
            if order is None:
                yield (
                    self.x[b * batch_size : (b + 1) * batch_size],
                    self.y[b * batch_size : (b + 1) * batch_size],
                )
            else:
                idx = order[b * batch_size : (b + 1) * batch_size]
                yield self.x[idx], self.y[idx]


def split_off_validation(
    x: torch.Tensor, y: torch.Tensor, val_size: int, seed: int = 0
) -> tuple[TensorBatches, TensorBatches]:
    """Carve a fixed validation split from train.

    The split uses its own seed (not the run's) so every run, method and sweep trial is
    validated on the same examples, which is what makes their validation errors comparable.
    """
    if not 0 < val_size < len(x):
        raise ConfigError(
            f"train.val_size must be between 1 and {len(x) - 1} (the training split's size less one), "
            f"got {val_size}"
        )
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed)).to(x.device)
    val_idx, train_idx = order[:val_size], order[val_size:]
    return TensorBatches(x[train_idx], y[train_idx]), TensorBatches(x[val_idx], y[val_idx])
