"""Common layers: Split, InnerProduct, Flatten, Reshape, Concat, Eltwise,
Softmax (Caffe's split, inner_product, flatten, reshape, concat, eltwise and
softmax layers).
"""

from __future__ import annotations

from collections.abc import Callable
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
from caffesolve.errors import ConfigError, ShapeError
from caffesolve.fillers import fill
from caffesolve.layers import register
from caffesolve.layers.base import Layer
from caffesolve.proto import caffe_pb2

Array = npt.NDArray[np.float32]

# InnerProduct forward GEMMs of at least SPLIT_ROWS rows and SPLIT_MACS
# multiply-adds run as two halves of the batch (LeNet's ip1: 64 x 800 x 500).
# Measured on 2 cores: halves of fewer than 32 rows, each reading the whole
# weight matrix, were slower than one GEMM.
SPLIT_ROWS = 64
SPLIT_MACS = 1 << 22


@register
class SplitLayer(Layer):
    """Caffe's Split: every top shares the bottom's data; the bottom's diff is
    the sum of the tops' diffs (split_layer.cpp). The Net inserts one wherever
    a blob feeds several layers."""

    type = "Split"
    allow_in_place = False
    exact_num_bottom_blobs = 1
    min_top_blobs = 1

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        for t in top:
            t.reshape(bottom[0].shape)
            t.share_data(bottom[0])

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        for t in top:
            t.share_data(bottom[0])

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        if not propagate_down[0]:
            return
        out = bottom[0].diff
        out[...] = top[0].diff
        for t in top[1:]:
            out += t.diff


def inner_product_rows(x: Array, wt: Array, bias: Array | None, out: Array) -> None:
    """out (rows, N) = x (rows, K) x W^T (K, N) + bias: some rows of Caffe's
    InnerProduct forward GEMM (inner_product_layer.cpp)."""
    xp = array_module(x)
    xp.matmul(x, wt, out=out)
    if bias is not None:
        out += bias


def fill_blob(
    layer: Layer,
    blob: Blob,
    filler: caffe_pb2.FillerParameter,
    field: str,
) -> None:
    """Fill a learnable blob, naming the layer and field in any error."""
    try:
        fill(blob, filler, layer.rng)
    except ConfigError as e:
        raise layer.config_error(f"{field}: {e}") from None


