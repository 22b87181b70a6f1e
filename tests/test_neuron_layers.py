"""Neuron layer tests after Caffe's test_neuron_layer.cpp: closed-form forward
values, finite-difference gradients (ReLU with kink handling, Dropout with a
fixed mask), and in-place runs (top is bottom) against out-of-place ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import forward_backward, layer_from
from gradient_check import check_gradient, make_blob

from caffesolve.blob import Blob
from caffesolve.errors import ConfigError, ShapeError
from caffesolve.proto import caffe_pb2

SHAPE = (2, 3, 4, 5)
SLOPE = float(np.float32(0.01))  # the proto float, as Caffe reads it


def gaussian_blob(shape: tuple[int, ...] = SHAPE, seed: int = 1701) -> Blob:
    b = Blob(shape, dtype=np.float64)
    b.data[...] = np.random.default_rng(seed).normal(size=shape)
    return b


# (prototxt, forward reference, derivative reference) for closed forms.
CASES = {
    "ReLU": (
        'name: "r" type: "ReLU"',
        lambda x: np.maximum(x, 0),
        lambda x: (x > 0).astype(float),
    ),
    "ReLUWithNegativeSlope": (
        'name: "r" type: "ReLU" relu_param { negative_slope: 0.01 }',
        lambda x: np.where(x > 0, x, SLOPE * x),
        lambda x: np.where(x > 0, 1.0, SLOPE),
    ),
    "Sigmoid": (
        'name: "s" type: "Sigmoid"',
        lambda x: 1 / (1 + np.exp(-x)),
        lambda x: np.exp(-x) / (1 + np.exp(-x)) ** 2,
    ),
    "TanH": (
        'name: "t" type: "TanH"',
        np.tanh,
        lambda x: 1 / np.cosh(x) ** 2,
    ),
    "ELU": (
        'name: "e" type: "ELU" elu_param { alpha: 0.5 }',
        lambda x: np.where(x > 0, x, 0.5 * (np.exp(x) - 1)),
        lambda x: np.where(x > 0, 1.0, 0.5 * np.exp(x)),
    ),
    "BNLL": (
        'name: "b" type: "BNLL"',
        lambda x: np.log1p(np.exp(x)),
        lambda x: 1 / (1 + np.exp(-x)),
    ),
    "Power": (
        'name: "p" type: "Power" power_param { power: 3 scale: 0.5 shift: 4 }',
        lambda x: (4 + 0.5 * x) ** 3,
        lambda x: 1.5 * (4 + 0.5 * x) ** 2,
    ),
    "PowerSquare": (
        'name: "p" type: "Power" power_param { power: 2 scale: 2 }',
        lambda x: (2 * x) ** 2,
        lambda x: 8 * x,
    ),
    "PowerLinear": (
        'name: "p" type: "Power" power_param { scale: -2 shift: 1 }',
        lambda x: 1 - 2 * x,
        lambda x: np.full_like(x, -2.0),
    ),
    "PowerZero": (
        'name: "p" type: "Power" power_param { power: 0 shift: 3 }',
        lambda x: np.ones_like(x),
        lambda x: np.zeros_like(x),
    ),
    "Exp": (
        'name: "e" type: "Exp" exp_param { base: 2 scale: 0.5 shift: 1 }',
        lambda x: 2.0 ** (1 + 0.5 * x),
        lambda x: 2.0 ** (1 + 0.5 * x) * np.log(2) * 0.5,
    ),
    "ExpDefaultBase": (
        'name: "e" type: "Exp"',
        np.exp,
        np.exp,
    ),
    "Log": (
        'name: "l" type: "Log" log_param { base: 2 scale: 0.5 shift: 5 }',
        lambda x: np.log2(5 + 0.5 * x),
        lambda x: 0.5 / (np.log(2) * (5 + 0.5 * x)),
    ),
    "Swish": (
        'name: "s" type: "Swish" swish_param { beta: 1.5 }',
        lambda x: x / (1 + np.exp(-1.5 * x)),
        lambda x: (
            1 / (1 + np.exp(-1.5 * x))
            + 1.5 * x * np.exp(-1.5 * x) / (1 + np.exp(-1.5 * x)) ** 2
        ),
    ),
    "Clip": (
        'name: "c" type: "Clip" clip_param { min: -0.5 max: 1 }',
        lambda x: np.clip(x, -0.5, 1.0),
        lambda x: ((x >= -0.5) & (x <= 1.0)).astype(float),
    ),
}
KINKS = {"ReLU": [0.0], "ReLUWithNegativeSlope": [0.0], "Clip": [-0.5, 1.0]}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("in_place", [False, True])
def test_forward_backward_closed_form(name: str, in_place: bool) -> None:
    text, f, df = CASES[name]
    x = gaussian_blob().data
    dy = np.random.default_rng(5).uniform(-1, 1, size=SHAPE)
    y, dx = forward_backward(text, x, dy, in_place)
    np.testing.assert_allclose(y, f(x), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(dx, dy * df(x), rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("name", list(CASES))
def test_gradient(name: str) -> None:
    text = CASES[name][0]
    bottom = gaussian_blob((2, 3, 2, 2))
    for kink in KINKS.get(name, []):  # keep inputs off the kinks
        near = np.abs(bottom.data - kink) < 0.02
        bottom.data[near] = kink + 0.05
    check_gradient(layer_from(text), [bottom], [Blob(dtype=np.float64)])


def test_absval() -> None:
    x = gaussian_blob().data
    dy = np.random.default_rng(5).uniform(-1, 1, size=SHAPE)
    y, dx = forward_backward('name: "a" type: "AbsVal"', x, dy, False)
    np.testing.assert_array_equal(y, np.abs(x))
    np.testing.assert_array_equal(dx, np.sign(x) * dy)
    bottom = gaussian_blob((2, 3))
    check_gradient(
        layer_from('name: "a" type: "AbsVal"'),
        [bottom],
        [Blob(dtype=np.float64)],
        kink=0.0,
        kink_range=0.01,
    )
    with pytest.raises(ConfigError, match="in-place"):
        layer_from('name: "a" type: "AbsVal"').setup([bottom], [bottom])


def test_threshold() -> None:
    x = gaussian_blob().data
    y, _ = run_forward(
        'name: "t" type: "Threshold" threshold_param { threshold: 0.3 }', x
    )
    np.testing.assert_array_equal(y, (x > np.float32(0.3)).astype(float))


def run_forward(text: str, x: np.ndarray) -> tuple[np.ndarray, object]:
    layer = layer_from(text)
    bottom = Blob(x.shape, dtype=x.dtype)
    bottom.data[...] = x
    layer.setup([bottom], [bottom])
    layer.forward([bottom], [bottom])
    return bottom.data.copy(), layer


def test_log_and_exp_base_checks() -> None:
    for text in (
        'name: "l" type: "Log" log_param { base: -2 }',
        'name: "l" type: "Log" log_param { base: 1 }',
        'name: "e" type: "Exp" exp_param { base: 0 }',
    ):
        with pytest.raises(ConfigError, match="base"):
            layer_from(text).setup([Blob((2,))], [Blob()])


@pytest.mark.parametrize("name", list(CASES))
def test_float32_keeps_dtype(name: str) -> None:
    text, f, df = CASES[name]
    x = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    dy = np.random.default_rng(5).uniform(-1, 1, size=SHAPE).astype(np.float32)
    y, dx = forward_backward(text, x, dy, True)
    assert y.dtype == np.float32 and dx.dtype == np.float32
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(y, f(x64), rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(dx, dy * df(x64), rtol=2e-5, atol=1e-6)


def test_sigmoid_extremes_are_finite() -> None:
    x = np.array([-1000.0, 0.0, 1000.0], np.float32)
    y, _ = forward_backward(
        'name: "s" type: "Sigmoid"', x, np.ones(3, np.float32), False
    )
    np.testing.assert_array_equal(y, [0.0, 0.5, 1.0])


# -- Dropout ---------------------------------------------------------------------

DROPOUT = 'name: "drop" type: "Dropout" dropout_param { dropout_ratio: %s }'


@pytest.mark.parametrize("ratio", [0.5, 0.75])
def test_dropout_train(ratio: float) -> None:
    x = np.ones((100, 100))
    dy = np.full((100, 100), 2.0)
    y, dx = forward_backward(DROPOUT % ratio, x, dy, False)
    scale = 1 / (1 - ratio)
    kept = y != 0
    np.testing.assert_allclose(y[kept], scale)
    assert abs(kept.mean() - (1 - ratio)) < 0.02
    # Backward routes through the same mask with the same scale.
    np.testing.assert_allclose(dx, np.where(kept, 2.0 * scale, 0.0))


def test_dropout_in_place_same_mask_as_out_of_place() -> None:
    x = gaussian_blob().data
    dy = np.random.default_rng(5).uniform(-1, 1, size=SHAPE)
    y1, dx1 = forward_backward(DROPOUT % 0.5, x, dy, False)
    y2, dx2 = forward_backward(DROPOUT % 0.5, x, dy, True)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(dx1, dx2)


def test_dropout_test_phase_is_identity() -> None:
    x = gaussian_blob().data
    dy = np.random.default_rng(5).uniform(-1, 1, size=SHAPE)
    for in_place in (False, True):
        y, dx = forward_backward(DROPOUT % 0.5, x, dy, in_place, phase=caffe_pb2.TEST)
        np.testing.assert_array_equal(y, x)
        np.testing.assert_array_equal(dx, dy)


def test_dropout_gradient_with_fixed_mask() -> None:
    # Re-seeding the layer's rng before every forward fixes the mask, so the
    # finite differences see the function backward differentiates.
    layer = layer_from(DROPOUT % 0.5)
    forward = layer.forward

    def seeded_forward(bottom: list[Blob], top: list[Blob]) -> None:
        layer.rng = np.random.default_rng(42)
        forward(bottom, top)

    layer.forward = seeded_forward  # type: ignore[method-assign]
    bottom = make_blob((2, 3, 2, 2), np.random.default_rng(1701))
    check_gradient(layer, [bottom], [Blob(dtype=np.float64)])
    assert 0 < np.count_nonzero(layer.mask) < layer.mask.size


def test_dropout_same_seed_same_mask() -> None:
    x = np.ones((10, 10))
    a, _ = forward_backward(DROPOUT % 0.5, x, x, False, seed=3)
    b, _ = forward_backward(DROPOUT % 0.5, x, x, False, seed=3)
    c, _ = forward_backward(DROPOUT % 0.5, x, x, False, seed=4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_dropout_ratio_out_of_range() -> None:
    with pytest.raises(ConfigError, match="dropout_ratio"):
        layer_from(DROPOUT % 1.0).setup([Blob((2,))], [Blob()])


def test_dropout_ratio_zero_keeps_everything() -> None:
    x = gaussian_blob().data
    y, dx = forward_backward(DROPOUT % 0.0, x, x, False)
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(dx, x)


# -- Caffe's own float arithmetic in TanH and Sigmoid ------------------------------


def _libm_tanhf() -> object:
    import ctypes
    import ctypes.util

    fn = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6").tanhf
    fn.restype, fn.argtypes = ctypes.c_float, [ctypes.c_float]
    return fn


def test_tanh_is_libm_tanhf_bit_for_bit() -> None:
    # tanh_layer.cpp calls tanh(float), i.e. tanhf; NumPy's float32 tanh is
    # off by an ulp for about a third of these.
    from caffesolve import kernels

    x = (np.random.default_rng(1701).normal(size=3000) * 3).astype(np.float32)
    tanhf = _libm_tanhf()
    expected = np.array([tanhf(float(v)) for v in x], np.float32)
    layer = layer_from('name: "t" type: "TanH"')
    bottom, top = Blob(x.shape), Blob(x.shape)
    bottom.data[...] = x
    with kernels.forced(numpy_paths=False):
        if not kernels.enabled():
            pytest.skip("numba not installed")
        layer.setup([bottom], [top])
        layer.forward([bottom], [top])
    assert top.data.view(np.uint32).tolist() == expected.view(np.uint32).tolist()
    with kernels.forced(numpy_paths=True):  # NumPy's tanh: within 2 ulps
        layer.forward([bottom], [top])
    np.testing.assert_array_max_ulp(top.data, expected, 2)


def test_sigmoid_is_caffes_double_expression() -> None:
    # sigmoid_layer.cpp: 0.5 * tanh(0.5 * x) + 0.5 with double literals, so
    # the sum is double, rounded to float once; backward top_diff * sigmoid_x
    # in float, times (1. - sigmoid_x) in double.
    import math

    from caffesolve import kernels

    rng = np.random.default_rng(1701)
    x = (rng.normal(size=2000) * 4).astype(np.float32)
    dy = rng.normal(size=2000).astype(np.float32)
    want_y = np.array([0.5 * math.tanh(0.5 * float(v)) + 0.5 for v in x], np.float32)
    first = dy * want_y  # float32 products
    want_dx = np.array(
        [float(a) * (1.0 - float(y)) for a, y in zip(first, want_y)], np.float32
    )
    for numpy_paths in (False, True):
        with kernels.forced(numpy_paths=numpy_paths):
            layer = layer_from('name: "s" type: "Sigmoid"')
            bottom, top = Blob(x.shape), Blob(x.shape)
            bottom.data[...] = x
            layer.setup([bottom], [top])
            layer.forward([bottom], [top])
            top.diff[...] = dy
            layer.backward([top], [True], [bottom])
        if numpy_paths:  # NumPy's double tanh may differ from libm's by an ulp
            np.testing.assert_array_max_ulp(top.data, want_y, 1)
            continue
        assert top.data.tobytes() == want_y.tobytes()
        assert bottom.diff.tobytes() == want_dx.tobytes()


# -- PReLU (Caffe's TestPReLU* cases) -----------------------------------------------

PRELU = 'name: "prelu" type: "PReLU" %s'


def prelu_expected(x: np.ndarray, slopes: np.ndarray, shared: bool) -> np.ndarray:
    """Caffe's TestPReLU check: max(x, 0) + slope_c * min(x, 0)."""
    a = slopes.reshape(1, 1, 1, 1) if shared else slopes.reshape(1, -1, 1, 1)
    return np.maximum(x, 0) + a * np.minimum(x, 0)


