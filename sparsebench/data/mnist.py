"""MNIST from the four standard IDX files, as uint8 tensors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from sparsebench.data.idx import read_idx
from sparsebench.errors import DataError

SUBDIR = "mnist"
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10

# Uncompressed sizes and md5s of LeCun's files (see ../shared/data/README.md).
FILES = {
    "train-images-idx3-ubyte": (47_040_016, "6bbc9ace898e44ae57da46a324031adb"),
    "train-labels-idx1-ubyte": (60_008, "a25bea736e30d166cdddb491f175f624"),
    "t10k-images-idx3-ubyte": (7_840_016, "2646ac647ad5339dbf082846283269ea"),
    "t10k-labels-idx1-ubyte": (10_008, "27ae3e4e09519cfbb04c329615203637"),
}


@dataclass
class MnistArrays:
    train_images: torch.Tensor  # (N, 28, 28) uint8
    train_labels: torch.Tensor  # (N,) int64
    test_images: torch.Tensor
    test_labels: torch.Tensor


def find_file(root: Path, stem: str) -> Path | None:
    for candidate in (root / SUBDIR / stem, root / SUBDIR / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def missing_message(root: Path, missing: list[str] | None = None) -> str:
    """One line naming the files looked for and both ways to provide them."""
    names = ", ".join(f"{stem}[.gz]" for stem in FILES)
    absent = f"missing {', '.join(missing)}; " if missing and len(missing) < len(FILES) else ""
    return (
        f"MNIST not found in {root / SUBDIR} ({absent}expected {names}); put the files there, point "
        f"--data-dir or SPARSEBENCH_DATA at a folder with a mnist/ subfolder, "
        f"or run `sparsebench data download mnist --data-dir {root}`"
    )


def load_mnist(root: Path) -> MnistArrays:
    """Read MNIST from ``root/mnist``; any missing file is reported with both ways to provide it."""
    paths = {stem: find_file(root, stem) for stem in FILES}
    missing = [stem for stem, path in paths.items() if path is None]
    if missing:
        raise DataError(missing_message(root, missing))

    def images(stem: str) -> torch.Tensor:
        return torch.from_numpy(read_idx(paths[stem], 2051).copy())

    def labels(stem: str) -> torch.Tensor:
        return torch.from_numpy(read_idx(paths[stem], 2049).astype("int64"))

    arrays = MnistArrays(
        images("train-images-idx3-ubyte"),
        labels("train-labels-idx1-ubyte"),
        images("t10k-images-idx3-ubyte"),
        labels("t10k-labels-idx1-ubyte"),
    )
    for split, (x, y) in {
        "train": (arrays.train_images, arrays.train_labels),
        "test": (arrays.test_images, arrays.test_labels),
    }.items():
        if len(x) != len(y):
            raise DataError(f"MNIST {split} has {len(x)} images but {len(y)} labels; the files do not match")
        # Caught here, a wrong file is one clear line instead of an indexing error deep in training.
        if tuple(x.shape[1:]) != IMAGE_SHAPE:
            raise DataError(
                f"MNIST {split} images are {'x'.join(map(str, x.shape[1:]))}, expected 28x28; "
                f"is {root / SUBDIR} really MNIST?"
            )
        if len(y) and int(y.max()) >= NUM_CLASSES:
            raise DataError(
                f"MNIST {split} labels go up to {int(y.max())}, expected 0-9; the labels file is corrupt"
            )
    return arrays
