"""What the two MNIST tasks share: loading, preprocessing, the recipes and the paper numbers."""

from __future__ import annotations

from pathlib import Path

import torch

from sparsebench.config import TrainConfig
from sparsebench.data.mnist import FILES, SUBDIR, load_mnist
from sparsebench.data.tensors import TensorBatches, split_off_validation
from sparsebench.task import Splits, Task

ARS = "Molchanov et al. 2017, ars README table (ars-ashuha/variational-dropout-sparsifies-dnn)"
BC = "Louizos et al. 2017, bc README table (KarenUllrich/Tutorial_BayesianCompressionForDL)"


class MnistTask(Task):
    """MNIST scaled by 1/256 minus the training mean image (ars ``data/reader.py``)."""

    data_files = tuple(f"{SUBDIR}/{stem}[.gz]" for stem in FILES)
    family = "mnist"
    input_shape: tuple[int, ...] = (1, 28, 28)

    def load_data(self, data_dir: Path, device: torch.device, val_size: int) -> Splits:
        arrays = load_mnist(data_dir)
        x = arrays.train_images.to(device=device, dtype=torch.float32).div_(256.0)
        x_test = arrays.test_images.to(device=device, dtype=torch.float32).div_(256.0)
        train, val = split_off_validation(x, arrays.train_labels.to(device), val_size)
        mean_image = train.x.mean(dim=0, keepdim=True)
        shape = (-1, *self.input_shape)

        def prepare(batches: TensorBatches) -> TensorBatches:
            return TensorBatches((batches.x - mean_image).reshape(shape).contiguous(), batches.y)

        test = TensorBatches(x_test, arrays.test_labels.to(device))
        return Splits(prepare(train), prepare(val), prepare(test))

    def example_input(self, device: torch.device) -> torch.Tensor:
        return torch.zeros(1, *self.input_shape, device=device)


def ars_recipe(lr_schedule: str) -> TrainConfig:
    """ars Sparse VD scripts: Adam 1e-3, batch 100, 200 epochs (methods.md section 2.9)."""
    return TrainConfig(epochs=200, batch_size=100, optimizer="adam", lr=1e-3, lr_schedule=lr_schedule)
