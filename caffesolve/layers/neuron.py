"""Neuron layers: one bottom, one top of the same shape, element-wise
(Caffe's neuron_layer.cpp and relu, sigmoid, tanh, dropout, ... _layer.cpp).

All of them work in place (top is bottom, as LeNet's relu1): forward keeps
what backward needs (a mask, or the top data, which in place is the bottom's
array after forward), so backward never reads the overwritten input.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from caffesolve.blob import Blob
from caffesolve.layers import register
from caffesolve.layers.base import Layer
from caffesolve.ops import libm
from caffesolve.proto import caffe_pb2

Array = npt.NDArray[np.float32]


class NeuronLayer(Layer):
    """Caffe's NeuronLayer: top reshaped like bottom; in place allowed."""

    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)


# -- formulas ------------------------------------------------------------------


def relu(x: Array, negative_slope: float) -> Array:
    """ReLU: max(x, 0) + negative_slope * min(x, 0) (relu_layer.cpp)."""
    y = np.maximum(x, 0)
    if negative_slope != 0:
        y = y + x.dtype.type(negative_slope) * np.minimum(x, 0)
    return y


def sigmoid(x: Array) -> Array:
    """Sigmoid: 0.5 * tanh(0.5 * x) + 0.5, in double as Caffe's literals make
    it (sigmoid_layer.cpp; ops/libm.py)."""
    return libm.sigmoid(np.ascontiguousarray(x))


# -- layers --------------------------------------------------------------------


@register
class ReLULayer(NeuronLayer):
    """Caffe's ReLU: y = max(x, 0) + negative_slope * min(x, 0);
    dx = dy * ((x > 0) + negative_slope * (x <= 0)). With negative_slope 0
    the mask is read off the top (y > 0 exactly where x > 0), so forward
    allocates nothing; otherwise the (x > 0) mask is kept from forward. In
    place works either way."""

    type = "ReLU"

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        x = bottom[0].data
        slope = self.layer_param.relu_param.negative_slope
        if slope == 0:
            # Backward reads the mask off top: max(x, 0) > 0 exactly where x > 0.
            self.xp.maximum(x, x.dtype.type(0), out=top[0].data)
            return
        self.positive = x > 0
        top[0].data[...] = relu(x, slope)

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        if not propagate_down[0]:
            return
        dy = top[0].diff
        xp = self.xp
        slope = self.layer_param.relu_param.negative_slope
        if slope == 0:
            xp.multiply(dy, top[0].data > 0, out=bottom[0].diff)
        else:
            factor = xp.where(self.positive, 1, dy.dtype.type(slope))
            bottom[0].diff[...] = dy * factor.astype(dy.dtype, copy=False)


@register
class SigmoidLayer(NeuronLayer):
    """Caffe's Sigmoid: y = 0.5 * tanh(0.5 * x) + 0.5 (= 1 / (1 + exp(-x)));
    dx = dy * y * (1 - y), with Caffe's double steps (ops/libm.py)."""

    type = "Sigmoid"

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        top[0].data[...] = sigmoid(bottom[0].data)

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        if propagate_down[0]:
            # top_diff * sigmoid_x * (1. - sigmoid_x): the first product in
            # Dtype, the second with a double literal, rounded once.
            y = top[0].data
            part = (top[0].diff * y).astype(np.float64, copy=False)
            grad = part * (1.0 - y.astype(np.float64, copy=False))
            np.copyto(bottom[0].diff, grad, casting="same_kind")


@register
class TanHLayer(NeuronLayer):
    """Caffe's TanH: y = tanh(x) (libm's tanhf for float32); dx = dy * (1 - y^2)."""

    type = "TanH"

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        top[0].data[...] = libm.tanh(np.ascontiguousarray(bottom[0].data))

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        if propagate_down[0]:
            y = top[0].data
            bottom[0].diff[...] = top[0].diff * (1 - y * y)


