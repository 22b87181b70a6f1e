"""Caffe layers as ONNX nodes: one small function per Caffe type.

ONNX_OPS maps a Caffe type string (the key of the LAYERS registry) to a
function `(graph, io) -> None` that adds the nodes computing the layer's tops
from its bottoms, exactly: every entry below is Caffe's forward at TEST time
written in ONNX operators (opset 22 or later), with Caffe's parameters and
param blobs, and is checked against onnxruntime by the tests. An entry may
instead return the names its tops alias (Split). A type with no entry, or an
entry that raises `io.error(...)`, has no exact ONNX form.

Axes are Caffe's canonical axes; shapes come from the built Net.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from caffesolve.export.graph import LayerIO, OnnxGraph
from caffesolve.proto import caffe_pb2

Entry = Callable[[OnnxGraph, LayerIO], "list[str] | None"]
ONNX_OPS: dict[str, Entry] = {}

# Types whose absence from a deploy net is the fix: (type, reason).
NOT_EXPORTABLE: dict[str, str] = {
    **dict.fromkeys(
        ("Data", "HDF5Data", "ImageData", "WindowData", "MemoryData", "DummyData"),
        "reads its input itself; export a deploy net whose inputs are Input "
        "layers (or net-level input fields)",
    ),
    **dict.fromkeys(
        (
            "SoftmaxWithLoss",
            "EuclideanLoss",
            "SigmoidCrossEntropyLoss",
            "HingeLoss",
            "InfogainLoss",
            "ContrastiveLoss",
            "MultinomialLogisticLoss",
        ),
        "is a training loss; export the deploy net (Softmax in place of "
        "SoftmaxWithLoss, no label input)",
    ),
    "Accuracy": "scores against labels; export the deploy net without it",
    "HDF5Output": "writes files; it has no ONNX form",
    "Python": "runs Python code; it has no ONNX form",
}

F32 = np.float32
Pool = caffe_pb2.PoolingParameter


def onnx_op(*types: str) -> Callable[[Entry], Entry]:
    """Register an entry for one or more Caffe types."""

    def add(fn: Entry) -> Entry:
        for t in types:
            if t in ONNX_OPS:
                raise RuntimeError(f"duplicate ONNX entry for {t}")
            ONNX_OPS[t] = fn
        return fn

    return add


def _scalar(g: OnnxGraph, hint: str, value: float) -> str:
    return g.const(hint, F32(value))


# -- inputs and plumbing -------------------------------------------------------


@onnx_op("Input")
def input_(g: OnnxGraph, io: LayerIO) -> None:
    """Each top is a graph input of the top's shape."""
    for name, blob in zip(io.top, io.top_blobs):
        g.add_input(name, blob.shape)


@onnx_op("Split")
def split(g: OnnxGraph, io: LayerIO) -> list[str]:
    """Every top is the bottom (Caffe shares the data)."""
    return [io.bottom[0]] * len(io.top)


@onnx_op("Silence")
def silence(g: OnnxGraph, io: LayerIO) -> None:
    """No tops: nothing to compute."""


@onnx_op("Dropout")
def dropout(g: OnnxGraph, io: LayerIO) -> None:
    """At TEST Caffe's Dropout copies its bottom (it scaled at TRAIN)."""
    g.node("Identity", io.bottom, io.top[0])


@onnx_op("Parameter")
def parameter(g: OnnxGraph, io: LayerIO) -> None:
    """The top is the layer's one blob."""
    g.node("Identity", [g.const("blob", io.blob(0))], io.top[0])


# -- vision --------------------------------------------------------------------


def _conv_attrs(io: LayerIO) -> dict[str, object]:
    """kernel_shape, strides, pads, dilations, group of a (de)convolution."""
    layer = io.layer
    pad = [int(p) for p in layer.pad]
    return {
        "kernel_shape": [int(k) for k in layer.kernel],
        "strides": [int(s) for s in layer.stride],
        "pads": pad + pad,
        "dilations": [int(d) for d in layer.dilation],
        "group": int(layer.group),
    }


