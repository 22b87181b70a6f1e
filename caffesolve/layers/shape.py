"""Shape and routing layers: Split, Flatten, Reshape, Concat, Slice, Crop,
Tile and Silence (Caffe's split, flatten, reshape, concat, slice, crop, tile and
silence layers). Flatten and Reshape make their top a view of the bottom; Split
shares the bottom's data and sums the tops' diffs; the others copy with one
vectorised NumPy assignment per top.
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
        b = bottom[0]
        start = self.axis_index(b, "flatten_param.axis")
        end = self.axis_index(b, "flatten_param.end_axis")
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


def axis_or_legacy_dim(layer: Layer, blob: Blob, param: str, legacy: str) -> int:
    """Concat's and Slice's axis (concat_layer.cpp, slice_layer.cpp): the
    legacy uint32 field `legacy` (concat_dim, slice_dim) when set, which must
    be < the blob's axes, else `axis` (negative counts from the end); setting
    both is an error."""
    p = getattr(layer.layer_param, param)
    if not p.HasField(legacy):
        return layer.axis_index(blob, f"{param}.axis")
    if p.HasField("axis"):
        raise layer.config_error(
            f"{param}: Either axis or {legacy} should be specified; not both."
        )
    axis = int(getattr(p, legacy))
    if axis >= blob.num_axes:
        raise layer.config_error(
            f"{param}.{legacy} out of range ({axis} for bottom '{blob.name}' "
            f"{blob.shape_string()})"
        )
    return axis


@register
class ConcatLayer(Layer):
    """Caffe's Concat (concat_layer.cpp): bottoms joined along `axis` (or the
    legacy concat_dim); backward slices the top diff back."""

    type = "Concat"
    min_bottom_blobs = 1
    exact_num_top_blobs = 1

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        b0 = bottom[0]
        self.axis = axis_or_legacy_dim(self, b0, "concat_param", "concat_dim")
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


# -- Slice -----------------------------------------------------------------------------


def slice_sizes(size: int, num_tops: int, points: list[int]) -> list[int]:
    """Caffe's Slice rule (slice_layer.cpp): the sizes of the pieces that
    `points` (strictly increasing, each > 0) cut an axis of `size` into, or
    `num_tops` equal pieces when there are no points.

    Raises ValueError with Caffe's message when the rule cannot be met.
    """
    if not points:
        if size % num_tops:
            raise ValueError(
                f"Number of top blobs ({num_tops}) should evenly divide input "
                f"slice axis ({size})"
            )
        return [size // num_tops] * num_tops
    if len(points) != num_tops - 1:
        raise ValueError(
            f"slice_point: {len(points)} points for {num_tops} tops; give one "
            "point fewer than there are tops"
        )
    if num_tops > size:
        raise ValueError(f"{num_tops} tops cannot slice an axis of size {size}")
    sizes, prev = [], 0
    for p in points:
        if p <= prev:
            raise ValueError(
                f"slice_point must increase and be > 0: {p} after {prev} "
                f"(points {points})"
            )
        sizes.append(p - prev)
        prev = p
    if prev > size:
        raise ValueError(f"slice_point {prev} beyond the slice axis of size {size}")
    return sizes + [size - prev]


@register
class SliceLayer(Layer):
    """Caffe's Slice (slice_layer.cpp): the bottom cut along `axis` (or the
    legacy slice_dim) at `slice_point`s, or into equal pieces, one per top;
    backward copies each top's diff back into its piece. One top shares the
    bottom's data and diff."""

    type = "Slice"
    exact_num_bottom_blobs = 1
    min_top_blobs = 1

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.layer_param.slice_param
        b = bottom[0]
        self.axis = axis_or_legacy_dim(self, b, "slice_param", "slice_dim")
        try:
            sizes = slice_sizes(b.shape[self.axis], len(top), list(p.slice_point))
        except ValueError as e:
            raise self.config_error(
                f"slice_param: {e} (slice axis {self.axis} of bottom '{b.name}' "
                f"{b.shape_string()})"
            ) from None
        self.ranges: list[tuple[int, int]] = []
        start = 0
        for t, size in zip(top, sizes):
            shape = list(b.shape)
            shape[self.axis] = size
            t.reshape(shape)
            self.ranges.append((start, start + size))
            start += size
        if len(top) == 1:
            share_view(b, top[0])

    def _piece(self, num_axes: int, i: int) -> tuple[slice, ...]:
        """The index of top i's piece in the bottom."""
        index = [slice(None)] * num_axes
        index[self.axis] = slice(*self.ranges[i])
        return tuple(index)

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        b = bottom[0].data
        if len(top) == 1:
            top[0].data = b.reshape(top[0].shape)
            return
        for i, t in enumerate(top):
            t.data[...] = b[self._piece(b.ndim, i)]

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        if len(top) == 1:
            copy_back_diff(top[0], bottom[0])
            return
        if not propagate_down[0]:
            return
        diff = bottom[0].diff
        for i, t in enumerate(top):
            diff[self._piece(diff.ndim, i)] = t.diff


