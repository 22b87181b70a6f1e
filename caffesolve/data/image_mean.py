"""Caffe's compute_image_mean (tools/compute_image_mean.cpp).

The mean of every Datum of a database, element by element, as Caffe computes
it in float32: the first Datum (decoded natively if encoded) gives the shape;
each Datum's uint8 `data` (or `float_data`) is added to a float sum in key
order, one record after the other; the sum is divided by the count. Written
as a BlobProto with the legacy num=1, channels, height, width fields, as
Caffe writes mean.binaryproto. The per-channel means Caffe logs are the
float32 sum of a channel's means, in order, divided by height * width.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from caffesolve.data import db
from caffesolve.data.image import decode_image, hwc_to_chw
from caffesolve.errors import DataError
from caffesolve.proto import caffe_pb2
from caffesolve.proto.io import atomic_write_bytes

F32 = np.float32
CHUNK = 1000  # records summed per NumPy call


@dataclass
class ImageMean:
    blob: caffe_pb2.BlobProto  # what mean.binaryproto holds
    count: int
    channel_means: list[float]  # float32 values, as Caffe logs them


def _datum_values(value: bytes, source: str, index: int) -> npt.NDArray[np.float32]:
    """One record's values in CHW order as float32 (DecodeDatumNative first)."""
    d = caffe_pb2.Datum.FromString(value)
    if d.encoded:
        img = hwc_to_chw(decode_image(d.data, "unchanged", f"{source}: record {index}"))
        return img.reshape(-1).astype(F32)
    if d.data:
        return np.frombuffer(d.data, np.uint8).astype(F32)
    return np.asarray(d.float_data, F32)


def _datum_shape(value: bytes, source: str) -> tuple[int, int, int]:
    d = caffe_pb2.Datum.FromString(value)
    if d.encoded:
        c, h, w = hwc_to_chw(decode_image(d.data, "unchanged", source)).shape
        return c, h, w
    return d.channels, d.height, d.width


def sequential_sum(
    acc: npt.NDArray[np.float32], rows: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    """acc + rows[0] + rows[1] + ..., each addition rounded to float32 in that
    order (Caffe's running sum), vectorised over the elements."""
    stacked = np.concatenate([acc[None], rows]).astype(F32, copy=False)
    return np.add.accumulate(stacked, axis=0, dtype=F32)[-1]


def compute_image_mean(
    path: str | os.PathLike[str], backend: str = "lmdb"
) -> ImageMean:
    """The mean image of the database at `path` (compute_image_mean)."""
    source = str(path)
    if db.backend_at(path) is None:
        raise DataError(f"{source}: not an LMDB or LevelDB database")
    records = db.values(path, backend)
    first = next(records, None)
    if first is None:
        raise DataError(f"{source}: the database holds no records")
    channels, height, width = _datum_shape(first, source)
    size = channels * height * width
    acc = np.zeros(size, F32)
    count = 0
    stream: Iterator[bytes] = itertools.chain([first], records)
    while chunk := list(itertools.islice(stream, CHUNK)):
        rows = []
        for value in chunk:
            v = _datum_values(value, source, count + len(rows))
            if v.size != size:
                raise DataError(
                    f"{source}: record {count + len(rows)}: Incorrect data field "
                    f"size {v.size} (the first record has {size} = "
                    f"{channels}x{height}x{width})"
                )
            rows.append(v)
        acc = sequential_sum(acc, np.stack(rows))
        count += len(rows)
    mean = acc / F32(count)
    blob = caffe_pb2.BlobProto(num=1, channels=channels, height=height, width=width)
    blob.data.extend(mean.tolist())
    dim = height * width
    channel_means = [
        float(
            np.add.accumulate(mean[c * dim : (c + 1) * dim], dtype=F32)[-1] / F32(dim)
        )
        for c in range(channels)
    ]
    return ImageMean(blob, count, channel_means)


def write_mean(path: str | os.PathLike[str], mean: ImageMean, force: bool) -> None:
    """mean.binaryproto, atomically; an existing file is replaced only with
    `force`."""
    p = Path(path)
    db.refuse_existing(p, force=force)
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(p, mean.blob.SerializeToString())