def _weights(g: OnnxGraph, io: LayerIO) -> list[str]:
    """The weight blob, then the bias blob if bias_term."""
    names = [g.const("weight", io.blob(0))]
    if io.layer.bias_term:
        names.append(g.const("bias", io.blob(1)))
    return names


@onnx_op("Convolution")
def convolution(g: OnnxGraph, io: LayerIO) -> None:
    """Conv with Caffe's weights (num_output, channels/group, kh, kw); each
    bottom has its own top, all with the same weights."""
    weights = _weights(g, io)
    for x, y in zip(io.bottom, io.top):
        g.node("Conv", [x, *weights], y, **_conv_attrs(io))


@onnx_op("Deconvolution")
def deconvolution(g: OnnxGraph, io: LayerIO) -> None:
    """ConvTranspose with Caffe's weights (channels, num_output/group, kh,
    kw). Output size stride*(in-1) + dilation*(k-1) + 1 - 2*pad is ONNX's
    with output_padding 0 (deconv_layer.cpp compute_output_shape)."""
    weights = _weights(g, io)
    for x, y in zip(io.bottom, io.top):
        g.node("ConvTranspose", [x, *weights], y, **_conv_attrs(io))


@onnx_op("Pooling")
def pooling(g: OnnxGraph, io: LayerIO) -> None:
    """MaxPool / AveragePool with Caffe's pad on the pool itself, ceil_mode
    for Caffe's ceil rounding (ONNX since opset 22 also drops a last window
    that would start in the padding, as Caffe does), and count_include_pad:
    Caffe's AVE divides by the window clipped to the padded extent. Global
    pooling is GlobalMaxPool / GlobalAveragePool. STOCHASTIC at TEST is
    Caffe's value-weighted average sum(x^2) / sum(x) (pad 0)."""
    p = io.param.pooling_param
    layer = io.layer
    if len(io.top) > 1:
        raise io.error("the MAX pooling mask top has no exact ONNX form")
    x, y = io.bottom[0], io.top[0]
    if p.global_pooling and p.pool in (Pool.MAX, Pool.AVE):
        op = "GlobalMaxPool" if p.pool == Pool.MAX else "GlobalAveragePool"
        g.node(op, [x], y)
        return
    pad = [int(v) for v in layer.pad]
    attrs = {
        "kernel_shape": [int(k) for k in layer.kernel],
        "strides": [int(s) for s in layer.stride],
        "pads": pad + pad,
        "ceil_mode": int(p.round_mode == Pool.CEIL),
    }
    if p.pool == Pool.MAX:
        g.node("MaxPool", [x], y, **attrs)
    elif p.pool == Pool.AVE:
        g.node("AveragePool", [x], y, count_include_pad=1, **attrs)
    else:
        if any(pad):
            raise io.error("STOCHASTIC pooling with pad has no exact ONNX form")
        squares = g.node("AveragePool", [g.node("Mul", [x, x])], **attrs)
        g.node("Div", [squares, g.node("AveragePool", [x], **attrs)], y)


@onnx_op("LRN")
def lrn(g: OnnxGraph, io: LayerIO) -> None:
    """ACROSS_CHANNELS: ONNX LRN, Caffe's k as `bias`: y = x / (k + alpha/n *
    sum over n channels of x^2)^beta. WITHIN_CHANNEL (no ONNX op): Caffe's
    own decomposition (lrn_layer.cpp): y = x * (1 + alpha * avgpool(x^2))^-beta,
    the AVE pool n x n, pad (n-1)/2, stride 1 (so k is unused, as in Caffe)."""
    p = io.param.lrn_param
    x, y = io.bottom[0], io.top[0]
    size = int(p.local_size)
    if p.norm_region == caffe_pb2.LRNParameter.ACROSS_CHANNELS:
        g.node("LRN", [x], y, size=size, alpha=p.alpha, beta=p.beta, bias=p.k)
        return
    pre = (size - 1) // 2
    pooled = g.node(
        "AveragePool",
        [g.node("Mul", [x, x])],
        kernel_shape=[size, size],
        strides=[1, 1],
        pads=[pre] * 4,
        count_include_pad=1,
    )
    scaled = g.node("Mul", [pooled, _scalar(g, "alpha", p.alpha)])
    base = g.node("Add", [scaled, _scalar(g, "one", 1.0)])
    scale = g.node("Pow", [base, _scalar(g, "minus_beta", -F32(p.beta))])
    g.node("Mul", [x, scale], y)