# -- Crop ------------------------------------------------------------------------------


@register
class CropLayer(Layer):
    """Caffe's Crop (crop_layer.cpp): bottom[0] cut to bottom[1]'s size in
    every axis from `axis` on, starting at `offset` (none: 0 everywhere; one:
    the same for every cropped axis; else one per cropped axis). Backward
    zeroes bottom[0]'s diff and copies the top's diff into the window;
    bottom[1] only gives the size and gets no diff."""

    type = "Crop"
    exact_num_bottom_blobs = 2
    exact_num_top_blobs = 1

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.layer_param.crop_param
        start = self.axis_index(bottom[0], "crop_param.axis")
        n = bottom[0].num_axes
        if len(p.offset) > 1 and start + len(p.offset) != n:
            raise self.config_error(
                "crop_param.offset: number of offset values specified must be "
                f"equal to the number of dimensions following axis ({len(p.offset)} "
                f"offsets for the {n - start} axes from axis {start} of bottom "
                f"'{bottom[0].name}' {bottom[0].shape_string()})"
            )

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.layer_param.crop_param
        data, ref = bottom
        start = self.axis_index(data, "crop_param.axis")
        if ref.num_axes < data.num_axes:
            raise self.shape_error(
                f"bottom[1] '{ref.name}' {ref.shape_string()} has fewer axes than "
                f"bottom[0] '{data.name}' {data.shape_string()}; the size blob "
                "needs every axis that is cropped"
            )
        shape, index = [], []
        for i, size in enumerate(data.shape):
            offset, new_size = 0, size
            if i >= start:
                new_size = ref.shape[i]
                if len(p.offset) == 1:
                    offset = int(p.offset[0])
                elif len(p.offset) > 1:
                    offset = int(p.offset[i - start])
                if size - offset < new_size:
                    raise self.config_error(
                        f"crop_param: the crop for dimension {i} is out-of-bounds "
                        f"with size {new_size} and offset {offset} (bottom[0] "
                        f"'{data.name}' {data.shape_string()}, bottom[1] "
                        f"'{ref.name}' {ref.shape_string()}); the crop must fit "
                        "inside bottom[0]"
                    )
            shape.append(new_size)
            index.append(slice(offset, offset + new_size))
        self.window = tuple(index)
        top[0].reshape(shape)

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        top[0].data[...] = bottom[0].data[self.window]

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        if propagate_down[0]:
            diff = bottom[0].diff
            diff[...] = 0
            diff[self.window] = top[0].diff


# -- Tile ------------------------------------------------------------------------------


@register
class TileLayer(Layer):
    """Caffe's Tile (tile_layer.cpp): top repeats the bottom `tiles` times
    along `axis` (each block of axes [axis, end) copied whole, as np.tile on
    that axis); backward sums the copies' diffs, first to last."""

    type = "Tile"
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.layer_param.tile_param
        b = bottom[0]
        axis = self.axis_index(b, "tile_param.axis")
        if not p.HasField("tiles"):
            raise self.config_error(
                "tile_param.tiles: Number of tiles must be specified"
            )
        if p.tiles <= 0:
            raise self.config_error(
                f"tile_param.tiles: Number of tiles must be positive (got {p.tiles})"
            )
        self.tiles = int(p.tiles)
        self.outer = b.count_range(0, axis)
        self.inner = b.count_range(axis)
        shape = list(b.shape)
        shape[axis] *= self.tiles
        top[0].reshape(shape)

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        y = top[0].data.reshape(self.outer, self.tiles, self.inner)
        y[...] = bottom[0].data.reshape(self.outer, 1, self.inner)

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        if not propagate_down[0]:
            return
        dy = top[0].diff.reshape(self.outer, self.tiles, self.inner)
        # A sum over a middle axis adds the tiles one after another, as
        # Caffe's copy-then-axpy loop does.
        bottom[0].diff[...] = dy.sum(axis=1).reshape(bottom[0].shape)


# -- Silence ---------------------------------------------------------------------------


@register
class SilenceLayer(Layer):
    """Caffe's Silence (silence_layer.cpp): takes any bottoms and produces
    nothing, so unused tops are not printed or kept; backward zeroes the
    bottoms' diffs."""

    type = "Silence"
    min_bottom_blobs = 1
    exact_num_top_blobs = 0

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        pass

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        pass

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        for b, down in zip(bottom, propagate_down):
            if down:
                b.diff[...] = 0
