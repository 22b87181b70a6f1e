"""Normalisation layers: LRN, BatchNorm and MVN (Caffe's lrn_layer.cpp,
batch_norm_layer.cpp and mvn_layer.cpp).

Each follows Caffe's CPU arithmetic in the bottom's dtype: the same products,
quotients and float32 constants, in Caffe's order. Sums may be added in
another order than Caffe's BLAS calls add them (the issue allows it), and
products and sums round separately (a BLAS that fuses multiply-adds differs
in the last bit). Powers are NumPy's float32 power, which may differ from
glibc's powf in the last bit, as Caffe built with MKL does.

In-place use (top is bottom) gives the same numbers as out-of-place for all
three: each keeps what its backward needs (Caffe's LRN and MVN would read
overwritten arrays in place).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt

from caffesolve.backend import parallel_parts, run_parallel, split_range
from caffesolve.blob import Blob
from caffesolve.errors import ShapeError
from caffesolve.layers import register
from caffesolve.layers.base import Layer
from caffesolve.layers.loss import legacy_dim
from caffesolve.ops import pooling as pool_ops
from caffesolve.ops.pooling import PoolGeometry
from caffesolve.ops.pooling_kernels import ave_backward, ave_forward
from caffesolve.proto import caffe_pb2

Array = npt.NDArray[np.float32]
NormRegion = caffe_pb2.LRNParameter


def _check_4d(layer: Layer, b: Blob) -> None:
    """Caffe's CHECK_EQ(4, bottom[0]->num_axes()) of LRN."""
    if b.num_axes != 4:
        raise layer.shape_error(
            "Input must have 4 axes, corresponding to (num, channels, height, "
            f"width) (bottom '{b.name}' is {b.shape_string()})"
        )


# -- LRN across channels --------------------------------------------------------------


def window_sum(padded: Array, size: int, start: float, out: Array) -> None:
    """out[:, c] = start + padded[:, c] + padded[:, c + 1] + ... + padded[:, c +
    size - 1], added in that order: Caffe's running sums over a window of
    `size` channels (its scale starts at k, its accumulated ratio at 0),
    window by window, one pass per offset (no loop over channels)."""
    channels = out.shape[1]
    np.add(padded[:, :channels], out.dtype.type(start), out=out)
    for j in range(1, size):
        out += padded[:, j : j + channels]


def lrn_across_forward(
    x: Array,
    size: int,
    alpha_over_size: float,
    k: float,
    neg_beta: float,
    padded: Array,
    scale: Array,
    power: Array,
    top: Array,
) -> None:
    """ACROSS_CHANNELS forward (CrossChannelForward_cpu):
    scale = k + alpha/size * sum of x^2 over the `size` channels centred on c
    (zero past the edges), top = x * scale^-beta. `padded` (N, C + size - 1,
    H, W) has zero borders; `scale` and `power` (scale^-beta) are kept for
    backward. alpha/size is Caffe's float quotient, each square scaled before
    it is added."""
    t = x.dtype.type
    pre_pad = (size - 1) // 2
    channels = x.shape[1]
    squares = padded[:, pre_pad : pre_pad + channels]
    np.multiply(x, x, out=squares)
    squares *= t(alpha_over_size)
    window_sum(padded, size, k, scale)
    np.power(scale, t(neg_beta), out=power)
    np.multiply(power, x, out=top)


def lrn_across_backward(
    x: Array,
    y: Array,
    dy: Array,
    scale: Array,
    power: Array,
    size: int,
    cache_ratio: float,
    padded: Array,
    accum: Array,
    dx: Array,
) -> None:
    """ACROSS_CHANNELS backward (CrossChannelBackward_cpu):
    dx = dy * scale^-beta - cache_ratio * x * sum over the window of
    (dy * y / scale), cache_ratio = 2 * alpha * beta / size. dx may be dy
    (in place): it is written last."""
    t = x.dtype.type
    pre_pad = (size - 1) // 2
    channels = x.shape[1]
    ratio = padded[:, pre_pad : pre_pad + channels]
    np.multiply(dy, y, out=ratio)
    ratio /= scale
    window_sum(padded, size, 0.0, accum)
    accum *= x
    accum *= t(-cache_ratio)
    np.multiply(dy, power, out=dx)
    dx += accum