# -- inner product, normalization, affine --------------------------------------


@onnx_op("InnerProduct")
def inner_product(g: OnnxGraph, io: LayerIO) -> None:
    """top = x W^T + b over x viewed as (count(0, axis), count(axis)):
    Flatten + Gemm for axis 1; else Reshape to shape[:axis] + (K,), MatMul
    and Add, which keeps top's shape shape[:axis] + (num_output,)."""
    layer = io.layer
    p = io.param.inner_product_param
    axis = io.axis(p.axis)
    x, y = io.bottom[0], io.top[0]
    w = io.blob(0)
    bias = io.blob(1) if layer.bias_term else None
    if axis == 1:
        if len(io.shape()) != 2:
            x = g.node("Flatten", [x], axis=1)
        inputs = [x, g.const("weight", w)]
        if bias is not None:
            inputs.append(g.const("bias", bias))
        g.node("Gemm", inputs, y, transB=0 if layer.transpose else 1)
        return
    shape = io.shape()
    x = g.reshape(x, shape, (*shape[:axis], int(np.prod(shape[axis:]))))
    wt = w if layer.transpose else w.T
    if bias is None:
        g.node("MatMul", [x, g.const("weight", wt)], y)
        return
    product = g.node("MatMul", [x, g.const("weight", wt)])
    g.node("Add", [product, g.const("bias", bias)], y)


def _normalize(
    g: OnnxGraph, x: str, axes: list[int], eps: float, eps_in_sqrt: bool, y: str
) -> None:
    """(x - mean) / sqrt(var + eps) (BatchNorm) or / (sqrt(var) + eps) (MVN),
    mean and biased variance over `axes`, as Caffe computes them."""
    reduce = {"keepdims": 1, "noop_with_empty_axes": 1}
    axes_name = g.ints("axes", axes)
    centred = g.node("Sub", [x, g.node("ReduceMean", [x, axes_name], **reduce)])
    var = g.node("ReduceMean", [g.node("Mul", [centred, centred]), axes_name], **reduce)
    e = _scalar(g, "eps", eps)
    if eps_in_sqrt:
        std = g.node("Sqrt", [g.node("Add", [var, e])])
    else:
        std = g.node("Add", [g.node("Sqrt", [var]), e])
    g.node("Div", [centred, std], y)


@onnx_op("BatchNorm")
def batch_norm(g: OnnxGraph, io: LayerIO) -> None:
    """Caffe's BatchNorm (batch_norm_layer.cpp): the stored mean and variance
    are divided by the scale-factor blob (0 stays 0), then y = (x - mean) /
    sqrt(var + eps): BatchNormalization with scale 1 and bias 0. With
    use_global_stats false, the batch's own mean and variance over (N, H, W)."""
    p = io.param.batch_norm_param
    x, y = io.bottom[0], io.top[0]
    shape = io.shape()
    if len(shape) < 2:
        raise io.error("a BatchNorm over a 1-D bottom has no ONNX form")
    use_global = (
        p.use_global_stats
        if p.HasField("use_global_stats")
        else io.layer.phase == caffe_pb2.TEST
    )
    if not use_global:
        axes = [0, *range(2, len(shape))]
        _normalize(g, x, axes, p.eps, True, y)
        return
    factor = io.blob(2).reshape(-1)[0]
    scale = F32(0) if factor == 0 else F32(1) / factor
    c = shape[1]
    g.node(
        "BatchNormalization",
        [
            x,
            g.const("scale", np.ones(c, F32)),
            g.const("bias", np.zeros(c, F32)),
            g.const("mean", io.blob(0).reshape(c) * scale),
            g.const("var", io.blob(1).reshape(c) * scale),
        ],
        y,
        epsilon=p.eps,
    )


