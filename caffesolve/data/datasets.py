"""MNIST and Fashion-MNIST: get the IDX files, write Caffe's LMDBs.

`prepare_dataset` is Caffe's data/mnist/get_mnist.sh and
examples/mnist/create_mnist.sh in one: it finds the four IDX files (a folder
the user gives, a system copy such as Debian's dataset-fashion-mnist package,
or downloads from public mirrors in turn, resumable, with retries), checks
them against the published MD5 checksums, and writes
<out>/<prefix>_train_lmdb and <out>/<prefix>_test_lmdb as
convert_mnist_data.cpp does (keys "%08d", 1x28x28 uint8 Datums with labels).

Each database holds a stamp, `caffesolve_data.json` beside `data.mdb`: the
MD5s of the uncompressed IDX files it was built from and the command that
built it. Run again on the same files, the command finds the databases up to
date and does nothing (exit 0); built from other files, they are replaced
only with --force. Both databases are built in temporary folders beside
their final places (`.NAME.PID.X.tmp`) and only then renamed in, as a pair
(files.replace_folders), so an interrupted or failed run leaves the old pair
as it was; the next run cleans up what a killed one left (or finishes the
renames of a complete pair).
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt

from caffesolve.data.db import build_atomic
from caffesolve.data.idx import (
    md5_hex,
    read_idx_bytes,
    read_mnist_pair,
    verify_checksum,
)
from caffesolve.data.lmdb_source import lmdb_exists, write_datum_lmdb
from caffesolve.errors import DataError, describe
from caffesolve.files import (
    make_temp_folder,
    recover_folders,
    remove_path,
    replace_folders,
)

ROLES = ("train_images", "train_labels", "test_images", "test_labels")
SPLITS = ("train", "test")
STAMP = "caffesolve_data.json"  # in each database folder, beside data.mdb


@dataclass(frozen=True)
class IdxFile:
    """One published file: its .gz name and MD5, and the MD5 uncompressed."""

    name: str  # without .gz
    gz_md5: str | None
    raw_md5: str | None


@dataclass(frozen=True)
class Dataset:
    """A dataset in the MNIST layout and where to get it."""

    name: str
    prefix: str  # of the databases: <prefix>_train_lmdb
    files: dict[str, IdxFile]
    mirrors: tuple[str, ...]
    system_dirs: tuple[str, ...] = field(default=())

    def lmdb_name(self, split: str) -> str:
        return f"{self.prefix}_{split}_lmdb"

    def lmdb_names(self) -> tuple[str, str]:
        return self.lmdb_name("train"), self.lmdb_name("test")


# Published checksums: the .gz MD5s are those of the official releases (and of
# torchvision / TensorFlow's tables); the uncompressed MD5s were checked here on
# the official t10k files and on Debian's Fashion-MNIST package, whose .gz
# files are recompressed (other gzip bytes, same content).
MNIST = Dataset(
    name="mnist",
    prefix="mnist",
    files={
        "train_images": IdxFile(
            "train-images-idx3-ubyte",
            "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "6bbc9ace898e44ae57da46a324031adb",
        ),
        "train_labels": IdxFile(
            "train-labels-idx1-ubyte",
            "d53e105ee54ea40749a09fcbcd1e9432",
            "a25bea736e30d166cdddb491f175f624",
        ),
        "test_images": IdxFile(
            "t10k-images-idx3-ubyte",
            "9fb629c4189551a2d022fa330f9573f3",
            "2646ac647ad5339dbf082846283269ea",
        ),
        "test_labels": IdxFile(
            "t10k-labels-idx1-ubyte",
            "ec29112dd5afa0611ce80d1b7f02629c",
            "27ae3e4e09519cfbb04c329615203637",
        ),
    },
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
)

FASHION_MNIST = Dataset(
    name="fashion-mnist",
    prefix="fashion_mnist",
    files={
        "train_images": IdxFile(
            "train-images-idx3-ubyte",
            "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        ),
        "train_labels": IdxFile(
            "train-labels-idx1-ubyte",
            "25c81989df183df01b3e8a0aad5dffbe",
            "9018921c3c673c538a1fc5bad174d6f9",
        ),
        "test_images": IdxFile(
            "t10k-images-idx3-ubyte",
            "bef4ecab320f06d8554ea6380940ec79",
            "8181f5470baa50b63fa0f6fddb340f0a",
        ),
        "test_labels": IdxFile(
            "t10k-labels-idx1-ubyte",
            "bb300cfdad3c16e7a12a480ee83cd310",
            "15d484375f8d13e6eb1aabb0c3f46965",
        ),
    },
    mirrors=(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/"
        "data/fashion/",
    ),
    system_dirs=("/usr/share/datasets/fashion-mnist",),
)

DATASETS: dict[str, Dataset] = {d.name: d for d in (MNIST, FASHION_MNIST)}


class Reporter:
    """Progress lines and a progress bar on `stream` (None: silent)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self.tty = bool(stream is not None and stream.isatty())
        self._last = 0.0

    def line(self, message: str) -> None:
        if self.stream is not None:
            self.stream.write(message + "\n")
            self.stream.flush()

    def progress(self, name: str, done: int, total: int | None, end: bool) -> None:
        """A one-line bar, redrawn at most 10 times a second (and at the end)."""
        if self.stream is None:
            return
        now = time.monotonic()
        if not end and (not self.tty or now - self._last < 0.1):
            return
        self._last = now
        mb = done / 1e6
        if total:
            frac = min(1.0, done / total)
            bar = "#" * int(30 * frac) + "-" * (30 - int(30 * frac))
            text = f"{name} [{bar}] {100 * frac:5.1f}% {mb:.1f}/{total / 1e6:.1f} MB"
        else:
            text = f"{name} {mb:.1f} MB"
        if self.tty:
            self.stream.write("\r" + text + ("\n" if end else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


class _PermanentError(Exception):
    """This mirror will not serve the file (404, refused...): try the next."""


def _unreachable(reason: object) -> bool:
    """No point retrying: refused, unknown host, no route / network."""
    if isinstance(reason, (ConnectionRefusedError, socket.gaierror)):
        return True
    return isinstance(reason, OSError) and reason.errno in (
        errno.ENETUNREACH,
        errno.EHOSTUNREACH,
    )


def download(
    url: str,
    dest: Path,
    reporter: Reporter,
    retries: int = 3,
    timeout: float = 30.0,
    retry_delay: float = 1.0,
) -> None:
    """Download `url` to `dest`, resuming `dest`.part with an HTTP Range request.

    Transient failures (timeouts, resets, 5xx, short bodies) are retried
    `retries` times, resuming from what arrived; 4xx and refused connections
    raise _PermanentError at once.
    """
    part = dest.with_name(dest.name + ".part")
    last: Exception | None = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(retry_delay * attempt)
        have = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(url, headers={"User-Agent": "caffesolve"})
        if have:
            request.add_header("Range", f"bytes={have}-")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                if have and response.status != 206:
                    have = 0  # the server ignored Range: start again
                length = response.headers.get("Content-Length")
                total = have + int(length) if length is not None else None
                with open(part, "ab" if have else "wb") as f:
                    done = have
                    while chunk := response.read(1 << 16):
                        f.write(chunk)
                        done += len(chunk)
                        reporter.progress(dest.name, done, total, False)
                reporter.progress(dest.name, done, total, True)
                if total is not None and done != total:
                    raise OSError(f"connection closed after {done} of {total} bytes")
            os.replace(part, dest)
            return
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:  # the .part is already complete
                os.replace(part, dest)
                return
            if 400 <= e.code < 500:
                raise _PermanentError(f"HTTP {e.code} {e.reason}") from None
            last = e
        except urllib.error.URLError as e:
            if _unreachable(e.reason):
                raise _PermanentError(f"cannot connect ({e.reason})") from None
            last = e
        except OSError as e:  # timeouts, resets, IncompleteRead
            last = e
        reporter.line(f"  {url}: {last}; retrying ({attempt + 1}/{retries})")
    raise _PermanentError(f"gave up after {retries + 1} tries: {last}")


def _find_in(folder: Path, f: IdxFile) -> Path | None:
    """`f` in `folder`: name.gz, name, or the dotted name (train-images.idx3-ubyte)."""
    dotted = f.name.replace("-idx", ".idx")
    for name in (f.name + ".gz", f.name, dotted + ".gz", dotted):
        if (folder / name).is_file():
            return folder / name
    return None


def _check(path: Path, f: IdxFile, verify: bool) -> None:
    if verify:
        verify_checksum(path, f.gz_md5, f.raw_md5)


def fetch_files(
    ds: Dataset,
    out: Path,
    from_dir: Path | None = None,
    mirrors: Sequence[str] | None = None,
    verify: bool = True,
    reporter: Reporter | None = None,
    retries: int = 3,
    retry_delay: float = 1.0,
) -> dict[str, Path]:
    """The four IDX files of `ds`, by role: from `from_dir`, else a system
    folder holding all four, else downloaded into `out` (kept there: a file
    already there with the right checksum is not downloaded again)."""
    reporter = reporter or Reporter()
    if from_dir is not None:
        if not from_dir.is_dir():
            raise DataError(f"--from {from_dir}: no such folder")
        found = {r: _find_in(from_dir, f) for r, f in ds.files.items()}
        missing = [ds.files[r].name for r, p in found.items() if p is None]
        if missing:
            raise DataError(
                f"--from {from_dir}: missing {', '.join(missing)} (.gz or not)"
            )
        paths = {r: p for r, p in found.items() if p is not None}
        for r, p in paths.items():
            _check(p, ds.files[r], verify)
        return paths
    for d in ds.system_dirs:
        found = {r: _find_in(Path(d), f) for r, f in ds.files.items()}
        if all(found.values()):
            reporter.line(f"Using the {ds.name} files in {d}")
            paths = {r: p for r, p in found.items() if p is not None}
            for r, p in paths.items():
                _check(p, ds.files[r], verify)
            return paths
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for role, f in ds.files.items():
        paths[role] = _download_one(
            f, out, list(mirrors or ds.mirrors), verify, reporter, retries, retry_delay
        )
    return paths


def _download_one(
    f: IdxFile,
    out: Path,
    mirrors: list[str],
    verify: bool,
    reporter: Reporter,
    retries: int,
    retry_delay: float,
) -> Path:
    return download_file(
        f.name + ".gz",
        out,
        mirrors,
        lambda p: _check(p, f, verify),
        reporter,
        retries,
        retry_delay,
        "get the files another way and pass their folder with --from DIR",
    )


def download_file(
    name: str,
    out: Path,
    mirrors: Sequence[str],
    check: Callable[[Path], None],
    reporter: Reporter,
    retries: int = 3,
    retry_delay: float = 1.0,
    hint: str = "get the file another way and pass it with --from",
) -> Path:
    """out/name, downloaded from the first mirror that serves it whole and
    passes `check` (which raises DataError). A file already there that passes
    `check` is kept; one that does not is replaced."""
    dest = out / name
    if dest.is_file():
        try:
            check(dest)
            reporter.line(f"{dest} is already here (checksum ok)")
            return dest
        except DataError:
            dest.unlink()
    failures = []
    for mirror in mirrors:
        if "://" not in mirror:  # a folder holding the files, as --from
            found = Path(mirror) / name
            if not found.is_file():
                failures.append(
                    f"--mirror {mirror}: "
                    + (
                        f"no {name} in this folder"
                        if Path(mirror).is_dir()
                        else "not a URL (http://, https://, ftp://) nor a folder"
                    )
                )
                reporter.line(f"  failed: {failures[-1]}")
                continue
            try:
                check(found)
            except DataError as e:
                failures.append(str(e))
                reporter.line(f"  failed: {failures[-1]}")
                continue
            reporter.line(f"Using {found}")
            return found
        url = mirror.rstrip("/") + "/" + name
        reporter.line(f"Downloading {url}")
        try:
            download(url, dest, reporter, retries, retry_delay=retry_delay)
            check(dest)
            return dest
        except _PermanentError as e:
            failures.append(f"{url}: {e}")
        except DataError as e:
            dest.unlink(missing_ok=True)
            failures.append(f"{url}: {e}")
        reporter.line(f"  failed: {failures[-1]}")
    raise DataError(
        f"could not download {name} from any mirror ("
        + "; ".join(failures)
        + f"); {hint}"
    )


def prepare_dataset(
    ds: Dataset,
    out: str | os.PathLike[str],
    from_dir: str | os.PathLike[str] | None = None,
    force: bool = False,
    mirrors: Sequence[str] | None = None,
    verify: bool = True,
    reporter: Reporter | None = None,
    retries: int = 3,
    retry_delay: float = 1.0,
) -> dict[str, Path]:
    """Get `ds` and write its train and test LMDBs under `out`; returns them.

    Databases already there and stamped with the files this call would use
    are kept (a message says so); others need `force`, and are replaced as
    a pair once the new pair is complete. A database whose stamp matches but
    whose data file is shorter than when it was written is rebuilt.
    """
    reporter = reporter or Reporter()
    out_dir = Path(out)
    dbs = {split: out_dir / ds.lmdb_name(split) for split in SPLITS}
    try:
        for note in recover_folders(dbs.values()) if out_dir.is_dir() else []:
            reporter.line(f"Cleaned up after an interrupted run: {note}")
        todo = list(SPLITS)
        if not force and any(p.exists() for p in dbs.values()):
            todo = _splits_to_build(ds, dbs, out_dir, from_dir, verify)
            if not todo:
                reporter.line(
                    f"{dbs['train']} and {dbs['test']} are up to date (built from "
                    "the same files); nothing to do (--force rebuilds them)"
                )
                return dbs
        paths = fetch_files(
            ds,
            out_dir,
            Path(from_dir) if from_dir is not None else None,
            mirrors,
            verify,
            reporter,
            retries,
            retry_delay,
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        command = data_command(ds, out, from_dir, verify)
        built: dict[Path, Path] = {}
        counts: dict[str, int] = {}
        try:
            for split in todo:
                images, labels = read_mnist_pair(
                    paths[f"{split}_images"], paths[f"{split}_labels"]
                )
                reporter.line(
                    f"A total of {images.shape[0]} items. Rows: {images.shape[1]} "
                    f"Cols: {images.shape[2]}"
                )
                counts[split] = int(images.shape[0])
                built[dbs[split]] = tmp = make_temp_folder(dbs[split])
                write_datum_lmdb(tmp, images, labels)
                sources = {r: source_digest(paths[r]) for r in _roles(split)}
                write_stamp(tmp, ds, split, sources, command)
            replace_folders(built)
        except BaseException:
            for tmp in built.values():
                remove_path(tmp)
            raise
    except OSError as e:
        raise DataError(
            f"{out_dir}: cannot write the databases ({describe(e)}); the "
            "databases there are as they were"
        ) from None
    for split in todo:
        reporter.line(f"Processed {counts[split]} files. Wrote {dbs[split]}")
    return dbs


def _roles(split: str) -> tuple[str, str]:
    return f"{split}_images", f"{split}_labels"


def source_digest(path: str | os.PathLike[str]) -> str:
    """MD5 of an IDX file's uncompressed bytes: what a database is built from."""
    return md5_hex(read_idx_bytes(path))


def data_command(
    ds: Dataset,
    out: str | os.PathLike[str],
    from_dir: str | os.PathLike[str] | None = None,
    verify: bool = True,
) -> str:
    """The `caffesolve data` command line that writes `ds` to `out`."""
    words = ["caffesolve", "data", ds.name, "--out", str(out)]
    if from_dir is not None:
        words += ["--from", str(from_dir)]
    if not verify:
        words.append("--skip-checksum")
    return " ".join(shlex.quote(w) for w in words)


def write_stamp(
    db: Path, ds: Dataset, split: str, sources: dict[str, str], command: str
) -> None:
    """The stamp of a database just written in `db` (see the module doc)."""
    stamp = {
        "dataset": ds.name,
        "split": split,
        "sources": sources,
        "data.mdb bytes": (db / "data.mdb").stat().st_size,
        "command": command,
    }
    (db / STAMP).write_text(json.dumps(stamp, indent=1, sort_keys=True) + "\n")


def read_stamp(db: str | os.PathLike[str]) -> dict[str, Any] | None:
    """A database's stamp, or None (not written by caffesolve, or unreadable)."""
    try:
        stamp = json.loads((Path(db) / STAMP).read_text())
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) else None


def expected_sources(
    ds: Dataset,
    out_dir: Path,
    from_dir: str | os.PathLike[str] | None,
    verify: bool,
) -> dict[str, str] | None:
    """The source digests a run would stamp, found without downloading: from
    the files it would use if they are here (--from, a system folder, the
    downloads kept in `out_dir`), else the published ones (when checksums
    are verified, a download has that content); None if it cannot be told."""
    folder = Path(from_dir) if from_dir is not None else None
    found = _local_files(ds, out_dir, folder)
    if found is not None:
        for role, path in found.items():
            _check(path, ds.files[role], verify)
        return {role: source_digest(path) for role, path in found.items()}
    if verify and all(f.raw_md5 for f in ds.files.values()):
        return {role: str(f.raw_md5) for role, f in ds.files.items()}
    return None


def _local_files(
    ds: Dataset, out_dir: Path, from_dir: Path | None
) -> dict[str, Path] | None:
    """The four files if they are here: in --from, else a system folder, else
    downloaded earlier into `out_dir`."""
    folders = [from_dir] if from_dir is not None else [*map(Path, ds.system_dirs)]
    if from_dir is None:
        folders.append(out_dir)
    for folder in folders:
        found = {r: _find_in(folder, f) for r, f in ds.files.items()}
        if all(found.values()):
            return {r: p for r, p in found.items() if p is not None}
    return None


def _splits_to_build(
    ds: Dataset,
    dbs: dict[str, Path],
    out_dir: Path,
    from_dir: str | os.PathLike[str] | None,
    verify: bool,
) -> list[str]:
    """Without --force: the splits to build (missing or damaged); a DataError
    if a database there was built from other files (or not by caffesolve)."""
    wanted = expected_sources(ds, out_dir, from_dir, verify)
    todo, other = [], []
    for split, db in dbs.items():
        if not db.exists():
            todo.append(split)
            continue
        stamp = read_stamp(db)
        roles = _roles(split)
        if (
            wanted is None
            or stamp is None
            or stamp.get("sources") != {r: wanted[r] for r in roles}
        ):
            other.append(str(db))
        elif _shorter_than_written(db, stamp):
            todo.append(split)  # damaged (a truncated copy): made again
    if other:
        why = (
            "not built by caffesolve from the files this command uses"
            if wanted is not None
            else "cannot be checked against files not downloaded yet"
        )
        raise DataError(
            f"{', '.join(other)}: already there, and {why}; pass --force to "
            "replace them (or use them as they are)"
        )
    return todo


def _shorter_than_written(db: Path, stamp: dict[str, Any]) -> bool:
    try:
        return (db / "data.mdb").stat().st_size < int(stamp["data.mdb bytes"])
    except (OSError, KeyError, TypeError, ValueError):
        return True


def rebuild_command(db: str | os.PathLike[str]) -> str | None:
    """The command that rebuilds the database `db`: from its stamp, else from
    its name if it is one of the DATASETS' (None if neither)."""
    stamp = read_stamp(db)
    if stamp is not None and isinstance(stamp.get("command"), str):
        return stamp["command"] + " --force"
    command = dataset_command(db)
    return command + " --force" if command else None


def dataset_command(source: str | os.PathLike[str]) -> str | None:
    """`caffesolve data NAME --out FOLDER` for a path named like one of the
    outputs of caffesolve's data tools (mnist_train_lmdb,
    fashion_mnist_test_lmdb, cifar10_train_lmdb...), else None."""
    from caffesolve.data.cifar10 import OUTPUTS as CIFAR10

    p = Path(source)
    made = {n: ds.name for ds in DATASETS.values() for n in ds.lmdb_names()}
    made.update({n: "cifar10" for n in CIFAR10})
    if p.name not in made:
        return None
    parent = str(p.parent) if str(p.parent) else "."
    return " ".join(
        shlex.quote(w) for w in ["caffesolve", "data", made[p.name], "--out", parent]
    )


def write_lmdb_atomic(
    db: Path,
    images: npt.NDArray[np.uint8],
    labels: npt.NDArray[np.uint8],
    force: bool = False,
) -> None:
    """convert_mnist_data's LMDB, built in a temporary folder beside `db` and
    renamed to `db` (db.build_atomic); an existing `db` is replaced only with
    `force`."""
    build_atomic(db, lambda tmp: write_datum_lmdb(tmp, images, labels), force)
    assert lmdb_exists(db)


def default_reporter() -> Reporter:
    """Progress to stderr, as the CLI uses."""
    return Reporter(sys.stderr)
