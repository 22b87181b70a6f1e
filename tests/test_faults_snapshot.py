"""Snapshots under faults (issue cases 1 and 3): a full disk, a folder made
read-only after start-up, a target name taken by a folder, a log file on a
full device, a process killed in the middle of a snapshot write; and the
files a run leaves (pairs, permissions, leftovers, folder sync).

Each fault happens for real (fault_helpers: a small tmpfs, /dev/full,
SIGKILL); each test checks the exit code, the one `Error:` line, that no
traceback is printed, and which files exist afterwards.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
from fault_helpers import (
    PAGE,
    child,
    error_line,
    kill_when_there,
    pages,
    run,
    snap_prefix,
    snapshot_names,
    write_setup,
)

from caffesolve import snapshot as snap
from caffesolve.proto import caffe_pb2
from caffesolve.proto.io import read_binaryproto

EXT = {"BINARYPROTO": (".caffemodel", ".solverstate"), "HDF5": (".caffemodel.h5",
       ".solverstate.h5")}  # fmt: skip


def pair(prefix: Path, it: int, fmt: str = "BINARYPROTO") -> list[str]:
    return [f"{prefix.name}_iter_{it}{e}" for e in EXT[fmt]]


def reference_pair_pages(tmp_path: Path, fmt: str) -> int:
    """Pages one snapshot pair of the tiny net takes (a run to iteration 5)."""
    ref = tmp_path / "ref"
    solver = write_setup(ref, ref / "x", max_iter=5)
    code, _, stderr = run("train", str(solver), "--set", f"snapshot_format={fmt}")
    assert code == 0, stderr
    return pages(*(ref / name for name in pair(ref / "x", 5, fmt)))


def model_weights(path: Path) -> list[np.ndarray]:
    net = read_binaryproto(path, caffe_pb2.NetParameter())
    return [np.asarray(b.data, np.float32) for lp in net.layer for b in lp.blobs]


@pytest.mark.parametrize("fmt", ["BINARYPROTO", "HDF5"])
def test_full_disk_keeps_the_last_good_pair_and_resumes(
    tmp_path: Path, disk, fmt: str
) -> None:
    """Case 1 and 3: room for one pair. The second cannot be written: one
    line naming it and the last good pair, exit 1 (HDF5 used to segfault
    inside h5py: run in a process of its own on a real disk), no temporary
    left, and --snapshot resumes from the pair that is there."""
    size = (reference_pair_pages(tmp_path, fmt) + 1) * PAGE
    d = disk(size)
    prefix = d.path / "x"
    solver = write_setup(tmp_path / "run", prefix)
    args = ["train", str(solver), "--set", f"snapshot_format={fmt}"]
    if d.real:
        result = child(*args)
        code, stderr = result.returncode, result.stderr
    else:
        code, _, stderr = run(*args)
    assert code == 1, stderr[-2000:]
    model10, state10 = pair(prefix, 10, fmt)
    last_good = f"{prefix}_iter_5{EXT[fmt][1]}"
    assert error_line(stderr) == (
        f"Error: {d.path / model10} + {state10}: cannot write the snapshot (No "
        "space left on device); training stopped at iteration 10; the last good "
        f"snapshot is {last_good} (resume with --snapshot {last_good})"
    )
    assert snapshot_names(d.path) == pair(prefix, 5, fmt)
    (tmp_path / "more").mkdir()
    code, _, stderr = run(
        *args,
        "--snapshot",
        last_good,
        "--set",
        f"snapshot_prefix={tmp_path / 'more' / 'x'}",
    )
    assert code == 0, stderr
    assert "Optimization Done." in stderr
    assert pair(tmp_path / "more" / "x", 20, fmt)[1] in os.listdir(tmp_path / "more")


def test_folder_made_read_only_after_start_up(
    tmp_path: Path, disk, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The snapshot folder turns read-only after the first pair (a remount):
    the second pair fails with EROFS, the first stays."""
    d = disk(1 << 20)
    prefix = d.path / "x"
    real_write = snap.write_snapshot

    def write_then_remount(*args: object) -> None:
        real_write(*args)  # type: ignore[arg-type]
        d.read_only()

    monkeypatch.setattr(snap, "write_snapshot", write_then_remount)
    code, _, stderr = run("train", str(write_setup(tmp_path / "run", prefix)))
    assert code == 1
    line = error_line(stderr)
    assert "x_iter_10.solverstate: cannot write the snapshot (Read-only file " in line
    state5 = f"{prefix}_iter_5.solverstate"
    assert line.endswith(
        f"the last good snapshot is {state5} (resume with --snapshot {state5})"
    )
    assert snapshot_names(d.path) == pair(prefix, 5)


def test_state_name_taken_by_a_folder(tmp_path: Path) -> None:
    """The solver state's name is a folder: the model is not renamed into
    place either (no model without its state)."""
    prefix = snap_prefix(tmp_path)
    (tmp_path / "snap" / "x_iter_10.solverstate").mkdir()
    code, _, stderr = run("train", str(write_setup(tmp_path / "run", prefix)))
    assert code == 1
    line = error_line(stderr)
    assert "x_iter_10.solverstate: cannot write the snapshot (Is a directory)" in line
    assert line.endswith(f"(resume with --snapshot {prefix}_iter_5.solverstate)")
    assert snapshot_names(prefix.parent) == sorted(
        [*pair(prefix, 5), "x_iter_10.solverstate"]
    )


