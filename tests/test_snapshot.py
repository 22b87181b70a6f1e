"""Snapshots: names, binary and HDF5 layouts, atomic writes, resume, finetune."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from solver_helpers import (
    FIXED,
    make_data,
    make_solver,
    solver_param,
)

from caffesolve import snapshot as snap
from caffesolve.errors import ConfigError, SnapshotError
from caffesolve.proto import caffe_pb2
from caffesolve.proto.io import read_binaryproto

DROPOUT_NET = """
name: "DropoutNet"
layer { name: "data" type: "TestFixedData" top: "data" top: "targets" }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
  inner_product_param { num_output: 5
    weight_filler { type: "gaussian" std: 0.5 }
    bias_filler { type: "constant" value: 0.1 } } }
layer { name: "drop" type: "Dropout" bottom: "ip1" top: "ip1"
  dropout_param { dropout_ratio: 0.3 } }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param { num_output: 1
    weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip2" bottom: "targets" top: "loss" }
"""


@pytest.fixture(autouse=True)
def _quiet_and_data(quiet_log: None) -> None:
    FIXED["data"] = make_data(batches=5)


def generic_param(prefix: Path, **fields: object) -> caffe_pb2.SolverParameter:
    """DROPOUT_NET as net_param (train and one test net), SGD with momentum."""
    param = solver_param("", **{"type": "SGD", "momentum": 0.9, **fields})
    param.ClearField("train_net_param")
    from google.protobuf import text_format

    text_format.Parse(DROPOUT_NET, param.net_param)
    param.snapshot_prefix = str(prefix)
    return param


def weights(solver) -> list[np.ndarray]:
    return [p.data.copy() for p in solver.net.learnable_params]


def test_snapshot_names() -> None:
    assert snap.model_filename("a/lenet", 500) == "a/lenet_iter_500.caffemodel"
    assert snap.state_filename("a/lenet", 500) == "a/lenet_iter_500.solverstate"
    assert snap.model_filename("x", 1, snap.HDF5) == "x_iter_1.caffemodel.h5"
    assert snap.state_filename("x", 1, snap.HDF5) == "x_iter_1.solverstate.h5"


@pytest.mark.parametrize("fmt", ["BINARYPROTO", "HDF5"])
def test_resume_is_bit_identical(tmp_path: Path, fmt: str) -> None:
    """N iterations, snapshot, resume for N more == 2N straight (Dropout's
    RNG and the data cursor included)."""
    n = 6
    kw = {"test_iter": [2], "test_interval": 3, "snapshot_format": fmt}
    straight = make_solver(generic_param(tmp_path / "straight", max_iter=2 * n, **kw))
    straight.solve()

    first = make_solver(
        generic_param(tmp_path / "run", max_iter=n, snapshot_after_train=True, **kw)
    )
    first.solve()
    ext = ".solverstate.h5" if fmt == "HDF5" else ".solverstate"
    state = tmp_path / f"run_iter_{n}{ext}"
    assert state.exists()

    resumed = make_solver(generic_param(tmp_path / "run", max_iter=2 * n, **kw))
    resumed.solve(str(state))
    assert resumed.iter == 2 * n
    for a, b in zip(weights(straight), weights(resumed)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(straight.history, resumed.history):
        np.testing.assert_array_equal(a.data, b.data)
    # Without the resume blob (as from Caffe) the data cursor and the RNG
    # restart, so the run is not identical: the blob is what makes it exact.
    if fmt == "BINARYPROTO":
        bare = caffe_pb2.SolverState.FromString(state.read_bytes())
        bare.ClearField("caffesolve_resume")
        state.write_bytes(bare.SerializeToString())
        plain = make_solver(generic_param(tmp_path / "run", max_iter=2 * n, **kw))
        plain.solve(str(state))
        assert not np.array_equal(weights(plain)[0], weights(straight)[0])


def test_solverstate_contents(tmp_path: Path) -> None:
    param = generic_param(tmp_path / "m", max_iter=3, snapshot=3)
    solver = make_solver(param)
    solver.solve()
    state = read_binaryproto(tmp_path / "m_iter_3.solverstate", caffe_pb2.SolverState())
    assert state.iter == 3
    assert state.learned_net == str(tmp_path / "m_iter_3.caffemodel")
    assert len(state.history) == 4  # ip1 W, b, ip2 W, b
    assert list(state.history[0].shape.dim) == [5, 3]
    np.testing.assert_array_equal(
        np.asarray(state.history[0].data, np.float32).reshape(5, 3),
        solver.history[0].data,
    )
    resume = json.loads(state.caffesolve_resume)
    assert resume["train_net"] == {"data": {"cursor": 3}}
    assert resume["rng"]["bit_generator"] == "PCG64"
    model = read_binaryproto(tmp_path / "m_iter_3.caffemodel", caffe_pb2.NetParameter())
    ip1 = [lp for lp in model.layer if lp.name == "ip1"][0]
    np.testing.assert_array_equal(
        np.asarray(ip1.blobs[0].data, np.float32).reshape(5, 3),
        solver.net.learnable_params[0].data,
    )


def test_resume_from_caffe_state_without_resume_blob(tmp_path: Path) -> None:
    """A .solverstate as Caffe writes it (no caffesolve_resume) restores iter,
    current_step, history and the learned net."""
    first = make_solver(generic_param(tmp_path / "c", max_iter=4, snapshot=4))
    first.solve()
    path = tmp_path / "c_iter_4.solverstate"
    state = read_binaryproto(path, caffe_pb2.SolverState())
    state.ClearField("caffesolve_resume")
    state.current_step = 2
    caffe_state = tmp_path / "caffe.solverstate"
    caffe_state.write_bytes(state.SerializeToString())

    resumed = make_solver(generic_param(tmp_path / "c", max_iter=4))
    resumed.restore(str(caffe_state))
    assert resumed.iter == 4 and resumed.current_step == 2
    for a, b in zip(weights(first), weights(resumed)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(first.history, resumed.history):
        np.testing.assert_array_equal(a.data, b.data)


def test_learned_net_found_beside_moved_state(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    first = make_solver(generic_param(tmp_path / "a" / "m", max_iter=2, snapshot=2))
    first.solve()
    (tmp_path / "a").rename(tmp_path / "b")
    resumed = make_solver(generic_param(tmp_path / "b" / "m", max_iter=2))
    resumed.restore(str(tmp_path / "b" / "m_iter_2.solverstate"))
    for a, b in zip(weights(first), weights(resumed)):
        np.testing.assert_array_equal(a, b)


def test_history_length_mismatch_is_an_error(tmp_path: Path) -> None:
    make_solver(generic_param(tmp_path / "s", max_iter=1, snapshot=1)).solve()
    adam = make_solver(
        generic_param(tmp_path / "s", type="Adam", max_iter=1, momentum=0.9)
    )
    with pytest.raises(SnapshotError, match="Incorrect length of history blobs"):
        adam.restore(str(tmp_path / "s_iter_1.solverstate"))


def test_hdf5_layout_matches_caffe(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    param = generic_param(
        tmp_path / "h", max_iter=2, snapshot=2, snapshot_format="HDF5"
    )
    solver = make_solver(param)
    solver.solve()
    with h5py.File(tmp_path / "h_iter_2.solverstate.h5", "r") as f:
        assert int(f["iter"][0]) == 2 and f["iter"].shape == (1,)
        assert int(f["current_step"][0]) == 0
        assert f["learned_net"][()].rstrip(b"\0").decode() == str(
            tmp_path / "h_iter_2.caffemodel.h5"
        )
        assert sorted(f["history"]) == ["0", "1", "2", "3"]
        np.testing.assert_array_equal(f["history/0"][()], solver.history[0].data)
    with h5py.File(tmp_path / "h_iter_2.caffemodel.h5", "r") as f:
        np.testing.assert_array_equal(
            f["data/ip1/0"][()], solver.net.learnable_params[0].data
        )
        assert len(f["data/loss"]) == 0


def test_atomic_snapshot_survives_crash(tmp_path: Path, monkeypatch) -> None:
    """A crash while writing leaves the previous snapshot intact and no
    temporary files behind."""
    solver = make_solver(generic_param(tmp_path / "at", max_iter=2))
    solver.solve()
    solver.snapshot()
    model = tmp_path / "at_iter_2.caffemodel"
    state = tmp_path / "at_iter_2.solverstate"
    before = model.read_bytes(), state.read_bytes()
    files_before = sorted(os.listdir(tmp_path))

    solver.net.learnable_params[0].data += 1.0  # something new to write
    real_replace = os.replace

    def crash(src: str, dst: str) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(SnapshotError, match="disk on fire"):
        solver.snapshot()
    monkeypatch.setattr(os, "replace", real_replace)
    assert (model.read_bytes(), state.read_bytes()) == before
    assert sorted(os.listdir(tmp_path)) == files_before

    # A crash inside the write itself (before any rename) behaves the same.
    def broken_write(*args: object, **kwargs: object) -> None:
        raise OSError("write failed")

    monkeypatch.setattr(os, "fsync", broken_write)
    with pytest.raises(SnapshotError, match="write failed"):
        solver.snapshot()
    assert (model.read_bytes(), state.read_bytes()) == before
    assert sorted(os.listdir(tmp_path)) == files_before


def test_unwritable_prefix_fails_at_start(tmp_path: Path) -> None:
    param = generic_param(tmp_path / "missing" / "lenet", snapshot=10)
    with pytest.raises(ConfigError, match="Cannot write to snapshot prefix"):
        make_solver(param)
    param = generic_param(tmp_path / "x", snapshot=10)
    param.ClearField("snapshot_prefix")
    with pytest.raises(ConfigError, match="snapshot_prefix is not"):
        make_solver(param)


def test_finetune_copies_weights(tmp_path: Path) -> None:
    donor = make_solver(generic_param(tmp_path / "d", max_iter=3))
    donor.solve()
    donor.snapshot()
    param = generic_param(tmp_path / "f", max_iter=0, random_seed=5)
    param.weights.append(str(tmp_path / "d_iter_3.caffemodel"))
    solver = make_solver(param)
    for a, b in zip(weights(donor), weights(solver)):
        np.testing.assert_array_equal(a, b)
    # The test net got them too.
    ip1 = solver.test_nets[0].layer_by_name("ip1") if solver.test_nets else None
    assert ip1 is None or np.array_equal(ip1.blobs[0].data, weights(donor)[0])
    assert solver.iter == 0


def test_missing_weights_file(tmp_path: Path) -> None:
    param = generic_param(tmp_path / "f", max_iter=0)
    param.weights.append(str(tmp_path / "nope.caffemodel"))
    with pytest.raises(SnapshotError, match="nope.caffemodel"):
        make_solver(param)
