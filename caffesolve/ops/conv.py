"""Convolution's lowering, as pure array functions (Caffe's util/im2col.cpp).

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

`prefer_batch_inner` picks one from the shapes. Batch outer runs as per-image
columns (N, K, oh*ow), whose stacked GEMMs write NCHW with no transpose;
batch inner, when the vertical stride and dilation are 1, as the row-shift
matrix (ops/row_shift.py), which copies each value kw rather than kh*kw
times and needs no col2im scatter of a full column matrix. Every function
keeps the dtype of its inputs (float32 in nets, float64 in gradient checks)
and takes optional preallocated buffers so a layer reuses them across
iterations.
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


def col2im_row_block(
    g: ConvGeometry, itemsize: int, target_bytes: int = 1 << 21
) -> int:
    """Output rows per piece when the column matrix is made and consumed in
    pieces of about `target_bytes` (2 MiB: stays in cache between the GEMM
    that writes a piece and the adds that read it)."""
    row_bytes = g.kernel_dim * g.out_w * g.num * itemsize
    return max(1, min(g.out_h, target_bytes // max(row_bytes, 1)))


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


# -- the GEMMs of base_conv_layer.cpp, group by group ---------------------------


def conv_forward_gemm(w: Array, col: Array, group: int, out: Array) -> None:
    """out (M, cols) = W (M, K/group) x col (K, cols), group by group
    (base_conv_layer.cpp forward_cpu_gemm)."""
    xp = array_module(w)
    if group == 1:
        xp.matmul(w, col, out=out)
        return
    m, kg = w.shape
    xp.matmul(
        w.reshape(group, m // group, kg),
        col.reshape(group, kg, -1),
        out=out.reshape(group, m // group, -1),
    )


def conv_weight_gemm(dy: Array, col: Array, group: int) -> Array:
    """dW (M, K/group) = dY (M, cols) x col^T, group by group
    (weight_cpu_gemm, summed over the batch by the GEMM itself)."""
    xp = array_module(dy)
    if group == 1:
        return xp.matmul(dy, col.T)
    m, cols = dy.shape
    k = col.shape[0]
    return xp.matmul(
        dy.reshape(group, m // group, cols),
        col.reshape(group, k // group, cols).transpose(0, 2, 1),
    ).reshape(m, k // group)


def conv_data_gemm(w: Array, dy: Array, group: int, out: Array) -> None:
    """dcol (K, cols) = W^T x dY, group by group (backward_cpu_gemm)."""
    xp = array_module(w)
    if group == 1:
        xp.matmul(w.T, dy, out=out)
        return
    m, kg = w.shape
    xp.matmul(
        w.reshape(group, m // group, kg).transpose(0, 2, 1),
        dy.reshape(group, m // group, -1),
        out=out.reshape(group, kg, -1),
    )


def per_image_forward_gemm(w: Array, col: Array, group: int, out: Array) -> None:
    """out (N, M, P) = W (M, K/group) x col[n] (K, P) for every image n,
    group by group: forward_cpu_gemm per image, as Caffe runs it."""
    xp = array_module(w)
    if group == 1:
        xp.matmul(w, col, out=out)
        return
    m, kg = w.shape
    n, _, p = col.shape
    xp.matmul(
        w.reshape(group, m // group, kg),
        col.reshape(n, group, kg, p),
        out=out.reshape(n, group, m // group, p),
    )


def per_image_weight_products(dy: Array, col: Array, group: int, out: Array) -> None:
    """out[n] (group, M/group, K/group) = dY[n] (M, P) x col[n]^T for every
    image n, group by group: Caffe's weight_cpu_gemm of each image."""
    xp = array_module(dy)
    n, m, p = dy.shape
    kg = col.shape[1] // group
    xp.matmul(
        dy.reshape(n, group, m // group, p),
        col.reshape(n, group, kg, p).transpose(0, 1, 3, 2),
        out=out,
    )


def per_image_weight_gemm(dy: Array, col: Array, group: int) -> Array:
    """dW (M, K/group) = sum over images n of dY[n] (M, P) x col[n]^T,
    group by group (weight_cpu_gemm, one per image, then added up)."""
    xp = array_module(dy)
    n, m, _ = dy.shape
    kg = col.shape[1] // group
    per_image = xp.empty((n, group, m // group, kg), dy.dtype)
    per_image_weight_products(dy, col, group, per_image)
    return per_image.sum(axis=0).reshape(m, kg)


def per_image_data_gemm(w: Array, dy: Array, group: int, out: Array) -> None:
    """dcol[n] (K, P) = W^T x dY[n] for every image n, group by group
    (backward_cpu_gemm)."""
    xp = array_module(w)
    m, kg = w.shape
    n, _, p = dy.shape
    xp.matmul(
        w.reshape(group, m // group, kg).transpose(0, 2, 1),
        dy.reshape(n, group, m // group, p),
        out=out.reshape(n, group, kg, p),
    )