@onnx_op("MVN")
def mvn(g: OnnxGraph, io: LayerIO) -> None:
    """Caffe's MVN (mvn_layer.cpp): subtract the mean over (C, H, W) with
    across_channels, else over (H, W); with normalize_variance divide by
    sqrt(var) + eps."""
    p = io.param.mvn_param
    x, y = io.bottom[0], io.top[0]
    first = 1 if p.across_channels else 2
    axes = list(range(first, len(io.shape())))
    if p.normalize_variance:
        _normalize(g, x, axes, p.eps, False, y)
        return
    mean = g.node(
        "ReduceMean", [x, g.ints("axes", axes)], keepdims=1, noop_with_empty_axes=1
    )
    g.node("Sub", [x, mean], y)


def _broadcast_operand(g: OnnxGraph, io: LayerIO, axis: int, blob_index: int) -> str:
    """Scale's / Bias's second operand (bottom[1], or param blob
    `blob_index`), with trailing axes of 1 so it lines up with bottom[0]
    from `axis` on."""
    rank = len(io.shape())
    if len(io.bottom) > 1:
        operand_rank = len(io.shape(1))
        trailing = rank - axis - operand_rank
        return g.unsqueeze_trailing(io.bottom[1], operand_rank, trailing)
    value = io.blob(blob_index)
    trailing = rank - axis - value.ndim
    return g.const("blob", value.reshape(value.shape + (1,) * trailing))


@onnx_op("Scale")
def scale(g: OnnxGraph, io: LayerIO) -> None:
    """Caffe's Scale (scale_layer.cpp): y = x * s (+ b), s from bottom[1] or
    blob 0, shaped like x's axes [axis, axis + num_axes) and broadcast over
    the rest; the bias (bias_term) is the blob after s."""
    p = io.param.scale_param
    axis = io.axis(p.axis)
    x, y = io.bottom[0], io.top[0]
    s = _broadcast_operand(g, io, axis, 0)
    if not p.bias_term:
        g.node("Mul", [x, s], y)
        return
    bias_index = 0 if len(io.bottom) > 1 else 1
    scaled = g.node("Mul", [x, s])
    value = io.blob(bias_index)
    trailing = len(io.shape()) - axis - value.ndim
    bias = g.const("bias", value.reshape(value.shape + (1,) * trailing))
    g.node("Add", [scaled, bias], y)


@onnx_op("Bias")
def bias(g: OnnxGraph, io: LayerIO) -> None:
    """Caffe's Bias (bias_layer.cpp): y = x + b, b from bottom[1] or blob 0,
    broadcast from `axis` on like Scale."""
    axis = io.axis(io.param.bias_param.axis)
    g.node("Add", [io.bottom[0], _broadcast_operand(g, io, axis, 0)], io.top[0])


# -- neurons -------------------------------------------------------------------


@onnx_op("ReLU")
def relu(g: OnnxGraph, io: LayerIO) -> None:
    """max(0, x) + negative_slope * min(0, x): Relu, or LeakyRelu."""
    slope = io.param.relu_param.negative_slope
    if slope:
        g.node("LeakyRelu", io.bottom, io.top[0], alpha=slope)
    else:
        g.node("Relu", io.bottom, io.top[0])


@onnx_op("PReLU")
def prelu(g: OnnxGraph, io: LayerIO) -> None:
    """max(0, x) + a_c * min(0, x) with one slope per channel (axis 1), or
    one for all (channel_shared): PRelu with the slope shaped (C, 1, ...)."""
    slope = io.blob(0).reshape(-1)
    rank = len(io.shape())
    shaped = slope.reshape(slope.shape + (1,) * max(rank - 2, 0))
    g.node("PRelu", [io.bottom[0], g.const("slope", shaped)], io.top[0])


def _unary(op: str) -> Entry:
    def entry(g: OnnxGraph, io: LayerIO) -> None:
        g.node(op, io.bottom, io.top[0])

    entry.__doc__ = f"One {op} node."
    return entry


