"""Data layers: Input (deploy nets), Data (LMDB) and HDF5Data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from caffesolve.blob import Blob
from caffesolve.data.lmdb_source import LMDBCursor, decode_datums, lmdb_exists
from caffesolve.data.prefetch import Prefetcher
from caffesolve.data.transformer import DataTransformer
from caffesolve.errors import DataError
from caffesolve.layers import register
from caffesolve.layers.base import Layer
from caffesolve.log import LOG
from caffesolve.proto import caffe_pb2


@register
class InputLayer(Layer):
    """Caffe's Input: tops shaped by input_param.shape, filled by the user.

    One shape gives every top that shape; otherwise one shape per top
    (input_layer.cpp).
    """

    type = "Input"
    exact_num_bottom_blobs = 0
    min_top_blobs = 1

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        shapes = self.layer_param.input_param.shape
        if len(shapes) not in (0, 1, len(top)):
            raise self.config_error(
                "input_param.shape must be given once, or once per top "
                f"({len(top)} tops, {len(shapes)} shapes)"
            )
        for i, t in enumerate(top):
            if shapes:
                t.reshape(list(shapes[0 if len(shapes) == 1 else i].dim))

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        """Tops keep whatever shape they were given (Caffe: no-op)."""

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        """Tops hold what the caller put there."""


# -- Data (LMDB) ------------------------------------------------------------------


def missing_source_hint(source: str) -> str:
    """The command that creates `source`, for the databases caffesolve can make."""
    from caffesolve.data.datasets import DATASETS

    p = Path(source)
    for name, ds in DATASETS.items():
        if p.name in (ds.lmdb_name("train"), ds.lmdb_name("test")):
            parent = str(p.parent) if str(p.parent) else "."
            return f"; create it with: caffesolve data {name} --out {parent}"
    return ""


def effective_transform_param(
    param: caffe_pb2.LayerParameter,
) -> caffe_pb2.TransformationParameter:
    """transform_param, plus the deprecated data_param scale / mean_file /
    crop_size / mirror that Caffe's upgrade moves into it."""
    tp = caffe_pb2.TransformationParameter()
    tp.CopyFrom(param.transform_param)
    dp = param.data_param
    for field in ("scale", "mean_file", "crop_size", "mirror"):
        if dp.HasField(field) and not tp.HasField(field):
            setattr(tp, field, getattr(dp, field))
    return tp


@dataclass
class _Batch:
    data: npt.NDArray[np.float32]
    label: npt.NDArray[np.float32]
    state: dict[str, Any]  # the reader's state after this batch


class _DatumBatchLoader:
    """Reads, decodes and transforms one batch (runs on the prefetch thread)."""

    def __init__(
        self, cursor: LMDBCursor, transformer: DataTransformer, batch_size: int
    ) -> None:
        self.cursor = cursor
        self.transformer = transformer
        self.batch_size = batch_size
        # This rank's share of the records (Layer.shard): every
        # solver_count-th one from solver_rank.
        self.solver_rank = 0
        self.solver_count = 1

    def state(self) -> dict[str, Any]:
        return {
            "key": self.cursor.key().hex(),
            "rng": self.transformer.get_state(),
        }

    def load(self) -> _Batch:
        values = self.cursor.read(self.batch_size, self.solver_count, self.solver_rank)
        tp = self.transformer.param
        data, label = decode_datums(
            values, self.cursor.path, tp.force_color, tp.force_gray
        )
        return _Batch(self.transformer.transform(data), label, self.state())


