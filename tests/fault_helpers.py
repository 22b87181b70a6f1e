"""Faults made to happen for real, for the reliability tests (test_faults_*).

- `disk`: a folder on a small filesystem of its own. As root where mounting
  is allowed (this machine, CI's Debian), a tmpfs of the asked size: writes
  past it fail with ENOSPC, `read_only()` remounts it read-only (EROFS), as
  root ignores permission bits. Elsewhere, a plain folder where the same
  errors are raised at caffesolve's write calls (files.create_temp,
  files.write_bytes_to, the LMDB writer) past the size or once read-only.
  CAFFESOLVE_TEST_NO_MOUNT=1 forces the second way.
- A tiny training setup on real layers (Data from an LMDB the test builds,
  InnerProduct, SoftmaxWithLoss), small enough that a snapshot pair takes
  two pages, so disks are sized in pages.
- `run`: `caffesolve ARGS` in-process, failing the test on any exception
  that is not click's exit (what a user would see as a traceback);
  `child`: the same in a new Python process, for what would kill the
  process natively (SIGBUS, SIGSEGV) or to kill it (SIGKILL, SIGINT).
"""

from __future__ import annotations

import errno
import gc
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from caffesolve.cli import cli as caffesolve_cli
from caffesolve.data import lmdb_source
from caffesolve.log import LOG
from caffesolve.proto import caffe_pb2

PAGE = 4096
REPO = Path(__file__).resolve().parents[1]

NET = """
name: "Tiny"
layer { name: "data" type: "Data" top: "data" top: "label"
  include { phase: TRAIN }
  data_param { source: "%(train)s" batch_size: 10 backend: LMDB }
  transform_param { scale: 0.00390625 } }
layer { name: "data" type: "Data" top: "data" top: "label"
  include { phase: TEST }
  data_param { source: "%(test)s" batch_size: 10 backend: LMDB }
  transform_param { scale: 0.00390625 } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label"
  top: "loss" }
"""

SOLVER = """
net: "%(net)s"
base_lr: 0.01
momentum: 0.9
lr_policy: "fixed"
display: 5
max_iter: %(max_iter)d
snapshot: 5
snapshot_prefix: "%(prefix)s"
random_seed: 1701
"""


# -- data --------------------------------------------------------------------------


def images(n: int, seed: int = 0, side: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.integers(0, 256, (n, side, side), dtype=np.uint8),
        rng.integers(0, 10, n, dtype=np.uint8),
    )


def make_lmdb(path: Path, n: int = 300, seed: int = 0, side: int = 8) -> Path:
    """An LMDB of n 1xSIDExSIDE Datums, keys %08d (convert_mnist_data's)."""
    lmdb_source.write_datum_lmdb(path, *images(n, seed, side))
    return path


