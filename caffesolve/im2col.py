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

`prefer_batch_inner` picks one from the shapes. The Convolution layer runs
each through a faster variant defined below: batch outer as per-image
columns (N, K, oh*ow), whose stacked GEMMs write NCHW with no transpose;
batch inner, when the vertical stride and dilation are 1, as the row-shift
matrix, which copies each value kw rather than kh*kw times and needs no
col2im scatter of a full column matrix. Every function keeps the dtype of
its inputs (float32 in nets, float64 in gradient checks) and takes optional
preallocated buffers so a layer reuses them across iterations.

Pooling follows pooling_layer.cpp: MAX keeps the first maximum in window
order (row-major, strict `>`), AVE divides by the window size clipped to
height + pad (padding counts, the area past it does not). Windows that tile
the image (LeNet's 2x2 stride 2) take a path that first sorts the window
elements into contiguous planes; the comparisons are the same.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import as_strided

from caffesolve import kernels
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


def row_block_to_nchw(
    y: Array, num: int, out_w: int, y0: int, y1: int, out: Array
) -> None:
    """Batch-inner GEMM result columns (y, x, n) of output rows y0 .. y1-1
    -> out[:, :, y0:y1, :] of the top (N, M, oh, ow): one piece of
    columns_to_nchw, so pieces of the output rows may run on separate
    threads."""
    xp = array_module(y)
    width = out_w * num
    block = y[:, y0 * width : y1 * width].reshape(y.shape[0], y1 - y0, out_w, num)
    xp.copyto(out[:, :, y0:y1, :], block.transpose(3, 0, 1, 2))


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


# -- per-image columns (batch outer, as the layer uses them) -----------------------
#
# The column matrices of the images stacked: col[n, (c, i, j), (y, x)], which
# is Caffe's own per-image im2col buffer for every n at once. A stacked
# matmul W (M, K) x col (N, K, oh*ow) then yields (N, M, oh*ow), the top in
# NCHW with no transpose, and each image's GEMM is small enough for BLAS to
# run it on one thread.


def per_image_shape(g: ConvGeometry) -> tuple[int, int, int]:
    """Shape of the per-image column stack: (N, C*kh*kw, oh*ow)."""
    return (g.num, g.kernel_dim, g.out_h * g.out_w)


def _per_image_windows(padded: Array, g: ConvGeometry) -> Array:
    """Read-only view (N, C, kh, kw, oh, ow) of every window of the padded
    NCHW image."""
    sn, sc, sh, sw = padded.strides
    shape = (g.num, g.channels, g.kernel_h, g.kernel_w, g.out_h, g.out_w)
    strides = (
        sn,
        sc,
        g.dilation_h * sh,
        g.dilation_w * sw,
        g.stride_h * sh,
        g.stride_w * sw,
    )
    return strided_view(padded, shape, strides)


def im2col_per_image(
    x: Array, g: ConvGeometry, out: Array | None = None, work: Array | None = None
) -> Array:
    """Caffe's im2col_cpu for each image: x (N, C, H, W) -> col
    (N, C*kh*kw, oh*ow); padding reads as zero. `work`: the zero-bordered
    padded (N, C, Hp, Wp) buffer, needed only when g.has_pad."""
    xp = array_module(x)
    if out is None:
        out = xp.empty(per_image_shape(g), x.dtype)
    padded = _padded_input(x, g, False, work)
    if xp is np and g.stride_w == 1 and padded.flags.c_contiguous:
        # Each window row is a run of ow contiguous values: copy whole runs
        # as single records (one loop call per kernel offset, not per row).
        record = np.dtype((np.void, g.out_w * padded.itemsize))
        sn, sc, sh, sw = padded.strides
        runs = np.ndarray(
            shape=(g.num, g.channels, g.kernel_h, g.kernel_w, g.out_h),
            dtype=record,
            buffer=padded,
            strides=(sn, sc, g.dilation_h * sh, g.dilation_w * sw, g.stride_h * sh),
        )
        np.copyto(out.reshape(-1).view(record).reshape(runs.shape), runs)
        return out
    windows = _per_image_windows(padded, g)
    xp.copyto(out.reshape(windows.shape), windows)
    return out


def col2im_per_image(
    col: Array, g: ConvGeometry, out: Array, work: Array | None = None
) -> Array:
    """Caffe's col2im_cpu for each image: the adjoint of im2col_per_image,
    into out (N, C, H, W). `work`: a padded (N, C, Hp, Wp) buffer, needed
    only when g.has_pad."""
    xp = array_module(col)
    acc = out if not g.has_pad else work
    if acc is None:
        acc = xp.empty(padded_shape(g, False), col.dtype)
    acc[...] = 0
    cols = col.reshape(g.num, g.channels, g.kernel_h, g.kernel_w, g.out_h, g.out_w)
    span_h = g.stride_h * (g.out_h - 1) + 1
    span_w = g.stride_w * (g.out_w - 1) + 1
    for i in range(g.kernel_h):
        h0 = i * g.dilation_h
        rows = slice(h0, h0 + span_h, g.stride_h)
        for j in range(g.kernel_w):
            w0 = j * g.dilation_w
            acc[:, :, rows, w0 : w0 + span_w : g.stride_w] += cols[:, :, i, j]
    if acc is not out:
        ph, pw = g.pad_h, g.pad_w
        xp.copyto(out, acc[:, :, ph : ph + g.height, pw : pw + g.width])
    return out


# -- row-shift lowering (batch inner, vertical stride and dilation 1) -------------
#
# A column matrix per padded image row h instead of per window:
#
#     rows[h, (c, j), (x, n)] = x_padded[c, h, x*stride_w + j*dilation_w, n]
#
# With vertical stride and dilation 1, the column matrix of output row y is
# rows[y : y + kh] read as one (kh*C*kw, ow*N) matrix, rows ordered
# (i, c, j): a contiguous block that BLAS reads in place. So the lowering
# copies each image value kw times instead of kh*kw times, and each output
# row is one full-depth GEMM that writes its block of the result directly.


def row_shift_ok(g: ConvGeometry) -> bool:
    """True when the row-shift lowering applies (vertical stride and
    dilation 1)."""
    return g.stride_h == 1 and g.dilation_h == 1


def shifted_shape(g: ConvGeometry) -> tuple[int, int, int]:
    """Shape of the row-shift matrix: (Hp, C*kw, ow*N)."""
    return (g.padded_h, g.channels * g.kernel_w, g.out_w * g.num)


def row_shift_columns(
    x: Array, g: ConvGeometry, out: Array, work: Array, c0: int = 0, c1: int = -1
) -> Array:
    """Fill the row-shift matrix `out` (shifted_shape) from x (N, C, H, W).
    `work` is the padded (C, Hp, Wp, N) image buffer (zero borders kept).
    Only channels c0 .. c1-1 (all by default): pieces of the channels write
    separate parts of `work` and `out`, so they may run on separate threads."""
    xp = array_module(x)
    c1 = g.channels if c1 < 0 else c1
    rows = out.reshape(g.padded_h, g.channels, g.kernel_w, g.out_w, g.num)
    if kernels.takes(x, out):
        kernel = kernels.compiled(kernels.row_shift_columns)
        kernel(x, rows, g.pad_h, g.pad_w, g.stride_w, g.dilation_w, c0, c1)
        return out
    part_g = dataclasses.replace(g, channels=c1 - c0)
    padded = _padded_input(x[:, c0:c1], part_g, True, work[c0:c1])
    span = g.stride_w * (g.out_w - 1) + 1
    for j in range(g.kernel_w):
        w0 = j * g.dilation_w
        part = padded[:, :, w0 : w0 + span : g.stride_w, :]
        xp.copyto(rows[:, c0:c1, j], part.transpose(1, 0, 2, 3))
    return out


def row_shift_weights(w: Array) -> Array:
    """Weights (M, C, kh, kw) -> (M, kh*C*kw), columns ordered (i, c, j)
    like a block of the row-shift matrix."""
    xp = array_module(w)
    return xp.ascontiguousarray(w.transpose(0, 2, 1, 3)).reshape(w.shape[0], -1)


def row_shift_forward(
    w_rows: Array,
    shifted: Array,
    g: ConvGeometry,
    out: Array,
    first_row: int = 0,
    stop_row: int | None = None,
) -> None:
    """out (M, oh*ow*N), columns (y, x, n) = W x column matrix: one GEMM per
    output row y, of depth kh*C*kw (Caffe's forward GEMM, split by columns).
    Only output rows first_row .. stop_row - 1 when given (each row's GEMM
    is the same either way, so pieces may run on separate threads)."""
    xp = array_module(out)
    width = shifted.shape[2]
    for y in range(first_row, g.out_h if stop_row is None else stop_row):
        block = shifted[y : y + g.kernel_h].reshape(-1, width)
        xp.matmul(w_rows, block, out=out[:, y * width : (y + 1) * width])


def row_shift_weight_gemm(dy: Array, shifted: Array, g: ConvGeometry) -> Array:
    """Weight gradient (M, C, kh, kw) = dY x (column matrix)^T, summed over
    output rows y (one GEMM each, Caffe's weight GEMM split along its
    depth)."""
    xp = array_module(dy)
    m, width = dy.shape[0], shifted.shape[2]
    total = part = None
    for y in range(g.out_h):
        block = shifted[y : y + g.kernel_h].reshape(-1, width)
        part = xp.matmul(dy[:, y * width : (y + 1) * width], block.T, out=part)
        if total is None:
            total, part = part, None
        else:
            total += part
    assert total is not None
    return total.reshape(m, g.kernel_h, g.channels, g.kernel_w).transpose(0, 2, 1, 3)


def row_shift_backward_data(
    w: Array,
    dy_rows: Array,
    g: ConvGeometry,
    shifted_diff: Array,
    work: Array,
    out: Array,
) -> None:
    """Bottom diff (N, C, H, W) = col2im(W^T x dY). dy_rows is the top diff
    as (oh, M, ow*N). Each padded row h of the row-shift matrix's diff gets
    sum over kernel rows i of W_i^T x dY[h - i]: one GEMM over the output
    rows that reach it, of depth (rows)*M. Its kernel columns are then added
    back into the padded image `work` (C, Hp, Wp, N) and cropped into `out`."""
    xp = array_module(dy_rows)
    m = w.shape[0]
    kh = g.kernel_h
    # (C*kw, kh*M), column blocks for kernel rows kh-1 .. 0: output rows
    # y0 .. y1 (ascending) meet kernel rows h-y0 .. h-y1 (descending).
    w_desc = xp.ascontiguousarray(w[:, :, ::-1, :].transpose(1, 3, 2, 0)).reshape(
        g.channels * g.kernel_w, kh * m
    )
    width = dy_rows.shape[2]
    for h in range(g.padded_h):
        y0, y1 = max(0, h - kh + 1), min(g.out_h - 1, h)
        if y0 > y1:
            shifted_diff[h] = 0
            continue
        k0 = kh - 1 - (h - y0)
        stack = dy_rows[y0 : y1 + 1].reshape(-1, width)
        xp.matmul(
            w_desc[:, k0 * m : (k0 + y1 - y0 + 1) * m], stack, out=shifted_diff[h]
        )
    rows = shifted_diff.reshape(g.padded_h, g.channels, g.kernel_w, g.out_w, g.num)
    if kernels.takes(rows, out):
        kernel = kernels.compiled(kernels.row_shift_fold)
        kernel(rows, out, g.pad_h, g.pad_w, g.stride_w, g.dilation_w, 0, g.channels)
        return
    span = g.stride_w * (g.out_w - 1) + 1
    work[...] = 0
    for j in range(g.kernel_w):
        w0 = j * g.dilation_w
        work[:, :, w0 : w0 + span : g.stride_w, :] += rows[:, :, j].transpose(
            1, 0, 2, 3
        )
    col2im_finish(work, g, True, out)


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