@register
class DataLayer(Layer):
    """Caffe's Data layer with backend LMDB (data_layer.cpp, base_data_layer.cpp).

    Tops: data (N, C, H, W) float32 after transform_param, and optionally label
    (N,). Records are read in key order and wrap at the end; with rand_skip,
    a random count in [0, rand_skip) of records is skipped at start.

    Batches are read in forward() unless data_param.prefetch is set in the
    prototxt: then one background thread loads that many batches ahead, as
    Caffe always does. Not by default, because it does not pay here: reading,
    decoding and scaling a LeNet batch of 64 takes ~0.3 ms, about 1% of a
    LeNet iteration on CPU, and bench_data.py measures the same ms per
    iteration with and without the thread (also for PNG-encoded datums: the
    GIL serialises the decode with the net). Both give identical batches.
    get_state() is the cursor and the transformer's Generator as of the last
    batch handed out, so resume is bit-exact either way.
    """

    type = "Data"
    exact_num_bottom_blobs = 0
    min_top_blobs = 1
    max_top_blobs = 2

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        dp = self.layer_param.data_param
        if dp.backend != caffe_pb2.DataParameter.LMDB:
            hint = (
                f" ({dp.source} is an LMDB: add `backend: LMDB` to data_param)"
                if lmdb_exists(dp.source)
                else "; convert the database to LMDB (e.g. with Caffe's "
                "convert_imageset --backend=lmdb, or `caffesolve data mnist`)"
            )
            raise self.config_error(
                f"data_param.backend LEVELDB is not supported{hint}"
            )
        if not dp.source:
            raise self.config_error("data_param.source is required")
        if dp.batch_size <= 0:
            raise self.config_error("data_param.batch_size must be positive")
        if not Path(dp.source).exists():
            raise DataError(
                f"{self.where()}: data_param.source {dp.source} does not exist "
                f"(relative paths are from the current folder, {Path.cwd()})"
                + missing_source_hint(dp.source)
            )
        self.output_labels = len(top) > 1
        self.batch_size = int(dp.batch_size)
        self.cursor = LMDBCursor(dp.source, self.where())
        # The transformer's Generator is seeded from the layer's, as Caffe's
        # InitRand seeds it from caffe_rng_rand().
        seed = int(self.rng.integers(0, 2**63))
        self.transformer = DataTransformer(
            effective_transform_param(self.layer_param),
            self.phase,
            np.random.default_rng(seed),
            self.where(),
        )
        if dp.rand_skip:
            skip = int(self.rng.integers(0, dp.rand_skip))
            LOG.info("data_reader.cpp:94", f"Skipping first {skip} data points.")
            self.cursor.skip(skip)
        first, _ = decode_datums(
            [self.cursor.value()],
            dp.source,
            self.transformer.param.force_color,
            self.transformer.param.force_gray,
        )
        shape = self.transformer.infer_blob_shape(*first.shape[1:])
        shape[0] = self.batch_size
        top[0].reshape(shape)
        LOG.info("data_layer.cpp:45", f"output data size: {','.join(map(str, shape))}")
        if self.output_labels:
            top[1].reshape([self.batch_size])
        self.loader = _DatumBatchLoader(self.cursor, self.transformer, self.batch_size)
        self.consumed_state = self.loader.state()
        self.prefetcher: Prefetcher | None = None
        self._start_prefetch()

    def _start_prefetch(self) -> None:
        # Only when asked for: Caffe's default (prefetch: 4) is not followed,
        # benchmarks/bench_data.py measures no gain on CPU (see DataLayer).
        dp = self.layer_param.data_param
        depth = dp.prefetch if dp.HasField("prefetch") else 0
        if depth > 0:
            self.prefetcher = Prefetcher(self, self.loader.load, depth)

    def _stop_prefetch(self) -> None:
        if self.prefetcher is not None:
            self.prefetcher.stop()
            self.prefetcher = None

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        """Tops are shaped by each batch in forward (Caffe's Forward_cpu)."""

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        """Hand out the next batch (prefetched, or read now)."""
        if self.prefetcher is not None:
            batch = self.prefetcher.pop()
        else:
            batch = self.loader.load()
        top[0].reshape(batch.data.shape)
        np.copyto(top[0].data, batch.data, casting="same_kind")
        if self.output_labels:
            top[1].reshape(batch.label.shape)
            np.copyto(top[1].data, batch.label, casting="same_kind")
        self.consumed_state = batch.state

    def get_state(self) -> dict[str, Any] | None:
        """{"key": hex key of the next record, "rng": transformer Generator}."""
        return dict(self.consumed_state)

    def set_state(self, state: dict[str, Any]) -> None:
        """Go back to a saved cursor and Generator (drops prefetched batches)."""
        self._stop_prefetch()
        self.cursor.seek(bytes.fromhex(state["key"]))
        self.transformer.set_state(state["rng"])
        self.consumed_state = self.loader.state()
        self._start_prefetch()

    def shard(self, solver_rank: int, solver_count: int) -> None:
        """Caffe's DataLayer::Skip: rank r of N keeps records r, r+N, ... of
        each run of N x batch_size; the cursor passes all of them, so every
        rank's get_state() is the same (the start of the next run). TEST nets
        run on rank 0 only and read every record."""
        if self.phase == caffe_pb2.TEST:
            return
        self.loader.solver_rank = solver_rank
        self.loader.solver_count = solver_count
        self.set_state(self.get_state())  # drop batches prefetched unsharded

    def close(self) -> None:
        """Stop the prefetch thread (also done when the layer is dropped)."""
        self._stop_prefetch()


