"""Caffe's util/db: one interface over the two database backends.

`open_cursor` gives the Data layer a wrapping cursor over an LMDB
(lmdb_source.py) or a LevelDB (leveldb_source.py); `values` reads every record
once in key order (compute_image_mean); `write_db` writes (key, value) records
committing every 1000 as Caffe's tools do; `build_atomic` builds a database in
a temporary folder beside its final place and renames it there
(files.replace_folders), so an interrupted or failed build leaves the old
database as it was, and the next build cleans up after a killed one.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Protocol

from caffesolve import files
from caffesolve.data import leveldb_source, lmdb_source
from caffesolve.errors import DataError

BACKENDS = ("lmdb", "leveldb")
COMMIT_EVERY = 1000  # records per transaction, as convert_imageset


class Cursor(Protocol):
    """What the Data layer needs of a database cursor."""

    path: str

    def key(self) -> bytes: ...
    def value(self) -> bytes: ...
    def next(self) -> None: ...
    def skip(self, n: int) -> None: ...
    def read(self, n: int, stride: int = 1, offset: int = 0) -> list[bytes]: ...
    def key_of(self, i: int) -> str: ...  # record i of the last read (errors)
    def seek(self, key: bytes) -> None: ...
    def close(self) -> None: ...


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise DataError(f"Unknown database backend {backend} (known: lmdb, leveldb)")


def open_cursor(path: str, backend: str, where: str = "") -> Cursor:
    """A wrapping cursor on the first record of the database at `path`."""
    _check_backend(backend)
    if backend == "lmdb":
        return lmdb_source.LMDBCursor(path, where)
    return leveldb_source.LevelDBCursor(path, where)


def values(
    path: str | os.PathLike[str], backend: str, where: str = ""
) -> Iterator[bytes]:
    """Every record's value once, in key order."""
    _check_backend(backend)
    if backend == "lmdb":
        return lmdb_source.lmdb_values(path, where)
    return leveldb_source.leveldb_items(path, where)


def backend_at(path: str | os.PathLike[str]) -> str | None:
    """ "lmdb" or "leveldb" if `path` holds such a database, else None."""
    if lmdb_source.lmdb_exists(path):
        return "lmdb"
    if leveldb_source.leveldb_exists(path):
        return "leveldb"
    return None


def batched(
    records: Iterable[tuple[bytes, bytes]], size: int = COMMIT_EVERY
) -> Iterator[list[tuple[bytes, bytes]]]:
    """Records in lists of `size` (one transaction each)."""
    it = iter(records)
    while batch := list(itertools.islice(it, size)):
        yield batch


def write_db(
    path: str | os.PathLike[str],
    backend: str,
    records: Iterable[tuple[bytes, bytes]],
    commit_every: int = COMMIT_EVERY,
) -> None:
    """A new database at `path` holding `records` (key, value)."""
    _check_backend(backend)
    batches = batched(records, commit_every)
    if backend == "lmdb":
        lmdb_source.write_lmdb(path, batches)
    else:
        leveldb_source.write_leveldb(path, batches)


def refuse_existing(*paths: str | os.PathLike[str], force: bool) -> None:
    """caffesolve's data tools never overwrite without being asked: an
    existing output is a DataError unless `force`."""
    existing = [str(p) for p in paths if Path(p).exists()]
    if force or not existing:
        return
    if len(existing) == 1:
        raise DataError(f"{existing[0]} already exists; pass --force to rebuild it")
    raise DataError(
        f"{', '.join(existing)} already exist; pass --force to rebuild "
        "(or use them as they are)"
    )


def build_atomic(
    dest: str | os.PathLike[str], build: Callable[[Path], None], force: bool = False
) -> None:
    """Run `build(tmp)` on a new empty folder beside `dest`, then rename it to
    `dest`. An existing `dest` is replaced only with `force` (and only once the
    new one is complete); on any failure the temporary folder is removed, and
    what a killed build left there is cleaned up first (files.py)."""
    db = Path(dest)
    db.parent.mkdir(parents=True, exist_ok=True)
    files.recover_folders([db])
    refuse_existing(db, force=force)
    tmp = files.make_temp_folder(db)
    try:
        build(tmp)
        files.replace_folders({db: tmp})
    except BaseException:
        files.remove_path(tmp)
        raise
