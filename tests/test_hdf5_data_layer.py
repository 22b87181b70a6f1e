"""HDF5Data, after Caffe's test_hdf5data_layer.cpp (TestRead: rows in file
order, across files, wrapping) plus shuffle, resume and bad inputs."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from caffesolve.blob import Blob
from caffesolve.errors import ConfigError, DataError
from caffesolve.layers import create_layer
from caffesolve.layers.base import Layer
from caffesolve.proto import caffe_pb2
from caffesolve.proto.io import parse_prototxt_text


def write_h5(path: Path, first: int, rows: int) -> None:
    """data[i] = (first + i) * ones(2, 3) + [0..5]/10; label[i] = first + i."""
    ids = np.arange(first, first + rows)
    data = ids[:, None, None] + np.arange(6).reshape(2, 3) / 10
    with h5py.File(path, "w") as f:
        f["data"] = data.astype(np.float64)  # Caffe reads double as float
        f["label"] = ids.astype(np.int32)


def setup_files(tmp_path: Path, sizes: tuple[int, ...] = (4, 3)) -> Path:
    names, first = [], 0
    for k, rows in enumerate(sizes):
        write_h5(tmp_path / f"part{k}.h5", first, rows)
        names.append(str(tmp_path / f"part{k}.h5"))
        first += rows
    source = tmp_path / "list.txt"
    source.write_text("\n".join(names) + "\n")
    return source


def make(
    source: Path | str, batch: int, shuffle: bool = False, seed: int = 1701
) -> tuple[Layer, list[Blob]]:
    text = (
        'name: "h5" type: "HDF5Data" top: "data" top: "label" '
        f'hdf5_data_param {{ source: "{source}" batch_size: {batch} '
        f"shuffle: {str(shuffle).lower()} }}"
    )
    param = parse_prototxt_text(text, caffe_pb2.LayerParameter())
    lay = create_layer(param, caffe_pb2.TRAIN, np.random.default_rng(seed))
    top = [Blob(), Blob()]
    lay.setup([], top)
    return lay, top


def labels_of(lay: Layer, top: list[Blob], batches: int) -> list[int]:
    out = []
    for _ in range(batches):
        lay.forward([], top)
        out += [int(v) for v in top[1].data]
        # each row's data matches its label
        ids = top[1].data[:, None, None]
        np.testing.assert_allclose(
            top[0].data, ids + np.arange(6).reshape(2, 3) / 10, rtol=1e-6
        )
    return out


def test_read_in_order_across_files_and_wrap(tmp_path: Path) -> None:
    lay, top = make(setup_files(tmp_path), batch=5)
    assert top[0].shape == (5, 2, 3) and top[1].shape == (5,)
    assert top[0].data.dtype == np.float32
    assert labels_of(lay, top, 3) == [0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4, 5, 6, 0]


def test_shuffle_keeps_files_whole_and_permutes(tmp_path: Path) -> None:
    lay, top = make(setup_files(tmp_path, (4, 3)), batch=7, shuffle=True)
    orders = [labels_of(lay, top, 1) for _ in range(6)]
    for order in orders:
        # one full pass per batch of 7: one file's rows, then the other's
        first, second = order[:4], order[4:]
        if set(first) != {0, 1, 2, 3}:
            first, second = order[:3], order[3:]
        assert sorted(first + second) == list(range(7))
        assert {frozenset(first), frozenset(second)} == {
            frozenset({0, 1, 2, 3}),
            frozenset({4, 5, 6}),
        }
    assert len({tuple(o) for o in orders}) > 1  # reshuffled each pass


def test_shuffle_single_file_reshuffles_each_pass(tmp_path: Path) -> None:
    lay, top = make(setup_files(tmp_path, (6,)), batch=6, shuffle=True)
    orders = [tuple(labels_of(lay, top, 1)) for _ in range(5)]
    assert all(sorted(o) == list(range(6)) for o in orders)
    assert len(set(orders)) > 1


def test_relative_names_from_cwd_or_list_folder(tmp_path: Path) -> None:
    sub = tmp_path / "lists"
    sub.mkdir()
    write_h5(sub / "a.h5", 0, 2)
    (sub / "list.txt").write_text("a.h5\n")
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)  # a.h5 is not in the cwd: found beside the list
        lay, top = make("lists/list.txt", batch=2)
        assert labels_of(lay, top, 1) == [0, 1]
    finally:
        os.chdir(cwd)


def test_resume_is_bit_exact(tmp_path: Path) -> None:
    source = setup_files(tmp_path, (4, 3))
    a, ta = make(source, batch=3, shuffle=True, seed=3)
    labels_of(a, ta, 2)
    state = a.get_state()
    after = labels_of(a, ta, 4)
    b, tb = make(source, batch=3, shuffle=True, seed=77)
    b.set_state(state)
    assert labels_of(b, tb, 4) == after


def test_missing_source_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="Failed to open source file"):
        make(tmp_path / "nope.txt", batch=1)


def test_empty_list(tmp_path: Path) -> None:
    (tmp_path / "l.txt").write_text("\n")
    with pytest.raises(DataError, match="at least 1 HDF5 filename"):
        make(tmp_path / "l.txt", batch=1)


def test_missing_h5_file(tmp_path: Path) -> None:
    (tmp_path / "l.txt").write_text(str(tmp_path / "gone.h5"))
    with pytest.raises(DataError, match="Failed opening HDF5 file"):
        make(tmp_path / "l.txt", batch=1)


def test_missing_dataset(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["data"] = np.zeros((2, 1))
    (tmp_path / "l.txt").write_text(str(tmp_path / "x.h5"))
    with pytest.raises(DataError, match="Failed to find HDF5 dataset label"):
        make(tmp_path / "l.txt", batch=1)


def test_row_count_mismatch(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["data"] = np.zeros((2, 1))
        f["label"] = np.zeros(3)
    (tmp_path / "l.txt").write_text(str(tmp_path / "x.h5"))
    with pytest.raises(DataError, match="same number"):
        make(tmp_path / "l.txt", batch=1)


def test_transform_param_refused(tmp_path: Path) -> None:
    source = setup_files(tmp_path)
    param = parse_prototxt_text(
        'name: "h5" type: "HDF5Data" top: "data" transform_param { scale: 2 } '
        f'hdf5_data_param {{ source: "{source}" batch_size: 1 }}',
        caffe_pb2.LayerParameter(),
    )
    with pytest.raises(ConfigError, match="does not transform data"):
        create_layer(param).setup([], [Blob()])
