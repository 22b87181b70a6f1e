"""Scale tests after Caffe's test_scale_layer.cpp: the product with a second
bottom broadcast from the beginning, middle or end of bottom[0] (or equal to
it, or a scalar), with a learned scale and bias, in place; finite-difference
gradients of each; Caffe's CHECK failures; when Caffe accumulates a learned
scale's diff and when it overwrites it; BatchNorm + Scale as ResNet uses
them, through a .caffemodel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from affine_helpers import (
    BROADCASTS,
    F32,
    GAUSSIAN,
    SHAPE,
    diffs_in_and_out_of_place,
    forward,
    placed,
    uniform,
)
from conftest import layer_from, rng
from gradient_check import check_gradient, make_blob

from caffesolve.blob import Blob
from caffesolve.errors import ConfigError, ShapeError
from caffesolve.net import Net
from caffesolve.proto import caffe_pb2
from caffesolve.proto.io import parse_prototxt_text

SCALE = 'name: "scale" type: "Scale" scale_param { %s }'
BIAS = 'bias_term: true bias_filler { type: "gaussian" }'


# -- forward ------------------------------------------------------------------------


@pytest.mark.parametrize("axis, shape", BROADCASTS)
@pytest.mark.parametrize("in_place", [False, True])
def test_forward_two_bottoms(axis: int, shape: tuple[int, ...], in_place: bool) -> None:
    x, s = uniform(SHAPE), uniform(shape, seed=2)
    expected = x.data * placed(s.data, 0 if not shape else axis, 4)
    _, top = forward(SCALE % f"axis: {axis}", [x, s], in_place)
    np.testing.assert_array_equal(top.data, expected)


@pytest.mark.parametrize(
    "params, axis",
    [
        (f"axis: 0 num_axes: -1 {GAUSSIAN}", 0),  # TestForwardEltwiseWithParam
        (f"axis: 1 num_axes: 2 {GAUSSIAN}", 1),  # ...BroadcastMiddleWithParam
    ],
)
def test_forward_with_param(params: str, axis: int) -> None:
    x = uniform(SHAPE)
    layer, top = forward(SCALE % params, [x])
    (s,) = layer.blobs
    assert s.shape == (SHAPE if axis == 0 else (3, 4))
    np.testing.assert_array_equal(top.data, x.data * placed(s.data, axis, 4))


def test_forward_with_param_and_bias() -> None:
    """TestForwardBroadcastMiddleWithParamAndBias: top = x * s + b."""
    params = f"axis: 1 num_axes: 2 {GAUSSIAN} {BIAS}"
    x = uniform(SHAPE)
    layer, top = forward(SCALE % params, [x])
    s, b = layer.blobs
    assert s.shape == b.shape == (3, 4)
    expected = x.data * placed(s.data, 1, 4) + placed(b.data, 1, 4)
    np.testing.assert_array_equal(top.data, expected)


def test_default_fillers_are_identity() -> None:
    """No filler: the scale is 1 (Caffe's default), the bias 0."""
    x = uniform(SHAPE)
    layer, top = forward(SCALE % "bias_term: true", [x])
    assert [b.shape for b in layer.blobs] == [(3,), (3,)]
    np.testing.assert_array_equal(layer.blobs[0].data, 1)
    np.testing.assert_array_equal(layer.blobs[1].data, 0)
    np.testing.assert_array_equal(top.data, x.data)


def test_bias_with_a_scale_bottom_covers_its_axes() -> None:
    """Two bottoms and bias_term: one blob, the bias, shaped like bottom[1]."""
    x, s = uniform(SHAPE), uniform((3, 4), seed=2)
    layer, top = forward(SCALE % "bias_term: true bias_filler { value: 2 }", [x, s])
    assert [b.shape for b in layer.blobs] == [(3, 4)]
    np.testing.assert_array_equal(top.data, x.data * placed(s.data, 1, 4) + 2)


# -- backward ----------------------------------------------------------------------


@pytest.mark.parametrize("axis, shape", [(0, SHAPE), (1, (3, 4))])
def test_backward_in_place(axis: int, shape: tuple[int, ...]) -> None:
    """TestBackwardEltwiseInPlace, TestBackwardBroadcastMiddleInPlace: the
    same bottom and scale diffs in place as out of place."""
    results = diffs_in_and_out_of_place(SCALE % f"axis: {axis}", shape)
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-6)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-6)


