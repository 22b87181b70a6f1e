"""Caffe's LMDB databases of Datum records: read (Data layer) and write.

Reading follows db_lmdb.cpp and data_layer.cpp: the database is opened
read-only (never modified, no lock file written), records are read in key
order, and the cursor goes back to the first key after the last
("Restarting data prefetching from start."). Writing follows
convert_mnist_data.cpp: keys "%08d", one Datum per record. Encoded Datums
(JPEG/PNG) decode as OpenCV would (image.py).

A batch is decoded at once: every Datum of the batch is parsed, their `data`
bytes joined and viewed as one (N, C, H, W) uint8 array.

Damaged databases are errors, not crashes: the data file must be as long as
the database says at open (LMDB maps the file; reading a page past the end
of a truncated copy would kill the process with SIGBUS), every lmdb.Error is
a DataError naming the database and how to rebuild it, and a record that is
not a Datum (or an encoded image that does not decode) names its key.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from google.protobuf.message import DecodeError

from caffesolve.data.image import Mode, decode_image, hwc_to_chw
from caffesolve.errors import DataError, require_extra
from caffesolve.log import LOG
from caffesolve.proto import caffe_pb2

F32 = np.float32


def _lmdb() -> Any:
    try:
        import lmdb
    except ModuleNotFoundError:
        raise DataError(
            "the Data layer needs the `lmdb` package: pip install 'caffesolve[lmdb]'"
        ) from None
    return lmdb


class _SharedEnv:
    """One read-only lmdb.Environment per database file in this process.

    py-lmdb refuses to open an environment twice in one process, and a train
    and a test net may read the same database (the autoencoder's
    test-on-train), so cursors share it; it closes when the last one goes.
    """

    _open: weakref.WeakValueDictionary[tuple[int, int], _SharedEnv] = (
        weakref.WeakValueDictionary()
    )
    _lock = threading.Lock()

    def __init__(self, env: Any) -> None:
        self.env = env

    def __del__(self) -> None:
        self.env.close()

    @classmethod
    def get(cls, path: str, where: str) -> _SharedEnv:
        lmdb = _lmdb()
        subdir = os.path.isdir(path)
        data_file = os.path.join(path, "data.mdb") if subdir else path
        try:
            st = os.stat(data_file)
        except OSError as e:
            raise DataError(
                f"{where}{path}: not an LMDB ({data_file}: {e.strerror or e})"
            ) from None
        key = (st.st_dev, st.st_ino)
        with cls._lock:
            shared = cls._open.get(key)
            if shared is None:
                try:
                    env = lmdb.open(
                        path,
                        readonly=True,
                        lock=False,
                        # records are read in key order, so let the OS
                        # read ahead (Caffe's default; helps a cold cache)
                        readahead=True,
                        subdir=subdir,
                    )
                except lmdb.Error as e:
                    raise damaged(path, where, f"cannot open LMDB ({e})") from None
                shared = cls(env)
                check_length(env, data_file, path, where)
                cls._open[key] = shared
            return shared


def check_length(env: Any, data_file: str, path: str, where: str) -> None:
    """The data file holds every page the database uses (last_pgno + 1
    pages): a truncated copy is an error here, not a SIGBUS on first read."""
    need = (int(env.info()["last_pgno"]) + 1) * int(env.stat()["psize"])
    have = os.stat(data_file).st_size
    if have < need:
        raise damaged(
            path,
            where,
            f"{data_file} is truncated: {have} bytes, the database needs {need} "
            "(an interrupted copy?)",
        )


def damaged(path: str, where: str, what: str) -> DataError:
    """A DataError for a damaged database, ending with how to get it back."""
    from caffesolve.data.datasets import rebuild_command

    command = rebuild_command(path)
    fix = (
        f"rebuild it with: {command}"
        if command
        else "copy it again, or rebuild it from its source"
    )
    return DataError(f"{where}{path}: {what}; {fix}")


class LMDBCursor:
    """A read-only cursor over an LMDB that wraps from the last key to the first.

    An lmdb.Error from any read (a corrupt page) is a DataError (`damaged`).
    """

    def __init__(self, path: str | os.PathLike[str], where: str = "") -> None:
        self.path = str(path)
        self.prefix = f"{where}: " if where else ""
        self.shared = _SharedEnv.get(self.path, self.prefix)
        self.env = self.shared.env
        with self.reading():
            self.txn = self.env.begin(buffers=False)
            self.cursor = self.txn.cursor()
            if not self.cursor.first():
                raise DataError(f"{self.prefix}{self.path}: the LMDB holds no records")
            self.entries = int(self.env.stat()["entries"])
            self.batch_start = bytes(self.cursor.key())
            self.batch_stride, self.batch_offset = 1, 0
        LOG.info("db_lmdb.cpp:35", f"Opened lmdb {self.path}")

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """lmdb.Error inside the block -> a DataError naming the database."""
        try:
            yield
        except _lmdb().Error as e:
            raise damaged(self.path, self.prefix, f"cannot read ({e})") from None

    def key(self) -> bytes:
        with self.reading():
            return bytes(self.cursor.key())

    def value(self) -> bytes:
        with self.reading():
            return bytes(self.cursor.value())

    def next(self) -> None:
        """Caffe's DataLayer::Next: advance, back to the first key at the end."""
        with self.reading():
            if not self.cursor.next():
                self.wrap()

    def wrap(self) -> None:
        """Past the last key: back to the first, as Caffe logs it."""
        LOG.info("data_layer.cpp:65", "Restarting data prefetching from start.")
        with self.reading():
            self.cursor.first()

    def skip(self, n: int) -> None:
        """Advance n records (wrapping)."""
        for _ in range(n % self.entries):
            self.next()

    def read(self, n: int, stride: int = 1, offset: int = 0) -> list[bytes]:
        """The next n values in key order, wrapping; the cursor ends past them.

        With a stride, of the next n * stride records only those at offset,
        offset + stride, ... (a rank's share, Caffe's DataLayer::Skip); the
        others are stepped over without reading their values.
        """
        value, advance = self.cursor.value, self.cursor.next
        out = []
        with self.reading():
            self.batch_start = self.cursor.key()
            self.batch_stride, self.batch_offset = stride, offset
            for i in range(n * stride):
                if i % stride == offset:
                    out.append(value())
                if not advance():
                    self.wrap()
        return out

    def key_of(self, i: int) -> str:
        """The key of record i of the last `read` (for error messages)."""
        cursor = self.txn.cursor()
        with self.reading():
            if not cursor.set_key(self.batch_start):
                return "?"
            for _ in range((self.batch_offset + i * self.batch_stride) % self.entries):
                if not cursor.next():
                    cursor.first()
            return bytes(cursor.key()).decode(errors="replace")

    def seek(self, key: bytes) -> None:
        """Position on `key` (resume), or the first key after it, or the first."""
        with self.reading():
            if not self.cursor.set_range(key):
                self.cursor.first()

    def close(self) -> None:
        """Drop this cursor (the environment closes with its last cursor)."""
        self.cursor.close()
        self.txn.abort()


