"""Pooling as pure array functions (Caffe's pooling_layer.cpp), with the
compiled 2x2 MAX kernels beside their NumPy twins.

MAX keeps the first maximum in window order (row-major, strict `>`), AVE
divides by the window size clipped to height + pad (padding counts, the area
past it does not). Windows that tile the image (LeNet's 2x2 stride 2) take a
path that first sorts the window elements into contiguous planes; the
comparisons are the same. 2x2 windows with stride 2 run compiled loops
(caffesolve.kernels) when the kernels are on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from caffesolve.backend import array_module
from caffesolve.ops.im2col import strided_view

Array = npt.NDArray[np.floating]

# Caffe's -FLT_MAX, where MAX pooling starts every output (pooling_layer.cpp).
FLT_MAX = float(np.finfo(np.float32).max)


def pool_out_size(
    size: int, kernel: int, stride: int, pad: int, ceil_mode: bool = True
) -> int:
    """Caffe's PoolingLayer::Reshape (pooling_layer.cpp): ceil (or floor) of
    (size + 2*pad - kernel) / stride, plus 1; with padding, a last window that
    would start in the padding (at or past size + pad) is dropped."""
    q = (size + 2 * pad - kernel) / stride  # float, as Caffe's static_cast
    pooled = (int(np.ceil(q)) if ceil_mode else int(np.floor(q))) + 1
    if pad and (pooled - 1) * stride >= size + pad:
        pooled -= 1
    return pooled


@dataclass(frozen=True)
class PoolGeometry:
    """One 2-D pooling's sizes, with Caffe's output size (pool_out_size)."""

    num: int
    channels: int
    height: int
    width: int
    kernel_h: int
    kernel_w: int
    stride_h: int = 1
    stride_w: int = 1
    pad_h: int = 0
    pad_w: int = 0
    ceil_mode: bool = True

    @property
    def out_h(self) -> int:
        return pool_out_size(
            self.height, self.kernel_h, self.stride_h, self.pad_h, self.ceil_mode
        )

    @property
    def out_w(self) -> int:
        return pool_out_size(
            self.width, self.kernel_w, self.stride_w, self.pad_w, self.ceil_mode
        )

    @property
    def canvas_h(self) -> int:
        """Height of the padded canvas holding every window and the image."""
        return max(
            (self.out_h - 1) * self.stride_h + self.kernel_h, self.pad_h + self.height
        )

    @property
    def canvas_w(self) -> int:
        return max(
            (self.out_w - 1) * self.stride_w + self.kernel_w, self.pad_w + self.width
        )

    @property
    def needs_canvas(self) -> bool:
        """False when every window lies inside the unpadded image."""
        return bool(
            self.pad_h
            or self.pad_w
            or self.canvas_h > self.height
            or self.canvas_w > self.width
        )


def _pool_canvas(x: Array, g: PoolGeometry, fill: float, work: Array | None) -> Array:
    """x placed at (pad_h, pad_w) on a canvas filled with `fill`, or x itself
    when no window leaves the image. `work` keeps its border between calls."""
    xp = array_module(x)
    if not g.needs_canvas:
        return x
    if work is None:
        work = xp.full((g.num, g.channels, g.canvas_h, g.canvas_w), fill, x.dtype)
    ph, pw = g.pad_h, g.pad_w
    xp.copyto(work[:, :, ph : ph + g.height, pw : pw + g.width], x)
    return work


def _window_view(canvas: Array, g: PoolGeometry, i: int, j: int) -> Array:
    """canvas[n, c, ph*stride_h + i, pw*stride_w + j] for every output (ph, pw)."""
    rows = slice(i, i + g.stride_h * (g.out_h - 1) + 1, g.stride_h)
    cols = slice(j, j + g.stride_w * (g.out_w - 1) + 1, g.stride_w)
    return canvas[:, :, rows, cols]


def _windows_tile(g: PoolGeometry, canvas: Array) -> bool:
    """True when the windows cover `canvas` exactly once (kernel == stride and
    no area left over), so a backward pass may assign instead of zero + add."""
    return (
        g.kernel_h == g.stride_h
        and g.kernel_w == g.stride_w
        and g.out_h * g.stride_h == canvas.shape[2]
        and g.out_w * g.stride_w == canvas.shape[3]
    )


def pool_windows(canvas: Array, g: PoolGeometry) -> Array:
    """Read-only view (kh, kw, N, C, oh, ow) of every window element:
    [i, j, n, c, y, x] = canvas[n, c, y*stride_h + i, x*stride_w + j]."""
    sn, sc, sh, sw = canvas.strides
    shape = (g.kernel_h, g.kernel_w, g.num, g.channels, g.out_h, g.out_w)
    strides = (sh, sw, sn, sc, g.stride_h * sh, g.stride_w * sw)
    return strided_view(canvas, shape, strides)


def max_pool_forward(
    x: Array,
    g: PoolGeometry,
    out: Array,
    argmax: npt.NDArray[np.integer] | None = None,
    work: Array | None = None,
    cols: Array | None = None,
) -> None:
    """MAX pooling forward (pooling_layer.cpp): out starts at -FLT_MAX and
    takes each window element that is strictly greater, in row-major window
    order, so padding never wins, NaN is skipped and out keeps the first
    maximum. With `argmax`, also record for every output the offset i*kw + j
    of that first maximum; its dtype must hold kh*kw - 1.

    With argmax the window elements are first copied out to `cols`
    (kh*kw, N, C, oh, ow): one strided pass, after which every comparison runs
    on contiguous arrays."""
    xp = array_module(x)
    canvas = _pool_canvas(x, g, -np.inf, work)
    out[...] = -np.finfo(np.float32).max  # Caffe's -FLT_MAX, for any Dtype
    if argmax is None:
        for i in range(g.kernel_h):
            for j in range(g.kernel_w):
                # fmax ignores NaN as Caffe's `>` does; ties keep the value.
                xp.fmax(out, _window_view(canvas, g, i, j), out=out)
        return
    windows = pool_windows(canvas, g)
    area = g.kernel_h * g.kernel_w
    if cols is None:
        cols = xp.empty((area,) + out.shape, x.dtype)
    xp.copyto(cols.reshape(windows.shape), windows)
    argmax[...] = 0
    better = xp.empty(out.shape, bool)
    step = xp.empty(out.shape, argmax.dtype)
    for k in range(area):
        v = cols[k]
        xp.greater(v, out, out=better)
        xp.fmax(out, v, out=out)
        if k:
            # argmax = better ? k : argmax, as integer arithmetic (fast).
            xp.subtract(k, argmax, out=step, casting="unsafe")
            xp.multiply(step, better, out=step, casting="unsafe")
            xp.add(argmax, step, out=argmax, casting="unsafe")


def max_pool_backward(
    dy: Array,
    argmax: npt.NDArray[np.integer],
    g: PoolGeometry,
    out: Array,
    work: Array | None = None,
) -> None:
    """MAX pooling backward: each top diff goes to the bottom element its
    window's argmax names; overlapping windows add up. out is overwritten."""
    xp = array_module(dy)
    canvas = out if not g.needs_canvas else work
    if canvas is None:
        canvas = xp.empty((g.num, g.channels, g.canvas_h, g.canvas_w), dy.dtype)
    overlap = g.kernel_h > g.stride_h or g.kernel_w > g.stride_w
    if not _windows_tile(g, canvas):
        canvas[...] = 0
    hit = xp.empty(dy.shape, bool)
    k = 0
    for i in range(g.kernel_h):
        for j in range(g.kernel_w):
            xp.equal(argmax, k, out=hit)
            view = _window_view(canvas, g, i, j)
            if overlap:
                view += dy * hit
            else:
                xp.multiply(dy, hit, out=view)
            k += 1
    if canvas is not out:
        ph, pw = g.pad_h, g.pad_w
        xp.copyto(out, canvas[:, :, ph : ph + g.height, pw : pw + g.width])


