"""HDF5Output, after Caffe's test_hdf5_output_layer.cpp (TestForward), plus
appending batches and the round trip through HDF5Data."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import layer_from

from caffesolve.blob import Blob
from caffesolve.errors import ConfigError, ShapeError
from caffesolve.layers import create_layer
from caffesolve.layers.base import Layer
from caffesolve.proto import caffe_pb2
from caffesolve.proto.io import parse_prototxt_text


def output_layer(path: Path) -> Layer:
    return layer_from(
        f'name: "out" type: "HDF5Output" bottom: "data" bottom: "label" '
        f'hdf5_output_param {{ file_name: "{path}" }}'
    )


def blobs(data: np.ndarray, label: np.ndarray) -> list[Blob]:
    b = [Blob(name="data"), Blob(name="label")]
    b[0].reshape(data.shape)
    b[0].data[...] = data
    b[1].reshape(label.shape)
    b[1].data[...] = label
    return b


def test_forward(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = rng.random((2, 3, 4, 5)).astype(np.float32)
    label = np.array([3, 7], np.float32)
    path = tmp_path / "out.h5"
    path.write_bytes(b"old")  # H5F_ACC_TRUNC: replaced
    lay = output_layer(path)
    bottom = blobs(data, label)
    lay.setup(bottom, [])
    lay.forward(bottom, [])
    lay.close()  # type: ignore[attr-defined]
    with h5py.File(path, "r") as f:
        assert sorted(f) == ["data", "label"]
        assert f["data"].dtype == np.float32
        np.testing.assert_array_equal(f["data"][()], data)
        np.testing.assert_array_equal(f["label"][()], label.reshape(2, 1, 1, 1))


def test_batches_append_and_hdf5data_reads_them_back(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    path = tmp_path / "out.h5"
    lay = output_layer(path)
    batches = [(rng.random((3, 2)).astype(np.float32), rng.random(3).astype(np.float32))
               for _ in range(3)]  # fmt: skip
    lay.setup(blobs(*batches[0]), [])
    for data, label in batches:
        lay.forward(blobs(data, label), [])
    lay.close()  # type: ignore[attr-defined]
    (tmp_path / "list.txt").write_text(str(path))
    param = parse_prototxt_text(
        f'name: "in" type: "HDF5Data" top: "data" top: "label" hdf5_data_param {{ '
        f'source: "{tmp_path / "list.txt"}" batch_size: 9 }}',
        caffe_pb2.LayerParameter(),
    )
    reader = create_layer(param)
    top = [Blob(), Blob()]
    reader.setup([], top)
    reader.forward([], top)
    np.testing.assert_array_equal(
        top[0].data.reshape(9, 2), np.concatenate([d for d, _ in batches])
    )
    np.testing.assert_array_equal(
        top[1].data.reshape(9), np.concatenate([lab for _, lab in batches])
    )


def test_bad_input(tmp_path: Path) -> None:
    lay = output_layer(tmp_path / "o.h5")
    b = blobs(np.zeros((2, 3), np.float32), np.zeros(3, np.float32))
    lay.setup(b, [])
    with pytest.raises(ShapeError, match="same batch size"):
        lay.forward(b, [])
    with pytest.raises(ShapeError, match="at most 4 axes"):
        lay.forward(blobs(np.zeros((1, 1, 1, 1, 2), np.float32), np.zeros(1)), [])
    lay = output_layer(tmp_path / "missing_dir" / "o.h5")
    with pytest.raises(Exception, match="Failed to open HDF5 file"):
        lay.setup(b, [])
    param = parse_prototxt_text(
        'name: "o" type: "HDF5Output" bottom: "a" bottom: "b"',
        caffe_pb2.LayerParameter(),
    )
    with pytest.raises(ConfigError, match="file_name is required"):
        create_layer(param).setup(b, [])
