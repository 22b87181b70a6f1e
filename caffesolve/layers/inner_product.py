"""InnerProduct (Caffe's inner_product_layer.cpp): the fully connected layer,
one GEMM forward and two backward, split between the worker threads; and Embed
(embed_layer.cpp), the same layer over one-hot inputs given as indices.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np
import numpy.typing as npt

from caffesolve.backend import (
    parallel_parts,
    run_parallel,
    split_range,
)
from caffesolve.blob import Blob
from caffesolve.errors import DataError, ShapeError
from caffesolve.layers import register
from caffesolve.layers.base import Layer
from caffesolve.ops.scatter import add_rows_at

Array = npt.NDArray[np.float32]

# InnerProduct forward GEMMs of at least SPLIT_ROWS rows and SPLIT_MACS
# multiply-adds run as two halves of the batch (LeNet's ip1: 64 x 800 x 500).
# Measured on 2 cores: halves of fewer than 32 rows, each reading the whole
# weight matrix, were slower than one GEMM.
SPLIT_ROWS = 64
SPLIT_MACS = 1 << 22


def inner_product_rows(x: Array, wt: Array, bias: Array | None, out: Array) -> None:
    """out (rows, N) = x (rows, K) x W^T (K, N) + bias: some rows of Caffe's
    InnerProduct forward GEMM (inner_product_layer.cpp)."""
    np.matmul(x, wt, out=out)
    if bias is not None:
        out += bias


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
        weight = Blob((k, n) if self.transpose else (n, k), dtype=dtype, xp=self.xp)
        self.fill(weight, p.weight_filler, "inner_product_param.weight_filler")
        self.blobs = [weight]
        if self.bias_term:
            bias = Blob((n,), dtype=dtype, xp=self.xp)
            self.fill(bias, p.bias_filler, "inner_product_param.bias_filler")
            self.blobs.append(bias)
        self.param_propagate_down = [True] * len(self.blobs)

    def _axis(self, b: Blob) -> int:
        return self.axis_index(b, "inner_product_param.axis")

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
        xp = self.xp
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
        xp = self.xp
        w_diff = self.blobs[0].diff
        product = self._scratch(w_diff)
        if self.transpose:
            xp.matmul(x.T, dy, out=product)
        else:
            xp.matmul(dy.T, x, out=product)
        w_diff += product

    def _backward_data(self, dy: Array, b: Blob) -> None:
        """bottom diff = dy * W (dy * W^T with `transpose`)."""
        xp = self.xp
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
            buf = self.xp.empty_like(like)
            self._product = buf
        return buf


# -- Embed -----------------------------------------------------------------------------


@register
class EmbedLayer(Layer):
    """Caffe's Embed (embed_layer.cpp): an InnerProduct over one-hot inputs,
    given as the hot indices. Blobs: the weight (input_dim, num_output) (the
    transpose of InnerProduct's layout) and, with bias_term, the bias
    (num_output,). top[..., :] = W[index] + b, top shape = bottom's + (N,).
    Backward: W diff[index] += dy row by row in bottom order, bias diff +=
    column sums of dy; no gradient to the indices."""

    type = "Embed"
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.layer_param.embed_param
        if p.num_output <= 0:
            raise self.config_error("embed_param.num_output must be positive.")
        if p.input_dim <= 0:
            raise self.config_error("embed_param.input_dim must be positive.")
        self.N, self.K = int(p.num_output), int(p.input_dim)
        self.bias_term = bool(p.bias_term)
        if self.blobs:
            return  # Caffe: "Skipping parameter initialization"
        dtype = bottom[0].data.dtype
        weight = Blob((self.K, self.N), dtype=dtype, xp=self.xp)
        self.fill(weight, p.weight_filler, "embed_param.weight_filler")
        self.blobs = [weight]
        if self.bias_term:
            bias = Blob((self.N,), dtype=dtype, xp=self.xp)
            self.fill(bias, p.bias_filler, "embed_param.bias_filler")
            self.blobs.append(bias)

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        top[0].reshape(bottom[0].shape + (self.N,))

    def _indices(self, bottom: Blob) -> npt.NDArray[np.intp]:
        """static_cast<int> of the inputs, which must be whole numbers in
        [0, input_dim) (Caffe's DCHECKs; an error here instead of a read
        outside the weights)."""
        x = bottom.data.reshape(-1)
        index = x.astype(np.intp)
        bad = (index < 0) | (index >= self.K) | (index != x)
        if bad.any():
            value = x[bad][0]
            raise DataError(
                f"{self.where()}: input {value!r} in bottom '{bottom.name}' is not "
                f"an index in [0, {self.K}) (embed_param.input_dim {self.K})"
            )
        return index

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        y = top[0].data.reshape(-1, self.N)
        self.xp.take(self.blobs[0].data, self._indices(bottom[0]), axis=0, out=y)
        if self.bias_term:
            y += self.blobs[1].data

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        if propagate_down[0]:
            raise self.config_error("Can't backpropagate to EmbedLayer input.")
        dy = top[0].diff.reshape(-1, self.N)
        if self.param_propagate_down[0]:
            # In bottom order: repeated indices add up as in Caffe's axpys.
            add_rows_at(self.blobs[0].diff, self._indices(bottom[0]), dy)
        if self.bias_term and self.param_propagate_down[1]:
            self.blobs[1].diff += dy.sum(axis=0)
