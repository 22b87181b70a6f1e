"""STOCHASTIC pooling after Caffe's test_stochastic_pooling.cpp (whose tests
run on the GPU only, as the layer does in Caffe): setup, TRAIN samples a
window value and favours large ones, TEST stays within the window, the
gradient check with the seed reset before each forward (Caffe's
GradientChecker does the same); plus the sampling rule of pooling_layer.cu
worked by hand (the float threshold, `>=`), the sample frequencies, the
diff routed to the sample, seeding from the net's rng, and the TEST formula
sum(x*x) / sum(x) with its gradient."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SEED, layer_from
from gradient_check import check_gradient

from caffesolve.blob import Blob
from caffesolve.layers.pooling import PoolingLayer
from caffesolve.net import Net
from caffesolve.ops import pooling
from caffesolve.ops.pooling import PoolGeometry
from caffesolve.proto import caffe_pb2
from caffesolve.proto.io import parse_prototxt_text

STOCHASTIC_3x3 = "pool: STOCHASTIC kernel_size: 3 stride: 2"


def stochastic_layer(
    params: str = STOCHASTIC_3x3, phase: int = caffe_pb2.TRAIN, seed: int = SEED
) -> PoolingLayer:
    text = f'name: "pool" type: "Pooling" pooling_param {{ {params} }}'
    layer = layer_from(text, phase, seed)
    assert isinstance(layer, PoolingLayer)
    return layer


def uniform_bottom(dtype: type = np.float64) -> Blob:
    """Caffe's fixture: 2x3x6x5, uniform in [0.1, 1]."""
    b = Blob((2, 3, 6, 5), dtype=dtype)
    b.data[...] = np.random.default_rng(SEED).uniform(0.1, 1.0, size=b.shape)
    return b


def windows(x: np.ndarray, y: int, z: int) -> np.ndarray:
    """Window (y, z) of kernel 3, stride 2 (clipped to the image), per plane."""
    return x[:, :, 2 * y : 2 * y + 3, 2 * z : 2 * z + 3]