class BadRecord(DataError):
    """A record that cannot be decoded (decode_datums adds which one)."""


def decode_datums(
    values: list[bytes],
    source: str,
    force_color: bool = False,
    force_gray: bool = False,
    key_of: Callable[[int], str] | None = None,
) -> tuple[npt.NDArray[Any], npt.NDArray[np.float32]]:
    """Serialized Datums -> data (N, C, H, W) uint8 or float32, labels (N,).

    Every Datum must have the shape of the first (Caffe shapes the batch from
    its first datum and checks the others against it). A value that is not a
    Datum, or an encoded one that does not decode, is a DataError naming the
    record: its key by `key_of(index in the batch)` if given.
    """
    try:
        return _decode_datums(values, source, force_color, force_gray)
    except BadRecord as e:
        i = getattr(e, "index", 0)
        record = f"record {key_of(i)}" if key_of else f"record {i} of the batch"
        raise DataError(
            f"{source}: {record}: {e}; the database is damaged or was not written "
            "with Caffe's Datum records"
        ) from None


def _bad_record(message: str, index: int) -> BadRecord:
    error = BadRecord(message)
    error.index = index  # type: ignore[attr-defined]
    return error


def _datum(value: bytes, index: int) -> caffe_pb2.Datum:
    try:
        return caffe_pb2.Datum.FromString(value)
    except DecodeError as e:
        raise _bad_record(f"not a Datum ({e})", index) from None