def test_prelu_param() -> None:
    """TestPReLUParam: one slope per channel, 0.25 by default."""
    layer = layer_from(PRELU % "")
    layer.setup([gaussian_blob()], [Blob()])
    assert layer.blobs[0].shape == (3,)
    np.testing.assert_array_equal(layer.blobs[0].data, 0.25)


@pytest.mark.parametrize("shared", [False, True])
def test_prelu_forward(shared: bool) -> None:
    """TestPReLUForward (gaussian slopes), TestPReLUForwardChannelShared."""
    text = PRELU % ("prelu_param { channel_shared: true }" if shared else "")
    layer = layer_from(text)
    bottom, top = gaussian_blob(), Blob(dtype=np.float64)
    layer.setup([bottom], [top])
    assert layer.blobs[0].shape == (() if shared else (3,))
    if not shared:
        layer.blobs[0].data[...] = np.random.default_rng(2).normal(size=3)
    layer.forward([bottom], [top])
    expected = prelu_expected(bottom.data, layer.blobs[0].data, shared)
    np.testing.assert_array_equal(top.data, expected)


@pytest.mark.parametrize("shared", [False, True])
def test_prelu_gradient(shared: bool) -> None:
    """TestPReLUGradient, TestPReLUGradientChannelShared (Caffe's checker
    with kink 0, kink range 0.01)."""
    text = PRELU % ("prelu_param { channel_shared: true }" if shared else "")
    layer = layer_from(text)
    bottom = gaussian_blob()
    top = Blob(dtype=np.float64)
    layer.setup([bottom], [top])
    if not shared:
        layer.blobs[0].data[...] = np.random.default_rng(2).normal(size=3)
    check_gradient(layer, [bottom], [top], kink=0.0, kink_range=0.01, setup=False)


