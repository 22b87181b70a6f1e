"""LRN tests after Caffe's test_lrn_layer.cpp: forward values against Caffe's
ReferenceLRNForward (the formula, in float64), float32 forward and backward
against Caffe's own loops (CrossChannelForward/Backward_cpu's running sums;
WITHIN_CHANNEL's chain of Power, AVE Pooling, Power and Eltwise layers),
finite-difference gradients, in-place runs and Caffe's CHECK failures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import forward_backward, layer_from, rng, run_cli
from gradient_check import check_gradient, make_blob

from caffesolve import backend
from caffesolve.blob import Blob
from caffesolve.errors import ConfigError, ShapeError
from caffesolve.net import Net
from caffesolve.proto import caffe_pb2
from caffesolve.proto.io import parse_prototxt_text

F32 = np.float32
SHAPE = (2, 7, 3, 3)  # Caffe's test blob
ACROSS = 'name: "norm" type: "LRN" lrn_param { %s }'
WITHIN = 'name: "norm" type: "LRN" lrn_param { norm_region: WITHIN_CHANNEL %s }'


def gaussian(shape: tuple[int, ...] = SHAPE, dtype: type = F32) -> Blob:
    b = Blob(shape, "x", dtype=dtype)
    b.data[...] = rng().normal(size=shape)
    return b


def reference_lrn(
    x: np.ndarray, size: int, alpha: float, beta: float, across: bool
) -> np.ndarray:
    """Caffe's ReferenceLRNForward in float64: x / (1 + alpha/size * sum of
    squares over the window)^beta (alpha/size^2 over a square WITHIN)."""
    n, c, h, w = x.shape
    y = np.zeros_like(x, dtype=np.float64)
    half = (size - 1) // 2
    for i in np.ndindex(n, c, h, w):
        nn, cc, hh, ww = i
        if across:
            window = x[nn, max(cc - half, 0) : cc - half + size, hh, ww]
            scale = 1 + alpha / size * np.sum(window.astype(np.float64) ** 2)
        else:
            rows = slice(max(hh - half, 0), hh - half + size)
            cols = slice(max(ww - half, 0), ww - half + size)
            window = x[nn, cc, rows, cols].astype(np.float64)
            scale = 1 + alpha / size**2 * np.sum(window**2)
        y[i] = x[i] / scale**beta
    return y


def caffe_cross_channel(
    x: np.ndarray, dy: np.ndarray, size: int, alpha: float, beta: float, k: float
) -> tuple[np.ndarray, np.ndarray]:
    """Caffe's CrossChannelForward_cpu and CrossChannelBackward_cpu, loop for
    loop in float32: scale as a running sum over channels (head in, tail out),
    then the accumulated ratios the same way."""
    n, c, h, w = x.shape
    pre = (size - 1) // 2
    a = F32(alpha) / F32(size)
    scale = np.empty_like(x)
    padded = np.zeros((n, c + size - 1, h, w), F32)
    padded[:, pre : pre + c] = x * x
    for i in range(n):
        s = np.full((h, w), F32(k), F32)
        for j in range(size):
            s = s + a * padded[i, j]
        scale[i, 0] = s
        for j in range(1, c):
            s = scale[i, j - 1] + a * padded[i, j + size - 1]
            scale[i, j] = s + (-a) * padded[i, j - 1]
    y = np.power(scale, F32(-beta)) * x
    cache = F32(2.0 * float(F32(alpha)) * float(F32(beta)) / size)
    dx = dy * np.power(scale, F32(-beta))
    ratio = np.zeros_like(padded)
    ratio[:, pre : pre + c] = dy * y / scale
    for i in range(n):
        acc = np.zeros((h, w), F32)
        for j in range(size - 1):
            acc = acc + ratio[i, j]
        for j in range(c):
            acc = acc + ratio[i, j + size - 1]
            dx[i, j] = dx[i, j] + (-cache) * (x[i, j] * acc)
            acc = acc - ratio[i, j]
    return y, dx


def caffe_within_channel(
    x: np.ndarray, dy: np.ndarray, size: int, alpha: float, beta: float
) -> tuple[np.ndarray, np.ndarray]:
    """Caffe's WITHIN_CHANNEL chain in float32, layer by layer: square,
    AVE pooling (pad (size-1)/2, sum in window order / size^2), Power
    (1 + alpha * avg)^-beta, product; backward through each in turn."""
    n, c, h, w = x.shape
    pre = (size - 1) // 2
    sq = x * x
    pad = np.zeros((n, c, h + 2 * pre, w + 2 * pre), F32)
    pad[:, :, pre : pre + h, pre : pre + w] = sq
    pooled = np.zeros_like(x)
    for i in range(size):
        for j in range(size):
            pooled = pooled + pad[:, :, i : i + h, j : j + w]
    pooled = pooled / F32(size * size)
    base = pooled * F32(alpha) + F32(1)
    power = np.power(base, F32(-beta))
    y = x * power
    power_diff = dy * x
    pooled_diff = power_diff * ((F32(-beta) * F32(alpha)) * (power / base))
    share = np.zeros_like(pad)
    share[:, :, pre : pre + h, pre : pre + w] = pooled_diff / F32(size * size)
    sq_diff = np.zeros_like(x)
    for i in range(size):  # outputs from the top left: Caffe's order
        for j in range(size):
            sq_diff = sq_diff + share[:, :, i : i + h, j : j + w]
    dx = dy * power + sq_diff * (F32(2) * x)
    return y, dx


# -- setup and forward --------------------------------------------------------


@pytest.mark.parametrize("text", [ACROSS % "", WITHIN % "local_size: 3"])
def test_setup(text: str) -> None:
    """TestSetupAcrossChannels, TestSetupWithinChannel."""
    top = Blob()
    layer_from(text).setup([gaussian()], [top])
    assert top.shape == (2, 7, 3, 3)


@pytest.mark.parametrize(
    "text, size, across",
    [
        (ACROSS % "", 5, True),  # TestForwardAcrossChannels
        (ACROSS % "local_size: 15", 15, True),  # ...LargeRegion
        (WITHIN % "local_size: 3", 3, False),  # TestForwardWithinChannel
    ],
)
def test_forward_matches_reference(text: str, size: int, across: bool) -> None:
    x = gaussian()
    top = Blob()
    layer = layer_from(text)
    layer.setup([x], [top])
    layer.forward([x], [top])
    expected = reference_lrn(x.data, size, 1.0, 0.75, across)
    np.testing.assert_allclose(top.data, expected, atol=1e-5, rtol=0)


def test_forward_hand_computed() -> None:
    """One column of 3 channels, local_size 3, alpha 3, beta 1, k 2: scale_c =
    2 + (3/3) * (x_{c-1}^2 + x_c^2 + x_{c+1}^2)."""
    x = Blob((1, 3, 1, 1))
    x.data[:, :, 0, 0] = [1, 2, 3]
    top = Blob()
    layer = layer_from(ACROSS % "local_size: 3 alpha: 3 beta: 1 k: 2")
    layer.setup([x], [top])
    layer.forward([x], [top])
    np.testing.assert_allclose(
        top.data.ravel(), [1 / (2 + 1 + 4), 2 / (2 + 1 + 4 + 9), 3 / (2 + 4 + 9)]
    )


def test_within_channel_ignores_k_and_divides_by_size_squared() -> None:
    """WITHIN_CHANNEL: Caffe's Power layer has shift 1, not k, and AVE pooling
    divides by size^2 even at the border (the padded window)."""
    x = Blob((1, 1, 1, 3))
    x.data[0, 0, 0] = [1, 2, 3]
    top = Blob()
    layer = layer_from(WITHIN % "local_size: 3 alpha: 9 beta: 1 k: 100")
    layer.setup([x], [top])
    layer.forward([x], [top])
    # alpha / 9 = 1: scale = 1 + sum of the squares in the (clipped) window
    np.testing.assert_allclose(
        top.data.ravel(), [1 / (1 + 1 + 4), 2 / (1 + 1 + 4 + 9), 3 / (1 + 4 + 9)]
    )


# -- float32 against Caffe's loops --------------------------------------------------


@pytest.mark.parametrize("size", [5, 3, 1, 15])
def test_across_channels_float32_matches_caffe_loops(size: int) -> None:
    """AlexNet's parameters: forward and backward within 2 float32 ulps of
    Caffe's running sums (the window is summed in window order, not as a
    running sum: the one allowed reordering)."""
    shape = (2, 16, 3, 4)
    x = gaussian(shape)
    x.data *= 10  # squares large enough for the sums' rounding to show
    dy = rng(7).normal(size=shape).astype(F32)
    text = ACROSS % f"local_size: {size} alpha: 0.0001 beta: 0.75 k: 2"
    y, dx = forward_backward(text, x.data, dy)
    ref_y, ref_dx = caffe_cross_channel(x.data, dy, size, 0.0001, 0.75, 2.0)
    assert y.dtype == dx.dtype == F32
    ulp = np.spacing(np.abs(ref_y))
    assert np.all(np.abs(y - ref_y) <= 2 * ulp)
    scale = np.abs(dy * ref_y / x.data).max()  # the size of dx's terms
    np.testing.assert_allclose(dx, ref_dx, rtol=0, atol=4 * np.spacing(F32(scale)))


def test_within_channel_float32_matches_caffe_layers() -> None:
    """cifar10_full's norm1 parameters: the forward is Caffe's chain bit for
    bit; the backward's AVE pooling adds a window's shares in another order."""
    shape = (2, 3, 5, 6)
    x = gaussian(shape)
    x.data *= 30
    dy = rng(7).normal(size=shape).astype(F32)
    text = WITHIN % "local_size: 3 alpha: 5e-05 beta: 0.75"
    y, dx = forward_backward(text, x.data, dy)
    ref_y, ref_dx = caffe_within_channel(x.data, dy, 3, 5e-05, 0.75)
    np.testing.assert_array_equal(y, ref_y)
    np.testing.assert_allclose(dx, ref_dx, rtol=4e-7, atol=1e-9)


# -- gradients ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        ACROSS % "",  # TestGradientAcrossChannels
        ACROSS % "local_size: 15",  # ...LargeRegion
        ACROSS % "local_size: 3 alpha: 2 beta: 0.6 k: 1.5",
        WITHIN % "local_size: 3",  # TestGradientWithinChannel
        WITHIN % "local_size: 5 alpha: 4 beta: 0.6",
    ],
)
def test_gradient(text: str) -> None:
    layer = layer_from(text)
    bottom = make_blob(SHAPE, rng())
    assert check_gradient(layer, bottom=[bottom], top=[Blob(dtype=np.float64)]) == 126


@pytest.mark.parametrize("text", [ACROSS % "", WITHIN % "local_size: 3"])
def test_in_place_matches_out_of_place(text: str) -> None:
    """Caffe's LRN reads its overwritten input in place; caffesolve keeps a
    copy, so in place gives the out-of-place numbers."""
    x = gaussian()
    dy = rng(3).normal(size=SHAPE).astype(F32)
    y, dx = forward_backward(text, x.data, dy)
    y2, dx2 = forward_backward(text, x.data, dy, in_place=True)
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_array_equal(dx, dx2)


@pytest.mark.parametrize("text", [ACROSS % "", WITHIN % "local_size: 3"])
def test_workers_give_the_same_bits(text: str) -> None:
    """The batch split between two workers: the same numbers as inline."""
    shape = (4, 16, 32, 32)  # 256 KiB: two pieces
    x = gaussian(shape)
    dy = rng(3).normal(size=shape).astype(F32)
    results = []
    try:
        for n in (1, 2):
            backend.set_workers(n)
            results.append(forward_backward(text, x.data, dy))
    finally:
        backend.set_workers(None)
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


def test_reshape_to_a_new_batch_size() -> None:
    """The kept work arrays follow the bottom's shape between iterations."""
    layer = layer_from(ACROSS % "")
    x, top = gaussian(), Blob()
    layer.setup([x], [top])
    layer.forward([x], [top])
    small = gaussian((1, 7, 3, 3))
    small.data[...] = x.data[1:]
    layer.reshape([small], [top])
    layer.forward([small], [top])
    expected = reference_lrn(small.data, 5, 1.0, 0.75, True)
    np.testing.assert_allclose(top.data, expected, atol=1e-5, rtol=0)


