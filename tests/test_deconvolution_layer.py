"""Deconvolution layer tests after Caffe's test_deconvolution_layer.cpp: setup
shapes, the constant-filled hand values of TestSimpleDeconvolution, forward
against a direct scatter reference (stride, pad, dilation, group, non-square
and 3-D kernels, every lowering), Deconvolution as the adjoint of
Convolution, gradients by finite differences, N-D against 2-D, and Caffe's
checks as one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import layer_from
from conv_reference import reference_conv_nd, reference_deconv_nd
from gradient_check import check_gradient, make_blob

from caffesolve.blob import Blob
from caffesolve.errors import ConfigError, ShapeError
from caffesolve.layers.conv import DeconvolutionLayer
from caffesolve.ops import conv as lowering

GAUSS = (
    'weight_filler { type: "gaussian" std: 0.5 } '
    'bias_filler { type: "gaussian" std: 0.5 }'
)


def deconv_layer(params: str, name: str = "deconv") -> DeconvolutionLayer:
    layer = layer_from(
        f'name: "{name}" type: "Deconvolution" convolution_param {{ {params} }}'
    )
    assert isinstance(layer, DeconvolutionLayer)
    return layer


def run_forward(
    layer: DeconvolutionLayer, shape: tuple[int, ...], seed: int = 0
) -> tuple[Blob, Blob]:
    bottom = make_blob(shape, np.random.default_rng(seed), name="data")
    top = Blob(name="out", dtype=np.float64)
    layer.setup([bottom], [top])
    layer.forward([bottom], [top])
    return bottom, top


def force_lowering(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """choose_lowering picks `name` where it applies, else batch-inner
    columns, else per-image columns."""

    def choose(g: lowering.ConvGeometry, num_output: int, group: int) -> str:
        for candidate in (name, "batch_inner", "per_image"):
            if lowering.LOWERINGS[candidate].applies(g, num_output, group):
                return candidate
        raise AssertionError("per-image columns apply everywhere")

    monkeypatch.setattr(lowering, "choose_lowering", choose)


STRATEGIES = ["per_image", "batch_inner", "row_shift"]


def test_setup() -> None:
    # Caffe TestSetup: two 2x3x6x4 bottoms, kernel 3, stride 2, 4 outputs:
    # 2 * (6 - 1) + 3 = 13 by 2 * (4 - 1) + 3 = 9; group 3 keeps the shape.
    layer = deconv_layer("num_output: 4 kernel_size: 3 stride: 2")
    bottom = [Blob((2, 3, 6, 4)), Blob((2, 3, 6, 4))]
    top = [Blob(), Blob()]
    layer.setup(bottom, top)
    assert top[0].shape == top[1].shape == (2, 4, 13, 9)
    assert layer.blobs[0].shape == (3, 4, 3, 3)  # (channels, num_output, k, k)
    assert layer.blobs[1].shape == (4,)
    layer = deconv_layer("num_output: 3 kernel_size: 3 stride: 2 group: 3")
    layer.setup(bottom, top)
    assert top[0].shape == (2, 3, 13, 9)
    assert layer.blobs[0].shape == (3, 1, 3, 3)


def test_simple_deconvolution_hand_values() -> None:
    # Caffe TestSimpleDeconvolution: all-ones bottoms and weights, bias 0.1.
    # A top element gets 3 channels times the number of 3x3 windows (stride
    # 2) covering it: 1 normally, 2 along one axis at an even interior
    # index (two windows overlap), 4 where both overlap: 3.1, 6.1, 12.1.
    layer = deconv_layer(
        'num_output: 4 kernel_size: 3 stride: 2 weight_filler { type: "constant" '
        'value: 1 } bias_filler { type: "constant" value: 0.1 }'
    )
    bottom = [Blob((2, 3, 6, 4), dtype=np.float64) for _ in range(2)]
    top = [Blob(dtype=np.float64), Blob(dtype=np.float64)]
    layer.setup(bottom, top)
    for b in bottom:
        b.data[...] = 1
    layer.forward(bottom, top)
    for t in top:
        h, w = t.shape[2:]
        rows = np.array([i % 2 == 0 and 0 < i < h - 1 for i in range(h)])
        cols = np.array([j % 2 == 0 and 0 < j < w - 1 for j in range(w)])
        expect = 3.1 + 3 * (rows[:, None].astype(int) + cols[None, :].astype(int))
        expect = np.where(rows[:, None] & cols[None, :], 12.1, expect)
        np.testing.assert_allclose(t.data, np.broadcast_to(expect, t.shape))


CASES = [
    # (params, bottom shape)
    ("num_output: 4 kernel_size: 3 stride: 2", (2, 3, 4, 3)),
    ("num_output: 2 kernel_size: 3 stride: 2 pad: 1", (2, 2, 4, 4)),
    ("num_output: 3 kernel_h: 3 kernel_w: 2 stride_h: 1 stride_w: 2", (1, 2, 3, 4)),
    ("num_output: 2 kernel_size: 2 dilation: 2 pad: 1", (2, 2, 3, 3)),
    ("num_output: 4 kernel_size: 3 group: 2 stride: 2 pad: 1", (2, 4, 3, 3)),
    ("num_output: 4 kernel_size: 3 group: 4 bias_term: false", (1, 4, 3, 3)),
    ("num_output: 3 kernel_size: 1", (2, 2, 3, 3)),
    ("num_output: 2 kernel_size: 2 stride: 2", (1, 2, 2, 3, 2)),  # 3-D
]


@pytest.mark.parametrize("name", STRATEGIES)
@pytest.mark.parametrize("params,shape", CASES)
def test_forward_matches_direct_reference(
    params: str, shape: tuple[int, ...], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    force_lowering(monkeypatch, name)
    layer = deconv_layer(params + " " + GAUSS)
    bottom, top = run_forward(layer, shape)
    bias = layer.blobs[1].data if layer.bias_term else None
    ref = reference_deconv_nd(
        bottom.data, layer.blobs[0].data, bias,
        layer.stride, layer.pad, layer.dilation, layer.group,
    )  # fmt: skip
    assert top.shape == ref.shape
    np.testing.assert_allclose(top.data, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", STRATEGIES)
@pytest.mark.parametrize("params,shape", CASES)
def test_gradient(
    params: str, shape: tuple[int, ...], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    force_lowering(monkeypatch, name)
    layer = deconv_layer(params + " " + GAUSS)
    bottom = make_blob(shape, np.random.default_rng(5), name="x")
    assert check_gradient(layer, [bottom], [Blob(dtype=np.float64)]) > 0


def test_is_the_adjoint_of_convolution() -> None:
    # With the same weights and no bias, <conv(x), y> == <x, deconv(y)>:
    # Deconvolution's forward is Convolution's data gradient.
    params = "num_output: 3 kernel_size: 3 stride: 2 pad: 1 group: 1 bias_term: false"
    conv = layer_from(f'name: "c" type: "Convolution" convolution_param {{ {params} }}')
    rng = np.random.default_rng(3)
    x = make_blob((2, 4, 7, 5), rng)  # (size + 2*pad - 3) % 2 == 0
    cx = Blob(dtype=np.float64)
    conv.setup([x], [cx])
    conv.blobs[0].data[...] = rng.normal(size=conv.blobs[0].shape)
    conv.forward([x], [cx])
    deconv = deconv_layer(params.replace("num_output: 3", "num_output: 4"))
    y = make_blob(cx.shape, rng)
    dy = Blob(dtype=np.float64)
    deconv.setup([y], [dy])
    deconv.blobs[0].data[...] = conv.blobs[0].data  # (3, 4, 3, 3) both
    deconv.forward([y], [dy])
    assert dy.shape == x.shape
    np.testing.assert_allclose(np.sum(cx.data * y.data), np.sum(x.data * dy.data))


@pytest.mark.parametrize(
    "params,shape",
    [
        ("num_output: 3 kernel_size: 3 stride: 2", (2, 2, 3, 4)),
        ("num_output: 4 kernel_size: 2 pad: 1 dilation: 2 group: 2", (2, 2, 4, 3)),
    ],
)
def test_force_nd_im2col_matches_2d(params: str, shape: tuple[int, ...]) -> None:
    # Caffe TestNDAgainst2D: forward and every diff agree.
    results = []
    for extra in ("", " force_nd_im2col: true"):
        layer = deconv_layer(params + extra + " " + GAUSS)
        bottom, top = run_forward(layer, shape)
        top.diff[...] = np.random.default_rng(2).normal(size=top.shape)
        layer.backward([top], [True], [bottom])
        results.append([top.data, bottom.diff] + [p.diff for p in layer.blobs])
    for nd, two_d in zip(*results):
        np.testing.assert_allclose(nd, two_d, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("learn_weights", [True, False])
def test_bottom_diff_with_and_without_weight_gradient(learn_weights: bool) -> None:
    # The bottom diff reuses the top diff's columns made by the weight
    # gradient (Caffe's skip_im2col) only when that gradient ran; two
    # backward passes give the same bottom diff and twice the param diffs.
    layer = deconv_layer("num_output: 2 kernel_size: 3 stride: 2 " + GAUSS)
    bottom, top = run_forward(layer, (2, 3, 3, 3))
    layer.param_propagate_down = [learn_weights, True]
    top.diff[...] = np.random.default_rng(4).normal(size=top.shape)
    layer.backward([top], [True], [bottom])
    first = bottom.diff.copy()
    once = [p.diff.copy() for p in layer.blobs]
    layer.backward([top], [True], [bottom])
    np.testing.assert_array_equal(bottom.diff, first)
    for p, d in zip(layer.blobs, once):
        np.testing.assert_allclose(p.diff, 2 * d)
    # The bottom diff is the top diff convolved with the same weights.
    expect = reference_conv_nd(
        top.diff, layer.blobs[0].data, None,
        layer.stride, layer.pad, layer.dilation, layer.group,
    )  # fmt: skip
    np.testing.assert_allclose(bottom.diff, expect, rtol=1e-12, atol=1e-12)
    if not learn_weights:
        assert np.all(layer.blobs[0].diff == 0)


def test_two_bottoms_share_weights() -> None:
    layer = deconv_layer("num_output: 2 kernel_size: 2 stride: 2 " + GAUSS)
    rng = np.random.default_rng(3)
    bottom = [make_blob((2, 3, 2, 3), rng), make_blob((2, 3, 2, 3), rng)]
    top = [Blob(dtype=np.float64), Blob(dtype=np.float64)]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    w, b = layer.blobs[0].data, layer.blobs[1].data
    for x, t in zip(bottom, top):
        ref = reference_deconv_nd(x.data, w, b, (2, 2), (0, 0), (1, 1), 1)
        np.testing.assert_allclose(t.data, ref, rtol=1e-12)
    check_gradient(layer, bottom, [Blob(dtype=np.float64), Blob(dtype=np.float64)])


@pytest.mark.parametrize(
    "params,error,message",
    [
        ("num_output: 4 kernel_size: 3 group: 2", ConfigError, "multiple of group"),
        ("num_output: 4 kernel_size: 3 group: 3", ConfigError, "multiples of group"),
        ("kernel_size: 3", ConfigError, "num_output is required"),
        ("num_output: 2 stride: 2", ConfigError, "kernel_size specified 0 times"),
        ("num_output: 2 kernel_size: 3 pad: 4", ShapeError, "convolution_param.pad"),
    ],
)
def test_errors_name_the_layer_and_field(
    params: str, error: type, message: str
) -> None:
    layer = deconv_layer(params, name="up1")
    with pytest.raises(error) as e:
        layer.setup([Blob((1, 3, 3, 3))], [Blob()])
    assert "layer 'up1' (Deconvolution)" in str(e.value)
    assert message in str(e.value)
    assert "\n" not in str(e.value)