# Tiling windows (kernel == stride, no pad, no remainder; LeNet's 2x2 stride 2):
# every window element is copied once into a contiguous "plane" per window
# position (i, j), so the comparisons below run on long contiguous arrays
# instead of one short strided row at a time.


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
    """Work arrays of the tiling pooling path, kept by the layer.

    rows (kh, N*C*oh*W): image rows sorted by their row within a window;
    planes (kh*kw, N*C*oh*ow): window element (i, j) of every window;
    floor: -FLT_MAX in every element; mask, better, step: per-output
    scratch."""

    rows: Array
    planes: Array
    floor: Array
    mask: Array
    better: npt.NDArray[np.bool_]
    step: npt.NDArray[np.integer]


def tile_buffers(g: PoolGeometry, dtype: type, argmax_dtype: type) -> TileBuffers:
    """Allocate TileBuffers for `g` (NumPy arrays: the row records below
    are a NumPy view)."""
    outputs = g.num * g.channels * g.out_h * g.out_w
    area = g.kernel_h * g.kernel_w
    return TileBuffers(
        rows=np.empty((g.kernel_h, outputs * g.kernel_w), dtype),
        planes=np.empty((area, outputs), dtype),
        floor=np.full(outputs, -np.finfo(np.float32).max, dtype),
        mask=np.empty(outputs, dtype),
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
    x: Array,
    g: PoolGeometry,
    out: Array,
    argmax: npt.NDArray[np.integer] | None,
    buf: TileBuffers,
) -> None:
    """max_pool_forward for tiling windows (pool_tiles): the same sequence
    of strict `>` comparisons in window order, from -FLT_MAX, so values and
    first-maximum offsets are the same."""
    planes = tile_planes(x, g, buf)
    top = out.reshape(-1)
    np.fmax(planes[0], buf.floor, out=top)  # state after element 0
    if argmax is not None:
        index = argmax.reshape(-1)
        index[...] = 0
        step = buf.step
        # bool as 0/1 bytes: the offset arithmetic stays one byte wide.
        better = buf.better.view(np.uint8) if step.dtype == np.uint8 else buf.better
    for k in range(1, planes.shape[0]):
        v = planes[k]
        if argmax is not None:
            np.greater(v, top, out=buf.better)
            # Offsets grow in window order: a later winner has the larger one.
            np.multiply(better, step.dtype.type(k), out=step)
            np.maximum(index, step, out=index)
        np.fmax(top, v, out=top)


