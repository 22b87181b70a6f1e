"""Caffe's LevelDB databases (db_leveldb.cpp), through plyvel.

LevelDB is the `backend: LEVELDB` of data_param (Caffe's default) and of
convert_imageset / compute_image_mean `--backend leveldb`. The binding is the
optional extra `leveldb` (pip install 'caffesolve[leveldb]'). Databases are
opened with Caffe's options: block_size 64 KiB, write_buffer_size 256 MiB,
max_open_files 100; keys are read in LevelDB's byte order, as Caffe's cursor
does. LevelDB locks a database to one opener, so the readers of one process
share one handle (a train and a test net may read the same database).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

from caffesolve.errors import DataError
from caffesolve.log import LOG

_OPTIONS = {
    "block_size": 65536,
    "write_buffer_size": 268435456,
    "max_open_files": 100,
}


def plyvel_module(where: str = "") -> Any:
    """The plyvel module, or a DataError naming the extra to install."""
    try:
        import plyvel
    except ModuleNotFoundError:
        raise DataError(
            f"{where}LevelDB databases need the `plyvel` package: "
            "pip install 'caffesolve[leveldb]'"
        ) from None
    return plyvel


def leveldb_exists(path: str | os.PathLike[str]) -> bool:
    """True if `path` looks like a LevelDB folder (holds CURRENT)."""
    return os.path.isfile(os.path.join(path, "CURRENT"))


class _SharedDB:
    """One open plyvel.DB per database folder in this process."""

    _open: weakref.WeakValueDictionary[str, _SharedDB] = weakref.WeakValueDictionary()
    _lock = threading.Lock()

    def __init__(self, db: Any) -> None:
        self.db = db

    def __del__(self) -> None:
        self.db.close()

    @classmethod
    def get(cls, path: str, where: str) -> _SharedDB:
        plyvel = plyvel_module(where)
        key = os.path.realpath(path)
        with cls._lock:
            shared = cls._open.get(key)
            if shared is None:
                try:
                    db = plyvel.DB(path, create_if_missing=False, **_OPTIONS)
                except (plyvel.Error, OSError) as e:
                    raise DataError(
                        f"{where}Failed to open leveldb {path} ({e})"
                    ) from None
                shared = cls(db)
                cls._open[key] = shared
            return shared


class LevelDBCursor:
    """A cursor over a LevelDB that wraps from the last key to the first
    (the interface of LMDBCursor)."""

    def __init__(self, path: str | os.PathLike[str], where: str = "") -> None:
        self.path = str(path)
        prefix = f"{where}: " if where else ""
        self.shared = _SharedDB.get(self.path, prefix)
        self.it = self.shared.db.raw_iterator()
        self.it.seek_to_first()
        if not self.it.valid():
            raise DataError(f"{prefix}{self.path}: the LevelDB holds no records")
        self.batch_start = self.key()
        self.batch_stride, self.batch_offset = 1, 0
        LOG.info("db_leveldb.cpp:18", f"Opened leveldb {self.path}")

    def key(self) -> bytes:
        return bytes(self.it.key())

    def value(self) -> bytes:
        return bytes(self.it.value())

    def next(self) -> None:
        """Advance, back to the first key at the end."""
        self.it.next()
        if not self.it.valid():
            self.wrap()

    def wrap(self) -> None:
        LOG.info("data_layer.cpp:65", "Restarting data prefetching from start.")
        self.it.seek_to_first()

    def skip(self, n: int) -> None:
        for _ in range(n):
            self.next()

    def read(self, n: int, stride: int = 1, offset: int = 0) -> list[bytes]:
        """The next n values in key order, wrapping; the cursor ends past them
        (with a stride: LMDBCursor.read's rank share)."""
        self.batch_start = self.key()
        self.batch_stride, self.batch_offset = stride, offset
        out = []
        for i in range(n * stride):
            if i % stride == offset:
                out.append(self.value())
            self.next()
        return out

    def key_of(self, i: int) -> str:
        """The key of record i of the last `read` (for error messages)."""
        it = self.shared.db.raw_iterator()
        it.seek(self.batch_start)
        for _ in range(self.batch_offset + i * self.batch_stride):
            it.next()
            if not it.valid():
                it.seek_to_first()
        return bytes(it.key()).decode(errors="replace") if it.valid() else "?"

    def seek(self, key: bytes) -> None:
        """Position on `key`, or the first key after it, or the first."""
        self.it.seek(key)
        if not self.it.valid():
            self.it.seek_to_first()

    def close(self) -> None:
        self.it.close()


def leveldb_items(path: str | os.PathLike[str], where: str = "") -> Iterator[bytes]:
    """Every value once, in key order (compute_image_mean's loop)."""
    shared = _SharedDB.get(str(path), f"{where}: " if where else "")
    with shared.db.iterator(include_key=False) as it:
        yield from it


def write_leveldb(
    path: str | os.PathLike[str], batches: Iterable[list[tuple[bytes, bytes]]]
) -> None:
    """A new LevelDB at `path` (must not exist) from batches of (key, value),
    one write batch each (Caffe commits every 1000 records)."""
    plyvel = plyvel_module()
    db = plyvel.DB(str(path), create_if_missing=True, error_if_exists=True, **_OPTIONS)
    try:
        for batch in batches:
            with db.write_batch() as wb:
                for key, value in batch:
                    wb.put(key, value)
    finally:
        db.close()