def test_prelu_backward_hand_computed() -> None:
    """Slope diff += sum of dy * x where x <= 0 (per channel); dx = dy where
    x > 0, dy * slope elsewhere."""
    layer = layer_from(PRELU % "prelu_param { filler { value: 0.5 } }")
    x = Blob((1, 2, 2), dtype=np.float64)
    x.data.ravel()[:] = [-2, 3, 0, -1]
    top = Blob(dtype=np.float64)
    layer.setup([x], [top])
    layer.forward([x], [top])
    np.testing.assert_array_equal(top.data.ravel(), [-1, 3, 0, -0.5])
    top.diff.ravel()[:] = [1, 2, 3, 4]
    layer.blobs[0].diff[...] = 1
    layer.backward([top], [True], [x])
    expected_slope_diff = [1 + 1 * -2, 1 + 3 * 0 + 4 * -1]
    np.testing.assert_array_equal(layer.blobs[0].diff, expected_slope_diff)
    np.testing.assert_array_equal(x.diff.ravel(), [0.5, 2, 1.5, 2])


def test_prelu_consistency_relu() -> None:
    """TestPReLUConsistencyReLU: default PReLU == ReLU with slope 0.25."""
    x = gaussian_blob().data
    dy = np.random.default_rng(5).normal(size=SHAPE)
    y1, dx1 = forward_backward(PRELU % "", x, dy, False)
    relu = 'name: "r" type: "ReLU" relu_param { negative_slope: 0.25 }'
    y2, dx2 = forward_backward(relu, x, dy, False)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(dx1, dx2)


