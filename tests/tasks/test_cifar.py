"""CIFAR reader, downloader and augmentation on generated pickle batches, and the VGG-like task."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import itertools
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from sparsebench.data import augment, cifar
from sparsebench.data.cifar import SPECS, download_cifar, load_cifar
from sparsebench.env import Env
from sparsebench.errors import ConfigError, DataError
from sparsebench.measure.counts import WEIGHT_LAYERS, layer_table, weight_tensors
from sparsebench.registry import METHODS
from sparsebench.run.plan import RunRequest
from sparsebench.run.train import train
from sparsebench.tasks.vgg_like import VggLike, VggLikeConfig, build_vgg_like
from sparsebench.testing import check_method_conformance


def write_batch(path: Path, images: np.ndarray, labels: dict[str, list[int]], protocol: int = 2) -> None:
    """One batch in the published layout: bytes keys, uint8 data (N, 3072), labels as a list."""
    batch = {b"batch_label": b"generated", b"data": images.reshape(len(images), -1), b"filenames": []}
    batch.update({key.encode(): value for key, value in labels.items()})
    path.write_bytes(pickle.dumps(batch, protocol=protocol))


def make_cifar(root: Path, dataset: str, n_train: int = 60, n_test: int = 20, seed: int = 0) -> Path:
    """A learnable CIFAR look-alike: the class sets the red level of a stripe (first n_train images in
    ``train_files`` order, then the test ones). Image i of the train split has green = i % 256."""
    spec = SPECS[dataset]
    rng = np.random.default_rng(seed)
    folder = root / spec.subdir
    folder.mkdir(parents=True, exist_ok=True)
    for names, n in ((spec.train_files, n_train), (spec.test_files, n_test)):
        per_file = n // len(names)
        for f, name in enumerate(names):
            labels = rng.integers(0, spec.num_classes, size=per_file)
            images = rng.integers(0, 256, size=(per_file, 3, 32, 32), dtype=np.uint8)
            images[:, 0, 8:12, :] = (labels * 255 // (spec.num_classes - 1))[:, None, None]
            images[:, 1] = ((f * per_file + np.arange(per_file)) % 256)[:, None, None]
            if dataset == "cifar100":
                coarse = (labels // 5).tolist()
                write_batch(folder / name, images, {"fine_labels": labels.tolist(), "coarse_labels": coarse})
            else:
                write_batch(folder / name, images, {"labels": labels.tolist()})
    return root


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    make_cifar(root, "cifar10")
    make_cifar(root, "cifar100", n_train=40, n_test=10)
    return root


# --- reader ---------------------------------------------------------------------------------------


def test_cifar10_reader_keeps_order_channels_and_labels(cifar_root: Path) -> None:
    arrays = load_cifar(cifar_root, "cifar10")
    assert arrays.train_images.shape == (60, 3, 32, 32) and arrays.train_images.dtype == torch.uint8
    assert arrays.test_images.shape == (20, 3, 32, 32) and arrays.num_classes == 10
    assert arrays.train_labels.dtype == torch.int64
    # data_batch_1..5 in order: green of train image i is i; the 1,024-value blocks are R, G, B planes.
    assert torch.equal(arrays.train_images[:, 1, 0, 0], torch.arange(60, dtype=torch.uint8))
    stripe = arrays.train_images[:, 0, 9, 5].long()
    assert torch.equal(stripe, arrays.train_labels * 255 // 9)


def test_cifar100_reader_uses_the_fine_labels(cifar_root: Path) -> None:
    arrays = load_cifar(cifar_root, "cifar100")
    with (cifar_root / "cifar-100-python" / "train").open("rb") as fh:
        raw = pickle.load(fh, encoding="bytes")
    assert arrays.num_classes == 100
    assert arrays.train_labels.tolist() == raw[b"fine_labels"] != raw[b"coarse_labels"]
    assert int(arrays.train_labels.max()) >= 20  # beyond the 20 coarse classes


def test_missing_file_names_every_expected_file_and_both_ways_to_point_at_data(tmp_path: Path) -> None:
    make_cifar(tmp_path, "cifar10")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError) as err:
        load_cifar(tmp_path, "cifar10")
    message = str(err.value)
    for name in (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "--data-dir", "SPARSEBENCH_DATA"):
        assert name in message
    with pytest.raises(DataError, match="train, test"):
        load_cifar(tmp_path, "cifar100")


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"\x80\x02}q\x00(X", "corrupt"),  # truncated pickle
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}, protocol=2), "labels"),
        (
            pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, protocol=2),
            r"\(N, 3072\)",
        ),
        (
            pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, protocol=2),
            "2 images but 1",
        ),
        (pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]}, protocol=2), "outside 0..9"),
        (pickle.dumps([1, 2, 3], protocol=2), "not a CIFAR batch"),
    ],
)
def test_corrupt_batches_are_data_errors(tmp_path: Path, payload: bytes, match: str) -> None:
    make_cifar(tmp_path, "cifar10")
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    bad.write_bytes(payload)
    with pytest.raises(DataError, match=match) as err:
        load_cifar(tmp_path, "cifar10")
    assert "data_batch_2" in str(err.value)


class _Exploit:
    def __reduce__(self) -> tuple:
        return (print, ("this must never run",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    make_cifar(tmp_path, "cifar10")
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({b"data": _Exploit()}))
    with pytest.raises(DataError, match="refusing"):
        load_cifar(tmp_path, "cifar10")
    assert "must never run" not in capsys.readouterr().out


def test_python2_numpy_module_names_are_read(tmp_path: Path) -> None:
    """The published files name numpy.core.multiarray (numpy 1); numpy 2 calls it numpy._core."""
    make_cifar(tmp_path, "cifar10")
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    old = path.read_bytes().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray\n" in old
    path.write_bytes(old)
    assert load_cifar(tmp_path, "cifar10").test_images.shape == (20, 3, 32, 32)


# --- download -------------------------------------------------------------------------------------


def archive_of(root: Path, subdir: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(root / subdir, arcname=subdir)
    return buffer.getvalue()


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_download_checks_the_archive_md5_and_unpacks_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dataset: str
) -> None:
    spec = SPECS[dataset]
    source = make_cifar(tmp_path / "source", dataset, n_train=10 if dataset == "cifar100" else 50, n_test=10)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    data = archive_of(source, spec.subdir)
    (mirror / spec.archive).write_bytes(data)
    monkeypatch.setenv(cifar.MIRROR_ENV, mirror.as_uri())

    monkeypatch.setitem(SPECS, dataset, dataclasses.replace(spec, archive_md5="0" * 32))
    with pytest.raises(DataError, match="md5"):
        download_cifar(tmp_path / "bad", dataset)
    assert not (tmp_path / "bad" / spec.subdir).exists() and not list((tmp_path / "bad").iterdir())

    monkeypatch.setitem(SPECS, dataset, dataclasses.replace(spec, archive_md5=hashlib.md5(data).hexdigest()))
    paths = download_cifar(tmp_path / "good", dataset)
    assert sorted(p.name for p in paths) == sorted(spec.files)
    assert torch.equal(
        load_cifar(tmp_path / "good", dataset).test_labels, load_cifar(source, dataset).test_labels
    )


def test_download_reports_an_unreachable_mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cifar.MIRROR_ENV, (tmp_path / "nowhere").as_uri())
    with pytest.raises(DataError, match=cifar.MIRROR_ENV):
        download_cifar(tmp_path / "data", "cifar10")


# --- augmentation ---------------------------------------------------------------------------------


def crops_of(padded: torch.Tensor, size: int) -> list[tuple[tuple[int, int, bool], torch.Tensor]]:
    """Every (offset, flip) crop of one padded image."""
    span = padded.shape[-1] - size + 1
    out = []
    for dy, dx, flip in itertools.product(range(span), range(span), (False, True)):
        crop = padded[:, dy : dy + size, dx : dx + size]
        out.append(((dy, dx, flip), crop.flip(-1) if flip else crop))
    return out


def test_random_crop_flip_returns_a_crop_of_the_padded_image_or_its_mirror() -> None:
    torch.manual_seed(0)
    x = torch.randn(24, 3, 8, 8)
    out = augment.random_crop_flip(x, torch.Generator().manual_seed(1), padding=2)
    assert out.shape == x.shape and out.is_contiguous()
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    seen = set()
    for i in range(len(x)):
        matches = [key for key, crop in crops_of(padded[i], 8) if torch.equal(crop, out[i])]
        assert len(matches) == 1, f"image {i} is not exactly one crop of its padded input"
        seen.add(matches[0])
    assert {flip for _, _, flip in seen} == {False, True}
    assert len({(dy, dx) for dy, dx, _ in seen}) > 5


def test_random_crop_flip_is_deterministic_under_a_seed_and_uniform() -> None:
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    a = augment.random_crop_flip(x, torch.Generator().manual_seed(7))
    b = augment.random_crop_flip(x, torch.Generator().manual_seed(7))
    c = augment.random_crop_flip(x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # Pixel (i, j) holds 100 (i + 1) + j + 1, so the centre of a crop (never padding) names its offset.
    n = 4500
    rows = torch.arange(1, 33, dtype=torch.float32).view(32, 1) * 100
    x = (rows + torch.arange(1, 33, dtype=torch.float32)).expand(n, 3, 32, 32).contiguous()
    out = augment.random_crop_flip(x, torch.Generator().manual_seed(0))
    centre, left = out[:, 0, 16, 16], out[:, 0, 16, 15]
    flipped = left > centre
    # Crop row 16 is padded row dy + 16, image row dy + 12; column likewise, mirrored when flipped.
    dy = torch.div(centre, 100, rounding_mode="floor") - 13
    dx = torch.where(flipped, centre % 100 - 12, centre % 100 - 13)
    assert abs(float(flipped.float().mean()) - 0.5) < 5 * 0.5 / n**0.5
    for offsets in (dy, dx):
        counts = torch.bincount(offsets.long(), minlength=9)
        assert counts.numel() == 9  # every offset in 0..8, none outside
        expected, sd = n / 9, (n / 9 * 8 / 9) ** 0.5
        assert float((counts - expected).abs().max()) < 5 * sd


def test_standardize_gives_zero_mean_unit_std_per_channel() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (200, 3, 8, 8), generator=g, dtype=torch.uint8)
    images[:, 1] //= 4  # channels with different statistics
    mean, std = augment.channel_stats(images)
    assert mean.shape == (3, 1, 1)
    assert torch.allclose(mean.flatten(), images.float().div(255).mean(dim=(0, 2, 3)), atol=1e-6)
    z = augment.standardize(images, mean, std)
    assert z.dtype == torch.float32
    assert torch.allclose(z.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(z.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-5)


def test_zca_whitens_the_training_pixels() -> None:
    g = torch.Generator().manual_seed(0)
    base = torch.randint(0, 200, (400, 1, 2, 2), generator=g)
    images = (base + torch.randint(0, 50, (400, 3, 2, 2), generator=g)).to(torch.uint8)  # correlated pixels
    mean, w = augment.zca_fit(images, eps=0.0)
    z = augment.zca_apply(images, mean, w).flatten(1).double()
    cov = z.T @ z / len(z)
    assert torch.allclose(cov, torch.eye(12, dtype=torch.float64), atol=1e-3)
    assert torch.allclose(w, w.T, atol=1e-5)  # ZCA, not just any whitening: the symmetric one


# --- the VGG-like task ----------------------------------------------------------------------------


def weight_count(model: torch.nn.Module) -> int:
    return sum(t.numel() for m in model.modules() if isinstance(m, WEIGHT_LAYERS) for t in weight_tensors(m))


@pytest.mark.parametrize(
    ("k", "weights"), [(0.25, 937_392), (0.5, 3_746_144), (1.0, 14_977_728), (1.5, 33_694_752)]
)
def test_vgg_like_weight_counts_match_methods_md(k: float, weights: int) -> None:
    with torch.device("meta"):
        model = build_vgg_like(k, 10)
    assert weight_count(model) == weights


def test_vgg_like_layers_at_k1_and_cifar100_head() -> None:
    with torch.device("meta"):
        model = build_vgg_like(1.0, 10)
        model100 = VggLike(VggLikeConfig(dataset="cifar100", k=1.0)).build_model()
    per_layer = [m.weight.numel() for m in model.modules() if isinstance(m, WEIGHT_LAYERS)]
    assert per_layer == [1728, 36864, 73728, 147456, 294912, 589824, 589824, 1179648] + [2359296] * 5 + [
        262144,
        5120,
    ]
    assert model100.fc2.weight.shape == (100, 512)
    kinds = [type(m).__name__ for m in model.modules()]
    assert kinds.count("BatchNorm2d") == 13 and kinds.count("MaxPool2d") == 5 and kinds.count("Dropout") == 10
    assert all(m.eps == 1e-3 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_vgg_like_counts_through_the_core_and_rejects_a_vanishing_width() -> None:
    torch.manual_seed(0)
    model = build_vgg_like(0.125, 10).eval()
    table = layer_table(model, torch.zeros(1, 3, 32, 32))
    assert list(table.layer) == [f"conv{i}" for i in range(1, 14)] + ["fc1", "fc2"]
    assert int(table.weights.sum()) == weight_count(model)
    assert int(table.flops_dense.iloc[0]) == 2 * 3 * 8 * 9 * 32 * 32  # conv1: 8 filters at every pixel
    conv = model.conv13.weight.detach()  # He-normal on fan-out: std sqrt(2 / (9 * 64)) at k = 1/8
    assert abs(float(conv.std()) - (2 / (9 * 64)) ** 0.5) < 0.1 * (2 / (9 * 64)) ** 0.5
    with pytest.raises(ConfigError, match="task.k"):
        build_vgg_like(0.01, 10)


def test_vgg_like_splits_are_standardized_on_the_training_part(cifar_root: Path) -> None:
    task = VggLike(VggLikeConfig(dataset="cifar10"))
    splits = task.load_data(cifar_root, torch.device("cpu"), val_size=10)
    assert (splits.train.num_examples, splits.val.num_examples, splits.test.num_examples) == (50, 10, 20)
    assert torch.allclose(splits.train.x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    out = task.train_transform(splits.train.x[:4], torch.Generator().manual_seed(0))
    assert out.shape == (4, 3, 32, 32)
    batch = splits.train.x[:4]
    assert VggLike(VggLikeConfig(augment=False)).train_transform(batch, torch.Generator()) is batch


@pytest.fixture(scope="module")
def shared_tracking(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One MLflow store for the module: creating a store costs seconds, a run a fraction of one."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.mark.parametrize("method_name", METHODS.builtin_names())
def test_every_method_trains_on_vgg_like_or_says_why_not(
    method_name: str, cifar_root: Path, shared_tracking: str
) -> None:
    """A few real steps through the runner on both datasets' readers (tiny data, k = 1/8)."""
    method_cls = METHODS.get(method_name)
    task = VggLike(VggLikeConfig(k=0.125))
    reason = method_cls(method_cls.Config()).not_applicable(task.build_model())
    if reason is not None:
        assert isinstance(reason, str) and reason.strip()
        pytest.skip(reason)
    dataset = "cifar100" if method_name == "sparse_vd" else "cifar10"
    torch.manual_seed(0)
    result = train(
        RunRequest(
            task="vgg_like",
            method=method_name,
            overrides={
                "task.k": 0.125,
                "task.dataset": dataset,
                "train.epochs": 1,
                "train.batch_size": 8,
                "train.val_size": 8,
                "train.eval_batch_size": 64,
            },
            env=Env.resolve(tracking_uri=shared_tracking, data_dir=str(cifar_root)),
            progress=False,
        )
    )
    assert result.status == "FINISHED"
    assert 0.0 <= result.test_metric <= 100.0 and result.summary["weights"] > 0
    assert result.summary["compression"] >= 1.0


@pytest.mark.parametrize("method_name", METHODS.builtin_names())
def test_every_applicable_method_conforms_on_a_narrow_vgg_like(method_name: str) -> None:
    method_cls = METHODS.get(method_name)
    method = method_cls(method_cls.Config())
    task = VggLike(VggLikeConfig(k=0.125))
    if (reason := method.not_applicable(task.build_model())) is not None:
        pytest.skip(reason)
    check_method_conformance(method, task)
