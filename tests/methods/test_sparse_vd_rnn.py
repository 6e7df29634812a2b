"""Sparse VD for LSTM language models (methods.md section 3, checks 11.8 and 11.15)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from sparsebench.method import StepContext
from sparsebench.methods.sparse_vd import SparseVD, SparseVDConfig
from sparsebench.methods.sparse_vd.recurrent import (
    LSTMSVD,
    EmbeddingSVD,
    SequenceLinearSVD,
    WeightSVD,
    sample_weight,
)
from sparsebench.tasks.ptb_lstm import PtbLstm, PtbLstmConfig, WordLanguageModel
from sparsebench.toolkit.kl import sparse_vd_kl

INPUT, HIDDEN, LAYERS = 3, 4, 2


def posterior_std(theta: torch.Tensor, log_sigma2: torch.Tensor, threshold: float = 3.0) -> tuple:
    """(masked theta, std) of methods.md section 2.2, written out independently of the layers."""
    la = torch.clamp(log_sigma2 - torch.log(theta * theta + 1e-8), -8.0, 8.0)
    masked = theta * (la < threshold)
    return masked, torch.exp(la / 2) * masked.abs()


def variational_lstm(seed: int = 0, cfg: SparseVDConfig | None = None) -> LSTMSVD:
    """A 2-layer LSTMSVD in float64 whose log sigma^2 spread makes the noise large and prunes ~1/3."""
    torch.manual_seed(seed)
    lstm = LSTMSVD.from_dense(
        nn.LSTM(INPUT, HIDDEN, LAYERS, batch_first=True).double(), cfg or SparseVDConfig()
    )
    with torch.no_grad():
        for name in lstm.weight_names:
            layer = getattr(lstm, name)
            layer.log_sigma2.copy_(
                torch.log(layer.weight**2) + torch.empty_like(layer.weight).uniform_(-3.0, 4.5)
            )
    return lstm


def manual_lstm(
    x: torch.Tensor, weights: dict[str, torch.Tensor], biases: dict[str, torch.Tensor]
) -> torch.Tensor:
    """Explicit unroll with one fixed weight set for every time step and sequence (gate order i, f, g, o)."""
    batch, steps, _ = x.shape
    layer_input = x
    for layer in range(LAYERS):
        w_ih, w_hh = weights[f"weight_ih_l{layer}"], weights[f"weight_hh_l{layer}"]
        b = biases[f"bias_ih_l{layer}"] + biases[f"bias_hh_l{layer}"]
        h = x.new_zeros(batch, HIDDEN)
        c = x.new_zeros(batch, HIDDEN)
        outputs = []
        for t in range(steps):
            gates = layer_input[:, t] @ w_ih.T + h @ w_hh.T + b
            i, f, g, o = gates.chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outputs.append(h)
        layer_input = torch.stack(outputs, dim=1)
    return layer_input


def test_one_weight_sample_serves_every_time_step_and_sequence() -> None:
    lstm = variational_lstm().train()
    x = torch.randn(3, 6, INPUT, dtype=torch.float64)
    torch.manual_seed(11)
    out, _ = lstm(x)
    torch.manual_seed(11)  # the same draws, taken explicitly in the layer's order
    weights = {}
    for name in lstm.weight_names:
        layer = getattr(lstm, name)
        theta, std = posterior_std(layer.weight, layer.log_sigma2)
        weights[name] = theta + std * torch.randn_like(theta)
    biases = {name: getattr(lstm, name) for name in lstm.flat_names if name.startswith("bias")}
    assert torch.allclose(out, manual_lstm(x, weights, biases), atol=1e-6)
    # The noise is large enough that sharing it matters: the draw moved the output.
    means = {
        name: posterior_std(getattr(lstm, name).weight, getattr(lstm, name).log_sigma2)[0] for name in weights
    }
    assert float((manual_lstm(x, means, biases) - out).detach().abs().max()) > 1e-2


def test_identical_sequences_in_a_batch_share_the_draw_and_batches_get_new_draws() -> None:
    lstm = variational_lstm().train()
    x = torch.randn(1, 5, INPUT, dtype=torch.float64).expand(4, 5, INPUT)
    first, _ = lstm(x)
    second, _ = lstm(x)
    assert torch.equal(first[0], first[3])  # LRT would give every sequence its own noise
    assert not torch.allclose(first, second)  # a new mini-batch, a new draw
    # The same for the embedding (every occurrence of a token) and the softmax layer (every position).
    torch.manual_seed(0)
    embedding = EmbeddingSVD.from_dense(nn.Embedding(7, 5), SparseVDConfig(init_log_sigma2=-2.0)).train()
    tokens = torch.tensor([[1, 2, 1], [1, 3, 2]])
    e1, e2 = embedding(tokens), embedding(tokens)
    assert (
        torch.equal(e1[0, 0], e1[0, 2])
        and torch.equal(e1[0, 0], e1[1, 0])
        and torch.equal(e1[0, 1], e1[1, 2])
    )
    assert not torch.allclose(e1, e2)
    linear = SequenceLinearSVD.from_dense(nn.Linear(5, 6), SparseVDConfig(init_log_sigma2=-2.0)).train()
    h = torch.randn(1, 1, 5).expand(2, 3, 5)
    y1, y2 = linear(h), linear(h)
    assert torch.equal(y1[0, 0], y1[1, 2]) and not torch.allclose(y1, y2)


def test_a_weight_draw_has_the_posterior_moments() -> None:
    torch.manual_seed(0)
    theta = torch.randn(4, 5, dtype=torch.float64)
    layer = WeightSVD(theta, SparseVDConfig(threshold=100.0)).train()  # nothing masked: pure moments
    with torch.no_grad():
        layer.log_sigma2.copy_(
            torch.log(theta**2) + torch.linspace(-3.0, 1.0, 20, dtype=torch.float64).view(4, 5)
        )
    with torch.no_grad():
        draws = torch.stack([layer() for _ in range(8000)])
    _, std = posterior_std(layer.weight.detach(), layer.log_sigma2.detach(), threshold=100.0)
    se = std / math.sqrt(len(draws))
    assert bool(((draws.mean(0) - theta).abs() < 5 * se).all())
    rel = (draws.var(0) / std**2 - 1).abs()
    assert float(rel.max()) < 5 * math.sqrt(2 / len(draws))


def test_eval_output_equals_nn_lstm_with_masked_weights() -> None:
    lstm = variational_lstm().eval()
    masks = {name: getattr(lstm, name).keep_mask() for name in lstm.weight_names}
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    assert 0 < kept < total  # some weights pruned, some kept
    reference = nn.LSTM(INPUT, HIDDEN, LAYERS, batch_first=True).double()
    with torch.no_grad():
        for name in lstm.flat_names:
            source = getattr(lstm, name)
            value = source.weight * masks[name] if name.startswith("weight") else source
            getattr(reference, name).copy_(value)
    x = torch.randn(2, 7, INPUT, dtype=torch.float64)
    h0 = torch.randn(LAYERS, 2, HIDDEN, dtype=torch.float64)
    c0 = torch.randn(LAYERS, 2, HIDDEN, dtype=torch.float64)
    with torch.no_grad():
        out, (h, c) = lstm(x, (h0, c0))
        ref_out, (ref_h, ref_c) = reference(x, (h0, c0))
        exported = lstm.to_dense(masks)
        exp_out, _ = exported(x, (h0, c0))
    assert torch.allclose(out, ref_out, atol=1e-12) and torch.allclose(h, ref_h) and torch.allclose(c, ref_c)
    assert type(exported) is nn.LSTM and torch.allclose(exp_out, ref_out, atol=1e-12)
    assert exported.dropout == 0.0


def test_masked_weights_get_finite_gradients() -> None:
    """A pruned weight has variance exactly 0; its sample must still backpropagate finitely."""
    lstm = variational_lstm().train()
    x = torch.randn(2, 4, INPUT, dtype=torch.float64)
    out, _ = lstm(x)
    out.square().sum().backward()
    for name, p in lstm.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name


def test_mask_keeps_exactly_667_of_1000_and_export_agrees() -> None:
    """methods.md check 8 on one LSTM matrix: log alpha_i = -5 + 12 (i + 1/2) / 1000, 333 of them >= 3."""
    lstm = LSTMSVD.from_dense(nn.LSTM(25, 10, 1, batch_first=True), SparseVDConfig())  # weight_ih: 40 x 25
    ell = -5.0 + 12.0 * (torch.arange(1000, dtype=torch.float64) + 0.5) / 1000
    with torch.no_grad():
        lstm.weight_ih_l0.weight.fill_(1.0)
        lstm.weight_ih_l0.log_sigma2.copy_((ell + math.log1p(1e-8)).view(40, 25))
    method = SparseVD()
    model = nn.Sequential(lstm)
    masks = method.masks(model)
    assert int(masks["0.weight_ih_l0"].sum()) == 667
    exported = method.export(model, masks).eval()
    assert int((exported[0].weight_ih_l0 != 0).sum()) == 667
    x = torch.randn(2, 3, 25)
    with torch.no_grad():
        assert torch.allclose(exported(x)[0], model.eval()(x)[0], atol=1e-6)


def tiny_language_model() -> tuple[PtbLstm, WordLanguageModel]:
    task = PtbLstm(PtbLstmConfig(preset="medium", hidden=6, steps=4))  # medium: has dropout to remove
    task.vocabulary_size = 11
    torch.manual_seed(0)
    return task, task.build_model()


def test_sparse_vd_converts_every_weight_of_the_language_model_and_exports_plain_layers() -> None:
    task, dense = tiny_language_model()
    method = SparseVD(SparseVDConfig(init_log_sigma2=-4.0))
    assert method.not_applicable(dense) is None
    model = method.convert(copy.deepcopy(dense))
    assert isinstance(model.embedding, EmbeddingSVD) and isinstance(model.lstm, LSTMSVD)
    assert isinstance(model.decoder, SequenceLinearSVD) and isinstance(model.dropout, nn.Identity)
    masks = method.masks(model)
    assert sorted(masks) == sorted(
        ["embedding", "decoder"] + [f"lstm.weight_{k}_l{i}" for i in range(2) for k in ("ih", "hh")]
    )
    for key, mask in masks.items():  # every key names a weight of the standard model, same shape
        assert (
            mask.dtype == torch.bool
            and mask.shape == dense.get_parameter(key if key.startswith("lstm") else f"{key}.weight").shape
        )
    exported = method.export(model, masks).eval()
    assert {k: v.shape for k, v in exported.state_dict().items()} == {
        k: v.shape for k, v in dense.state_dict().items()
    }
    assert {type(m) for m in exported.modules()} == {
        WordLanguageModel,
        nn.Embedding,
        nn.Identity,
        nn.LSTM,
        nn.Linear,
    }
    x = torch.randint(0, 11, (3, 4))
    model.eval()
    with torch.no_grad():
        task.on_pass_start(model, training=False)
        task.on_pass_start(exported, training=False)
        first = (model(x), exported(x))
        second = (model(x), exported(x))  # carried state too
    for a, b in (first, second):
        assert torch.allclose(a, b, atol=1e-6)


def test_the_regularizer_is_the_molchanov_kl_of_every_weight_over_the_token_count() -> None:
    _, dense = tiny_language_model()
    method = SparseVD(SparseVDConfig(init_log_sigma2=-4.0, kl_warmup_start=0, kl_warmup_epochs=0))
    model = method.convert(dense)
    expected = 0.0
    for name, p in model.named_parameters():
        if name.endswith("log_sigma2"):
            theta = model.get_parameter(name.rsplit(".", 1)[0] + ".weight")
            la = torch.clamp(p - torch.log(theta**2 + 1e-8), -8, 8)
            expected += float(sparse_vd_kl(la).sum().detach())
    ctx = StepContext(epoch=0, step=0, steps_per_epoch=1, total_epochs=1, num_train=929_588)
    reg = method.regularizer(model, ctx)
    assert float(reg.detach()) == pytest.approx(expected / 929_588, rel=1e-5)
    reg.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_an_eval_draw_is_the_masked_mean() -> None:
    torch.manual_seed(0)
    layer = EmbeddingSVD.from_dense(nn.Embedding(5, 3), SparseVDConfig(init_log_sigma2=0.0)).eval()
    assert 0 < int(layer.keep_mask().sum()) < 15
    assert torch.equal(sample_weight(layer), layer.weight * layer.keep_mask())