@register
class InnerProductLayer(Layer):
    """Caffe's InnerProduct (inner_product_layer.cpp).

    The bottom is viewed as (M, K) with M = count(0, axis), K = count(axis);
    top = bottom * W^T + b, W of shape (N, K), or (K, N) with `transpose`
    (then top = bottom * W). Top shape: bottom's shape[:axis] + (N,).
    """

    type = "InnerProduct"
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.layer_param.inner_product_param
        if p.num_output == 0:
            raise self.config_error(
                "inner_product_param.num_output is required (and must be > 0)"
            )
        self.num_output = int(p.num_output)
        self.bias_term = bool(p.bias_term)
        self.transpose = bool(p.transpose)
        axis = self._axis(bottom[0])
        self.K = bottom[0].count_range(axis)
        if self.blobs:
            return  # Caffe: "Skipping parameter initialization"
        dtype = bottom[0].data.dtype
        n, k = self.num_output, self.K
        weight = Blob((k, n) if self.transpose else (n, k), dtype=dtype)
        fill_blob(self, weight, p.weight_filler, "inner_product_param.weight_filler")
        self.blobs = [weight]
        if self.bias_term:
            bias = Blob((n,), dtype=dtype)
            fill_blob(self, bias, p.bias_filler, "inner_product_param.bias_filler")
            self.blobs.append(bias)
        self.param_propagate_down = [True] * len(self.blobs)

    def _axis(self, b: Blob) -> int:
        try:
            return b.canonical_axis_index(self.layer_param.inner_product_param.axis)
        except ShapeError as e:
            raise self.config_error(f"inner_product_param.axis: {e}") from None

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        shape = bottom[0].data.shape
        if shape == getattr(self, "_reshaped_for", None):
            top[0].reshape(self._top_shape)  # the usual case: nothing changed
            return
        axis = self._axis(bottom[0])
        new_k = bottom[0].count_range(axis)
        if new_k != self.K:
            raise ShapeError(
                f"{self.where()}: Input size incompatible with inner product "
                f"parameters: bottom '{bottom[0].name}' has shape "
                f"{bottom[0].shape_string()}, so {new_k} inputs from axis {axis}, "
                f"but the weights take {self.K}"
            )
        self.M = bottom[0].count_range(0, axis)
        self._top_shape = bottom[0].shape[:axis] + (self.num_output,)
        self._reshaped_for = shape
        top[0].reshape(self._top_shape)

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        """top = x * W^T (+ bias broadcast over the M rows), GEMM straight into
        top's array (inner_product_layer.cpp Forward_cpu)."""
        xp = array_module(bottom[0].data)
        x = bottom[0].data.reshape(self.M, self.K)
        w = self.blobs[0].data
        out = top[0].data
        direct = out.flags.c_contiguous  # else a strided view someone set
        shape = (self.M, self.num_output)
        y = out.reshape(shape) if direct else xp.empty(shape, out.dtype)
        wt = w if self.transpose else w.T
        bias = self.blobs[1].data if self.bias_term else None
        # A large GEMM always runs as two halves of the batch, on two workers
        # or one after the other: OpenBLAS's blocking follows the matrix
        # sizes, so a split fixed by the shapes alone keeps the results the
        # same for any worker count (they differ from one whole GEMM only in
        # the order of float32 sums).
        parts = (
            2
            if self.M >= SPLIT_ROWS and self.M * self.K * self.num_output >= SPLIT_MACS
            else 1
        )
        run_parallel(
            [
                partial(inner_product_rows, x[a:b], wt, bias, y[a:b])
                for a, b in split_range(self.M, parts)
            ]
        )
        if not direct:
            out[...] = y.reshape(out.shape)

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        """W diff += dy^T x (x^T dy with `transpose`), bias diff += column sums
        of dy, bottom diff = dy * W (dy * W^T) (inner_product_layer.cpp). The
        weight and the bottom diff GEMMs run on separate workers."""
        dy = top[0].diff.reshape(self.M, self.num_output)
        x = bottom[0].data.reshape(self.M, self.K)
        pieces: list[Callable[[], None]] = []
        if self.param_propagate_down[0]:
            pieces.append(partial(self._backward_weight, dy, x))
        if self.bias_term and self.param_propagate_down[1]:
            self.blobs[1].diff += dy.sum(axis=0)
        if propagate_down[0]:
            pieces.append(partial(self._backward_data, dy, bottom[0]))
        if parallel_parts(x.nbytes + self.blobs[0].data.nbytes, 2) > 1:
            run_parallel(pieces)
        else:
            for piece in pieces:
                piece()

    def _backward_weight(self, dy: Array, x: Array) -> None:
        """W diff += dy^T x (x^T dy with `transpose`), through a scratch
        product (Caffe's GEMM with beta = 1)."""
        xp = array_module(dy)
        w_diff = self.blobs[0].diff
        product = self._scratch(w_diff)
        if self.transpose:
            xp.matmul(x.T, dy, out=product)
        else:
            xp.matmul(dy.T, x, out=product)
        w_diff += product

    def _backward_data(self, dy: Array, b: Blob) -> None:
        """bottom diff = dy * W (dy * W^T with `transpose`)."""
        xp = array_module(dy)
        w = self.blobs[0].data
        w = w.T if self.transpose else w
        if b.diff.flags.c_contiguous:
            xp.matmul(dy, w, out=b.diff.reshape(self.M, self.K))
        else:
            b.diff[...] = (dy @ w).reshape(b.shape)

    def _scratch(self, like: Array) -> Array:
        """A reused buffer shaped like the weight diff, for the GEMM whose
        result is added to it (Caffe's GEMM with beta = 1)."""
        buf = getattr(self, "_product", None)
        if buf is None or buf.shape != like.shape or buf.dtype != like.dtype:
            buf = array_module(like).empty_like(like)
            self._product = buf
        return buf


