"""Reader for LeCun's IDX format (MNIST), gzipped or not."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from sparsebench.errors import DataError

# magic -> (number of dimensions, description)
IDX_MAGIC = {2049: (1, "labels"), 2051: (3, "images")}
GZIP_MAGIC = b"\x1f\x8b"


def read_bytes(path: Path) -> bytes:
    """File contents, decompressed when gzipped; a broken gzip stream is a DataError.

    A file is decompressed when its name ends in ``.gz`` or its first bytes say gzip (a raw IDX
    file always starts with two zero bytes), so a compressed file that lost its suffix still reads.
    """
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz" or raw[:2] == GZIP_MAGIC:
            return gzip.decompress(raw)
        return raw
    # zlib.error (damaged deflate data) is not an OSError, unlike gzip's own header/CRC errors.
    except (OSError, EOFError, zlib.error) as exc:
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
    # Sizes are unsigned in the format; reading them signed would turn a damaged header into a
    # negative count and a confusing message.
    shape = struct.unpack(">" + "I" * ndim, raw[4:header])
    count = int(np.prod(shape, dtype=np.int64))
    if len(raw) != header + count:
        raise DataError(
            f"{path} holds {len(raw) - header} data bytes but its header promises {count}; "
            "the file is truncated or corrupt, delete it and download it again"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)
