"""Snapshot files: names, writing (atomic) and reading, binary proto or HDF5.

Names (Caffe's Solver::SnapshotFilename): `{snapshot_prefix}_iter_{N}` plus
`.caffemodel` / `.solverstate`, or `.caffemodel.h5` / `.solverstate.h5` with
`snapshot_format: HDF5`. Every write goes to a temporary file in the target
folder and is renamed over the target (proto.io.atomic_write_bytes), so a
crash never leaves a half-written snapshot.

HDF5 layouts are Caffe's (net.cpp ToHDF5, sgd_solver.cpp
SnapshotSolverStateToHDF5): a model has groups `data/<layer>/<i>` (and
`diff/...` with snapshot_diff); a solver state has datasets `iter`,
`learned_net`, `current_step` and group `history/<i>`. caffesolve adds the
`caffesolve_resume` JSON (SolverState field 1701 / a uint8 dataset), which Caffe
ignores; states written by Caffe lack it and still restore.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from caffesolve.errors import ConfigError, SnapshotError
from caffesolve.proto import caffe_pb2
from caffesolve.proto.io import atomic_write, atomic_write_bytes, read_binaryproto
from caffesolve.weights import is_hdf5

if TYPE_CHECKING:
    from caffesolve.net import Net

BINARYPROTO = caffe_pb2.SolverParameter.BINARYPROTO
HDF5 = caffe_pb2.SolverParameter.HDF5
MODEL_EXTENSION = {BINARYPROTO: ".caffemodel", HDF5: ".caffemodel.h5"}
STATE_EXTENSION = {BINARYPROTO: ".solverstate", HDF5: ".solverstate.h5"}


def snapshot_filename(prefix: str, it: int, extension: str) -> str:
    """Caffe's SnapshotFilename: prefix + "_iter_" + N + extension."""
    return f"{prefix}_iter_{it}{extension}"


def model_filename(prefix: str, it: int, snapshot_format: int = BINARYPROTO) -> str:
    return snapshot_filename(prefix, it, MODEL_EXTENSION[snapshot_format])


def state_filename(prefix: str, it: int, snapshot_format: int = BINARYPROTO) -> str:
    return snapshot_filename(prefix, it, STATE_EXTENSION[snapshot_format])


def check_snapshot_write_permissions(
    param: caffe_pb2.SolverParameter, source: str = "<solver>"
) -> None:
    """Fail at start-up, not after hours of training, if snapshots can't be
    written (Caffe's CheckSnapshotWritePermissions, also for the snapshot
    taken after training)."""
    if param.snapshot and not param.HasField("snapshot_prefix"):
        raise ConfigError(
            f"{source}: snapshot: In solver params, snapshot is specified but "
            'snapshot_prefix is not (add snapshot_prefix: "folder/name")'
        )
    if not (param.snapshot or param.snapshot_after_train):
        return
    folder = Path(param.snapshot_prefix).parent
    try:
        fd, probe = tempfile.mkstemp(
            prefix=f".{Path(param.snapshot_prefix).name}_iter_",
            suffix=".tempfile",
            dir=folder,
        )
        os.close(fd)
        os.unlink(probe)
    except OSError:
        raise ConfigError(
            f"{source}: snapshot_prefix: Cannot write to snapshot prefix "
            f"'{param.snapshot_prefix}'.  Make sure that the directory exists "
            "and is writable."
        ) from None


# -- models ----------------------------------------------------------------------


def _h5py() -> Any:
    try:
        import h5py
    except ImportError:  # pragma: no cover - h5py is an optional dependency
        raise SnapshotError(
            "snapshot_format: HDF5 needs h5py (pip install caffesolve[hdf5])"
        ) from None
    return h5py


def _h5_bytes(fill: Any) -> bytes:
    """An HDF5 file built in memory by fill(h5py.File), as bytes."""
    h5py = _h5py()
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        fill(f)
    return buffer.getvalue()


def write_model(
    path: str | os.PathLike[str], net: Net, write_diff: bool, snapshot_format: int
) -> None:
    """The learned blobs of `net`: binary NetParameter (Net.to_proto), or with
    snapshot_format HDF5 Caffe's HDF5 layout (Net.to_hdf5); atomic either way."""
    if snapshot_format == HDF5:
        atomic_write(path, lambda tmp: net.to_hdf5(tmp, write_diff))
    else:
        atomic_write_bytes(path, net.to_proto(write_diff).SerializeToString())


# -- solver states ------------------------------------------------------------------


