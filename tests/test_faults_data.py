"""Damaged data met at start or mid-run (issue cases 2 and 4), and the
`data` command under faults (cases 3, 5, 7): each fault is made for real
(databases truncated or corrupted by the test, records that are not Datums,
HDF5 files of another shape or cut short, a full or read-only disk, SIGKILL)
and checked for the exit code, the one `Error:` line, no traceback, and the
files left.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
from collections.abc import Callable
from pathlib import Path

import h5py
import lmdb
import numpy as np
import pytest
from fault_helpers import (
    child,
    encoded_datum,
    error_line,
    get_record,
    images,
    kill_when_there,
    make_lmdb,
    make_png_lmdb,
    put_records,
    run,
    snap_prefix,
    snapshot_names,
    write_setup,
)
from test_datasets import TEST, TRAIN, check_dbs, idx_bytes, tiny_files

from caffesolve.proto import caffe_pb2


def truncate(db: Path, keep: int) -> None:
    with open(db / "data.mdb", "r+b") as f:
        f.truncate(keep)


def corrupt_pages(db: Path, first: int, last: int) -> None:
    """Overwrite the page headers (flags, counts) of pages first..last-1."""
    with open(db / "data.mdb", "r+b") as f:
        for page in range(first, last):
            f.seek(page * 4096 + 8)
            f.write(b"\xff" * 8)


def last_page(db: Path) -> int:
    env = lmdb.open(str(db), readonly=True, lock=False)
    try:
        return int(env.info()["last_pgno"])
    finally:
        env.close()


# -- LMDB: truncated, corrupt, bad records (cases 2 and 4) -----------------------------


def test_truncated_lmdb_is_an_error_not_sigbus(tmp_path: Path) -> None:
    """An interrupted copy: LMDB maps the file, so reading a page past its end
    used to kill the process with SIGBUS (exit 135). Now the length is
    checked at open; caffesolve made this database, so the message gives the
    command that makes it again, which repairs it (no --force needed for a
    damaged one of the same files)."""
    tiny_files(tmp_path / "src", gz=False)
    out = tmp_path / "data"
    make = ["data", "mnist", "--from", str(tmp_path / "src"), "--out", str(out)]
    assert run(*make, "--skip-checksum")[0] == 0
    db = out / "mnist_train_lmdb"
    full = (db / "data.mdb").stat().st_size
    truncate(db, 2 * 4096)
    solver = write_setup(tmp_path / "run", tmp_path / "x", train=db)
    result = child("train", str(solver), cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    rebuild = (
        f"caffesolve data mnist --out {out} --from {tmp_path / 'src'} "
        "--skip-checksum --force"
    )
    assert error_line(result.stderr) == (
        f"Error: {tmp_path / 'run' / 'net.prototxt'}: layer 'data' (Data): {db}: "
        f"{db / 'data.mdb'} is truncated: 8192 bytes, the database needs {full} "
        f"(an interrupted copy?); rebuild it with: {rebuild}"
    )
    code, _, stderr = run(*shlex.split(rebuild)[1:-1])  # even without --force
    assert code == 0, stderr
    assert (db / "data.mdb").stat().st_size == full
    check_dbs({"train": db, "test": out / "mnist_test_lmdb"})


def test_corrupt_lmdb_at_start_up(tmp_path: Path) -> None:
    db = make_lmdb(tmp_path / "db", n=1000)
    corrupt_pages(db, 2, last_page(db))
    code, _, stderr = run("train", str(write_setup(tmp_path, tmp_path / "x", train=db)))
    assert code == 1
    line = error_line(stderr)
    assert re.fullmatch(
        rf"Error: \S+net.prototxt: layer 'data' \(Data\): {db}: cannot read "
        r"\(mdb_\w+: MDB_CORRUPTED: [^)]*\); copy it again, or rebuild it from its "
        "source",
        line,
    ), line
    assert snapshot_names(tmp_path) == ["db", "net.prototxt", "solver.prototxt"]


def stopped_at(line: str) -> int:
    m = re.search(r"training stopped at iteration (\d+) after writing a snapshot", line)
    assert m, line
    return int(m.group(1))


def test_corrupt_page_mid_run_snapshots_then_stops(tmp_path: Path) -> None:
    """A corrupt page some 50 iterations in: the snapshot of the last
    completed iteration is written first, and the message says to resume
    from it."""
    db = make_lmdb(tmp_path / "db", n=1000)
    corrupt_pages(db, last_page(db) // 2, last_page(db) - 1)
    prefix = snap_prefix(tmp_path)
    solver = write_setup(tmp_path / "run", prefix, train=db, max_iter=100)
    code, _, stderr = run("train", str(solver))
    assert code == 1
    line = error_line(stderr)
    assert f"layer 'data' (Data): {db}: cannot read (mdb_" in line
    it = stopped_at(line)
    assert 30 < it < 100 and it % 5 != 0
    assert line.endswith(f"(resume with --snapshot {prefix}_iter_{it}.solverstate)")
    names = snapshot_names(prefix.parent)
    assert f"x_iter_{it}.caffemodel" in names and f"x_iter_{it}.solverstate" in names
    assert not [n for n in names if n.startswith(".")]


@pytest.mark.parametrize(
    ("make", "value", "what"),
    [
        (make_lmdb, b"\xff\xfe not a protobuf", "not a Datum (Error parsing message"),
        (
            make_png_lmdb,
            encoded_datum(b"JPEG? no"),
            "encoded Datum: cannot decode the image (cannot identify image file",
        ),
    ],
    ids=["not-a-datum", "not-an-image"],
)
def test_bad_record_mid_run_names_it_and_resumes(
    tmp_path: Path, make: Callable[[Path], Path], value: bytes, what: str
) -> None:
    """Record 00000123 (iteration 12 with batches of 10) is not a Datum, or,
    in a database of PNGs, an encoded Datum that is not an image (a PIL error
    before): one line naming the database and the key, the snapshot of
    iteration 12 written; once the record is mended, --snapshot finishes."""
    db = make(tmp_path / "db")
    good = get_record(db, "00000123")
    put_records(db, {"00000123": value})
    prefix = snap_prefix(tmp_path)
    solver = write_setup(tmp_path / "run", prefix, train=db)
    code, _, stderr = run("train", str(solver))
    assert code == 1
    line = error_line(stderr)
    assert line.startswith(
        f"Error: {tmp_path / 'run' / 'net.prototxt'}: layer 'data' (Data): {db}: "
        f"record 00000123: {what}"
    )
    assert stopped_at(line) == 12
    put_records(db, {"00000123": good})
    code, _, stderr = run(
        "train", str(solver), "--snapshot", f"{prefix}_iter_12.solverstate"
    )
    assert code == 0, stderr
    assert "x_iter_20.solverstate" in snapshot_names(prefix.parent)


# -- HDF5Data: a second file of another shape, or cut short (case 4) -------------------

H5_NET = """
name: "TinyH5"
layer { name: "data" type: "HDF5Data" top: "data" top: "label"
  hdf5_data_param { source: "%(train)s" batch_size: 10 } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label"
  top: "loss" }
