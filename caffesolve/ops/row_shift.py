"""The row-shift lowering of convolution (ops/conv.py's interface): a
smaller column matrix with the batch innermost, for small output planes when
the vertical stride and dilation are 1 and there is one group (LeNet's
conv2, CIFAR-10's conv2 and conv3). It runs in cache-sized chunks of images
(ops/conv.py's ChunkedLowering); below, N is the images of one chunk.

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

from typing import Any

import numpy as np
import numpy.typing as npt

from caffesolve import kernels
from caffesolve.backend import array_module
from caffesolve.ops.conv import ChunkedLowering, register_lowering
from caffesolve.ops.im2col import (
    ConvGeometry,
    NDGeometry,
    col2im_finish,
    columns_to_nchw,
    padded_input,
    padded_shape,
)

Array = npt.NDArray[np.floating]


def row_shift_ok(g: ConvGeometry) -> bool:
    """True when the row-shift lowering applies (vertical stride and
    dilation 1)."""
    return g.stride_h == 1 and g.dilation_h == 1


def shifted_shape(g: ConvGeometry) -> tuple[int, int, int]:
    """Shape of the row-shift matrix: (Hp, C*kw, ow*N)."""
    return (g.padded_h, g.channels * g.kernel_w, g.out_w * g.num)


def row_shift_columns(x: Array, g: ConvGeometry, out: Array, work: Array) -> Array:
    """Fill the row-shift matrix `out` (shifted_shape) from x (N, C, H, W).
    `work` is the padded (C, Hp, Wp, N) image buffer (zero borders kept)."""
    xp = array_module(x)
    rows = out.reshape(g.padded_h, g.channels, g.kernel_w, g.out_w, g.num)
    if kernels.takes(x, out):
        kernel = kernels.compiled(row_shift_columns_kernel)
        kernel(x, rows, g.pad_h, g.pad_w, g.stride_w, g.dilation_w)
        return out
    padded = padded_input(x, g, work)
    span = g.stride_w * (g.out_w - 1) + 1
    for j in range(g.kernel_w):
        w0 = j * g.dilation_w
        part = padded[:, :, w0 : w0 + span : g.stride_w, :]
        xp.copyto(rows[:, :, j], part.transpose(1, 0, 2, 3))
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


def row_shift_weight_gemm(
    dy_rows: Array, shifted: Array, g: ConvGeometry, total: Array, part: Array
) -> None:
    """total (kh*C*kw, M) += (column matrix) x dY^T, one GEMM per output row y
    (Caffe's weight GEMM split along its depth, transposed: the column
    matrix times dY^T runs faster than dY times its transpose), rows added
    in order. dy_rows is the top diff as (oh, M, ow*N); `part` a work array
    shaped like total."""
    xp = array_module(dy_rows)
    width = shifted.shape[2]
    for y in range(g.out_h):
        block = shifted[y : y + g.kernel_h].reshape(-1, width)
        xp.matmul(block, dy_rows[y].T, out=part)
        total += part


def row_shift_weight_layout(total: Array, g: ConvGeometry) -> Array:
    """row_shift_weight_gemm's (kh*C*kw, M), rows (i, c, j), as the weight
    blob's (M, C, kh, kw) (a view)."""
    m = total.shape[1]
    return total.reshape(g.kernel_h, g.channels, g.kernel_w, m).transpose(3, 1, 0, 2)


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
        kernel(rows, out, g.pad_h, g.pad_w, g.stride_w, g.dilation_w)
        return
    span = g.stride_w * (g.out_w - 1) + 1
    work[...] = 0
    for j in range(g.kernel_w):
        w0 = j * g.dilation_w
        work[:, :, w0 : w0 + span : g.stride_w, :] += rows[:, :, j].transpose(
            1, 0, 2, 3
        )
    col2im_finish(work, g, out)