# -- LRN within a channel -------------------------------------------------------------


def lrn_within_forward(
    x: Array,
    g: PoolGeometry,
    divisor: Array,
    alpha: float,
    neg_beta: float,
    squares: Array,
    canvas: Array,
    base: Array,
    power: Array,
    top: Array,
) -> None:
    """WITHIN_CHANNEL forward, Caffe's chain of layers in one: Power (x^2),
    Pooling (AVE over size x size, pad (size-1)/2, stride 1: the sum over the
    window inside the image / size^2), Power (base = 1 + alpha * average;
    power = base^-beta; k is not used) and Eltwise PROD (top = x * power).
    `base` and `power` are kept for backward."""
    t = x.dtype.type
    np.multiply(x, x, out=squares)
    ave_forward(squares, g, divisor, base, canvas)
    base *= t(alpha)
    base += t(1)
    np.power(base, t(neg_beta), out=power)
    np.multiply(x, power, out=top)


def lrn_within_backward(
    x: Array,
    dy: Array,
    g: PoolGeometry,
    divisor: Array,
    power_diff_scale: float,
    base: Array,
    power: Array,
    work: Array,
    pooled_diff: Array,
    canvas: Array,
    dx: Array,
) -> None:
    """WITHIN_CHANNEL backward through the same chain (Caffe's layers'
    Backward): Eltwise PROD gives dy * power to x and dy * x to power; Power
    gives (-beta * alpha) * (power / base) * that to the average; AVE pooling
    spreads it over each window / size^2; the square gives it times 2x; the
    Split adds the two paths. dx may be dy (in place): it is written last."""
    t = x.dtype.type
    np.divide(power, base, out=pooled_diff)
    pooled_diff *= t(power_diff_scale)
    np.multiply(dy, x, out=work)
    pooled_diff *= work
    ave_backward(pooled_diff, g, divisor, work, canvas)
    work *= t(2) * x
    np.multiply(dy, power, out=dx)
    dx += work


