"""MVN tests after Caffe's test_mvn_layer.cpp (zero mean, unit variance per
image and channel, mean only, across channels; gradients of each), plus a
hand-computed case showing eps is added to the standard deviation, Caffe's
4-D top, and in-place runs."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import forward_backward, layer_from, rng
from gradient_check import check_gradient, make_blob

from caffesolve.blob import Blob
from caffesolve.errors import ShapeError

F32 = np.float32
MVN = 'name: "mvn" type: "MVN" %s'
SHAPE = (2, 3, 4, 5)


def gaussian(shape: tuple[int, ...] = SHAPE) -> Blob:
    b = Blob(shape, "x")
    b.data[...] = rng().normal(size=shape)
    return b


def forward(text: str, x: Blob) -> Blob:
    top = Blob()
    layer = layer_from(text)
    layer.setup([x], [top])
    layer.forward([x], [top])
    return top


@pytest.mark.parametrize(
    "text, axes, unit_variance",
    [
        (MVN % "", (2, 3), True),  # TestForward
        (MVN % "mvn_param { normalize_variance: false }", (2, 3), False),
        (MVN % "mvn_param { across_channels: true }", (1, 2, 3), True),
    ],
)
def test_forward(text: str, axes: tuple[int, ...], unit_variance: bool) -> None:
    """TestForward, TestForwardMeanOnly, TestForwardAcrossChannels."""
    x = gaussian()
    y = forward(text, x).data.astype(np.float64)
    np.testing.assert_allclose(y.mean(axis=axes), 0, atol=1e-3)
    if unit_variance:
        np.testing.assert_allclose((y**2).mean(axis=axes), 1, atol=1e-3)
    else:  # y = x - mean: the mean is all that was subtracted
        mean = x.data.astype(np.float64).mean(axis=axes, keepdims=True)
        np.testing.assert_allclose(y - x.data, np.broadcast_to(-mean, SHAPE), atol=1e-6)


def test_eps_is_added_to_the_standard_deviation() -> None:
    """x = 1, 3 in one channel: mean 2, std 1; eps 0.5 gives y = -+1/1.5 (not
    1/sqrt(1.5), which adding eps to the variance would give)."""
    x = Blob((1, 1, 1, 2))
    x.data.ravel()[:] = [1, 3]
    y = forward(MVN % "mvn_param { eps: 0.5 }", x)
    np.testing.assert_allclose(y.data.ravel(), [-1 / 1.5, 1 / 1.5], rtol=1e-6)


def test_float32_matches_caffe_steps() -> None:
    """mvn_layer.cpp's steps in float32: mean = (1/dim) * sum, x - mean,
    var = (1/dim) * sum of squares, x / (sqrt(var) + eps); backward
    dy + (-1/dim) * (y * sum(dy*y) + sum(dy)), / (sqrt(var) + eps)."""
    x = gaussian()
    dy = rng(5).normal(size=SHAPE).astype(F32)
    layer = layer_from(MVN % "mvn_param { eps: 0.001 }")
    top = Blob()
    layer.setup([x], [top])
    layer.forward([x], [top])
    top.diff[...] = dy
    layer.backward([top], [True], [x])
    rows = x.data.reshape(6, 20)
    inv = F32(1.0 / 20)
    centered = rows - (rows.sum(axis=1) * inv)[:, None]
    std = np.sqrt((centered * centered).sum(axis=1) * inv) + F32(0.001)
    y = centered / std[:, None]
    np.testing.assert_allclose(top.data.reshape(6, 20), y, rtol=1e-6, atol=1e-7)
    d = dy.reshape(6, 20)
    inner = y * (y * d).sum(axis=1)[:, None] + d.sum(axis=1)[:, None]
    dx = (d + F32(-1.0 / 20) * inner) / std[:, None]
    np.testing.assert_allclose(x.diff.reshape(6, 20), dx, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "text",
    [
        MVN % "",  # TestGradient
        MVN % "mvn_param { normalize_variance: false }",  # TestGradientMeanOnly
        MVN % "mvn_param { across_channels: true }",  # TestGradientAcrossChannels
        MVN % "mvn_param { across_channels: true normalize_variance: false }",
    ],
)
def test_gradient(text: str) -> None:
    layer = layer_from(text)
    bottom = make_blob(SHAPE, rng())
    assert check_gradient(layer, [bottom], [Blob(dtype=np.float64)]) == 120


@pytest.mark.parametrize("variance", ["true", "false"])
def test_in_place_matches_out_of_place(variance: str) -> None:
    text = MVN % f"mvn_param {{ normalize_variance: {variance} }}"
    x = gaussian().data
    dy = rng(3).normal(size=SHAPE).astype(F32)
    y, dx = forward_backward(text, x, dy)
    y2, dx2 = forward_backward(text, x, dy, in_place=True)
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_array_equal(dx, dx2)


def test_top_is_4d_as_caffe() -> None:
    """Caffe reshapes the top to (num, channels, height, width): a 2-D bottom
    gives (N, C, 1, 1), each value its own channel (so y = 0)."""
    x = gaussian((2, 3))
    y = forward(MVN % "", x)
    assert y.shape == (2, 3, 1, 1)
    np.testing.assert_array_equal(y.data, 0)


def test_more_than_4_axes_is_an_error() -> None:
    with pytest.raises(ShapeError, match="legacy accessors on Blobs with > 4 axes"):
        forward(MVN % "", gaussian((1, 2, 3, 4, 5)))
