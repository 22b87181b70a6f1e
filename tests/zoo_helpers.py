"""Shared pieces of the zoo tests: the deploy nets (read by path from
../shared/caffe-examples, CaffeNet made from AlexNet's), the parameter blob
shapes Caffe gives each layer, random-weight .caffemodel files assembled
byte by byte in Caffe's layout, and a float64 copy of a built net for
numerical gradients."""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from conftest import EXAMPLES, varint

from caffesolve.blob import Blob
from caffesolve.layers import Layer
from caffesolve.net import Net
from caffesolve.proto import caffe_pb2
from caffesolve.proto.upgrade import read_net_params_from_text_file

Shape = tuple[int, ...]


class ZooNet(NamedTuple):
    file: str  # the deploy prototxt in ../shared/caffe-examples
    small: int  # the input size of the forward/backward test
    v1: bool  # its released .caffemodel holds V1 `layers` with 4-D blobs


# The small sizes keep every pooling window valid: AlexNet 67 ends with a 1x1
# pool5, VGG-16 32 too, SqueezeNet and MobileNet end with global pooling. The
# 7x7 average pools that end GoogLeNet and ResNet-50 need a 7x7 input (224;
# GoogLeNet allows nothing under 223), so those two run at full size, and
# their float64 gradient check runs at GRADIENT_SIZE with that pool global
# (the same at 224).
NETS: dict[str, ZooNet] = {
    "alexnet": ZooNet("zoo__alexnet_deploy.prototxt", 67, True),
    "caffenet": ZooNet("zoo__alexnet_deploy.prototxt", 67, True),
    "googlenet": ZooNet("zoo__googlenet_deploy.prototxt", 224, True),
    "vgg16": ZooNet("zoo__vgg16_deploy.prototxt", 32, True),
    "resnet50": ZooNet("zoo__resnet50_deploy.prototxt", 224, False),
    "squeezenet_v1_1": ZooNet("zoo__squeezenet_v1_1_deploy.prototxt", 67, False),
    "mobilenet_v1": ZooNet("zoo__mobilenet_v1_deploy.prototxt", 64, False),
}
GRADIENT_SIZE = 64


def global_last_pool(param: caffe_pb2.NetParameter) -> caffe_pb2.NetParameter:
    """`param` with its last Pooling layer global (kernel and stride
    cleared): GoogLeNet's pool5/7x7_s1 and ResNet-50's pool5 at another
    input size."""
    pool = [lp for lp in param.layer if lp.type == "Pooling"][-1].pooling_param
    pool.ClearField("kernel_size")
    pool.ClearField("stride")
    pool.global_pooling = True
    return param


def zoo_path(name: str) -> Path:
    path = EXAMPLES / NETS[name].file
    if not path.exists():
        pytest.skip(f"{path} not here")
    return path


def caffenet(alexnet: caffe_pb2.NetParameter) -> caffe_pb2.NetParameter:
    """BVLC CaffeNet's deploy net (models/bvlc_reference_caffenet): AlexNet's
    layers with pooling before normalisation (conv1, relu1, pool1, norm1,
    conv2 and conv2, relu2, pool2, norm2, conv3), its input given by the
    net-level `input` and `input_shape` fields."""
    layers = {lp.name: lp for lp in alexnet.layer}
    names = [lp.name for lp in alexnet.layer if lp.type != "Input"]
    for a, b in (("norm1", "pool1"), ("norm2", "pool2")):
        i, j = names.index(a), names.index(b)
        names[i], names[j] = b, a
    param = caffe_pb2.NetParameter(name="CaffeNet", input=["data"])
    param.input_shape.add().CopyFrom(layers["data"].input_param.shape[0])
    for name in names:
        param.layer.add().CopyFrom(layers[name])
    bottoms = {"pool1": "conv1", "norm1": "pool1", "conv2": "norm1"}
    bottoms |= {"pool2": "conv2", "norm2": "pool2", "conv3": "norm2"}
    for lp in param.layer:
        if lp.name in bottoms:
            lp.bottom[:] = [bottoms[lp.name]]
    return param