@register
class LRNLayer(Layer):
    """Caffe's LRN (lrn_layer.cpp), local response normalisation.

    ACROSS_CHANNELS: top = x / (k + alpha/size * sum of x^2 over `local_size`
    channels centred on x's)^beta. WITHIN_CHANNEL: top = x / (1 + alpha *
    the average of x^2 over a local_size x local_size square, by Caffe's AVE
    pooling with pad (size-1)/2, always divided by size^2)^beta, so
    alpha/size^2 per square; Caffe ignores `k` there. local_size must be odd;
    bottoms are 4-D. The work arrays are kept across iterations and the
    batch is split between the workers (each image is independent)."""

    type = "LRN"
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.layer_param.lrn_param
        self.size = int(p.local_size)
        if self.size % 2 != 1:
            raise self.config_error(
                "lrn_param.local_size: LRN only supports odd values for "
                f"local_size (got {self.size})"
            )
        self.pre_pad = (self.size - 1) // 2
        self.alpha, self.beta, self.k = float(p.alpha), float(p.beta), float(p.k)
        self.across = p.norm_region == NormRegion.ACROSS_CHANNELS
        self.geometry: PoolGeometry | None = None

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        _check_4d(self, bottom[0])
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)
        n, c, h, w = bottom[0].shape
        if not self.across:
            s, pad = self.size, self.pre_pad
            g = PoolGeometry(n, c, h, w, s, s, 1, 1, pad, pad)
            if g != self.geometry:
                self.geometry = g
                self.divisor = self.xp.asarray(
                    pool_ops.ave_pool_divisor(g, bottom[0].data.dtype)
                )
        nbytes = bottom[0].data.nbytes
        self.parts = split_range(n, parallel_parts(nbytes, n))

    def _constants(self, t: type) -> tuple[float, float, float]:
        """alpha/size (float / int in Caffe: the dtype's quotient), -beta and
        2 * alpha * beta / size (computed in double, stored as the dtype)."""
        alpha_over_size = float(t(self.alpha) / t(self.size))
        cache_ratio = float(t(2.0 * self.alpha * self.beta / self.size))
        return alpha_over_size, -self.beta, cache_ratio

    def _bottom_data(self, bottom: Blob, top: Blob) -> Array:
        """x for backward: the bottom, or in place the copy forward kept."""
        if top is bottom:
            return self.buffer("bottom_copy", bottom.shape, bottom.data.dtype)
        return bottom.data

    def _run_parts(self, fn: Callable[..., None], *args: Any) -> None:
        """fn on each part of the batch (self.parts), the parts on the
        workers: the 4-D arrays among args are cut to the part, a
        PoolGeometry gets the part's num, the rest go as they are."""

        def cut(arg: Any, lo: int, hi: int) -> Any:
            if isinstance(arg, PoolGeometry):
                return replace(arg, num=hi - lo)
            if getattr(arg, "ndim", 0) == 4:
                return arg[lo:hi]
            return arg

        run_parallel(
            [partial(fn, *(cut(a, lo, hi) for a in args)) for lo, hi in self.parts]
        )

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        x = bottom[0].data
        shape, dtype = x.shape, x.dtype
        n, c, h, w = shape
        if top[0] is bottom[0]:  # backward needs x: keep a copy
            saved = self._bottom_data(bottom[0], top[0])
            self.xp.copyto(saved, x)
            x = saved
        power = self.buffer("power", shape, dtype)
        if self.across:
            alpha_over_size, neg_beta, _ = self._constants(dtype.type)
            padded = self.buffer("padded", (n, c + self.size - 1, h, w), dtype)
            scale = self.buffer("scale", shape, dtype)
            self._run_parts(
                lrn_across_forward,
                x,
                self.size,
                alpha_over_size,
                self.k,
                neg_beta,
                padded,
                scale,
                power,
                top[0].data,
            )
            return
        g = self.geometry
        assert g is not None
        self._run_parts(
            lrn_within_forward,
            x,
            g,
            self.divisor.astype(dtype, copy=False),
            self.alpha,
            -self.beta,
            self.buffer("squares", shape, dtype),
            self.buffer("canvas", (n, c, g.canvas_h, g.canvas_w), dtype),
            self.buffer("base", shape, dtype),
            power,
            top[0].data,
        )

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        if not propagate_down[0]:
            return
        x = self._bottom_data(bottom[0], top[0])
        y, dy, dx = top[0].data, top[0].diff, bottom[0].diff
        shape, dtype = x.shape, x.dtype
        n, c, h, w = shape
        power = self.buffer("power", shape, dtype)
        if self.across:
            _, _, cache_ratio = self._constants(dtype.type)
            self._run_parts(
                lrn_across_backward,
                x,
                y,
                dy,
                self.buffer("scale", shape, dtype),
                power,
                self.size,
                cache_ratio,
                self.buffer("padded", (n, c + self.size - 1, h, w), dtype),
                self.buffer("accum", shape, dtype),
                dx,
            )
            return
        g = self.geometry
        assert g is not None
        t = dtype.type
        diff_scale = float(t(-self.beta) * t(self.alpha))  # the PowerLayer's
        self._run_parts(
            lrn_within_backward,
            x,
            dy,
            g,
            self.divisor.astype(dtype, copy=False),
            diff_scale,
            self.buffer("base", shape, dtype),
            power,
            self.buffer("squares", shape, dtype),  # free after forward: work
            self.buffer("pooled_diff", shape, dtype),
            self.buffer("canvas_diff", (n, c, g.canvas_h, g.canvas_w), dtype),
            dx,
        )


# -- BatchNorm ------------------------------------------------------------------------


def channel_sums(a: Array) -> Array:
    """(N, C, S) -> (C,): each image's sum over S, then the sum over N
    (Caffe's two gemv calls with a ones vector)."""
    return a.sum(axis=2).sum(axis=0)


