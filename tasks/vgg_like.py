"""VGG-like on CIFAR-10/100: Zagoruyko's cifar.torch ``vgg_bn_drop`` with a width multiplier k.

13 conv layers (3x3, pad 1, with bias) each followed by BatchNorm (eps 1e-3) and ReLU, five 2x2
max-pools, then FC -> BN -> ReLU -> FC, with cifar.torch's dropout (methods.md section 9.3).
Channel counts are int(c * k); k = 1 has 14,977,728 weights. The paper's recipe is dense
pretraining, then the sparsifying method started from the pretrained run (``--init-from``).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from sparsebench.config import TrainConfig, option
from sparsebench.data import augment
from sparsebench.data.cifar import SPECS, load_cifar
from sparsebench.data.tensors import TensorBatches, split_off_validation
from sparsebench.errors import ConfigError
from sparsebench.registry import register_task
from sparsebench.task import PaperResult, Splits, Task

# (channels at k = 1, dropout before the next conv of the block) per conv; None ends a block with a max-pool.
CONV_PLAN: tuple[tuple[int, float] | None, ...] = (
    (64, 0.3), (64, 0.0), None,
    (128, 0.4), (128, 0.0), None,
    (256, 0.4), (256, 0.4), (256, 0.0), None,
    (512, 0.4), (512, 0.4), (512, 0.0), None,
    (512, 0.4), (512, 0.4), (512, 0.0), None,
)  # fmt: skip
FC_WIDTH = 512
BN_EPS = 1e-3

FIGURE = (
    "Molchanov et al. 2017, Sparse VD CIFAR figure (senya-ashukha.github.io projects/svdo_icml17/"
    "vgg-compression.png), read off the plot: +-0.1 % error, +-1x compression"
)
BC = "Louizos et al. 2017, bc README table (KarenUllrich/Tutorial_BayesianCompressionForDL)"

# dataset -> k -> (dense error %, Sparse VD error %, Sparse VD compression); methods.md section 10.2.
FIGURE_POINTS = {
    "CIFAR-10": {
        0.25: (13.1, 13.5, 6.0),
        0.5: (8.2, 8.5, 14.0),
        1.0: (7.3, 7.3, 48.0),
        1.5: (7.0, 7.0, 65.0),
    },
    "CIFAR-100 (possibly the 20 coarse classes, methods.md 2.10)": {
        0.25: (31.8, 32.2, 2.0),
        0.5: (22.9, 23.7, 8.0),
        1.0: (20.0, 20.4, 20.0),
        1.5: (18.8, 19.7, 41.0),
    },
}


def _figure_references() -> tuple[PaperResult, ...]:
    rows = []
    for dataset, points in FIGURE_POINTS.items():
        for k, (dense, svd, compression) in points.items():
            rows.append(PaperResult("dense", dense, 1.0, FIGURE, note=f"{dataset}, k = {k}, binary dropout"))
            rows.append(PaperResult("sparse_vd", svd, compression, FIGURE, note=f"{dataset}, k = {k}"))
    return tuple(rows)


@dataclass
class VggLikeConfig:
    dataset: Literal["cifar10", "cifar100"] = option(
        "cifar10", "cifar10, or cifar100 with its 100 fine labels"
    )
    k: float = option(
        1.0, "width multiplier: every layer has int(c * k) channels (0.25, 0.5, 1, 1.5 in the paper)"
    )
    dropout: bool = option(
        True, "cifar.torch's dropout layers (Sparse VD removes them: its noise replaces them)"
    )
    augment: bool = option(True, "random crop of the 4-pixel-padded image and horizontal flip in training")
    preprocess: Literal["standardize", "zca"] = option(
        "standardize", "per-channel mean/std, or ZCA whitening with eps 1e-5 as ars did"
    )


def width(channels: int, k: float) -> int:
    scaled = int(channels * k)
    if scaled < 1:
        raise ConfigError(
            f"task.k = {k} leaves a layer of {channels} channels with none; use k >= {1 / channels}"
        )
    return scaled


def build_vgg_like(k: float, num_classes: int, dropout: bool = True) -> nn.Sequential:
    """cifar.torch's vgg_bn_drop with int(c * k) channels; He-normal (fan-out) init on the convs."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    in_channels, conv, block = 3, 0, 1
    for entry in CONV_PLAN:
        if entry is None:
            layers[f"pool{block}"] = nn.MaxPool2d(2, 2, ceil_mode=True)
            block += 1
            continue
        channels, p = entry
        conv += 1
        out_channels = width(channels, k)
        layers[f"conv{conv}"] = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        layers[f"bn{conv}"] = nn.BatchNorm2d(out_channels, eps=BN_EPS)
        layers[f"relu{conv}"] = nn.ReLU(inplace=True)
        if dropout and p > 0:
            layers[f"drop{conv}"] = nn.Dropout(p)
        in_channels = out_channels
    fc = width(FC_WIDTH, k)
    layers["flatten"] = nn.Flatten()
    if dropout:
        layers["drop_fc1"] = nn.Dropout(0.5)
    layers["fc1"] = nn.Linear(in_channels, fc)
    layers["bn_fc1"] = nn.BatchNorm1d(fc, eps=BN_EPS)
    layers["relu_fc1"] = nn.ReLU(inplace=True)
    if dropout:
        layers["drop_fc2"] = nn.Dropout(0.5)
    layers["fc2"] = nn.Linear(fc, num_classes)
    model = nn.Sequential(layers)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):  # cifar.torch MSRinit: N(0, 2 / (kh * kw * C_out)), bias 0
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, std=math.sqrt(2.0 / fan_out))
            nn.init.zeros_(m.bias)
    return model