@register
class DropoutLayer(NeuronLayer):
    """Caffe's Dropout (dropout_layer.cpp): at TRAIN, mask ~ Bernoulli(1 -
    dropout_ratio) from the layer's rng, y = x * mask * scale with scale =
    1 / (1 - dropout_ratio), dx = dy * mask * scale; at TEST, y = x, dx = dy.
    Caffe 1.0 has no scale_train field: it always scales at TRAIN."""

    type = "Dropout"

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        self.threshold = float(self.layer_param.dropout_param.dropout_ratio)
        if not 0.0 <= self.threshold < 1.0:
            raise self.config_error(
                "dropout_param.dropout_ratio must be in [0, 1) "
                f"(got {self.threshold:.6g})"
            )
        self.scale = 1.0 / (1.0 - self.threshold)

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        x = bottom[0].data
        if self.phase == caffe_pb2.TRAIN:
            draw = self.rng.random(x.shape, dtype=np.float32)
            keep = self.xp.asarray(draw < np.float32(1.0 - self.threshold))
            self.mask = keep * x.dtype.type(self.scale)
            top[0].data[...] = x * self.mask
        elif top[0] is not bottom[0]:
            top[0].data[...] = x

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        if not propagate_down[0]:
            return
        if self.phase == caffe_pb2.TRAIN:
            bottom[0].diff[...] = top[0].diff * self.mask
        elif top[0] is not bottom[0]:
            bottom[0].diff[...] = top[0].diff


# -- the cheaper extras ------------------------------------------------------------


@register
class AbsValLayer(NeuronLayer):
    """Caffe's AbsVal: y = |x|; dx = sign(x) * dy; not in place."""

    type = "AbsVal"
    allow_in_place = False

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        xp = self.xp
        top[0].data[...] = xp.abs(bottom[0].data)

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        if propagate_down[0]:
            xp = self.xp
            bottom[0].diff[...] = xp.sign(bottom[0].data) * top[0].diff


@register
class PowerLayer(NeuronLayer):
    """Caffe's Power: y = (shift + scale * x)^power;
    dx = dy * power * scale * (shift + scale * x)^(power - 1) (power_layer.cpp;
    with power * scale == 0, y = shift^power (1 if power is 0) and dx = 0)."""

    type = "Power"

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.layer_param.power_param
        self.power, self.scale, self.shift = p.power, p.scale, p.shift
        self.diff_scale = self.power * self.scale

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        x = bottom[0].data
        t = x.dtype.type
        if self.diff_scale == 0:
            top[0].data[...] = 1 if self.power == 0 else t(self.shift) ** t(self.power)
            return
        self.base = t(self.scale) * x + t(self.shift)
        top[0].data[...] = self.base if self.power == 1 else self.base ** t(self.power)

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        if not propagate_down[0]:
            return
        dy = top[0].diff
        t = dy.dtype.type
        if self.diff_scale == 0:
            bottom[0].diff[...] = 0
        elif self.power == 1:
            bottom[0].diff[...] = t(self.diff_scale) * dy
        else:
            slope = t(self.diff_scale) * self.base ** t(self.power - 1)
            bottom[0].diff[...] = slope * dy


@register
class ELULayer(NeuronLayer):
    """Caffe's ELU: y = max(x, 0) + alpha * (exp(min(x, 0)) - 1);
    dx = dy * (1 if x > 0 else alpha + y)."""

    type = "ELU"

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        x = bottom[0].data
        xp = self.xp
        alpha = x.dtype.type(self.layer_param.elu_param.alpha)
        self.positive = x > 0
        top[0].data[...] = xp.maximum(x, 0) + alpha * (xp.exp(xp.minimum(x, 0)) - 1)

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        if propagate_down[0]:
            xp = self.xp
            alpha = top[0].data.dtype.type(self.layer_param.elu_param.alpha)
            slope = xp.where(self.positive, 1, alpha + top[0].data)
            bottom[0].diff[...] = top[0].diff * slope


BNLL_THRESHOLD = 50.0


