"""LeNet-300-100 on MNIST: fully connected 784-300-100-10 with ReLU (LeCun et al. 1998)."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from sparsebench.config import TrainConfig
from sparsebench.registry import register_task
from sparsebench.task import PaperResult
from sparsebench.tasks._mnist import ARS, MnistTask, ars_recipe


@register_task("lenet300_100")
class LeNet300100(MnistTask):
    description = "MNIST, fully connected 784-300-100-10 (266,200 weights)"
    paper = "LeCun et al. 1998; recipe of Molchanov et al. 2017"
    input_shape = (784,)
    references = (
        PaperResult("dense", 1.64, 1.0, ARS),
        PaperResult("magnitude", 1.59, 12.0, ARS, (92.0, 91.0, 74.0), note="Han et al. 2015"),
        PaperResult("dns", 1.99, 56.0, ARS, (98.2, 98.2, 94.5), note="Guo et al. 2016"),
        PaperResult("sws", 1.94, 23.0, ARS, note="Ullrich et al. 2017"),
        PaperResult("sparse_vd", 1.92, 68.0, ARS, (98.9, 97.2, 62.0)),
    )

    def build_model(self) -> nn.Module:
        model = nn.Sequential(
            OrderedDict(
                fc1=nn.Linear(784, 300),
                relu1=nn.ReLU(),
                fc2=nn.Linear(300, 100),
                relu2=nn.ReLU(),
                fc3=nn.Linear(100, 10),
            )
        )
        # ars initialises dense layers N(0, 0.01^2) (Lasagne's Normal default), biases 0.
        for m in model.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        return model

    def recipes(self) -> dict[str, TrainConfig]:
        """ars trains Sparse VD and its baselines on LeNet-300-100 the same way."""
        return {"standard": ars_recipe("linear")}
