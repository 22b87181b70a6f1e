"""Snapshot files: names, writing (atomic) and reading, binary proto or HDF5.

Names (Caffe's Solver::SnapshotFilename): `{snapshot_prefix}_iter_{N}` plus
`.caffemodel` / `.solverstate`, or `.caffemodel.h5` / `.solverstate.h5` with
`snapshot_format: HDF5`. A snapshot is written as a pair (files.py): the
model and the solver state both go to temporaries in the target folder
first, then both are renamed into place, model first, and the folder is
synced; so a crash, a kill or a full disk never leaves a half-written file,
nor a model without its solver state. HDF5 files are built in memory and
written the same way (h5py writing straight to a full disk fails inside the
HDF5 library, and can crash the process when it then closes the file).
Temporaries of a killed run (`.NAME.PID.X.tmp`) are cleaned up by the next
run that snapshots to the same prefix (`recover_leftovers`), which also
completes a pair that was killed between its two renames.

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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from caffesolve import files
from caffesolve.errors import ConfigError, SnapshotError, describe
from caffesolve.proto import caffe_pb2
from caffesolve.proto.io import read_binaryproto
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
    try:
        probe = files.create_temp(param.snapshot_prefix + "_iter_0")
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


def model_bytes(net: Net, write_diff: bool, snapshot_format: int) -> bytes:
    """The learned blobs of `net`: a binary NetParameter (Net.to_proto), or
    with snapshot_format HDF5 Caffe's HDF5 layout (Net.to_hdf5, in memory)."""
    if snapshot_format == HDF5:
        _h5py()
        buffer = io.BytesIO()
        net.to_hdf5(buffer, write_diff)
        return buffer.getvalue()
    return net.to_proto(write_diff).SerializeToString()


def write_snapshot(
    model_path: str,
    state_path: str,
    net: Net,
    state: caffe_pb2.SolverState,
    write_diff: bool,
    snapshot_format: int,
) -> None:
    """A model and its solver state as one pair (files.atomic_write_all):
    both complete, or neither changed. Failures are SnapshotErrors naming
    the pair and the reason (a full disk, a read-only folder...)."""
    try:
        model = model_bytes(net, write_diff, snapshot_format)
        solver_state = solver_state_bytes(state, snapshot_format)
        files.atomic_write_all(
            [
                (model_path, lambda tmp: files.write_bytes_to(tmp, model)),
                (state_path, lambda tmp: files.write_bytes_to(tmp, solver_state)),
            ]
        )
    except (OSError, MemoryError) as e:
        reason = describe(e) if isinstance(e, MemoryError) else _reason(e)
        raise SnapshotError(
            f"{model_path} + {Path(state_path).name}: cannot write the snapshot "
            f"({reason})"
        ) from e


def _reason(e: OSError) -> str:
    """An OS error's reason without the file name (the message names it)."""
    return os.strerror(e.errno) if e.errno else str(e)


def recover_leftovers(prefix: str) -> list[str]:
    """Clean up after a run killed while snapshotting to `prefix`: remove its
    temporaries, except a solver state killed between the pair's two renames
    (its model already renamed into place, the state complete): that one is
    renamed into place too, so the pair is whole. Returns a note per file."""
    folder = Path(prefix).parent
    stem = Path(prefix).name
    notes = []
    leftovers = files.dead_leftovers(folder, f"{stem}_iter_*")
    pending = {
        (p.name.rsplit(".", 3)[0][1:], files.writer_pid(p.name)) for p in leftovers
    }
    for tmp in leftovers:
        name = tmp.name.rsplit(".", 3)[0][1:]
        pid = files.writer_pid(tmp.name)
        model = _model_of_state(name)
        try:
            if (
                model is not None
                and (folder / model).is_file()
                and (model, pid) not in pending
            ):
                os.replace(tmp, folder / name)
                files.fsync_folder(folder)
                notes.append(
                    f"completed {folder / name} (its run was killed "
                    "between the snapshot's two renames)"
                )
            else:
                files.remove_path(tmp)
                notes.append(f"removed {tmp} (left by a run that was killed)")
        except OSError:
            continue  # read-only, or another process got there first
    return notes


def _model_of_state(name: str) -> str | None:
    """`x_iter_N.caffemodel[.h5]` for a solver state name, else None."""
    for fmt, ext in STATE_EXTENSION.items():
        if name.endswith(ext):
            return name[: -len(ext)] + MODEL_EXTENSION[fmt]
    return None


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


def solver_state_bytes(state: caffe_pb2.SolverState, snapshot_format: int) -> bytes:
    """A SolverState: binary proto, or Caffe's HDF5 layout with snapshot_format
    HDF5."""
    if snapshot_format == HDF5:
        return solverstate_h5_bytes(state)
    return state.SerializeToString()


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
            state = read_binaryproto(path, caffe_pb2.SolverState())
        except ConfigError as e:
            if _is_model(path):
                raise _model_given(path) from None
            raise SnapshotError(str(e)) from None
        if not state.history and not state.learned_net and _is_model(path):
            raise _model_given(path)
        return state
    h5py = _h5py()
    state = caffe_pb2.SolverState()
    try:
        with h5py.File(path, "r") as f:
            if "iter" not in f and "data" in f:
                raise _model_given(path)
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


def _is_model(path: str | os.PathLike[str]) -> bool:
    """True if `path` reads as a binary NetParameter with layers (a
    .caffemodel; a SolverState parse of one finds no history)."""
    try:
        param = read_binaryproto(path, caffe_pb2.NetParameter())
    except ConfigError:
        return False
    return bool(param.layer or param.layers)


def _model_given(path: str | os.PathLike[str]) -> SnapshotError:
    return SnapshotError(
        f"{path}: this is a model (the net's weights), not a solver state: "
        f"to start training from these weights use --weights {path}; to "
        "resume a run, give its .solverstate"
    )


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
