"""nn.Linear and nn.Conv2d with hard-concrete gates on their weights (docs/methods.md section 13).

Two granularities: ``weight`` (one gate per weight, as in Gale et al.'s State of Sparsity study) and
``group`` (one gate per input unit of a Linear layer, per output feature map of a convolution, as in
the paper's MNIST experiments). Training multiplies the weights by sampled gates; evaluation and
export multiply them by the deterministic test-time gate, so the exported layer computes exactly
what the evaluation pass computed and holds exact zeros where a gate is closed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from sparsebench.toolkit.exact import pinned_mask
from sparsebench.toolkit.noise import COMPILED_DRAW_MIN_ELEMENTS
from sparsebench.toolkit.surgery import copy_as, standard_layer

from . import gates
from .fused import GatedWeight, GatePenalty

Granularity = Literal["weight", "group"]


@dataclass(frozen=True)
class GateSpec:
    """What one layer needs to know about its gates; built by the method from its config."""

    granularity: Granularity
    lam: float
    """L0 cost of one expected nonzero weight, before the division by N."""
    weight_decay: float
    """Precision of the Gaussian prior on the weights, before the division by N (the reference's
    layer ``weight_decay``): the penalty holds weight_decay / 2 * w^2 for every weight, weighted by
    the probability that its gate is open."""
    droprate_init: float
    temperature: float = gates.BETA
    local_rep: bool = False


class _L0Gated:
    """Gate parameters and the computations the Linear and Conv2d layers share.

    ``log_alpha`` is a parameter of the layer, so the gates return with a checkpoint and an
    ``--resume`` continues from the same distribution.
    """

    weight: nn.Parameter
    bias: nn.Parameter | None
    log_alpha: nn.Parameter
    spec: GateSpec
    use_compiled: bool = False
    """Weight gates: run the fused draw and penalty as compiled kernels (``L0.enable_compile``)."""

    def _init_gates(self, spec: GateSpec) -> None:
        self.spec = spec
        shape = self.weight.shape if spec.granularity == "weight" else (self._group_count(),)
        log_alpha = torch.empty(shape, device=self.weight.device, dtype=self.weight.dtype)
        # The reference starts every gate at the drop rate's log alpha with a little noise (std 0.01).
        log_alpha.normal_(gates.log_alpha_for_droprate(spec.droprate_init), 1e-2)
        self.log_alpha = nn.Parameter(log_alpha)

    def _group_count(self) -> int:
        raise NotImplementedError

    def _expand(self, z: torch.Tensor) -> torch.Tensor:
        """Gate values broadcast against the weight (identity for weight gates)."""
        raise NotImplementedError

    @property
    def bias_gated(self) -> bool:
        """Whether the bias goes with the gates (output feature maps of a convolution)."""
        return False

    def eval_gates(self) -> torch.Tensor:
        return gates.eval_gate(self.log_alpha)

    def _gated(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight, bias) multiplied by the gates ``z`` (shaped like ``log_alpha``)."""
        weight = self.weight * self._expand(z)
        bias = self.bias
        if bias is not None and self.bias_gated:
            bias = bias * z
        return weight, bias

    def gate_parameters(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The weight and bias multiplied by the test-time gates (what export starts from)."""
        return self._gated(self.eval_gates())

    def eval_parameters(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The weight and bias of evaluation: multiplied by the test-time gates, and by the run's
        exact keep-mask once the method pinned one (``method.sparsity``, after training)."""
        weight, bias = self.gate_parameters()
        exact = pinned_mask(self)  # type: ignore[arg-type]
        return (weight, bias) if exact is None else (weight * exact, bias)

    @property
    def _fused(self) -> bool:
        """Weight gates of a layer large enough for compiled kernels to pay (eager, autograd through
        the reference formulas is faster than the fused nodes' eager functions)."""
        return (
            self.use_compiled
            and self.spec.granularity == "weight"
            and self.weight.numel() >= COMPILED_DRAW_MIN_ELEMENTS
        )

    def train_parameters(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The weight and bias of one training step: one gate sample shared by the whole minibatch.

        Compiled weight gates go through ``GatedWeight``: the same draw and gradients in one node.
        """
        if self._fused:
            return GatedWeight.apply(self.weight, self.log_alpha, self.spec.temperature, True), self.bias
        return self._gated(gates.sample(self.log_alpha, self.spec.temperature))

    def open_probability(self) -> torch.Tensor:
        return gates.prob_open(self.log_alpha, self.spec.temperature)

    def expected_nonzeros(self) -> torch.Tensor:
        """Expected number of nonzero weights (the L0 the penalty counts, biases left out)."""
        return self._expand(self.open_probability()).expand_as(self.weight).sum()

    def penalty(self) -> torch.Tensor:
        """lam * E[L0] plus the expected L2 of the gated parameters (the reference's ``_reg_w``).

        Every weight costs P(its gate is open) * (lam + weight_decay / 2 * w^2). A bias that goes with
        its gate (conv feature maps) costs the same; one that does not pays weight_decay / 2 * b^2.
        Divided by N by the method.
        """
        spec = self.spec
        if self._fused:  # one node (``GatePenalty``); a weight-gated layer's bias has no gate
            settings = (spec.lam, spec.weight_decay, spec.temperature, True)
            total = GatePenalty.apply(self.weight, self.log_alpha, *settings)
            bias = self.bias
            return total if bias is None else total + 0.5 * spec.weight_decay * bias.pow(2).sum()
        p = self.open_probability()
        per_weight = spec.lam + 0.5 * spec.weight_decay * self.weight.pow(2)
        total = (self._expand(p) * per_weight).sum()
        if self.bias is not None:
            bias_cost = 0.5 * spec.weight_decay * self.bias.pow(2)
            total = total + ((p * (spec.lam + bias_cost)).sum() if self.bias_gated else bias_cost.sum())
        return total

    def clamp_(self) -> None:
        """Keep log alpha in the reference's range (called after every optimiser step)."""
        with torch.no_grad():
            self.log_alpha.clamp_(gates.LOG_ALPHA_MIN, gates.LOG_ALPHA_MAX)

    def keep_mask(self) -> torch.Tensor:
        """Weights the export keeps: exactly the nonzero entries of the test-time gated weight."""
        with torch.no_grad():
            return self.eval_parameters()[0] != 0

    def gate_open_mask(self) -> torch.Tensor:
        """Weights whose test-time gated value is nonzero, whatever exact mask is pinned."""
        with torch.no_grad():
            return self.gate_parameters()[0] != 0

    def to_dense(self) -> nn.Module:
        """The standard layer with the test-time gated weight and bias (exact zeros where closed);
        the method's masks are applied by the caller, so a pinned exact mask is not."""
        with torch.no_grad():
            weight, bias = self.gate_parameters()
        return standard_layer(self, weight.detach(), None if bias is None else bias.detach())


def kaiming_init_(layer: nn.Linear | nn.Conv2d) -> None:
    """The reference's weights: N(0, 2 / fan_in) for both layer kinds, zero biases."""
    fan_in = layer.weight[0].numel()
    with torch.no_grad():
        layer.weight.normal_(0.0, math.sqrt(2.0 / fan_in))
        if layer.bias is not None:
            layer.bias.zero_()


class L0Linear(nn.Linear, _L0Gated):
    """nn.Linear with gates on its weights, or on its input units (``group``)."""

    @classmethod
    def from_dense(cls, layer: nn.Linear, spec: GateSpec) -> L0Linear:
        new = copy_as(cls, layer)
        new._init_gates(spec)
        return new

    def _group_count(self) -> int:
        return self.in_features

    def _expand(self, z: torch.Tensor) -> torch.Tensor:
        return z if self.spec.granularity == "weight" else z.unsqueeze(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.linear(x, *self.eval_parameters())
        if self.spec.local_rep:  # one gate sample per example: gate the inputs (group gates only)
            z = gates.sample(self.log_alpha, self.spec.temperature, batch=x.shape[0])
            z = z.view(x.shape[0], *([1] * (x.dim() - 2)), self.in_features)
            return F.linear(x * z, self.weight, self.bias)
        return F.linear(x, *self.train_parameters())


class L0Conv2d(nn.Conv2d, _L0Gated):
    """nn.Conv2d with gates on its weights, or on its output feature maps (``group``)."""

    @classmethod
    def from_dense(cls, layer: nn.Conv2d, spec: GateSpec) -> L0Conv2d:
        new = copy_as(cls, layer)
        new._init_gates(spec)
        return new

    def _group_count(self) -> int:
        return self.out_channels

    def _expand(self, z: torch.Tensor) -> torch.Tensor:
        return z if self.spec.granularity == "weight" else z.view(-1, 1, 1, 1)

    @property
    def bias_gated(self) -> bool:
        return self.spec.granularity == "group"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self._conv_forward(x, *self.eval_parameters())
        if self.spec.local_rep:  # one gate sample per example and feature map (group gates only)
            z = gates.sample(self.log_alpha, self.spec.temperature, batch=x.shape[0])
            return self._conv_forward(x, self.weight, self.bias) * z.view(x.shape[0], -1, 1, 1)
        return self._conv_forward(x, *self.train_parameters())


L0_LAYERS = (L0Linear, L0Conv2d)
