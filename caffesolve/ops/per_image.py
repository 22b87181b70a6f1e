"""The per-image lowering of convolution (ops/conv.py's interface): Caffe's
own per-image im2col buffer for every image at once, (N, C*kh*kw, oh*ow),
and stacked GEMMs over images and groups. It takes any number of spatial
axes (an NDGeometry; a 2-D ConvGeometry is turned into one).

W (M, K) x col[n] (K, oh*ow) yields (N, M, oh*ow), the top in NCHW with no
transpose, and each image's GEMM is small enough for BLAS to run it on one
thread. im2col copies runs of `ow` contiguous values, so this layout suits
large output planes (LeNet conv1). Forward runs in halves of the batch on the
workers (every image is independent), and so do the per-image weight
products, which are then summed in image order.
"""

from __future__ import annotations

import dataclasses
from functools import cached_property, partial
from typing import Any

import numpy as np
import numpy.typing as npt

from caffesolve.backend import array_module, parallel_parts, run_parallel, split_range
from caffesolve.ops.conv import ConvLowering, add_bias_diff, register_lowering
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
    """out[n] (group, M/group, K/group) = dY[n] (M, P) x col[n]^T for every
    image n, group by group: Caffe's weight_cpu_gemm of each image."""
    xp = array_module(dy)
    n, m, p = dy.shape
    kg = col.shape[1] // group
    xp.matmul(
        dy.reshape(n, group, m // group, p),
        col.reshape(n, group, kg, p).transpose(0, 1, 3, 2),
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
class PerImageLowering(ConvLowering):
    """Per-image columns (N, K, oh*ow) and stacked GEMMs."""

    name = "per_image"

    @cached_property
    def nd(self) -> NDGeometry:
        """The geometry with any number of spatial axes."""
        return as_nd(self.g)

    @classmethod
    def applies(cls, g: ConvGeometry | NDGeometry, num_output: int, group: int) -> bool:
        return True

    def column_shape(self) -> tuple[int, ...]:
        return per_image_shape(self.nd)

    def _padded(self, name: str, dtype: Any) -> Array | None:
        """The padded (N, C, *spatial) image buffer, if the geometry pads."""
        if not self.nd.has_pad:
            return None
        return self.buffer(name, padded_image_shape(self.nd), dtype)

    def im2col(self, x: Array) -> Array:
        col = self.columns(x.dtype)
        im2col_per_image(x, self.nd, col, self._padded("image", x.dtype))
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
        """im2col, the GEMMs and the bias for halves of the batch on the
        workers; the GEMMs write y in NCHW directly."""
        g = self.nd
        lower = not (reuse_columns and self.columns_ready)
        col = self.columns(x.dtype)
        work = self._padded("image", x.dtype)
        out = y.reshape(g.num, self.num_output, -1)
        w2 = w.reshape(self.num_output, -1)
        plane = None
        if bias is not None:
            # Add a (M, oh*ow) plane of biases: a contiguous add, several
            # times faster than broadcasting bias[:, None].
            plane = self.buffer("bias_plane", out.shape[1:], x.dtype)
            array_module(x).copyto(plane, bias[:, None])

        def images(n0: int, n1: int) -> None:
            if lower:
                part = dataclasses.replace(g, num=n1 - n0)
                part_work = None if work is None else work[n0:n1]
                im2col_per_image(x[n0:n1], part, col[n0:n1], part_work)
            per_image_forward_gemm(w2, col[n0:n1], self.group, out[n0:n1])
            if plane is not None:
                out[n0:n1] += plane

        parts = parallel_parts(col.nbytes, g.num)
        run_parallel([partial(images, n0, n1) for n0, n1 in split_range(g.num, parts)])
        self.columns_ready = True

    def output_columns(self, y: Array) -> Array:
        """y as the (N, M, oh*ow) stack the GEMMs read: a view."""
        return y.reshape(self.nd.num, self.num_output, -1)

    def backward_bias(self, dy: Array, bias_diff: Array) -> None:
        add_bias_diff(dy, bias_diff, self.buffer)

    def weight_gemm(
        self, x: Array, dy: Array, weight_diff: Array, reuse_columns: bool = False
    ) -> None:
        """The per-image weight products (halves of the batch on the
        workers), summed afterwards in image order."""
        g, group = self.nd, self.group
        col = self.lowered(x, reuse_columns)
        m, kg = self.num_output // group, col.shape[1] // group
        shape = (g.num, group, m, kg)
        products = self.buffer("weight_products", shape, dy.dtype)
        parts = parallel_parts(col.nbytes, g.num)
        run_parallel(
            [
                partial(
                    per_image_weight_products,
                    dy[n0:n1],
                    col[n0:n1],
                    group,
                    products[n0:n1],
                )
                for n0, n1 in split_range(g.num, parts)
            ]
        )
        weight_diff += products.sum(axis=0).reshape(weight_diff.shape)

    def backward_gemm(self, dy: Array, w: Array, dx: Array) -> None:
        dcol = self.buffer("dcol", per_image_shape(self.nd), dy.dtype)
        w2 = w.reshape(self.num_output, -1)
        per_image_data_gemm(w2, dy, self.group, dcol)
        col2im_per_image(dcol, self.nd, dx, self._padded("image_diff", dy.dtype))