def test_prelu_in_place() -> None:
    """TestPReLUInPlace: InnerProduct + PReLU in place gives the diffs of the
    out-of-place pair (the slope diff is taken before the bottom diff
    overwrites the shared top diff)."""
    ip = (
        'name: "ip" type: "InnerProduct" inner_product_param { num_output: 3 '
        'weight_filler { type: "gaussian" } }'
    )
    x = gaussian_blob((2, 3, 4, 5))
    dy = np.random.default_rng(5).normal(size=(2, 3))
    results = []
    for in_place in (False, True):
        ip_layer, prelu = layer_from(ip, seed=9), layer_from(PRELU % "")
        middle = Blob(dtype=np.float64)
        top = middle if in_place else Blob(dtype=np.float64)
        ip_layer.setup([x], [middle])
        prelu.setup([middle], [top])
        ip_layer.forward([x], [middle])
        prelu.forward([middle], [top])
        y = top.data.copy()
        top.diff[...] = dy
        prelu.backward([top], [True], [middle])
        ip_layer.backward([middle], [True], [x])
        blobs = [b.diff.copy() for b in ip_layer.blobs + prelu.blobs]
        results.append((y, x.diff.copy(), blobs))
    (y1, dx1, b1), (y2, dx2, b2) = results
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_allclose(dx1, dx2, rtol=1e-12)
    for a, b in zip(b1, b2):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_prelu_checks() -> None:
    with pytest.raises(ShapeError, match="Number of axes of bottom blob must be >=2"):
        layer_from(PRELU % "").setup([Blob((4,))], [Blob()])
    layer = layer_from(PRELU % "")
    layer.blobs = [Blob((4,))]
    with pytest.raises(ConfigError, match="Negative slope size is inconsistent"):
        layer.setup([Blob((2, 3, 4))], [Blob()])