@register
class BNLLLayer(NeuronLayer):
    """Caffe's BNLL: y = log(1 + exp(x)) (as x + log(1 + exp(-x)) for x > 0);
    dx = dy * e / (e + 1), e = exp(min(x, 50))."""

    type = "BNLL"

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        x = bottom[0].data
        xp = self.xp
        e = xp.exp(xp.minimum(x, x.dtype.type(BNLL_THRESHOLD)))
        self.slope = e / (e + 1)
        top[0].data[...] = xp.maximum(x, 0) + xp.log(1 + xp.exp(-xp.abs(x)))

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff * self.slope


def log_base(layer: Layer, base: float) -> float:
    """ln(base), with base -1 meaning e (Exp and Log layers)."""
    if base == -1:
        return 1.0
    if base <= 0:
        raise layer.config_error(f"base must be strictly positive (got {base:.6g})")
    return float(np.log(base))


@register
class ExpLayer(NeuronLayer):
    """Caffe's Exp: y = base^(shift + scale * x) (base -1 means e);
    dx = dy * y * ln(base) * scale."""

    type = "Exp"

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.layer_param.exp_param
        ln = log_base(self, p.base)
        self.inner_scale = ln * p.scale
        self.outer_scale = float(np.exp(ln * p.shift)) if p.shift != 0 else 1.0

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        x = bottom[0].data
        xp = self.xp
        t = x.dtype.type
        top[0].data[...] = t(self.outer_scale) * xp.exp(t(self.inner_scale) * x)

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        if propagate_down[0]:
            t = top[0].data.dtype.type
            bottom[0].diff[...] = top[0].data * top[0].diff * t(self.inner_scale)


@register
class LogLayer(NeuronLayer):
    """Caffe's Log: y = log_base(shift + scale * x) (base -1 means e);
    dx = dy * scale / (ln(base) * (shift + scale * x))."""

    type = "Log"

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.layer_param.log_param
        ln = log_base(self, p.base)
        if ln == 0:
            raise self.config_error("log_param.base must not be 1 (log(base) = 0)")
        self.base_scale = 1.0 / ln
        self.scale, self.shift = p.scale, p.shift
        self.backward_num_scale = p.scale / ln

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        x = bottom[0].data
        xp = self.xp
        t = x.dtype.type
        self.input = t(self.scale) * x + t(self.shift)
        top[0].data[...] = xp.log(self.input) * t(self.base_scale)

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        if propagate_down[0]:
            t = top[0].diff.dtype.type
            slope = t(self.backward_num_scale) / self.input
            bottom[0].diff[...] = top[0].diff * slope


@register
class SwishLayer(NeuronLayer):
    """Caffe's Swish: y = x * sigmoid(beta * x);
    dx = dy * (beta * y + sigmoid(beta * x) * (1 - beta * y))."""

    type = "Swish"

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        x = bottom[0].data
        beta = x.dtype.type(self.layer_param.swish_param.beta)
        self.sigmoid_output = sigmoid(beta * x)
        top[0].data[...] = x * self.sigmoid_output

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        if propagate_down[0]:
            y = top[0].data
            by = y.dtype.type(self.layer_param.swish_param.beta) * y
            s = self.sigmoid_output
            bottom[0].diff[...] = top[0].diff * (by + s * (1 - by))


@register
class ClipLayer(NeuronLayer):
    """Caffe's Clip: y = max(min, min(x, max)); dx = dy where min <= x <= max,
    else 0."""

    type = "Clip"

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.layer_param.clip_param
        if not (p.HasField("min") and p.HasField("max")):
            raise self.config_error("clip_param.min and clip_param.max are required")

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        x = bottom[0].data
        xp = self.xp
        p = self.layer_param.clip_param
        lo, hi = x.dtype.type(p.min), x.dtype.type(p.max)
        self.inside = (x >= lo) & (x <= hi)
        top[0].data[...] = xp.maximum(lo, xp.minimum(x, hi))

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff * self.inside