# -- HDF5Data ---------------------------------------------------------------------


def read_hdf5_list(source: str, where: str) -> list[str]:
    """The .h5 file names listed in `source` (whitespace separated, as Caffe).

    A relative name is taken from the current folder, as Caffe does; if no file
    is there, from the list file's own folder.
    """
    p = Path(source)
    try:
        names = p.read_text().split()
    except OSError as e:
        raise DataError(
            f"{where}: Failed to open source file: {source} "
            f"({e.strerror or e}; hdf5_data_param.source is a text file listing "
            ".h5 files)"
        ) from None
    if not names:
        raise DataError(
            f"{where}: Must have at least 1 HDF5 filename listed in {source}"
        )
    out = []
    for name in names:
        if not Path(name).is_absolute() and not Path(name).exists():
            beside = p.parent / name
            if beside.exists():
                name = str(beside)
        out.append(name)
    return out


def load_hdf5_file(
    filename: str, tops: list[str], where: str
) -> list[npt.NDArray[np.float32]]:
    """The datasets named like the tops, as float32 (Caffe's LoadHDF5FileData)."""
    try:
        import h5py
    except ModuleNotFoundError:
        raise DataError(
            f"{where}: HDF5Data needs the `h5py` package: "
            "pip install 'caffesolve[hdf5]'"
        ) from None

    try:
        f = h5py.File(filename, "r")
    except OSError as e:
        raise DataError(
            f"{where}: Failed opening HDF5 file: {filename} ({e})"
        ) from None
    with f:
        arrays = []
        for name in tops:
            if name not in f or not isinstance(f[name], h5py.Dataset):
                raise DataError(
                    f"{where}: {filename}: Failed to find HDF5 dataset {name} "
                    f"(it has: {', '.join(sorted(f.keys()))})"
                )
            ds = f[name]
            if ds.dtype.kind not in "fiub" or ds.ndim < 1:
                raise DataError(
                    f"{where}: {filename}: dataset {name} must be a numeric array "
                    f"with at least 1 axis (got {ds.dtype}, {ds.ndim} axes)"
                )
            arrays.append(np.asarray(ds[()], dtype=np.float32))
    num = arrays[0].shape[0]
    for name, a in zip(tops, arrays):
        if a.shape[0] != num:
            raise DataError(
                f"{where}: {filename}: dataset {name} has {a.shape[0]} rows, "
                f"{tops[0]} has {num}; every top needs the same number"
            )
    if num == 0:
        raise DataError(f"{where}: {filename}: the datasets have no rows")
    return arrays


