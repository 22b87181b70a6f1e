"""Data layers: Input (deploy nets), Data (LMDB, LevelDB), DummyData,
MemoryData, and WindowData's refusal. (HDF5Data, HDF5Output: hdf5.py;
ImageData: image_data.py.)"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import numpy.typing as npt
from google.protobuf.message import Message

from caffesolve.blob import Blob
from caffesolve.data.db import Cursor, backend_at, open_cursor
from caffesolve.data.lmdb_source import decode_datums
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


# -- Data (LMDB, LevelDB) --------------------------------------------------------


def missing_source_hint(source: str) -> str:
    """The command that creates `source`, for the databases caffesolve can make."""
    from caffesolve.data.datasets import dataset_command

    command = dataset_command(source)
    return f"; create it with: {command}" if command else ""


def effective_transform_param(
    param: caffe_pb2.LayerParameter, legacy: Message | None = None
) -> caffe_pb2.TransformationParameter:
    """transform_param, plus the deprecated scale / mean_file / crop_size /
    mirror of data_param (or `legacy`: image_data_param) that Caffe's upgrade
    moves into it."""
    tp = caffe_pb2.TransformationParameter()
    tp.CopyFrom(param.transform_param)
    dp = param.data_param if legacy is None else legacy
    for field in ("scale", "mean_file", "crop_size", "mirror"):
        if dp.HasField(field) and not tp.HasField(field):
            setattr(tp, field, getattr(dp, field))
    return tp


@dataclass
class Batch:
    data: npt.NDArray[np.float32]
    label: npt.NDArray[np.float32]
    state: dict[str, Any]  # the reader's state after this batch


class BatchLoader(Protocol):
    """Reads one batch (on the prefetch thread when there is one): with
    solver_count > 1 only this rank's records of the next solver_count x
    batch_size (Layer.shard), its state the same on every rank."""

    solver_rank: int
    solver_count: int

    def load(self) -> Batch: ...
    def state(self) -> dict[str, Any]: ...
    def restore(self, state: dict[str, Any]) -> None: ...


class BasePrefetchingDataLayer(Layer):
    """Caffe's BasePrefetchingDataLayer (base_data_layer.cpp): forward hands
    out the next batch of `self.loader`, read then, or loaded ahead by one
    background thread when data_param.prefetch is set in the prototxt.

    Data does not prefetch by default, because it does not pay for Datums: reading,
    decoding and scaling a LeNet batch of 64 takes ~0.3 ms, about 1% of a
    LeNet iteration on CPU, and bench_data.py measures the same ms per
    iteration with and without the thread (also for PNG-encoded datums: the
    GIL serialises the decode with the net). Both give identical batches.
    get_state() is the loader's state as of the last batch handed out, so
    resume is bit-exact either way. Subclasses set `self.loader` and
    `self.output_labels` in layer_setup, then call `start_loading()`.
    """

    loader: BatchLoader
    output_labels: bool
    # Caffe's default, data_param.prefetch: 4, when the prototxt sets none
    prefetch_by_default: ClassVar[bool] = False

    def start_loading(self) -> None:
        self.consumed_state = self.loader.state()
        self.prefetcher: Prefetcher | None = None
        self._start_prefetch()

    def _start_prefetch(self) -> None:
        dp = self.layer_param.data_param
        asked = dp.HasField("prefetch") or self.prefetch_by_default
        depth = dp.prefetch if asked else 0
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
        """The loader's state after the last batch handed out."""
        return dict(self.consumed_state)

    def set_state(self, state: dict[str, Any]) -> None:
        """Go back to a saved state (drops prefetched batches)."""
        self._stop_prefetch()
        self.loader.restore(state)
        self.consumed_state = self.loader.state()
        self._start_prefetch()

    def shard(self, solver_rank: int, solver_count: int) -> None:
        """Caffe's DataLayer::Skip: rank r of N keeps records r, r+N, ... of
        each run of N x batch_size; the loader passes all of them, so every
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


class _DatumBatchLoader:
    """Reads, decodes and transforms one batch of Datums."""

    def __init__(
        self, cursor: Cursor, transformer: DataTransformer, batch_size: int
    ) -> None:
        self.cursor = cursor
        self.transformer = transformer
        self.batch_size = batch_size
        self.solver_rank, self.solver_count = 0, 1  # Layer.shard

    def state(self) -> dict[str, Any]:
        """{"key": hex key of the next record, "rng": transformer Generator}."""
        return {
            "key": self.cursor.key().hex(),
            "rng": self.transformer.get_state(),
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.cursor.seek(bytes.fromhex(state["key"]))
        self.transformer.set_state(state["rng"])

    def load(self) -> Batch:
        values = self.cursor.read(self.batch_size, self.solver_count, self.solver_rank)
        tp = self.transformer.param
        data, label = decode_datums(
            values, self.cursor.path, tp.force_color, tp.force_gray, self.cursor.key_of
        )
        return Batch(self.transformer.transform(data), label, self.state())


@register
class DataLayer(BasePrefetchingDataLayer):
    """Caffe's Data layer (data_layer.cpp): Datum records of an LMDB, or of a
    LevelDB with the `leveldb` extra (data_param.backend).

    Tops: data (N, C, H, W) float32 after transform_param, and optionally label
    (N,). Records are read in key order and wrap at the end; with rand_skip,
    a random count in [0, rand_skip) of records is skipped at start.
    """

    type = "Data"
    exact_num_bottom_blobs = 0
    min_top_blobs = 1
    max_top_blobs = 2

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        dp = self.layer_param.data_param
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
        backend = "lmdb" if dp.backend == caffe_pb2.DataParameter.LMDB else "leveldb"
        found = backend_at(dp.source)
        if found is not None and found != backend:
            default = "" if dp.HasField("backend") else " (Caffe's default)"
            raise self.config_error(
                f"data_param.backend is {backend.upper()}{default} but "
                f"{dp.source} is an {found.upper()}: add `backend: {found.upper()}` "
                "to data_param"
            )
        self.output_labels = len(top) > 1
        self.batch_size = int(dp.batch_size)
        self.cursor = open_cursor(dp.source, backend, self.where())
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
        self.start_loading()


# -- DummyData -----------------------------------------------------------------------


@register
class DummyDataLayer(Layer):
    """Caffe's DummyData (dummy_data_layer.cpp): tops filled by fillers.

    Shapes: dummy_data_param.shape, or the legacy num/channels/height/width;
    each given once (for every top) or once per top. Fillers: none (constant
    0), one for every top, or one per top. A constant filler fills its tops
    once, at setup; any other refills them on every forward.
    """

    type = "DummyData"
    exact_num_bottom_blobs = 0
    min_top_blobs = 1

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.layer_param.dummy_data_param
        num_top = len(top)
        fillers = list(p.data_filler)
        if len(fillers) not in (0, 1, num_top):
            raise self.config_error(
                "Number of data fillers must be 0, 1 or equal to the number of "
                f"tops: {num_top}; you specified {len(fillers)} data fillers."
            )
        legacy = ("num", "channels", "height", "width")
        if any(len(getattr(p, f)) for f in legacy):
            if len(p.shape):
                raise self.config_error(
                    "Both shape and legacy fields were specified (dummy_data_param)"
                )
            for f in legacy:
                n = len(getattr(p, f))
                if n not in (1, num_top):
                    raise self.config_error(
                        f"Must specify '{f}' once, or once per top blob "
                        f"({num_top}); specified {n}."
                    )
            shapes = [
                [
                    int(getattr(p, f)[0 if len(getattr(p, f)) == 1 else i])
                    for f in legacy
                ]
                for i in range(num_top)
            ]
        else:
            if len(p.shape) not in (1, num_top):
                raise self.config_error(
                    f"Must specify 'shape' once, or once per top blob "
                    f"({num_top}); specified {len(p.shape)}."
                )
            shapes = [
                list(p.shape[0 if len(p.shape) == 1 else i].dim) for i in range(num_top)
            ]
        if not fillers:
            fillers = [caffe_pb2.FillerParameter(type="constant", value=0)]
        self.fillers = fillers
        self.refill = [f.type != "constant" for f in fillers]
        for t, shape in zip(top, shapes):
            t.reshape(shape)
        for i, t in enumerate(top):  # the constant tops, once
            f = self.fillers[i if len(self.fillers) > 1 else 0]
            if f.type == "constant":
                self._fill(t, f)

    def _fill(self, blob: Blob, filler: caffe_pb2.FillerParameter) -> None:
        if blob.count:
            self.fill(blob, filler, "dummy_data_param.data_filler")

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        """Tops keep the shapes set at setup (Caffe: no-op)."""

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        """Refill the tops whose filler is not constant."""
        for i, t in enumerate(top):
            k = i if len(self.fillers) > 1 else 0
            if self.refill[k]:
                self._fill(t, self.fillers[k])


# -- MemoryData ----------------------------------------------------------------------


@register
class MemoryDataLayer(Layer):
    """Caffe's MemoryData (memory_data_layer.cpp): batches from arrays handed
    in from Python.

    `set_input_arrays(data, labels)` (pycaffe's Net.set_input_arrays) checks
    the arrays and hands them to `reset`; each forward then copies the next
    batch_size rows to the tops, wrapping after the last:
        top[0] = data[pos : pos + batch_size]     (batch_size, C, H, W)
        top[1] = labels[pos : pos + batch_size]   (batch_size, 1, 1, 1)
        pos = (pos + batch_size) % N
    The layer keeps the arrays themselves (no copy), as Caffe keeps pointers:
    change them in place and the next batches change. No transform_param is
    applied to arrays (Caffe warns if one is given). Before the first forward
    the label top is (batch_size,) as Caffe's setup shapes it.
    """

    type = "MemoryData"
    exact_num_bottom_blobs = 0
    exact_num_top_blobs = 2

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.layer_param.memory_data_param
        self.batch_size = int(p.batch_size)
        self.channels, self.height, self.width = (
            int(p.channels),
            int(p.height),
            int(p.width),
        )
        if self.batch_size * self.channels * self.height * self.width <= 0:
            raise self.config_error(
                "batch_size, channels, height, and width must be specified and "
                "positive in memory_data_param"
            )
        top[0].reshape([self.batch_size, self.channels, self.height, self.width])
        top[1].reshape([self.batch_size])
        self.data: npt.NDArray[np.float32] | None = None
        self.labels: npt.NDArray[np.float32] | None = None
        self.n = 0
        self.pos = 0

    def set_input_arrays(self, data: Any, labels: Any) -> None:
        """pycaffe's Net.set_input_arrays: `data` float32 C-contiguous
        (N, channels, height, width); `labels` float32 (N,) or (N, 1, 1, 1);
        N a multiple of batch_size. Raises ShapeError (pycaffe: RuntimeError)
        with pycaffe's messages."""
        labels = np.asarray(labels)
        if labels.ndim == 1:
            labels = np.ascontiguousarray(labels[:, None, None, None])
        expected = {"data array": (self.channels, self.height, self.width),
                    "labels array": (1, 1, 1)}  # fmt: skip
        for name, arr in (("data array", data), ("labels array", labels)):
            problem = None
            if not isinstance(arr, np.ndarray) or not arr.flags.c_contiguous:
                problem = "must be C contiguous"
            elif arr.ndim != 4:
                problem = "must be 4-d"
            elif arr.dtype != np.float32:
                problem = "must be float32"
            else:
                for axis, what in (
                    (1, "number of channels"),
                    (2, "height"),
                    (3, "width"),
                ):
                    if arr.shape[axis] != expected[name][axis - 1]:
                        problem = f"has wrong {what}"
                        break
            if problem:
                raise self.shape_error(
                    f"{name} {problem} (memory_data_param: "
                    f"{self.channels}x{self.height}x{self.width}; got "
                    f"{getattr(arr, 'dtype', type(arr).__name__)} "
                    f"{'x'.join(map(str, np.shape(arr)))})"
                )
        if data.shape[0] != labels.shape[0]:
            raise self.shape_error("data and labels must have the same first dimension")
        if data.shape[0] % self.batch_size:
            raise self.shape_error(
                "first dimensions of input arrays must be a multiple of batch "
                f"size ({self.batch_size})"
            )
        self.reset(data, labels.reshape(-1), data.shape[0])

    def reset(
        self, data: npt.NDArray[np.float32], labels: npt.NDArray[np.float32], n: int
    ) -> None:
        """Caffe's Reset: read batches from `data` and `labels` (n rows) from
        row 0, without a transformation."""
        if n % self.batch_size:
            raise self.shape_error("n must be a multiple of batch size")
        if self.layer_param.HasField("transform_param"):
            LOG.warning(
                "memory_data_layer.cpp:86",
                "MemoryData does not transform array data on Reset()",
            )
        self.data, self.labels, self.n, self.pos = data, labels, int(n), 0

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        """Tops are shaped in forward (Caffe's Forward_cpu)."""

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        if self.data is None or self.labels is None:
            raise DataError(
                f"{self.where()}: MemoryDataLayer needs to be initialized by "
                "calling Reset (set_input_arrays(data, labels) from Python)"
            )
        b, pos = self.batch_size, self.pos
        top[0].reshape([b, self.channels, self.height, self.width])
        top[1].reshape([b, 1, 1, 1])
        top[0].data[...] = self.data.reshape(self.n, -1)[pos : pos + b].reshape(
            top[0].shape
        )
        top[1].data[...] = self.labels[pos : pos + b].reshape(top[1].shape)
        self.pos = (pos + b) % self.n

    def get_state(self) -> dict[str, Any] | None:
        """The next row (the arrays themselves are the caller's)."""
        return {"pos": self.pos}

    def set_state(self, state: dict[str, Any]) -> None:
        self.pos = int(state["pos"])


# -- WindowData -----------------------------------------------------------------------


@register
class WindowDataLayer(Layer):
    """Caffe's WindowData (R-CNN's window files): not supported."""

    type = "WindowData"

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        raise self.config_error(
            "WindowData (R-CNN window files) is not supported by caffesolve; "
            "crop the windows to image files and list them for an ImageData "
            "layer, or write them to an LMDB with `caffesolve data images`"
        )