def get_record(db: Path, key: str) -> bytes:
    import lmdb

    gc.collect()  # a finished in-process run may still hold the environment
    env = lmdb.open(str(db), readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return bytes(txn.get(key.encode()))
    finally:
        env.close()


def make_png_lmdb(path: Path, n: int = 300, seed: int = 0) -> Path:
    """An LMDB of n encoded Datums (8x8 gray PNGs), keys %08d."""
    import io

    from PIL import Image

    x, y = images(n, seed)
    records = {}
    for i in range(n):
        buffer = io.BytesIO()
        Image.fromarray(x[i]).save(buffer, format="PNG")
        records[f"{i:08d}"] = encoded_datum(buffer.getvalue(), int(y[i]))
    path.mkdir()
    put_records(path, records)
    return path


def put_records(db: Path, records: dict[str, bytes]) -> None:
    """Overwrite some values of an LMDB (keys as %08d strings)."""
    import lmdb

    gc.collect()  # a finished in-process run may still hold the environment
    env = lmdb.open(str(db))
    with env.begin(write=True) as txn:
        for key, value in records.items():
            txn.put(key.encode(), value)
    env.close()


def encoded_datum(data: bytes, label: int = 0) -> bytes:
    d = caffe_pb2.Datum(encoded=True, data=data, label=label)
    return d.SerializeToString()


def write_setup(
    folder: Path,
    prefix: Path,
    *,
    max_iter: int = 20,
    train: Path | None = None,
    test: Path | None = None,
    extra: str = "",
    net: str = NET,
) -> Path:
    """net.prototxt + solver.prototxt in `folder` (data made if not given);
    snapshots to `prefix`. Returns the solver's path."""
    folder.mkdir(parents=True, exist_ok=True)
    train = train or make_lmdb(folder / "train_lmdb")
    test = test or train
    (folder / "net.prototxt").write_text(net % {"train": train, "test": test})
    solver = folder / "solver.prototxt"
    solver.write_text(
        SOLVER
        % {"net": folder / "net.prototxt", "prefix": prefix, "max_iter": max_iter}
        + extra
    )
    return solver


def pages(*paths: Path) -> int:
    """Pages the files take on a tmpfs."""
    return sum(-(-p.stat().st_size // PAGE) for p in paths)


def snapshot_names(folder: Path) -> list[str]:
    """Every name in `folder`, hidden ones too, sorted."""
    return sorted(os.listdir(folder))


# -- running caffesolve --------------------------------------------------------------


def run(*args: str) -> tuple[int, str, str]:
    """`caffesolve ARGS` in-process: (exit code, stdout, stderr). An exception
    other than click's exit fails the test: the user would see a traceback."""
    LOG.quiet = False
    result = CliRunner().invoke(caffesolve_cli, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        raise AssertionError(
            "traceback:\n" + "".join(traceback.format_exception(*result.exc_info))  # type: ignore[misc]
        )
    return result.exit_code, result.stdout, result.stderr


def child(
    *args: str, code: str | None = None, timeout: float = 120, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m caffesolve ARGS` (or `python -c CODE ARGS`) in a new process."""
    start = ["-c", code] if code else ["-m", "caffesolve"]
    return subprocess.run(
        [sys.executable, *start, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


KILL_PREAMBLE = """
import os, sys, time
from pathlib import Path

marker, stage = Path(sys.argv[1]), sys.argv[2]


def stop_here():
    marker.write_text("here")
    time.sleep(600)
"""

KILL_MAIN = """
sys.argv = ["caffesolve", *sys.argv[3:]]
from caffesolve.__main__ import main

main()
"""


def kill_when_there(tmp_path: Path, patches: str, stage: str, *args: str) -> str:
    """Run `caffesolve ARGS` in a child whose `patches` (Python run first,
    given `stage` and `stop_here()`) stop it at the point to test; SIGKILL
    it there. Returns the child's stderr."""
    marker = tmp_path / "marker"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_PREAMBLE + patches + KILL_MAIN, str(marker),
         stage, *args],
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]  # type: ignore[union-attr]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    return stderr


def snap_prefix(tmp_path: Path) -> Path:
    """tmp_path/snap/x, its folder made: where a test run snapshots."""
    (tmp_path / "snap").mkdir()
    return tmp_path / "snap" / "x"


def error_line(stderr: str) -> str:
    """The one `Error: ...` line; fails unless there is exactly one, it is the
    last line, and no traceback was printed."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("Error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr[-3000:]
    return errors[0]


# -- a small disk ---------------------------------------------------------------------


def _can_mount() -> bool:
    if os.environ.get("CAFFESOLVE_TEST_NO_MOUNT") or os.geteuid() != 0:
        return False
    if shutil.which("mount") is None:
        return False
    probe = Path(f"/tmp/caffesolve-mount-probe-{uuid.uuid4().hex}")
    probe.mkdir()
    try:
        ok = (
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)],
                capture_output=True,
            ).returncode
            == 0
        )
        if ok:
            subprocess.run(["umount", str(probe)], capture_output=True)
        return ok
    finally:
        probe.rmdir()


CAN_MOUNT = _can_mount()


class Disk:
    """A folder on a filesystem of `size` bytes (see the module doc)."""

    def __init__(self, path: Path, size: int, monkeypatch: pytest.MonkeyPatch) -> None:
        self.path = path
        self.size = size
        self.real = CAN_MOUNT
        self.ro = False
        path.mkdir(parents=True)
        if self.real:
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", path],
                check=True,
            )
            return
        from caffesolve import files

        real_create, real_write = files.create_temp, files.write_bytes_to
        real_batches = lmdb_source._write_batches

        def create_temp(target: str | os.PathLike[str]) -> Path:
            self.check(target, 0)
            return real_create(target)

        def write_bytes_to(tmp: str | os.PathLike[str], data: bytes) -> None:
            self.check(tmp, len(data))
            real_write(tmp, data)

        def write_batches(lmdb: object, path: Path, batches: object) -> None:
            batches = list(batches)  # type: ignore[call-overload]
            need = sum(len(k) + len(v) for b in batches for k, v in b)
            if self.inside(path) and (self.ro or self.used() + need > size):
                raise lmdb.Error(  # type: ignore[attr-defined]
                    f"mdb_txn_commit: {os.strerror(errno.EIO)}"
                )
            real_batches(lmdb, path, batches)

        def free_bytes(folder: str | os.PathLike[str]) -> int:
            if self.inside(folder):
                return max(0, size - self.used())
            return real_free(folder)

        real_free = files.free_bytes
        monkeypatch.setattr(files, "free_bytes", free_bytes)
        monkeypatch.setattr(files, "create_temp", create_temp)
        monkeypatch.setattr(files, "write_bytes_to", write_bytes_to)
        monkeypatch.setattr(lmdb_source, "_write_batches", write_batches)
        monkeypatch.setattr(
            "caffesolve.files.os.mkdir", self._mkdir(os.mkdir), raising=True
        )

    def _mkdir(self, real: object) -> object:
        def mkdir(path: str | os.PathLike[str], mode: int = 0o777) -> None:
            if self.inside(path) and self.ro:
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            real(path, mode)  # type: ignore[operator]

        return mkdir

    def inside(self, path: str | os.PathLike[str]) -> bool:
        return Path(path).resolve().is_relative_to(self.path.resolve())

    def used(self) -> int:
        return sum(
            -(-p.stat().st_size // PAGE) * PAGE
            for p in self.path.rglob("*")
            if p.is_file()
        )

    def check(self, path: str | os.PathLike[str], nbytes: int) -> None:
        """The error this filesystem would give for a write of nbytes."""
        if not self.inside(path):
            return
        if self.ro:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        if self.used() + -(-nbytes // PAGE) * PAGE > self.size:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def read_only(self) -> None:
        """From now on the filesystem refuses writes (EROFS)."""
        self.ro = True
        if self.real:
            subprocess.run(["mount", "-o", "remount,ro", self.path], check=True)

    def unmount(self) -> None:
        if self.real:
            subprocess.run(["umount", "-l", self.path], capture_output=True)
