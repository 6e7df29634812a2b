"""Layers that multiply by CSR weights, for torch (CPU and CUDA) and scipy.sparse (CPU).

A CSR matrix times a dense matrix is fast when the dense operand's rows are contiguous: each
nonzero w_ij then adds w_ij x (row j) to output row i, one vectorised pass over the batch. A
Linear layer computes x W^T on a (batch, features) x, so its sparse form is (W x^T)^T. Transposing
at every layer costs as much as the sparse product itself at large batches, so a chain of Linear
layers runs with activations laid out (features, batch) and transposes once on entry (fused with
the input gather of a thinned model) and once on exit. Convolutions become im2col followed by
one CSR product, which pays off only at high sparsity: the benchmark says when it does not.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from sparsebench.measure.structured import Gather
from sparsebench.toolkit.surgery import replace_modules

Backend = Literal["torch", "scipy"]

# Sparse CSR tensors warn once that they are "beta"; the formats here are checked against dense.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")

ELEMENTWISE = (nn.ReLU, nn.Identity, nn.Dropout)
"""Modules that may sit between Linear layers of one chain (ReLU is applied, the rest are no-ops
in eval mode)."""


class FormatUnsupported(Exception):
    """A format that cannot represent a model (the reason is reported in place of timings)."""


def _csr(matrix: torch.Tensor, backend: Backend) -> Any:
    """The 2-D weight as CSR with int32 indices (as scipy uses), on the weight's device."""
    dense = matrix.detach()
    if backend == "scipy":
        import scipy.sparse

        return scipy.sparse.csr_matrix(dense.cpu().numpy())
    csr = dense.to_sparse_csr()
    return torch.sparse_csr_tensor(
        csr.crow_indices().to(torch.int32),
        csr.col_indices().to(torch.int32),
        csr.values(),
        csr.shape,
        check_invariants=False,
    )


def _csr_bytes(matrix: Any) -> int:
    if isinstance(matrix, torch.Tensor):
        parts = (matrix.values(), matrix.crow_indices(), matrix.col_indices())
        return sum(p.numel() * p.element_size() for p in parts)
    return int(matrix.data.nbytes + matrix.indices.nbytes + matrix.indptr.nbytes)


def _bias_column(layer: nn.Module, backend: Backend) -> Any:
    if layer.bias is None:
        return None
    column = layer.bias.detach().reshape(-1, 1)
    return column.cpu().numpy() if backend == "scipy" else column


def _bias_bytes(bias: Any) -> int:
    if bias is None:
        return 0
    return int(bias.nbytes) if isinstance(bias, np.ndarray) else bias.numel() * bias.element_size()


def _product(weight: Any, bias: Any, columns: Any, backend: Backend) -> Any:
    """W @ columns + b for feature-major columns (torch tensor or numpy array)."""
    if backend == "scipy":
        out = weight @ columns
        if bias is not None:
            out += bias
        return out
    if bias is not None and columns.device.type == "cpu":
        return torch.addmm(bias, weight, columns)  # the bias add fused into the CPU kernel
    # cuSPARSE's addmm wants the added matrix at full size; a separate broadcast add avoids that.
    out = torch.sparse.mm(weight, columns)
    return out if bias is None else out.add_(bias)


