"""A fully connected ReLU network on MNIST whose width and depth are options (Kingma et al. 2015, Fig. 1).

Kingma, Salimans and Welling compare dropout variants on MNIST across hidden-layer widths with the
architecture of Srivastava et al. (3 hidden layers of ReLUs, all of one width; 100 to 1250 units on
Figure 1's axis), so a fixed network such as LeNet-300-100 cannot draw that figure. Here the network
is 784-(``task.width`` x ``task.depth``)-10. Data, preprocessing and the recipe are the MNIST
family's (``tasks/_mnist.py``); weights start Glorot-uniform with zero biases, Lasagne's dense-layer
default that the public replication (gngdb/variational-dropout) trained with, since the paper does
not say. docs/experiments.md has the protocol and its sources.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from torch import nn

from sparsebench.config import TrainConfig, option
from sparsebench.registry import register_task
from sparsebench.tasks._mnist import MnistTask, ars_recipe

INPUTS = 784
CLASSES = 10


@dataclass
class MnistMlpConfig:
    width: int = option(100, "units in every hidden layer (Kingma et al. 2015 Fig. 1: 100 to 1250)", low=1)
    depth: int = option(3, "hidden layers (3 in Kingma et al. 2015, after Srivastava et al. 2014)", low=1)


def weight_count(width: int, depth: int) -> int:
    """Weights (biases excluded) of 784-(width x depth)-10: what the tables' compression counts."""
    return INPUTS * width + (depth - 1) * width * width + width * CLASSES


def build_mlp(width: int, depth: int) -> nn.Sequential:
    """fc1, relu1, ..., fc<depth>, relu<depth>, fc<depth+1>: the layer names the methods' tables show."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    fan_in = INPUTS
    for index in range(1, depth + 1):
        layers[f"fc{index}"] = nn.Linear(fan_in, width)
        layers[f"relu{index}"] = nn.ReLU()
        fan_in = width
    layers[f"fc{depth + 1}"] = nn.Linear(fan_in, CLASSES)
    model = nn.Sequential(layers)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)  # Lasagne's GlorotUniform (gain 1)
            nn.init.zeros_(m.bias)
    return model


@register_task("mnist_mlp")
class MnistMlp(MnistTask):
    description = "MNIST, fully connected 784-(width x depth)-10 with ReLU (default 784-100-100-100-10)"
    paper = "Kingma, Salimans, Welling 2015 (Figure 1), after Srivastava et al. 2014"
    Config = MnistMlpConfig
    config: MnistMlpConfig
    input_shape = (INPUTS,)

    def build_model(self) -> nn.Module:
        return build_mlp(self.config.width, self.config.depth)

    def recipes(self) -> dict[str, TrainConfig]:
        """The MNIST family's recipe: Adam 1e-3, batch 100, 200 epochs, lr constant then linearly to 0.

        The paper trained with Adam's defaults and early stopping on validation; a campaign that
        cannot afford that sets ``train.epochs`` and says so (sweeps/campaigns/kingma2015.yaml).
        """
        return {"standard": ars_recipe("linear")}
