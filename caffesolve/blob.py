"""Blob: Caffe's N-D array pair, `data` and `diff`, float32 like `caffe train`.

A blob's shape is its `data`'s shape. Layers that only change the view of a
blob (Flatten, Reshape) make their top's arrays views of their bottom's.

The same object is pycaffe's `caffe.Blob` (net.blobs['x']): `reshape(*dims)`,
`num` / `channels` / `height` / `width` and `count` as _caffe.cpp exposes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType

import numpy as np
import numpy.typing as npt

from caffesolve.errors import ShapeError
from caffesolve.proto import caffe_pb2

F32 = np.float32


class Blob:
    """`data` and `diff` arrays of one shape, plus an optional name."""

    def __init__(
        self,
        shape: Sequence[int] = (),
        name: str = "",
        dtype: type = F32,
        xp: ModuleType = np,
    ) -> None:
        # dtype is float32 in every net; gradient-check tests build float64
        # blobs, and layer code keeps whatever dtype its bottoms have. `xp`:
        # the array module of the net's backend (caffesolve.backend).
        self.name = name
        self.xp = xp
        shape = tuple(int(d) for d in shape)
        self.data: npt.NDArray[np.float32] = xp.zeros(shape, dtype)
        self.diff: npt.NDArray[np.float32] = xp.zeros(shape, dtype)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def count(self) -> int:
        return int(self.data.size)

    @property
    def num_axes(self) -> int:
        return self.data.ndim

    def legacy_shape(self, index: int) -> int:
        """Caffe's Blob::LegacyShape: dimension `index` of a blob of at most 4
        axes, 1 past the last axis (a 2-D blob's height and width are 1)."""
        n = self.num_axes
        if n > 4:
            raise ShapeError(
                f"blob '{self.name}' {self.shape_string()} has {n} axes; "
                "num/channels/height/width only exist for blobs of up to 4 axes "
                "(read .shape instead)"
            )
        if index >= n or index < -n:
            return 1
        return self.shape[index]

    @property
    def num(self) -> int:
        return self.legacy_shape(0)

    @property
    def channels(self) -> int:
        return self.legacy_shape(1)

    @property
    def height(self) -> int:
        return self.legacy_shape(2)

    @property
    def width(self) -> int:
        return self.legacy_shape(3)

    def shape_string(self) -> str:
        """Caffe's `Blob::shape_string`: '64 1 28 28 (50176)'."""
        return shape_string(self.shape)

    def canonical_axis_index(self, axis: int) -> int:
        """Caffe's CanonicalAxisIndex: a negative axis counts from the end."""
        n = self.num_axes
        if not -n <= axis < max(n, 1):
            raise ShapeError(
                f"axis {axis} out of range for a {n}-D blob of shape "
                f"{self.shape_string()}"
            )
        return axis % n if n else 0

    def count_range(self, start: int, end: int | None = None) -> int:
        """Product of the dimensions in [start, end) (Caffe's `count(a, b)`)."""
        return int(np.prod(self.shape[start:end], dtype=np.int64))

    def reshape(self, *dims: int | Sequence[int]) -> None:
        """Give the blob a shape, as one sequence (`reshape((2, 3))`) or as
        pycaffe's dimensions (`reshape(2, 3)`; `reshape()` makes it 0-d);
        arrays are reallocated only when the shape changes."""
        if len(dims) == 1 and not isinstance(dims[0], (int, np.integer)):
            dims = tuple(dims[0])  # type: ignore[arg-type]
        shape = tuple(int(d) for d in dims)  # type: ignore[arg-type]
        if any(d < 0 for d in shape):
            raise ShapeError(f"blob '{self.name}': negative dimension in {shape}")
        if shape != self.data.shape:
            self.data = self.xp.zeros(shape, self.data.dtype)
            self.diff = self.xp.zeros(shape, self.data.dtype)

    def reshape_like(self, other: Blob) -> None:
        self.reshape(other.shape)

    def share_data(self, other: Blob) -> None:
        self.data = other.data

    def share_diff(self, other: Blob) -> None:
        self.diff = other.diff

    def to_proto(self, write_diff: bool = False) -> caffe_pb2.BlobProto:
        """A BlobProto with `shape` and float `data` (and `diff` if asked)."""
        proto = caffe_pb2.BlobProto()
        proto.shape.dim.extend(self.shape)
        proto.data.extend(self.data.ravel().tolist())
        if write_diff:
            proto.diff.extend(self.diff.ravel().tolist())
        return proto

    def from_proto(self, proto: caffe_pb2.BlobProto, reshape: bool = True) -> None:
        """Load data (and diff) from `proto`, legacy 4-D fields or double too.

        With reshape=False the proto's shape must equal the blob's (Caffe's
        ShapeEquals, which accepts legacy num/channels/height/width).
        """
        shape = proto_shape(proto)
        if reshape:
            self.reshape(shape)
        elif not shape_equals(shape, self.shape):
            raise ShapeError(
                f"blob shape {' '.join(map(str, shape))} from file does not "
                f"match {self.shape_string()}"
            )
        count = self.count
        if len(proto.double_data):
            values = np.asarray(proto.double_data, np.float64)
        else:
            values = np.asarray(proto.data, np.float32)
        if values.size != count:
            raise ShapeError(
                f"blob has {values.size} values for shape {self.shape_string()}"
            )
        self.data[...] = values.reshape(self.shape)
        if len(proto.double_diff) == count:
            self.diff[...] = np.asarray(proto.double_diff).reshape(self.shape)
        elif len(proto.diff) == count:
            self.diff[...] = np.asarray(proto.diff, F32).reshape(self.shape)

    def __repr__(self) -> str:
        return f"Blob({self.name!r}, {self.shape_string()})"


def proto_shape(proto: caffe_pb2.BlobProto) -> tuple[int, ...]:
    """The shape a BlobProto describes, `shape` or legacy num/channels/h/w.

    With neither, Caffe reads a 0-axis blob (one value: PReLU's shared
    slope, a scalar Scale); caffesolve reads other such blobs as 1-D."""
    if proto.HasField("shape"):
        return tuple(int(d) for d in proto.shape.dim)
    if any(proto.HasField(f) for f in ("num", "channels", "height", "width")):
        return (proto.num, proto.channels, proto.height, proto.width)
    count = len(proto.data) or len(proto.double_data)
    return () if count == 1 else (count,)


def shape_string(shape: Sequence[int]) -> str:
    """Blob::shape_string for a bare shape: '10 500 (5000)'."""
    count = int(np.prod(shape, dtype=np.int64))
    return " ".join(str(d) for d in shape) + f" ({count})"


def shape_equals(file_shape: Sequence[int], shape: Sequence[int]) -> bool:
    """Caffe's Blob::ShapeEquals: legacy 4-D shapes match with leading 1s."""
    file_shape, shape = tuple(file_shape), tuple(shape)
    if file_shape == shape:
        return True
    if len(file_shape) == 4 and len(shape) <= 4:
        padded = (1,) * (4 - len(shape)) + shape
        return padded == file_shape
    return False
