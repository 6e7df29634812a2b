"""Reader for LeCun's IDX format (MNIST), gzipped or not."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from sparsebench.errors import DataError

# magic -> (number of dimensions, description)
IDX_MAGIC = {2049: (1, "labels"), 2051: (3, "images")}


def read_bytes(path: Path) -> bytes:
    """File contents, transparently decompressing ``.gz``; a broken gzip stream is a DataError."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path} is corrupt ({exc}); delete it and download it again") from exc


def read_idx(path: Path, expected_magic: int) -> np.ndarray:
    """Parse an unsigned-byte IDX file, checking its magic number and its length."""
    raw = read_bytes(path)
    if len(raw) < 8:
        raise DataError(f"{path} is truncated ({len(raw)} bytes); delete it and download it again")
    (magic,) = struct.unpack(">i", raw[:4])
    if magic != expected_magic:
        want = IDX_MAGIC[expected_magic][1]
        raise DataError(
            f"{path} has magic number {magic}, expected {expected_magic} for an IDX {want} file; "
            "is it the right file?"
        )
    ndim = IDX_MAGIC[expected_magic][0]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated inside its header; delete it and download it again")
    shape = struct.unpack(">" + "i" * ndim, raw[4:header])
    count = int(np.prod(shape))
    if len(raw) != header + count:
        raise DataError(
            f"{path} holds {len(raw) - header} data bytes but its header promises {count}; "
            "the file is truncated or corrupt, delete it and download it again"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)
