"""The convolution family: BaseConvolutionLayer (Caffe's base_conv_layer.cpp)
with Convolution (conv_layer.cpp), Deconvolution (deconv_layer.cpp) and
Im2col (im2col_layer.cpp) over it.

BaseConvolutionLayer keeps Caffe's parameters, checks, blobs and top shapes
for any number of spatial axes; a subclass says how its output size follows
from its input (`compute_output_shape`) and which GEMM steps make its
forward and backward. The steps are those of base_conv_layer.cpp, run over
the whole batch by a lowering (caffesolve/ops/conv.py), one per bottom,
which also picks the strategy and splits the work for the worker threads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from caffesolve.blob import Blob
from caffesolve.errors import ShapeError
from caffesolve.layers import register
from caffesolve.layers.base import Layer
from caffesolve.ops.conv import (
    ConvGeometry,
    ConvLowering,
    NDGeometry,
    add_bias,
    add_bias_diff,
    make_lowering,
)
from caffesolve.ops.im2col import (
    col2im_per_image,
    conv_out_size,
    im2col_per_image,
    padded_image_shape,
)
from caffesolve.proto import caffe_pb2

Array = npt.NDArray[np.float32]


def _per_axis(
    layer: Layer,
    values: Sequence[int],
    name: str,
    default: int | None,
    num_spatial: int,
) -> tuple[int, ...]:
    """A repeated conv field (kernel_size, stride, pad, dilation): given
    once, once per spatial axis, or (with a default) not at all."""
    n = len(values)
    if n == 0 and default is not None:
        return (default,) * num_spatial
    if n == 1:
        return (int(values[0]),) * num_spatial
    if n == num_spatial:
        return tuple(int(v) for v in values)
    raise layer.config_error(
        f"convolution_param.{name} must be specified once, or once per spatial "
        f"dimension ({name} specified {n} times; {num_spatial} spatial dims)."
    )


def _field(
    layer: Layer,
    p: caffe_pb2.ConvolutionParameter,
    name: str,
    field: str,
    default: int | None,
    num_spatial: int,
) -> tuple[int, ...]:
    """`name_h`/`name_w` if either is set (2-D only), else the repeated
    field `field` (Caffe's LayerSetUp for kernel, stride and pad)."""
    h, w = f"{name}_h", f"{name}_w"
    if p.HasField(h) or p.HasField(w):
        if num_spatial != 2:
            raise layer.config_error(
                f"convolution_param.{h} & {w} can only be used for 2D "
                f"convolution (the bottom has {num_spatial} spatial axes)."
            )
        if len(getattr(p, field)):
            raise layer.config_error(
                f"Either convolution_param.{field} or {h}/{w} should be "
                "specified; not both."
            )
        return int(getattr(p, h)), int(getattr(p, w))
    return _per_axis(layer, getattr(p, field), field, default, num_spatial)


def _view(a: Array, shape: tuple[int, ...], what: str) -> Array:
    """View `a` as `shape` without copying (leading axes folded)."""
    if not a.flags.c_contiguous:
        raise ShapeError(f"{what} must be a contiguous array")
    return a.reshape(shape)


class BaseConvolutionLayer(Layer):
    """Caffe's BaseConvolutionLayer: convolution_param read and checked
    (kernel_size or kernel_h/kernel_w, stride, pad, dilation, group, axis,
    force_nd_im2col), the weights (conv_out_channels,
    conv_in_channels/group, *kernel) and bias (num_output,) made with their
    fillers, and the tops shaped leading axes + (num_output,) +
    compute_output_shape(spatial sizes).

    With `reverse_dimensions` (Deconvolution) the roles of the bottom and
    the top swap in the lowering: the top is the side im2col reads. Several
    bottoms share the weights, each with its own top and lowering."""

    min_bottom_blobs = 1
    min_top_blobs = 1
    equal_num_bottom_top_blobs = True
    reverse_dimensions: ClassVar[bool] = False
    # Spatial axes the layer needs at least (Caffe: 0 for convolution, 1 for
    # Im2col).
    min_spatial_axes: ClassVar[int] = 0

    def compute_output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The top's spatial sizes from the bottom's (Caffe's
        compute_output_shape)."""
        raise NotImplementedError

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        self.setup_kernel(bottom)
        p = self.layer_param.convolution_param
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
        self.conv_out_channels, self.conv_in_channels = (
            (self.channels, self.num_output)
            if self.reverse_dimensions
            else (self.num_output, self.channels)
        )
        self.bias_term = bool(p.bias_term)
        weight_shape = (
            self.conv_out_channels,
            self.conv_in_channels // self.group,
        ) + self.kernel
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
        self.lowerings: list[ConvLowering] = []

    def setup_kernel(self, bottom: list[Blob]) -> None:
        """The axes, kernel, stride, pad and dilation, with Caffe's checks."""
        p = self.layer_param.convolution_param
        try:
            self.channel_axis = bottom[0].canonical_axis_index(p.axis)
        except ShapeError as e:
            raise self.config_error(f"convolution_param.axis: {e}") from None
        self.num_spatial_axes = n = bottom[0].num_axes - self.channel_axis - 1
        if n < self.min_spatial_axes:
            raise self.config_error(
                f"the bottom {bottom[0].shape_string()} has no spatial axes after "
                f"channel axis {self.channel_axis} (convolution_param.axis)"
            )
        self.force_nd_im2col = bool(p.force_nd_im2col)
        self.kernel = _field(self, p, "kernel", "kernel_size", None, n)
        self.stride = _field(self, p, "stride", "stride", 1, n)
        self.pad = _field(self, p, "pad", "pad", 0, n)
        self.dilation = _per_axis(self, p.dilation, "dilation", 1, n)
        if n and min(self.kernel) <= 0:
            raise self.config_error(
                "Filter dimensions must be nonzero (set convolution_param."
                "kernel_size, or kernel_h and kernel_w)."
            )
        if n and min(self.stride) <= 0:
            raise self.config_error("Stride dimensions must be nonzero.")
        if n and min(self.dilation) <= 0:
            raise self.config_error("Dilation dimensions must be nonzero.")
        self.geometry: ConvGeometry | NDGeometry | None = None

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

    def check_bottom(self, bottom: list[Blob]) -> None:
        """Caffe's Reshape checks: same axes, channels and shapes."""
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

    def output_shape(self, bottom: Blob) -> tuple[int, ...]:
        """compute_output_shape of the bottom's spatial sizes; a ShapeError
        if a size comes out empty."""
        spatial = bottom.shape[self.channel_axis + 1 :]
        output = self.compute_output_shape(spatial)
        if output and min(output) <= 0:
            sizes = "x".join(map(str, output))
            if self.reverse_dimensions:
                raise ShapeError(
                    f"{self.where()}: convolution_param.pad "
                    f"{'x'.join(map(str, self.pad))} leaves no output for the "
                    f"bottom {bottom.shape_string()} (output {sizes})"
                )
            extent = [d * (k - 1) + 1 for k, d in zip(self.kernel, self.dilation)]
            raise ShapeError(
                f"{self.where()}: the kernel (extent {'x'.join(map(str, extent))}) "
                f"is larger than the padded bottom {bottom.shape_string()} "
                f"(output {sizes})"
            )
        return output

    def make_geometry(
        self, num: int, channels: int, spatial: tuple[int, ...]
    ) -> ConvGeometry | NDGeometry:
        """The sizes of the image side: 2-D, or N-D (Caffe's im2col_nd) for
        other axis counts and with force_nd_im2col."""
        if self.num_spatial_axes == 2 and not self.force_nd_im2col:
            (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.pad
            dh, dw = self.dilation
            return ConvGeometry(num, channels, *spatial, kh, kw, sh, sw, ph, pw, dh, dw)
        return NDGeometry(
            num, channels, spatial, self.kernel, self.stride, self.pad, self.dilation
        )

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        self.check_bottom(bottom)
        axis = self.channel_axis
        shape = bottom[0].shape
        self.num = bottom[0].count_range(0, axis)
        output = self.output_shape(bottom[0])
        self.bottom_shape = (self.num, self.channels) + shape[axis + 1 :]
        self.top_shape = (self.num, self.num_output) + output
        for t in top:
            t.reshape(shape[:axis] + self.top_shape[1:])
        # The lowering's image side: Caffe's conv_input_shape_.
        image = self.top_shape if self.reverse_dimensions else self.bottom_shape
        g = self.make_geometry(image[0], image[1], image[2:])
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
    `group` independent groups). Weights (num_output, channels/group,
    *kernel), bias (num_output,). Output size per axis:
    (in + 2*pad - (dilation*(k-1)+1)) / stride + 1 (conv_layer.cpp).
    Forward is forward_gemm (and the bias); backward is backward_bias,
    then weight_gemm and backward_gemm (backward_gemms)."""

    type = "Convolution"

    def compute_output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(
            conv_out_size(*a)
            for a in zip(input_shape, self.kernel, self.stride, self.pad, self.dilation)
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
            x = self.bottom_view(b.data, f"bottom '{b.name}' data")
            dx = None
            if propagate_down[i]:
                dx = self.bottom_view(b.diff, f"bottom '{b.name}' diff")
            learn = self.param_propagate_down[0]
            weight_diff = weight.diff if learn else None
            lowering.backward_gemms(x, dy, weight.data, dx, weight_diff)


@register
class DeconvolutionLayer(BaseConvolutionLayer):
    """Caffe's Deconvolution (deconv_layer.cpp): Convolution's data gradient
    as the forward, so top = col2im(W^T x bottom) + b. Weights (channels,
    num_output/group, *kernel), bias (num_output,). Output size per axis:
    stride*(in - 1) + dilation*(k-1)+1 - 2*pad. The lowering reads the top
    as its image side: forward is backward_gemm (and the bias), backward is
    the bias diff, weight_gemm (of the top diff against the bottom) and
    forward_gemm of the top diff, reusing the columns weight_gemm made."""

    type = "Deconvolution"
    reverse_dimensions = True

    def compute_output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(
            s * (size - 1) + d * (k - 1) + 1 - 2 * p
            for size, k, s, p, d in zip(
                input_shape, self.kernel, self.stride, self.pad, self.dilation
            )
        )

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        w = self.blobs[0].data
        for lowering, b, t in zip(self.lowerings, bottom, top):
            x = self.bottom_view(b.data, f"bottom '{b.name}' data")
            y = self.top_view(t.data, f"top '{t.name}' data")
            lowering.backward_gemm(lowering.output_columns(x), w, y)
            if self.bias_term:
                add_bias(y, self.blobs[1].data)

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        weight = self.blobs[0]
        for i, (lowering, t, b) in enumerate(zip(self.lowerings, top, bottom)):
            top_diff = self.top_view(t.diff, f"top '{t.name}' diff")
            if self.bias_term and self.param_propagate_down[1]:
                add_bias_diff(top_diff, self.blobs[1].diff, self.buffer)
            learn = self.param_propagate_down[0]
            if learn:
                x = lowering.output_columns(self.bottom_view(b.data, "bottom data"))
                lowering.weight_gemm(top_diff, x, weight.diff)
            if propagate_down[i]:
                dx = self.bottom_view(b.diff, f"bottom '{b.name}' diff")
                lowering.forward_gemm(top_diff, weight.data, dx, reuse_columns=learn)


@register
class Im2colLayer(BaseConvolutionLayer):
    """Caffe's Im2col (im2col_layer.cpp): the top is each image's column
    matrix, (N, C*prod(kernel), *out) with out per axis
    (in + 2*pad - (dilation*(k-1)+1)) / stride + 1; backward is col2im.
    Reads convolution_param's kernel, stride, pad, dilation, axis and
    force_nd_im2col; no weights."""

    type = "Im2col"
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1
    min_spatial_axes = 1
    compute_output_shape = ConvolutionLayer.compute_output_shape

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        self.setup_kernel(bottom)

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        axis, shape = self.channel_axis, bottom[0].shape
        if len(shape) != axis + 1 + self.num_spatial_axes:
            raise ShapeError(f"{self.where()}: bottom num_axes may not change.")
        output = self.output_shape(bottom[0])
        num, channels = bottom[0].count_range(0, axis), shape[axis]
        self.geometry = self.make_geometry(num, channels, shape[axis + 1 :])
        self.bottom_shape = (num, channels) + shape[axis + 1 :]
        self.top_shape = (num, channels * math.prod(self.kernel)) + output
        top[0].reshape(shape[:axis] + self.top_shape[1:])

    def _work(self, name: str, dtype: np.dtype) -> Array | None:
        g = self.geometry
        assert g is not None
        return self.buffer(name, padded_image_shape(g), dtype) if g.has_pad else None

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        x = self.bottom_view(bottom[0].data, "bottom data")
        col = self.top_view(top[0].data, "top data")
        assert self.geometry is not None
        im2col_per_image(x, self.geometry, col, self._work("image", x.dtype))

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        if not propagate_down[0]:
            return
        dcol = self.top_view(top[0].diff, "top diff")
        dx = self.bottom_view(bottom[0].diff, "bottom diff")
        assert self.geometry is not None
        col2im_per_image(dcol, self.geometry, dx, self._work("image_diff", dx.dtype))