@register
class BatchNormLayer(Layer):
    """Caffe's BatchNorm (batch_norm_layer.cpp): y = (x - mean) / sqrt(var +
    eps) per channel (axis 1), over the batch and spatial axes.

    Three blobs: the mean sum, the variance sum and the moving-average factor
    s (shape (C,), (C,), (1,)). TRAIN (use_global_stats false, the default
    outside TEST) uses the batch's mean and variance and updates the blobs:
    s = s * maf + 1, mean = maf * mean + batch mean, var = maf * var +
    m/(m-1) * batch variance (m = count / C). With use_global_stats (default
    in TEST) the mean and variance are the blobs divided by s (0 if s is 0).
    The blobs are never learned: as Caffe's LayerSetUp, each gets a ParamSpec
    with lr_mult 0 in the layer's own copy of its LayerParameter (the Net
    reads those, as Caffe's AppendParam does), and a ParamSpec with another
    lr_mult is an error.

    Backward, batch statistics: dx = (dy - mean(dy) - mean(dy * y) * y) /
    sqrt(var + eps) (means over N and S); global: dx = dy / sqrt(var + eps).
    """

    type = "BatchNorm"
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def blob_roles(self) -> list[str]:
        return ["mean", "variance", "moving-average factor"]

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.layer_param.batch_norm_param
        self.moving_average_fraction = float(p.moving_average_fraction)
        self.use_global_stats = self.phase == caffe_pb2.TEST
        if p.HasField("use_global_stats"):
            self.use_global_stats = bool(p.use_global_stats)
        b = bottom[0]
        if b.num_axes == 0:
            raise self.shape_error(
                f"bottom '{b.name}' has no axes; BatchNorm needs (N, C, ...)"
            )
        self.channels = 1 if b.num_axes == 1 else b.shape[1]
        self.eps = float(p.eps)
        if self.blobs:
            if len(self.blobs) != 3:
                raise self.config_error(
                    f"blobs: BatchNorm keeps 3 blobs (mean, variance, "
                    f"moving-average factor), the definition has {len(self.blobs)}"
                )
        else:
            dtype = b.data.dtype
            c = self.channels
            shapes = [(c,), (c,), (1,)]
            self.blobs = [Blob(shape, dtype=dtype, xp=self.xp) for shape in shapes]
        # Mask the statistics from the solver: lr_mult 0 for each blob, in
        # the layer's own LayerParameter (Caffe's Layer holds a copy).
        param = caffe_pb2.LayerParameter()
        param.CopyFrom(self.layer_param)
        for i in range(len(self.blobs)):
            if len(param.param) == i:
                param.param.add().lr_mult = 0.0
            elif param.param[i].lr_mult != 0:
                raise self.config_error(
                    f"param[{i}].lr_mult is {param.param[i].lr_mult:.6g}: Cannot "
                    "configure batch normalization statistics as layer "
                    "parameters (set lr_mult: 0, or leave the param out)"
                )
        self.layer_param = param

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        b = bottom[0]
        if b.num_axes >= 2 and b.shape[1] != self.channels:
            raise self.shape_error(
                f"bottom '{b.name}' has {b.shape[1]} channels "
                f"({b.shape_string()}), the layer was set up for {self.channels}"
            )
        if top[0] is not b:
            top[0].reshape(b.shape)
        self.num = b.shape[0]
        self.spatial = b.count // max(self.num * self.channels, 1)

    def _view(self, a: Array) -> Array:
        return a.reshape(self.num, self.channels, self.spatial)

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        x = self._view(bottom[0].data)
        out = self._view(top[0].data)
        xp = self.xp
        t = x.dtype.type
        if self.use_global_stats:
            s = self.blobs[2].data[0]
            factor = t(0) if s == 0 else t(1) / t(s)
            mean = factor * self.blobs[0].data
            variance = factor * self.blobs[1].data
            xp.subtract(x, mean[:, None], out=out)
        else:
            inv_count = t(1.0 / (self.num * self.spatial))
            mean = (x.sum(axis=2) * inv_count).sum(axis=0)
            xp.subtract(x, mean[:, None], out=out)
            work = self.buffer("work", out.shape, out.dtype)
            xp.multiply(out, out, out=work)
            variance = (work.sum(axis=2) * inv_count).sum(axis=0)
            self._update_moving_averages(mean, variance, t)
        self.std = xp.sqrt(variance + t(self.eps))
        out /= self.std[:, None]
        if not self.use_global_stats:
            # Kept for backward: a later in-place layer may change the top.
            x_norm = self.buffer("x_norm", out.shape, out.dtype)
            xp.copyto(x_norm, out)

    def _update_moving_averages(self, mean: Array, variance: Array, t: type) -> None:
        """s = s * maf + 1; mean blob = maf * blob + mean; variance blob =
        maf * blob + m/(m-1) * variance (caffe_cpu_axpby)."""
        maf = t(self.moving_average_fraction)
        s = self.blobs[2].data
        s *= maf
        s += t(1)
        m = self.num * self.spatial
        correction = t(m) / t(m - 1) if m > 1 else t(1)
        self.blobs[0].data[...] = maf * self.blobs[0].data + mean
        self.blobs[1].data[...] = maf * self.blobs[1].data + correction * variance

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        if not propagate_down[0]:
            return
        dy = self._view(top[0].diff)
        dx = self._view(bottom[0].diff)
        xp = self.xp
        std = self.std[:, None]
        if self.use_global_stats:
            xp.divide(dy, std, out=dx)
            return
        t = dy.dtype.type
        y = self.buffer("x_norm", dy.shape, dy.dtype)
        work = self.buffer("work", dy.shape, dy.dtype)
        xp.multiply(y, dy, out=work)
        sum_dy_y = channel_sums(work)
        sum_dy = channel_sums(dy)
        xp.multiply(y, sum_dy_y[:, None], out=work)
        work += sum_dy[:, None]
        work *= t(-1.0 / (self.num * self.spatial))
        xp.add(work, dy, out=dx)
        dx /= std


