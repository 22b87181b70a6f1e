"""Spatial pyramid pooling (Caffe's spp_layer.cpp), built from the Pooling,
Split, Flatten and Concat layers as Caffe builds it.

Level i of the pyramid pools the whole image into 2^i x 2^i bins; the levels
are flattened and concatenated, so the top is (N, C * sum_i 4^i) whatever
the bottom's height and width. The internal Pooling layers are made through
the layer registry, so SPP supports the pooling methods Pooling supports.
Kept in its own module: it only composes the pooling family's layers.
"""

from __future__ import annotations

import math

from caffesolve.blob import Blob
from caffesolve.errors import ConfigError, ShapeError
from caffesolve.layers import create_layer, register
from caffesolve.layers.base import Layer
from caffesolve.proto import caffe_pb2


def pooling_param(
    level: int, height: int, width: int, pool: int
) -> caffe_pb2.LayerParameter:
    """Caffe's SPPLayer::GetPoolingParam: 2^level bins along each axis; the
    kernel is ceil(size / bins), also the stride, and the pad
    (kernel*bins - size + 1) / 2 spreads what the bins overhang."""
    bins = 2**level
    param = caffe_pb2.LayerParameter(type="Pooling")
    p = param.pooling_param
    p.kernel_h = kernel_h = math.ceil(height / bins)
    p.kernel_w = kernel_w = math.ceil(width / bins)
    p.stride_h, p.stride_w = kernel_h, kernel_w
    p.pad_h = (kernel_h * bins - height + 1) // 2
    p.pad_w = (kernel_w * bins - width + 1) // 2
    p.pool = pool  # SPPParameter and PoolingParameter number MAX/AVE/STOCHASTIC alike
    return param


@register
class SPPLayer(Layer):
    """Caffe's SPP: spp_param.pyramid_height levels of pooling (spp_param.pool)
    over the whole image; with one level the top is that pooling's output
    (N, C, 1, 1), else the levels' outputs flattened and concatenated,
    (N, C * (4^pyramid_height - 1) / 3). Backward runs the internal layers'
    backward and sums the levels' bottom diffs (Split)."""

    type = "SPP"
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.layer_param.spp_param
        self.pyramid_height = int(p.pyramid_height)
        if self.pyramid_height < 1:
            raise self.config_error(
                "spp_param.pyramid_height is required (1 or more levels)"
            )
        self.bottom_shape: tuple[int, ...] | None = None

    def _make(self, param: caffe_pb2.LayerParameter) -> Layer:
        param.name = self.name
        return create_layer(param, self.phase, self.rng, self.xp)

    def _pooling(self, level: int, bottom: list[Blob], top: list[Blob]) -> Layer:
        """The pooling layer of a pyramid level, set up on bottom -> top."""
        _, _, height, width = bottom[0].shape
        param = pooling_param(level, height, width, self.layer_param.spp_param.pool)
        layer = self._make(param)
        try:
            layer.setup(bottom, top)
        except ConfigError as e:
            raise self.config_error(
                f"spp_param.pyramid_height {self.pyramid_height}: level {level} "
                f"cannot pool a {height}x{width} bottom into {2**level}x"
                f"{2**level} bins ({e}); lower pyramid_height"
            ) from None
        return layer

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        b = bottom[0]
        if b.num_axes != 4:
            raise ShapeError(
                f"{self.where()}: Input must have 4 axes, corresponding to (num, "
                f"channels, height, width) (bottom '{b.name}' is "
                f"{b.shape_string()})"
            )
        if min(b.shape[2:]) <= 0:
            raise ShapeError(f"{self.where()}: Input dimensions cannot be zero.")
        if b.shape == self.bottom_shape:
            self._reshape_internal(bottom, top)
            return
        # A new bottom shape: new pooling layers (Caffe's Reshape does so).
        self.bottom_shape = b.shape
        if self.pyramid_height == 1:
            self.pools = [self._pooling(0, bottom, top)]
            return
        dtype = b.data.dtype
        self.split_tops = [Blob(dtype=dtype) for _ in range(self.pyramid_height)]
        self.pool_tops = [Blob(dtype=dtype) for _ in range(self.pyramid_height)]
        self.flat_tops = [Blob(dtype=dtype) for _ in range(self.pyramid_height)]
        self.split = self._make(caffe_pb2.LayerParameter(type="Split"))
        self.split.setup(bottom, self.split_tops)
        self.pools, self.flattens = [], []
        for i in range(self.pyramid_height):
            self.pools.append(
                self._pooling(i, [self.split_tops[i]], [self.pool_tops[i]])
            )
            flatten = self._make(caffe_pb2.LayerParameter(type="Flatten"))
            flatten.setup([self.pool_tops[i]], [self.flat_tops[i]])
            self.flattens.append(flatten)
        self.concat = self._make(caffe_pb2.LayerParameter(type="Concat"))
        self.concat.setup(self.flat_tops, top)

    def _reshape_internal(self, bottom: list[Blob], top: list[Blob]) -> None:
        """The same bottom shape: the internal layers keep their shapes."""
        if self.pyramid_height == 1:
            self.pools[0].reshape(bottom, top)
            return
        self.split.reshape(bottom, self.split_tops)
        for i in range(self.pyramid_height):
            self.pools[i].reshape([self.split_tops[i]], [self.pool_tops[i]])
            self.flattens[i].reshape([self.pool_tops[i]], [self.flat_tops[i]])
        self.concat.reshape(self.flat_tops, top)

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        if self.pyramid_height == 1:
            self.pools[0].forward(bottom, top)
            return
        self.split.forward(bottom, self.split_tops)
        for i in range(self.pyramid_height):
            self.pools[i].forward([self.split_tops[i]], [self.pool_tops[i]])
            self.flattens[i].forward([self.pool_tops[i]], [self.flat_tops[i]])
        self.concat.forward(self.flat_tops, top)

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        if not propagate_down[0]:
            return
        if self.pyramid_height == 1:
            self.pools[0].backward(top, propagate_down, bottom)
            return
        self.concat.backward(top, [True] * self.pyramid_height, self.flat_tops)
        for i in range(self.pyramid_height):
            self.flattens[i].backward(
                [self.flat_tops[i]], propagate_down, [self.pool_tops[i]]
            )
            self.pools[i].backward(
                [self.pool_tops[i]], propagate_down, [self.split_tops[i]]
            )
        self.split.backward(self.split_tops, propagate_down, bottom)