# -- view layers: Flatten, Reshape ------------------------------------------------


def share_view(bottom: Blob, top: Blob) -> None:
    """Make top's data and diff views of bottom's arrays in top's shape."""
    top.data = bottom.data.reshape(top.shape)
    top.diff = bottom.diff.reshape(top.shape)


def copy_back_diff(top: Blob, bottom: Blob) -> None:
    """Caffe's bottom->ShareDiff(*top): if a later layer replaced top's diff
    array, copy it into the bottom's (keeping the bottom's own sharing)."""
    if not array_module(top.diff).shares_memory(top.diff, bottom.diff):
        bottom.diff[...] = top.diff.reshape(bottom.shape)


@register
class FlattenLayer(Layer):
    """Caffe's Flatten (flatten_layer.cpp): axes [axis, end_axis] merged into
    one; top's data and diff are views of the bottom's."""

    type = "Flatten"
    allow_in_place = False
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.layer_param.flatten_param
        b = bottom[0]
        try:
            start = b.canonical_axis_index(p.axis)
            end = b.canonical_axis_index(p.end_axis)
        except ShapeError as e:
            raise self.config_error(f"flatten_param.axis/end_axis: {e}") from None
        shape = b.shape[:start] + (b.count_range(start, end + 1),) + b.shape[end + 1 :]
        top[0].reshape(shape)
        share_view(b, top[0])

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        top[0].data = bottom[0].data.reshape(top[0].shape)

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        copy_back_diff(top[0], bottom[0])


def reshape_top_shape(
    bottom_shape: tuple[int, ...], dims: list[int], axis: int, num_axes: int
) -> tuple[int, ...]:
    """Caffe's Reshape rule (reshape_layer.cpp): bottom axes [axis, axis +
    num_axes) are replaced by `dims`, where 0 copies the bottom's dimension
    at the same place and one -1 is inferred from the count.

    Raises ValueError with Caffe's message when the rule cannot be met.
    """
    n = len(bottom_shape)
    start = axis if axis >= 0 else n + axis + 1
    if start < 0 or start > n:
        raise ValueError(f"axis {axis} out of range for {n}-D input blob")
    if num_axes < -1:
        raise ValueError("num_axes must be >= 0, or -1 for all")
    end = n if num_axes == -1 else start + num_axes
    if end > n:
        raise ValueError("end_axis = axis + num_axes is out of range")
    inferred = [i for i, d in enumerate(dims) if d == -1]
    if len(inferred) > 1:
        raise ValueError(
            "new shape contains multiple -1 dims; at most a single (1) value "
            "of -1 may be specified"
        )
    if any(d < -1 for d in dims):
        raise ValueError(f"shape dims must be >= -1 (got {dims})")
    shape = list(bottom_shape[:start]) + list(dims) + list(bottom_shape[end:])
    for i, d in enumerate(dims):
        if d == 0:
            if start + i >= n:
                raise ValueError(
                    "new shape contains a 0, but there was no corresponding "
                    "bottom axis to copy"
                )
            shape[start + i] = bottom_shape[start + i]
    count = int(np.prod(bottom_shape, dtype=np.int64))
    if inferred:
        shape[start + inferred[0]] = 1
        explicit = int(np.prod(shape, dtype=np.int64))
        if explicit == 0 or count % explicit:
            raise ValueError(
                f"bottom count ({count}) must be divisible by the product of "
                f"the specified dimensions ({explicit})"
            )
        shape[start + inferred[0]] = count // explicit
    if int(np.prod(shape, dtype=np.int64)) != count:
        raise ValueError(
            f"output count must match input count ({shape} holds "
            f"{int(np.prod(shape, dtype=np.int64))}, the bottom {count})"
        )
    return tuple(shape)


