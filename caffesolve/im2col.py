"""Lowering for 2-D convolution and the pooling kernels, as pure array functions.

Convolution is lowered as in Caffe's im2col.cpp, with the whole batch folded
into one column matrix so each pass is one GEMM:

    col[(c, i, j), column] = x_padded[n, c, y*stride + i*dilation,
                                      x*stride + j*dilation]

Rows are ordered (channel, kernel row, kernel column) like Caffe's, so a
weight blob (num_output, channels/group, kh, kw) reshapes to (M, K) unchanged
and group g's rows are one contiguous block. The order of the columns is a
layout choice, by `batch_inner`:

- False ("batch outer"): columns (n, y, x). im2col copies rows of `ow`
  contiguous values; the GEMM result (M, N, oh*ow) reaches NCHW by moving
  whole (oh*ow) planes. Good when output planes are large (LeNet conv1).
- True ("batch inner"): columns (y, x, n). The image is first transposed to
  (C, H, W, N); then im2col and col2im move runs of ow*N contiguous values,
  and the NCHW <-> (.., N) conversions are 2-D transposes. Good when output
  planes are small (LeNet conv2), where batch-outer runs would be a few floats.

`prefer_batch_inner` picks one from the shapes. Every function keeps the
dtype of its inputs (float32 in nets, float64 in gradient checks) and takes
optional preallocated buffers so a layer reuses them across iterations.

Pooling follows pooling_layer.cpp: MAX keeps the first maximum in window
order (row-major, strict `>`), AVE divides by the window size clipped to
height + pad (padding counts, the area past it does not).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import as_strided

from caffesolve.backend import array_module

Array = npt.NDArray[np.floating]


# -- geometry ---------------------------------------------------------------------


def conv_out_size(size: int, kernel: int, stride: int, pad: int, dilation: int) -> int:
    """Caffe's ConvolutionLayer::compute_output_shape (conv_layer.cpp):
    (size + 2*pad - (dilation*(kernel-1) + 1)) / stride + 1, C++ division."""
    extent = dilation * (kernel - 1) + 1
    return int((size + 2 * pad - extent) / stride) + 1


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
class ConvGeometry:
    """One 2-D convolution's sizes: bottom (num, channels, height, width),
    kernel, stride, pad and dilation per spatial axis, and output size."""

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
    dilation_h: int = 1
    dilation_w: int = 1

    @property
    def out_h(self) -> int:
        return conv_out_size(
            self.height, self.kernel_h, self.stride_h, self.pad_h, self.dilation_h
        )

    @property
    def out_w(self) -> int:
        return conv_out_size(
            self.width, self.kernel_w, self.stride_w, self.pad_w, self.dilation_w
        )

    @property
    def kernel_dim(self) -> int:
        """Rows of the column matrix: channels * kh * kw (Caffe's kernel_dim_
        times group)."""
        return self.channels * self.kernel_h * self.kernel_w

    @property
    def col_cols(self) -> int:
        """Columns of the column matrix: num * out_h * out_w."""
        return self.num * self.out_h * self.out_w

    @property
    def padded_h(self) -> int:
        """Rows of the zero-padded image: pad on both sides, and more at the
        bottom if a window reaches past it (a kernel larger than the padded
        input still gives one output in Caffe, whose C++ division truncates
        toward zero; im2col reads the missing rows as zero)."""
        extent = self.dilation_h * (self.kernel_h - 1) + 1
        reach = (self.out_h - 1) * self.stride_h + extent
        return max(self.height + 2 * self.pad_h, reach)

    @property
    def padded_w(self) -> int:
        extent = self.dilation_w * (self.kernel_w - 1) + 1
        reach = (self.out_w - 1) * self.stride_w + extent
        return max(self.width + 2 * self.pad_w, reach)

    @property
    def has_pad(self) -> bool:
        """True when im2col needs a padded copy of the image."""
        return self.padded_h != self.height or self.padded_w != self.width


def prefer_batch_inner(g: ConvGeometry, num_output: int) -> bool:
    """Pick the column layout with the smaller estimated copy cost.

    Batch-outer copies K*N*oh rows of `ow` values (a fixed cost per row);
    batch-inner pays element-wise transposes of the bottom and top. Roughly
    one short row costs as much as four transposed elements.
    """
    rows = g.kernel_dim * g.num * g.out_h
    transposed = g.num * (
        g.channels * g.height * g.width + num_output * g.out_h * g.out_w
    )
    return 4 * rows > transposed


def strided_view(a: Array, shape: tuple[int, ...], strides: tuple[int, ...]) -> Array:
    """Read-only view of `a` with the given shape and byte strides (numpy's
    as_strided; CuPy's own for CuPy arrays)."""
    xp = array_module(a)
    if xp is np:
        return as_strided(a, shape=shape, strides=strides, writeable=False)
    return xp.lib.stride_tricks.as_strided(a, shape=shape, strides=strides)


# -- layout helpers ---------------------------------------------------------------


def nchw_to_chwn(x: Array, out: Array | None = None) -> Array:
    """(N, C, H, W) -> (C, H, W, N): a 2-D transpose of (N, C*H*W)."""
    xp = array_module(x)
    n = x.shape[0]
    if out is None:
        out = xp.empty(x.shape[1:] + (n,), x.dtype)
    xp.copyto(out.reshape(-1, n), x.reshape(n, -1).T)
    return out


def chwn_to_nchw(x: Array, out: Array | None = None) -> Array:
    """(C, H, W, N) -> (N, C, H, W): a 2-D transpose of (C*H*W, N)."""
    xp = array_module(x)
    n = x.shape[-1]
    if out is None:
        out = xp.empty((n,) + x.shape[:-1], x.dtype)
    xp.copyto(out.reshape(n, -1), x.reshape(-1, n).T)
    return out


def columns_to_nchw(y: Array, num: int, batch_inner: bool, out: Array) -> None:
    """GEMM result (M, columns) -> top (N, M, oh, ow), for either layout."""
    xp = array_module(y)
    m = y.shape[0]
    if batch_inner:
        xp.copyto(out.reshape(num, -1), y.reshape(-1, num).T)
    else:
        xp.copyto(out.reshape(num, m, -1), y.reshape(m, num, -1).transpose(1, 0, 2))


def nchw_to_columns(d: Array, batch_inner: bool, out: Array) -> None:
    """Top diff (N, M, oh, ow) -> (M, columns), for either layout."""
    xp = array_module(d)
    num, m = d.shape[0], d.shape[1]
    if batch_inner:
        xp.copyto(out.reshape(-1, num), d.reshape(num, -1).T)
    else:
        xp.copyto(out.reshape(m, num, -1), d.reshape(num, m, -1).transpose(1, 0, 2))


def _padded_input(
    x: Array, g: ConvGeometry, batch_inner: bool, work: Array | None
) -> Array:
    """x in the lowering's layout, zero padded: (C, Hp, Wp, N) if batch_inner
    else (N, C, Hp, Wp). `work`, if given, must keep zero borders between
    calls (only its interior is written here)."""
    xp = array_module(x)
    if batch_inner:
        shape = (g.channels, g.padded_h, g.padded_w, g.num)
    else:
        shape = (g.num, g.channels, g.padded_h, g.padded_w)
    if not g.has_pad:
        if batch_inner:
            return nchw_to_chwn(x, work)
        return x
    if work is None:
        work = xp.zeros(shape, x.dtype)
    ph, pw = g.pad_h, g.pad_w
    if batch_inner:
        interior = work[:, ph : ph + g.height, pw : pw + g.width, :]
        xp.copyto(interior, x.transpose(1, 2, 3, 0))
    else:
        xp.copyto(work[:, :, ph : ph + g.height, pw : pw + g.width], x)
    return work


def padded_shape(g: ConvGeometry, batch_inner: bool) -> tuple[int, ...]:
    """Shape of the (padded) image buffer that im2col / col2im work in."""
    if batch_inner:
        return (g.channels, g.padded_h, g.padded_w, g.num)
    return (g.num, g.channels, g.padded_h, g.padded_w)


def _windows(padded: Array, g: ConvGeometry, batch_inner: bool) -> Array:
    """Read-only strided view of every window, shaped like the column matrix:
    (C, kh, kw, oh, ow, N) if batch_inner else (C, kh, kw, N, oh, ow)."""
    oh, ow = g.out_h, g.out_w
    if batch_inner:
        sc, sh, sw, sn = padded.strides
    else:
        sn, sc, sh, sw = padded.strides
    kernel_shape = (g.channels, g.kernel_h, g.kernel_w)
    kernel_strides = (sc, g.dilation_h * sh, g.dilation_w * sw)
    out_strides = (g.stride_h * sh, g.stride_w * sw)
    if batch_inner:
        shape = kernel_shape + (oh, ow, g.num)
        strides = kernel_strides + out_strides + (sn,)
    else:
        shape = kernel_shape + (g.num, oh, ow)
        strides = kernel_strides + (sn,) + out_strides
    return strided_view(padded, shape, strides)


# -- im2col / col2im ----------------------------------------------------------------


def im2col(
    x: Array,
    g: ConvGeometry,
    batch_inner: bool,
    out: Array | None = None,
    work: Array | None = None,
) -> Array:
    """Caffe's im2col_cpu for the whole batch: x (N, C, H, W) -> col of shape
    (C*kh*kw, N*oh*ow); padding reads as zero. `work` is the padded image
    buffer (see padded_shape); it must start zeroed and is reused as is."""
    xp = array_module(x)
    if out is None:
        out = xp.empty((g.kernel_dim, g.col_cols), x.dtype)
    padded = _padded_input(x, g, batch_inner, work)
    windows = _windows(padded, g, batch_inner)
    xp.copyto(out.reshape(windows.shape), windows)
    return out


def col2im(
    col: Array,
    g: ConvGeometry,
    batch_inner: bool,
    out: Array | None = None,
    work: Array | None = None,
) -> Array:
    """Caffe's col2im_cpu for the whole batch: the adjoint of im2col. Each
    column value is added back to the image element it was read from; values
    read from the padding are dropped. Returns (N, C, H, W) in `out`."""
    xp = array_module(col)
    if out is None:
        out = xp.empty((g.num, g.channels, g.height, g.width), col.dtype)
    if not g.has_pad and not batch_inner:
        acc = out.transpose(1, 0, 2, 3)  # (C, N, H, W) view of the result
        acc[...] = 0
        col2im_add(col, g, batch_inner, acc)
        return out
    if work is None:
        work = xp.empty(padded_shape(g, batch_inner), col.dtype)
    work[...] = 0
    col2im_add(col, g, batch_inner, work if batch_inner else work.transpose(1, 0, 2, 3))
    col2im_finish(work, g, batch_inner, out)
    return out


def col2im_add(
    col: Array,
    g: ConvGeometry,
    batch_inner: bool,
    acc: Array,
    first_row: int = 0,
    num_rows: int | None = None,
) -> None:
    """Add columns back into the padded image `acc`: (C, Hp, Wp, N) if
    batch_inner, else (C, N, Hp, Wp) (a transposed view of the padded NCHW
    buffer). With batch_inner, `col` may hold only output rows
    first_row .. first_row + num_rows (its columns are (y, x, n), so a block
    of rows is a block of columns), letting a caller make and consume the
    column matrix in cache-sized pieces."""
    oh, ow = g.out_h, g.out_w
    rows_here = oh if num_rows is None else num_rows
    if batch_inner:
        cols = col.reshape(g.channels, g.kernel_h, g.kernel_w, rows_here, ow, g.num)
    else:
        assert rows_here == oh, "batch-outer columns cannot be split by rows"
        cols = col.reshape(g.channels, g.kernel_h, g.kernel_w, g.num, oh, ow)
    span_h = g.stride_h * (rows_here - 1) + 1
    span_w = g.stride_w * (ow - 1) + 1
    for i in range(g.kernel_h):
        h0 = i * g.dilation_h + first_row * g.stride_h
        rows = slice(h0, h0 + span_h, g.stride_h)
        for j in range(g.kernel_w):
            w0 = j * g.dilation_w
            columns = slice(w0, w0 + span_w, g.stride_w)
            if batch_inner:
                acc[:, rows, columns, :] += cols[:, i, j]
            else:
                acc[:, :, rows, columns] += cols[:, i, j]


def col2im_finish(work: Array, g: ConvGeometry, batch_inner: bool, out: Array) -> None:
    """Crop the padding off the accumulated image (padded_shape layout) and
    write it to `out` as (N, C, H, W)."""
    xp = array_module(work)
    ph, pw = g.pad_h, g.pad_w
    if batch_inner:
        if g.has_pad:
            interior = work[:, ph : ph + g.height, pw : pw + g.width, :]
            xp.copyto(out, interior.transpose(3, 0, 1, 2))
        else:
            chwn_to_nchw(work, out)
    else:
        xp.copyto(out, work[:, :, ph : ph + g.height, pw : pw + g.width])


def col2im_row_block(
    g: ConvGeometry, itemsize: int, target_bytes: int = 1 << 21
) -> int:
    """Output rows per piece when the column matrix is made and consumed in
    pieces of about `target_bytes` (2 MiB: stays in cache between the GEMM
    that writes a piece and the adds that read it)."""
    row_bytes = g.kernel_dim * g.out_w * g.num * itemsize
    return max(1, min(g.out_h, target_bytes // max(row_bytes, 1)))


# -- pooling --------------------------------------------------------------------------


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