def deploy_param(
    name: str, size: int | None = None, batch: int = 1
) -> caffe_pb2.NetParameter:
    """The deploy net `name` at `batch` and input size `size` (default: the
    prototxt's own), with force_backward so that a deploy net backpropagates
    to its input (pycaffe's usual switch)."""
    param = read_net_params_from_text_file(zoo_path(name))
    if name == "caffenet":
        param = caffenet(param)
    shapes = [
        s for lp in param.layer if lp.type == "Input" for s in lp.input_param.shape
    ]
    shapes += list(param.input_shape)
    for shape in shapes:
        shape.dim[0] = batch
        if size is not None:
            shape.dim[2:] = [size, size]
    param.force_backward = True
    return param


def build(param: caffe_pb2.NetParameter, name: str) -> Net:
    return Net(param, caffe_pb2.TEST, quiet=True, source=NETS[name].file)


def param_shapes(lp: caffe_pb2.LayerParameter, bottom: Shape) -> list[Shape]:
    """The blobs Caffe's layer setup makes for `lp` on a bottom of shape
    `bottom`: Convolution (num_output, channels/group, kh, kw) and
    (num_output,) (base_conv_layer.cpp); InnerProduct (num_output, count
    from axis 1) and (num_output,); BatchNorm mean (C,), variance (C,) and
    the moving-average factor (1,); Scale (C,) then its bias (C,) (axis 1,
    one axis)."""
    if lp.type == "Convolution":
        p = lp.convolution_param
        k = p.kernel_size[0]
        shapes = [(p.num_output, bottom[1] // p.group, k, k)]
        return shapes + [(p.num_output,)] * p.bias_term
    if lp.type == "InnerProduct":
        p = lp.inner_product_param
        shapes = [(p.num_output, int(np.prod(bottom[1:])))]
        return shapes + [(p.num_output,)] * p.bias_term
    if lp.type == "BatchNorm":
        return [(bottom[1],), (bottom[1],), (1,)]
    if lp.type == "Scale":
        return [(bottom[1],)] * (1 + lp.scale_param.bias_term)
    return []


# -- .caffemodel files as Caffe writes them ------------------------------------
# Wire bytes as lists of chunks, so that a large blob's floats are written
# from the array itself rather than copied into every enclosing message.

Chunks = list[bytes | memoryview]


def _key(field: int, wire_type: int) -> bytes:
    return varint(field << 3 | wire_type)


def _message(field: int, chunks: Chunks) -> Chunks:
    """A length-delimited field (a message, string or packed list)."""
    return [_key(field, 2) + varint(sum(len(c) for c in chunks)), *chunks]


def _string(field: int, text: str) -> Chunks:
    return _message(field, [text.encode()])


def _int(field: int, value: int) -> Chunks:
    return [_key(field, 0) + varint(value)]


def blob_proto(values: np.ndarray, legacy: bool) -> Chunks:
    """A BlobProto as Caffe's Blob::ToProto writes it: the values as packed
    little-endian floats (field 5), then the shape (field 7, packed int64
    dims); a legacy blob (Caffe before 2015) has num, channels, height and
    width (fields 1-4) before the values instead, the shape padded with
    leading 1s to four axes (a bias (n,) is 1 x 1 x 1 x n, an InnerProduct
    weight 1 x 1 x n x k)."""
    floats = np.ascontiguousarray(values, "<f4")
    data = _message(5, [memoryview(floats).cast("B")])
    if legacy:
        dims = (1,) * (4 - values.ndim) + values.shape
        return [c for f, d in zip((1, 2, 3, 4), dims) for c in _int(f, d)] + data
    shape = _message(1, [b"".join(varint(d) for d in values.shape)])
    return data + _message(7, shape)


def v1_type(layer_type: str) -> int:
    """The V1LayerParameter.LayerType of a type string ("InnerProduct" ->
    INNER_PRODUCT, "ReLU" -> RELU, "LRN" -> LRN, "SoftmaxWithLoss" ->
    SOFTMAX_LOSS)."""
    name = {"SoftmaxWithLoss": "SOFTMAX_LOSS", "ReLU": "RELU", "LRN": "LRN"}.get(
        layer_type, re.sub(r"(?<!^)(?=[A-Z])", "_", layer_type).upper()
    )
    return caffe_pb2.V1LayerParameter.LayerType.Value(name)


def layer_message(
    name: str,
    layer_type: str,
    bottoms: list[str],
    tops: list[str],
    blobs: list[Chunks],
    v1: bool,
) -> Chunks:
    """One layer of a NetParameter: LayerParameter (name 1, type 2, bottom 3,
    top 4, blobs 7) in NetParameter field 100, or the V1LayerParameter of the
    2014 releases (bottom 2, top 3, name 4, type enum 5, blobs 6) in field 2."""
    if v1:
        body = [c for b in bottoms for c in _string(2, b)]
        body += [c for t in tops for c in _string(3, t)]
        body += _string(4, name) + _int(5, v1_type(layer_type))
        return _message(2, body + [c for b in blobs for c in _message(6, b)])
    body = _string(1, name) + _string(2, layer_type)
    body += [c for b in bottoms for c in _string(3, b)]
    body += [c for t in tops for c in _string(4, t)]
    return _message(100, body + [c for b in blobs for c in _message(7, b)])


def write_caffemodel(path: Path, net: Net, v1: bool) -> None:
    """`net`'s weights as a .caffemodel laid out as Caffe's Net::ToProto
    writes a trained net: every layer in order (Split layers too, with their
    blob names) with its blobs, and, as in a snapshot of the train net, a
    data layer before and a loss layer after (the loader ignores both). A
    V1 file (`v1`) has no Input layer and 4-D legacy blob shapes for the
    weights and biases of Convolution and InnerProduct."""
    chunks = _string(1, net.name)
    chunks += layer_message("train-data", "Data", [], ["data", "label"], [], v1)
    for layer, bottoms, tops in zip(net.layers, net.bottom_vecs, net.top_vecs):
        lp = layer.layer_param
        if v1 and lp.type == "Input":
            continue
        legacy = v1 and lp.type in ("Convolution", "InnerProduct")
        blobs = [blob_proto(b.data, legacy) for b in layer.blobs]
        names = [b.name for b in bottoms], [t.name for t in tops]
        chunks += layer_message(lp.name, lp.type, *names, blobs, v1)
    last = net.output_blob_names[0]
    chunks += layer_message("loss", "SoftmaxWithLoss", [last, "label"], [], [], v1)
    with path.open("wb") as f:
        for c in chunks:
            f.write(c)


def randomize(net: Net, x: np.ndarray, seed: int = 1701) -> None:
    """Weights a trained net might hold for the input x: Convolution and
    InnerProduct weights N(0, 2/fan_in), biases N(0, 0.01); Scale factors in
    [0.5, 1.5] and biases N(0, 0.01); BatchNorm statistics those of x at that
    layer (so that ResNet's and MobileNet's activations stay bounded), stored
    as Caffe keeps them: sums times a moving-average factor, here 2."""
    rng = np.random.default_rng(seed)
    net.input_blobs[0].data[...] = x
    kinds = [layer.layer_param.type for layer in net.layers]
    last_bn = max((i for i, k in enumerate(kinds) if k == "BatchNorm"), default=-1)
    for i, layer in enumerate(net.layers):
        blobs, kind = layer.blobs, layer.layer_param.type
        if kind in ("Convolution", "InnerProduct"):
            fan_in = int(np.prod(blobs[0].shape[1:]))
            std = np.float32(np.sqrt(2 / fan_in))
            blobs[0].data[...] = rng.standard_normal(blobs[0].shape, np.float32) * std
        elif kind == "Scale":
            blobs[0].data[...] = rng.uniform(0.5, 1.5, blobs[0].shape)
        elif kind == "BatchNorm":
            x = net.bottom_vecs[i][0].data
            axes = (0, *range(2, x.ndim))
            factor = np.float32(2)
            blobs[0].data[...] = x.mean(axes) * factor
            variance = x.var(axes)  # at least a tenth of the mean: a channel
            # nearly constant over a small input must not blow up 300-fold
            variance = np.maximum(variance, variance.mean())
            blobs[1].data[...] = variance * factor
            blobs[2].data[...] = factor
        if kind != "BatchNorm":
            for b in blobs[1:]:
                b.data[...] = rng.normal(0, 0.1, b.shape)
        if i < last_bn:  # the next BatchNorm needs its bottom
            net.forward_layer(i)


def to_float64(net: Net, layers: list[Layer]) -> None:
    """Make `net` compute in float64, in place: every top blob, and the
    parameter blobs (their diffs only for `layers`, the others' diffs stay
    unused); each layer keeps the dtype of its bottoms."""
    seen: set[int] = set()

    def widen(blob: Blob, diff: bool) -> None:
        if id(blob) not in seen:
            seen.add(id(blob))
            blob.data = blob.data.astype(np.float64)
            if diff:
                blob.diff = blob.diff.astype(np.float64)

    for blob in net.blobs:
        widen(blob, True)
    for layer in net.layers:
        for blob in layer.blobs:
            widen(blob, layer in layers)
        layer.forget_buffers()
    net.reshape()


class GradientCheck(NamedTuple):
    prob: np.ndarray  # the output at x, in float64
    input_diff: np.ndarray  # the input's gradient, in float64
    analytic: float  # the gradient along the direction, from backward
    numeric: list[float]  # central differences, one per step tried


def float64_gradient_check(
    net: Net,
    x: np.ndarray,
    c: np.ndarray,
    layers: list[Layer],
    rng: np.random.Generator,
    steps: tuple[float, ...] = (1e-6, 1e-7, 1e-8),
    rtol: float = 1e-4,
) -> GradientCheck:
    """Make `net` float64 (only `layers` compute parameter gradients) and
    compare the gradient of f = sum(c * output) at the input x along one
    random direction, of the input and of every blob of `layers` at once,
    with central differences (f(+h) - f(-h)) / 2h. The direction is unit
    for the input and as long as each blob's root-mean-square value for the
    blobs, so that a step of 1e-6 rarely crosses a ReLU or MAX kink among a
    deep net's millions; a step that does, or one too small for the
    rounding, gives way to the next in `steps` (until one is within rtol)."""
    for layer in net.layers:
        layer.param_propagate_down = [layer in layers] * len(layer.blobs)
    to_float64(net, layers)
    data, out = net.input_blobs[0], net.output_blobs[0]
    weights = [b for layer in layers for b in layer.blobs]
    w0 = [b.data.copy() for b in weights]
    u = [rng.standard_normal(b.shape) for b in weights]
    u = [ub * np.sqrt(np.mean(b0**2)) / np.linalg.norm(ub) for ub, b0 in zip(u, w0)]
    x0 = x.astype(np.float64)
    v = rng.standard_normal(x.shape)
    v /= np.linalg.norm(v)

    def f(h: float) -> float:
        data.data[...] = x0 + h * v
        for b, b0, ub in zip(weights, w0, u):
            b.data[...] = b0 + h * ub
        net.forward()
        return float((out.data * c).sum())

    f(0)
    prob = out.data.copy()
    out.diff[...] = c
    net.clear_param_diffs()
    net.backward()
    input_diff = data.diff.copy()
    analytic = float((input_diff * v).sum())
    analytic += sum(float((b.diff * ub).sum()) for b, ub in zip(weights, u))
    numeric: list[float] = []
    for h in steps:
        numeric.append((f(h) - f(-h)) / (2 * h))
        if abs(numeric[-1] - analytic) <= rtol * abs(analytic):
            break
    return GradientCheck(prob, input_diff, analytic, numeric)
