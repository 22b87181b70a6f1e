"""Convolution geometry and Caffe's im2col / col2im (util/im2col.cpp) for a
whole batch, in the two column layouts the lowerings use.

Rows of a column matrix are ordered (channel, kernel row, kernel column)
like Caffe's, so a weight blob (num_output, channels/group, kh, kw) reshapes
to (M, K) unchanged and group g's rows are one contiguous block:

    col[(c, i, j), column] = x_padded[n, c, y*stride + i*dilation,
                                      x*stride + j*dilation]

- Per-image columns (N, K, oh*ow): Caffe's own im2col buffer for every image
  at once. A stacked GEMM W x col[n] writes the top in NCHW directly. im2col
  copies runs of `ow` contiguous values: good when output planes are large.
  These take any number of spatial axes (Caffe's im2col_nd_cpu: rows ordered
  (channel, kernel offsets in row-major order), columns the output positions
  in row-major order), with the sizes in an NDGeometry.
- Batch-inner columns (K, oh*ow*N), columns ordered (y, x, n): the image is
  first transposed to (C, H, W, N), so im2col and col2im move runs of ow*N
  values and the NCHW <-> (.., N) conversions are 2-D transposes: good when
  output planes are small.

Every function keeps the dtype of its inputs (float32 in nets, float64 in
gradient checks) and takes preallocated buffers, so a lowering reuses them
across iterations.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import cached_property

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


@dataclass(frozen=True)
class ConvGeometry:
    """One 2-D convolution's sizes: the image side (num, channels, height,
    width: Caffe's conv_input_shape), kernel, stride, pad and dilation per
    spatial axis, and the output (column) size."""

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

    @property
    def nd(self) -> NDGeometry:
        """The same sizes as an NDGeometry with two spatial axes."""
        return NDGeometry(
            self.num,
            self.channels,
            (self.height, self.width),
            (self.kernel_h, self.kernel_w),
            (self.stride_h, self.stride_w),
            (self.pad_h, self.pad_w),
            (self.dilation_h, self.dilation_w),
        )


@dataclass(frozen=True)
class NDGeometry:
    """A convolution's sizes along any number of spatial axes (Caffe's
    im2col_nd_cpu): the image side (num, channels, spatial `shape`), and
    per spatial axis the kernel, stride, pad and dilation."""

    num: int
    channels: int
    shape: tuple[int, ...]
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    pad: tuple[int, ...]
    dilation: tuple[int, ...]

    @cached_property
    def out_shape(self) -> tuple[int, ...]:
        return tuple(
            conv_out_size(*a)
            for a in zip(self.shape, self.kernel, self.stride, self.pad, self.dilation)
        )

    @cached_property
    def padded_shape(self) -> tuple[int, ...]:
        """Spatial sizes of the zero-padded image (see ConvGeometry.padded_h)."""
        return tuple(
            max(size + 2 * pad, (out - 1) * stride + dilation * (k - 1) + 1)
            for size, k, stride, pad, dilation, out in zip(
                self.shape,
                self.kernel,
                self.stride,
                self.pad,
                self.dilation,
                self.out_shape,
            )
        )

    @cached_property
    def has_pad(self) -> bool:
        return self.padded_shape != self.shape

    @property
    def kernel_dim(self) -> int:
        """Rows of the column matrix: channels * prod(kernel)."""
        return self.channels * math.prod(self.kernel)

    @property
    def col_cols(self) -> int:
        """Columns of the column matrix: num * prod(out_shape)."""
        return self.num * math.prod(self.out_shape)


def as_nd(g: ConvGeometry | NDGeometry) -> NDGeometry:
    return g.nd if isinstance(g, ConvGeometry) else g


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


def columns_to_nchw(y: Array, num: int, out: Array) -> None:
    """Batch-inner GEMM result (M, oh*ow*N) -> top (N, M, oh, ow)."""
    xp = array_module(y)
    xp.copyto(out.reshape(num, -1), y.reshape(-1, num).T)


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


def nchw_to_columns(d: Array, out: Array) -> None:
    """Top diff (N, M, oh, ow) -> batch-inner columns (M, oh*ow*N)."""
    xp = array_module(d)
    num = d.shape[0]
    xp.copyto(out.reshape(-1, num), d.reshape(num, -1).T)


def padded_shape(g: ConvGeometry, batch_inner: bool) -> tuple[int, ...]:
    """Shape of the (padded) image buffer that im2col / col2im work in:
    (C, Hp, Wp, N) for batch-inner columns, (N, C, Hp, Wp) per image."""
    if batch_inner:
        return (g.channels, g.padded_h, g.padded_w, g.num)
    return padded_image_shape(g)


def padded_input(x: Array, g: ConvGeometry, work: Array | None) -> Array:
    """x (N, C, H, W) as the zero-padded (C, Hp, Wp, N) image of batch-inner
    columns. `work`, if given, must keep zero borders between calls (only
    its interior is written here)."""
    xp = array_module(x)
    if not g.has_pad:
        return nchw_to_chwn(x, work)
    if work is None:
        work = xp.zeros(padded_shape(g, True), x.dtype)
    interior = work[:, g.pad_h : g.pad_h + g.height, g.pad_w : g.pad_w + g.width, :]
    xp.copyto(interior, x.transpose(1, 2, 3, 0))
    return work


# -- batch-inner columns ------------------------------------------------------------


def im2col(
    x: Array, g: ConvGeometry, out: Array | None = None, work: Array | None = None
) -> Array:
    """Caffe's im2col_cpu for the whole batch, batch inner: x (N, C, H, W) ->
    col (C*kh*kw, oh*ow*N); padding reads as zero. `work` is the padded
    (C, Hp, Wp, N) image buffer; it must start zeroed and is reused as is."""
    xp = array_module(x)
    if out is None:
        out = xp.empty((g.kernel_dim, g.col_cols), x.dtype)
    padded = padded_input(x, g, work)
    sc, sh, sw, sn = padded.strides
    windows = strided_view(
        padded,
        (g.channels, g.kernel_h, g.kernel_w, g.out_h, g.out_w, g.num),
        (sc, g.dilation_h * sh, g.dilation_w * sw, g.stride_h * sh, g.stride_w * sw)
        + (sn,),
    )
    xp.copyto(out.reshape(windows.shape), windows)
    return out


def col2im_add(
    col: Array,
    g: ConvGeometry,
    acc: Array,
    first_row: int = 0,
    num_rows: int | None = None,
) -> None:
    """Add batch-inner columns back into the padded image `acc` (C, Hp, Wp, N)
    (Caffe's col2im_cpu, whose adds these are). `col` may hold only output
    rows first_row .. first_row + num_rows (its columns are (y, x, n), so a
    block of rows is a block of columns), letting a caller make and consume
    the column matrix in cache-sized pieces."""
    rows_here = g.out_h if num_rows is None else num_rows
    cols = col.reshape(g.channels, g.kernel_h, g.kernel_w, rows_here, g.out_w, g.num)
    span_h = g.stride_h * (rows_here - 1) + 1
    span_w = g.stride_w * (g.out_w - 1) + 1
    for i in range(g.kernel_h):
        h0 = i * g.dilation_h + first_row * g.stride_h
        rows = slice(h0, h0 + span_h, g.stride_h)
        for j in range(g.kernel_w):
            w0 = j * g.dilation_w
            acc[:, rows, w0 : w0 + span_w : g.stride_w, :] += cols[:, i, j]


def col2im_finish(work: Array, g: ConvGeometry, out: Array) -> None:
    """Crop the padding off the accumulated image (C, Hp, Wp, N) and write it
    to `out` as (N, C, H, W)."""
    xp = array_module(work)
    if g.has_pad:
        ph, pw = g.pad_h, g.pad_w
        interior = work[:, ph : ph + g.height, pw : pw + g.width, :]
        xp.copyto(out, interior.transpose(3, 0, 1, 2))
    else:
        chwn_to_nchw(work, out)


def col2im_row_block(
    g: ConvGeometry, itemsize: int, target_bytes: int = 1 << 21
) -> int:
    """Output rows per piece when the column matrix is made and consumed in
    pieces of about `target_bytes` (2 MiB: stays in cache between the GEMM
    that writes a piece and the adds that read it)."""
    row_bytes = g.kernel_dim * g.out_w * g.num * itemsize
    return max(1, min(g.out_h, target_bytes // max(row_bytes, 1)))


# -- per-image columns, any number of spatial axes ------------------------------


def per_image_shape(g: ConvGeometry | NDGeometry) -> tuple[int, int, int]:
    """Shape of the per-image column stack: (N, C*prod(kernel), prod(out))."""
    g = as_nd(g)
    return (g.num, g.kernel_dim, math.prod(g.out_shape))


def padded_image_shape(g: ConvGeometry | NDGeometry) -> tuple[int, ...]:
    """Shape of the padded (N, C, *padded spatial) image buffer of per-image
    im2col / col2im."""
    g = as_nd(g)
    return (g.num, g.channels) + g.padded_shape


def _interior(g: NDGeometry) -> tuple[slice, ...]:
    """The image inside the padded buffer (N, C, *padded)."""
    inside = tuple(slice(p, p + size) for p, size in zip(g.pad, g.shape))
    return (slice(None), slice(None)) + inside


def im2col_per_image(
    x: Array,
    g: ConvGeometry | NDGeometry,
    out: Array | None = None,
    work: Array | None = None,
) -> Array:
    """Caffe's im2col_cpu (im2col_nd_cpu) for each image: x (N, C, *shape)
    -> col (N, C*prod(kernel), prod(out)); padding reads as zero. `work`:
    the zero-bordered padded buffer (padded_image_shape), needed only when
    g.has_pad (its interior is written here, its borders stay zero)."""
    g = as_nd(g)
    xp = array_module(x)
    if out is None:
        out = xp.empty(per_image_shape(g), x.dtype)
    padded = x
    if g.has_pad:
        if work is None:
            work = xp.zeros(padded_image_shape(g), x.dtype)
        xp.copyto(work[_interior(g)], x)
        padded = work
    sn, sc, *spatial = padded.strides
    kernel_strides = tuple(d * s for d, s in zip(g.dilation, spatial))
    out_strides = tuple(st * s for st, s in zip(g.stride, spatial))
    outer = (g.num, g.channels) + g.kernel + g.out_shape[:-1]
    outer_strides = (sn, sc) + kernel_strides + out_strides[:-1]
    if xp is np and g.shape and g.stride[-1] == 1 and padded.flags.c_contiguous:
        # Each window row is a run of out_shape[-1] contiguous values: copy
        # whole runs as single records (one loop call per kernel offset and
        # output row, not per value).
        record = np.dtype((np.void, g.out_shape[-1] * padded.itemsize))
        runs = np.ndarray(
            shape=outer, dtype=record, buffer=padded, strides=outer_strides
        )
        np.copyto(out.reshape(-1).view(record).reshape(runs.shape), runs)
        return out
    windows = strided_view(
        padded, outer + g.out_shape[-1:], outer_strides + out_strides[-1:]
    )
    xp.copyto(out.reshape(windows.shape), windows)
    return out


def col2im_per_image(
    col: Array,
    g: ConvGeometry | NDGeometry,
    out: Array,
    work: Array | None = None,
) -> Array:
    """Caffe's col2im_cpu (col2im_nd_cpu) for each image: the adjoint of
    im2col_per_image, into out (N, C, *shape): each column value is added
    back to the element it was read from, kernel offsets in row-major order;
    values from the padding are dropped. `work`: a padded buffer
    (padded_image_shape), needed only when g.has_pad. With two spatial axes
    the adds run as a compiled loop (col2im_kernel) when the kernels are on:
    one call instead of one per kernel offset, the same adds in the same
    order."""
    g = as_nd(g)
    xp = array_module(col)
    acc = out if not g.has_pad else work
    if acc is None:
        acc = xp.empty(padded_image_shape(g), col.dtype)
    acc[...] = 0
    flat = col.reshape(per_image_shape(g))
    if len(g.shape) == 2 and kernels.takes(flat, acc):
        kernel = kernels.compiled(col2im_kernel)
        kernel(flat, acc, *g.kernel, *g.stride, *g.dilation, g.out_shape[1])
    else:
        cols = col.reshape((g.num, g.channels) + g.kernel + g.out_shape)
        everything = (slice(None), slice(None))
        for offset in itertools.product(*(range(k) for k in g.kernel)):
            window = tuple(
                slice(i * d, i * d + st * (o - 1) + 1, st)
                for i, d, st, o in zip(offset, g.dilation, g.stride, g.out_shape)
            )
            acc[everything + window] += cols[everything + offset]
    if acc is not out:
        xp.copyto(out, acc[_interior(g)])
    return out


def col2im_kernel(col, acc, kh, kw, sh, sw, dh, dw, ow):  # type: ignore[no-untyped-def]
    """The adds of 2-D col2im_per_image as one compiled loop: col
    (N, C*kh*kw, oh*ow) into the zeroed padded image acc (N, C, Hp, Wp),
    acc[n, c, y*sh + i*dh, x*sw + j*dw] += col[n, (c, i, j), (y, x)], with
    each element's contributions added in kernel-offset order, as the NumPy
    loop adds them (the same bits)."""
    num, channels = acc.shape[0], acc.shape[1]
    oh = col.shape[2] // ow
    for n in range(num):
        for c in range(channels):
            image = acc[n, c]
            for i in range(kh):
                for j in range(kw):
                    src = col[n, (c * kh + i) * kw + j]
                    if sw == 1 and dw == 1:  # contiguous runs: vector adds
                        for y in range(oh):
                            dst = image[y * sh + i * dh]
                            for t in range(ow):
                                dst[j + t] += src[y * ow + t]
                        continue
                    for y in range(oh):
                        dst = image[y * sh + i * dh]
                        for t in range(ow):
                            dst[j * dw + t * sw] += src[y * ow + t]
