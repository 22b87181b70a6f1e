"""Bias tests after Caffe's test_bias_layer.cpp: the sum with a second bottom
broadcast from the beginning, middle or end of bottom[0] (or equal to it, or
a scalar), with a learned bias, in place; finite-difference gradients of
each; Caffe's CHECK failures."""

from __future__ import annotations

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

BIAS = 'name: "bias" type: "Bias" bias_param { %s }'


@pytest.mark.parametrize("axis, shape", BROADCASTS)
@pytest.mark.parametrize("in_place", [False, True])
def test_forward_two_bottoms(axis: int, shape: tuple[int, ...], in_place: bool) -> None:
    x, b = uniform(SHAPE), uniform(shape, seed=2)
    expected = x.data + placed(b.data, axis if shape else 0, 4)
    _, top = forward(BIAS % f"axis: {axis}", [x, b], in_place)
    np.testing.assert_array_equal(top.data, expected)


@pytest.mark.parametrize(
    "params, axis, shape",
    [
        (f"axis: 0 num_axes: -1 {GAUSSIAN}", 0, SHAPE),  # ...EltwiseWithParam
        (f"axis: 1 num_axes: 2 {GAUSSIAN}", 1, (3, 4)),  # ...MiddleWithParam
        ("", 1, (3,)),  # the defaults: one per channel, filled with 0
    ],
)
def test_forward_with_param(params: str, axis: int, shape: tuple[int, ...]) -> None:
    x = uniform(SHAPE)
    layer, top = forward(BIAS % params, [x])
    (b,) = layer.blobs
    assert b.shape == shape
    if not params:
        np.testing.assert_array_equal(b.data, 0)
    np.testing.assert_array_equal(top.data, x.data + placed(b.data, axis, 4))


@pytest.mark.parametrize("axis, shape", [(0, SHAPE), (1, (3, 4))])
def test_backward_in_place(axis: int, shape: tuple[int, ...]) -> None:
    """TestBackwardEltwiseInPlace, TestBackwardBroadcastMiddleInPlace: dx is
    dy either way (in place: left as it is)."""
    results = diffs_in_and_out_of_place(BIAS % f"axis: {axis}", shape)
    dy = rng(3).normal(size=SHAPE).astype(F32)
    np.testing.assert_array_equal(results[0][0], dy)
    np.testing.assert_array_equal(results[1][0], dy)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-6)


def test_backward_hand_computed() -> None:
    """A learned per-channel bias: its diff accumulates the sum of dy over
    the batch and spatial axes; bottom[1]'s diff is overwritten."""
    x = Blob((2, 2, 1))
    layer, top = forward(BIAS % "", [x])
    top.diff.ravel()[:] = [1, -1, 2, 0.5]
    layer.blobs[0].diff[...] = 10
    layer.backward([top], [True], [x])
    np.testing.assert_array_equal(layer.blobs[0].diff, [13, 9.5])
    b = Blob((2,))
    b.diff[...] = 10
    layer2, top2 = forward(BIAS % "", [Blob((2, 2, 1)), b])
    top2.diff.ravel()[:] = [1, -1, 2, 0.5]
    layer2.backward([top2], [False, True], [Blob((2, 2, 1)), b])
    np.testing.assert_array_equal(b.diff, [3, -0.5])


@pytest.mark.parametrize("axis, shape", BROADCASTS)
def test_gradient_two_bottoms(axis: int, shape: tuple[int, ...]) -> None:
    x = make_blob(SHAPE, rng(), low=1, high=10)
    b = make_blob(shape, rng(2), low=1, high=10)
    check_gradient(layer_from(BIAS % f"axis: {axis}"), [x, b], [Blob(dtype=np.float64)])


@pytest.mark.parametrize(
    "params",
    [
        f"axis: 0 num_axes: -1 {GAUSSIAN}",  # TestGradientEltwiseWithParam
        f"axis: 1 num_axes: 2 {GAUSSIAN}",  # ...BroadcastMiddleWithParam
    ],
)
def test_gradient_with_param(params: str) -> None:
    x = make_blob(SHAPE, rng(), low=1, high=10)
    check_gradient(layer_from(BIAS % params), [x], [Blob(dtype=np.float64)])


@pytest.mark.parametrize(
    "params, bottoms, error, match",
    [
        ("axis: 4", [SHAPE], ConfigError, r"bias_param.axis: axis 4 out of range"),
        ("num_axes: -3", [SHAPE], ConfigError, r"bias_param.num_axes must be non-neg"),
        (
            "axis: 3 num_axes: 2",
            [SHAPE],
            ConfigError,
            r"bias_param.num_axes: bias blob's shape extends past bottom\[0\]",
        ),
        (
            "axis: 0",
            [SHAPE, (3, 3)],
            ShapeError,
            r"dimension mismatch between bottom\[0\]->shape\(0\) and bias->shape\(0\)",
        ),
    ],
)
def test_caffe_checks(
    params: str, bottoms: list[tuple[int, ...]], error: type, match: str
) -> None:
    with pytest.raises(error, match=match) as e:
        forward(BIAS % params, [uniform(s) for s in bottoms])
    assert str(e.value).startswith("layer 'bias' (Bias): ")
