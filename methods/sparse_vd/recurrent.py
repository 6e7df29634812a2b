"""Sparse VD for recurrent networks (Chirkova, Lobacheva, Vetrov. Bayesian Compression for Natural
Language Processing. EMNLP 2018, arXiv 1810.10927; their code is sbrnn).

Rule: as in Sparse VD (``layers.py`` of this package), every weight of the embedding, of the LSTM
(input-to-hidden and hidden-to-hidden) and of the softmax layer gets its own posterior
N(theta, sigma^2) and is removed once log alpha >= 3; but training draws one weight sample per
mini-batch, shared by every time step and every sequence of the batch, because the local
reparameterisation trick does not hold when one weight sample is reused across time.
Specified in docs/methods.md section 3.

These layers are wired into the ``sparse_vd`` method (``SparseVD.convert`` and ``export``) rather
than registered as a method of their own: they reuse its posterior, clamp, mask and KL
(``_SparseVDMixin``), so the KL is Molchanov's approximation of section 2.4 summed over every
weight and divided by the number of training tokens.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from sparsebench.toolkit.surgery import modules_of_type

from .layers import LinearSVD, SparseVDConfig, _SparseVDMixin

VAR_FLOOR = 1e-30
"""Floor under a weight's variance before the square root. A masked weight has variance exactly 0,
where d sqrt(v) / dv is infinite and would turn its gradient into NaN; the floor adds noise of std
1e-15, far below float32's resolution of any weight that is kept."""


def sample_weight(layer: _SparseVDMixin) -> torch.Tensor:
    """One draw of the whole weight in training (theta + sigma * eps), the masked mean in eval."""
    if not layer.training:  # type: ignore[attr-defined]
        return layer._eval_weight()
    theta, var = layer._train_weights()
    return torch.addcmul(theta, var.clamp_min(VAR_FLOOR).sqrt(), torch.randn_like(theta))


class WeightSVD(nn.Module, _SparseVDMixin):
    """One variational weight matrix of a layer that has several (an LSTM's per-layer blocks).

    Being a module of its own gives each matrix a module path (``lstm.weight_hh_l0``) that is also
    the path of the matching parameter of the exported ``nn.LSTM``, so masks need no translation.
    """

    def __init__(self, weight: torch.Tensor, cfg: SparseVDConfig) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())
        self._init_variational(cfg)

    def forward(self) -> torch.Tensor:
        return sample_weight(self)


