"""The batch-inner lowering of convolution (ops/conv.py's interface): one
column matrix (C*kh*kw, oh*ow*N) for the whole batch, columns ordered
(y, x, n), and one batched GEMM call over the groups.

The image is first transposed to (C, H, W, N), so im2col and col2im move
runs of ow*N contiguous values and the NCHW <-> (.., N) conversions are 2-D
transposes: good when output planes are small, where per-image runs would
be a few floats. Backward makes the column matrix of the bottom diff and
folds it back a block of output rows at a time, so each block is still in
cache when col2im reads it.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from caffesolve.backend import array_module
from caffesolve.ops.conv import ConvLowering, register_lowering
from caffesolve.ops.im2col import (
    col2im_add,
    col2im_finish,
    col2im_row_block,
    columns_to_nchw,
    im2col,
    nchw_to_columns,
    padded_shape,
)

Array = npt.NDArray[np.floating]

# Size of the pieces in which backward makes and folds back the column matrix
# of the bottom diff: small enough to stay in cache.
COL_PIECE_BYTES = 1 << 21


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


@register_lowering
class BatchInnerLowering(ConvLowering):
    """One (K, oh*ow*N) column matrix for the batch."""

    name = "batch_inner"

    def column_shape(self) -> tuple[int, ...]:
        return (self.g.kernel_dim, self.g.col_cols)

    def _gemm_side(self, name: str, dtype: np.dtype) -> Array:
        """A (M, oh*ow*N) buffer: a GEMM result or operand in this layout."""
        return self.buffer(name, (self.num_output, self.g.col_cols), dtype)

    def im2col(self, x: Array) -> Array:
        col = self.columns(x.dtype)
        work = self.buffer("image", padded_shape(self.g, True), x.dtype)
        im2col(x, self.g, out=col, work=work)
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
        out = self._gemm_side("y", x.dtype)
        col = self.lowered(x, reuse_columns)
        conv_forward_gemm(w.reshape(self.num_output, -1), col, self.group, out)
        if bias is not None:
            out += bias[:, None]
        columns_to_nchw(out, self.g.num, y)

    def output_columns(self, y: Array) -> Array:
        dy = self._gemm_side("dy", y.dtype)
        nchw_to_columns(y, dy)
        return dy

    def backward_bias(self, dy: Array, bias_diff: Array) -> None:
        """Caffe's backward_cpu_bias: a GEMV of the diff with ones."""
        ones = self.buffer("ones", (self.g.col_cols,), dy.dtype, fill=1.0)
        bias_diff += array_module(dy).matmul(dy, ones)

    def weight_gemm(
        self, x: Array, dy: Array, weight_diff: Array, reuse_columns: bool = False
    ) -> None:
        col = self.lowered(x, reuse_columns)
        dw = conv_weight_gemm(dy, col, self.group)
        weight_diff += dw.reshape(weight_diff.shape)

    def backward_gemm(self, dy: Array, w: Array, dx: Array) -> None:
        """The column matrix of dx made and folded back a block of output
        rows at a time (each block still in cache when col2im reads it)."""
        g, m = self.g, self.num_output
        dtype = dy.dtype
        acc = self.buffer("image_diff", padded_shape(g, True), dtype)
        acc[...] = 0
        block = col2im_row_block(g, dy.itemsize, COL_PIECE_BYTES)
        row_cols = g.out_w * g.num
        dy_rows = dy.reshape(m, g.out_h, row_cols)
        piece = self.buffer("col_piece", (g.kernel_dim, block * row_cols), dtype)
        w2 = w.reshape(m, -1)
        for y0 in range(0, g.out_h, block):
            rows = min(block, g.out_h - y0)
            if rows != block:
                piece = array_module(dy).empty((g.kernel_dim, rows * row_cols), dtype)
            part = dy_rows[:, y0 : y0 + rows].reshape(m, -1)
            conv_data_gemm(w2, part, self.group, piece)
            col2im_add(piece, g, acc, y0, rows)
        col2im_finish(acc, g, dx)
