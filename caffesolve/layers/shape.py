"""Shape and routing layers: Split, Flatten, Reshape, Concat (Caffe's
split, flatten, reshape and concat layers). Flatten and Reshape make their top a
view of the bottom; Split shares the bottom's data and sums the tops' diffs.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from caffesolve.blob import Blob
from caffesolve.errors import ShapeError
from caffesolve.layers import register
from caffesolve.layers.base import Layer

Array = npt.NDArray[np.float32]


@register
class SplitLayer(Layer):
    """Caffe's Split: every top shares the bottom's data; the bottom's diff is
    the sum of the tops' diffs (split_layer.cpp). The Net inserts one wherever
    a blob feeds several layers."""

    type = "Split"
    allow_in_place = False
    exact_num_bottom_blobs = 1
    min_top_blobs = 1

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        for t in top:
            t.reshape(bottom[0].shape)
            t.share_data(bottom[0])

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        for t in top:
            t.share_data(bottom[0])

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        if not propagate_down[0]:
            return
        out = bottom[0].diff
        out[...] = top[0].diff
        for t in top[1:]:
            out += t.diff


# -- view layers: Flatten, Reshape ------------------------------------------------


def share_view(bottom: Blob, top: Blob) -> None:
    """Make top's data and diff views of bottom's arrays in top's shape."""
    top.data = bottom.data.reshape(top.shape)
    top.diff = bottom.diff.reshape(top.shape)


def copy_back_diff(top: Blob, bottom: Blob) -> None:
    """Caffe's bottom->ShareDiff(*top): if a later layer replaced top's diff
    array, copy it into the bottom's (keeping the bottom's own sharing)."""
    if not np.shares_memory(top.diff, bottom.diff):
        bottom.diff[...] = top.diff.reshape(bottom.shape)


@register
class FlattenLayer(Layer):
    """Caffe's Flatten (flatten_layer.cpp): axes [axis, end_axis] merged into
    one; top's data and diff are views of the bottom's."""

    type = "Flatten"
    allow_in_place = False
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.layer_param.flatten_param
        b = bottom[0]
        try:
            start = b.canonical_axis_index(p.axis)
            end = b.canonical_axis_index(p.end_axis)
        except ShapeError as e:
            raise self.config_error(f"flatten_param.axis/end_axis: {e}") from None
        shape = b.shape[:start] + (b.count_range(start, end + 1),) + b.shape[end + 1 :]
        top[0].reshape(shape)
        share_view(b, top[0])

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        top[0].data = bottom[0].data.reshape(top[0].shape)

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        copy_back_diff(top[0], bottom[0])


def reshape_top_shape(
    bottom_shape: tuple[int, ...], dims: list[int], axis: int, num_axes: int
) -> tuple[int, ...]:
    """Caffe's Reshape rule (reshape_layer.cpp): bottom axes [axis, axis +
    num_axes) are replaced by `dims`, where 0 copies the bottom's dimension
    at the same place and one -1 is inferred from the count.

    Raises ValueError with Caffe's message when the rule cannot be met.
    """
    n = len(bottom_shape)
    start = axis if axis >= 0 else n + axis + 1
    if start < 0 or start > n:
        raise ValueError(f"axis {axis} out of range for {n}-D input blob")
    if num_axes < -1:
        raise ValueError("num_axes must be >= 0, or -1 for all")
    end = n if num_axes == -1 else start + num_axes
    if end > n:
        raise ValueError("end_axis = axis + num_axes is out of range")
    inferred = [i for i, d in enumerate(dims) if d == -1]
    if len(inferred) > 1:
        raise ValueError(
            "new shape contains multiple -1 dims; at most a single (1) value "
            "of -1 may be specified"
        )
    if any(d < -1 for d in dims):
        raise ValueError(f"shape dims must be >= -1 (got {dims})")
    shape = list(bottom_shape[:start]) + list(dims) + list(bottom_shape[end:])
    for i, d in enumerate(dims):
        if d == 0:
            if start + i >= n:
                raise ValueError(
                    "new shape contains a 0, but there was no corresponding "
                    "bottom axis to copy"
                )
            shape[start + i] = bottom_shape[start + i]
    count = int(np.prod(bottom_shape, dtype=np.int64))
    if inferred:
        shape[start + inferred[0]] = 1
        explicit = int(np.prod(shape, dtype=np.int64))
        if explicit == 0 or count % explicit:
            raise ValueError(
                f"bottom count ({count}) must be divisible by the product of "
                f"the specified dimensions ({explicit})"
            )
        shape[start + inferred[0]] = count // explicit
    if int(np.prod(shape, dtype=np.int64)) != count:
        raise ValueError(
            f"output count must match input count ({shape} holds "
            f"{int(np.prod(shape, dtype=np.int64))}, the bottom {count})"
        )
    return tuple(shape)