def test_backward_hand_computed() -> None:
    """Per-channel scale: dx = dy * s_c, ds_c = sum of dy * x over channel c;
    the bias diff is the sum of dy."""
    x = Blob((2, 2, 1))
    x.data.ravel()[:] = [1, 2, 3, 4]
    layer, top = forward(SCALE % "bias_term: true filler { value: 3 }", [x])
    top.diff.ravel()[:] = [1, -1, 2, 0.5]
    layer.backward([top], [True], [x])
    np.testing.assert_array_equal(x.diff.ravel(), [3, -3, 6, 1.5])
    np.testing.assert_array_equal(layer.blobs[0].diff, [1 * 1 + 2 * 3, -2 + 0.5 * 4])
    np.testing.assert_array_equal(layer.blobs[1].diff, [3, -0.5])


@pytest.mark.parametrize(
    "bottom_shape, params, accumulates",
    [
        ((2, 3, 4), "", True),  # outer 2: Caffe's gemv with beta 1
        ((1, 3, 4), "", False),  # outer 1: the diff is written over
        ((2, 3), "", True),  # inner 1, outer 2: += too
        ((1, 3, 1), "", False),  # as many values as bottom[0]: eltwise, =
        ((2, 3), "axis: 0 num_axes: -1", False),  # scale like bottom[0]
        ((1, 1, 4), "", True),  # one value: caffe_cpu_dot, +=
    ],
)
def test_learned_scale_diff_accumulates_as_caffe(
    bottom_shape: tuple[int, ...], params: str, accumulates: bool
) -> None:
    """Caffe's Backward_cpu accumulates a learned scale's diff (param diffs
    add up over iter_size) except where its eltwise and outer-dim-1 shortcuts
    write the diff directly; caffesolve keeps both."""
    x = uniform(bottom_shape)
    layer, top = forward(SCALE % params, [x])
    top.diff[...] = 1
    s = layer.blobs[0]
    s.diff[...] = 100
    layer.backward([top], [False], [x])
    axis = 0 if "axis: 0" in params else 1
    outer = int(np.prod(bottom_shape[:axis]))
    dims = (outer, s.count, x.count // (outer * s.count))
    sums = x.data.reshape(dims).sum(axis=(0, 2)).reshape(s.shape)  # dy = 1
    np.testing.assert_allclose(s.diff, sums + (100 if accumulates else 0), rtol=1e-6)


# -- gradients ---------------------------------------------------------------------


@pytest.mark.parametrize("axis, shape", BROADCASTS)
def test_gradient_two_bottoms(axis: int, shape: tuple[int, ...]) -> None:
    x = make_blob(SHAPE, rng(), low=1, high=10)
    s = make_blob(shape, rng(2), low=1, high=10)
    layer = layer_from(SCALE % f"axis: {axis}")
    check_gradient(layer, [x, s], [Blob(dtype=np.float64)])


@pytest.mark.parametrize(
    "params",
    [
        f"axis: 0 num_axes: -1 {GAUSSIAN}",  # TestGradientEltwiseWithParam
        f"axis: 1 num_axes: 2 {GAUSSIAN}",  # ...BroadcastMiddleWithParam
        f"axis: 1 num_axes: 0 {GAUSSIAN} {BIAS}",
        f"{GAUSSIAN} {BIAS}",
    ],
)
def test_gradient_with_param(params: str) -> None:
    x = make_blob(SHAPE, rng(), low=1, high=10)
    check_gradient(layer_from(SCALE % params), [x], [Blob(dtype=np.float64)])


def test_gradient_scale_and_bias_bottom() -> None:
    """TestGradientScaleAndBias: a scalar bottom[1] and a learned bias."""
    x = make_blob(SHAPE, rng(), low=1, high=10)
    s = make_blob((), rng(2), low=1, high=10)
    layer = layer_from(SCALE % BIAS)
    check_gradient(layer, [x, s], [Blob(dtype=np.float64)])


# -- errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params, bottoms, error, match",
    [
        ("axis: 4", [SHAPE], ConfigError, r"scale_param.axis: axis 4 out of range"),
        ("axis: -5", [SHAPE], ConfigError, r"scale_param.axis: axis -5 out of range"),
        ("num_axes: -2", [SHAPE], ConfigError, r"scale_param.num_axes must be non-neg"),
        (
            "axis: 2 num_axes: 3",
            [SHAPE],
            ConfigError,
            r"scale_param.num_axes: scale blob's shape extends past bottom\[0\]",
        ),
        (
            "axis: 1",
            [SHAPE, (3, 5)],
            ShapeError,
            r"dimension mismatch between bottom\[0\]->shape\(2\) and scale->shape\(1\)",
        ),
        ("axis: 3", [SHAPE, (5, 2)], ShapeError, r"extends past bottom\[0\]'s shape"),
    ],
)
def test_caffe_checks(
    params: str, bottoms: list[tuple[int, ...]], error: type, match: str
) -> None:
    with pytest.raises(error, match=match) as e:
        forward(SCALE % params, [uniform(s) for s in bottoms])
    assert str(e.value).startswith("layer 'scale' (Scale): ")


