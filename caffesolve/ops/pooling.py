"""Pooling as pure array functions (Caffe's pooling_layer.cpp and, for
STOCHASTIC, pooling_layer.cu): the geometry and the NumPy paths. The compiled
loops that give the same bits are in ops/pooling_kernels.py; windows that
tile the image have a faster NumPy path in ops/pooling_tiles.py.

MAX keeps the first maximum in window order (row-major, strict `>` from
-FLT_MAX: NaN and padding never win, of equal values the first stays, +0 and
-0 included). AVE sums from +0 in window order and divides by the window
size clipped to height + pad (padding counts, the area past it does not).
Backward passes start from a zeroed bottom diff and add each window's share
in Caffe's output order, so sums over overlapping windows round as Caffe's.

The MAX argmax is the window offset i*kernel_w + j of each output's winner,
or kernel_h*kernel_w ("none": nothing beat -FLT_MAX, an all-NaN or empty
window, where Caffe's mask is -1); its backward drops those diffs, as
Caffe's GPU code does (its CPU code would write before the plane).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import numpy.typing as npt

from caffesolve.backend import array_module

Array = npt.NDArray[np.floating]
Index = npt.NDArray[np.integer]

# PoolingParameter.PoolMethod's numbers (caffe.proto).
MAX, AVE, STOCHASTIC = 0, 1, 2

# Caffe's -FLT_MAX, where MAX pooling starts every output (pooling_layer.cpp),
# and FLT_MIN, where STOCHASTIC's TEST sum starts (pooling_layer.cu).
FLT_MAX = float(np.finfo(np.float32).max)
FLT_MIN = float(np.finfo(np.float32).tiny)


def pool_out_size(
    size: int, kernel: int, stride: int, pad: int, ceil_mode: bool = True
) -> int:
    """Caffe's PoolingLayer::Reshape: ceil (round_mode CEIL) or floor of
    float(size + 2*pad - kernel) / stride, plus 1, divided in float32 as
    Caffe's static_cast<float>; with padding, a last window that would start
    in the padding (at or past size + pad) is dropped."""
    q = np.float32(size + 2 * pad - kernel) / np.float32(stride)
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

    @cached_property  # asked on every pass: computed once
    def out_h(self) -> int:
        return pool_out_size(
            self.height, self.kernel_h, self.stride_h, self.pad_h, self.ceil_mode
        )

    @cached_property
    def out_w(self) -> int:
        return pool_out_size(
            self.width, self.kernel_w, self.stride_w, self.pad_w, self.ceil_mode
        )

    @property
    def area(self) -> int:
        """kernel_h * kernel_w: the window offsets, and the argmax's "none"."""
        return self.kernel_h * self.kernel_w

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


def argmax_dtype(area: int) -> type:
    """The smallest unsigned type holding window offsets 0 .. area (area
    itself is "none")."""
    if area < 256:
        return np.uint8
    if area < 65536:
        return np.uint16
    return np.uint32


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


def _diff_canvas(dy: Array, g: PoolGeometry, out: Array, work: Array | None) -> Array:
    """A zeroed canvas for a bottom diff: `out` itself when no window leaves
    the image, else `work` (made if None)."""
    xp = array_module(dy)
    canvas = out if not g.needs_canvas else work
    if canvas is None:
        canvas = xp.empty((g.num, g.channels, g.canvas_h, g.canvas_w), dy.dtype)
    canvas[...] = 0
    return canvas


def _crop_canvas(canvas: Array, g: PoolGeometry, out: Array) -> None:
    """The image part of a diff canvas into `out` (nothing if it is `out`)."""
    if canvas is not out:
        ph, pw = g.pad_h, g.pad_w
        array_module(out).copyto(
            out, canvas[:, :, ph : ph + g.height, pw : pw + g.width]
        )


def _window_view(canvas: Array, g: PoolGeometry, i: int, j: int) -> Array:
    """canvas[n, c, ph*stride_h + i, pw*stride_w + j] for every output (ph, pw)."""
    rows = slice(i, i + g.stride_h * (g.out_h - 1) + 1, g.stride_h)
    cols = slice(j, j + g.stride_w * (g.out_w - 1) + 1, g.stride_w)
    return canvas[:, :, rows, cols]


def _offsets(g: PoolGeometry, backward: bool = False) -> list[tuple[int, int, int]]:
    """(k, i, j) for every window offset k = i*kernel_w + j in window order,
    or (backward) reversed: a bottom element then meets its windows in
    Caffe's output order (larger offsets belong to earlier windows)."""
    order = [
        (i * g.kernel_w + j, i, j) for i in range(g.kernel_h) for j in range(g.kernel_w)
    ]
    return order[::-1] if backward else order


