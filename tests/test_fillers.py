"""Filler tests after Caffe's test_filler.cpp: statistics on large blobs,
xavier/msra scales, sparse fraction, bilinear values, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest

from caffesolve.blob import Blob
from caffesolve.errors import ConfigError
from caffesolve.fillers import fan_sizes, fill
from caffesolve.proto import caffe_pb2

FP = caffe_pb2.FillerParameter


def filled(shape: tuple[int, ...], seed: int = 1701, **fields: object) -> Blob:
    blob = Blob(shape)
    fill(blob, FP(**fields), np.random.default_rng(seed))
    return blob


def test_constant_filler() -> None:
    b = filled((2, 3, 4, 5), type="constant", value=10.0)
    assert b.data.dtype == np.float32
    assert np.all(b.data == 10.0)


def test_default_filler_is_constant_zero() -> None:
    b = Blob((3, 4))
    b.data[...] = 7
    fill(b, FP(), np.random.default_rng(0))
    assert np.all(b.data == 0)


def test_uniform_filler() -> None:
    b = filled((100, 100), type="uniform", min=1.0, max=2.0)
    assert b.data.min() >= 1.0 and b.data.max() <= 2.0
    assert abs(b.data.mean() - 1.5) < 0.01
    assert abs(b.data.std() - 1 / math.sqrt(12)) < 0.01


def test_uniform_filler_min_above_max() -> None:
    with pytest.raises(ConfigError, match="min"):
        filled((3,), type="uniform", min=2.0, max=1.0)


def test_gaussian_filler() -> None:
    b = filled((200, 100), type="gaussian", mean=10.0, std=0.1)
    assert abs(b.data.mean() - 10.0) < 0.01
    assert abs(b.data.std() - 0.1) < 0.005


def test_gaussian_filler_sparse() -> None:
    # Caffe: each weight kept with probability sparse / num_outputs.
    b = filled((20, 1000), type="gaussian", std=1.0, sparse=5)
    fraction = np.count_nonzero(b.data) / b.count
    assert abs(fraction - 5 / 20) < 0.02


def test_positive_unitball_filler() -> None:
    b = filled((10, 3, 4, 5), type="positive_unitball")
    assert np.all(b.data >= 0) and np.all(b.data <= 1)
    np.testing.assert_allclose(b.data.reshape(10, -1).sum(axis=1), 1.0, rtol=1e-5)


def test_fan_sizes() -> None:
    assert fan_sizes((1000, 2, 4, 5)) == (40, 20000)
    assert fan_sizes((10, 30)) == (30, 10)
    assert fan_sizes((7,)) == (1, 7)


@pytest.mark.parametrize(
    ("norm", "n"),
    [(FP.FAN_IN, 2 * 4 * 5), (FP.FAN_OUT, 1000 * 4 * 5), (FP.AVERAGE, 10020.0)],
)
def test_xavier_filler(norm: int, n: float) -> None:
    b = filled((1000, 2, 4, 5), type="xavier", variance_norm=norm)
    scale = math.sqrt(3 / n)
    assert np.abs(b.data).max() <= scale * (1 + 1e-6)
    assert abs(b.data.mean()) < 0.1 * scale
    # U(-s, s) has std s / sqrt(3) = sqrt(1 / n).
    assert abs(b.data.std() - math.sqrt(1 / n)) < 0.02 * math.sqrt(1 / n)


@pytest.mark.parametrize(
    ("norm", "n"),
    [(FP.FAN_IN, 2 * 4 * 5), (FP.FAN_OUT, 1000 * 4 * 5), (FP.AVERAGE, 10020.0)],
)
def test_msra_filler(norm: int, n: float) -> None:
    b = filled((1000, 2, 4, 5), type="msra", variance_norm=norm)
    std = math.sqrt(2 / n)
    assert abs(b.data.mean()) < 0.05 * std
    assert abs(b.data.std() - std) < 0.02 * std


def test_bilinear_filler_values() -> None:
    # K = 4: f = 2, c = 3/4; 1-|x/2 - 3/4| = 0.25, 0.75, 0.75, 0.25.
    b = filled((2, 1, 4, 4), type="bilinear")
    line = np.array([0.25, 0.75, 0.75, 0.25])
    np.testing.assert_allclose(b.data[1, 0], np.outer(line, line), rtol=1e-6)
    # K = 3: f = 2, c = 1/2: 0.5, 1, 0.5.
    b = filled((1, 1, 3, 3), type="bilinear")
    line = np.array([0.5, 1.0, 0.5])
    np.testing.assert_allclose(b.data[0, 0], np.outer(line, line), rtol=1e-6)


def test_bilinear_filler_needs_square_4d() -> None:
    with pytest.raises(ConfigError, match="4 dim"):
        filled((3, 3), type="bilinear")
    with pytest.raises(ConfigError, match="square"):
        filled((1, 1, 3, 4), type="bilinear")


def test_same_seed_same_weights() -> None:
    for kind in ("uniform", "gaussian", "xavier", "msra", "positive_unitball"):
        a = filled((30, 20), seed=5, type=kind)
        b = filled((30, 20), seed=5, type=kind)
        c = filled((30, 20), seed=6, type=kind)
        assert np.array_equal(a.data, b.data)
        assert not np.array_equal(a.data, c.data)


def test_keeps_blob_dtype() -> None:
    b = Blob((4, 5), dtype=np.float64)
    fill(b, FP(type="gaussian"), np.random.default_rng(0))
    assert b.data.dtype == np.float64


def test_unknown_filler_lists_known() -> None:
    with pytest.raises(ConfigError, match="Unknown filler name: foo.*xavier"):
        filled((3,), type="foo")


def test_sparse_only_for_gaussian() -> None:
    with pytest.raises(ConfigError, match="Sparsity not supported"):
        filled((3, 3), type="xavier", sparse=2)
