"""CIFAR-10 and CIFAR-100 from the python pickle batches (Krizhevsky 2009), as uint8 tensors.

The standard archives unpack to:

- ``cifar-10-batches-py/``: ``data_batch_1`` ... ``data_batch_5`` (10,000 images each) and
  ``test_batch``, labels under ``labels``;
- ``cifar-100-python/``: ``train`` (50,000) and ``test`` (10,000), with ``fine_labels`` (100
  classes) and ``coarse_labels`` (20 superclasses).

Each file is a pickled dict whose ``data`` is a uint8 array (N, 3072): the 1,024 red values of a
32x32 image in row-major order, then green, then blue. CIFAR-100 is read with its *fine* labels:
ars' loader read the coarse ones and fed 20 classes to a 100-way softmax (methods.md section 2.10,
item 4), which this reader must never repeat.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparsebench.errors import DataError, UnknownNameError

MIRROR_ENV = "SPARSEBENCH_CIFAR_MIRROR"
"""A folder URL serving the two archives under their standard names, used instead of Toronto's."""

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/"


@dataclass(frozen=True)
class CifarSpec:
    """Where one CIFAR variant lives and how to check it."""

    subdir: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    num_classes: int
    archive: str
    archive_md5: str
    """md5 of the archive as published (the same values torchvision checks)."""

    @property
    def files(self) -> tuple[str, ...]:
        return self.train_files + self.test_files


SPECS = {
    "cifar10": CifarSpec(
        subdir="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        label_key="labels",
        num_classes=10,
        archive="cifar-10-python.tar.gz",
        archive_md5="c58f30108f718f92721af3b95e74349a",
    ),
    "cifar100": CifarSpec(
        subdir="cifar-100-python",
        train_files=("train",),
        test_files=("test",),
        label_key="fine_labels",
        num_classes=100,
        archive="cifar-100-python.tar.gz",
        archive_md5="eb9058c3a382ffc7106e4002c42a8d85",
    ),
}

IMAGE_SHAPE = (3, 32, 32)


@dataclass
class CifarArrays:
    train_images: torch.Tensor
    """(N, 3, 32, 32) uint8."""
    train_labels: torch.Tensor
    """(N,) int64."""
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int


def spec_of(dataset: str) -> CifarSpec:
    if dataset not in SPECS:
        raise UnknownNameError(f"unknown CIFAR variant {dataset!r}; choose one of {', '.join(SPECS)}")
    return SPECS[dataset]


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and nothing else, so a dataset file can never run code while it is read."""

    ALLOWED = {
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        # The published files were pickled by Python 2 with numpy 1, whose module was numpy.core.
        if module.startswith("numpy.core"):
            module = "numpy._core" + module[len("numpy.core") :]
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset file")
        return super().find_class(module, name)


def read_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 3, 32, 32) uint8, labels (N,) int64) of one pickle batch, checked for shape and range."""
    try:
        with path.open("rb") as fh:
            batch = _ArrayUnpickler(fh, encoding="bytes").load()
    except (OSError, EOFError, ValueError, TypeError, pickle.UnpicklingError, AttributeError) as exc:
        raise DataError(f"{path} is corrupt ({exc}); delete it and download CIFAR again") from exc
    if not isinstance(batch, dict):
        raise DataError(
            f"{path} holds a {type(batch).__name__}, not a CIFAR batch dict; is it the right file?"
        )
    # Python 2 pickles read with encoding="bytes" have bytes keys; accept str keys from re-pickled copies too.
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or label_key not in batch:
        raise DataError(
            f"{path} has keys {sorted(map(str, batch))} but needs 'data' and '{label_key}'; "
            "is it a batch of the other CIFAR variant?"
        )
    data = np.asarray(batch["data"])
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != int(np.prod(IMAGE_SHAPE)):
        raise DataError(f"{path}: 'data' is {data.dtype} {data.shape}, expected uint8 (N, 3072)")
    if labels.shape != (len(data),):
        raise DataError(f"{path} has {len(data)} images but {labels.size} labels; the file is corrupt")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"{path} has labels in [{labels.min()}, {labels.max()}], outside 0..{num_classes - 1}; "
            "is it the right CIFAR variant?"
        )
    return data.reshape(-1, *IMAGE_SHAPE), labels