for _type, _op in (("Sigmoid", "Sigmoid"), ("TanH", "Tanh"), ("AbsVal", "Abs")):
    onnx_op(_type)(_unary(_op))


@onnx_op("BNLL")
def bnll(g: OnnxGraph, io: LayerIO) -> None:
    """log(1 + exp(x)): Softplus."""
    g.node("Softplus", io.bottom, io.top[0])


@onnx_op("ELU")
def elu(g: OnnxGraph, io: LayerIO) -> None:
    """x > 0 ? x : alpha * (exp(x) - 1): Elu."""
    g.node("Elu", io.bottom, io.top[0], alpha=io.param.elu_param.alpha)


@onnx_op("Power")
def power(g: OnnxGraph, io: LayerIO) -> None:
    """(shift + scale * x) ^ power, each step left out when it is the
    identity (power_layer.cpp)."""
    p = io.param.power_param
    x = io.bottom[0]
    steps: list[tuple[str, str]] = []
    if p.scale != 1:
        steps.append(("Mul", _scalar(g, "scale", p.scale)))
    if p.shift != 0:
        steps.append(("Add", _scalar(g, "shift", p.shift)))
    if p.power != 1:
        steps.append(("Pow", _scalar(g, "power", p.power)))
    if not steps:
        g.node("Identity", [x], io.top[0])
    for k, (op, operand) in enumerate(steps):
        x = g.node(op, [x, operand], io.top[0] if k == len(steps) - 1 else None)


@onnx_op("Exp")
def exp(g: OnnxGraph, io: LayerIO) -> None:
    """base^(shift + scale * x) = outer * exp(inner * x), inner =
    ln(base) * scale, outer = base^shift, as exp_layer.cpp computes it."""
    layer = io.layer
    x = g.node("Mul", [io.bottom[0], _scalar(g, "inner_scale", layer.inner_scale)])
    if layer.outer_scale == 1:
        g.node("Exp", [x], io.top[0])
        return
    e = g.node("Exp", [x])
    g.node("Mul", [e, _scalar(g, "outer_scale", layer.outer_scale)], io.top[0])


@onnx_op("Log")
def log(g: OnnxGraph, io: LayerIO) -> None:
    """log(shift + scale * x) / ln(base) (log_layer.cpp)."""
    p = io.param.log_param
    x = io.bottom[0]
    if p.scale != 1:
        x = g.node("Mul", [x, _scalar(g, "scale", p.scale)])
    if p.shift != 0:
        x = g.node("Add", [x, _scalar(g, "shift", p.shift)])
    if io.layer.base_scale == 1:
        g.node("Log", [x], io.top[0])
        return
    logged = g.node("Log", [x])
    g.node("Mul", [logged, _scalar(g, "base_scale", io.layer.base_scale)], io.top[0])


@onnx_op("Swish")
def swish(g: OnnxGraph, io: LayerIO) -> None:
    """x * sigmoid(beta * x)."""
    x = io.bottom[0]
    beta = io.param.swish_param.beta
    inner = x if beta == 1 else g.node("Mul", [x, _scalar(g, "beta", beta)])
    g.node("Mul", [x, g.node("Sigmoid", [inner])], io.top[0])


@onnx_op("Clip")
def clip(g: OnnxGraph, io: LayerIO) -> None:
    """max(min, min(x, max)): Clip."""
    p = io.param.clip_param
    lo, hi = _scalar(g, "min", p.min), _scalar(g, "max", p.max)
    g.node("Clip", [io.bottom[0], lo, hi], io.top[0])


@onnx_op("Threshold")
def threshold(g: OnnxGraph, io: LayerIO) -> None:
    """1 where x > threshold, else 0 (as float)."""
    t = _scalar(g, "threshold", io.param.threshold_param.threshold)
    above = g.node("Greater", [io.bottom[0], t])
    g.node("Cast", [above], io.top[0], to=1)


# -- common: Softmax, Eltwise, ArgMax, Reduction, Embed ------------------------


