"""Convolution (Caffe's conv_layer.cpp over base_conv_layer.cpp).

Keeps Caffe's parameters, checks, output sizes and arithmetic; the array work
lives in caffesolve/ops/conv.py and ops/row_shift.py. Convolution lowers the
whole batch at once, in one of three layouts: per-image columns with one
stacked GEMM call (large planes, LeNet conv1); the row-shift matrix with one
GEMM per output row (small planes, vertical stride 1, one group: LeNet
conv2); or one batch-inner column matrix with one GEMM per group otherwise.
Results differ from Caffe's only in the order of float32 sums. Buffers are
kept across iterations, and the columns built by forward are reused by the
weight gradient in backward (Caffe rebuilds them from the same bottom).

With more than one worker thread (caffesolve.backend.run_parallel), the
convolution runs in independent pieces: forward by halves of the batch
(per-image columns) or of the output rows (row shift), backward the weight
and the data gradient side by side. Each piece writes its own outputs with
the same GEMMs as the inline path, so results are the same bit for bit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
import numpy.typing as npt

from caffesolve.backend import (
    array_module,
    parallel_parts,
    run_parallel,
    split_range,
)
from caffesolve.blob import Blob
from caffesolve.errors import ShapeError
from caffesolve.layers import register
from caffesolve.layers.base import Layer
from caffesolve.ops import conv as lowering
from caffesolve.ops import row_shift
from caffesolve.ops.conv import (
    ConvGeometry,
    conv_data_gemm,
    conv_forward_gemm,
    conv_weight_gemm,
    per_image_data_gemm,
    per_image_forward_gemm,
    per_image_weight_products,
)
from caffesolve.proto import caffe_pb2

Array = npt.NDArray[np.float32]

# Size of the pieces in which backward makes and folds back the column matrix
# of the bottom diff (batch-inner lowering): small enough to stay in cache.
COL_PIECE_BYTES = 1 << 21


def _per_axis(
    layer: Layer,
    values: Sequence[int],
    name: str,
    default: int | None,
    num_spatial: int = 2,
) -> list[int]:
    """A repeated conv field (kernel_size, stride, pad, dilation): given
    once, once per spatial axis, or (with a default) not at all."""
    n = len(values)
    if n == 0 and default is not None:
        return [default] * num_spatial
    if n == 1:
        return [int(values[0])] * num_spatial
    if n == num_spatial:
        return [int(v) for v in values]
    raise layer.config_error(
        f"convolution_param.{name} must be specified once, or once per spatial "
        f"dimension ({name} specified {n} times; {num_spatial} spatial dims)."
    )


def _pair(
    layer: Layer,
    p: caffe_pb2.ConvolutionParameter,
    name: str,
    field: str,
    default: int | None,
) -> tuple[int, int]:
    """`name_h`/`name_w` if either is set, else the repeated field `field`."""
    h, w = f"{name}_h", f"{name}_w"
    if p.HasField(h) or p.HasField(w):
        if len(getattr(p, field)):
            raise layer.config_error(
                f"Either {field} or {h}/{w} should be specified; not both."
            )
        return int(getattr(p, h)), int(getattr(p, w))
    a, b = _per_axis(layer, getattr(p, field), field, default)
    return a, b


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
    row_shift.row_shift_forward(w_rows, shifted, g, y, first_row, stop_row)
    if bias is not None:
        width = shifted.shape[2]
        y[:, first_row * width : stop_row * width] += bias
    lowering.row_block_to_nchw(y, g.num, g.out_w, first_row, stop_row, top)


def _nchw(a: Array, shape: tuple[int, int, int, int], what: str) -> Array:
    """View `a` as (num, C, H, W) without copying (leading axes folded)."""
    if not a.flags.c_contiguous:
        raise ShapeError(f"{what} must be a contiguous array")
    return a.reshape(shape)


@register
class ConvolutionLayer(Layer):
    """Caffe's Convolution: top[n, m] = sum_c W[m, c] (*) bottom[n, c] + b[m]
    (cross-correlation with stride, pad, dilation; channels split into
    `group` independent groups). Weights (num_output, channels/group, kh, kw),
    bias (num_output,). Output size per axis:
    (in + 2*pad - (dilation*(k-1)+1)) / stride + 1. Several bottoms share the
    weights, each with its own top (conv_layer.cpp)."""

    type = "Convolution"
    min_bottom_blobs = 1
    min_top_blobs = 1
    equal_num_bottom_top_blobs = True

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.layer_param.convolution_param
        try:
            self.channel_axis = bottom[0].canonical_axis_index(p.axis)
        except ShapeError as e:
            raise self.config_error(f"convolution_param.axis: {e}") from None
        self.num_spatial_axes = bottom[0].num_axes - self.channel_axis - 1
        if self.num_spatial_axes != 2:
            raise self.config_error(
                f"only 2-D convolution is supported: bottom "
                f"{bottom[0].shape_string()} has {self.num_spatial_axes} spatial "
                f"axes after channel axis {self.channel_axis} (convolution_param."
                f"axis); reshape the bottom to (N, C, H, W)"
            )
        self.kernel = _pair(self, p, "kernel", "kernel_size", None)
        self.stride = _pair(self, p, "stride", "stride", 1)
        self.pad = _pair(self, p, "pad", "pad", 0)
        self.dilation = tuple(_per_axis(self, p.dilation, "dilation", 1))
        if min(self.kernel) <= 0:
            raise self.config_error(
                "Filter dimensions must be nonzero (set convolution_param."
                "kernel_size, or kernel_h and kernel_w)."
            )
        if min(self.stride) <= 0:
            raise self.config_error("Stride dimensions must be nonzero.")
        if min(self.dilation) <= 0:
            raise self.config_error("Dilation dimensions must be nonzero.")
        self.channels = bottom[0].shape[self.channel_axis]
        self.num_output = int(p.num_output)
        if self.num_output <= 0:
            raise self.config_error(
                "convolution_param.num_output is required (and must be > 0)"
            )
        self.group = int(p.group)
        if self.group <= 0 or self.channels % self.group:
            raise self.config_error(
                f"convolution_param.group: the {self.channels} input channels "
                f"must be a multiple of group ({self.group})"
            )
        if self.num_output % self.group:
            raise self.config_error(
                f"Number of output should be multiples of group "
                f"(convolution_param.num_output {self.num_output}, group "
                f"{self.group})."
            )
        self.bias_term = bool(p.bias_term)
        weight_shape = (self.num_output, self.channels // self.group) + self.kernel
        dtype = bottom[0].data.dtype
        if self.blobs:
            self._check_blobs(weight_shape)
        else:
            weight = Blob(weight_shape, dtype=dtype)
            self.fill(weight, p.weight_filler, "convolution_param.weight_filler")
            self.blobs = [weight]
            if self.bias_term:
                bias = Blob((self.num_output,), dtype=dtype)
                self.fill(bias, p.bias_filler, "convolution_param.bias_filler")
                self.blobs.append(bias)
        self.param_propagate_down = [True] * len(self.blobs)
        self.geometry: ConvGeometry | None = None
        self._cols: list[Array | None] = []
        self._col_valid: list[bool] = []

    def _check_blobs(self, weight_shape: tuple[int, ...]) -> None:
        """Caffe's checks on blobs given before setup (e.g. shared weights)."""
        if len(self.blobs) != 1 + self.bias_term:
            raise self.config_error("Incorrect number of weight blobs.")
        expected = [weight_shape] + ([(self.num_output,)] if self.bias_term else [])
        for name, shape, blob in zip(("weight", "bias"), expected, self.blobs):
            if blob.shape != shape:
                raise ShapeError(
                    f"{self.where()}: Incorrect {name} shape: expected shape "
                    f"{' '.join(map(str, shape))}; instead, shape was "
                    f"{blob.shape_string()}"
                )

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        self.xp = array_module(bottom[0].data)  # numpy (CuPy later)
        axis = self.channel_axis
        shape = bottom[0].shape
        if len(shape) != axis + 1 + self.num_spatial_axes:
            raise ShapeError(f"{self.where()}: bottom num_axes may not change.")
        if shape[axis] != self.channels:
            raise ShapeError(
                f"{self.where()}: Input size incompatible with convolution kernel "
                f"(bottom '{bottom[0].name}' {bottom[0].shape_string()} has "
                f"{shape[axis]} channels, the weights take {self.channels})"
            )
        for i, b in enumerate(bottom[1:], start=1):
            if b.shape != shape:
                raise ShapeError(
                    f"{self.where()}: shape mismatch - bottom[0]: "
                    f"{bottom[0].shape_string()} vs. bottom[{i}]: {b.shape_string()}"
                )
        num = bottom[0].count_range(0, axis)
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.pad
        dh, dw = self.dilation
        g = ConvGeometry(
            num, self.channels, shape[axis + 1], shape[axis + 2],
            kh, kw, sh, sw, ph, pw, dh, dw,
        )  # fmt: skip
        if g.out_h <= 0 or g.out_w <= 0:
            raise ShapeError(
                f"{self.where()}: the kernel (extent {dh * (kh - 1) + 1}x"
                f"{dw * (kw - 1) + 1}) is larger than the padded bottom "
                f"{bottom[0].shape_string()}"
            )
        top_shape = shape[:axis] + (self.num_output, g.out_h, g.out_w)
        for t in top:
            t.reshape(top_shape)
        if g != self.geometry or len(self._cols) != len(bottom):
            self.geometry = g
            self.batch_inner = lowering.prefer_batch_inner(g, self.num_output)
            # Batch-inner columns with vertical stride and dilation 1: the
            # smaller row-shift matrix, one GEMM per output row (im2col.py);
            # one group only.
            self.row_shift = (
                self.batch_inner and self.group == 1 and row_shift.row_shift_ok(g)
            )
            self.forget_buffers()
            self._cols = [None] * len(bottom)
            self._col_valid = [False] * len(bottom)

    # -- buffers, kept across iterations ------------------------------------------

    def _col(self, i: int, dtype: np.dtype) -> Array:
        g = self.geometry
        assert g is not None
        col = self._cols[i]
        if self.row_shift:
            shape = row_shift.shifted_shape(g)
        elif not self.batch_inner:
            shape = lowering.per_image_shape(g)
        else:
            shape = (g.kernel_dim, g.col_cols)
        if col is None or col.dtype != dtype or col.shape != shape:
            col = self.xp.empty(shape, dtype)
            self._cols[i] = col
        return col

    def _im2col(self, i: int, x: Array) -> Array:
        if self.row_shift:
            return self._row_shift_columns(i, x)
        g = self.geometry
        assert g is not None
        col = self._col(i, x.dtype)
        work = None
        if g.has_pad or self.batch_inner:
            shape = lowering.padded_shape(g, self.batch_inner)
            work = self.buffer("image", shape, x.dtype)
        if not self.batch_inner:
            lowering.im2col_per_image(x, g, out=col, work=work)
        else:
            lowering.im2col(x, g, self.batch_inner, out=col, work=work)
        self._col_valid[i] = True
        return col

    def _row_shift_columns(self, i: int, x: Array) -> Array:
        """The row-shift matrix of bottom i, made by halves of the channels
        on the workers (each writes its own rows)."""
        g = self.geometry
        assert g is not None
        col = self._col(i, x.dtype)
        work = self.buffer("image", lowering.padded_shape(g, True), x.dtype)
        parts = parallel_parts(col.nbytes, g.channels)
        run_parallel(
            [
                partial(row_shift.row_shift_columns, x, g, col, work, c0, c1)
                for c0, c1 in split_range(g.channels, parts)
            ]
        )
        self._col_valid[i] = True
        return col

    def _bottom4(self, a: Array, what: str) -> Array:
        g = self.geometry
        assert g is not None
        return _nchw(a, (g.num, g.channels, g.height, g.width), what)

    def _top4(self, a: Array, what: str) -> Array:
        g = self.geometry
        assert g is not None
        return _nchw(a, (g.num, self.num_output, g.out_h, g.out_w), what)

    # -- forward / backward --------------------------------------------------------

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        g = self.geometry
        assert g is not None
        w = self.blobs[0].data.reshape(self.num_output, -1)
        if self.row_shift:
            w_rows = row_shift.row_shift_weights(self.blobs[0].data)
        for i, (b, t) in enumerate(zip(bottom, top)):
            x = self._bottom4(b.data, f"bottom '{b.name}' data")
            if not self.batch_inner:
                self._forward_per_image(i, x, t, w)
                continue
            y = self.buffer("y", (self.num_output, g.col_cols), x.dtype)
            bias = self.blobs[1].data[:, None] if self.bias_term else None
            out = self._top4(t.data, f"top '{t.name}' data")
            if self.row_shift:
                # Halves of the channels, then of the output rows, on the
                # workers: each row is its own GEMM into its own block of y,
                # moved to its own rows of the top.
                col = self._im2col(i, x)
                parts = parallel_parts(y.nbytes, g.out_h)
                run_parallel(
                    [
                        partial(_row_shift_rows, w_rows, col, g, bias, y, out, y0, y1)
                        for y0, y1 in split_range(g.out_h, parts)
                    ]
                )
                continue
            col = self._im2col(i, x)
            conv_forward_gemm(w, col, self.group, y)
            if bias is not None:
                y += bias
            lowering.columns_to_nchw(y, g.num, self.batch_inner, out)

    def _forward_per_image(self, i: int, x: Array, t: Blob, w: Array) -> None:
        """Forward with per-image columns: im2col, the GEMMs and the bias for
        halves of the batch on the workers (every image is independent); the
        GEMMs write the top in NCHW directly."""
        g = self.geometry
        assert g is not None
        col = self._col(i, x.dtype)
        work = None
        if g.has_pad:
            work = self.buffer("image", lowering.padded_shape(g, False), x.dtype)
        top4 = self._top4(t.data, f"top '{t.name}' data")
        out = top4.reshape(g.num, self.num_output, -1)
        plane = None
        if self.bias_term:
            # Add a (M, oh*ow) plane of biases: a contiguous add, several
            # times faster than broadcasting bias[:, None].
            plane = self.buffer("bias_plane", out.shape[1:], x.dtype)
            self.xp.copyto(plane, self.blobs[1].data[:, None])

        def images(n0: int, n1: int) -> None:
            part = dataclasses.replace(g, num=n1 - n0)
            part_work = None if work is None else work[n0:n1]
            lowering.im2col_per_image(x[n0:n1], part, col[n0:n1], part_work)
            per_image_forward_gemm(w, col[n0:n1], self.group, out[n0:n1])
            if plane is not None:
                out[n0:n1] += plane

        parts = parallel_parts(col.nbytes, g.num)
        run_parallel([partial(images, n0, n1) for n0, n1 in split_range(g.num, parts)])
        self._col_valid[i] = True

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        g = self.geometry
        assert g is not None
        weight = self.blobs[0]
        w = weight.data.reshape(self.num_output, -1)
        for i, (t, b) in enumerate(zip(top, bottom)):
            if not self.batch_inner:
                self._backward_per_image(i, t, propagate_down[i], b)
                continue
            dtype = b.data.dtype
            dy = self.buffer("dy", (self.num_output, g.col_cols), dtype)
            top_diff = self._top4(t.diff, f"top '{t.name}' diff")
            lowering.nchw_to_columns(top_diff, self.batch_inner, dy)
            if self.bias_term and self.param_propagate_down[1]:
                # Caffe's backward_cpu_bias: a GEMV of top diff with ones.
                ones = self.buffer("ones", (g.col_cols,), dtype, fill=1.0)
                self.blobs[1].diff += self.xp.matmul(dy, ones)
            # The weight and the data gradient read the same dY and write
            # different arrays: one on each worker.
            pieces: list[Callable[[], None]] = []
            if propagate_down[i]:
                bottom_diff = self._bottom4(b.diff, f"bottom '{b.name}' diff")
                pieces.append(partial(self._backward_data, i, w, dy, bottom_diff))
            if self.param_propagate_down[0]:
                col = self._cols[i] if self._col_valid[i] else None
                if col is None:
                    col = self._im2col(i, self._bottom4(b.data, "bottom data"))
                pieces.append(partial(self._backward_weight, dy, col))
            if parallel_parts(dy.nbytes, 2) > 1:
                run_parallel(pieces)
            else:
                for piece in pieces:
                    piece()

    def _backward_weight(self, dy: Array, col: Array) -> None:
        """weight diff += dY x col^T (batch-inner columns)."""
        g = self.geometry
        assert g is not None
        weight = self.blobs[0]
        if self.row_shift:
            weight.diff += row_shift.row_shift_weight_gemm(dy, col, g)
        else:
            dw = conv_weight_gemm(dy, col, self.group)
            weight.diff += dw.reshape(weight.shape)

    def _backward_per_image(
        self, i: int, t: Blob, propagate_down: bool, b: Blob
    ) -> None:
        """Backward with per-image columns: the top diff is already the
        (N, M, oh*ow) stack the GEMMs read. The per-image weight products
        (halves of the batch, or all of them beside the data gradient) run
        on the workers and are summed afterwards in image order."""
        g = self.geometry
        assert g is not None
        weight = self.blobs[0]
        w = weight.data.reshape(self.num_output, -1)
        top_diff = self._top4(t.diff, f"top '{t.name}' diff")
        dy = top_diff.reshape(g.num, self.num_output, -1)
        if self.bias_term and self.param_propagate_down[1]:
            # Caffe's backward_cpu_bias: a GEMV per image with ones.
            ones = self.buffer("ones", (dy.shape[2],), dy.dtype, fill=1.0)
            self.blobs[1].diff += self.xp.matmul(dy, ones).sum(axis=0)
        pieces: list[Callable[[], None]] = []
        products = None
        if self.param_propagate_down[0]:
            col = self._cols[i] if self._col_valid[i] else None
            if col is None:
                col = self._im2col(i, self._bottom4(b.data, "bottom data"))
            m, kg = self.num_output // self.group, col.shape[1] // self.group
            shape = (g.num, self.group, m, kg)
            products = self.buffer("weight_products", shape, dy.dtype)
            parts = 1 if propagate_down else parallel_parts(col.nbytes, g.num)
            for n0, n1 in split_range(g.num, parts):
                pieces.append(
                    partial(
                        per_image_weight_products,
                        dy[n0:n1],
                        col[n0:n1],
                        self.group,
                        products[n0:n1],
                    )
                )
        if propagate_down:
            bottom_diff = self._bottom4(b.diff, f"bottom '{b.name}' diff")
            if products is not None:
                dcol = self.buffer("dcol", lowering.per_image_shape(g), dy.dtype)
            else:
                self._col_valid[i] = False  # its buffer is reused for the diff
                dcol = self._col(i, dy.dtype)
            work = None
            if g.has_pad:
                shape = lowering.padded_shape(g, False)
                work = self.buffer("image_diff", shape, dy.dtype)

            def data_gradient() -> None:
                per_image_data_gemm(w, dy, self.group, dcol)
                lowering.col2im_per_image(dcol, g, bottom_diff, work)

            pieces.insert(0, data_gradient)
        run_parallel(pieces)
        if products is not None:
            dw = products.sum(axis=0).reshape(weight.shape)
            weight.diff += dw

    def _backward_data(self, i: int, w: Array, dy: Array, bottom_diff: Array) -> None:
        """bottom diff = col2im(W^T x dY). With batch-inner columns the column
        matrix is made and folded back a block of output rows at a time, so
        each block is still in cache when col2im reads it."""
        g = self.geometry
        assert g is not None
        dtype = dy.dtype
        if self.row_shift:
            m = self.num_output
            dy_rows = self.buffer("dy_rows", (g.out_h, m, g.out_w * g.num), dtype)
            self.xp.copyto(dy_rows, dy.reshape(m, g.out_h, -1).transpose(1, 0, 2))
            shifted_diff = self.buffer(
                "shifted_diff", row_shift.shifted_shape(g), dtype
            )
            acc = self.buffer("image_diff", lowering.padded_shape(g, True), dtype)
            row_shift.row_shift_backward_data(
                self.blobs[0].data, dy_rows, g, shifted_diff, acc, bottom_diff
            )
            return
        shape = lowering.padded_shape(g, True)
        acc = self.buffer("image_diff", shape, dtype)
        acc[...] = 0
        block = lowering.col2im_row_block(g, dy.itemsize, COL_PIECE_BYTES)
        row_cols = g.out_w * g.num
        dy_rows = dy.reshape(self.num_output, g.out_h, row_cols)
        piece = self.buffer("col_piece", (g.kernel_dim, block * row_cols), dtype)
        for y0 in range(0, g.out_h, block):
            rows = min(block, g.out_h - y0)
            if rows != block:
                piece = self.xp.empty((g.kernel_dim, rows * row_cols), dtype)
            part = dy_rows[:, y0 : y0 + rows].reshape(self.num_output, -1)
            conv_data_gemm(w, part, self.group, piece)
            lowering.col2im_add(piece, g, True, acc, y0, rows)
        lowering.col2im_finish(acc, g, True, bottom_diff)