class CsrLinearChain(nn.Module):
    """Consecutive Linear layers (each optionally followed by ReLU) computed feature-major."""

    def __init__(
        self,
        linears: list[nn.Linear],
        relu_after: list[bool],
        backend: Backend,
        gather: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if backend == "scipy" and linears[0].weight.device.type != "cpu":
            raise FormatUnsupported("scipy.sparse runs on the CPU only")
        self.backend = backend
        self.weights = [_csr(layer.weight, backend) for layer in linears]
        self.biases = [_bias_column(layer, backend) for layer in linears]
        self.relu_after = list(relu_after)
        self.in_features = linears[0].in_features
        self.out_features = linears[-1].out_features
        self.gather = gather

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # At batch 1 the whole chain costs ~15 us, so even a reshape (~1 us) is worth skipping.
        flat = x.dim() == 2
        lead = x.shape[:-1]
        h = (x if flat else x.reshape(-1, x.shape[-1])).t()
        # One copy into (features, batch): the gather of a thinned model's inputs does it for free.
        h = h.index_select(0, self.gather) if self.gather is not None else h.contiguous()
        if self.backend == "scipy":
            a = h.detach().numpy()
            for weight, bias, relu in zip(self.weights, self.biases, self.relu_after, strict=True):
                a = _product(weight, bias, a, "scipy")
                if relu:
                    np.maximum(a, 0, out=a)
            out = torch.from_numpy(a).t()
        else:
            for weight, bias, relu in zip(self.weights, self.biases, self.relu_after, strict=True):
                h = _product(weight, bias, h, "torch")
                if relu:
                    h.relu_()
            out = h.t()
        return out if flat else out.reshape(*lead, self.out_features)

    def storage_bytes(self) -> int:
        index = 0 if self.gather is None else self.gather.numel() * self.gather.element_size()
        return index + sum(
            _csr_bytes(w) + _bias_bytes(b) for w, b in zip(self.weights, self.biases, strict=True)
        )

    def extra_repr(self) -> str:
        shapes = ", ".join(f"{w.shape[1]}->{w.shape[0]}" for w in self.weights)
        return f"{self.backend} CSR, {shapes}, gather={self.gather is not None}"


class CsrConv2d(nn.Module):
    """A Conv2d as im2col (``unfold``) followed by one CSR product over all positions of the batch."""

    def __init__(self, conv: nn.Conv2d, backend: Backend) -> None:
        super().__init__()
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise FormatUnsupported(
                f"CSR convolution needs groups=1, zero padding given as numbers ({conv!r})"
            )
        if backend == "scipy" and conv.weight.device.type != "cpu":
            raise FormatUnsupported("scipy.sparse runs on the CPU only")
        self.backend = backend
        self.out_channels = conv.out_channels
        self.kernel_size, self.stride = conv.kernel_size, conv.stride
        self.padding, self.dilation = conv.padding, conv.dilation
        self.weight = _csr(conv.weight.reshape(conv.out_channels, -1), backend)
        self.bias = _bias_column(conv, backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        out_h, out_w = (
            (size + 2 * p - d * (k - 1) - 1) // s + 1
            for size, p, d, k, s in zip(
                (height, width), self.padding, self.dilation, self.kernel_size, self.stride, strict=True
            )
        )
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # (B, CKK, L)
        cols = cols.transpose(0, 1).reshape(cols.shape[1], -1)  # (CKK, B*L), positions contiguous
        if self.backend == "scipy":
            out = torch.from_numpy(_product(self.weight, self.bias, cols.detach().numpy(), "scipy"))
        else:
            out = _product(self.weight, self.bias, cols, "torch")
        return out.view(self.out_channels, batch, out_h, out_w).transpose(0, 1)

    def storage_bytes(self) -> int:
        return _csr_bytes(self.weight) + _bias_bytes(self.bias)

    def extra_repr(self) -> str:
        return f"{self.backend} CSR im2col, {tuple(self.weight.shape)}, kernel={self.kernel_size}"


class CsrLSTM(nn.Module):
    """An ``nn.LSTM`` (unidirectional, batch first, no projection) with CSR gate weights, torch only.

    The input-to-hidden products of all time steps are one CSR product on (features, steps x
    batch) columns; the hidden-to-hidden product runs once per step on (hidden, batch). Same call
    signature and outputs as ``nn.LSTM``: ``(output, (h_n, c_n))``.
    """

    def __init__(self, lstm: nn.LSTM, backend: Backend) -> None:
        super().__init__()
        if backend != "torch":
            raise FormatUnsupported(
                "no scipy CSR LSTM: each time step would cross between numpy and torch; use torch_csr"
            )
        if lstm.bidirectional or lstm.proj_size or not lstm.batch_first or not lstm.bias:
            raise FormatUnsupported("CSR LSTM covers unidirectional, batch-first LSTMs with biases")
        self.hidden, self.layers = lstm.hidden_size, lstm.num_layers
        self.input_weights = [_csr(getattr(lstm, f"weight_ih_l{k}"), backend) for k in range(self.layers)]
        self.hidden_weights = [_csr(getattr(lstm, f"weight_hh_l{k}"), backend) for k in range(self.layers)]
        self.biases = [
            (getattr(lstm, f"bias_ih_l{k}") + getattr(lstm, f"bias_hh_l{k}")).detach().reshape(-1, 1)
            for k in range(self.layers)
        ]

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        batch, steps, _ = x.shape
        columns = x.permute(2, 1, 0).reshape(x.shape[2], steps * batch)  # (features, time-major)
        last_h, last_c = [], []
        for k in range(self.layers):
            if state is None:
                h = x.new_zeros(self.hidden, batch)
                c = x.new_zeros(self.hidden, batch)
            else:
                h, c = state[0][k].t().contiguous(), state[1][k].t().contiguous()
            gates_x = _product(self.input_weights[k], self.biases[k], columns, "torch").view(-1, steps, batch)
            outputs = []
            for t in range(steps):
                gates = gates_x[:, t] + _product(self.hidden_weights[k], None, h, "torch")
                i, f, g, o = gates.chunk(4, dim=0)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
                outputs.append(h)
            columns = torch.stack(outputs, dim=1).reshape(self.hidden, steps * batch)
            last_h.append(h.t())
            last_c.append(c.t())
        out = columns.view(self.hidden, steps, batch).permute(2, 1, 0)
        return out, (torch.stack(last_h), torch.stack(last_c))

    def storage_bytes(self) -> int:
        weights = [*self.input_weights, *self.hidden_weights]
        return sum(_csr_bytes(w) for w in weights) + sum(_bias_bytes(b) for b in self.biases)


def sparsify_layers(model: nn.Module, backend: Backend) -> nn.Module:
    """Any model: each Linear, Conv2d and LSTM swapped for its CSR form in place (no chain fusion).

    For models that are not a plain chain (a language model with an embedding, an LSTM and a
    decoder); embeddings stay dense, since a row lookup already touches only what it needs.
    """

    def swap(path: str, module: nn.Module) -> nn.Module | None:
        if isinstance(module, nn.Linear):
            return CsrLinearChain([module], [False], backend)
        if isinstance(module, nn.Conv2d):
            return CsrConv2d(module, backend)
        if isinstance(module, nn.LSTM):
            return CsrLSTM(module, backend)
        if isinstance(module, nn.RNNBase):
            raise FormatUnsupported(f"no CSR form for {path} ({type(module).__name__})")
        return None

    return replace_modules(model, swap)


def sparsify_sequential(model: nn.Module, backend: Backend, convs: bool = True) -> nn.Module:
    """The same chain with Linear runs as ``CsrLinearChain`` and (if ``convs``) convs as ``CsrConv2d``.

    Explicit rules, no tracing: the model must be an ``nn.Sequential`` whose weight layers are
    Linear or Conv2d; a ``Gather`` right before a Linear run is fused into the run's transpose.
    """
    if not isinstance(model, nn.Sequential):
        raise FormatUnsupported(
            f"CSR formats cover nn.Sequential chains of Linear/Conv2d layers, not {type(model).__name__}"
        )
    items = list(model.named_children())
    new: OrderedDict[str, nn.Module] = OrderedDict()
    i = 0
    while i < len(items):
        name, module = items[i]
        gather = None
        before_linear = i + 1 < len(items) and isinstance(items[i + 1][1], nn.Linear)
        if isinstance(module, Gather) and module.dim == 1 and before_linear:
            gather, i = module.index, i + 1
            name, module = items[i]
        if isinstance(module, nn.Linear):
            linears, relus, names = [], [], []
            while i < len(items) and isinstance(items[i][1], nn.Linear):
                linears.append(items[i][1])
                names.append(items[i][0])
                i += 1
                relu = False
                while i < len(items) and isinstance(items[i][1], ELEMENTWISE):
                    relu |= isinstance(items[i][1], nn.ReLU)
                    i += 1
                relus.append(relu)
            new["_".join(names)] = CsrLinearChain(linears, relus, backend, gather)
            continue
        if isinstance(module, nn.Conv2d) and convs:
            new[name] = CsrConv2d(module, backend)
        elif isinstance(module, (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, Gather)) or not any(
            True for _ in module.parameters()
        ):
            new[name] = module
        else:
            raise FormatUnsupported(f"no CSR form for {name} ({type(module).__name__})")
        i += 1
    if len(new) == 1:  # a pure MLP is one chain: no Sequential to walk through at every call
        return next(iter(new.values()))
    return nn.Sequential(new)
