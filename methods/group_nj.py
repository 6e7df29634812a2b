"""Group Normal-Jeffreys, "BC-GNJ" (Louizos, Ullrich, Welling, NIPS 2017, arXiv 1705.08665).

Rule: every group (an input neuron of a Linear layer, an output filter of a Conv2d layer) has a
scale z ~ q(z) = N(mu_z, sigma_z^2) under a log-uniform (Jeffreys) prior, and its weights given z
have prior N(0, z^2); a group is removed when log alpha_z = log sigma_z^2 - log mu_z^2 reaches
its layer's threshold, which also removes the matching rows/columns of the neighbouring layers.
Specified in docs/methods.md section 4; the layers, chain and export live in ``_group.py``.

Thresholds: given per layer (``method.thresholds``, bc's example uses -2.8, -3, -5), or chosen
after training on the validation split: each layer's base is the midpoint between the two component
means of a 2-Gaussian fit to its log alpha_z (section 4.6; a layer whose scores have no mode above
``fallback_threshold`` gets that value), then one shift common to all layers is picked, the
sparsest whose validation metric is within ``calibration_tolerance`` of the best shift's; with
``calibration=per_layer`` single layers are then lowered further within the same tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from sparsebench.config import TrainConfig, option
from sparsebench.method import task_family
from sparsebench.registry import register_method
from sparsebench.toolkit.kl import sparse_vd_kl

if TYPE_CHECKING:
    from sparsebench.task import Task

from ._group import INIT_LOGVAR, INIT_STD, GroupConfig, GroupMethod, GroupScale

EPS_MU = 1e-8
"""bc ``get_log_dropout_rates``: log alpha_z = log sigma_z^2 - log(mu_z^2 + 1e-8); no clamp."""


class NJScale(GroupScale):
    """q(z) = N(mu_z, sigma_z^2) per group, under the log-uniform prior p(z) ~ 1/|z|."""

    def __init__(self, num_groups: int) -> None:
        super().__init__()
        self.z_mu = nn.Parameter(torch.empty(num_groups).normal_(1.0, 1e-2))
        self.z_logvar = nn.Parameter(torch.empty(num_groups).normal_(INIT_LOGVAR, INIT_STD))

    def log_alpha(self) -> torch.Tensor:
        return self.z_logvar - torch.log(self.z_mu * self.z_mu + EPS_MU)

    def sample(self, batch: int) -> torch.Tensor:
        eps = torch.randn(batch, self.z_mu.shape[0], device=self.z_mu.device, dtype=self.z_mu.dtype)
        return self.z_mu + torch.exp(0.5 * self.z_logvar) * eps

    def mean(self) -> torch.Tensor:
        return self.z_mu

    def variance(self) -> torch.Tensor:
        return self.z_logvar.exp()

    def kl(self) -> torch.Tensor:
        # The same approximation as Sparse VD (Molchanov et al. Eq. 14), at log alpha_z.
        return sparse_vd_kl(self.log_alpha()).sum()

    def prune_score(self) -> torch.Tensor:
        return self.log_alpha()


@dataclass
class GroupNJConfig(GroupConfig):
    fallback_threshold: float = option(
        -3.0, "log alpha_z threshold of a layer whose scores have one mode (bc's example: -2.8 to -5)"
    )


@register_method("group_nj")
class GroupNJ(GroupMethod):
    description = "Bayesian Compression, group Normal-Jeffreys: prune neurons/filters by group log alpha"
    paper = "Louizos, Ullrich, Welling. Bayesian Compression for Deep Learning. NIPS 2017"
    Config = GroupNJConfig

    def make_scale(self, num_groups: int) -> GroupScale:
        return NJScale(num_groups)

    def adjust_recipe(self, task: Task | str, recipe: TrainConfig) -> TrainConfig:
        return bc_recipe(task, recipe)


BC_FAMILIES = ("mnist",)
"""Task families bc trained on with its own optimiser and batch (its MNIST LeNets)."""


def bc_recipe(task: Task | str, recipe: TrainConfig) -> TrainConfig:
    """bc's optimiser and batch (Adam 1e-3, batch 128, methods.md 4.5) on the MNIST family's tasks.

    bc's 5-epoch demo is no protocol and the paper's was not verified, so the task's length and
    schedule stay (200 epochs, flat then linearly to 0, as ars trains Sparse VD on MNIST): the
    hidden units die slowly under the ELBO, far from done after 50 epochs on LeNet-300-100.
    """
    if task_family(task) in BC_FAMILIES:
        recipe.batch_size = 128
        recipe.optimizer = "adam"
        recipe.lr = 1e-3
    return recipe
