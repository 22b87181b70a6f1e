"""Im2col layer tests after Caffe's test_im2col_layer.cpp: setup shapes (with
dilation), the top's elements against their definition (2-D, rectangular,
force_nd_im2col, 3-D), gradients by finite differences, and Caffe's
checks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import layer_from
from gradient_check import check_gradient, make_blob

from caffesolve.blob import Blob
from caffesolve.errors import ConfigError
from caffesolve.layers.base import Layer


def im2col_layer(params: str, name: str = "im2col") -> Layer:
    return layer_from(f'name: "{name}" type: "Im2col" convolution_param {{ {params} }}')


def run_forward(layer: Layer, shape: tuple[int, ...]) -> tuple[Blob, Blob]:
    bottom = make_blob(shape, np.random.default_rng(1701))
    top = Blob(dtype=np.float64)
    layer.setup([bottom], [top])
    layer.forward([bottom], [top])
    return bottom, top


def expected_top(
    x: np.ndarray,
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    pad: tuple[int, ...],
    dilation: tuple[int, ...],
) -> np.ndarray:
    """Caffe's im2col, element by element: channel (c, kernel offset k)
    at output o holds x[c, o*stride - pad + k*dilation], 0 in the padding."""
    num, channels, *spatial = x.shape
    out = [
        (s + 2 * p - (d * (k - 1) + 1)) // st + 1
        for s, k, st, p, d in zip(spatial, kernel, stride, pad, dilation)
    ]
    offsets = list(itertools.product(*(range(k) for k in kernel)))
    top = np.zeros([num, channels * len(offsets), *out])
    for n, c, (r, k), o in itertools.product(
        range(num),
        range(channels),
        enumerate(offsets),
        itertools.product(*(range(s) for s in out)),
    ):
        i = [
            oo * st - p + kk * d
            for oo, st, p, kk, d in zip(o, stride, pad, k, dilation)
        ]
        if all(0 <= ii < s for ii, s in zip(i, spatial)):
            top[(n, c * len(offsets) + r, *o)] = x[(n, c, *i)]
    return top


def test_setup() -> None:
    # Caffe TestSetup: 2x3x10x11, kernel 3, stride 2, dilation 3 (extent 7):
    # 3 * 9 channels, (10 - 7) / 2 + 1 = 2 by (11 - 7) / 2 + 1 = 3.
    layer = im2col_layer("kernel_size: 3 stride: 2 dilation: 3")
    top = Blob()
    layer.setup([Blob((2, 3, 10, 11))], [top])
    assert top.shape == (2, 27, 2, 3)
    assert layer.blobs == []


def test_forward_top_left_block() -> None:
    # Caffe TestForward: the first output position holds the top-left 3x3
    # window of each channel.
    layer = im2col_layer("kernel_size: 3 stride: 2")
    bottom, top = run_forward(layer, (2, 3, 6, 5))
    for c in range(27):
        assert top.data[0, c, 0, 0] == bottom.data[0, c // 9, (c // 3) % 3, c % 3]


CASES = [
    # (params, bottom shape, kernel, stride, pad, dilation)
    ("kernel_size: 3 stride: 2", (2, 3, 6, 5), (3, 3), (2, 2), (0, 0), (1, 1)),
    (
        "kernel_size: 3 stride: 2 dilation: 3",
        (2, 3, 10, 9),
        (3, 3),
        (2, 2),
        (0, 0),
        (3, 3),
    ),
    (
        "kernel_h: 5 kernel_w: 3 stride: 2 pad: 1",  # Caffe TestRect
        (2, 2, 6, 5),
        (5, 3),
        (2, 2),
        (1, 1),
        (1, 1),
    ),
    (
        "kernel_size: 3 stride: 2 force_nd_im2col: true",
        (2, 3, 6, 5),
        (3, 3),
        (2, 2),
        (0, 0),
        (1, 1),
    ),
    (
        "kernel_size: 2 pad: 1 stride: 2",
        (1, 2, 3, 4, 3),
        (2, 2, 2),
        (2,) * 3,
        (1,) * 3,
        (1,) * 3,
    ),
]


@pytest.mark.parametrize("params,shape,kernel,stride,pad,dilation", CASES)
def test_forward_elements(
    params: str,
    shape: tuple[int, ...],
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    pad: tuple[int, ...],
    dilation: tuple[int, ...],
) -> None:
    layer = im2col_layer(params)
    bottom, top = run_forward(layer, shape)
    expect = expected_top(bottom.data, kernel, stride, pad, dilation)
    assert top.shape == expect.shape
    np.testing.assert_array_equal(top.data, expect)


@pytest.mark.parametrize("params,shape,kernel,stride,pad,dilation", CASES)
def test_gradient(
    params: str,
    shape: tuple[int, ...],
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    pad: tuple[int, ...],
    dilation: tuple[int, ...],
) -> None:
    # Caffe TestGradient, TestDilatedGradient, TestGradientForceND, TestRect.
    layer = im2col_layer(params)
    bottom = make_blob(shape, np.random.default_rng(3))
    assert check_gradient(layer, [bottom], [Blob(dtype=np.float64)]) > 0


@pytest.mark.parametrize(
    "params,shape,message",
    [
        ("stride: 2", (1, 3, 6, 5), "kernel_size specified 0 times"),
        ("kernel_size: 3 axis: 3", (1, 3, 6, 5), "no spatial axes"),
        ("kernel_size: 0", (1, 3, 6, 5), "Filter dimensions must be nonzero"),
        ("kernel_h: 3 kernel_w: 3", (1, 3, 6, 5, 5), "only be used for 2D"),
    ],
)
def test_config_errors_name_the_layer(
    params: str, shape: tuple[int, ...], message: str
) -> None:
    layer = im2col_layer(params, name="cols")
    with pytest.raises(ConfigError) as e:
        layer.setup([Blob(shape)], [Blob()])
    assert "layer 'cols' (Im2col)" in str(e.value)
    assert message in str(e.value)