def test_log_file_on_a_full_device(tmp_path: Path) -> None:
    """--log on a full disk (/dev/full): one warning, the run goes on logging
    to stderr, and every snapshot is written."""
    prefix = snap_prefix(tmp_path)
    solver = write_setup(tmp_path / "run", prefix)
    code, _, stderr = run("train", str(solver), "--log", "/dev/full")
    assert code == 0, stderr
    assert "Traceback" not in stderr
    warnings = [ln for ln in stderr.splitlines() if "cannot write the log file" in ln]
    assert len(warnings) == 1
    assert warnings[0].startswith("W")
    assert warnings[0].endswith(
        "cannot write the log file /dev/full (No space left on device); the log "
        "goes on on stderr only"
    )
    assert "Optimization Done." in stderr
    assert snapshot_names(prefix.parent) == sorted(
        pair(prefix, 5) + pair(prefix, 10) + pair(prefix, 15) + pair(prefix, 20)
    )


STOP_IN_SNAPSHOT = """
from caffesolve import files

real_write, real_replace = files.write_bytes_to, os.replace


def write_bytes_to(tmp, data):
    if stage == "model-half-written" and "_iter_10.caffemodel." in str(tmp):
        with open(tmp, "wb") as f:
            f.write(data[: len(data) // 2])
        stop_here()
    real_write(tmp, data)


def replace(src, dst):
    real_replace(src, dst)
    if stage == "between-renames" and str(dst).endswith("_iter_10.caffemodel"):
        stop_here()


files.write_bytes_to = write_bytes_to
os.replace = replace
"""


@pytest.mark.parametrize("stage", ["model-half-written", "between-renames"])
def test_killed_mid_snapshot_next_run_cleans_up_and_resumes(
    tmp_path: Path, stage: str
) -> None:
    """SIGKILL while the iteration-10 snapshot is written. Half a model
    written: only a temporary is left, the pair of iteration 5 intact. Killed
    between the pair's two renames: the model is in place and the complete
    state is still a temporary. The next run that snapshots there removes
    the temporary, or renames the state into place to complete the pair;
    resuming from the pair gives the weights of a run never killed."""
    prefix = snap_prefix(tmp_path)
    solver = write_setup(tmp_path / "run", prefix)
    kill_when_there(tmp_path, STOP_IN_SNAPSHOT, stage, "train", str(solver))
    names = snapshot_names(prefix.parent)
    left = [n for n in names if n.startswith(".")]
    assert len(left) == 1 and left[0].endswith(".tmp")
    if stage == "model-half-written":
        assert left[0].startswith(".x_iter_10.caffemodel.")
        assert [n for n in names if not n.startswith(".")] == pair(prefix, 5)
    else:
        assert left[0].startswith(".x_iter_10.solverstate.")
        assert [n for n in names if not n.startswith(".")] == sorted(
            [*pair(prefix, 5), "x_iter_10.caffemodel"]
        )

    # The next run writing there: resumed from 5 and stopped at once (max_iter
    # 5), so that it writes no pair of iteration 10 itself.
    state5 = f"{prefix}_iter_5.solverstate"
    code, _, stderr = run(
        "train", str(solver), "--snapshot", state5, "--iterations", "5"
    )
    assert code == 0, stderr
    names = snapshot_names(prefix.parent)
    assert not [n for n in names if n.startswith(".")]
    if stage == "model-half-written":
        assert (
            f"removed {prefix.parent / left[0]} (left by a run that was killed)"
            in stderr
        )
        assert names == pair(prefix, 5)
        return
    assert f"completed {prefix}_iter_10.solverstate" in stderr
    assert names == sorted(pair(prefix, 5) + pair(prefix, 10))

    straight = tmp_path / "straight"
    straight.mkdir()
    code, _, _ = run("train", str(solver), "--set", f"snapshot_prefix={straight}/x")
    assert code == 0
    code, _, stderr = run(
        "train", str(solver), "--snapshot", f"{prefix}_iter_10.solverstate"
    )
    assert code == 0, stderr
    for a, b in zip(
        model_weights(straight / "x_iter_20.caffemodel"),
        model_weights(prefix.parent / "x_iter_20.caffemodel"),
    ):
        np.testing.assert_array_equal(a, b)


def test_snapshot_permissions_follow_the_umask(tmp_path: Path) -> None:
    """Files get 0666 less the umask, as Caffe's (std::ofstream); they used
    to be 0600 (mkstemp)."""
    prefix = snap_prefix(tmp_path)
    solver = write_setup(tmp_path / "run", prefix, max_iter=5)
    old = os.umask(0o027)
    try:
        assert run("train", str(solver))[0] == 0
    finally:
        os.umask(old)
    for name in pair(prefix, 5):
        assert stat.S_IMODE((prefix.parent / name).stat().st_mode) == 0o640


def test_pair_renamed_model_first_then_folder_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both temporaries are complete (synced) before the first rename; the
    model is renamed before the state; the folder is synced after both."""
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        kind = "folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        events.append(f"sync {kind}")
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        events.append(f"rename {Path(dst).suffix}")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    prefix = snap_prefix(tmp_path)
    solver = write_setup(tmp_path / "run", prefix, max_iter=5)
    assert run("train", str(solver))[0] == 0
    assert events == [
        "sync file",
        "sync file",
        "rename .caffemodel",
        "rename .solverstate",
        "sync folder",
    ]
