"""Pooling (Caffe's pooling_layer.cpp; STOCHASTIC after pooling_layer.cu):
MAX, AVE and STOCHASTIC, with Caffe's output size and window rules. The array
work lives in caffesolve/ops: pooling.py (geometry, the NumPy paths),
pooling_kernels.py (the compiled loops, split over the worker threads) and
pooling_tiles.py (NumPy over windows that tile the image).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from caffesolve import kernels
from caffesolve.backend import array_module
from caffesolve.blob import Blob
from caffesolve.layers import register
from caffesolve.layers.base import Layer
from caffesolve.ops import pooling as ops
from caffesolve.ops import pooling_tiles as tiles
from caffesolve.ops.pooling import AVE, MAX, STOCHASTIC, PoolGeometry
from caffesolve.ops.pooling_kernels import (
    ave_backward,
    ave_forward,
    pool_backward_compiled,
    pool_forward_compiled,
)
from caffesolve.proto import caffe_pb2

Array = npt.NDArray[np.float32]


@register
class PoolingLayer(Layer):
    """Caffe's Pooling over kernel windows with stride and pad, or over the
    whole image with global_pooling. Output size: ceil((in + 2*pad - kernel)
    / stride) + 1 (floor with round_mode FLOOR), less one if the last window
    would start in the padding.

    MAX takes the first maximum in window order and may output Caffe's mask
    (index h*width + w, -1 for none) as a second top; backward routes each
    top diff to it. AVE divides by the window clipped to in + pad; backward
    spreads evenly. STOCHASTIC follows Caffe's GPU code (its CPU code has
    none): TRAIN samples one element per window with probability
    proportional to its value (the layer's rng, seeded by the solver's
    random_seed) and routes the diff to it; TEST outputs sum(x*x) / sum(x)."""

    type = "Pooling"
    exact_num_bottom_blobs = 1
    min_top_blobs = 1
    max_top_blobs = 2

    def configure(self) -> None:
        # Caffe's MaxTopBlobs: MAX may also output its mask.
        self.max_top_blobs = 2 if self.layer_param.pooling_param.pool == MAX else 1

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.layer_param.pooling_param
        if p.pool not in (MAX, AVE, STOCHASTIC):
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
        if self.pad != (0, 0):
            if self.pool == STOCHASTIC:
                raise self.config_error(
                    "Padding implemented only for average and max pooling "
                    "(pooling_param.pad)."
                )
            if self.pad[0] >= self.kernel[0] or self.pad[1] >= self.kernel[1]:
                raise self.config_error(
                    f"pad ({self.pad[0]}, {self.pad[1]}) must be smaller than "
                    f"the kernel ({self.kernel[0]}, {self.kernel[1]}) "
                    "(pooling_param.pad)"
                )
        self.ceil_mode = p.round_mode == caffe_pb2.PoolingParameter.CEIL
        self.geometry: PoolGeometry | None = None
        self._argmax_valid = False

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        self.xp = array_module(bottom[0].data)  # numpy (CuPy later)
        shape = bottom[0].shape
        if len(shape) != 4:
            raise self.shape_error(
                "Input must have 4 axes, corresponding to (num, channels, "
                f"height, width) (bottom '{bottom[0].name}' is "
                f"{bottom[0].shape_string()})"
            )
        n, c, h, w = shape
        if self.global_pooling:
            self.kernel = (h, w)
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.pad
        g = PoolGeometry(n, c, h, w, kh, kw, sh, sw, ph, pw, self.ceil_mode)
        oh, ow = g.out_h, g.out_w
        if oh <= 0 or ow <= 0:
            raise self.shape_error(
                f"kernel {kh}x{kw} is larger than the padded bottom "
                f"{bottom[0].shape_string()}"
            )
        for t in top:
            t.reshape((n, c, oh, ow))
        if g != self.geometry:
            self.geometry = g
            self.forget_buffers()
            self._tile_buffers: tiles.TileBuffers | None = None
            self._argmax_valid = False
            if self.pool == AVE:
                divisor = ops.ave_pool_divisor(g, bottom[0].data.dtype)
                self.divisor = self.xp.asarray(divisor)

    # -- buffers ---------------------------------------------------------------

    def _argmax(self) -> np.ndarray:
        """The window offset of each output's winner (MAX) or sample
        (STOCHASTIC), g.area for none."""
        g = self._g()
        shape = (g.num, g.channels, g.out_h, g.out_w)
        return self.buffer("argmax", shape, ops.argmax_dtype(g.area))

    def _canvas(self, name: str, dtype: type, fill: float) -> np.ndarray | None:
        """The padded canvas buffer, or None when windows stay in the image."""
        g = self._g()
        if not g.needs_canvas:
            return None
        shape = (g.num, g.channels, g.canvas_h, g.canvas_w)
        return self.buffer(name, shape, dtype, fill)

    def _tiles(self, dtype: type) -> tiles.TileBuffers | None:
        """Buffers of the NumPy tiling path (windows that tile the bottom:
        LeNet's 2x2 stride 2), or None where it does not apply."""
        g = self._g()
        if self.xp is not np or not tiles.pool_tiles(g):
            return None
        buf = self._tile_buffers
        if buf is None or buf.planes.dtype != dtype:
            buf = tiles.tile_buffers(g, dtype, ops.argmax_dtype(g.area))
            self._tile_buffers = buf
        return buf

    def _g(self) -> PoolGeometry:
        assert self.geometry is not None, "reshape comes first"
        return self.geometry

    # -- forward ---------------------------------------------------------------

    def _max_forward(self, x: Array, out: Array, with_argmax: bool) -> None:
        g = self._g()
        argmax = self._argmax() if with_argmax else None
        self._argmax_valid = with_argmax
        if kernels.takes(x, out):
            pool_forward_compiled(x, g, MAX, out, argmax)
            return
        buf = self._tiles(x.dtype)
        if buf is not None:
            tiles.max_pool_tiles_forward(x, g, out, argmax, buf)
            return
        work = self._canvas("canvas", x.dtype, -np.inf)
        ops.max_pool_forward(x, g, out, argmax, work)

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        g = self._g()
        x, out = bottom[0].data, top[0].data
        if self.pool == AVE:
            divisor = self.divisor.astype(x.dtype, copy=False)
            ave_forward(x, g, divisor, out, self._canvas("canvas", x.dtype, 0.0))
        elif self.pool == STOCHASTIC:
            work = self._canvas("canvas", x.dtype, 0.0)
            if self.phase == caffe_pb2.TRAIN:
                # Caffe's caffe_gpu_rng_uniform: one draw in (0, 1] per output.
                uniform = self.buffer("uniform", out.shape, x.dtype)
                self.rng.random(out=uniform, dtype=x.dtype)
                self.xp.subtract(1, uniform, out=uniform)
                ops.stochastic_pool_train(x, g, uniform, out, self._argmax(), work)
                self._argmax_valid = True
            else:
                ops.stochastic_pool_test(x, g, out, work)
        else:
            # A TEST net never runs backward: skip the argmax unless a mask
            # top asks for it.
            with_argmax = self.phase == caffe_pb2.TRAIN or len(top) > 1
            self._max_forward(x, out, with_argmax)
            if len(top) > 1:
                mask = ops.argmax_to_caffe_mask(self._argmax(), g, x.dtype)
                top[1].data[...] = mask

    # -- backward --------------------------------------------------------------

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        if not propagate_down[0]:
            return
        g = self._g()
        dy, dx = top[0].diff, bottom[0].diff
        if self.pool == AVE:
            divisor = self.divisor.astype(dx.dtype, copy=False)
            canvas = self._canvas("canvas_diff", dx.dtype, 0.0)
            ave_backward(dy, g, divisor, dx, canvas)
            return
        if self.pool == STOCHASTIC and self.phase != caffe_pb2.TRAIN:
            ops.stochastic_pool_test_backward(
                bottom[0].data,
                top[0].data,
                dy,
                g,
                dx,
                self._canvas("canvas", dx.dtype, 0.0),
                self._canvas("canvas_diff", dx.dtype, 0.0),
            )
            return
        if len(top) > 1:
            # Caffe routes by the mask top's values when there is one.
            ops.caffe_mask_backward(dy, top[1].data, g, dx)
            return
        if not self._argmax_valid:  # a TEST-phase MAX forward skipped it
            scratch = self.xp.empty(top[0].shape, bottom[0].data.dtype)
            self._max_forward(bottom[0].data, scratch, True)
        argmax = self._argmax()
        if kernels.takes(dy, dx):
            pool_backward_compiled(dy, g, MAX, dx, argmax)
            return
        buf = self._tiles(dx.dtype)
        if buf is not None:
            tiles.max_pool_tiles_backward(dy, argmax, g, dx, buf)
            return
        work = self._canvas("canvas_diff", dx.dtype, 0.0)
        ops.max_pool_backward(dy, argmax, g, dx, work)