def max_pool_tiles_backward(
    dy: Array,
    argmax: npt.NDArray[np.integer],
    g: PoolGeometry,
    out: Array,
    buf: TileBuffers,
) -> None:
    """max_pool_backward for tiling windows: each window element gets its
    top diff where it is the argmax, else 0 (no window overlaps another)."""
    kh, kw = g.kernel_h, g.kernel_w
    rows = out.reshape(1, -1) if kh == 1 else buf.rows
    top_diff, index = dy.reshape(-1), argmax.reshape(-1)
    mask = buf.mask
    k = 0
    for i in range(kh):
        columns = rows[i].reshape(-1, kw)
        for j in range(kw):
            np.equal(index, k, out=buf.better)
            np.copyto(mask, buf.better)
            np.multiply(top_diff, mask, out=columns[:, j])
            k += 1
    if kh > 1:
        _tile_rows(g, out, buf.rows, False)


def argmax_to_caffe_mask(
    argmax: npt.NDArray[np.integer], g: PoolGeometry, dtype: type
) -> Array:
    """Caffe's top mask: the index h*width + w, within its image plane, of
    each output's maximum (pooling_layer.cpp, `top_mask`)."""
    xp = array_module(argmax)
    i, j = xp.divmod(argmax.astype(np.int64), g.kernel_w)
    ph = xp.arange(g.out_h).reshape(-1, 1) * g.stride_h - g.pad_h
    pw = xp.arange(g.out_w).reshape(1, -1) * g.stride_w - g.pad_w
    return ((ph + i) * g.width + (pw + j)).astype(dtype)


def caffe_mask_backward(dy: Array, mask: Array, g: PoolGeometry, out: Array) -> None:
    """MAX backward from a top mask blob (Caffe reads top[1] when present):
    bottom_diff[plane, mask] += top_diff, plane by plane."""
    xp = array_module(dy)
    planes = g.num * g.channels
    plane = g.height * g.width
    index = mask.reshape(planes, -1).astype(np.int64)
    index += (xp.arange(planes, dtype=np.int64) * plane)[:, None]
    flat = xp.bincount(index.ravel(), weights=dy.ravel(), minlength=planes * plane)
    out[...] = flat.reshape(out.shape)


def ave_pool_divisor(g: PoolGeometry, dtype: type) -> Array:
    """Per-output pool_size of Caffe's AVE: the window clipped to
    height + pad (and width + pad) before it is clipped to the image."""

    def extent(out: int, stride: int, pad: int, kernel: int, size: int) -> Array:
        start = np.arange(out) * stride - pad
        end = np.minimum(start + kernel, size + pad)
        return end - start

    rows = extent(g.out_h, g.stride_h, g.pad_h, g.kernel_h, g.height)
    cols = extent(g.out_w, g.stride_w, g.pad_w, g.kernel_w, g.width)
    return np.outer(rows, cols).astype(dtype)


def ave_pool_forward(
    x: Array, g: PoolGeometry, divisor: Array, out: Array, work: Array | None = None
) -> None:
    """AVE pooling forward: the sum of the window's image elements (padding
    and the area past the image read as zero) divided by `divisor`
    (ave_pool_divisor)."""
    xp = array_module(x)
    canvas = _pool_canvas(x, g, 0.0, work)
    xp.copyto(out, _window_view(canvas, g, 0, 0))
    for i in range(g.kernel_h):
        for j in range(g.kernel_w):
            if i or j:
                out += _window_view(canvas, g, i, j)
    out /= divisor


