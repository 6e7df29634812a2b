"""The exported model beside a run record: CSR per layer, exact round trip, no pickles, small when sparse."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sparsebench import record
from sparsebench.errors import ConfigError


def sparse_lenet5_like() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 5),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 24 * 24, 50),
        nn.Linear(50, 10),
    )
    with torch.no_grad():
        for layer in (model[0], model[4], model[5]):
            keep = torch.rand_like(layer.weight) < 0.05
            layer.weight.mul_(keep)
    model(torch.randn(3, 1, 28, 28))  # moves the batch-norm statistics and its integer counter
    return model


def test_round_trip_is_exact_for_every_tensor_and_dtype(tmp_path: Path) -> None:
    state = sparse_lenet5_like().state_dict()
    path = tmp_path / f"row-seed0{record.MODEL_SUFFIX}"
    record.write_model(state, path)
    back = record.read_model(path)
    assert set(back) == set(state)
    for key, tensor in state.items():
        assert back[key].dtype == tensor.dtype and back[key].shape == tensor.shape, key
        assert torch.equal(back[key], tensor), key


def test_weights_are_stored_as_csr_of_their_nonzeros_only(tmp_path: Path) -> None:
    state = sparse_lenet5_like().state_dict()
    arrays = record.model_arrays(state)
    for name in ("0.weight", "4.weight", "5.weight"):
        nonzeros = int((state[name] != 0).sum())
        assert arrays[f"{name}::data"].size == nonzeros
        assert list(arrays[f"{name}::shape"]) == list(state[name].shape)
    assert "0.bias::dense" in arrays and "1.num_batches_tracked::dense" in arrays
    dense_bytes = sum(t.numel() * t.element_size() for t in state.values())
    size = record.write_model(state, tmp_path / f"m{record.MODEL_SUFFIX}")
    assert size < dense_bytes / 5


def test_no_pickled_object_is_stored_or_loaded(tmp_path: Path) -> None:
    path = tmp_path / f"m{record.MODEL_SUFFIX}"
    record.write_model(sparse_lenet5_like().state_dict(), path)
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            with archive.open(name) as member:
                assert np.lib.format.read_magic(member) is not None
                header = member.read(200)
                assert b"'descr': '|O'" not in header  # no object arrays
    crafted = tmp_path / f"evil{record.MODEL_SUFFIX}"
    np.savez(
        crafted, __format__=np.array(record.MODEL_FORMAT), **{"w::dense": np.array([object()], dtype=object)}
    )
    with pytest.raises(ConfigError, match="cannot read model file"):
        record.read_model(crafted)


def test_a_file_that_is_not_a_model_file_is_one_line(tmp_path: Path) -> None:
    other = tmp_path / f"other{record.MODEL_SUFFIX}"
    np.savez(other, x=np.zeros(3))
    with pytest.raises(ConfigError, match="is not a sparsebench model file"):
        record.read_model(other)
    garbage = tmp_path / f"garbage{record.MODEL_SUFFIX}"
    garbage.write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match="cannot read model file"):
        record.read_model(garbage)


def test_the_write_is_atomic_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "runs" / f"m{record.MODEL_SUFFIX}"
    record.write_model({"w": torch.eye(3)}, path)
    record.write_model({"w": 2 * torch.eye(3)}, path)  # a leftover of a cell never recorded is replaced
    assert torch.equal(record.read_model(path)["w"], 2 * torch.eye(3))
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_a_campaign_keeps_small_sparse_models_and_the_models_children_start_from(tmp_path: Path) -> None:
    from sparsebench.campaign.cells import Cell, save_model
    from sparsebench.campaign.spec import campaign_from_dict

    rows = [
        {"name": "p", "task": "lenet300_100", "method": "dense", "seeds": [0]},
        {"name": "c", "task": "lenet300_100", "method": "sparse_vd", "init_from_row": "p", "seeds": [0]},
        {"name": "d", "task": "lenet300_100", "method": "dense", "seeds": [0]},
    ]
    spec = campaign_from_dict({"name": "x", "results": "reports/x", "rows": rows})
    spec.results = tmp_path / "reports" / "x"
    dense = {"w": torch.randn(300, 784), "b": torch.randn(300)}
    sparse = {"w": dense["w"] * (torch.rand(300, 784) < 0.02), "b": dense["b"]}
    huge_sparse = {"w": torch.randn(2000, 2000) * (torch.rand(2000, 2000) < 0.2)}
    assert save_model(spec, Cell("d", 0), dense) is None  # dense: nothing sparse to keep
    assert save_model(spec, Cell("p", 0), dense) is not None  # a child row starts from it
    kept = save_model(spec, Cell("c", 0), sparse)
    assert kept is not None and kept.stat().st_size < 100_000
    assert save_model(spec, Cell("c", 0), huge_sparse) is None and not kept.exists()  # over 1 MB
