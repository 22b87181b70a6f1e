"""Affine layers: Scale and Bias (Caffe's scale_layer.cpp and bias_layer.cpp).

Both broadcast a second operand over bottom[0]: a learned blob, or
bottom[1]. The operand covers `num_axes` axes of bottom[0] from `axis`
(bottom[1]'s own axes when it is a bottom; a 0-axis operand is a scalar), so
bottom[0] is viewed as (outer, dim, inner) with the operand along dim:
top = x * s (Scale) or x + b (Bias). Scale's `bias_term` adds Caffe's
internal Bias after the product: its blob comes second and is filled from
`bias_filler`, and it is computed by the same functions as the Bias layer.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from caffesolve.blob import Blob
from caffesolve.layers import register
from caffesolve.layers.base import Layer
from caffesolve.proto import caffe_pb2

Array = npt.NDArray[np.float32]
Dims = tuple[int, int, int]


def param_shape(
    layer: Layer, b: Blob, num_axes: int, field: str, what: str
) -> tuple[int, ...]:
    """The shape of a learned scale or bias (LayerSetUp): bottom[0]'s axes
    from `axis`, `num_axes` of them (-1: to the end)."""
    axis = layer.axis_index(b, f"{field}.axis")
    if num_axes < -1:
        raise layer.config_error(
            f"{field}.num_axes must be non-negative, or -1 to extend to the end "
            f"of bottom[0] (got {num_axes})"
        )
    if num_axes >= 0 and b.num_axes < axis + num_axes:
        raise layer.config_error(
            f"{field}.num_axes: {what} blob's shape extends past bottom[0]'s "
            f"shape when applied starting with bottom[0] axis = {axis} "
            f"({num_axes} axes from axis {axis}, bottom[0] is {b.shape_string()})"
        )
    return b.shape[axis:] if num_axes == -1 else b.shape[axis : axis + num_axes]


def broadcast_dims(layer: Layer, b: Blob, operand: Blob, field: str, what: str) -> Dims:
    """(outer, dim, inner) of bottom[0] around `operand` (Reshape): a 0-axis
    operand applies from axis 0; its shape must match bottom[0]'s from axis."""
    axis = 0 if operand.num_axes == 0 else layer.axis_index(b, f"{field}.axis")
    if b.num_axes < axis + operand.num_axes:
        raise layer.shape_error(
            f"{what} blob's shape extends past bottom[0]'s shape when applied "
            f"starting with bottom[0] axis = {axis} ({what} "
            f"{operand.shape_string()}, bottom[0] {b.shape_string()})"
        )
    for i, d in enumerate(operand.shape):
        if b.shape[axis + i] != d:
            raise layer.shape_error(
                f"dimension mismatch between bottom[0]->shape({axis + i}) and "
                f"{what}->shape({i}) ({b.shape_string()} vs {operand.shape_string()})"
            )
    return b.count_range(0, axis), operand.count, b.count_range(axis + operand.num_axes)


def bias_forward(top: Array, bias: Array, dims: Dims) -> None:
    """top (outer, dim, inner) += bias along dim (bias_layer.cpp Forward_cpu,
    after the copy of bottom[0] into top)."""
    view = top.reshape(dims)
    view += bias.reshape(1, dims[1], 1)


def bias_backward(dy: Array, bias_diff: Array, dims: Dims, accumulate: bool) -> None:
    """bias diff (+)= dy summed over outer and inner (Backward_cpu: a learned
    bias accumulates, bottom[1]'s diff is overwritten)."""
    sums = dy.reshape(dims).sum(axis=2).sum(axis=0).reshape(bias_diff.shape)
    if accumulate:
        bias_diff += sums
    else:
        bias_diff[...] = sums


def _check_blob_count(layer: Layer, expected: list[str]) -> None:
    """Blobs given in the definition must be the ones the layer makes."""
    if len(layer.blobs) != len(expected):
        names = ", ".join(expected) or "none"
        raise layer.config_error(
            f"blobs: {layer.layer_param.type} with these settings keeps "
            f"{len(expected)} blobs ({names}), the definition has {len(layer.blobs)}"
        )


@register
class BiasLayer(Layer):
    """Caffe's Bias (bias_layer.cpp): top = bottom[0] + b, b broadcast along
    axes axis .. axis + num_axes of bottom[0] (bias_param axis 1, num_axes 1:
    one value per channel). b is bottom[1], or a learned blob filled from
    bias_param.filler (constant 0 by default). Backward: dx = dy; b's diff is
    dy summed over the other axes. In place allowed."""

    type = "Bias"
    min_bottom_blobs = 1
    max_bottom_blobs = 2
    exact_num_top_blobs = 1

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.layer_param.bias_param
        if len(bottom) == 1 and self.blobs:
            _check_blob_count(self, ["bias"])
        elif len(bottom) == 1:
            shape = param_shape(self, bottom[0], p.num_axes, "bias_param", "bias")
            bias = Blob(shape, dtype=bottom[0].data.dtype, xp=self.xp)
            self.fill(bias, p.filler, "bias_param.filler")
            self.blobs = [bias]

    def blob_roles(self) -> list[str]:
        return ["bias"] if self.blobs else []

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        bias = bottom[1] if len(bottom) > 1 else self.blobs[0]
        self.dims = broadcast_dims(self, bottom[0], bias, "bias_param", "bias")
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        bias = bottom[1] if len(bottom) > 1 else self.blobs[0]
        if top[0] is not bottom[0]:
            self.xp.copyto(top[0].data, bottom[0].data)
        bias_forward(top[0].data, bias.data, self.dims)

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        dy = top[0].diff
        if propagate_down[0] and top[0] is not bottom[0]:
            self.xp.copyto(bottom[0].diff, dy)
        if len(bottom) == 1 and self.param_propagate_down[0]:
            bias_backward(dy, self.blobs[0].diff, self.dims, accumulate=True)
        elif len(bottom) > 1 and propagate_down[1]:
            bias_backward(dy, bottom[1].diff, self.dims, accumulate=False)


