"""The convolution family: BaseConvolutionLayer (Caffe's base_conv_layer.cpp)
and Convolution over it (conv_layer.cpp).

BaseConvolutionLayer keeps Caffe's parameters, checks, blobs and top shapes;
a subclass says how its output size follows from its input
(`compute_output_shape`) and which GEMM steps make its forward and backward.
The steps are those of base_conv_layer.cpp, run over the whole batch by a
lowering (caffesolve/ops/conv.py), one per bottom, which also picks the
strategy and splits the work for the worker threads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from caffesolve.backend import array_module
from caffesolve.blob import Blob
from caffesolve.errors import ShapeError
from caffesolve.layers import register
from caffesolve.layers.base import Layer
from caffesolve.ops.conv import (
    ConvGeometry,
    ConvLowering,
    make_lowering,
    run_steps,
)
from caffesolve.ops.im2col import conv_out_size
from caffesolve.proto import caffe_pb2

Array = npt.NDArray[np.float32]


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


def _view(a: Array, shape: tuple[int, ...], what: str) -> Array:
    """View `a` as `shape` without copying (leading axes folded)."""
    if not a.flags.c_contiguous:
        raise ShapeError(f"{what} must be a contiguous array")
    return a.reshape(shape)


class BaseConvolutionLayer(Layer):
    """Caffe's BaseConvolutionLayer: convolution_param read and checked
    (kernel_size or kernel_h/kernel_w, stride, pad, dilation, group, axis),
    the weights (conv_out_channels, conv_in_channels/group, kh, kw) and bias
    (num_output,) made with their fillers, and the tops shaped
    leading axes + (num_output,) + compute_output_shape(spatial sizes).

    With `reverse_dimensions` (Deconvolution) the roles of the bottom and
    the top swap in the lowering: the top is the side im2col reads. Several
    bottoms share the weights, each with its own top and lowering."""

    min_bottom_blobs = 1
    min_top_blobs = 1
    equal_num_bottom_top_blobs = True
    reverse_dimensions: ClassVar[bool] = False

    def compute_output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The top's spatial sizes from the bottom's (Caffe's
        compute_output_shape)."""
        raise NotImplementedError

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
        if self.reverse_dimensions:
            self.conv_out_channels, self.conv_in_channels = (
                self.channels,
                self.num_output,
            )
        else:
            self.conv_out_channels, self.conv_in_channels = (
                self.num_output,
                self.channels,
            )
        self.bias_term = bool(p.bias_term)
        weight_shape = (
            self.conv_out_channels,
            self.conv_in_channels // self.group,
        ) + tuple(self.kernel)
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
        self.lowerings: list[ConvLowering] = []

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
        self.num = bottom[0].count_range(0, axis)
        spatial = shape[axis + 1 :]
        output = self.compute_output_shape(spatial)
        if min(output) <= 0:
            extent = [d * (k - 1) + 1 for k, d in zip(self.kernel, self.dilation)]
            raise ShapeError(
                f"{self.where()}: the kernel (extent "
                f"{'x'.join(map(str, extent))}) is larger than the padded bottom "
                f"{bottom[0].shape_string()}"
            )
        self.bottom_shape = (self.num, self.channels) + spatial
        self.top_shape = (self.num, self.num_output) + output
        for t in top:
            t.reshape(shape[:axis] + self.top_shape[1:])
        # The lowering's image side: Caffe's conv_input_shape_.
        image = self.top_shape if self.reverse_dimensions else self.bottom_shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.pad
        dh, dw = self.dilation
        g = ConvGeometry(*image, kh, kw, sh, sw, ph, pw, dh, dw)
        if g != self.geometry or len(self.lowerings) != len(bottom):
            self.geometry = g
            self.forget_buffers()
            self.lowerings = [
                make_lowering(g, self.conv_out_channels, self.group, self.buffer, i)
                for i in range(len(bottom))
            ]

    def bottom_view(self, a: Array, what: str) -> Array:
        """A bottom's data or diff as (num, channels, spatial...)."""
        return _view(a, self.bottom_shape, what)

    def top_view(self, a: Array, what: str) -> Array:
        """A top's data or diff as (num, num_output, spatial...)."""
        return _view(a, self.top_shape, what)


@register
class ConvolutionLayer(BaseConvolutionLayer):
    """Caffe's Convolution: top[n, m] = sum_c W[m, c] (*) bottom[n, c] + b[m]
    (cross-correlation with stride, pad, dilation; channels split into
    `group` independent groups). Weights (num_output, channels/group, kh, kw),
    bias (num_output,). Output size per axis:
    (in + 2*pad - (dilation*(k-1)+1)) / stride + 1 (conv_layer.cpp).
    Forward is forward_gemm (and the bias); backward is backward_bias,
    then weight_gemm and backward_gemm side by side on the workers."""

    type = "Convolution"

    def compute_output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(
            conv_out_size(size, k, s, p, d)
            for size, k, s, p, d in zip(
                input_shape, self.kernel, self.stride, self.pad, self.dilation
            )
        )

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        w = self.blobs[0].data
        bias = self.blobs[1].data if self.bias_term else None
        for lowering, b, t in zip(self.lowerings, bottom, top):
            x = self.bottom_view(b.data, f"bottom '{b.name}' data")
            y = self.top_view(t.data, f"top '{t.name}' data")
            lowering.forward_gemm(x, w, y, bias)

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        weight = self.blobs[0]
        for i, (lowering, t, b) in enumerate(zip(self.lowerings, top, bottom)):
            top_diff = self.top_view(t.diff, f"top '{t.name}' diff")
            dy = lowering.output_columns(top_diff)
            if self.bias_term and self.param_propagate_down[1]:
                lowering.backward_bias(dy, self.blobs[1].diff)
            steps: list[Callable[[], None]] = []
            if propagate_down[i]:
                dx = self.bottom_view(b.diff, f"bottom '{b.name}' diff")
                steps.append(partial(lowering.backward_gemm, dy, weight.data, dx))
            if self.param_propagate_down[0]:
                x = self.bottom_view(b.data, f"bottom '{b.name}' data")
                steps.append(partial(lowering.weight_gemm, x, dy, weight.diff, True))
            run_steps(steps, dy.nbytes)