def ave_pool_backward(
    dy: Array, g: PoolGeometry, divisor: Array, out: Array, work: Array | None = None
) -> None:
    """AVE pooling backward: every element of a window gets top_diff /
    pool_size; overlapping windows add up. out is overwritten."""
    xp = array_module(dy)
    canvas = out if not g.needs_canvas else work
    if canvas is None:
        canvas = xp.empty((g.num, g.channels, g.canvas_h, g.canvas_w), dy.dtype)
    share = dy / divisor
    overlap = g.kernel_h > g.stride_h or g.kernel_w > g.stride_w
    if not _windows_tile(g, canvas):
        canvas[...] = 0
    for i in range(g.kernel_h):
        for j in range(g.kernel_w):
            view = _window_view(canvas, g, i, j)
            if overlap:
                view += share
            else:
                xp.copyto(view, share)
    if canvas is not out:
        ph, pw = g.pad_h, g.pad_w
        xp.copyto(out, canvas[:, :, ph : ph + g.height, pw : pw + g.width])


# -- MAX pooling, 2x2 windows with stride 2 -------------------------------------
#
# x (planes, 2*oh, 2*ow) -> out (planes, oh, ow): Caffe's loop for windows that
# tile the plane. Each output starts at -FLT_MAX and takes an element only if
# it is strictly greater, visiting (0,0), (0,1), (1,0), (1,1): so NaN never
# wins, an all-NaN window gives -FLT_MAX, and a tie keeps the first element
# (+0 before -0 included). argmax gets the window offset i*2 + j of the winner;
# when nothing beats -FLT_MAX (all NaN or -inf) it is 0, so backward sends the
# diff to the window's first element, as the NumPy path does (Caffe's mask
# stays -1 there, and its backward would write outside the plane).


def max_pool_2x2(x, out, argmax):  # type: ignore[no-untyped-def]
    """MAX pooling forward, with the window offset of each output's first
    maximum in `argmax` (always: in this loop it costs next to nothing)."""
    oh, ow = out.shape[1], out.shape[2]
    floor = out.dtype.type(-FLT_MAX)
    for p in range(x.shape[0]):
        for y in range(oh):
            r0 = x[p, 2 * y]
            r1 = x[p, 2 * y + 1]
            o = out[p, y]
            a = argmax[p, y]
            for c in range(ow):
                best = floor
                k = 0
                v = r0[2 * c]
                if v > best:
                    best = v
                v = r0[2 * c + 1]
                if v > best:
                    best = v
                    k = 1
                v = r1[2 * c]
                if v > best:
                    best = v
                    k = 2
                v = r1[2 * c + 1]
                if v > best:
                    best = v
                    k = 3
                o[c] = best
                a[c] = k


def max_pool_2x2_max(x, out):  # type: ignore[no-untyped-def]
    """MAX pooling forward without the argmax, for nets that run no backward
    (TEST): the same comparisons as max_pool_2x2, written as selects, which
    LLVM turns into vector max instructions (x86's MAXPS is exactly `v > best
    ? v : best`, NaN and signed zeros included): about 2.5x faster."""
    oh, ow = out.shape[1], out.shape[2]
    floor = out.dtype.type(-FLT_MAX)
    for p in range(x.shape[0]):
        for y in range(oh):
            r0 = x[p, 2 * y]
            r1 = x[p, 2 * y + 1]
            o = out[p, y]
            for c in range(ow):
                best = floor
                v = r0[2 * c]
                best = v if v > best else best
                v = r0[2 * c + 1]
                best = v if v > best else best
                v = r1[2 * c]
                best = v if v > best else best
                v = r1[2 * c + 1]
                best = v if v > best else best
                o[c] = best


def max_pool_2x2_backward(dy, argmax, dx, width):  # type: ignore[no-untyped-def]
    """MAX pooling backward over flat arrays (images of `width` columns):
    every window of dx is zeroed and the top diff is added to its argmax
    element, as Caffe's zero fill and `+=` (so 0 + -0 gives +0; no window
    overlaps another). Flat indices: numba compiles this loop several times
    faster than over row views."""
    ow = width // 2
    for r in range(dy.size // ow):  # output rows, i.e. pairs of image rows
        base = 2 * r * width
        for w in range(2 * width):
            dx[base + w] = 0
        first = r * ow
        for c in range(ow):
            k = np.int64(argmax[first + c])
            dx[base + (k >> 1) * width + 2 * c + (k & 1)] += dy[first + c]