# -- errors ------------------------------------------------------------------------


def test_even_local_size_is_an_error() -> None:
    with pytest.raises(
        ConfigError, match=r"lrn_param.local_size: LRN only supports odd"
    ):
        layer_from(ACROSS % "local_size: 4").setup([gaussian()], [Blob()])


def test_even_local_size_names_file_and_layer(tmp_path: Path) -> None:
    """Through the library and the CLI: one line naming the file, the layer
    and the field; `caffesolve time` exits 1 without a traceback."""
    path = tmp_path / "net.prototxt"
    path.write_text(
        'layer { name: "data" type: "Input" top: "data" '
        "input_param { shape { dim: 1 dim: 3 dim: 4 dim: 4 } } }\n"
        'layer { name: "norm1" type: "LRN" bottom: "data" top: "norm1" '
        "lrn_param { local_size: 4 } }\n"
    )
    with pytest.raises(ConfigError) as e:
        Net.from_prototxt(path, caffe_pb2.TEST, quiet=True)
    message = str(e.value)
    assert message.startswith(str(path))
    assert "layer 'norm1' (LRN)" in message and "lrn_param.local_size" in message
    assert "\n" not in message
    code, _, err = run_cli("time", str(path), "--iterations", "1")
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert str(path) in last and "lrn_param.local_size" in last
    assert "Traceback" not in err


def test_bottom_must_be_4d() -> None:
    with pytest.raises(ShapeError, match="Input must have 4 axes"):
        layer_from(ACROSS % "").setup([gaussian((2, 7, 9))], [Blob()])


def test_cifar10_full_norm_layers_parse() -> None:
    """The LRN layers as Caffe's cifar10_full_train_test.prototxt writes them."""
    text = (
        'name: "norm1" type: "LRN" bottom: "pool1" top: "norm1" lrn_param { '
        "local_size: 3 alpha: 5e-05 beta: 0.75 norm_region: WITHIN_CHANNEL }"
    )
    param = parse_prototxt_text(text, caffe_pb2.LayerParameter(), "<test>")
    assert param.lrn_param.norm_region == caffe_pb2.LRNParameter.WITHIN_CHANNEL
    top = Blob()
    layer = layer_from(text)
    x = gaussian((2, 32, 16, 16))
    layer.setup([x], [top])
    layer.forward([x], [top])
    expected = reference_lrn(x.data, 3, float(F32(5e-05)), 0.75, False)
    np.testing.assert_allclose(top.data, expected, atol=1e-6, rtol=0)
