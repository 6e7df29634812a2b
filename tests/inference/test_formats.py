"""Every export format computes what the dense masked model computes; thinning and bytes are exact."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from sparsebench.bench.inference import ATOL, RTOL, bench_formats
from sparsebench.inference.formats import FORMATS, Format
from sparsebench.inference.size import storage_bytes
from sparsebench.inference.sparse_layers import CsrConv2d, CsrLinearChain, FormatUnsupported

CPU = torch.device("cpu")


def masked_(model: nn.Module, sparsity: float, seed: int) -> nn.Module:
    """Zero a random ``sparsity`` share of every weight tensor (biases stay), as an exported model."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.weight.mul_((torch.rand(m.weight.shape, generator=g) >= sparsity).float())
    return model.eval()


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(
        OrderedDict(
            fc1=nn.Linear(20, 16), relu1=nn.ReLU(), drop=nn.Dropout(0.5),
            fc2=nn.Linear(16, 12), relu2=nn.ReLU(), fc3=nn.Linear(12, 5),
        )
    )  # fmt: skip
    masked_(model, 0.7, seed)
    with torch.no_grad():
        model.fc1.weight[:, :6] = 0  # six dead inputs
        model.fc1.weight[3] = 0  # a hidden unit computing only its bias (folded into fc2)
        model.fc2.weight[:, 7] = 0  # a hidden unit nobody reads
    return model


def convnet(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(2, 6, 3, padding=1), relu1=nn.ReLU(), pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(6, 8, 3, stride=2), relu2=nn.ReLU(), flatten=nn.Flatten(),
            fc1=nn.Linear(8 * 2 * 2, 10), relu3=nn.ReLU(), fc2=nn.Linear(10, 3),
        )
    )  # fmt: skip
    masked_(model, 0.6, seed)
    with torch.no_grad():
        model.conv2.weight[:, 4] = 0  # input channel 4 unread: conv1 filter 4 goes
        model.conv2.weight[2] = 0
        model.fc1.weight[:, 2 * 4 : 3 * 4] = 0  # conv2 filter 2 is also unread downstream
    return model


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(((a - b).abs() <= ATOL + RTOL * b.abs()).all())


@pytest.mark.parametrize("name", list(FORMATS))
@pytest.mark.parametrize("make, shape", [(mlp, (20,)), (convnet, (2, 11, 11))])
def test_every_format_reproduces_the_dense_masked_outputs(name: str, make, shape: tuple) -> None:
    model = make()
    x = torch.randn(33, *shape, generator=torch.Generator().manual_seed(1))
    built = FORMATS[name].build(model, x[:1], CPU)
    with torch.inference_mode():
        assert close(built(x), model(x))
        assert close(built(x[:1]), model(x[:1]))  # batch 1, the latency case


def test_csr_formats_really_hold_csr_layers() -> None:
    built = FORMATS["thinned_torch_csr"].build(convnet(), torch.zeros(1, 2, 11, 11), CPU)
    kinds = [type(m) for m in built.children()]
    assert CsrConv2d in kinds and CsrLinearChain in kinds
    assert not any(isinstance(m, (nn.Linear, nn.Conv2d)) for m in built.modules())
    fc_only = FORMATS["thinned_scipy_csr_fc"].build(convnet(), torch.zeros(1, 2, 11, 11), CPU)
    assert sum(isinstance(m, nn.Conv2d) for m in fc_only.modules()) == 2


def test_a_linear_run_becomes_one_feature_major_chain_with_the_gather_fused() -> None:
    built = FORMATS["thinned_scipy_csr"].build(mlp(), torch.zeros(1, 20), CPU)
    chain = built  # a pure MLP becomes one chain, not a Sequential around it
    assert isinstance(chain, CsrLinearChain) and chain.relu_after == [True, True, False]
    assert chain.gather is not None and chain.gather.tolist() == list(range(6, 20))


def kept_units(layer: nn.Module, reader: nn.Module) -> torch.Tensor:
    """Units of ``layer`` that compute something (nonzero row) and are read (nonzero input block)."""
    computes = (layer.weight.flatten(1) != 0).any(dim=1)
    reads = (reader.weight.transpose(0, 1).reshape(len(computes), -1) != 0).any(dim=1)
    return computes & reads


def test_thinning_removes_exactly_the_dead_units() -> None:
    model = mlp()
    thinned = FORMATS["thinned"].build(model, torch.zeros(1, 20), CPU)
    linears = [m for m in thinned.modules() if isinstance(m, nn.Linear)]
    kept1, kept2 = kept_units(model.fc1, model.fc2), kept_units(model.fc2, model.fc3)
    assert not kept1[3] and not kept1[7]  # the planted dead units
    inputs = int((model.fc1.weight[kept1] != 0).any(dim=0).sum())
    assert inputs <= 14  # the six planted dead inputs, and any other column left empty
    assert [(m.in_features, m.out_features) for m in linears] == [
        (inputs, int(kept1.sum())),
        (int(kept1.sum()), int(kept2.sum())),
        (int(kept2.sum()), 5),
    ]


def test_convolution_thinning_drops_unread_filters() -> None:
    model = convnet()
    thinned = FORMATS["thinned"].build(model, torch.zeros(1, 2, 11, 11), CPU)
    convs = [m for m in thinned.modules() if isinstance(m, nn.Conv2d)]
    kept1, kept2 = kept_units(model.conv1, model.conv2), kept_units(model.conv2, model.fc1)
    assert not kept1[4] and not kept2[2]  # the planted unread channel and zero filter
    assert (convs[0].out_channels, convs[1].in_channels) == (int(kept1.sum()), int(kept1.sum()))
    assert convs[1].out_channels == int(kept2.sum())


