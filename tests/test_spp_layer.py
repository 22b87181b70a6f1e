"""SPP layer tests after Caffe's test_spp_layer.cpp: setup shapes (the
geometric sum of the pyramid's bins), forward against pooling written out
bin by bin from spp_layer.cpp's kernel/pad rule and pooling_layer.cpp's
window rule, gradients by finite differences, and the errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import layer_from
from gradient_check import check_gradient, make_blob

from caffesolve.blob import Blob
from caffesolve.errors import ConfigError, ShapeError
from caffesolve.layers.base import Layer


def spp_layer(params: str, name: str = "spp") -> Layer:
    return layer_from(f'name: "{name}" type: "SPP" spp_param {{ {params} }}')


def pyramid_level(x: np.ndarray, level: int, average: bool) -> np.ndarray:
    """Level `level` of the pyramid, bin by bin: kernel ceil(size / bins)
    (also the stride), pad (kernel*bins - size + 1) // 2; a MAX bin takes
    the window clipped to the image, an AVE bin divides its clipped sum by
    the window clipped to size + pad (Caffe's pooling rule)."""
    num, channels, height, width = x.shape
    bins = 2**level
    out = np.zeros((num, channels, bins, bins))
    kh, kw = math.ceil(height / bins), math.ceil(width / bins)
    ph, pw = (kh * bins - height + 1) // 2, (kw * bins - width + 1) // 2
    for i in range(bins):
        for j in range(bins):
            h0, w0 = i * kh - ph, j * kw - pw
            h1, w1 = min(h0 + kh, height + ph), min(w0 + kw, width + pw)
            area = (h1 - h0) * (w1 - w0)
            window = x[:, :, max(h0, 0) : min(h1, height), max(w0, 0) : min(w1, width)]
            if average:
                out[:, :, i, j] = window.sum(axis=(2, 3)) / area
            else:
                out[:, :, i, j] = window.max(axis=(2, 3))
    return out


def expected_top(x: np.ndarray, height: int, average: bool) -> np.ndarray:
    levels = [pyramid_level(x, i, average) for i in range(height)]
    return np.concatenate([v.reshape(x.shape[0], -1) for v in levels], axis=1)


@pytest.mark.parametrize(
    "height,shape,channels",
    [
        (3, (2, 3, 9, 8), 63),  # Caffe TestSetup: 3 * (1 + 4 + 16)
        (5, (4, 3, 1024, 765), 1023),  # TestEqualOutputDims: 3 * 341
        (3, (10, 3, 7, 7), 63),  # TestEqualOutputDims2
    ],
)
def test_setup(height: int, shape: tuple[int, ...], channels: int) -> None:
    layer = spp_layer(f"pyramid_height: {height}")
    top = Blob()
    layer.setup([Blob(shape)], [top])
    assert top.shape == (shape[0], channels)


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
@pytest.mark.parametrize("shape", [(2, 3, 9, 8), (1, 2, 7, 7), (2, 2, 4, 6)])
def test_forward_matches_bins(pool: str, shape: tuple[int, ...]) -> None:
    layer = spp_layer(f"pyramid_height: 3 pool: {pool}")
    bottom, top = make_blob(shape, np.random.default_rng(0)), Blob(dtype=np.float64)
    layer.setup([bottom], [top])
    layer.forward([bottom], [top])
    expect = expected_top(bottom.data, 3, pool == "AVE")
    assert top.shape == expect.shape
    np.testing.assert_allclose(top.data, expect, rtol=1e-12, atol=1e-12)


def test_hand_values_one_channel() -> None:
    # 4x4 bottom 0..15, pyramid height 2: level 0 is the global max 15;
    # level 1 the max of each 2x2 quadrant: 5, 7, 13, 15. With AVE: 7.5 and
    # the quadrant means 2.5, 4.5, 10.5, 12.5.
    bottom = Blob((1, 1, 4, 4), dtype=np.float64)
    bottom.data[...] = np.arange(16).reshape(1, 1, 4, 4)
    for pool, expect in (
        ("MAX", [15, 5, 7, 13, 15]),
        ("AVE", [7.5, 2.5, 4.5, 10.5, 12.5]),
    ):
        layer, top = (
            spp_layer(f"pyramid_height: 2 pool: {pool}"),
            Blob(dtype=np.float64),
        )
        layer.setup([bottom], [top])
        layer.forward([bottom], [top])
        np.testing.assert_allclose(top.data, [expect])


def test_one_level_is_one_global_pooling() -> None:
    layer = spp_layer("pyramid_height: 1")
    bottom, top = (
        make_blob((2, 3, 5, 4), np.random.default_rng(1)),
        Blob(dtype=np.float64),
    )
    layer.setup([bottom], [top])
    layer.forward([bottom], [top])
    assert top.shape == (2, 3, 1, 1)
    np.testing.assert_array_equal(top.data[:, :, 0, 0], bottom.data.max(axis=(2, 3)))
    check_gradient(layer, [bottom], [top], stepsize=1e-4, threshold=1e-2)


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
def test_gradient(pool: str) -> None:
    # Caffe TestGradient: stepsize 1e-4, threshold 1e-2.
    layer = spp_layer(f"pyramid_height: 3 pool: {pool}")
    bottom = make_blob((2, 3, 9, 8), np.random.default_rng(1701))
    checked = check_gradient(
        layer, [bottom], [Blob(dtype=np.float64)], stepsize=1e-4, threshold=1e-2
    )
    assert checked == bottom.count


def test_new_bottom_shape_rebuilds_the_pyramid() -> None:
    layer = spp_layer("pyramid_height: 2")
    rng = np.random.default_rng(2)
    first, top = make_blob((1, 2, 6, 6), rng), Blob(dtype=np.float64)
    layer.setup([first], [top])
    second = make_blob((3, 2, 9, 5), rng)
    layer.reshape([second], [top])
    layer.forward([second], [top])
    assert top.shape == (3, 2 * 5)
    np.testing.assert_allclose(top.data, expected_top(second.data, 2, False))


def test_errors_name_the_layer_and_field() -> None:
    with pytest.raises(ConfigError, match=r"layer 's1' \(SPP\): spp_param.pyramid"):
        spp_layer("pool: MAX", name="s1").setup([Blob((1, 1, 4, 4))], [Blob()])
    with pytest.raises(ShapeError, match=r"layer 's2' \(SPP\): Input must have 4"):
        spp_layer("pyramid_height: 2", name="s2").setup([Blob((1, 4, 4))], [Blob()])
    # 3x3 into 4x4 bins: kernel 1, pad 1, which Caffe's Pooling rejects.
    with pytest.raises(ConfigError) as e:
        spp_layer("pyramid_height: 3", name="s3").setup([Blob((1, 1, 3, 3))], [Blob()])
    message = str(e.value)
    assert message.startswith("layer 's3' (SPP): spp_param.pyramid_height 3: level 2")
    assert "\n" not in message