def test_wrong_blob_count_in_definition() -> None:
    layer = layer_from(SCALE % "bias_term: true")
    layer.blobs = [Blob((3,))]
    with pytest.raises(
        ConfigError, match=r"blobs: Scale .* keeps 2 blobs \(scale, bias\)"
    ):
        layer.setup([uniform(SHAPE)], [Blob()])


# -- BatchNorm + Scale, as ResNet ------------------------------------------------------

RESNET_BLOCK = """name: "resnet_block"
layer { name: "data" type: "Input" top: "data"
  input_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 bias_term: false
                      weight_filler { type: "msra" } } }
layer { name: "bn_conv1" type: "BatchNorm" bottom: "conv1" top: "conv1"
  batch_norm_param { use_global_stats: true } }
layer { name: "scale_conv1" type: "Scale" bottom: "conv1" top: "conv1"
  scale_param { bias_term: true } }
layer { name: "conv1_relu" type: "ReLU" bottom: "conv1" top: "conv1" }
"""


def resnet_block() -> Net:
    param = parse_prototxt_text(RESNET_BLOCK, caffe_pb2.NetParameter(), "<test>")
    return Net(param, caffe_pb2.TEST, rng=rng(), source="block.prototxt", quiet=True)


def test_resnet_block_loads_caffe_layout(tmp_path: Path) -> None:
    """A weights file in Caffe's layout (BatchNorm: mean, variance, factor;
    Scale: scale, bias) gives relu((conv - mean/s) / sqrt(var/s + eps) *
    gamma + beta), all layers in place."""
    net = resnet_block()
    model = net.to_proto()
    c = 4
    mean = np.arange(c, dtype=F32)
    var = np.arange(1, c + 1, dtype=F32)
    gamma, beta = np.full(c, 2, F32), np.full(c, -0.5, F32)
    layers = {lp.name: lp for lp in model.layer}
    for blob, values in zip(layers["bn_conv1"].blobs, [2 * mean, 2 * var, [2]]):
        del blob.data[:]
        blob.data.extend(values)
    for blob, values in zip(layers["scale_conv1"].blobs, [gamma, beta]):
        del blob.data[:]
        blob.data.extend(values)
    path = tmp_path / "block.caffemodel"
    path.write_bytes(model.SerializeToString())
    loaded = resnet_block()
    loaded.copy_trained_layers_from(path)
    x = rng().normal(size=(2, 3, 4, 4)).astype(F32)
    loaded.blob_by_name("data").data[...] = x
    loaded.forward()
    # The convolution alone, from the same file in a net cut after conv1:
    cut = parse_prototxt_text(
        RESNET_BLOCK.split('layer { name: "bn_conv1"')[0],
        caffe_pb2.NetParameter(),
        "<test>",
    )
    conv_net = Net(cut, caffe_pb2.TEST, rng=rng(), quiet=True)
    conv_net.copy_trained_layers_from(path)
    conv_net.blob_by_name("data").data[...] = x
    conv_net.forward()
    y = conv_net.blob_by_name("conv1").data.astype(np.float64)
    eps = float(F32(1e-5))
    normed = (y - placed(mean, 1, 4)) / np.sqrt(placed(var, 1, 4) + eps)
    expected = np.maximum(normed * 2 - 0.5, 0)
    np.testing.assert_allclose(loaded.blob_by_name("conv1").data, expected, atol=1e-5)
