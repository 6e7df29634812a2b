"""LeNet-5-Caffe on MNIST: conv 20 5x5, max-pool, conv 50 5x5, max-pool, fc 800-500, 500-10."""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

from torch import nn

from sparsebench.config import TrainConfig, option
from sparsebench.registry import register_task
from sparsebench.task import PaperResult
from sparsebench.tasks._mnist import ARS, BC, MnistTask, ars_recipe


@dataclass
class LeNet5Config:
    conv_relu: bool = option(False, "ReLU after each conv (ars does this; Caffe's LeNet-5 does not)")


@register_task("lenet5")
class LeNet5(MnistTask):
    description = "MNIST, LeNet-5-Caffe 20-50-800-500 (430,500 weights)"
    paper = "Caffe examples/mnist/lenet_train_test.prototxt; recipe of Molchanov et al. 2017"
    Config = LeNet5Config
    input_shape = (1, 28, 28)
    references = (
        PaperResult("dense", 0.80, 1.0, ARS),
        PaperResult("magnitude", 0.77, 12.0, ARS, (34.0, 88.0, 92.0, 81.0), note="Han et al. 2015"),
        PaperResult("dns", 0.91, 111.0, ARS, (86.0, 97.0, 99.3, 96.0), note="Guo et al. 2016"),
        PaperResult("sws", 0.97, 200.0, ARS, note="Ullrich et al. 2017"),
        PaperResult("sparse_vd", 0.75, 280.0, ARS, (67.0, 98.0, 99.8, 95.0)),
        PaperResult(
            "group_nj", 1.0, 108.0, BC, note="structured compression; 361x after precision reduction"
        ),
        PaperResult(
            "group_hs", 1.0, 156.0, BC, note="structured compression; 419x after precision reduction"
        ),
    )

    def build_model(self) -> nn.Module:
        act = nn.ReLU if self.config.conv_relu else nn.Identity
        model = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(1, 20, 5),
                act1=act(),
                pool1=nn.MaxPool2d(2, 2),
                conv2=nn.Conv2d(20, 50, 5),
                act2=act(),
                pool2=nn.MaxPool2d(2, 2),
                flatten=nn.Flatten(),
                fc1=nn.Linear(800, 500),
                relu3=nn.ReLU(),
                fc2=nn.Linear(500, 10),
            )
        )
        # Caffe's "xavier" filler: U(-a, a) with a = sqrt(3 / fan_in); biases 0.
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                fan_in = m.weight[0].numel()
                bound = math.sqrt(3.0 / fan_in)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)
        return model

    def recipes(self) -> dict[str, TrainConfig]:
        """ars' LeNet-5 Sparse VD script decays the learning rate linearly to 0 over all epochs."""
        return {"standard": ars_recipe("linear"), "per_weight_alpha": ars_recipe("linear_to0")}
