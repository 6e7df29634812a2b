"""Download dataset files from mirrors and verify their uncompressed md5 before keeping them."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import urllib.error
import urllib.request
import zlib
from pathlib import Path

from sparsebench.data import cifar, mnist
from sparsebench.data.idx import read_bytes
from sparsebench.errors import DataError, UnknownNameError

MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
MIRROR_ENV = "SPARSEBENCH_MNIST_MIRROR"

# Everything a mirror can do wrong short of serving a valid gzip of the wrong file: refuse the
# connection, answer 404, hang up mid-body, serve HTML, serve damaged deflate data, or be a
# malformed URL (ValueError from urllib).
FETCH_ERRORS = (OSError, EOFError, zlib.error, http.client.HTTPException, ValueError)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def fetch(url: str, timeout: float = 30.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def _verified(path: Path, size: int, checksum: str) -> bool:
    """Whether a file already on disk holds the expected data; a corrupt one just needs replacing."""
    try:
        data = read_bytes(path)
    except DataError:
        return False
    return len(data) == size and md5(data) == checksum


def _write_atomically(target: Path, data: bytes) -> None:
    """Write via a temporary name so an interrupted download never leaves a file that looks complete."""
    tmp = target.with_name(target.name + ".part")
    try:
        tmp.write_bytes(data)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)


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
        if existing is not None and _verified(existing, size, checksum):
            written.append(existing)
            continue
        errors = []
        for mirror in mirrors:
            url = mirror.rstrip("/") + f"/{stem}.gz"
            try:
                compressed = fetch(url)
                data = gzip.decompress(compressed)
            except FETCH_ERRORS as exc:
                errors.append(f"{url}: {exc}")
                continue
            if len(data) != size or md5(data) != checksum:
                raise DataError(
                    f"{url} has {len(data)} bytes and md5 {md5(data)} (expected {size} and {checksum}); "
                    f"the mirror serves a different file, set {MIRROR_ENV} to another mirror"
                )
            _write_atomically(target, data=compressed)
            # The reader prefers an uncompressed file over the .gz; a stale one must not shadow the download.
            if existing is not None and existing != target:
                existing.unlink()
            written.append(target)
            break
        else:
            raise DataError(
                f"could not download {stem}.gz from any mirror ({'; '.join(errors)}); set {MIRROR_ENV} "
                f"to a reachable mirror or copy the MNIST files into {target_dir} by hand"
            )
    return written


# Each reader that can fetch its own files contributes its entries (CIFAR: one archive per dataset).
DOWNLOADERS = {"mnist": download_mnist, **cifar.DOWNLOADERS}


def download(dataset: str, root: Path) -> list[Path]:
    if dataset not in DOWNLOADERS:
        raise UnknownNameError(f"no downloader for {dataset!r}; available: {', '.join(DOWNLOADERS)}")
    return DOWNLOADERS[dataset](root)