@register
class ReshapeLayer(Layer):
    """Caffe's Reshape: top gets reshape_param's shape (0 = copy, -1 =
    infer) over axes [axis, axis + num_axes); data and diff are shared."""

    type = "Reshape"
    allow_in_place = False
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.layer_param.reshape_param
        try:
            shape = reshape_top_shape(
                bottom[0].shape, list(p.shape.dim), p.axis, p.num_axes
            )
        except ValueError as e:
            raise ShapeError(
                f"{self.where()}: reshape_param: {e} (bottom '{bottom[0].name}' "
                f"{bottom[0].shape_string()})"
            ) from None
        top[0].reshape(shape)
        share_view(bottom[0], top[0])

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        top[0].data = bottom[0].data.reshape(top[0].shape)

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        copy_back_diff(top[0], bottom[0])


# -- Concat ----------------------------------------------------------------------------


@register
class ConcatLayer(Layer):
    """Caffe's Concat (concat_layer.cpp): bottoms joined along `axis` (or the
    legacy concat_dim); backward slices the top diff back."""

    type = "Concat"
    min_bottom_blobs = 1
    exact_num_top_blobs = 1

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.layer_param.concat_param
        if p.HasField("axis") and p.HasField("concat_dim"):
            raise self.config_error(
                "Either axis or concat_dim should be specified; not both."
            )

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.layer_param.concat_param
        b0 = bottom[0]
        if p.HasField("concat_dim"):
            self.axis = int(p.concat_dim)
            if self.axis >= b0.num_axes:
                raise self.config_error(
                    f"concat_param.concat_dim out of range ({self.axis} for "
                    f"bottom '{b0.name}' {b0.shape_string()})"
                )
        else:
            try:
                self.axis = b0.canonical_axis_index(p.axis)
            except ShapeError as e:
                raise self.config_error(f"concat_param.axis: {e}") from None
        shape = list(b0.shape)
        for i, b in enumerate(bottom[1:], 1):
            same = b.num_axes == b0.num_axes and all(
                b.shape[j] == b0.shape[j] for j in range(b0.num_axes) if j != self.axis
            )
            if not same:
                raise ShapeError(
                    f"{self.where()}: All inputs must have the same shape, except "
                    f"at concat_axis {self.axis}: bottom[0] '{b0.name}' "
                    f"{b0.shape_string()}, bottom[{i}] '{b.name}' {b.shape_string()}"
                )
            shape[self.axis] += b.shape[self.axis]
        top[0].reshape(shape)
        if len(bottom) == 1:
            share_view(b0, top[0])

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        if len(bottom) == 1:
            top[0].data = bottom[0].data.reshape(top[0].shape)
            return
        xp = self.xp
        xp.concatenate([b.data for b in bottom], axis=self.axis, out=top[0].data)

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        if len(bottom) == 1:
            copy_back_diff(top[0], bottom[0])
            return
        offset = 0
        index: list[slice] = [slice(None)] * top[0].num_axes
        for b, down in zip(bottom, propagate_down):
            size = b.shape[self.axis]
            if down:
                index[self.axis] = slice(offset, offset + size)
                b.diff[...] = top[0].diff[tuple(index)]
            offset += size