"""


def write_h5(path: Path, rows: int, shape: tuple[int, ...], seed: int) -> Path:
    x, y = images(rows, seed)
    with h5py.File(path, "w") as f:
        f["data"] = x[:, None].astype(np.float32).reshape(rows, *shape) / 255
        f["label"] = y.astype(np.float32)
    return path


@pytest.mark.parametrize("fault", ["other shape", "cut short"])
def test_second_hdf5_file_bad_mid_run(tmp_path: Path, fault: str) -> None:
    """The list's second file has rows of another shape (NumPy's broadcast
    error before), or is truncated (h5py's OSError): found when the first
    file is used up, in iteration 4 (the fifth batch of 10 of 50 rows); the
    snapshot of iteration 4 is written and, with the file mended,
    --snapshot finishes the run."""
    first = write_h5(tmp_path / "a.h5", 50, (1, 8, 8), 1)
    second = tmp_path / "b.h5"
    if fault == "other shape":
        write_h5(second, 50, (1, 4, 16), 2)
        what = (
            f"{second}: dataset data has rows of 1x4x16, the first file's have "
            f"1x8x8; every file listed in {tmp_path / 'list.txt'} needs the same"
        )
    else:
        write_h5(second, 50, (1, 8, 8), 2)
        second.write_bytes(second.read_bytes()[:3000])
        what = f"Failed opening HDF5 file: {second} (Unable to synchronously open"
    (tmp_path / "list.txt").write_text(f"{first}\n{second}\n")
    prefix = snap_prefix(tmp_path)
    solver = write_setup(
        tmp_path / "run", prefix, train=tmp_path / "list.txt", net=H5_NET
    )
    code, _, stderr = run("train", str(solver), "--set", "snapshot=3")
    assert code == 1
    line = error_line(stderr)
    assert f"layer 'data' (HDF5Data): {what}" in line
    assert stopped_at(line) == 4
    write_h5(second, 50, (1, 8, 8), 2)
    state = f"{prefix}_iter_4.solverstate"
    code, _, stderr = run("train", str(solver), "--snapshot", state)
    assert code == 0, stderr
    assert "x_iter_20.solverstate" in snapshot_names(prefix.parent)


def test_hdf5_source_that_is_an_h5_file(tmp_path: Path) -> None:
    h5 = write_h5(tmp_path / "train.h5", 20, (1, 8, 8), 1)
    solver = write_setup(tmp_path / "run", tmp_path / "x", train=h5, net=H5_NET)
    code, _, stderr = run("train", str(solver))
    assert code == 1
    assert error_line(stderr).endswith(
        f"layer 'data' (HDF5Data): hdf5_data_param.source {h5} is an HDF5 file "
        "itself; source must be a text file listing .h5 files, one per line "
        f"(e.g. a file holding the line {h5})"
    )


# -- the data command (cases 3, 5, 7) -----------------------------------------------


def data_args(src: Path, out: Path, *more: str) -> list[str]:
    return [
        "data",
        "mnist",
        "--from",
        str(src),
        "--out",
        str(out),
        "--skip-checksum",
        *more,
    ]


def test_data_on_a_read_only_disk(tmp_path: Path, disk) -> None:
    tiny_files(tmp_path / "src")
    d = disk(1 << 20)
    d.read_only()
    code, _, stderr = run(*data_args(tmp_path / "src", d.path / "out"))
    assert code == 1
    line = error_line(stderr)
    assert line.startswith(f"Error: {d.path / 'out'}: cannot write the databases (")
    assert "Read-only file system); the databases there are as they were" in line
    assert snapshot_names(d.path) == []


def test_data_force_on_a_full_disk_keeps_the_old_pair(tmp_path: Path, disk) -> None:
    """--force with bigger sources than the disk has room for: the new pair
    cannot be written, the old pair is as it was, nothing is left over."""
    tiny_files(tmp_path / "src")
    d = disk(400 * 1024)
    out = d.path / "out"
    assert run(*data_args(tmp_path / "src", out))[0] == 0
    big = tmp_path / "big"
    big.mkdir()
    x, y = images(600, 3, side=28)
    (big / "train-images-idx3-ubyte").write_bytes(idx_bytes(x))
    (big / "train-labels-idx1-ubyte").write_bytes(idx_bytes(y))
    (big / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(TEST[0]))
    (big / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(TEST[1]))
    code, _, stderr = run(*data_args(big, out, "--force"))
    assert code == 1
    line = error_line(stderr)
    assert "mnist_train_lmdb." in line and "cannot write the LMDB (" in line
    check_dbs({"train": out / "mnist_train_lmdb", "test": out / "mnist_test_lmdb"})
    assert snapshot_names(out) == ["mnist_test_lmdb", "mnist_train_lmdb"]


STOP_IN_DATA = """
from caffesolve.data import datasets

real_write, real_replace = datasets.write_datum_lmdb, os.replace


def write_datum_lmdb(path, images, labels):
    real_write(path, images, labels)
    if stage == "building" and "mnist_test_lmdb" in str(path):
        stop_here()


def replace(src, dst):
    real_replace(src, dst)
    if stage == "renaming" and str(dst).endswith("mnist_train_lmdb"):
        stop_here()


datasets.write_datum_lmdb = write_datum_lmdb
os.replace = replace
"""


@pytest.mark.parametrize("stage", ["building", "renaming"])
def test_data_force_killed_then_run_again(tmp_path: Path, stage: str) -> None:
    """--force killed while the new pair is built: the old pair is intact and
    only `.NAME.PID.X.tmp` folders are left; killed between the renames of
    a complete new pair: the train database is the new one (the old one
    aside as `.old`), the new test one waits as `.new`. The next run cleans
    up (or finishes the renames) before it does anything else."""
    tiny_files(tmp_path / "old")
    out = tmp_path / "out"
    assert run(*data_args(tmp_path / "old", out))[0] == 0
    new = tmp_path / "new"
    new.mkdir()
    flipped = (255 - TRAIN[0], TRAIN[1]), (255 - TEST[0], TEST[1])
    for (x, y), split in zip(flipped, ("train", "t10k")):
        (new / f"{split}-images-idx3-ubyte").write_bytes(idx_bytes(x))
        (new / f"{split}-labels-idx1-ubyte").write_bytes(idx_bytes(y))
    kill_when_there(tmp_path, STOP_IN_DATA, stage, *data_args(new, out, "--force"))
    names = snapshot_names(out)
    if stage == "building":
        hidden = [n for n in names if n.startswith(".")]
        assert len(hidden) == 2 and all(n.endswith(".tmp") for n in hidden)
        check_dbs({"train": out / "mnist_train_lmdb", "test": out / "mnist_test_lmdb"})
        # The next run, with the old files: nothing to build, leftovers gone.
        code, _, stderr = run(*data_args(tmp_path / "old", out))
        assert code == 0, stderr
        assert "up to date" in stderr
        check_dbs({"train": out / "mnist_train_lmdb", "test": out / "mnist_test_lmdb"})
    else:
        hidden = [n.split(".")[1] + n[n.rindex(".") :] for n in names if n[0] == "."]
        assert sorted(hidden) == ["mnist_test_lmdb.new", "mnist_train_lmdb.old"]
        dbs = {"train": out / "mnist_train_lmdb", "test": out / "mnist_test_lmdb"}
        check_dbs(dbs, train=flipped[0])  # the new train db, the old test db
        code, _, stderr = run(*data_args(new, out))
        assert code == 0, stderr
        assert (
            "Cleaned up after an interrupted run" in stderr and "up to date" in stderr
        )
        check_dbs(
            {"train": out / "mnist_train_lmdb", "test": out / "mnist_test_lmdb"},
            *flipped,
        )
    assert snapshot_names(out) == ["mnist_test_lmdb", "mnist_train_lmdb"]


def test_data_permissions_follow_the_umask(tmp_path: Path) -> None:
    tiny_files(tmp_path / "src")
    old = os.umask(0o027)
    try:
        assert run(*data_args(tmp_path / "src", tmp_path / "out"))[0] == 0
    finally:
        os.umask(old)
    db = tmp_path / "out" / "mnist_train_lmdb"
    assert stat.S_IMODE(db.stat().st_mode) == 0o750
    assert stat.S_IMODE((db / "data.mdb").stat().st_mode) == 0o640


def test_mirror_may_be_a_local_folder(tmp_path: Path) -> None:
    """--mirror /a/local/folder used to be a ValueError traceback: a folder
    works as a mirror; something that is neither a URL nor a folder is said
    to be so."""
    tiny_files(tmp_path / "mirror")
    out = tmp_path / "out"
    code, _, stderr = run(
        "data", "mnist", "--mirror", str(tmp_path / "mirror"), "--out", str(out),
        "--skip-checksum",
    )  # fmt: skip
    assert code == 0, stderr
    check_dbs({"train": out / "mnist_train_lmdb", "test": out / "mnist_test_lmdb"})
    code, _, stderr = run(
        "data", "mnist", "--mirror", "nowhere/at/all", "--out", str(tmp_path / "o2")
    )
    assert code == 1
    assert "--mirror nowhere/at/all: not a URL (http://, https://, ftp://) nor a " \
        "folder" in error_line(stderr)  # fmt: skip


# -- HDF5Output on a full disk ---------------------------------------------------------

OUTPUT_NET = """
name: "Dump"
layer { name: "data" type: "Data" top: "data" top: "label"
  data_param { source: "%(db)s" batch_size: 100 backend: LMDB } }
layer { name: "out" type: "HDF5Output" bottom: "data" bottom: "label"
  hdf5_output_param { file_name: "%(out)s" } }
"""


def test_hdf5_output_refuses_a_batch_the_disk_cannot_hold(tmp_path: Path, disk) -> None:
    """HDF5 crashes the process (SIGSEGV) when a write fails on a full disk:
    HDF5Output refuses the batch first, with one line, and the rows saved so
    far stay readable."""
    side = 16
    make_lmdb(tmp_path / "db", n=300, side=side)
    d = disk(4 << 20)
    out = d.path / "features.h5"
    net = tmp_path / "dump.prototxt"
    net.write_text(OUTPUT_NET % {"db": tmp_path / "db", "out": out})
    weights = tmp_path / "none.caffemodel"
    weights.write_bytes(caffe_pb2.NetParameter().SerializeToString())
    code, _, stderr = run(
        "test", "--model", str(net), "--weights", str(weights), "--iterations", "60"
    )
    assert code == 1
    line = error_line(stderr)
    assert f"layer 'out' (HDF5Output): {out}: not enough disk space" in line
    assert "the rows saved so far are in the file" in line
    pixels, labels = images(300, 0, side)
    with h5py.File(out, "r") as f:
        rows = f["data"].shape[0]
        assert rows >= 100 and rows % 100 == 0
        saved = np.concatenate([pixels] * (rows // 300 + 1))[:rows]
        np.testing.assert_array_equal(f["data"][()].reshape(rows, side, side), saved)
        want = np.concatenate([labels] * (rows // 300 + 1))[:rows]
        np.testing.assert_array_equal(f["label"][()].reshape(rows), want)