def _decode_datums(
    values: list[bytes], source: str, force_color: bool, force_gray: bool
) -> tuple[npt.NDArray[Any], npt.NDArray[np.float32]]:
    datums = [_datum(v, i) for i, v in enumerate(values)]
    labels = np.array([d.label for d in datums], F32)
    first = datums[0]
    if first.encoded:
        require_extra("PIL", "image", "encoded Datums (JPEG/PNG) need Pillow")
        # DataTransformer: DecodeDatumToCVMat(force_color) when either is
        # forced, else DecodeDatumToCVMatNative (the file's own channels)
        mode: Mode = "color" if force_color else "gray" if force_gray else "unchanged"
        images = []
        for i, d in enumerate(datums):
            try:
                images.append(hwc_to_chw(decode_image(d.data, mode, "encoded Datum")))
            except DataError as e:
                raise _bad_record(str(e), i) from None
        shape = images[0].shape
        bad = next((i for i, im in enumerate(images) if im.shape != shape), None)
        if bad is not None:
            raise DataError(
                f"{source}: encoded images of different sizes in one batch "
                f"({'x'.join(map(str, shape))} and "
                f"{'x'.join(map(str, images[bad].shape))}); resize them when "
                "creating the database"
            )
        return np.stack(images), labels
    chw = (first.channels, first.height, first.width)
    shapes = [(d.channels, d.height, d.width) for d in datums]
    if shapes.count(chw) != len(shapes):
        i = next(i for i, shape in enumerate(shapes) if shape != chw)
        raise DataError(
            f"{source}: Datum {i} of the batch is "
            f"{'x'.join(map(str, shapes[i]))}, the first is "
            f"{'x'.join(map(str, chw))}; every record must have the same shape"
        )
    n, size = len(datums), int(np.prod(chw))
    if first.data:
        joined = b"".join(d.data for d in datums)
        if len(joined) != n * size:
            raise DataError(
                f"{source}: a Datum's data has the wrong length for "
                f"{'x'.join(map(str, chw))}"
            )
        return np.frombuffer(joined, np.uint8).reshape(n, *chw), labels
    flat = np.concatenate([np.asarray(d.float_data, F32) for d in datums])
    if flat.size != n * size:
        raise DataError(
            f"{source}: a Datum's float_data has the wrong length for "
            f"{'x'.join(map(str, chw))} (and no uint8 data)"
        )
    return flat.reshape(n, *chw), labels


def datum_bytes(image: npt.NDArray[np.uint8], label: int) -> bytes:
    """One uint8 Datum (CxHxW, or HxW as 1xHxW) with its label, serialized as
    Caffe's converters write it: channels, height, width, data, label."""
    chw = image if image.ndim == 3 else image[None]
    d = caffe_pb2.Datum()
    d.channels, d.height, d.width = chw.shape
    d.data = chw.tobytes()
    d.label = int(label)
    return d.SerializeToString()


def mnist_datum_bytes(image: npt.NDArray[np.uint8], label: int) -> bytes:
    """One Datum as convert_mnist_data.cpp serializes it (1xHxW uint8, label)."""
    return datum_bytes(image, label)


def write_lmdb(
    path: str | os.PathLike[str], batches: Iterable[list[tuple[bytes, bytes]]]
) -> None:
    """A new LMDB at `path` (a folder that is empty or absent), one
    transaction per batch of (key, value). The map starts at 64 MiB and
    doubles when full, as db_lmdb.cpp's DoubleMapSize (LMDB files are sparse:
    only what is written takes disk space). A failed write (a full disk) is a
    DataError saying how much room is left."""
    lmdb = _lmdb()
    try:
        _write_batches(lmdb, path, batches)
    except lmdb.Error as e:
        free = shutil.disk_usage(path).free
        raise DataError(
            f"{path}: cannot write the LMDB ({e}; {free} bytes free on its disk)"
        ) from None


def _write_batches(
    lmdb: Any,
    path: str | os.PathLike[str],
    batches: Iterable[list[tuple[bytes, bytes]]],
) -> None:
    env = lmdb.open(str(path), map_size=64 << 20, subdir=True)
    try:
        for batch in batches:
            while True:
                try:
                    with env.begin(write=True) as txn:
                        for key, value in batch:
                            txn.put(key, value)
                    break
                except lmdb.MapFullError:
                    env.set_mapsize(2 * env.info()["map_size"])
        env.sync(True)
    finally:
        env.close()


def write_datum_lmdb(
    path: str | os.PathLike[str],
    images: npt.NDArray[np.uint8],
    labels: npt.NDArray[np.uint8],
) -> None:
    """A new LMDB at `path` with keys "%08d" and 1xHxW Datums (convert_mnist_data,
    which commits every 1000 records)."""
    n, step = int(images.shape[0]), 1000
    batches = (
        [
            (f"{i:08d}".encode(), mnist_datum_bytes(images[i], labels[i]))
            for i in range(start, min(n, start + step))
        ]
        for start in range(0, n, step)
    )
    write_lmdb(path, batches)


def lmdb_values(path: str | os.PathLike[str], where: str = "") -> Iterator[bytes]:
    """Every value once, in key order (compute_image_mean's loop)."""
    prefix = f"{where}: " if where else ""
    shared = _SharedEnv.get(str(path), prefix)
    try:
        with shared.env.begin(buffers=False) as txn:
            for _, value in txn.cursor():
                yield bytes(value)
    except _lmdb().Error as e:
        raise damaged(str(path), prefix, f"cannot read ({e})") from None


def lmdb_exists(path: str | os.PathLike[str]) -> bool:
    """True if `path` looks like an LMDB directory (holds data.mdb)."""
    return (Path(path) / "data.mdb").is_file()
