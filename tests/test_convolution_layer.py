"""Convolution layer tests after Caffe's test_convolution_layer.cpp: setup
shapes, forward against a direct (loop) reference, gradients by finite
differences (stride, pad, group, dilation, 1x1, no bias, both lowerings),
accumulation of param diffs, propagate_down flags, and Caffe's checks."""

from __future__ import annotations

import numpy as np
import pytest
from conv_reference import reference_conv_nd
from gradient_check import check_gradient, make_blob

from caffesolve.blob import Blob
from caffesolve.errors import ConfigError, ShapeError
from caffesolve.layers import Layer, create_layer
from caffesolve.layers.conv import ConvolutionLayer
from caffesolve.ops import batch_inner, im2col
from caffesolve.ops import conv as lowering
from caffesolve.proto import caffe_pb2
from caffesolve.proto.io import parse_prototxt_text


def conv_layer(params: str, name: str = "conv") -> ConvolutionLayer:
    text = f'name: "{name}" type: "Convolution" convolution_param {{ {params} }}'
    param = parse_prototxt_text(text, caffe_pb2.LayerParameter(), "<test>")
    layer = create_layer(param, caffe_pb2.TRAIN, np.random.default_rng(1701))
    assert isinstance(layer, ConvolutionLayer)
    return layer


GAUSS = (
    'weight_filler { type: "gaussian" std: 0.5 } '
    'bias_filler { type: "gaussian" std: 0.5 }'
)


def reference_conv(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    stride: tuple[int, int],
    pad: tuple[int, int],
    dilation: tuple[int, int],
    group: int,
) -> np.ndarray:
    """Direct cross-correlation, loop by loop (Caffe's caffe_conv in
    test_convolution_layer.cpp, written independently)."""
    n, c, h, wd = x.shape
    m, cg, kh, kw = w.shape
    oh = (h + 2 * pad[0] - (dilation[0] * (kh - 1) + 1)) // stride[0] + 1
    ow = (wd + 2 * pad[1] - (dilation[1] * (kw - 1) + 1)) // stride[1] + 1
    y = np.zeros((n, m, oh, ow))
    mg = m // group
    for ni in range(n):
        for mi in range(m):
            gi = mi // mg
            for yi in range(oh):
                for xi in range(ow):
                    s = 0.0
                    for ci in range(cg):
                        for i in range(kh):
                            for j in range(kw):
                                hh = yi * stride[0] - pad[0] + i * dilation[0]
                                ww = xi * stride[1] - pad[1] + j * dilation[1]
                                if 0 <= hh < h and 0 <= ww < wd:
                                    s += w[mi, ci, i, j] * x[ni, gi * cg + ci, hh, ww]
                    y[ni, mi, yi, xi] = s + (b[mi] if b is not None else 0.0)
    return y


# The strategies of ops/conv.py: "row_shift" stands for the row-shift matrix
# where it applies (vertical stride and dilation 1, one group) and batch-inner
# columns elsewhere, as choose_lowering picks between them; N-D geometries
# always take per-image columns.
STRATEGIES = ["per_image", "batch_inner", "row_shift"]


def forced_name(
    name: str, g: lowering.ConvGeometry, num_output: int, group: int
) -> str:
    """`name` where it applies, else batch-inner columns (2-D), else
    per-image columns (N-D)."""
    for candidate in (name, "batch_inner", "per_image"):
        if lowering.LOWERINGS[candidate].applies(g, num_output, group):
            return candidate
    raise AssertionError("per-image columns apply to every geometry")


