"""compute_image_mean (`caffesolve data mean`): the float32 running sum in key
order, the BlobProto bytes Caffe writes, encoded and float Datums, LevelDB."""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import lmdb
import numpy as np
import plyvel
import pytest
from conftest import varint

from caffesolve.data.image_mean import compute_image_mean, sequential_sum, write_mean
from caffesolve.data.lmdb_source import datum_bytes
from caffesolve.errors import DataError
from caffesolve.proto import caffe_pb2

F32 = np.float32


def write(path: Path, values: list[bytes]) -> Path:
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i, v in enumerate(values):
            txn.put(f"{i:05d}".encode(), v)
    env.close()
    return path


def caffe_mean(images: np.ndarray) -> np.ndarray:
    """compute_image_mean's loop: sum_blob.data(i) + (uint8)data[i], a float,
    record by record; then / count."""
    acc = np.zeros(images[0].size, F32)
    for im in images:
        for i, v in enumerate(im.reshape(-1)):
            acc[i] = F32(acc[i] + F32(v))
    return acc / F32(len(images))


def test_mean_blob_bytes_and_channel_means(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 3, 4, 5), dtype=np.uint8)
    db = write(
        tmp_path / "db", [datum_bytes(im, i % 10) for i, im in enumerate(images)]
    )
    mean = compute_image_mean(db)
    expected = caffe_mean(images)
    assert mean.count == 7
    # BlobProto as Caffe serializes it: num (1), channels (2), height (3),
    # width (4), then data (5, packed floats)
    payload = struct.pack(f"<{expected.size}f", *expected)
    assert mean.blob.SerializeToString() == (
        b"\x08\x01\x10\x03\x18\x04\x20\x05\x2a" + varint(len(payload)) + payload
    )
    for c in range(3):  # float sum of the channel's means, / (h * w)
        s = F32(0)
        for v in expected[c * 20 : (c + 1) * 20]:
            s = F32(s + v)
        assert mean.channel_means[c] == float(s / F32(20))
    write_mean(tmp_path / "mean.binaryproto", mean, force=False)
    with pytest.raises(DataError, match="already exists; pass --force"):
        write_mean(tmp_path / "mean.binaryproto", mean, force=False)
    blob = caffe_pb2.BlobProto.FromString((tmp_path / "mean.binaryproto").read_bytes())
    np.testing.assert_array_equal(np.asarray(blob.data, F32), expected)


def test_sequential_sum_rounds_each_addition() -> None:
    # past 2^24 a float32 sum of integers rounds: the order of additions counts
    acc = np.full(4, 2**24, F32)
    rows = np.array([[1, 1, 3, 255]] * 5, F32)
    expected = acc.copy()
    for r in rows:
        expected = (expected + r).astype(F32)
    np.testing.assert_array_equal(sequential_sum(acc, rows), expected)
    assert sequential_sum(acc, rows)[0] == 2**24  # each +1 is lost
    assert rows.sum(axis=0, dtype=np.float64)[0] + 2**24 != 2**24


def test_encoded_and_float_datums(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    bgr = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    ok, png = cv2.imencode(".png", bgr)
    d = caffe_pb2.Datum(data=png.tobytes(), encoded=True, label=1)
    db = write(tmp_path / "enc", [d.SerializeToString()] * 3)
    mean = compute_image_mean(db)
    assert (mean.blob.channels, mean.blob.height, mean.blob.width) == (3, 6, 7)
    np.testing.assert_array_equal(
        np.asarray(mean.blob.data, F32), bgr.transpose(2, 0, 1).reshape(-1).astype(F32)
    )
    floats = rng.random((2, 1, 2, 2)).astype(F32)
    datums = [
        caffe_pb2.Datum(channels=1, height=2, width=2, float_data=f.reshape(-1))
        for f in floats
    ]
    mean = compute_image_mean(
        write(tmp_path / "f", [x.SerializeToString() for x in datums])
    )
    np.testing.assert_array_equal(
        np.asarray(mean.blob.data, F32), ((floats[0] + floats[1]) / F32(2)).reshape(-1)
    )


def test_leveldb_and_bad_input(tmp_path: Path) -> None:
    images = np.arange(2 * 1 * 2 * 2, dtype=np.uint8).reshape(2, 1, 2, 2)
    ldb = plyvel.DB(str(tmp_path / "ldb"), create_if_missing=True)
    for i, im in enumerate(images):
        ldb.put(f"{i:05d}".encode(), datum_bytes(im, 0))
    ldb.close()
    mean = compute_image_mean(tmp_path / "ldb", "leveldb")
    assert list(mean.blob.data) == [2, 3, 4, 5]
    bad = write(
        tmp_path / "bad", [datum_bytes(images[0], 0), datum_bytes(images[0, :, :1], 0)]
    )
    with pytest.raises(DataError, match="bad: record 1: Incorrect data field size 2"):
        compute_image_mean(bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not an LMDB or LevelDB"):
        compute_image_mean(tmp_path / "empty")