class LSTMSVD(nn.Module):
    """``nn.LSTM`` whose weight matrices are Sparse VD posteriors; biases stay deterministic.

    Each forward call (one mini-batch) draws every matrix once, and the whole unrolled sequence
    and every sequence of the batch use that draw (sbrnn passes the sample to its scan as a
    non-sequence). Dropout between layers is dropped: the weight noise replaces it, as in sbrnn.
    Runs on PyTorch's fused LSTM kernel (``torch.lstm``, what ``nn.LSTM`` itself calls).
    """

    def __init__(self, lstm: nn.LSTM, cfg: SparseVDConfig) -> None:
        super().__init__()
        self.input_size, self.hidden_size, self.num_layers = (
            lstm.input_size,
            lstm.hidden_size,
            lstm.num_layers,
        )
        self.bias, self.batch_first = lstm.bias, lstm.batch_first
        self.bidirectional, self.proj_size = lstm.bidirectional, lstm.proj_size
        self.flat_names = flat_parameter_names(lstm)
        for name in self.flat_names:
            tensor = getattr(lstm, name)
            if name.startswith("weight"):
                self.add_module(name, WeightSVD(tensor, cfg))
            else:
                self.register_parameter(name, nn.Parameter(tensor.detach().clone()))

    @classmethod
    def from_dense(cls, lstm: nn.LSTM, cfg: SparseVDConfig) -> LSTMSVD:
        return cls(lstm, cfg)

    @property
    def weight_names(self) -> list[str]:
        return [name for name in self.flat_names if name.startswith("weight")]

    def flat_weights(self) -> list[torch.Tensor]:
        """Every tensor in the fused kernel's order; the weights sampled (training) or masked (eval)."""
        return [
            getattr(self, name)() if name.startswith("weight") else getattr(self, name)
            for name in self.flat_names
        ]

    def forward(
        self, x: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        if x.dim() != 3:
            raise ValueError(f"LSTMSVD expects batched 3-D input, got shape {tuple(x.shape)}")
        if hx is None:
            batch = x.shape[0] if self.batch_first else x.shape[1]
            directions = 2 if self.bidirectional else 1
            out_size = self.proj_size or self.hidden_size
            h0 = x.new_zeros(self.num_layers * directions, batch, out_size)
            c0 = x.new_zeros(self.num_layers * directions, batch, self.hidden_size)
            hx = (h0, c0)
        output, h, c = torch.lstm(
            x,
            hx,
            self.flat_weights(),
            self.bias,
            self.num_layers,
            0.0,
            self.training,
            self.bidirectional,
            self.batch_first,
        )
        return output, (h, c)

    def to_dense(self, masks: dict[str, torch.Tensor]) -> nn.LSTM:
        """A plain ``nn.LSTM`` with theta * mask; ``masks`` is keyed by weight name (``weight_ih_l0``)."""
        reference = next(iter(self.parameters()))
        out = nn.LSTM(
            self.input_size,
            self.hidden_size,
            self.num_layers,
            bias=self.bias,
            batch_first=self.batch_first,
            bidirectional=self.bidirectional,
            proj_size=self.proj_size,
        ).to(reference.device, reference.dtype)
        with torch.no_grad():
            for name in self.flat_names:
                if name.startswith("weight"):
                    layer = getattr(self, name)
                    getattr(out, name).copy_(layer.weight * masks[name].to(layer.weight.device))
                else:
                    getattr(out, name).copy_(getattr(self, name))
        return out


def flat_parameter_names(lstm: nn.LSTM) -> list[str]:
    """Parameter names in the order the fused kernel takes them (the order ``nn.LSTM`` creates them)."""
    names = []
    for layer in range(lstm.num_layers):
        for suffix in ("", "_reverse") if lstm.bidirectional else ("",):
            names += [f"weight_ih_l{layer}{suffix}", f"weight_hh_l{layer}{suffix}"]
            if lstm.bias:
                names += [f"bias_ih_l{layer}{suffix}", f"bias_hh_l{layer}{suffix}"]
            if lstm.proj_size > 0:
                names.append(f"weight_hr_l{layer}{suffix}")
    return names


class EmbeddingSVD(nn.Embedding, _SparseVDMixin):
    """``nn.Embedding`` with a per-weight posterior; one draw of the table per mini-batch.

    With one-hot inputs the embedding *is* sbrnn's input-to-hidden matrix, so it gets the same
    treatment: a single sample shared by every token of the batch.
    """

    @classmethod
    def from_dense(cls, layer: nn.Embedding, cfg: SparseVDConfig) -> EmbeddingSVD:
        new = cls(
            layer.num_embeddings,
            layer.embedding_dim,
            padding_idx=layer.padding_idx,
            max_norm=layer.max_norm,
            norm_type=layer.norm_type,
            scale_grad_by_freq=layer.scale_grad_by_freq,
            sparse=layer.sparse,
            _weight=layer.weight.detach().clone(),
        )
        new._init_variational(cfg)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.embedding(
            x,
            sample_weight(self),
            self.padding_idx,
            self.max_norm,
            self.norm_type,
            self.scale_grad_by_freq,
            self.sparse,
        )

    def to_dense(self, mask: torch.Tensor) -> nn.Embedding:
        out = nn.Embedding(
            self.num_embeddings,
            self.embedding_dim,
            padding_idx=self.padding_idx,
            max_norm=self.max_norm,
            norm_type=self.norm_type,
            scale_grad_by_freq=self.scale_grad_by_freq,
            sparse=self.sparse,
            _weight=(self.weight * mask.to(self.weight.device)).detach().clone(),
        )
        return out


class SequenceLinearSVD(LinearSVD):
    """The softmax layer of a recurrent model: one weight draw per mini-batch instead of the LRT.

    Its input is (batch, time, features); sbrnn's ``BayesianDense_noLRT`` shares one sample over
    the whole batch and every time step, the rule used for the word-level PTB results.
    """

    masked_noise_in_ars = False  # sbrnn masks the whole weight sample of its output layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        return F.linear(x, sample_weight(self), self.bias)


def recurrent_swap(model: nn.Module, cfg: SparseVDConfig) -> Callable[[nn.Module], nn.Module | None]:
    """The layer swap ``SparseVD.convert`` applies first: LSTM, Embedding, and Linear in an LSTM model.

    Returns a function of a module giving its Sparse VD replacement, or None where the plain
    Sparse VD layers (or nothing) apply.
    """
    has_lstm = bool(modules_of_type(model, nn.LSTM))

    def swap(m: nn.Module) -> nn.Module | None:
        if isinstance(m, nn.LSTM):
            return LSTMSVD.from_dense(m, cfg)
        if isinstance(m, nn.Embedding) and not isinstance(m, EmbeddingSVD):
            return EmbeddingSVD.from_dense(m, cfg)
        if has_lstm and isinstance(m, nn.Linear) and not isinstance(m, LinearSVD):
            return SequenceLinearSVD.from_dense(m, cfg)
        return None

    return swap