@register
class HDF5DataLayer(Layer):
    """Caffe's HDF5Data (hdf5_data_layer.cpp): one top per dataset of that name.

    hdf5_data_param.source lists .h5 files; each is loaded whole, its rows are
    handed out batch_size at a time, then the next file, wrapping to the first.
    With shuffle, the file order is shuffled at start and at each wrap, and the
    row order of a file each time it is (re)started; a file's rows all come out
    before the next file's. No transform_param (Caffe refuses it).
    """

    type = "HDF5Data"
    exact_num_bottom_blobs = 0
    min_top_blobs = 1

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.layer_param.hdf5_data_param
        if self.layer_param.HasField("transform_param"):
            raise self.config_error(
                "HDF5Data does not transform data (transform_param)"
            )
        if p.batch_size <= 0:
            raise self.config_error("hdf5_data_param.batch_size must be positive")
        LOG.info(
            "hdf5_data_layer.cpp:78", f"Loading list of HDF5 filenames from: {p.source}"
        )
        self.filenames = read_hdf5_list(p.source, self.where())
        LOG.info(
            "hdf5_data_layer.cpp:91", f"Number of HDF5 files: {len(self.filenames)}"
        )
        self.tops = list(self.layer_param.top)
        self.shuffle = bool(p.shuffle)
        self.shuffle_rng = np.random.default_rng(int(self.rng.integers(0, 2**63)))
        n = len(self.filenames)
        self.file_permutation = (
            self.shuffle_rng.permutation(n) if self.shuffle else np.arange(n)
        )
        self.current_file = 0
        self.solver_rank, self.solver_count = 0, 1  # Layer.shard
        self._load(self.file_permutation[0], reshuffle=True)
        for t, a in zip(top, self.hdf_blobs):
            t.reshape([p.batch_size, *a.shape[1:]])

    def _load(self, index: int, reshuffle: bool) -> None:
        self.hdf_blobs = load_hdf5_file(
            self.filenames[int(index)], self.tops, self.where()
        )
        rows = self.hdf_blobs[0].shape[0]
        self.data_permutation = (
            self.shuffle_rng.permutation(rows)
            if self.shuffle and reshuffle
            else np.arange(rows)
        )
        self.current_row = 0

    def _next_file(self) -> None:
        """Caffe's Next at the end of a file: next file (reshuffled at the wrap)."""
        if len(self.filenames) > 1:
            self.current_file += 1
            if self.current_file == len(self.filenames):
                self.current_file = 0
                if self.shuffle:
                    self.file_permutation = self.shuffle_rng.permutation(
                        len(self.filenames)
                    )
            self._load(self.file_permutation[self.current_file], reshuffle=True)
        else:
            self.current_row = 0
            if self.shuffle:
                self.data_permutation = self.shuffle_rng.permutation(
                    self.data_permutation.size
                )

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        """Tops keep the shape set at setup."""

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        """Copy the next batch_size rows (whole slices of the permutation).

        Sharded (Layer.shard), rank r of N walks the next N x batch_size rows
        and copies those at positions r, r+N, ... (Caffe's Skip and Next).
        """
        batch_size = self.layer_param.hdf5_data_param.batch_size
        rank, count = self.solver_rank, self.solver_count
        walked = 0
        while walked < batch_size * count:
            rows = self.data_permutation.size
            take = min(batch_size * count - walked, rows - self.current_row)
            index = self.data_permutation[self.current_row : self.current_row + take]
            first = (rank - walked) % count  # this rank's first row in the slice
            mine = index[first::count]
            slot = (walked + first - rank) // count
            for t, a in zip(top, self.hdf_blobs):
                t.data[slot : slot + mine.size] = a[mine]
            walked += take
            self.current_row += take
            if self.current_row == rows:
                self._next_file()

    def shard(self, solver_rank: int, solver_count: int) -> None:
        """Caffe's HDF5DataLayer::Skip: rank r of N keeps rows r, r+N, ...
        (TEST nets run on rank 0 only and read every row)."""
        if self.phase != caffe_pb2.TEST:
            self.solver_rank, self.solver_count = solver_rank, solver_count

    def get_state(self) -> dict[str, Any] | None:
        """File order, current file and row, row order, shuffle Generator."""
        return {
            "file_permutation": self.file_permutation.tolist(),
            "current_file": self.current_file,
            "current_row": self.current_row,
            "data_permutation": self.data_permutation.tolist(),
            "rng": self.shuffle_rng.bit_generator.state,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self.file_permutation = np.asarray(state["file_permutation"], np.int64)
        self.current_file = int(state["current_file"])
        self._load(self.file_permutation[self.current_file], reshuffle=False)
        self.data_permutation = np.asarray(state["data_permutation"], np.int64)
        self.current_row = int(state["current_row"])
        self.shuffle_rng.bit_generator.state = state["rng"]
