"""The MNIST reader on small IDX files written here, and where the data root comes from."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from sparsebench.cli import main
from sparsebench.data import mnist
from sparsebench.data.idx import read_idx
from sparsebench.data.mnist import FILES, load_mnist
from sparsebench.data.paths import data_root
from sparsebench.errors import DataError
from tests.conftest import write_idx

IMAGES, LABELS = 2051, 2049


def small_arrays(n_train: int = 6, n_test: int = 4) -> dict[str, np.ndarray]:
    """Arrays whose every byte is predictable, so a reader that shuffles or offsets bytes is caught."""
    out = {}
    for prefix, n, start in (("train", n_train, 0), ("t10k", n_test, 100)):
        out[f"{prefix}-images-idx3-ubyte"] = ((np.arange(n * 28 * 28) + start) % 256).reshape(n, 28, 28)
        out[f"{prefix}-labels-idx1-ubyte"] = (np.arange(n) * 3 + start) % 10
    return out


def write_set(root: Path, arrays: dict[str, np.ndarray], compress: bool | dict[str, bool]) -> Path:
    folder = root / "mnist"
    folder.mkdir(parents=True, exist_ok=True)
    for stem, array in arrays.items():
        gz = compress[stem] if isinstance(compress, dict) else compress
        write_idx(folder / stem, array, IMAGES if "images" in stem else LABELS, gz)
    return root


@pytest.mark.parametrize(
    "compress",
    [True, False, {stem: i % 2 == 0 for i, stem in enumerate(FILES)}],
    ids=["gzip", "raw", "mixed"],
)
def test_reads_back_exactly_what_was_written(tmp_path: Path, compress: bool | dict[str, bool]) -> None:
    arrays = small_arrays()
    data = load_mnist(write_set(tmp_path, arrays, compress))
    assert data.train_images.dtype == torch.uint8 and data.train_labels.dtype == torch.int64
    assert data.train_images.shape == (6, 28, 28) and data.test_images.shape == (4, 28, 28)
    np.testing.assert_array_equal(data.train_images.numpy(), arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(data.train_labels.numpy(), arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(data.test_images.numpy(), arrays["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(data.test_labels.numpy(), arrays["t10k-labels-idx1-ubyte"])


def test_gzipped_file_without_suffix_is_still_read(tmp_path: Path) -> None:
    array = np.arange(10, dtype=np.uint8) % 10
    write_idx(tmp_path / "labels", array, LABELS, compress=True)
    (tmp_path / "labels.gz").rename(tmp_path / "labels")
    np.testing.assert_array_equal(read_idx(tmp_path / "labels", LABELS), array)


def labels_bytes(values: list[int]) -> bytes:
    return (LABELS).to_bytes(4, "big") + len(values).to_bytes(4, "big") + bytes(values)


@pytest.mark.parametrize(
    "content, expected_magic, message",
    [
        (b"\x00\x00\x08", LABELS, "truncated (3 bytes)"),
        (
            (IMAGES).to_bytes(4, "big") + (2).to_bytes(4, "big") + (28).to_bytes(4, "big"),
            IMAGES,
            "inside its header",
        ),
        (labels_bytes([1, 2, 3])[:-1], LABELS, "holds 2 data bytes but its header promises 3"),
        (labels_bytes([1, 2, 3]) + b"\x00", LABELS, "holds 4 data bytes but its header promises 3"),
        (labels_bytes([1, 2, 3]), IMAGES, "magic number 2049, expected 2051"),
        # A damaged size field reads as a huge unsigned count, never as a negative one.
        ((LABELS).to_bytes(4, "big") + b"\xff\xff\xff\xfd" + b"\x01", LABELS, "promises 4294967293"),
    ],
    ids=["short", "header", "body-short", "body-long", "magic", "size-field"],
)
def test_malformed_idx_is_a_data_error(
    tmp_path: Path, content: bytes, expected_magic: int, message: str
) -> None:
    for path, data in ((tmp_path / "f", content), (tmp_path / "f.gz", gzip.compress(content))):
        path.write_bytes(data)
        with pytest.raises(DataError, match="download it again|right file") as info:
            read_idx(path, expected_magic)
        assert message in str(info.value) and str(path) in str(info.value)


def corrupt_gzips() -> dict[str, bytes]:
    payload = labels_bytes([i % 10 for i in range(5000)])
    good = gzip.compress(payload)
    flipped_deflate = bytearray(good)
    flipped_deflate[20] ^= 0xFF  # inside the deflate stream: zlib.error
    flipped_crc = bytearray(good)
    flipped_crc[-6] ^= 0xFF  # inside the CRC trailer: gzip.BadGzipFile
    return {
        "not-gzip": b"<html>not found</html>",
        "cut-short": good[: len(good) // 2],
        "bad-deflate": bytes(flipped_deflate),
        "bad-crc": bytes(flipped_crc),
    }


@pytest.mark.parametrize("kind", list(corrupt_gzips()))
def test_corrupt_gzip_is_a_data_error(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(corrupt_gzips()[kind])
    with pytest.raises(DataError, match="is corrupt .*delete it and download it again"):
        read_idx(path, LABELS)


def test_corrupt_file_inside_the_dataset_stops_loading(tmp_path: Path) -> None:
    root = write_set(tmp_path, small_arrays(), compress=True)
    (root / "mnist" / "t10k-images-idx3-ubyte.gz").write_bytes(corrupt_gzips()["bad-deflate"])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz is corrupt"):
        load_mnist(root)


def test_images_and_labels_must_agree(tmp_path: Path) -> None:
    arrays = small_arrays()
    arrays["train-labels-idx1-ubyte"] = arrays["train-labels-idx1-ubyte"][:5]
    with pytest.raises(DataError, match="train has 6 images but 5 labels"):
        load_mnist(write_set(tmp_path, arrays, compress=False))


def test_images_must_be_28_by_28(tmp_path: Path) -> None:
    arrays = small_arrays()
    arrays["t10k-images-idx3-ubyte"] = np.zeros((4, 32, 32), dtype=np.uint8)
    with pytest.raises(DataError, match="test images are 32x32, expected 28x28"):
        load_mnist(write_set(tmp_path, arrays, compress=False))


def test_labels_must_be_digits(tmp_path: Path) -> None:
    arrays = small_arrays()
    arrays["train-labels-idx1-ubyte"] = np.array([0, 1, 2, 3, 4, 12])
    with pytest.raises(DataError, match="labels go up to 12, expected 0-9"):
        load_mnist(write_set(tmp_path, arrays, compress=False))


def assert_names_every_way_to_provide(message: str) -> None:
    assert "\n" not in message
    for stem in FILES:
        assert stem in message
    assert "--data-dir" in message and "SPARSEBENCH_DATA" in message
    assert "sparsebench data download mnist" in message


def test_missing_dataset_names_files_and_both_remedies(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_mnist(tmp_path)
    message = str(info.value)
    assert_names_every_way_to_provide(message)
    assert str(tmp_path / "mnist") in message and "(missing" not in message


def test_partly_missing_dataset_says_which_file(tmp_path: Path) -> None:
    root = write_set(tmp_path, small_arrays(), compress=True)
    (root / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="missing t10k-labels-idx1-ubyte;") as info:
        load_mnist(root)
    assert_names_every_way_to_provide(str(info.value))


def test_uncompressed_file_wins_over_gzip(tmp_path: Path) -> None:
    # Documented order of find_file: a user who unpacked the files by hand gets what they unpacked.
    folder = write_set(tmp_path, small_arrays(), compress=True) / "mnist"
    write_idx(folder / "train-labels-idx1-ubyte", np.zeros(6, dtype=np.uint8), LABELS, compress=False)
    assert mnist.find_file(tmp_path, "train-labels-idx1-ubyte") == folder / "train-labels-idx1-ubyte"
    assert load_mnist(tmp_path).train_labels.tolist() == [0] * 6


class TestDataRoot:
    """--data-dir, then $SPARSEBENCH_DATA, then the per-user cache folder."""

    @pytest.fixture(autouse=True)
    def _env(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
        monkeypatch.delenv("SPARSEBENCH_DATA", raising=False)

    def test_cli_value_beats_environment(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("SPARSEBENCH_DATA", str(tmp_path / "env"))
        assert data_root(tmp_path / "cli") == tmp_path / "cli"
        assert data_root(None) == tmp_path / "env"

    def test_empty_environment_variable_is_ignored(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("SPARSEBENCH_DATA", "")
        assert data_root(None) == tmp_path / "home" / ".cache" / "sparsebench" / "data"

    def test_cache_folder_follows_xdg(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        assert data_root(None) == tmp_path / "home" / ".cache" / "sparsebench" / "data"
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        assert data_root(None) == tmp_path / "xdg" / "sparsebench" / "data"

    def test_user_folder_is_expanded(self, tmp_path: Path) -> None:
        assert data_root("~/datasets") == tmp_path / "home" / "datasets"

    def test_data_where_prints_the_same_order(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        monkeypatch.setenv("SPARSEBENCH_DATA", str(tmp_path / "env"))
        assert main(["data", "where"]) == 0
        assert main(["data", "where", "--data-dir", str(tmp_path / "cli")]) == 0
        monkeypatch.delenv("SPARSEBENCH_DATA")
        assert main(["data", "where"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines == [
            str(tmp_path / "env"),
            str(tmp_path / "cli"),
            str(tmp_path / "home" / ".cache" / "sparsebench" / "data"),
        ]