# -- MAX -----------------------------------------------------------------------------


def max_pool_forward(
    x: Array,
    g: PoolGeometry,
    out: Array,
    argmax: Index | None = None,
    work: Array | None = None,
) -> None:
    """MAX pooling forward (pooling_layer.cpp): out starts at -FLT_MAX and
    takes each window element that is strictly greater, in row-major window
    order; with `argmax`, also record the winner's window offset (g.area for
    none). Padding reads -inf, so it never wins."""
    xp = array_module(x)
    canvas = _pool_canvas(x, g, -np.inf, work)
    out[...] = -FLT_MAX  # Caffe's -FLT_MAX, for any Dtype
    if argmax is not None:
        argmax[...] = g.area
    better = xp.empty(out.shape, bool)
    for k, i, j in _offsets(g):
        v = _window_view(canvas, g, i, j)
        xp.greater(v, out, out=better)
        xp.copyto(out, v, where=better)
        if argmax is not None:
            xp.copyto(argmax, k, where=better, casting="unsafe")


def max_pool_backward(
    dy: Array, argmax: Index, g: PoolGeometry, out: Array, work: Array | None = None
) -> None:
    """MAX pooling backward: the bottom diff is zeroed and each top diff is
    added to the element its argmax names; overlapping windows add up in
    Caffe's output order. out is overwritten."""
    xp = array_module(dy)
    canvas = _diff_canvas(dy, g, out, work)
    hit = xp.empty(dy.shape, bool)
    for k, i, j in _offsets(g, backward=True):
        xp.equal(argmax, k, out=hit)
        view = _window_view(canvas, g, i, j)
        xp.add(view, dy, out=view, where=hit)
    _crop_canvas(canvas, g, out)


def argmax_to_caffe_mask(argmax: Index, g: PoolGeometry, dtype: type) -> Array:
    """Caffe's top mask: the index h*width + w, within its image plane, of
    each output's maximum, -1 where none won (pooling_layer.cpp, `top_mask`)."""
    xp = array_module(argmax)
    i, j = xp.divmod(argmax.astype(np.int64), g.kernel_w)
    ph = xp.arange(g.out_h).reshape(-1, 1) * g.stride_h - g.pad_h
    pw = xp.arange(g.out_w).reshape(1, -1) * g.stride_w - g.pad_w
    mask = (ph + i) * g.width + (pw + j)
    return xp.where(argmax == g.area, -1, mask).astype(dtype)


def caffe_mask_backward(dy: Array, mask: Array, g: PoolGeometry, out: Array) -> None:
    """MAX backward from a top mask blob (Caffe reads top[1] when present):
    bottom_diff[plane, mask] += top_diff, in output order from zero. Mask
    values outside the plane (-1: nothing won) are dropped."""
    xp = array_module(dy)
    planes, plane = g.num * g.channels, g.height * g.width
    index = mask.reshape(planes, -1).astype(np.int64)
    keep = (index >= 0) & (index < plane)
    index += (xp.arange(planes, dtype=np.int64) * plane)[:, None]
    flat = out.reshape(-1)
    flat[...] = 0
    np.add.at(flat, index[keep], dy.reshape(planes, -1)[keep])


# -- AVE ---------------------------------------------------------------------------


def ave_pool_divisor(g: PoolGeometry, dtype: type) -> Array:
    """Per-output pool_size of Caffe's AVE, (hend - hstart) * (wend - wstart)
    with each end clipped to size + pad before the window is clipped to the
    image. Without padding, stride > kernel and ceil rounding, a last window
    may start at or past the image: its size is 0 or negative, as Caffe's
    (0/0 gives NaN, 0/-1 gives -0)."""

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
    """AVE pooling forward: the sum from +0 of the window's image elements in
    window order (padding and the area past the image read as +0, which
    leaves a sum from +0 unchanged) divided by `divisor` (ave_pool_divisor)."""
    canvas = _pool_canvas(x, g, 0.0, work)
    out[...] = 0
    for _, i, j in _offsets(g):
        out += _window_view(canvas, g, i, j)
    with np.errstate(divide="ignore", invalid="ignore"):  # a size-0 window
        out /= divisor


def ave_pool_backward(
    dy: Array, g: PoolGeometry, divisor: Array, out: Array, work: Array | None = None
) -> None:
    """AVE pooling backward: every element of a window gets top_diff /
    pool_size, added from zero in Caffe's output order. out is overwritten."""
    canvas = _diff_canvas(dy, g, out, work)
    with np.errstate(divide="ignore", invalid="ignore"):  # reaches no element
        share = dy / divisor
    for _, i, j in _offsets(g, backward=True):
        _window_view(canvas, g, i, j)[...] += share
    _crop_canvas(canvas, g, out)


