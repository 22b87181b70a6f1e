"""The per-image lowering of convolution (ops/conv.py's interface): Caffe's
own per-image im2col buffer, (C*prod(kernel), prod(out)) for each image,
and stacked GEMMs over images and groups, run in cache-sized chunks of
images (ops/conv.py's ChunkedLowering). It takes any number of spatial axes
(an NDGeometry; a 2-D ConvGeometry is turned into one), and suits output
planes of a hundred values or more, where each image's GEMM is large
enough; im2col copies runs of the output width.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt

from caffesolve.backend import array_module
from caffesolve.ops.conv import ChunkedLowering, register_lowering
from caffesolve.ops.im2col import (
    ConvGeometry,
    NDGeometry,
    as_nd,
    col2im_per_image,
    im2col_per_image,
    padded_image_shape,
    per_image_shape,
)

Array = npt.NDArray[np.floating]

# Bytes of columns per chunk: a chunk's columns stay in the core's cache (2 MiB
# of L2 here) between im2col and the GEMMs that read them.
CHUNK_BYTES = 1 << 19
# Fixed parts of the batch for the workers (the weight gradient adds them in
# order, so it does not depend on the number of workers).
SEGMENTS = 2


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
    """out[n] (group, K/group, M/group) = col[n] (K, P) x dY[n]^T for every
    image n, group by group: Caffe's weight_cpu_gemm of each image, as the
    transposed product (col x dY^T runs faster than dY x col^T here)."""
    xp = array_module(dy)
    n, m, p = dy.shape
    kg = col.shape[1] // group
    xp.matmul(
        col.reshape(n, group, kg, p),
        dy.reshape(n, group, m // group, p).transpose(0, 1, 3, 2),
        out=out,
    )


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


@register_lowering
class PerImageLowering(ChunkedLowering):
    """Per-image columns (N, K, P), a chunk of images at a time."""

    name = "per_image"

    @classmethod
    def applies(cls, g: ConvGeometry | NDGeometry, num_output: int, group: int) -> bool:
        return True

    @cached_property
    def nd(self) -> NDGeometry:
        """The geometry with any number of spatial axes."""
        return as_nd(self.g)

    @property
    def chunk_geometry(self) -> NDGeometry:
        return self.nd

    def image_column_bytes(self) -> int:
        _, k, p = per_image_shape(self.nd)
        return 4 * k * p

    def weight_sum_shape(self) -> tuple[int, ...]:
        kg = self.nd.kernel_dim // self.group
        return (self.group, kg, self.num_output // self.group)

    def add_weight_sum(self, total: Array, weight_diff: Array) -> None:
        """total (group, K/group, M/group): the transposed products."""
        weight_diff += total.transpose(0, 2, 1).reshape(weight_diff.shape)

    def _chunk_buffers(
        self, name: str, piece: int, dtype: Any
    ) -> tuple[Array, Array | None]:
        """A chunk's columns and, if the geometry pads, its padded images."""
        col = self.piece_buffer(
            name, piece, (self.chunk,) + per_image_shape(self.nd)[1:], dtype
        )
        padded = None
        if self.nd.has_pad:
            shape = (self.chunk,) + padded_image_shape(self.nd)[1:]
            padded = self.piece_buffer(f"{name}_image", piece, shape, dtype)
        return col, padded

    def _lower(self, x: Array, c0: int, c1: int, piece: int) -> Array:
        """im2col of images c0 .. c1-1 into the piece's chunk buffer (or the
        columns kept there, while `reusing`)."""
        col, padded = self._chunk_buffers("col", piece, x.dtype)
        n = c1 - c0
        if self.reusing:
            return col[:n]
        pad = None if padded is None else padded[:n]
        return im2col_per_image(x[c0:c1], self.part(n), col[:n], pad)

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
        """im2col, the GEMMs writing y in NCHW directly, and the bias."""
        out = y.reshape(y.shape[0], self.num_output, -1)[c0:c1]
        cols = self._lower(x, c0, c1, piece)
        per_image_forward_gemm(w.reshape(self.num_output, -1), cols, self.group, out)
        if bias is not None:
            # A (M, P) plane of biases: a contiguous add, several times
            # faster than broadcasting bias[:, None].
            plane = self.buffer("bias_plane", out.shape[1:], x.dtype)
            array_module(x).copyto(plane, bias[:, None])
            out += plane

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
        """im2col and the weight products (summed in image order), then the
        data GEMM and col2im."""
        n = c1 - c0
        dyc = dy.reshape(dy.shape[0], self.num_output, -1)[c0:c1]
        if weight_sum is not None:
            cols = self._lower(x, c0, c1, piece)
            shape = (self.chunk,) + self.weight_sum_shape()
            products = self.piece_buffer("products", piece, shape, dy.dtype)
            per_image_weight_products(dyc, cols, self.group, products[:n])
            weight_sum += products[:n].sum(axis=0)
        if dx is not None:
            dcol, padded = self._chunk_buffers("dcol", piece, dy.dtype)
            w2 = w.reshape(self.num_output, -1)
            per_image_data_gemm(w2, dyc, self.group, dcol[:n])
            pad = None if padded is None else padded[:n]
            col2im_per_image(dcol[:n], self.part(n), dx[c0:c1], pad)