@register
class ReshapeLayer(Layer):
    """Caffe's Reshape: top gets reshape_param's shape (0 = copy, -1 =
    infer) over axes [axis, axis + num_axes); data and diff are shared."""

    type = "Reshape"
    allow_in_place = False
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.layer_param.reshape_param
        try:
            shape = reshape_top_shape(
                bottom[0].shape, list(p.shape.dim), p.axis, p.num_axes
            )
        except ValueError as e:
            raise ShapeError(
                f"{self.where()}: reshape_param: {e} (bottom '{bottom[0].name}' "
                f"{bottom[0].shape_string()})"
            ) from None
        top[0].reshape(shape)
        share_view(bottom[0], top[0])

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        top[0].data = bottom[0].data.reshape(top[0].shape)

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        copy_back_diff(top[0], bottom[0])


# -- Concat ----------------------------------------------------------------------------


@register
class ConcatLayer(Layer):
    """Caffe's Concat (concat_layer.cpp): bottoms joined along `axis` (or the
    legacy concat_dim); backward slices the top diff back."""

    type = "Concat"
    min_bottom_blobs = 1
    exact_num_top_blobs = 1

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.layer_param.concat_param
        if p.HasField("axis") and p.HasField("concat_dim"):
            raise self.config_error(
                "Either axis or concat_dim should be specified; not both."
            )

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.layer_param.concat_param
        b0 = bottom[0]
        if p.HasField("concat_dim"):
            self.axis = int(p.concat_dim)
            if self.axis >= b0.num_axes:
                raise self.config_error(
                    f"concat_param.concat_dim out of range ({self.axis} for "
                    f"bottom '{b0.name}' {b0.shape_string()})"
                )
        else:
            try:
                self.axis = b0.canonical_axis_index(p.axis)
            except ShapeError as e:
                raise self.config_error(f"concat_param.axis: {e}") from None
        shape = list(b0.shape)
        for i, b in enumerate(bottom[1:], 1):
            same = b.num_axes == b0.num_axes and all(
                b.shape[j] == b0.shape[j] for j in range(b0.num_axes) if j != self.axis
            )
            if not same:
                raise ShapeError(
                    f"{self.where()}: All inputs must have the same shape, except "
                    f"at concat_axis {self.axis}: bottom[0] '{b0.name}' "
                    f"{b0.shape_string()}, bottom[{i}] '{b.name}' {b.shape_string()}"
                )
            shape[self.axis] += b.shape[self.axis]
        top[0].reshape(shape)
        if len(bottom) == 1:
            share_view(b0, top[0])

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        if len(bottom) == 1:
            top[0].data = bottom[0].data.reshape(top[0].shape)
            return
        xp = array_module(bottom[0].data)
        xp.concatenate([b.data for b in bottom], axis=self.axis, out=top[0].data)

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        if len(bottom) == 1:
            copy_back_diff(top[0], bottom[0])
            return
        offset = 0
        index: list[slice] = [slice(None)] * top[0].num_axes
        for b, down in zip(bottom, propagate_down):
            size = b.shape[self.axis]
            if down:
                index[self.axis] = slice(offset, offset + size)
                b.diff[...] = top[0].diff[tuple(index)]
            offset += size


# -- Eltwise ---------------------------------------------------------------------------

EltwiseOp = caffe_pb2.EltwiseParameter


