"""Pooling (Caffe's pooling_layer.cpp): MAX and AVE, with Caffe's output size
and window rules; the array work lives in caffesolve/ops/pooling.py. MAX
pooling over 2x2 windows with stride 2 (LeNet's, VGG's) runs compiled kernels;
pooling stays inline (measured on 2 cores, splitting it was no faster).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from caffesolve import kernels
from caffesolve.backend import array_module
from caffesolve.blob import Blob
from caffesolve.errors import ShapeError
from caffesolve.layers import register
from caffesolve.layers.base import Layer
from caffesolve.ops import pooling as ops
from caffesolve.ops.pooling import PoolGeometry
from caffesolve.proto import caffe_pb2

Array = npt.NDArray[np.float32]


def _argmax_dtype(window: int) -> type:
    """The smallest unsigned type holding window offsets 0 .. window-1."""
    if window <= 256:
        return np.uint8
    if window <= 65536:
        return np.uint16
    return np.uint32


def _max_pool_2x2(
    x: Array, g: PoolGeometry, out: Array, argmax: npt.NDArray[np.integer] | None
) -> None:
    """MAX forward with the compiled 2x2 kernels (kernels.py), with the
    argmax or (None) without it; inline: split between the workers it was no
    faster (benchmarks/bench_vision.py)."""
    planes = g.num * g.channels
    x3 = x.reshape(planes, g.height, g.width)
    out3 = out.reshape(planes, g.out_h, g.out_w)
    if argmax is None:
        kernels.compiled(ops.max_pool_2x2_max)(x3, out3)
        return
    kernel = kernels.compiled(ops.max_pool_2x2)
    kernel(x3, out3, argmax.reshape(out3.shape))


@register
class PoolingLayer(Layer):
    """Caffe's Pooling (pooling_layer.cpp), MAX or AVE over kernel windows
    with stride and pad, or over the whole image with global_pooling.
    Output size: ceil((in + 2*pad - kernel) / stride) + 1 (floor with
    round_mode FLOOR), less one if the last window would start in the padding.
    MAX takes the first maximum in window order and may output Caffe's mask
    (index h*width + w) as a second top; backward routes each top diff to it.
    AVE divides by the window clipped to in + pad; backward spreads evenly."""

    type = "Pooling"
    exact_num_bottom_blobs = 1
    min_top_blobs = 1
    max_top_blobs = 2

    def configure(self) -> None:
        # Caffe's MaxTopBlobs: MAX may also output its mask.
        is_max = self.layer_param.pooling_param.pool == caffe_pb2.PoolingParameter.MAX
        self.max_top_blobs = 2 if is_max else 1

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.layer_param.pooling_param
        P = caffe_pb2.PoolingParameter
        if p.pool == P.STOCHASTIC:
            raise self.config_error(
                "pooling_param.pool STOCHASTIC is not supported (use MAX or AVE)"
            )
        if p.pool not in (P.MAX, P.AVE):
            raise self.config_error(f"Unknown pooling method {p.pool}.")
        self.pool = p.pool
        self.global_pooling = bool(p.global_pooling)
        has_kh, has_kw = p.HasField("kernel_h"), p.HasField("kernel_w")
        if self.global_pooling:
            if p.HasField("kernel_size") or has_kh or has_kw:
                raise self.config_error(
                    "With Global_pooling: true Filter size cannot specified"
                )
        else:
            if p.HasField("kernel_size") and (has_kh or has_kw):
                raise self.config_error(
                    "Filter size is kernel_size OR kernel_h and kernel_w; not both"
                )
            if not (p.HasField("kernel_size") or (has_kh and has_kw)):
                raise self.config_error(
                    "pooling_param.kernel_size is required (For non-square "
                    "filters both kernel_h and kernel_w are required.)"
                )
        has_ph, has_pw = p.HasField("pad_h"), p.HasField("pad_w")
        if not (
            (not p.HasField("pad") and has_ph and has_pw) or not (has_ph or has_pw)
        ):
            raise self.config_error("pad is pad OR pad_h and pad_w are required.")
        has_sh, has_sw = p.HasField("stride_h"), p.HasField("stride_w")
        if not (
            (not p.HasField("stride") and has_sh and has_sw) or not (has_sh or has_sw)
        ):
            raise self.config_error(
                "Stride is stride OR stride_h and stride_w are required."
            )
        if self.global_pooling:
            self.kernel = (bottom[0].shape[-2], bottom[0].shape[-1])
        elif p.HasField("kernel_size"):
            self.kernel = (int(p.kernel_size), int(p.kernel_size))
        else:
            self.kernel = (int(p.kernel_h), int(p.kernel_w))
        if min(self.kernel) <= 0:
            raise self.config_error("Filter dimensions cannot be zero.")
        self.pad = (int(p.pad_h), int(p.pad_w)) if has_ph else (int(p.pad),) * 2
        if has_sh:
            self.stride = (int(p.stride_h), int(p.stride_w))
        else:
            self.stride = (int(p.stride),) * 2
        if min(self.stride) <= 0:
            raise self.config_error("Stride dimensions cannot be zero.")
        if self.global_pooling and (self.pad != (0, 0) or self.stride != (1, 1)):
            raise self.config_error(
                "With Global_pooling: true; only pad = 0 and stride = 1"
            )
        if self.pad[0] >= self.kernel[0] or self.pad[1] >= self.kernel[1]:
            raise self.config_error(
                f"pad ({self.pad[0]}, {self.pad[1]}) must be smaller than the "
                f"kernel ({self.kernel[0]}, {self.kernel[1]}) (pooling_param.pad)"
            )
        self.ceil_mode = p.round_mode == P.CEIL
        self.geometry: PoolGeometry | None = None
        self._argmax_valid = False

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        self.xp = array_module(bottom[0].data)  # numpy (CuPy later)
        shape = bottom[0].shape
        if len(shape) != 4:
            raise ShapeError(
                f"{self.where()}: Input must have 4 axes, corresponding to "
                f"(num, channels, height, width) (bottom '{bottom[0].name}' is "
                f"{bottom[0].shape_string()})"
            )
        n, c, h, w = shape
        if self.global_pooling:
            self.kernel = (h, w)
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.pad
        g = PoolGeometry(n, c, h, w, kh, kw, sh, sw, ph, pw, self.ceil_mode)
        oh, ow = g.out_h, g.out_w
        if oh <= 0 or ow <= 0:
            raise ShapeError(
                f"{self.where()}: kernel {kh}x{kw} is larger than the padded "
                f"bottom {bottom[0].shape_string()}"
            )
        for t in top:
            t.reshape((n, c, oh, ow))
        if g != self.geometry:
            self.geometry = g
            self.forget_buffers()
            self._tile_buffers: ops.TileBuffers | None = None
            self._argmax_valid = False
            if self.pool == caffe_pb2.PoolingParameter.AVE:
                divisor = ops.ave_pool_divisor(g, bottom[0].data.dtype)
                self.divisor = self.xp.asarray(divisor)

    def _argmax(self, shape: tuple[int, ...]) -> np.ndarray:
        """The window offset of each output's maximum (MAX forward's argmax)."""
        g = self.geometry
        assert g is not None
        return self.buffer("argmax", shape, _argmax_dtype(g.kernel_h * g.kernel_w))

    def _canvas(self, name: str, dtype: type, fill: float) -> np.ndarray | None:
        """The padded canvas buffer, or None when windows stay in the image."""
        g = self.geometry
        assert g is not None
        if not g.needs_canvas:
            return None
        shape = (g.num, g.channels, g.canvas_h, g.canvas_w)
        return self.buffer(name, shape, dtype, fill)

    def _tiles(self, dtype: type) -> ops.TileBuffers | None:
        """Buffers of the tiling path (NumPy arrays, windows that tile the
        bottom: LeNet's 2x2 stride 2), or None for the general path."""
        g = self.geometry
        assert g is not None
        if self.xp is not np or not ops.pool_tiles(g):
            return None
        tiles = self._tile_buffers
        if tiles is None or tiles.planes.dtype != dtype:
            area = g.kernel_h * g.kernel_w
            tiles = ops.tile_buffers(g, dtype, _argmax_dtype(area))
            self._tile_buffers = tiles
        return tiles

    def _compiled_2x2(self, x: Array, out: Array) -> bool:
        """True when MAX pooling runs the compiled 2x2 kernels: 2x2 windows
        with stride 2 tiling the bottom, and x and out (bottom and top, or
        top diff and bottom diff) arrays the kernels take."""
        g = self.geometry
        assert g is not None
        return (
            g.kernel_h == g.kernel_w == 2
            and ops.pool_tiles(g)
            and kernels.takes(x, out)
        )

    def _max_forward(self, x: Array, out: Array, with_argmax: bool) -> None:
        g = self.geometry
        assert g is not None
        argmax = cols = None
        area = g.kernel_h * g.kernel_w
        if with_argmax:
            argmax = self._argmax(out.shape)
        if self._compiled_2x2(x, out):
            _max_pool_2x2(x, g, out, argmax)
            self._argmax_valid = with_argmax
            return
        tiles = self._tiles(x.dtype)
        if tiles is not None:
            ops.max_pool_tiles_forward(x, g, out, argmax, tiles)
            self._argmax_valid = with_argmax
            return
        if with_argmax:
            cols = self.buffer("windows", (area,) + out.shape, x.dtype)
        work = self._canvas("canvas", x.dtype, -np.inf)
        ops.max_pool_forward(x, g, out, argmax, work, cols)
        self._argmax_valid = with_argmax

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        g = self.geometry
        assert g is not None
        x, out = bottom[0].data, top[0].data
        if self.pool == caffe_pb2.PoolingParameter.AVE:
            work = self._canvas("canvas", x.dtype, 0.0)
            divisor = self.divisor.astype(x.dtype, copy=False)
            ops.ave_pool_forward(x, g, divisor, out, work)
            return
        # A TEST net never runs backward: skip the argmax unless a mask is asked.
        with_argmax = self.phase == caffe_pb2.TRAIN or len(top) > 1
        self._max_forward(x, out, with_argmax)
        if len(top) > 1:
            argmax = self._argmax(top[0].shape)
            top[1].data[...] = ops.argmax_to_caffe_mask(argmax, g, x.dtype)

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        if not propagate_down[0]:
            return
        g = self.geometry
        assert g is not None
        dy, dx = top[0].diff, bottom[0].diff
        work = self._canvas("canvas_diff", dx.dtype, 0.0)
        if self.pool == caffe_pb2.PoolingParameter.AVE:
            divisor = self.divisor.astype(dx.dtype, copy=False)
            ops.ave_pool_backward(dy, g, divisor, dx, work)
            return
        if len(top) > 1:
            # Caffe routes by the mask top's values when there is one.
            ops.caffe_mask_backward(dy, top[1].data, g, dx)
            return
        if not self._argmax_valid:
            scratch = self.xp.empty(top[0].shape, bottom[0].data.dtype)
            self._max_forward(bottom[0].data, scratch, True)
        argmax = self._argmax(top[0].shape)
        if self._compiled_2x2(dy, dx):
            kernel = kernels.compiled(ops.max_pool_2x2_backward)
            kernel(dy.reshape(-1), argmax.reshape(-1), dx.reshape(-1), g.width)
            return
        tiles = self._tiles(dx.dtype)
        if tiles is not None:
            ops.max_pool_tiles_backward(dy, argmax, g, dx, tiles)
            return
        ops.max_pool_backward(dy, argmax, g, dx, work)