def test_prelu_shared_slope_from_a_caffe_model(tmp_path: Path) -> None:
    """Caffe writes a channel_shared slope as a 0-axis blob: one value and no
    shape field. It loads, and writing it again keeps the 0-axis shape."""
    from caffesolve.net import Net
    from caffesolve.proto.io import parse_prototxt_text

    text = (
        'layer { name: "data" type: "Input" top: "data" input_param { shape '
        "{ dim: 1 dim: 2 dim: 3 } } }\n"
        'layer { name: "prelu" type: "PReLU" bottom: "data" top: "out" '
        "prelu_param { channel_shared: true } }\n"
    )
    param = parse_prototxt_text(text, caffe_pb2.NetParameter(), "<test>")
    net = Net(param, caffe_pb2.TEST, quiet=True)
    model = caffe_pb2.NetParameter()
    layer = model.layer.add()
    layer.name = "prelu"
    layer.blobs.add().data.append(-0.5)  # no shape: Caffe's 0-axis blob
    path = tmp_path / "prelu.caffemodel"
    path.write_bytes(model.SerializeToString())
    net.copy_trained_layers_from(path)
    slope = net.layer_by_name("prelu").blobs[0]
    assert slope.shape == () and float(slope.data) == -0.5
    net.blob_by_name("data").data[...] = -2
    net.forward()
    np.testing.assert_array_equal(net.blob_by_name("out").data, 1)
