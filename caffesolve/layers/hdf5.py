"""HDF5 layers: HDF5Data reads .h5 files, HDF5Output writes them
(hdf5_data_layer.cpp, hdf5_output_layer.cpp; the `hdf5` extra, h5py)."""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from caffesolve import files
from caffesolve.blob import Blob
from caffesolve.errors import DataError, ShapeError
from caffesolve.layers import register
from caffesolve.layers.base import Layer
from caffesolve.log import LOG
from caffesolve.proto import caffe_pb2
from caffesolve.weights import is_hdf5


def h5py_module(where: str) -> Any:
    """The h5py module, or a DataError naming the extra to install."""
    try:
        import h5py
    except ModuleNotFoundError:
        raise DataError(
            f"{where}: HDF5 layers need the `h5py` package: "
            "pip install 'caffesolve[hdf5]'"
        ) from None
    return h5py


# -- HDF5Data ---------------------------------------------------------------------


def read_hdf5_list(source: str, where: str) -> list[str]:
    """The .h5 file names listed in `source` (whitespace separated, as Caffe).

    A relative name is taken from the current folder, as Caffe does; if no file
    is there, from the list file's own folder.
    """
    p = Path(source)
    if is_hdf5(p) and p.is_file():
        raise DataError(
            f"{where}: hdf5_data_param.source {source} is an HDF5 file itself; "
            "source must be a text file listing .h5 files, one per line (e.g. "
            f"a file holding the line {source})"
        )
    try:
        names = p.read_text().split()
    except (OSError, UnicodeDecodeError) as e:
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
    h5py = h5py_module(where)
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
        """Load file `index` (on an error the layer's state is unchanged)."""
        filename = self.filenames[int(index)]
        blobs = load_hdf5_file(filename, self.tops, self.where())
        shapes = [a.shape[1:] for a in blobs]
        first = getattr(self, "row_shapes", shapes)
        for name, shape, want in zip(self.tops, shapes, first):
            if shape != want:  # Caffe would copy the wrong number of values
                raise DataError(
                    f"{self.where()}: {filename}: dataset {name} has rows of "
                    f"{'x'.join(map(str, shape))}, the first file's have "
                    f"{'x'.join(map(str, want))}; every file listed in "
                    f"{self.layer_param.hdf5_data_param.source} needs the same"
                )
        self.row_shapes = first
        self.hdf_blobs = blobs
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
            # Moved to the next file only once it loaded: a file that fails
            # leaves a state that a snapshot can save and resume from.
            current, order = self.current_file + 1, self.file_permutation
            if current == len(self.filenames):
                current = 0
                if self.shuffle:
                    order = self.shuffle_rng.permutation(len(self.filenames))
            self._load(order[current], reshuffle=True)
            self.current_file, self.file_permutation = current, order
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


# -- HDF5Output ---------------------------------------------------------------------

# HDF5_DATA_DATASET_NAME and HDF5_DATA_LABEL_NAME (hdf5_output_layer.hpp)
DATA_DATASET, LABEL_DATASET = "data", "label"
# Room HDF5Output keeps free beyond twice a batch: chunk and metadata growth.
ROOM_MARGIN = 2 << 20  # two chunks of up to 1 MiB (h5py's largest guess)


def legacy_shape(blob: Blob, where: str) -> tuple[int, int, int, int]:
    """(num, channels, height, width) of a blob of at most 4 axes, missing axes
    1 (Caffe's LegacyShape, which refuses more than 4)."""
    if blob.num_axes > 4:
        raise ShapeError(
            f"{where}: HDF5Output writes blobs of at most 4 axes (Caffe's "
            f"num/channels/height/width); '{blob.name}' is {blob.shape_string()}"
        )
    dims = list(blob.shape) + [1] * (4 - blob.num_axes)
    return dims[0], dims[1], dims[2], dims[3]


def _close(file: Any) -> None:
    if file.id.valid:
        file.close()


@register
class HDF5OutputLayer(Layer):
    """Caffe's HDF5Output (hdf5_output_layer.cpp): writes its two bottoms to
    hdf5_output_param.file_name as float datasets "data" and "label", each
    shaped (num, channels, height, width) (a label (N,) is stored (N,1,1,1)).

    The file is created (truncated) at setup, as H5Fcreate(H5F_ACC_TRUNC).
    Caffe's first forward makes the two datasets and a second forward fails
    (the datasets exist); here each further forward appends its rows, so a
    TEST net run for many iterations keeps every batch. The file is flushed
    after each forward and closed with the layer (`close()`). A batch that
    might not fit on the disk is refused with an error before anything is
    written (the HDF5 library crashes the process when a write fails on a
    full disk), so the rows already saved stay readable.
    """

    type = "HDF5Output"
    exact_num_bottom_blobs = 2
    exact_num_top_blobs = 0

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        h5py = h5py_module(self.where())
        self.file_name = self.layer_param.hdf5_output_param.file_name
        if not self.file_name:
            raise self.config_error("hdf5_output_param.file_name is required")
        try:
            self.file = h5py.File(self.file_name, "w")
        except OSError as e:
            raise DataError(
                f"{self.where()}: Failed to open HDF5 file {self.file_name} ({e})"
            ) from None
        self._finalizer = weakref.finalize(self, _close, self.file)

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        """No tops (Caffe: no-op)."""

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        """Append bottom[0] to "data" and bottom[1] to "label" (Caffe's SaveBlobs)."""
        data_shape = legacy_shape(bottom[0], self.where())
        label_shape = legacy_shape(bottom[1], self.where())
        if data_shape[0] != label_shape[0]:
            raise self.shape_error(
                "data blob and label blob must have the same batch size "
                f"({data_shape[0]} and {label_shape[0]})"
            )
        LOG.info("hdf5_output_layer.cpp:40", f"Saving HDF5 file {self.file_name}")
        self._check_room(bottom)
        for name, blob, shape in (
            (DATA_DATASET, bottom[0], data_shape),
            (LABEL_DATASET, bottom[1], label_shape),
        ):
            rows = np.asarray(blob.data, np.float32).reshape(shape)
            if name not in self.file:
                self.file.create_dataset(
                    name, data=rows, maxshape=(None, *shape[1:]), chunks=True
                )
                continue
            ds = self.file[name]
            if ds.shape[1:] != shape[1:]:
                raise self.shape_error(
                    f"bottom '{blob.name}' is "
                    f"{'x'.join(map(str, shape))}, earlier batches in "
                    f"{self.file_name} were {'x'.join(map(str, ds.shape[1:]))} per row"
                )
            start = ds.shape[0]
            ds.resize(start + shape[0], axis=0)
            ds[start:] = rows
        self.file.flush()
        LOG.info("hdf5_output_layer.cpp:46", f"Successfully saved {data_shape[0]} rows")

    def _check_room(self, bottom: list[Blob]) -> None:
        """Refuse a batch unless the disk holds twice its bytes and a margin
        for HDF5's chunks and metadata (ROOM_MARGIN)."""
        need = 2 * sum(b.count * 4 for b in bottom) + ROOM_MARGIN
        folder = Path(self.file_name).resolve().parent
        free = files.free_bytes(folder)
        if free < need:
            raise DataError(
                f"{self.where()}: {self.file_name}: not enough disk space for the "
                f"next batch ({need} bytes wanted, {free} free); the rows saved so "
                "far are in the file. Free some space or write to another disk "
                "(hdf5_output_param.file_name)."
            )

    def close(self) -> None:
        """Close the file (also done when the layer is dropped)."""
        self._finalizer()