def force_lowering(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Make choose_lowering pick `name` for every geometry."""
    monkeypatch.setattr(
        lowering, "choose_lowering", lambda g, m, group: forced_name(name, g, m, group)
    )


def strategy(layer: ConvolutionLayer) -> str:
    return layer.lowerings[0].name


def uses(layer: ConvolutionLayer, name: str) -> bool:
    """Whether the layer runs the strategy that force_lowering(name) forced."""
    return strategy(layer) == forced_name(
        name, layer.geometry, layer.num_output, layer.group
    )


def run_forward(layer: Layer, shape: tuple[int, ...], seed: int = 0) -> tuple:
    rng = np.random.default_rng(seed)
    bottom = make_blob(shape, rng, name="data")
    top = Blob(name="out", dtype=np.float64)
    layer.setup([bottom], [top])
    layer.forward([bottom], [top])
    return bottom, top


# -- setup ---------------------------------------------------------------------------


def test_setup() -> None:
    # Caffe TestSetup: 2x3x6x4 bottom, kernel 3, stride 2, 4 outputs.
    layer = conv_layer("num_output: 4 kernel_size: 3 stride: 2")
    bottom = Blob((2, 3, 6, 4))
    top = Blob()
    layer.setup([bottom], [top])
    assert top.shape == (2, 4, 2, 1)
    assert layer.blobs[0].shape == (4, 3, 3, 3)
    assert layer.blobs[1].shape == (4,)
    # With group 3: weights see one channel each.
    layer = conv_layer("num_output: 3 kernel_size: 3 stride: 2 group: 3")
    layer.setup([Blob((2, 3, 6, 4))], [Blob()])
    assert layer.blobs[0].shape == (3, 1, 3, 3)


def test_setup_hw_fields_and_dilation() -> None:
    layer = conv_layer(
        "num_output: 2 kernel_h: 3 kernel_w: 1 stride_h: 2 stride_w: 1 "
        "pad_h: 1 pad_w: 0 dilation: 2 bias_term: false"
    )
    top = Blob()
    layer.setup([Blob((1, 2, 9, 5))], [top])
    # h: (9 + 2 - (2*2 + 1)) // 2 + 1 = 4; w: (5 - 1) // 1 + 1 = 5
    assert top.shape == (1, 2, 4, 5)
    assert len(layer.blobs) == 1 and layer.blobs[0].shape == (2, 2, 3, 1)


def test_keeps_bottom_dtype_float32() -> None:
    layer = conv_layer("num_output: 2 kernel_size: 3 " + GAUSS)
    bottom, top = Blob((2, 3, 5, 5)), Blob()
    bottom.data[...] = np.random.default_rng(0).normal(size=bottom.shape)
    layer.setup([bottom], [top])
    layer.forward([bottom], [top])
    assert top.data.dtype == np.float32 and layer.blobs[0].data.dtype == np.float32
    ref = reference_conv(
        bottom.data.astype(np.float64),
        layer.blobs[0].data.astype(np.float64),
        layer.blobs[1].data.astype(np.float64),
        (1, 1), (0, 0), (1, 1), 1,
    )  # fmt: skip
    np.testing.assert_allclose(top.data, ref, rtol=1e-5, atol=1e-5)


# -- forward against the direct reference -------------------------------------------

FORWARD_CASES = [
    # (params, bottom shape)
    ("num_output: 4 kernel_size: 3 stride: 2", (2, 3, 6, 4)),
    ("num_output: 3 kernel_size: 3 stride: 2 group: 3", (2, 3, 6, 4)),
    ("num_output: 4 kernel_size: 3 pad: 1", (2, 2, 5, 5)),
    ("num_output: 2 kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1", (2, 3, 7, 6)),
    ("num_output: 2 kernel_size: 3 pad_h: 2 pad_w: 1 stride: 3", (1, 2, 8, 7)),
    ("num_output: 3 kernel_size: 3 dilation: 2", (2, 2, 8, 7)),
    ("num_output: 2 kernel_size: 3 dilation: 2 dilation: 1 pad: 2", (1, 3, 6, 6)),
    ("num_output: 5 kernel_size: 1", (2, 4, 3, 3)),
    ("num_output: 4 kernel_size: 2 group: 2 bias_term: false", (3, 4, 5, 4)),
    ("num_output: 6 kernel_size: 5", (3, 2, 12, 12)),
]


@pytest.mark.parametrize("name", STRATEGIES)
@pytest.mark.parametrize("params,shape", FORWARD_CASES)
def test_forward_matches_direct_reference(
    params: str,
    shape: tuple[int, ...],
    name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    force_lowering(monkeypatch, name)
    layer = conv_layer(params + " " + GAUSS)
    bottom, top = run_forward(layer, shape)
    assert uses(layer, name)
    p = layer.layer_param.convolution_param
    bias = layer.blobs[1].data if p.bias_term else None
    ref = reference_conv(
        bottom.data, layer.blobs[0].data, bias,
        layer.stride, layer.pad, layer.dilation, layer.group,
    )  # fmt: skip
    assert top.shape == ref.shape
    np.testing.assert_allclose(top.data, ref, rtol=1e-12, atol=1e-12)


def test_simple_convolution_constant_values() -> None:
    # Caffe's TestSimpleConvolution idea with constant fillers: every output
    # is sum over the 3x3x3 window of 1 * 1 plus bias 0.1 -> 27.1 inside, and
    # with pad 1 the corner windows see 2x2x3 = 12 inputs -> 12.1.
    layer = conv_layer(
        'num_output: 2 kernel_size: 3 pad: 1 weight_filler { type: "constant" '
        'value: 1 } bias_filler { type: "constant" value: 0.1 }'
    )
    bottom, top = Blob((1, 3, 4, 4), dtype=np.float64), Blob(dtype=np.float64)
    bottom.data[...] = 1
    layer.setup([bottom], [top])
    layer.forward([bottom], [top])
    np.testing.assert_allclose(top.data[0, :, 1, 1], 27.1)
    np.testing.assert_allclose(top.data[0, :, 0, 0], 12.1)
    np.testing.assert_allclose(top.data[0, :, 0, 1], 18.1)


@pytest.mark.parametrize("name", STRATEGIES)
def test_kernel_larger_than_input_gives_one_output_like_caffe(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 4x4 input, kernel 5, stride 2: Caffe's (4 - 5) / 2 + 1 truncates to 1,
    # and im2col reads the row and column past the image as zero.
    force_lowering(monkeypatch, name)
    layer = conv_layer("num_output: 2 kernel_size: 5 stride: 2 " + GAUSS)
    bottom, top = run_forward(layer, (2, 3, 4, 4))
    assert top.shape == (2, 2, 1, 1)
    w, b = layer.blobs[0].data, layer.blobs[1].data
    expect = np.einsum("mcij,ncij->nm", w[:, :, :4, :4], bottom.data) + b
    np.testing.assert_allclose(top.data[:, :, 0, 0], expect, rtol=1e-12)
    check_gradient(layer, [bottom], [top])


def test_two_bottoms_share_weights() -> None:
    layer = conv_layer("num_output: 3 kernel_size: 2 " + GAUSS)
    rng = np.random.default_rng(3)
    b0, b1 = make_blob((2, 2, 4, 4), rng), make_blob((2, 2, 4, 4), rng)
    t0, t1 = Blob(dtype=np.float64), Blob(dtype=np.float64)
    layer.setup([b0, b1], [t0, t1])
    layer.forward([b0, b1], [t0, t1])
    w, b = layer.blobs[0].data, layer.blobs[1].data
    for x, t in ((b0, t0), (b1, t1)):
        ref = reference_conv(x.data, w, b, (1, 1), (0, 0), (1, 1), 1)
        np.testing.assert_allclose(t.data, ref, rtol=1e-12, atol=1e-12)


def test_axis_folds_leading_axes() -> None:
    # axis 2 on a 5-D bottom: the first two axes are the "num" (Caffe num_).
    layer = conv_layer("axis: 2 num_output: 2 kernel_size: 2 " + GAUSS)
    bottom, top = run_forward(layer, (2, 3, 2, 4, 4))
    assert top.shape == (2, 3, 2, 3, 3)
    ref = reference_conv(
        bottom.data.reshape(6, 2, 4, 4), layer.blobs[0].data, layer.blobs[1].data,
        (1, 1), (0, 0), (1, 1), 1,
    )  # fmt: skip
    np.testing.assert_allclose(top.data.reshape(6, 2, 3, 3), ref, atol=1e-12)


# -- gradients ---------------------------------------------------------------------

GRADIENT_CASES = [
    ("num_output: 2 kernel_size: 3 stride: 2", (2, 3, 6, 4)),
    ("num_output: 3 kernel_size: 3 stride: 2 group: 3", (2, 3, 6, 4)),
    ("num_output: 2 kernel_size: 3 pad: 1", (2, 2, 4, 5)),
    (
        "num_output: 2 kernel_h: 2 kernel_w: 3 pad_h: 1 pad_w: 2 "
        "stride_h: 2 stride_w: 1",
        (1, 2, 5, 5),
    ),
    ("num_output: 2 kernel_size: 2 dilation: 2 stride: 1", (1, 2, 6, 5)),
    ("num_output: 3 kernel_size: 1", (2, 3, 3, 3)),
    ("num_output: 4 kernel_size: 1 stride: 2 group: 2", (2, 2, 5, 5)),
    ("num_output: 4 kernel_size: 2 group: 2 bias_term: false", (2, 4, 4, 3)),
]


@pytest.mark.parametrize("name", STRATEGIES)
@pytest.mark.parametrize("params,shape", GRADIENT_CASES)
def test_gradient(
    params: str,
    shape: tuple[int, ...],
    name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    force_lowering(monkeypatch, name)
    layer = conv_layer(params + " " + GAUSS)
    rng = np.random.default_rng(5)
    bottom, top = make_blob(shape, rng, name="x"), Blob(dtype=np.float64)
    assert check_gradient(layer, [bottom], [top]) > 0
    assert uses(layer, name)


@pytest.mark.parametrize("piece_bytes", [1, 1100])
def test_gradient_bottom_diff_in_row_pieces(
    piece_bytes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Backward folds the column matrix back a few output rows at a time
    # (one row per piece, or 2 rows with a shorter last piece of 1 row).
    force_lowering(monkeypatch, "batch_inner")
    monkeypatch.setattr(batch_inner, "COL_PIECE_BYTES", piece_bytes)
    layer = conv_layer("num_output: 2 kernel_size: 2 pad: 1 stride: 1 " + GAUSS)
    rng = np.random.default_rng(8)
    bottom, top = make_blob((2, 2, 4, 3), rng), Blob(dtype=np.float64)
    check_gradient(layer, [bottom], [top], check_params=False)
    g = layer.geometry
    block = im2col.col2im_row_block(g, 8, piece_bytes)
    assert block == (1 if piece_bytes == 1 else 2) and g.out_h == 5


def test_lenet_lowerings() -> None:
    # LeNet's conv1 (one channel, large planes): per-image columns; conv2:
    # batch-inner with the row-shift matrix.
    for params, shape, name in (
        ("num_output: 20 kernel_size: 5", (4, 1, 28, 28), "per_image"),
        ("num_output: 50 kernel_size: 5", (64, 20, 12, 12), "row_shift"),
    ):
        layer = conv_layer(params + " " + GAUSS)
        bottom = Blob(shape, dtype=np.float32)
        layer.setup([bottom], [Blob(dtype=np.float32)])
        assert strategy(layer) == name


@pytest.mark.parametrize("name", ["per_image", "row_shift"])
def test_float32_lenet_conv_matches_float64_reference(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # float32 end to end (the run-copy im2col, per-image or row-shift
    # GEMMs): forward, bias/weight diffs and bottom diff close to a float64
    # computation of the same layer.
    force_lowering(monkeypatch, name)
    shape = (3, 2, 9, 8)
    grads = {}
    for dtype in (np.float32, np.float64):
        layer = conv_layer("num_output: 4 kernel_size: 3 pad: 1 " + GAUSS)
        bottom, top = Blob(shape, dtype=dtype), Blob(dtype=dtype)
        bottom.data[...] = np.random.default_rng(3).normal(size=shape)
        layer.setup([bottom], [top])
        if dtype == np.float32:
            weights = [b.data.astype(np.float64) for b in layer.blobs]
        else:
            for blob, w in zip(layer.blobs, weights):
                blob.data[...] = w
        layer.forward([bottom], [top])
        top.diff[...] = np.random.default_rng(4).normal(size=top.shape)
        layer.backward([top], [True], [bottom])
        grads[dtype] = (top.data, bottom.diff, *(b.diff for b in layer.blobs))
        assert strategy(layer) == name
    for got, ref in zip(grads[np.float32], grads[np.float64]):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_gradient_two_bottoms() -> None:
    layer = conv_layer("num_output: 2 kernel_size: 2 pad: 1 " + GAUSS)
    rng = np.random.default_rng(6)
    bottom = [make_blob((1, 2, 3, 3), rng), make_blob((1, 2, 3, 3), rng)]
    top = [Blob(dtype=np.float64), Blob(dtype=np.float64)]
    check_gradient(layer, bottom, top)


def test_param_diffs_accumulate_and_bottom_diff_overwritten() -> None:
    layer = conv_layer("num_output: 2 kernel_size: 2 " + GAUSS)
    bottom, top = run_forward(layer, (2, 2, 4, 4))
    top.diff[...] = np.random.default_rng(1).normal(size=top.shape)
    layer.backward([top], [True], [bottom])
    once = [b.diff.copy() for b in layer.blobs]
    dx = bottom.diff.copy()
    bottom.diff[...] = 123.0
    layer.forward([bottom], [top])
    layer.backward([top], [True], [bottom])
    for b, d in zip(layer.blobs, once):
        np.testing.assert_allclose(b.diff, 2 * d, rtol=1e-12)
    np.testing.assert_allclose(bottom.diff, dx, rtol=1e-12)


def test_bias_and_weight_diff_closed_form() -> None:
    # d bias[m] = sum of top diff over n, y, x; 1x1 kernel: dW[m, c] =
    # sum_{n,y,x} dy[n,m,y,x] * x[n,c,y,x].
    layer = conv_layer("num_output: 3 kernel_size: 1 " + GAUSS)
    bottom, top = run_forward(layer, (2, 4, 3, 5))
    dy = np.random.default_rng(2).normal(size=top.shape)
    top.diff[...] = dy
    layer.backward([top], [True], [bottom])
    np.testing.assert_allclose(layer.blobs[1].diff, dy.sum(axis=(0, 2, 3)))
    dw = np.einsum("nmyx,ncyx->mc", dy, bottom.data)
    np.testing.assert_allclose(layer.blobs[0].diff[:, :, 0, 0], dw, rtol=1e-12)
    w = layer.blobs[0].data[:, :, 0, 0]
    np.testing.assert_allclose(bottom.diff, np.einsum("nmyx,mc->ncyx", dy, w))


def test_propagate_down_flags() -> None:
    layer = conv_layer("num_output: 2 kernel_size: 2 " + GAUSS)
    bottom, top = run_forward(layer, (1, 2, 3, 3))
    top.diff[...] = 1.0
    bottom.diff[...] = 7.0
    layer.param_propagate_down = [False, True]
    layer.backward([top], [False], [bottom])
    assert np.all(bottom.diff == 7.0)  # untouched
    assert np.all(layer.blobs[0].diff == 0)
    np.testing.assert_allclose(layer.blobs[1].diff, [4.0, 4.0])
    layer.param_propagate_down = [True, False]
    layer.backward([top], [True], [bottom])
    np.testing.assert_allclose(layer.blobs[1].diff, [4.0, 4.0])
    assert np.any(layer.blobs[0].diff != 0)
    assert not np.any(bottom.diff == 7.0)


@pytest.mark.parametrize("name", STRATEGIES)
def test_backward_twice_without_forward(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Backward twice without a new forward: the weight gradient must not use
    # a column buffer that the bottom gradient overwrote.
    force_lowering(monkeypatch, name)
    layer = conv_layer("num_output: 2 kernel_size: 3 pad: 1 " + GAUSS)
    bottom, top = run_forward(layer, (2, 2, 4, 4))
    top.diff[...] = np.random.default_rng(4).normal(size=top.shape)
    layer.backward([top], [True], [bottom])
    first = layer.blobs[0].diff.copy()
    layer.backward([top], [True], [bottom])
    np.testing.assert_allclose(layer.blobs[0].diff, 2 * first, rtol=1e-12)


def test_reshape_to_new_batch_size() -> None:
    layer = conv_layer("num_output: 2 kernel_size: 3 " + GAUSS)
    bottom, top = run_forward(layer, (2, 1, 6, 6))
    bottom2 = make_blob((5, 1, 6, 6), np.random.default_rng(9))
    layer.reshape([bottom2], [top])
    layer.forward([bottom2], [top])
    ref = reference_conv(
        bottom2.data, layer.blobs[0].data, layer.blobs[1].data,
        (1, 1), (0, 0), (1, 1), 1,
    )  # fmt: skip
    np.testing.assert_allclose(top.data, ref, atol=1e-12)


def test_same_seed_same_weights() -> None:
    a = conv_layer("num_output: 3 kernel_size: 3 " + GAUSS)
    b = conv_layer("num_output: 3 kernel_size: 3 " + GAUSS)
    for layer in (a, b):
        layer.setup([Blob((1, 2, 5, 5))], [Blob()])
    np.testing.assert_array_equal(a.blobs[0].data, b.blobs[0].data)
    assert np.std(a.blobs[0].data) > 0.1


# -- Caffe's checks ----------------------------------------------------------------


@pytest.mark.parametrize(
    "params,shape,message",
    [
        ("num_output: 4 kernel_size: 3 group: 2", (1, 3, 5, 5), "multiple of group"),
        ("num_output: 3 kernel_size: 3 group: 2", (1, 4, 5, 5), "multiples of group"),
        ("kernel_size: 3", (1, 3, 5, 5), "num_output is required"),
        ("num_output: 2", (1, 3, 5, 5), "kernel_size specified 0 times"),
        ("num_output: 2 kernel_size: 0", (1, 3, 5, 5), "Filter dimensions"),
        (
            "num_output: 2 kernel_size: 3 kernel_h: 3 kernel_w: 3",
            (1, 1, 5, 5),
            "not both",
        ),
        ("num_output: 2 kernel_size: 3 stride: 0", (1, 1, 5, 5), "Stride dimensions"),
        (
            "num_output: 2 kernel_size: 3 kernel_size: 3 kernel_size: 3",
            (1, 1, 5, 5),
            "kernel_size specified 3 times; 2 spatial dims",
        ),
        (
            "num_output: 2 kernel_h: 3 kernel_w: 3",
            (1, 2, 5, 5, 5),
            "kernel_h & kernel_w can only be used for 2D convolution",
        ),
        (
            "num_output: 2 kernel_size: 3 stride: 1 stride: 2",
            (1, 2, 5, 5, 5),
            "stride specified 2 times; 3 spatial dims",
        ),
        (
            "num_output: 2 kernel_size: 3 axis: 4",
            (1, 2, 5, 5),
            "convolution_param.axis",
        ),
    ],
)
def test_config_errors_name_the_layer(
    params: str, shape: tuple[int, ...], message: str
) -> None:
    layer = conv_layer(params, name="conv7")
    with pytest.raises(ConfigError) as e:
        layer.setup([Blob(shape)], [Blob()])
    assert "layer 'conv7' (Convolution)" in str(e.value)
    assert message in str(e.value)


def test_shape_errors() -> None:
    layer = conv_layer("num_output: 2 kernel_size: 3", name="c1")
    top = Blob()
    layer.setup([Blob((1, 3, 5, 5))], [top])
    with pytest.raises(ShapeError, match=r"layer 'c1'.*incompatible.*4 channels"):
        layer.reshape([Blob((1, 4, 5, 5), name="x")], [top])
    with pytest.raises(ShapeError, match="larger than the padded bottom"):
        layer.reshape([Blob((1, 3, 2, 5))], [top])
    layer = conv_layer("num_output: 2 kernel_size: 3", name="c2")
    with pytest.raises(ShapeError, match="shape mismatch"):
        layer.setup([Blob((1, 3, 5, 5)), Blob((1, 3, 6, 5))], [Blob(), Blob()])


def test_preset_blobs_checked() -> None:
    layer = conv_layer("num_output: 2 kernel_size: 3", name="c3")
    layer.blobs = [Blob((2, 3, 3, 2)), Blob((2,))]
    with pytest.raises(
        ShapeError, match=r"Incorrect weight shape: expected shape 2 3 3 3"
    ):
        layer.setup([Blob((1, 3, 5, 5))], [Blob()])


# -- N-D, 0-D, depthwise and Sobel (Caffe's TestSimple3DConvolution,
# Test0DConvolution, TestNDAgainst2D, TestSobelConvolution) ------------------------

ND_CASES = [
    # (params, bottom shape): 3-D, 3-D dilated, 1-D, 3-D grouped non-cubic
    ("num_output: 3 kernel_size: 3 stride: 2", (2, 3, 5, 6, 4)),
    ("num_output: 2 kernel_size: 2 dilation: 2 pad: 1", (1, 2, 5, 4, 5)),
    ("num_output: 4 kernel_size: 3 pad: 1 stride: 2", (2, 3, 7)),
    (
        "num_output: 4 kernel_size: 2 kernel_size: 1 kernel_size: 3 "
        "stride: 1 stride: 2 stride: 1 pad: 0 pad: 1 pad: 1 group: 2",
        (1, 4, 3, 4, 4),
    ),
]


@pytest.mark.parametrize("params,shape", ND_CASES)
def test_nd_forward_matches_direct_reference(
    params: str, shape: tuple[int, ...]
) -> None:
    layer = conv_layer(params + " " + GAUSS)
    bottom, top = run_forward(layer, shape)
    assert strategy(layer) == "per_image"
    ref = reference_conv_nd(
        bottom.data, layer.blobs[0].data, layer.blobs[1].data,
        layer.stride, layer.pad, layer.dilation, layer.group,
    )  # fmt: skip
    assert top.shape == ref.shape
    np.testing.assert_allclose(top.data, ref, rtol=1e-12, atol=1e-12)


def test_3d_setup_shapes() -> None:
    # Caffe TestSimple3DConvolution: 2x3x5x6x4, kernel 3 stride 2, 4 outputs.
    layer = conv_layer("num_output: 4 kernel_size: 3 stride: 2")
    top = Blob()
    layer.setup([Blob((2, 3, 5, 6, 4))], [top])
    assert top.shape == (2, 4, 2, 2, 1)
    assert layer.blobs[0].shape == (4, 3, 3, 3, 3)


@pytest.mark.parametrize("params,shape", ND_CASES)
def test_nd_gradient(params: str, shape: tuple[int, ...]) -> None:
    layer = conv_layer(params + " " + GAUSS)
    rng = np.random.default_rng(5)
    bottom, top = make_blob(shape, rng, name="x"), Blob(dtype=np.float64)
    assert check_gradient(layer, [bottom], [top]) > 0


def test_0d_convolution_is_a_product_over_the_channel_axis() -> None:
    # Caffe Test0DConvolution: axis 3 of a 2x3x6x4 bottom leaves no spatial
    # axes: top[n, h, w, o] = sum_c W[o, c] x[n, h, w, c] + b[o].
    layer = conv_layer("num_output: 3 axis: 3 " + GAUSS)
    bottom, top = run_forward(layer, (2, 3, 6, 4))
    assert top.shape == (2, 3, 6, 3)
    w, b = layer.blobs[0].data, layer.blobs[1].data
    assert w.shape == (3, 4)
    np.testing.assert_allclose(top.data, bottom.data @ w.T + b, rtol=1e-12)
    check_gradient(layer, [bottom], [top])


@pytest.mark.parametrize("name", STRATEGIES)
@pytest.mark.parametrize(
    "params,shape",
    [
        ("num_output: 3 kernel_size: 3 stride: 2", (2, 3, 6, 4)),
        ("num_output: 2 kernel_h: 3 kernel_w: 2 pad: 1 dilation: 2", (2, 2, 7, 6)),
        ("num_output: 4 kernel_size: 3 group: 2 pad: 1", (2, 4, 5, 5)),
    ],
)
def test_force_nd_im2col_matches_2d(
    params: str, shape: tuple[int, ...], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Caffe TestNDAgainst2D: force_nd_im2col runs the N-D path on a 2-D
    # bottom; forward, bottom diff and weight/bias diffs agree with every
    # 2-D strategy (bit for bit with per-image columns: the same GEMMs).
    force_lowering(monkeypatch, name)
    results = []
    for extra in ("", " force_nd_im2col: true"):
        layer = conv_layer(params + extra + " " + GAUSS)
        bottom, top = run_forward(layer, shape)
        top.diff[...] = np.random.default_rng(2).normal(size=top.shape)
        layer.backward([top], [True], [bottom])
        results.append([top.data, bottom.diff] + [p.diff for p in layer.blobs])
    assert strategy(layer) == "per_image"
    for nd, two_d in zip(results[1], results[0]):
        if name == "per_image":
            np.testing.assert_array_equal(nd, two_d)
        np.testing.assert_allclose(nd, two_d, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", STRATEGIES)
@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise_convolution(
    name: str, multiplier: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # group = channels (MobileNet's depthwise layers), one or two outputs per
    # channel: each output sees its own input channel only.
    force_lowering(monkeypatch, name)
    channels = 4
    layer = conv_layer(
        f"num_output: {channels * multiplier} group: {channels} kernel_size: 3 "
        "pad: 1 stride: 2 " + GAUSS
    )
    bottom, top = run_forward(layer, (2, channels, 7, 6))
    w, b = layer.blobs[0].data, layer.blobs[1].data
    assert w.shape == (channels * multiplier, 1, 3, 3)
    ref = reference_conv_nd(bottom.data, w, b, (2, 2), (1, 1), (1, 1), channels)
    np.testing.assert_allclose(top.data, ref, rtol=1e-12, atol=1e-12)
    check_gradient(layer, [bottom], [top])


def test_sobel_convolution_equals_two_separable_passes() -> None:
    # Caffe TestSobelConvolution: the 3x3 Sobel filter [[-1, 0, 1], [-2, 0, 2],
    # [-1, 0, 1]] summed over 3 channels equals a 3x1 pass with [1, 2, 1]
    # over the channels followed by a 1x3 pass with [-1, 0, 1] (non-square
    # kernels and strides).
    rng = np.random.default_rng(0)
    bottom = make_blob((2, 3, 6, 4), rng)
    sobel = conv_layer("num_output: 1 kernel_size: 3 stride: 2 bias_term: false")
    top = Blob(dtype=np.float64)
    sobel.setup([bottom], [top])
    sobel.blobs[0].data[...] = np.outer([1, 2, 1], [-1, 0, 1])
    sobel.forward([bottom], [top])
    first = conv_layer(
        "num_output: 1 kernel_h: 3 kernel_w: 1 stride_h: 2 stride_w: 1 bias_term: false"
    )
    mid = Blob(dtype=np.float64)
    first.setup([bottom], [mid])
    first.blobs[0].data[...] = np.array([1, 2, 1]).reshape(1, 1, 3, 1)
    first.forward([bottom], [mid])
    second = conv_layer(
        "num_output: 1 kernel_h: 1 kernel_w: 3 stride_h: 1 stride_w: 2 bias_term: false"
    )
    out = Blob(dtype=np.float64)
    second.setup([mid], [out])
    second.blobs[0].data[...] = np.array([-1, 0, 1]).reshape(1, 1, 1, 3)
    second.forward([mid], [out])
    assert out.shape == top.shape == (2, 1, 2, 1)
    np.testing.assert_allclose(out.data, top.data, rtol=1e-12, atol=1e-12)
    # And by hand for image 0, output (0, 0): rows 0..2, columns 0..2.
    x = bottom.data[0].sum(axis=0)
    expect = sum(
        np.outer([1, 2, 1], [-1, 0, 1])[i, j] * x[i, j]
        for i in range(3)
        for j in range(3)
    )
    assert top.data[0, 0, 0, 0] == pytest.approx(expect, rel=1e-12)


# -- chunks (ops/conv.py ChunkedLowering) -------------------------------------------


@pytest.mark.parametrize(
    "name,chunk_bytes,chunk",
    [
        ("per_image", 1, 1),
        ("per_image", 3000, 2),  # an image's columns: 4 * 18 * 20 bytes
        ("row_shift", 1, 1),
        ("row_shift", 600, 2),  # an image's row block: 4 * 3*2*3 * 4 bytes
    ],
)
def test_chunks_with_a_shorter_last_chunk(
    name: str, chunk_bytes: int, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Chunks of one image, or of two with a last chunk of one (5 images in
    # segments of 3 and 2): forward against the direct reference, and
    # gradients by finite differences.
    force_lowering(monkeypatch, name)
    monkeypatch.setattr(lowering, "CHUNK_BYTES", chunk_bytes)
    monkeypatch.setattr(lowering, "KEEP_COLUMNS_BYTES", 0)
    params = "num_output: 3 kernel_size: 3 pad: 1 " + GAUSS
    layer = conv_layer(params)
    bottom, top = run_forward(layer, (5, 2, 5, 4))
    assert strategy(layer) == name and layer.lowerings[0].chunk == chunk
    ref = reference_conv(
        bottom.data, layer.blobs[0].data, layer.blobs[1].data,
        (1, 1), (1, 1), (1, 1), 1,
    )  # fmt: skip
    np.testing.assert_allclose(top.data, ref, rtol=1e-12, atol=1e-12)
    layer = conv_layer(params)
    bottom = make_blob((5, 2, 5, 4), np.random.default_rng(7))
    check_gradient(layer, [bottom], [Blob(dtype=np.float64)])


@pytest.mark.parametrize("name", ["per_image", "row_shift", "batch_inner"])
def test_weight_gradient_sums_over_images_within_float32_rounding(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The weight gradient sums the images' products in chunks and segments,
    # not image by image as Caffe's weight_cpu_gemm accumulates (issue 18
    # allows it): in float32 it agrees with the per-image sum of float64
    # products to float32 rounding, rtol 1e-5 of the largest entry.
    force_lowering(monkeypatch, name)
    monkeypatch.setattr(lowering, "CHUNK_BYTES", 2000)
    monkeypatch.setattr(lowering, "KEEP_COLUMNS_BYTES", 0)
    layer = conv_layer("num_output: 4 kernel_size: 3 pad: 1 " + GAUSS)
    bottom, top = Blob((9, 3, 8, 8)), Blob()
    bottom.data[...] = np.random.default_rng(1).normal(size=bottom.shape)
    layer.setup([bottom], [top])
    layer.forward([bottom], [top])
    top.diff[...] = np.random.default_rng(2).normal(size=top.shape)
    layer.backward([top], [False], [bottom])
    x = bottom.data.astype(np.float64)
    dy = top.diff.astype(np.float64)
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    expect = np.zeros(layer.blobs[0].shape)
    for n in range(9):  # Caffe's order: image by image
        for i in range(3):
            for j in range(3):
                window = padded[n, :, i : i + 8, j : j + 8]
                expect[:, :, i, j] += np.einsum("myx,cyx->mc", dy[n], window)
    got = layer.blobs[0].diff
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expect, rtol=0, atol=1e-5 * np.abs(expect).max())


def test_small_batches_keep_their_columns_large_ones_are_chunked() -> None:
    # LeNet's conv1 at batch 64 (3.7 MB of columns): one chunk per segment,
    # the columns kept for the weight gradient; CIFAR-10's conv1 at batch
    # 100 (31 MB): chunks of one image's 307 KB, remade in backward.
    for shape, m, keeps, chunk in (
        ((64, 1, 28, 28), 20, True, 32),
        ((100, 3, 32, 32), 32, False, 1),
    ):
        pad = 0 if shape[1] == 1 else 2
        layer = conv_layer(f"num_output: {m} kernel_size: 5 pad: {pad} " + GAUSS)
        layer.setup([Blob(shape)], [Blob()])
        lowering_ = layer.lowerings[0]
        assert strategy(layer) == "per_image"
        assert lowering_.keeps_columns is keeps and lowering_.chunk == chunk