# -- MVN ------------------------------------------------------------------------------


@register
class MVNLayer(Layer):
    """Caffe's MVN (mvn_layer.cpp): subtract the mean of each image's channel
    (of each image with across_channels), then, with normalize_variance,
    divide by its standard deviation plus eps: y = (x - mean) / (sqrt(var) +
    eps), eps added to the std, not the variance. The top is 4-D (num,
    channels, height, width), as Caffe reshapes it.

    Backward: dx = dy - mean(dy) (mean only), or dx = (dy - mean(dy) -
    mean(dy * y) * y) / (sqrt(var) + eps)."""

    type = "MVN"
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.layer_param.mvn_param
        self.normalize_variance = bool(p.normalize_variance)
        self.across_channels = bool(p.across_channels)
        self.eps = float(p.eps)

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        try:  # Caffe's num(), channels(), height(), width()
            n, c, h, w = (legacy_dim(bottom[0], i) for i in range(4))
        except ShapeError as e:
            raise self.shape_error(str(e)) from None
        if top[0] is not bottom[0]:
            top[0].reshape((n, c, h, w))
        self.rows = n if self.across_channels else n * c
        self.dim = bottom[0].count // max(self.rows, 1)

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        x = bottom[0].data.reshape(self.rows, self.dim)
        out = top[0].data.reshape(self.rows, self.dim)
        xp = self.xp
        t = x.dtype.type
        inv_dim = t(1.0 / self.dim)
        mean = x.sum(axis=1) * inv_dim
        xp.subtract(x, mean[:, None], out=out)
        if not self.normalize_variance:
            return
        work = self.buffer("work", out.shape, out.dtype)
        xp.multiply(out, out, out=work)
        variance = work.sum(axis=1) * inv_dim
        self.std_eps = xp.sqrt(variance) + t(self.eps)
        out /= self.std_eps[:, None]

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        if not propagate_down[0]:
            return
        dy = top[0].diff.reshape(self.rows, self.dim)
        dx = bottom[0].diff.reshape(self.rows, self.dim)
        xp = self.xp
        t = dy.dtype.type
        if not self.normalize_variance:
            mean_dy = dy.sum(axis=1) * t(1.0 / self.dim)
            xp.subtract(dy, mean_dy[:, None], out=dx)
            return
        y = top[0].data.reshape(self.rows, self.dim)
        work = self.buffer("work", dy.shape, dy.dtype)
        xp.multiply(y, dy, out=work)
        sum_dy_y = work.sum(axis=1)
        sum_dy = dy.sum(axis=1)
        xp.multiply(y, sum_dy_y[:, None], out=work)
        work += sum_dy[:, None]
        work *= t(-1.0 / self.dim)
        xp.add(work, dy, out=dx)
        dx /= self.std_eps[:, None]