# -- STOCHASTIC (Caffe's GPU kernels; its CPU code stops with NOT_IMPLEMENTED) ---
#
# Caffe rejects padding for STOCHASTIC, so windows start at (y*stride_h,
# x*stride_w) and are clipped to the image; with ceil rounding the canvas
# holds +0 past the image, which leaves every running sum as it is.


def stochastic_pool_train(
    x: Array,
    g: PoolGeometry,
    uniform: Array,
    out: Array,
    argmax: Index,
    work: Array | None = None,
) -> None:
    """StoPoolForwardTrain (pooling_layer.cu): cumsum = the window's sum
    from 0 in window order; thres = float(uniform * cumsum), with `uniform`
    drawn in (0, 1], one per output; then the running sum again, and the
    first element at which it reaches thres (`>=`) is the output, its offset
    the argmax. Where none does (a NaN in the window, or a window wholly past
    the image) the output is 0 and the argmax none: Caffe leaves the top as
    it was and backward routes nothing there."""
    xp = array_module(x)
    canvas = _pool_canvas(x, g, 0.0, work)
    total = xp.zeros(out.shape, x.dtype)
    for _, i, j in _offsets(g):
        total += _window_view(canvas, g, i, j)
    # Caffe's `const float thres`: the product rounded to float.
    thres = (uniform * total).astype(np.float32).astype(x.dtype)
    cumsum = total
    cumsum[...] = 0
    found = xp.zeros(out.shape, bool)
    hit = xp.empty(out.shape, bool)
    out[...] = 0
    argmax[...] = g.area
    for k, i, j in _offsets(g):
        v = _window_view(canvas, g, i, j)
        cumsum += v
        xp.greater_equal(cumsum, thres, out=hit)
        hit &= ~found
        xp.copyto(out, v, where=hit)
        xp.copyto(argmax, k, where=hit, casting="unsafe")
        found |= hit
    # A window wholly past the image (stride > kernel) has nothing to pick.
    empty_h = xp.arange(g.out_h) * g.stride_h >= g.height
    empty_w = xp.arange(g.out_w) * g.stride_w >= g.width
    empty = empty_h[:, None] | empty_w[None, :]
    xp.copyto(argmax, g.area, where=empty, casting="unsafe")
    xp.copyto(out, 0, where=empty)


def _stochastic_test_sums(
    canvas: Array, g: PoolGeometry, shape: tuple[int, ...]
) -> tuple[Array, Array]:
    """StoPoolForwardTest's two sums: cumsum from FLT_MIN ("to avoid
    divide-by-zero") and cumvalues from 0 of x*x, in window order."""
    xp = array_module(canvas)
    cumsum = xp.full(shape, FLT_MIN, canvas.dtype)
    cumvalues = xp.zeros(shape, canvas.dtype)
    for _, i, j in _offsets(g):
        v = _window_view(canvas, g, i, j)
        cumsum += v
        cumvalues += v * v
    return cumsum, cumvalues


def stochastic_pool_test(
    x: Array, g: PoolGeometry, out: Array, work: Array | None = None
) -> None:
    """StoPoolForwardTest (pooling_layer.cu): the value-weighted average
    sum(x*x) / (FLT_MIN + sum(x)) over the window. Each x*x is rounded
    before it is added (nvcc may fuse the two into one FMA, so a GPU's
    result can differ in the last bit)."""
    canvas = _pool_canvas(x, g, 0.0, work)
    cumsum, cumvalues = _stochastic_test_sums(canvas, g, out.shape)
    array_module(x).divide(cumvalues, cumsum, out=out)


def stochastic_pool_test_backward(
    x: Array,
    top: Array,
    dy: Array,
    g: PoolGeometry,
    out: Array,
    work: Array | None = None,
    diff_work: Array | None = None,
) -> None:
    """Backward of the TEST formula (Caffe has none: its GPU backward reads
    sampled indices a TEST pass never draws): d top / d x = (2*x - top) /
    cumsum for each window holding x, summed over the windows."""
    canvas = _pool_canvas(x, g, 0.0, work)
    cumsum, _ = _stochastic_test_sums(canvas, g, dy.shape)
    scale = dy / cumsum
    dcanvas = _diff_canvas(dy, g, out, diff_work)
    for _, i, j in _offsets(g, backward=True):
        v = _window_view(canvas, g, i, j)
        _window_view(dcanvas, g, i, j)[...] += scale * (2 * v - top)
    _crop_canvas(dcanvas, g, out)