def test_setup() -> None:
    layer, bottom, top = stochastic_layer(), uniform_bottom(), Blob(dtype=np.float64)
    layer.setup([bottom], [top])
    assert top.shape == (2, 3, 3, 2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stochastic_train_samples_window_values(dtype: type) -> None:
    # Caffe TestStochastic: every output is one of its window's values, and
    # their mean beats the data's (large values are picked more often).
    layer, bottom, top = stochastic_layer(), uniform_bottom(dtype), Blob(dtype=dtype)
    layer.setup([bottom], [top])
    layer.forward([bottom], [top])
    x = bottom.data
    for y in range(3):
        for z in range(2):
            hit = (windows(x, y, z) == top.data[:, :, y : y + 1, z : z + 1]).any(
                axis=(2, 3)
            )
            assert hit.all()
    assert top.data.mean() >= 0.55
    assert top.data.dtype == dtype


def test_stochastic_test_phase_is_below_the_window_max() -> None:
    # Caffe TestStochasticTestPhase: each output is <= some window value.
    layer = stochastic_layer(phase=caffe_pb2.TEST)
    bottom, top = uniform_bottom(), Blob(dtype=np.float64)
    layer.setup([bottom], [top])
    layer.forward([bottom], [top])
    for y in range(3):
        for z in range(2):
            top_yz = top.data[:, :, y : y + 1, z : z + 1]
            assert (top_yz <= windows(bottom.data, y, z)).any(axis=(2, 3)).all()


def test_test_phase_value_weighted_average_by_hand() -> None:
    # sum(x^2) / (FLT_MIN + sum(x)): (1 + 4 + 9 + 16) / 10 = 3; a window of
    # zeros gives 0 / FLT_MIN = 0 instead of a division by zero.
    x = np.array([[[[1.0, 2.0, 0.0, 0.0], [3.0, 4.0, 0.0, 0.0]]]], np.float32)
    top = np.empty((1, 1, 1, 2), np.float32)
    pooling.stochastic_pool_test(x, PoolGeometry(1, 1, 2, 4, 2, 2, 2, 2), top)
    assert top[0, 0, 0].tolist() == [3.0, 0.0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "uniform,expect",
    [
        (0.05, 0),  # thres 0.5: the first cumsum, 1, reaches it
        (0.125, 1),  # thres 1.25: 1 < 1.25 <= 1 + 2
        (0.3, 1),  # float(0.3 * 10) is exactly 3.0, and 3 >= 3: the second
        (0.5, 2),  # 5 <= 6
        (1.0, 3),  # the top of (0, 1]: the last element
    ],
)
def test_train_sampling_rule_by_hand(uniform: float, expect: int, dtype: type) -> None:
    # StoPoolForwardTrain over the window [1, 2; 3, 4] (sum 10): thres =
    # float(u * 10), then the first element where the running sum >= thres.
    # In float64, 0.3 * 10 is 3.0000000000000004 and would pick the third;
    # Caffe's `const float thres` rounds it to 3.0.
    x = np.array([[[[1.0, 2.0], [3.0, 4.0]]]], dtype)
    g = PoolGeometry(1, 1, 2, 2, 2, 2, 2, 2)
    top, index = np.empty((1, 1, 1, 1), dtype), np.empty((1, 1, 1, 1), np.uint8)
    u = np.full((1, 1, 1, 1), uniform, dtype)
    pooling.stochastic_pool_train(x, g, u, top, index)
    assert index.item() == expect
    assert top.item() == x.reshape(-1)[expect]


def test_nothing_sampled_gives_zero_and_no_diff() -> None:
    # A window holding NaN never reaches its threshold: Caffe leaves the top
    # untouched (ours: 0) and nothing is routed back.
    x = np.array([[[[1.0, np.nan], [3.0, 4.0]]]], np.float32)
    g = PoolGeometry(1, 1, 2, 2, 2, 2, 2, 2)
    top, index = np.empty((1, 1, 1, 1), np.float32), np.empty((1, 1, 1, 1), np.uint8)
    pooling.stochastic_pool_train(x, g, np.ones_like(top), top, index)
    assert top.item() == 0.0 and index.item() == g.area


def test_sample_frequencies_follow_the_values() -> None:
    # One window [1, 2; 3, 4]: element k is drawn with probability (k+1)/10.
    layer = stochastic_layer("pool: STOCHASTIC kernel_size: 2 stride: 2")
    bottom, top = Blob((4000, 1, 2, 2), dtype=np.float64), Blob(dtype=np.float64)
    bottom.data[...] = [[1.0, 2.0], [3.0, 4.0]]
    layer.setup([bottom], [top])
    counts = np.zeros(4)
    for _ in range(5):
        layer.forward([bottom], [top])
        counts += np.bincount(top.data.reshape(-1).astype(int) - 1, minlength=4)
    # 20,000 draws: the standard error of each share is below 0.0035.
    np.testing.assert_allclose(counts / counts.sum(), [0.1, 0.2, 0.3, 0.4], atol=0.015)


def test_backward_routes_the_diff_to_the_sample() -> None:
    layer, bottom, top = stochastic_layer(), uniform_bottom(), Blob(dtype=np.float64)
    layer.setup([bottom], [top])
    layer.forward([bottom], [top])
    top.diff[...] = np.random.default_rng(3).normal(size=top.shape)
    bottom.diff[...] = np.nan
    layer.backward([top], [True], [bottom])
    # Expected: each top diff added where its window's sampled value sits.
    expect = np.zeros(bottom.shape)
    x = bottom.data
    for n in range(2):
        for c in range(3):
            for y in range(3):
                for z in range(2):
                    win = windows(x, y, z)[n, c]
                    i, j = np.argwhere(win == top.data[n, c, y, z])[0]
                    expect[n, c, 2 * y + i, 2 * z + j] += top.diff[n, c, y, z]
    np.testing.assert_allclose(bottom.diff, expect, rtol=1e-15)


def test_gradient_train() -> None:
    # Caffe's TestGradient: GradientChecker(1e-4, 1e-2), which resets the
    # random seed before every forward so that each samples alike.
    layer = stochastic_layer()
    forward = layer.forward

    def reseeded(bottom: list[Blob], top: list[Blob]) -> None:
        layer.rng = np.random.default_rng(SEED)
        forward(bottom, top)

    layer.forward = reseeded  # type: ignore[method-assign]
    check_gradient(
        layer, [uniform_bottom()], [Blob(dtype=np.float64)], stepsize=1e-4,
        threshold=1e-2,
    )  # fmt: skip


def test_gradient_test_phase() -> None:
    # Caffe's TEST pass has no backward of its own; ours is the derivative
    # of sum(x^2) / sum(x).
    layer = stochastic_layer(phase=caffe_pb2.TEST)
    check_gradient(layer, [uniform_bottom()], [Blob(dtype=np.float64)])


NET = """
name: "stochastic"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 2 dim: 3 dim: 6 dim: 5 } } }
layer { name: "pool" type: "Pooling" bottom: "data" top: "pool"
        pooling_param { pool: STOCHASTIC kernel_size: 3 stride: 2 } }
"""


def net_samples(seed: int) -> np.ndarray:
    param = parse_prototxt_text(NET, caffe_pb2.NetParameter(), "<test>")
    net = Net(param, caffe_pb2.TRAIN, rng=np.random.default_rng(seed), quiet=True)
    net.blob_by_name("data").data[...] = uniform_bottom().data
    net.forward()
    return net.blob_by_name("pool").data.copy()


def test_seeded_by_the_nets_rng() -> None:
    # The solver's random_seed seeds the net's rng, which the layer draws from.
    np.testing.assert_array_equal(net_samples(7), net_samples(7))
    assert not np.array_equal(net_samples(7), net_samples(8))