@register_lowering
class RowShiftLowering(ChunkedLowering):
    """The row-shift matrix (Hp, C*kw, ow*N) of a chunk of N images."""

    name = "row_shift"

    @classmethod
    def applies(cls, g: ConvGeometry | NDGeometry, num_output: int, group: int) -> bool:
        return isinstance(g, ConvGeometry) and group == 1 and row_shift_ok(g)

    def image_column_bytes(self) -> int:
        """One image's share of an output row's GEMM operand (kh*C*kw, ow):
        the block that must stay in cache while the row GEMMs run."""
        g = self.g
        return 4 * g.kernel_h * g.channels * g.kernel_w * g.out_w

    def weight_sum_shape(self) -> tuple[int, ...]:
        g = self.g
        return (g.kernel_h * g.channels * g.kernel_w, self.num_output)

    def add_weight_sum(self, total: Array, weight_diff: Array) -> None:
        weight_diff += row_shift_weight_layout(total, self.g)

    def _array(
        self, name: str, piece: int, shape: tuple[int, ...], dtype: Any
    ) -> Array:
        """A piece's work array for one chunk size (the batch inner, so a
        smaller last chunk has arrays of its own)."""
        return self.piece_buffer(f"{name}{shape[-1]}", piece, shape, dtype)

    def _columns(self, x: Array, g: ConvGeometry, c0: int, piece: int) -> Array:
        """The row-shift matrix of the chunk of images c0 .. c0+g.num-1 (or
        the one kept in the piece's buffer, while `reusing`)."""
        rows = self._array("rows", piece, shifted_shape(g), x.dtype)
        if self.reusing:
            return rows
        work = self._array("image", piece, padded_shape(g, True), x.dtype)
        return row_shift_columns(x[c0 : c0 + g.num], g, rows, work)

    def forward_gemm(
        self,
        x: Array,
        w: Array,
        y: Array,
        bias: Array | None = None,
        reuse_columns: bool = False,
    ) -> None:
        """The chunks' GEMMs take the weights with columns ordered
        (i, c, j), like a block of the row-shift matrix."""
        super().forward_gemm(x, row_shift_weights(w), y, bias, reuse_columns)

    def forward_chunk(
        self,
        x: Array,
        w: Array,
        y: Array,
        bias: Array | None,
        c0: int,
        c1: int,
        piece: int,
    ) -> None:
        """The row-shift matrix, one GEMM per output row into the chunk's
        result (M, oh*ow*N), the bias, and the result moved to y's NCHW."""
        g = self.part(c1 - c0)
        rows = self._columns(x, g, c0, piece)
        out = self._array("y", piece, (self.num_output, g.col_cols), x.dtype)
        row_shift_forward(w, rows, g, out)
        if bias is not None:
            out += bias[:, None]
        columns_to_nchw(out, g.num, y[c0:c1])

    def backward_chunk(
        self,
        x: Array,
        dy: Array,
        w: Array,
        dx: Array | None,
        weight_sum: Array | None,
        c0: int,
        c1: int,
        piece: int,
    ) -> None:
        """The chunk's top diff as (oh, M, ow*N); the weight GEMMs over its
        row-shift matrix; the data GEMMs and the fold into dx."""
        g, m = self.part(c1 - c0), self.num_output
        dy_rows = self._array("dy_rows", piece, (g.out_h, m, g.out_w * g.num), dy.dtype)
        array_module(dy).copyto(
            dy_rows.reshape(g.out_h, m, g.out_w, g.num), dy[c0:c1].transpose(2, 1, 3, 0)
        )
        if weight_sum is not None:
            rows = self._columns(x, g, c0, piece)
            part = self.piece_buffer("weight_part", piece, weight_sum.shape, dy.dtype)
            row_shift_weight_gemm(dy_rows, rows, g, weight_sum, part)
        if dx is not None:
            shifted_diff = self._array(
                "shifted_diff", piece, shifted_shape(g), dy.dtype
            )
            acc = self._array("image_diff", piece, padded_shape(g, True), dy.dtype)
            row_shift_backward_data(w, dy_rows, g, shifted_diff, acc, dx[c0:c1])


# -- the compiled loops ------------------------------------------------------------
#
# rows (Hp, C, kw, ow, N) holds, for padded image row hp, channel c and kernel
# column j, the values x[n, c, hp - pad_h, x*stride_w + j*dilation_w - pad_w]
# for every output column x and image n (zero in the padding).


def row_shift_columns_kernel(x, rows, pad_h, pad_w, stride_w, dilation_w):  # type: ignore[no-untyped-def]
    """Fill `rows` from the bottom x (N, C, H, W) in one pass: each image row
    is transposed once into a (W, N) tile, then copied out kw times."""
    n_img, _, height, width = x.shape
    padded_h, _, kw, ow, _ = rows.shape
    tile = np.empty((width, n_img), x.dtype)
    for c in range(rows.shape[1]):
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


def row_shift_fold_kernel(rows, out, pad_h, pad_w, stride_w, dilation_w):  # type: ignore[no-untyped-def]
    """The bottom diff (N, C, H, W) from the row-shift matrix's diff `rows`:
    every value goes back to the image element it was copied from, and the
    kernel columns' contributions add up, j ascending from 0 (the NumPy
    path's order: the same bits). Padding is dropped."""
    n_img, _, height, width = out.shape
    kw, ow = rows.shape[2], rows.shape[3]
    acc = np.empty(n_img, out.dtype)
    for c in range(rows.shape[1]):
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