def encode_resume(resume: dict[str, Any]) -> bytes:
    """The caffesolve_resume blob: data cursors and RNG state as JSON."""
    return json.dumps(resume, sort_keys=True).encode()


def decode_resume(blob: bytes, path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        resume = json.loads(blob.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SnapshotError(f"{path}: corrupt caffesolve_resume ({e})") from None
    if not isinstance(resume, dict):
        raise SnapshotError(f"{path}: corrupt caffesolve_resume (not an object)")
    return resume


def write_solver_state(
    path: str | os.PathLike[str], state: caffe_pb2.SolverState, snapshot_format: int
) -> None:
    """A SolverState: binary proto, or Caffe's HDF5 layout with snapshot_format
    HDF5."""
    if snapshot_format == HDF5:
        atomic_write_bytes(path, solverstate_h5_bytes(state))
    else:
        atomic_write_bytes(path, state.SerializeToString())


def _write_h5_string(f: Any, name: str, text: str) -> None:
    """A scalar null-terminated string dataset (H5LTmake_dataset_string)."""
    h5py = _h5py()
    raw = text.encode()
    tid = h5py.h5t.C_S1.copy()
    tid.set_size(len(raw) + 1)
    tid.set_strpad(h5py.h5t.STR_NULLTERM)
    space = h5py.h5s.create(h5py.h5s.SCALAR)
    dset = h5py.h5d.create(f.id, name.encode(), tid, space)
    dset.write(h5py.h5s.ALL, h5py.h5s.ALL, np.array(raw, dtype=f"S{len(raw) + 1}"))


def solverstate_h5_bytes(state: caffe_pb2.SolverState) -> bytes:
    """sgd_solver.cpp SnapshotSolverStateToHDF5's layout."""
    from caffesolve.blob import proto_shape

    def fill(f: Any) -> None:
        f.create_dataset("iter", data=np.array([state.iter], np.int32))
        _write_h5_string(f, "learned_net", state.learned_net)
        f.create_dataset("current_step", data=np.array([state.current_step], np.int32))
        history = f.create_group("history")
        for i, blob in enumerate(state.history):
            arr = np.asarray(blob.data, np.float32).reshape(proto_shape(blob))
            history.create_dataset(str(i), data=arr)
        if state.caffesolve_resume:
            f.create_dataset(
                "caffesolve_resume",
                data=np.frombuffer(state.caffesolve_resume, np.uint8),
            )

    return _h5_bytes(fill)


def read_solver_state(path: str | os.PathLike[str]) -> caffe_pb2.SolverState:
    """A .solverstate or .solverstate.h5 (Caffe's or ours) as a SolverState."""
    if not Path(path).exists():
        raise SnapshotError(f"{path}: solver state file not found")
    if not is_hdf5(path):
        try:
            return read_binaryproto(path, caffe_pb2.SolverState())
        except ConfigError as e:
            raise SnapshotError(str(e)) from None
    h5py = _h5py()
    state = caffe_pb2.SolverState()
    try:
        with h5py.File(path, "r") as f:
            for field in ("iter", "current_step", "history"):
                if field not in f:
                    raise SnapshotError(
                        f"{path}: no '{field}' in this HDF5 file; not a Caffe "
                        "solver state"
                    )
            state.iter = int(np.asarray(f["iter"]).ravel()[0])
            state.current_step = int(np.asarray(f["current_step"]).ravel()[0])
            if "learned_net" in f:
                raw = f["learned_net"][()]
                raw = raw.tobytes() if isinstance(raw, np.ndarray) else raw
                state.learned_net = raw.rstrip(b"\0").decode()
            group = f["history"]
            for key in sorted(group, key=int):
                arr = np.asarray(group[key], np.float32)
                blob = state.history.add()
                blob.shape.dim.extend(arr.shape)
                blob.data.extend(arr.ravel().tolist())
            if "caffesolve_resume" in f:
                state.caffesolve_resume = np.asarray(
                    f["caffesolve_resume"], np.uint8
                ).tobytes()
    except OSError as e:
        raise SnapshotError(f"{path}: cannot read HDF5 solver state ({e})") from None
    return state


def resolve_learned_net(learned_net: str, state_path: str | os.PathLike[str]) -> Path:
    """The model a solver state names: as written (Caffe: relative to the
    working folder), else next to the state file (a moved snapshot folder)."""
    p = Path(learned_net)
    if p.exists():
        return p
    beside = Path(state_path).parent / p.name
    if beside.exists():
        return beside
    raise SnapshotError(
        f"{state_path}: learned_net '{learned_net}' not found (looked in the "
        f"working folder and in {Path(state_path).parent})"
    )