@register
class EltwiseLayer(Layer):
    """Caffe's Eltwise (eltwise_layer.cpp): PROD, SUM with one coeff per
    bottom, or MAX (ties go to bottom 1 over bottom 0, else to the earliest);
    MAX backward routes the top diff to the arg-max bottom; PROD backward is
    the product of the other bottoms (stable_prod_grad) or top / bottom."""

    type = "Eltwise"
    min_bottom_blobs = 2
    exact_num_top_blobs = 1

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.layer_param.eltwise_param
        if len(p.coeff) not in (0, len(bottom)):
            raise self.config_error(
                "Eltwise Layer takes one coefficient per bottom blob "
                f"({len(bottom)} bottoms, {len(p.coeff)} eltwise_param.coeff)"
            )
        if p.operation == EltwiseOp.PROD and len(p.coeff):
            raise self.config_error(
                "Eltwise layer only takes coefficients for summation."
            )
        self.op = p.operation
        self.coeffs = [float(c) for c in p.coeff] or [1.0] * len(bottom)
        self.stable_prod_grad = bool(p.stable_prod_grad)

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        for i, b in enumerate(bottom[1:], 1):
            if b.shape != bottom[0].shape:
                raise ShapeError(
                    f"{self.where()}: bottom[0]: {bottom[0].shape_string()}, "
                    f"bottom[{i}]: {b.shape_string()} (Eltwise needs equal shapes)"
                )
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        xp = array_module(bottom[0].data)
        dtype = bottom[0].data.dtype.type
        if self.op == EltwiseOp.PROD:
            y = bottom[0].data * bottom[1].data
            for b in bottom[2:]:
                y *= b.data
        elif self.op == EltwiseOp.SUM:
            y = dtype(self.coeffs[0]) * bottom[0].data
            for c, b in zip(self.coeffs[1:], bottom[1:]):
                y += dtype(c) * b.data
        else:
            a, b1 = bottom[0].data, bottom[1].data
            first = a > b1
            y = xp.where(first, a, b1)
            self.max_idx = xp.where(first, 0, 1).astype(xp.int32)
            for i, b in enumerate(bottom[2:], 2):
                better = b.data > y
                y = xp.where(better, b.data, y)
                self.max_idx[better] = i
        top[0].data[...] = y

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        dy = top[0].diff
        dtype = dy.dtype.type
        for i, b in enumerate(bottom):
            if not propagate_down[i]:
                continue
            if self.op == EltwiseOp.PROD:
                if self.stable_prod_grad:
                    others = [o.data for j, o in enumerate(bottom) if j != i]
                    g = others[0].copy()
                    for o in others[1:]:
                        g *= o
                else:
                    g = top[0].data / b.data
                b.diff[...] = g * dy
            elif self.op == EltwiseOp.SUM:
                c = self.coeffs[i]
                b.diff[...] = dy if c == 1.0 else dtype(c) * dy
            else:
                b.diff[...] = dy * (self.max_idx == i)


# -- Softmax --------------------------------------------------------------------------


def softmax(x: Array, axis: int) -> Array:
    """exp(x - max) / sum(exp(x - max)) along `axis` (softmax_layer.cpp)."""
    xp = array_module(x)
    y = xp.exp(x - x.max(axis=axis, keepdims=True))
    y /= y.sum(axis=axis, keepdims=True)
    return y


def softmax_backward(y: Array, dy: Array, axis: int) -> Array:
    """dx = (dy - sum(dy * y, axis)) * y (softmax_layer.cpp)."""
    return (dy - (dy * y).sum(axis=axis, keepdims=True)) * y


@register
class SoftmaxLayer(Layer):
    """Caffe's Softmax over softmax_param.axis; other axes independent."""

    type = "Softmax"
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        try:
            self.axis = bottom[0].canonical_axis_index(
                self.layer_param.softmax_param.axis
            )
        except ShapeError as e:
            raise self.config_error(f"softmax_param.axis: {e}") from None
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        top[0].data[...] = softmax(bottom[0].data, self.axis)

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        if propagate_down[0]:
            bottom[0].diff[...] = softmax_backward(top[0].data, top[0].diff, self.axis)
