"""MAX pooling over windows that tile the image (kernel == stride, no pad,
no remainder; LeNet's 2x2 stride 2), in NumPy: the path taken when the
compiled kernels (ops/pooling_kernels.py) are off.

Every window element is copied once into a contiguous "plane" per window
position (i, j), so the comparisons run on long contiguous arrays instead of
one short strided row at a time. They are the same comparisons, in the same
order, as ops/pooling.py's max_pool_forward: the same bits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from caffesolve.ops.pooling import FLT_MAX, Array, Index, PoolGeometry


def pool_tiles(g: PoolGeometry) -> bool:
    """True when the windows cover the image exactly once, without padding."""
    return (
        g.kernel_h == g.stride_h
        and g.kernel_w == g.stride_w
        and not g.pad_h
        and not g.pad_w
        and g.out_h * g.kernel_h == g.height
        and g.out_w * g.kernel_w == g.width
    )


@dataclass
class TileBuffers:
    """Work arrays of the tiling path, kept by the layer.

    rows (kh, N*C*oh*W): image rows sorted by their row within a window;
    planes (kh*kw, N*C*oh*ow): window element (i, j) of every window;
    zeros: 0 in every element; better, step: per-output scratch."""

    rows: Array
    planes: Array
    zeros: Array
    better: npt.NDArray[np.bool_]
    step: Index


def tile_buffers(g: PoolGeometry, dtype: type, argmax_dtype: type) -> TileBuffers:
    """Allocate TileBuffers for `g` (NumPy arrays: the row records below
    are a NumPy view)."""
    outputs = g.num * g.channels * g.out_h * g.out_w
    return TileBuffers(
        rows=np.empty((g.kernel_h, outputs * g.kernel_w), dtype),
        planes=np.empty((g.area, outputs), dtype),
        zeros=np.zeros(outputs, dtype),
        better=np.empty(outputs, bool),
        step=np.empty(outputs, argmax_dtype),
    )


def _row_records(a: Array, width: int) -> Array:
    """1-D view of the contiguous array `a` with one element (a NumPy void
    record) per row of `width` values: picking rows is then one long copy
    loop, not one call per short row."""
    record = np.dtype((np.void, width * a.itemsize))
    return a.reshape(-1, width).view(record).reshape(-1)


def _tile_rows(g: PoolGeometry, a: Array, rows: Array, to_rows: bool) -> None:
    """Move image rows between `a` (N, C, H, W) and `rows` (kh, N*C*oh*W),
    where rows[i] holds row i of every window row-band, in order."""
    bands = g.num * g.channels * g.out_h
    image = _row_records(a, g.width).reshape(bands, g.kernel_h).T
    sorted_rows = _row_records(rows, g.width).reshape(g.kernel_h, bands)
    if to_rows:
        np.copyto(sorted_rows, image)
    else:
        np.copyto(image, sorted_rows)


def tile_planes(x: Array, g: PoolGeometry, buf: TileBuffers) -> Array:
    """planes[i*kw + j, (n, c, y, x)] = x[n, c, y*kh + i, x*kw + j]: two
    passes, one moving whole rows, one splitting columns."""
    kh, kw = g.kernel_h, g.kernel_w
    if kh == 1:
        rows = x.reshape(1, -1)
    else:
        _tile_rows(g, x, buf.rows, True)
        rows = buf.rows
    planes = buf.planes.reshape(kh, kw, -1)
    for i in range(kh):
        np.copyto(planes[i], rows[i].reshape(-1, kw).T)
    return buf.planes


def max_pool_tiles_forward(
    x: Array, g: PoolGeometry, out: Array, argmax: Index | None, buf: TileBuffers
) -> None:
    """max_pool_forward for tiling windows (pool_tiles): the same strict `>`
    comparisons in window order from -FLT_MAX, so the same values and
    argmax (g.area where nothing won)."""
    planes = tile_planes(x, g, buf)
    top = out.reshape(-1)
    top[...] = -FLT_MAX
    step = buf.step
    # bool as 0/1 bytes: the offset arithmetic stays one byte wide.
    better = buf.better.view(np.uint8) if step.dtype == np.uint8 else buf.better
    if argmax is not None:
        index = argmax.reshape(-1)
        index[...] = 0
    for k in range(planes.shape[0]):
        v = planes[k]
        np.greater(v, top, out=buf.better)
        np.copyto(top, v, where=buf.better)
        if argmax is not None and k:
            # Offsets grow in window order: a later winner has the larger one.
            np.multiply(better, step.dtype.type(k), out=step)
            np.maximum(index, step, out=index)
    if argmax is not None:
        # Only a winner moves the top off -FLT_MAX.
        np.equal(top, -FLT_MAX, out=buf.better)
        np.copyto(index, g.area, where=buf.better, casting="unsafe")


def max_pool_tiles_backward(
    dy: Array, argmax: Index, g: PoolGeometry, out: Array, buf: TileBuffers
) -> None:
    """max_pool_backward for tiling windows: each window element gets 0 +
    its top diff where it is the argmax, else 0 (no window overlaps
    another)."""
    kh, kw = g.kernel_h, g.kernel_w
    rows = out.reshape(1, -1) if kh == 1 else buf.rows
    top_diff, index = dy.reshape(-1), argmax.reshape(-1)
    k = 0
    for i in range(kh):
        columns = rows[i].reshape(-1, kw)
        for j in range(kw):
            np.equal(index, k, out=buf.better)
            column = columns[:, j]
            column[...] = 0
            np.add(buf.zeros, top_diff, out=column, where=buf.better)
            k += 1
    if kh > 1:
        _tile_rows(g, out, buf.rows, False)