def missing_message(root: Path, dataset: str) -> str:
    spec = spec_of(dataset)
    return (
        f"{dataset} not found in {root / spec.subdir} (expected {', '.join(spec.files)} from the python "
        f"version {spec.archive}); unpack it under a folder and point --data-dir or SPARSEBENCH_DATA "
        f"at that folder, or run `sparsebench data download {dataset} --data-dir {root}`"
    )


def load_cifar(root: Path, dataset: str) -> CifarArrays:
    """Read ``dataset`` ("cifar10" or "cifar100") from its standard folder under ``root``."""
    spec = spec_of(dataset)
    folder = root / spec.subdir
    if any(not (folder / name).is_file() for name in spec.files):
        raise DataError(missing_message(root, dataset))

    def read(names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [read_batch(folder / name, spec.label_key, spec.num_classes) for name in names]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        return torch.from_numpy(images), torch.from_numpy(labels)

    train_x, train_y = read(spec.train_files)
    test_x, test_y = read(spec.test_files)
    return CifarArrays(train_x, train_y, test_x, test_y, spec.num_classes)


def _fetch_to(url: str, target: Path, timeout: float = 60.0) -> str:
    """Stream ``url`` into ``target`` and return its md5, without holding the archive in memory."""
    digest = hashlib.md5()
    with urllib.request.urlopen(url, timeout=timeout) as response, target.open("wb") as out:
        while chunk := response.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def _extract(archive: Path, root: Path, spec: CifarSpec) -> None:
    """Unpack only the expected batch files, so a tampered archive cannot write elsewhere."""
    wanted = {f"{spec.subdir}/{name}" for name in spec.files}
    with tarfile.open(archive, "r:gz") as tar:
        members = [m for m in tar.getmembers() if m.name in wanted and m.isfile()]
        missing = wanted - {m.name for m in members}
        if missing:
            raise DataError(
                f"{archive.name} lacks {', '.join(sorted(missing))}; it is not the CIFAR python version"
            )
        (root / spec.subdir).mkdir(parents=True, exist_ok=True)
        for member in members:
            source = tar.extractfile(member)
            if source is None:
                raise DataError(f"{archive.name}: cannot read {member.name}; delete it and download again")
            target = root / member.name
            part = target.with_name(target.name + ".part")
            with source, part.open("wb") as out:
                shutil.copyfileobj(source, out)
            part.replace(target)


def download_cifar(root: Path, dataset: str) -> list[Path]:
    """Fetch and unpack the python version of ``dataset`` under ``root``, checking the archive's md5.

    Files already present are kept. A checksum mismatch is an error and nothing is unpacked, so a
    bad mirror can never leave files that later look valid.
    """
    spec = spec_of(dataset)
    folder = root / spec.subdir
    paths = [folder / name for name in spec.files]
    if all(p.is_file() for p in paths):
        return paths
    base = os.environ.get(MIRROR_ENV) or OFFICIAL_URL
    url = base.rstrip("/") + "/" + spec.archive
    root.mkdir(parents=True, exist_ok=True)
    archive = root / (spec.archive + ".part")
    try:
        try:
            checksum = _fetch_to(url, archive)
        except (OSError, ValueError) as exc:
            raise DataError(
                f"could not download {url} ({exc}); set {MIRROR_ENV} to a mirror, or unpack "
                f"{spec.archive} into {root} by hand"
            ) from exc
        if checksum != spec.archive_md5:
            raise DataError(
                f"{url} has md5 {checksum} (expected {spec.archive_md5}); the mirror serves a different "
                f"file, set {MIRROR_ENV} to another mirror"
            )
        _extract(archive, root, spec)
    finally:
        archive.unlink(missing_ok=True)
    return paths


def download_cifar10(root: Path) -> list[Path]:
    return download_cifar(root, "cifar10")


def download_cifar100(root: Path) -> list[Path]:
    return download_cifar(root, "cifar100")


DOWNLOADERS = {"cifar10": download_cifar10, "cifar100": download_cifar100}
"""Entries for ``sparsebench.data.download.DOWNLOADERS``."""
