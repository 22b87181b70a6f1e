"""Common layers: Eltwise and Softmax (Caffe's eltwise and softmax layers)."""

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
                b.diff[...] = dy * (self.max_idx == i)


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