@onnx_op("Softmax")
def softmax(g: OnnxGraph, io: LayerIO) -> None:
    """Softmax over softmax_param.axis alone (ONNX's opset-13 semantics)."""
    axis = io.axis(io.param.softmax_param.axis)
    g.node("Softmax", io.bottom, io.top[0], axis=axis)


@onnx_op("Eltwise")
def eltwise(g: OnnxGraph, io: LayerIO) -> None:
    """PROD: Mul; SUM: sum of coeff_i * x_i (Mul left out for coeff 1); MAX:
    Max (eltwise_layer.cpp)."""
    p = io.param.eltwise_param
    E = caffe_pb2.EltwiseParameter
    if p.operation == E.PROD:
        x = io.bottom[0]
        for k, b in enumerate(io.bottom[1:], 2):
            x = g.node("Mul", [x, b], io.top[0] if k == len(io.bottom) else None)
    elif p.operation == E.MAX:
        g.node("Max", io.bottom, io.top[0])
    else:
        coeffs = list(p.coeff) or [1.0] * len(io.bottom)
        terms = [
            b if c == 1 else g.node("Mul", [b, _scalar(g, f"coeff{i}", c)])
            for i, (b, c) in enumerate(zip(io.bottom, coeffs))
        ]
        g.node("Sum", terms, io.top[0])


@onnx_op("ArgMax")
def argmax(g: OnnxGraph, io: LayerIO) -> None:
    """Caffe's ArgMax (argmax_layer.cpp): the top_k indices (as floats) of
    each item, or over `axis`, in descending value order, ties to the larger
    index (Caffe sorts (value, index) pairs). TopK breaks ties to the smaller
    index, so it runs on the axis reversed and the indices are mapped back.
    Without axis the top is (N, 1, k), or (N, 2, k) with the values after the
    indices (out_max_val); with axis, out_max_val gives the values alone."""
    p = io.param.argmax_param
    shape = io.shape()
    k = int(p.top_k)
    x = io.bottom[0]
    if p.HasField("axis"):
        axis = io.axis(p.axis)
    else:
        axis = 1
        x = g.node("Flatten", [x], axis=1)
    size = shape[axis] if p.HasField("axis") else int(np.prod(shape[1:]))
    flipped = g.node(
        "Slice",
        [
            x,
            g.ints("starts", [-1]),
            g.ints("ends", [-(2**63)]),
            g.ints("axes", [axis]),
            g.ints("steps", [-1]),
        ],
    )
    values, flipped_index = g.node_n(
        "TopK",
        [flipped, g.ints("k", [k])],
        [g.fresh("values"), g.fresh("indices")],
        axis=axis,
        largest=1,
        sorted=1,
    )
    index = g.node("Sub", [g.ints("last", [size - 1]), flipped_index])
    index = g.node("Cast", [index], to=1)
    if p.HasField("axis"):
        g.node("Identity", [values if p.out_max_val else index], io.top[0])
        return
    one = g.ints("axis1", [1])
    parts = [g.node("Unsqueeze", [index, one])]
    if p.out_max_val:
        parts.append(g.node("Unsqueeze", [values, one]))
    joined = g.node("Concat", parts, axis=1)
    g.reshape(joined, (shape[0], len(parts), k), io.top_blobs[0].shape, io.top[0])


@onnx_op("Reduction")
def reduction(g: OnnxGraph, io: LayerIO) -> None:
    """coeff * SUM / ASUM / SUMSQ / MEAN over the axes from `axis` to the end
    (reduction_layer.cpp); the top keeps the axes before `axis`."""
    p = io.param.reduction_param
    R = caffe_pb2.ReductionParameter
    ops = {
        R.SUM: "ReduceSum",
        R.ASUM: "ReduceL1",
        R.SUMSQ: "ReduceSumSquare",
        R.MEAN: "ReduceMean",
    }
    axis = io.axis(p.axis)
    axes = g.ints("axes", range(axis, len(io.shape())))
    if p.coeff == 1:
        g.node(ops[p.operation], [io.bottom[0], axes], io.top[0], keepdims=0)
        return
    reduced = g.node(ops[p.operation], [io.bottom[0], axes], keepdims=0)
    g.node("Mul", [reduced, _scalar(g, "coeff", p.coeff)], io.top[0])


