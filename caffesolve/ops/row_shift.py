"""The row-shift lowering of convolution (ops/conv.py's interface):
batch-inner columns (ops/batch_inner.py) when the vertical stride and
dilation are 1 and there is one group (LeNet's conv2).

A column matrix per padded image row h instead of per window:

    rows[h, (c, j), (x, n)] = x_padded[c, h, x*stride_w + j*dilation_w, n]

With vertical stride and dilation 1, the column matrix of output row y is
rows[y : y + kh] read as one (kh*C*kw, ow*N) matrix, rows ordered
(i, c, j): a contiguous block that BLAS reads in place. So the lowering
copies each image value kw times instead of kh*kw times, and each output
row is one full-depth GEMM that writes its block of the result directly.
Building the matrix and folding its diff back are compiled loops
(caffesolve.kernels) with a NumPy twin giving the same bits.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import numpy as np
import numpy.typing as npt

from caffesolve import kernels
from caffesolve.backend import array_module, parallel_parts, run_parallel, split_range
from caffesolve.ops.batch_inner import BatchInnerLowering
from caffesolve.ops.conv import register_lowering
from caffesolve.ops.im2col import (
    ConvGeometry,
    NDGeometry,
    col2im_finish,
    padded_input,
    padded_shape,
    row_block_to_nchw,
)

Array = npt.NDArray[np.floating]


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
        kernel = kernels.compiled(row_shift_columns_kernel)
        kernel(x, rows, g.pad_h, g.pad_w, g.stride_w, g.dilation_w, c0, c1)
        return out
    part_g = dataclasses.replace(g, channels=c1 - c0)
    padded = padded_input(x[:, c0:c1], part_g, work[c0:c1])
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
        kernel = kernels.compiled(row_shift_fold_kernel)
        kernel(rows, out, g.pad_h, g.pad_w, g.stride_w, g.dilation_w, 0, g.channels)
        return
    span = g.stride_w * (g.out_w - 1) + 1
    work[...] = 0
    for j in range(g.kernel_w):
        w0 = j * g.dilation_w
        work[:, :, w0 : w0 + span : g.stride_w, :] += rows[:, :, j].transpose(
            1, 0, 2, 3
        )
    col2im_finish(work, g, out)


def _row_shift_rows(
    w_rows: Array,
    shifted: Array,
    g: ConvGeometry,
    bias: Array | None,
    y: Array,
    top: Array,
    first_row: int,
    stop_row: int,
) -> None:
    """Output rows first_row .. stop_row - 1 of the row-shift forward GEMM,
    plus the bias (M, 1), into their columns of `y` and then their rows of
    the top (N, M, oh, ow): one piece of the forward."""
    row_shift_forward(w_rows, shifted, g, y, first_row, stop_row)
    if bias is not None:
        width = shifted.shape[2]
        y[:, first_row * width : stop_row * width] += bias
    row_block_to_nchw(y, g.num, g.out_w, first_row, stop_row, top)


@register_lowering
class RowShiftLowering(BatchInnerLowering):
    """Batch-inner columns as the row-shift matrix (Hp, C*kw, ow*N)."""

    name = "row_shift"

    @classmethod
    def applies(cls, g: ConvGeometry | NDGeometry, num_output: int, group: int) -> bool:
        return isinstance(g, ConvGeometry) and group == 1 and row_shift_ok(g)

    def column_shape(self) -> tuple[int, ...]:
        return shifted_shape(self.g)

    def im2col(self, x: Array) -> Array:
        """The row-shift matrix of x, made by halves of the channels on the
        workers (each writes its own rows)."""
        g = self.g
        col = self.columns(x.dtype)
        work = self.buffer("image", padded_shape(g, True), x.dtype)
        parts = parallel_parts(col.nbytes, g.channels)
        run_parallel(
            [
                partial(row_shift_columns, x, g, col, work, c0, c1)
                for c0, c1 in split_range(g.channels, parts)
            ]
        )
        self.columns_ready = True
        return col

    def forward_gemm(
        self,
        x: Array,
        w: Array,
        y: Array,
        bias: Array | None = None,
        reuse_columns: bool = False,
    ) -> None:
        """Halves of the channels, then of the output rows, on the workers:
        each row is its own GEMM into its own block of the result, moved to
        its own rows of y."""
        g = self.g
        w_rows = row_shift_weights(w)
        out = self._gemm_side("y", x.dtype)
        col = self.lowered(x, reuse_columns)
        b = None if bias is None else bias[:, None]
        parts = parallel_parts(out.nbytes, g.out_h)
        run_parallel(
            [
                partial(_row_shift_rows, w_rows, col, g, b, out, y, y0, y1)
                for y0, y1 in split_range(g.out_h, parts)
            ]
        )

    def weight_gemm(
        self, x: Array, dy: Array, weight_diff: Array, reuse_columns: bool = False
    ) -> None:
        col = self.lowered(x, reuse_columns)
        weight_diff += row_shift_weight_gemm(dy, col, self.g)

    def backward_gemm(self, dy: Array, w: Array, dx: Array) -> None:
        g, m = self.g, self.num_output
        dtype = dy.dtype
        dy_rows = self.buffer("dy_rows", (g.out_h, m, g.out_w * g.num), dtype)
        array_module(dy).copyto(dy_rows, dy.reshape(m, g.out_h, -1).transpose(1, 0, 2))
        shifted_diff = self.buffer("shifted_diff", shifted_shape(g), dtype)
        acc = self.buffer("image_diff", padded_shape(g, True), dtype)
        row_shift_backward_data(w, dy_rows, g, shifted_diff, acc, dx)


# -- the compiled loops ------------------------------------------------------------
#
# rows (Hp, C, kw, ow, N) holds, for padded image row hp, channel c and kernel
# column j, the values x[n, c, hp - pad_h, x*stride_w + j*dilation_w - pad_w]
# for every output column x and image n (zero in the padding). Both kernels
# take the channels c0 .. c1-1, so halves of the channels may run on separate
# workers.


def row_shift_columns_kernel(x, rows, pad_h, pad_w, stride_w, dilation_w, c0, c1):  # type: ignore[no-untyped-def]
    """Fill `rows` from the bottom x (N, C, H, W) in one pass: each image row
    is transposed once into a (W, N) tile, then copied out kw times."""
    n_img, _, height, width = x.shape
    padded_h, _, kw, ow, _ = rows.shape
    tile = np.empty((width, n_img), x.dtype)
    for c in range(c0, c1):
        for hp in range(padded_h):
            h = hp - pad_h
            inside = 0 <= h < height
            if inside:
                for n in range(n_img):
                    for w in range(width):
                        tile[w, n] = x[n, c, h, w]
            for j in range(kw):
                for col in range(ow):
                    w = col * stride_w + j * dilation_w - pad_w
                    out = rows[hp, c, j, col]
                    if inside and 0 <= w < width:
                        src = tile[w]
                        for n in range(n_img):
                            out[n] = src[n]
                    else:
                        for n in range(n_img):
                            out[n] = 0


def row_shift_fold_kernel(rows, out, pad_h, pad_w, stride_w, dilation_w, c0, c1):  # type: ignore[no-untyped-def]
    """The bottom diff (N, C, H, W) from the row-shift matrix's diff `rows`:
    every value goes back to the image element it was copied from, and the
    kernel columns' contributions add up, j ascending from 0 (the NumPy
    path's order: the same bits). Padding is dropped."""
    n_img, _, height, width = out.shape
    kw, ow = rows.shape[2], rows.shape[3]
    acc = np.empty(n_img, out.dtype)
    for c in range(c0, c1):
        for h in range(height):
            hp = h + pad_h
            for w in range(width):
                for n in range(n_img):
                    acc[n] = 0
                for j in range(kw):
                    t = w + pad_w - j * dilation_w
                    if t < 0 or t % stride_w != 0 or t // stride_w >= ow:
                        continue
                    src = rows[hp, c, j, t // stride_w]
                    for n in range(n_img):
                        acc[n] += src[n]
                for n in range(n_img):
                    out[n, c, h, w] = acc[n]
