"""Download dataset files from mirrors and verify their uncompressed md5 before keeping them."""

from __future__ import annotations

import gzip
import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from sparsebench.data import mnist
from sparsebench.errors import DataError, UnknownNameError

MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
MIRROR_ENV = "SPARSEBENCH_MNIST_MIRROR"


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def fetch(url: str, timeout: float = 30.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def download_mnist(root: Path, mirrors: tuple[str, ...] | None = None) -> list[Path]:
    """Fetch the four MNIST files into ``root/mnist`` (gzipped), verifying each one.

    A file already present with the right checksum is kept. A checksum mismatch is an error and
    nothing is written, so a bad mirror can never leave a file that later looks valid.
    """
    if mirrors is None:
        mirrors = (os.environ[MIRROR_ENV],) if os.environ.get(MIRROR_ENV) else MNIST_MIRRORS
    target_dir = root / mnist.SUBDIR
    target_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, (size, checksum) in mnist.FILES.items():
        target = target_dir / f"{stem}.gz"
        existing = mnist.find_file(root, stem)
        if existing is not None:
            from sparsebench.data.idx import read_bytes

            if md5(read_bytes(existing)) == checksum:
                written.append(existing)
                continue
        errors = []
        for mirror in mirrors:
            url = mirror.rstrip("/") + f"/{stem}.gz"
            try:
                compressed = fetch(url)
                data = gzip.decompress(compressed)
            except (urllib.error.URLError, OSError, EOFError) as exc:
                errors.append(f"{url}: {exc}")
                continue
            if len(data) != size or md5(data) != checksum:
                raise DataError(
                    f"{url} has md5 {md5(data)} (expected {checksum}); the mirror serves a different "
                    f"file, set {MIRROR_ENV} to another mirror"
                )
            tmp = target.with_suffix(".part")
            tmp.write_bytes(compressed)
            tmp.replace(target)
            written.append(target)
            break
        else:
            raise DataError(
                f"could not download {stem}.gz from any mirror ({'; '.join(errors)}); "
                f"copy the MNIST files into {target_dir} by hand"
            )
    return written


DOWNLOADERS = {"mnist": download_mnist}


def download(dataset: str, root: Path) -> list[Path]:
    if dataset not in DOWNLOADERS:
        raise UnknownNameError(
            f"no downloader for {dataset!r}; available: {', '.join(DOWNLOADERS)}"
        )
    return DOWNLOADERS[dataset](root)