@onnx_op("Embed")
def embed(g: OnnxGraph, io: LayerIO) -> None:
    """Row x of the (input_dim, num_output) weights for each index x
    (truncated to an integer, as Caffe's cast), plus the bias."""
    index = g.node("Cast", [io.bottom[0]], to=7)
    weights = g.const("weight", io.blob(0))
    if not io.param.embed_param.bias_term:
        g.node("Gather", [weights, index], io.top[0], axis=0)
        return
    rows = g.node("Gather", [weights, index], axis=0)
    g.node("Add", [rows, g.const("bias", io.blob(1))], io.top[0])


# -- shape: Flatten, Reshape, Concat, Slice, Crop, Tile ------------------------


@onnx_op("Flatten")
def flatten(g: OnnxGraph, io: LayerIO) -> None:
    """Axes [axis, end_axis] merged: ONNX Flatten for axis 1 to the end,
    else a Reshape to the top's shape."""
    p = io.param.flatten_param
    shape = io.shape()
    if io.axis(p.axis) == 1 and io.axis(p.end_axis) == len(shape) - 1:
        g.node("Flatten", io.bottom, io.top[0], axis=1)
        return
    g.reshape(io.bottom[0], shape, io.top_blobs[0].shape, io.top[0])


@onnx_op("Reshape")
def reshape(g: OnnxGraph, io: LayerIO) -> None:
    """A Reshape to the top's shape (Caffe's 0 / -1 rules already applied)."""
    g.reshape(io.bottom[0], io.shape(), io.top_blobs[0].shape, io.top[0])


@onnx_op("Concat")
def concat(g: OnnxGraph, io: LayerIO) -> None:
    """Concat along `axis` (or the legacy concat_dim)."""
    p = io.param.concat_param
    axis = int(p.concat_dim) if p.HasField("concat_dim") else io.axis(p.axis)
    g.node("Concat", io.bottom, io.top[0], axis=axis)


@onnx_op("Slice")
def slice_(g: OnnxGraph, io: LayerIO) -> None:
    """Split along `axis` (or the legacy slice_dim) into the tops' sizes."""
    p = io.param.slice_param
    axis = int(p.slice_dim) if p.HasField("slice_dim") else io.axis(p.axis)
    if len(io.top) == 1:
        g.node("Identity", io.bottom, io.top[0])
        return
    sizes = [t.shape[axis] for t in io.top_blobs]
    g.node_n("Split", [io.bottom[0], g.ints("split", sizes)], io.top, axis=axis)


@onnx_op("Crop")
def crop(g: OnnxGraph, io: LayerIO) -> None:
    """bottom[0] cut to bottom[1]'s size on the axes from `axis` on, starting
    at `offset` (one for all, or one per cropped axis; 0 by default)."""
    p = io.param.crop_param
    axis = io.axis(p.axis)
    axes = list(range(axis, len(io.shape())))
    offsets = list(p.offset)
    starts = [
        (offsets[0] if len(offsets) == 1 else offsets[i] if offsets else 0)
        for i in range(len(axes))
    ]
    ends = [s + io.shape(1)[a] for s, a in zip(starts, axes)]
    g.node(
        "Slice",
        [
            io.bottom[0],
            g.ints("starts", starts),
            g.ints("ends", ends),
            g.ints("axes", axes),
        ],
        io.top[0],
    )


@onnx_op("Tile")
def tile(g: OnnxGraph, io: LayerIO) -> None:
    """The block of axes [axis, end) repeated `tiles` times along axis."""
    p = io.param.tile_param
    repeats = [1] * len(io.shape())
    repeats[io.axis(p.axis)] = int(p.tiles)
    g.node("Tile", [io.bottom[0], g.ints("repeats", repeats)], io.top[0])
