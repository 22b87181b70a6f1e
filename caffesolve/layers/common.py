"""Common layers: Eltwise, Softmax, ArgMax, Reduction and Parameter (Caffe's
eltwise, softmax, argmax, reduction and parameter layers)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from caffesolve.blob import Blob
from caffesolve.errors import ShapeError
from caffesolve.layers import register
from caffesolve.layers.base import Layer
from caffesolve.proto import caffe_pb2

Array = npt.NDArray[np.float32]


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
        xp = self.xp
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
                # Caffe: gradient = 0, plus the top diff where bottom i won
                # (0 + -0 is +0, as in Caffe).
                mine = self.xp.where(self.max_idx == i, dy, 0)
                self.xp.add(mine, 0, out=b.diff)


# -- Softmax --------------------------------------------------------------------------


def softmax(x: Array, axis: int) -> Array:
    """exp(x - max) / sum(exp(x - max)) along `axis` (softmax_layer.cpp)."""
    y = np.exp(x - x.max(axis=axis, keepdims=True))
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
        self.axis = self.axis_index(bottom[0], "softmax_param.axis")
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        top[0].data[...] = softmax(bottom[0].data, self.axis)

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        if propagate_down[0]:
            bottom[0].diff[...] = softmax_backward(top[0].data, top[0].diff, self.axis)


# -- ArgMax ----------------------------------------------------------------------------


def top_k_indices(x: Array, k: int) -> npt.NDArray[np.intp]:
    """Indices of the k largest values of each row of x (rows, dim), largest
    first; equal values put the higher index first, as Caffe's partial_sort
    of (value, index) pairs with std::greater does (argmax_layer.cpp)."""
    dim = x.shape[1]
    # A stable sort of the negated, reversed row keeps equal values in
    # reversed order: the higher original index comes first.
    order = (-x[:, ::-1]).argsort(axis=1, kind="stable")[:, :k]
    return dim - 1 - order


@register
class ArgMaxLayer(Layer):
    """Caffe's ArgMax (argmax_layer.cpp): the indices (as floats) of the
    top_k largest values, along `axis` if given, else over each item's
    flattened values; out_max_val adds the values (with `axis`: gives the
    values instead). Without `axis` the top is (N, 1 or 2, top_k) padded with
    1s to the bottom's axes; with it, the bottom's shape with top_k at `axis`.
    No backward (Caffe: NOT_IMPLEMENTED)."""

    type = "ArgMax"
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.layer_param.argmax_param
        self.out_max_val = bool(p.out_max_val)
        self.top_k = int(p.top_k)
        self.has_axis = p.HasField("axis")
        b = bottom[0]
        if self.top_k < 1:
            raise self.config_error(
                "argmax_param.top_k: top k must not be less than 1."
            )
        if self.has_axis:
            self.axis = self.axis_index(b, "argmax_param.axis")
            if self.top_k > b.shape[self.axis]:
                raise self.config_error(
                    "argmax_param.top_k must be less than or equal to the dimension "
                    f"of the axis ({self.top_k} > {b.shape[self.axis]}, axis "
                    f"{self.axis} of bottom '{b.name}' {b.shape_string()})"
                )
        elif self.top_k > b.count_range(1):
            raise self.config_error(
                "argmax_param.top_k must be less than or equal to the dimension "
                f"of the flattened bottom blob per instance ({self.top_k} > "
                f"{b.count_range(1)}, bottom '{b.name}' {b.shape_string()})"
            )

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        b = bottom[0]
        if self.has_axis:
            shape = list(b.shape)
            shape[self.axis] = self.top_k
        else:
            shape = [1] * max(3, b.num_axes)
            shape[0] = b.shape[0]
            shape[1] = 2 if self.out_max_val else 1
            shape[2] = self.top_k
        top[0].reshape(shape)

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        xp = self.xp
        x = bottom[0].data
        dtype = x.dtype
        if self.has_axis:
            moved = xp.moveaxis(x, self.axis, -1)
            rows = moved.reshape(-1, x.shape[self.axis])
        else:
            rows = x.reshape(x.shape[0], -1)
        index = top_k_indices(rows, self.top_k)
        values = xp.take_along_axis(rows, index, axis=1)
        if self.has_axis:
            out = values if self.out_max_val else index.astype(dtype)
            moved_shape = moved.shape[:-1] + (self.top_k,)
            y = xp.moveaxis(out.reshape(moved_shape), -1, self.axis)
            top[0].data[...] = y
        elif self.out_max_val:
            y = top[0].data.reshape(x.shape[0], 2, self.top_k)
            y[:, 0] = index
            y[:, 1] = values
        else:
            top[0].data.reshape(x.shape[0], self.top_k)[...] = index

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        if any(propagate_down):
            raise self.config_error(
                "ArgMax Layer cannot backpropagate (Caffe: Not Implemented Yet)"
            )


# -- Reduction -------------------------------------------------------------------------

ReductionOp = caffe_pb2.ReductionParameter


def sign(x: Array) -> Array:
    """Caffe's caffe_cpu_sign (math_functions.hpp): (0 < x) - (x < 0), so
    sign(-0) = 0."""
    return (x > 0).astype(x.dtype) - (x < 0).astype(x.dtype)


@register
class ReductionLayer(Layer):
    """Caffe's Reduction (reduction_layer.cpp): each of the count(0, axis)
    rows of the bottom, seen as (num, dim), reduced to one value, times coeff:
    SUM sum(x), ASUM sum(|x|), SUMSQ sum(x^2), MEAN sum(x) * (coeff / dim).
    The top keeps the axes before `axis` (a scalar for axis 0). Backward:
    dx = dy * coeff for SUM and MEAN (coeff / dim), sign(x) * (dy * coeff)
    for ASUM, 2 * (dy * coeff) * x for SUMSQ."""

    type = "Reduction"
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        self.op = self.layer_param.reduction_param.operation

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.layer_param.reduction_param
        b = bottom[0]
        axis = self.axis_index(b, "reduction_param.axis")
        top[0].reshape(b.shape[:axis])
        self.num = b.count_range(0, axis)
        self.dim = b.count_range(axis)
        dtype = b.data.dtype.type
        self.coeff = dtype(p.coeff)
        if self.op == ReductionOp.MEAN:
            self.coeff = self.coeff / dtype(self.dim)

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        x = bottom[0].data.reshape(self.num, self.dim)
        y = top[0].data.reshape(self.num)
        if self.op in (ReductionOp.SUM, ReductionOp.MEAN):
            x.sum(axis=1, out=y)
        elif self.op == ReductionOp.ASUM:
            self.xp.abs(x).sum(axis=1, out=y)
        else:
            self.xp.einsum("ij,ij->i", x, x, out=y)
        if self.coeff != 1:
            y *= self.coeff

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        if not propagate_down[0]:
            return
        # Caffe's bottom_coeff: one top diff times coeff per row.
        row_coeff = top[0].diff.reshape(self.num, 1) * self.coeff
        x = bottom[0].data.reshape(self.num, self.dim)
        if self.op in (ReductionOp.SUM, ReductionOp.MEAN):
            dx = self.xp.broadcast_to(row_coeff, x.shape)
        elif self.op == ReductionOp.ASUM:
            dx = sign(x) * row_coeff
        else:
            dx = 2 * row_coeff * x
        bottom[0].diff[...] = dx.reshape(bottom[0].shape)


# -- Parameter -------------------------------------------------------------------------


@register
class ParameterLayer(Layer):
    """Caffe's Parameter (parameter_layer.hpp): one learnable blob of
    parameter_param.shape, left at zeros (no filler) unless loaded; the top
    shares its data and diff, so the layer above writes the blob's gradient.
    With no bottom, it exposes a param to layers that take it as input."""

    type = "Parameter"
    exact_num_bottom_blobs = 0
    exact_num_top_blobs = 1

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        shape = tuple(self.layer_param.parameter_param.shape.dim)
        if not self.blobs:
            self.blobs = [Blob(shape, xp=self.xp)]
        top[0].reshape(shape)

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        """Caffe's Reshape is empty: the top keeps the blob's shape."""

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        top[0].share_data(self.blobs[0])
        top[0].share_diff(self.blobs[0])

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        blob = self.blobs[0]
        if top[0].diff is not blob.diff:  # a layer above replaced the array
            blob.diff[...] = top[0].diff.reshape(blob.shape)