@register
class ThresholdLayer(NeuronLayer):
    """Caffe's Threshold: y = 1 if x > threshold else 0; no backward."""

    type = "Threshold"

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        x = bottom[0].data
        threshold = x.dtype.type(self.layer_param.threshold_param.threshold)
        top[0].data[...] = x > threshold

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        if propagate_down[0]:
            raise self.config_error(
                "Threshold Layer cannot backpropagate (Caffe: Not Implemented Yet)"
            )


@register
class PReLULayer(NeuronLayer):
    """Caffe's PReLU (prelu_layer.cpp): y = max(x, 0) + a_c * min(x, 0), one
    learned slope a_c per channel (axis 1), or one for all with
    channel_shared (a 0-axis blob); prelu_param.filler, constant 0.25 by
    default. Backward: a_c's diff += sum of dy * x over x <= 0; dx = dy * ((x
    > 0) + a_c * (x <= 0)). In place, forward keeps a copy of x (Caffe's
    bottom_memory_) and the slope diff is taken before the bottom diff
    overwrites the top diff."""

    type = "PReLU"

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        b = bottom[0]
        if b.num_axes < 2:
            raise self.shape_error(
                "Number of axes of bottom blob must be >=2 (bottom "
                f"'{b.name}' is {b.shape_string()})"
            )
        p = self.layer_param.prelu_param
        self.channel_shared = bool(p.channel_shared)
        channels = b.shape[1]
        if not self.blobs:
            shape = () if self.channel_shared else (channels,)
            slope = Blob(shape, dtype=b.data.dtype, xp=self.xp)
            filler = p.filler
            if not p.HasField("filler"):
                filler = caffe_pb2.FillerParameter(type="constant", value=0.25)
            self.fill(slope, filler, "prelu_param.filler")
            self.blobs = [slope]
        expected = 1 if self.channel_shared else channels
        if len(self.blobs) != 1 or self.blobs[0].count != expected:
            raise self.config_error(
                "prelu_param.channel_shared: Negative slope size is inconsistent "
                f"with prototxt config (the layer wants 1 blob of {expected} "
                f"values for {channels} channels)"
            )

    def blob_roles(self) -> list[str]:
        return ["slope"]

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        if bottom[0].num_axes < 2:
            raise self.shape_error(
                "Number of axes of bottom blob must be >=2 (bottom "
                f"'{bottom[0].name}' is {bottom[0].shape_string()})"
            )
        super().reshape(bottom, top)
        b = bottom[0]
        # (N, C, rest): with channel_shared all channels read the one slope.
        self.dims = (b.shape[0], b.shape[1], b.count_range(2))

    def _slope(self) -> Array:
        """The slopes, shaped to broadcast over (N, C, rest)."""
        a = self.blobs[0].data
        return a.reshape(1, 1, 1) if self.channel_shared else a.reshape(1, -1, 1)

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        x = bottom[0].data
        xp = self.xp
        if top[0] is bottom[0]:
            saved = self.buffer("bottom_memory", x.shape, x.dtype)
            xp.copyto(saved, x)
        x3 = x.reshape(self.dims)
        negative = xp.minimum(x3, 0) * self._slope()
        xp.add(xp.maximum(x3, 0), negative, out=top[0].data.reshape(self.dims))

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        x = bottom[0].data
        if top[0] is bottom[0]:
            x = self.buffer("bottom_memory", x.shape, x.dtype)
        x3 = x.reshape(self.dims)
        dy = top[0].diff.reshape(self.dims)
        xp = self.xp
        non_positive = x3 <= 0
        if self.param_propagate_down[0]:
            # Before the bottom diff: in place it is the top diff.
            terms = dy * x3 * non_positive
            slope_diff = self.blobs[0].diff
            if self.channel_shared:
                slope_diff += terms.sum()
            else:
                slope_diff += terms.sum(axis=2).sum(axis=0)
        if propagate_down[0]:
            factor = (x3 > 0) + self._slope() * non_positive
            xp.multiply(dy, factor, out=bottom[0].diff.reshape(self.dims))