@register
class ScaleLayer(Layer):
    """Caffe's Scale (scale_layer.cpp): top = bottom[0] * s (+ b with
    bias_term), s and b broadcast along axes axis .. axis + num_axes of
    bottom[0] (scale_param axis 1, num_axes 1: one per channel, as after
    BatchNorm in ResNet). s is bottom[1] or a learned blob (scale_param.filler,
    constant 1 by default); b is learned (bias_filler, constant 0 by default)
    and covers bottom[1]'s axes when s is a bottom. Blobs: [s] + [b].

    Backward: dx = dy * s; s's diff = dy * x summed over the other axes; b's
    as Bias. As in Caffe, a learned s's diff is overwritten instead of
    accumulated when s has bottom[0]'s count, or when outer is 1 with s and
    inner both longer than 1 (the same with iter_size 1; with iter_size > 1
    only the last pass's diff is kept there, as in Caffe)."""

    type = "Scale"
    min_bottom_blobs = 1
    max_bottom_blobs = 2
    exact_num_top_blobs = 1

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.layer_param.scale_param
        self.bias_term = bool(p.bias_term)
        expected = (["scale"] if len(bottom) == 1 else []) + (
            ["bias"] if self.bias_term else []
        )
        if self.blobs:
            _check_blob_count(self, expected)
            return
        dtype = bottom[0].data.dtype
        blobs: list[Blob] = []
        if len(bottom) == 1:
            shape = param_shape(self, bottom[0], p.num_axes, "scale_param", "scale")
            scale = Blob(shape, dtype=dtype, xp=self.xp)
            filler = p.filler
            if not p.HasField("filler"):  # identity by default
                filler = caffe_pb2.FillerParameter(type="constant", value=1)
            self.fill(scale, filler, "scale_param.filler")
            blobs.append(scale)
        if self.bias_term:
            # Caffe's internal Bias: num_axes of bottom[1] when it is the scale.
            num_axes = bottom[1].num_axes if len(bottom) > 1 else p.num_axes
            shape = param_shape(self, bottom[0], num_axes, "scale_param", "bias")
            bias = Blob(shape, dtype=dtype, xp=self.xp)
            self.fill(bias, p.bias_filler, "scale_param.bias_filler")
            blobs.append(bias)
        self.blobs = blobs

    def blob_roles(self) -> list[str]:
        return (["scale"] if len(self.blobs) > int(self.bias_term) else []) + (
            ["bias"] if self.bias_term else []
        )

    def _scale(self, bottom: list[Blob]) -> Blob:
        return bottom[1] if len(bottom) > 1 else self.blobs[0]

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        scale = self._scale(bottom)
        self.dims = broadcast_dims(self, bottom[0], scale, "scale_param", "scale")
        if self.bias_term:
            bias = self.blobs[-1]
            self.bias_dims = broadcast_dims(
                self, bottom[0], bias, "scale_param", "bias"
            )
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        x = bottom[0].data
        xp = self.xp
        if top[0] is bottom[0]:  # backward needs x: keep a copy (Caffe's temp_)
            saved = self.buffer("bottom_copy", x.shape, x.dtype)
            xp.copyto(saved, x)
        s = self._scale(bottom).data.reshape(1, self.dims[1], 1)
        out = top[0].data.reshape(self.dims)
        xp.multiply(x.reshape(self.dims), s, out=out)
        if self.bias_term:
            bias_forward(top[0].data, self.blobs[-1].data, self.bias_dims)

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        dy = top[0].diff
        xp = self.xp
        if self.bias_term and self.param_propagate_down[-1]:
            bias_backward(dy, self.blobs[-1].diff, self.bias_dims, accumulate=True)
        learned = len(bottom) == 1
        scale = self._scale(bottom)
        if (learned and self.param_propagate_down[0]) or (
            not learned and propagate_down[1]
        ):
            x = bottom[0].data
            if top[0] is bottom[0]:
                x = self.buffer("bottom_copy", x.shape, x.dtype)
            outer, dim, inner = self.dims
            product = self.buffer("product", dy.shape, dy.dtype)
            xp.multiply(dy, x, out=product)
            sums = product.reshape(self.dims).sum(axis=2).sum(axis=0)
            overwrite = (
                not learned
                or bottom[0].count == scale.count
                or (outer == 1 and dim > 1 and inner > 1)
            )
            if overwrite:
                scale.diff[...] = sums.reshape(scale.shape)
            else:
                scale.diff += sums.reshape(scale.shape)
        if propagate_down[0]:
            s = scale.data.reshape(1, self.dims[1], 1)
            xp.multiply(dy.reshape(self.dims), s, out=bottom[0].diff.reshape(self.dims))