def test_bytes_of_hand_made_masks() -> None:
    layer = nn.Linear(5, 4)
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[0, 1], layer.weight[2, 4], layer.weight[3, 0] = 1.0, 2.0, 3.0
    model = nn.Sequential(layer)
    assert storage_bytes(model) == (20 + 4) * 4
    # CSR: 3 float32 values + 5 int32 row pointers + 3 int32 column indices, then the 4 biases.
    for name in ("torch_csr", "scipy_csr"):
        assert (
            storage_bytes(FORMATS[name].build(model, torch.zeros(1, 5), CPU)) == 3 * 4 + 5 * 4 + 3 * 4 + 4 * 4
        )
    # Thinning keeps rows 0, 2, 3 (row 1 computes only its bias, which stays: it is the output
    # layer) and reads inputs 0, 1, 4 through a gather of three int64 indices.
    thinned = FORMATS["thinned"].build(model, torch.zeros(1, 5), CPU)
    assert storage_bytes(thinned) == (4 * 3 + 4) * 4 + 3 * 8


def test_unsupported_pairs_say_why() -> None:
    class NotAChain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    with pytest.raises(FormatUnsupported, match="nn.Sequential"):
        FORMATS["thinned"].build(NotAChain(), torch.zeros(1, 4), CPU)
    with pytest.raises(FormatUnsupported, match="CPU only"):
        FORMATS["scipy_csr"].build(mlp(), torch.zeros(1, 20), torch.device("cuda"))
    with pytest.raises(FormatUnsupported, match="scipy CSR LSTM"):
        FORMATS["scipy_csr"].build(language_model(), torch.zeros(1, 5, dtype=torch.long), CPU)

    table = bench_formats(
        NotAChain().eval(), torch.zeros(1, 4), torch.randn(10, 4), CPU, batch_sizes=(1, 2), repeats=1
    )
    unsupported = table[table.status == "unsupported"]
    assert set(unsupported.format) == {"thinned", "thinned_torch_csr", "thinned_scipy_csr"}
    assert unsupported.reason.str.contains("nn.Sequential").all()
    assert unsupported.ms.isna().all()
    # Not a chain, but each layer still has a CSR form.
    assert set(table[table.status == "ok"].format) == {"dense", "torch_csr", "scipy_csr"}


def language_model(seed: int = 0) -> nn.Module:
    from sparsebench.tasks.ptb_lstm import WordLanguageModel

    torch.manual_seed(seed)
    model = WordLanguageModel(vocabulary=30, hidden=8, layers=2, dropout=0.0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "weight" in name and "embedding" not in name:
                p.mul_((torch.rand(p.shape) >= 0.7).float())
    return model.eval()


def test_csr_lstm_language_model_reproduces_the_dense_logits_and_state() -> None:
    model = language_model()
    tokens = torch.randint(0, 30, (6, 5), generator=torch.Generator().manual_seed(2))
    built = FORMATS["torch_csr"].build(model, tokens[:1], CPU)
    assert not any(isinstance(m, (nn.LSTM, nn.Linear)) for m in built.modules())
    with torch.inference_mode():
        model.reset_state(), built.reset_state()
        assert close(built(tokens), model(tokens))
        # The second call continues from the carried state, which must match too.
        assert close(built(tokens), model(tokens))
        assert close(built.state[0], model.state[0]) and close(built.state[1], model.state[1])


def test_language_model_bench_compares_every_chunk_from_a_fresh_state() -> None:
    from sparsebench.bench.inference import examples_of

    class Stream:
        tokens = torch.arange(103) % 30
        steps = 5

    chunks = examples_of(Stream(), "lm")
    assert chunks.shape == (20, 5) and chunks[1, 0] == 5
    table = bench_formats(
        language_model(),
        chunks[:1],
        chunks,
        CPU,
        batch_sizes=(2,),
        repeats=1,
        reset=lambda m: m.reset_state(),
    )
    status = table.set_index("format").status.to_dict()
    assert status == {"dense": "ok", "thinned": "unsupported", "torch_csr": "ok", "scipy_csr": "unsupported",
                      "thinned_torch_csr": "unsupported", "thinned_scipy_csr": "unsupported"}  # fmt: skip
    assert table.set_index("format").agreement["torch_csr"] == 1.0


def test_a_wrong_format_is_failed_and_not_timed(monkeypatch: pytest.MonkeyPatch) -> None:
    class Off(Format):
        def build(self, model: nn.Module, example: torch.Tensor, device: torch.device) -> nn.Module:
            return nn.Sequential(model, nn.Hardtanh(-1e-3, 1e-3))  # clips the logits: wrong

    monkeypatch.setitem(FORMATS, "off", Off("off", "broken on purpose", False, "dense"))
    table = bench_formats(mlp(), torch.zeros(1, 20), torch.randn(50, 20), CPU, ["off"], (1, 8), repeats=1)
    off = table[table.format == "off"]
    assert (off.status == "failed").all() and off.ms.isna().all()
    assert off.reason.iloc[0].startswith("outputs differ from dense")
    dense = table[table.format == "dense"]
    assert (dense.status == "ok").all() and (dense.speedup == 1.0).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(
    "name", ["dense", "thinned", "torch_csr", "thinned_torch_csr", "thinned_torch_csr_fc"]
)
def test_cuda_formats_reproduce_the_dense_outputs(name: str) -> None:
    cuda = torch.device("cuda")
    model = convnet().to(cuda)
    x = torch.randn(17, 2, 11, 11, device=cuda)
    built = FORMATS[name].build(model, x[:1], cuda)
    with torch.inference_mode():
        assert close(built(x), model(x))