@register_task("vgg_like")
class VggLike(Task):
    description = "CIFAR-10/100, cifar.torch VGG-like with BN, width k (14,977,728 weights at k = 1)"
    paper = "Zagoruyko 2015, cifar.torch (models/vgg_bn_drop.lua); recipe of Molchanov et al. 2017"
    Config = VggLikeConfig
    family = "cifar"
    data_files = tuple(f"{spec.subdir}/{name}" for spec in SPECS.values() for name in spec.files)
    references = (
        *_figure_references(),
        PaperResult(
            "group_nj", 8.6, 14.0, BC, note="CIFAR-10, k = 1; structured compression, 56x after precision"
        ),
        PaperResult(
            "group_hs", 9.0, 18.0, BC, note="CIFAR-10, k = 1; structured compression, 59x after precision"
        ),
    )

    @property
    def num_classes(self) -> int:
        return SPECS[self.config.dataset].num_classes

    def load_data(self, data_dir: Path, device: torch.device, val_size: int) -> Splits:
        """uint8 images to the device, validation carved from train, preprocessing fitted on the rest."""
        arrays = load_cifar(data_dir, self.config.dataset)
        x, x_test = arrays.train_images.to(device), arrays.test_images.to(device)
        train, val = split_off_validation(x, arrays.train_labels.to(device), val_size)
        if self.config.preprocess == "zca":
            mean, w = augment.zca_fit(train.x)

            def prepare(images: torch.Tensor) -> torch.Tensor:
                return augment.zca_apply(images, mean, w)
        else:
            mean, std = augment.channel_stats(train.x)

            def prepare(images: torch.Tensor) -> torch.Tensor:
                return augment.standardize(images, mean, std)

        return Splits(
            TensorBatches(prepare(train.x), train.y),
            TensorBatches(prepare(val.x), val.y),
            TensorBatches(prepare(x_test), arrays.test_labels.to(device)),
        )

    def build_model(self) -> nn.Module:
        return build_vgg_like(self.config.k, self.num_classes, self.config.dropout)

    def recipes(self) -> dict[str, TrainConfig]:
        """cifar.torch for dense training; ars ``vgglike-ard.py`` for Sparse VD (from a dense run).

        cifar.torch runs torch7's SGD at lr 1 with momentum 0.9, whose dampening defaults to the
        momentum: its step is 0.1 x PyTorch's at the same lr, so lr 0.1 here is the same recipe.
        Sparse VD as in ars: Adam 1e-5 (flat for 100 epochs, then linearly to 0), batch 100, 200
        epochs, started with ``--init-from`` a dense run and, as ars did,
        ``--set method.init_log_sigma2=-15 --set method.train_mask=false``.
        """
        standard = TrainConfig(
            epochs=300,
            batch_size=128,
            optimizer="sgd",
            lr=0.1,
            momentum=0.9,
            weight_decay=5e-4,
            lr_schedule="step",
            lr_decay=0.5,
            lr_step=25,
        )
        ars = TrainConfig(epochs=200, batch_size=100, optimizer="adam", lr=1e-5, lr_schedule="linear")
        return {"standard": standard, "per_weight_alpha": ars}

    def train_transform(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return augment.random_crop_flip(x, generator, padding=4) if self.config.augment else x

    def example_input(self, device: torch.device) -> torch.Tensor:
        return torch.zeros(1, 3, 32, 32, device=device)
