"""IDX files (the MNIST format): read, validate, checksum.

An IDX file is a 4-byte big-endian magic number (two zero bytes, a type code,
the number of dimensions), one big-endian uint32 per dimension, then the items.
MNIST images have magic 2051 (0x00000803: uint8, 3 dims: count, rows, cols),
labels 2049 (0x00000801: uint8, 1 dim: count), as convert_mnist_data.cpp checks.
Files may be gzipped (as published) or not; gzip is recognised by its magic
bytes, not by the file name.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from pathlib import Path

import numpy as np
import numpy.typing as npt

from caffesolve.errors import DataError

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
_GZIP_MAGIC = b"\x1f\x8b"


def is_gzip(data: bytes) -> bool:
    """True if `data` starts with gzip's magic bytes."""
    return data[:2] == _GZIP_MAGIC


def read_idx_bytes(path: str | os.PathLike[str]) -> bytes:
    """The uncompressed bytes of an IDX file, gzipped or not.

    A truncated or corrupt gzip stream is a DataError naming the file.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise DataError(f"{p}: cannot read IDX file: {e.strerror or e}") from None
    if not is_gzip(data):
        return data
    try:
        return gzip.decompress(data)
    except (EOFError, OSError, zlib.error) as e:
        raise DataError(
            f"{p}: corrupt or truncated gzip file ({e}); download it again"
        ) from None


def parse_idx(
    data: bytes, source: str, expected_magic: int | None = None
) -> npt.NDArray[np.uint8]:
    """An IDX byte string as a uint8 array of its declared shape.

    Checks the magic number (and `expected_magic` if given), that the header is
    complete, and that the payload holds exactly prod(dims) items: a short file
    is a DataError naming `source` and how many bytes are missing.
    """
    if len(data) < 4:
        raise DataError(f"{source}: short read: {len(data)} bytes, no IDX header")
    magic = int.from_bytes(data[:4], "big")
    if data[:2] != b"\0\0" or data[2] != 0x08 or data[3] == 0:
        raise DataError(
            f"{source}: bad magic number {magic} (0x{magic:08x}): not a uint8 IDX "
            f"file (MNIST images have {IMAGES_MAGIC}, labels {LABELS_MAGIC})"
        )
    if expected_magic is not None and magic != expected_magic:
        kind = "image" if expected_magic == IMAGES_MAGIC else "label"
        raise DataError(
            f"{source}: bad magic number {magic}, expected {expected_magic} "
            f"for an IDX {kind} file"
        )
    ndims = data[3]
    header = 4 + 4 * ndims
    if len(data) < header:
        raise DataError(
            f"{source}: short read: header needs {header} bytes, file has {len(data)}"
        )
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndims)]
    need = int(np.prod(dims, dtype=np.int64))
    have = len(data) - header
    if have < need:
        raise DataError(
            f"{source}: short read: dims {'x'.join(map(str, dims))} need {need} "
            f"bytes of data, file has {have} (truncated; get the file again)"
        )
    if have > need:
        raise DataError(
            f"{source}: {have - need} bytes after the data declared by dims "
            f"{'x'.join(map(str, dims))}: not a valid IDX file"
        )
    return np.frombuffer(data, np.uint8, count=need, offset=header).reshape(dims)


def read_idx(
    path: str | os.PathLike[str], expected_magic: int | None = None
) -> npt.NDArray[np.uint8]:
    """Read and validate an IDX file (gz or not); see parse_idx."""
    return parse_idx(read_idx_bytes(path), str(path), expected_magic)


def read_mnist_pair(
    images_path: str | os.PathLike[str], labels_path: str | os.PathLike[str]
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """Images (N, rows, cols) and labels (N,) of one MNIST split.

    The checks of convert_mnist_data.cpp: image magic 2051, label magic 2049,
    as many labels as images.
    """
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if images.ndim != 3:
        raise DataError(f"{images_path}: expected 3 dims (count, rows, cols)")
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: expected 1 dim (count)")
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{images_path} has {images.shape[0]} images but {labels_path} has "
            f"{labels.shape[0]} labels; they must be from the same split"
        )
    return images, labels


def md5_hex(data: bytes) -> str:
    """MD5 of `data` as hex (integrity check of published files, not security)."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def verify_checksum(
    path: str | os.PathLike[str], gz_md5: str | None, raw_md5: str | None
) -> None:
    """Check a downloaded or supplied file against the published checksums.

    Accepted: the file's MD5 equals the official .gz MD5 (`gz_md5`), or the MD5
    of its uncompressed content equals `raw_md5` (a file gunzipped by the user,
    or recompressed by a distribution, such as Debian's package). Anything else
    is a DataError stating both digests.
    """
    p = Path(path)
    data = p.read_bytes()
    digest = md5_hex(data)
    if gz_md5 is not None and digest == gz_md5:
        return
    if gz_md5 is None and raw_md5 is None:
        return
    if raw_md5 is None:
        raise DataError(
            f"{p}: checksum mismatch: md5 {digest}, expected {gz_md5}; the file is "
            "corrupt or not the official release (--skip-checksum accepts a file "
            "you made yourself)"
        )
    try:
        raw = read_idx_bytes(p) if is_gzip(data) else data
        raw_digest = md5_hex(raw) if raw is not data else digest
    except DataError:
        raw_digest = "unknown: corrupt gzip data"
    if raw_md5 is not None and raw_digest == raw_md5:
        return
    raise DataError(
        f"{p}: checksum mismatch: md5 {digest} (uncompressed {raw_digest}), "
        f"expected {gz_md5} for the official .gz or {raw_md5} uncompressed; "
        "the file is corrupt or not the official release"
    )
