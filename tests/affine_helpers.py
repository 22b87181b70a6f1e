"""Helpers of the Scale and Bias tests (after Caffe's test_scale_layer.cpp
and test_bias_layer.cpp): their bottoms, broadcasting a blob over bottom[0]
for the expected values, and one forward."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import layer_from, rng

from caffesolve.blob import Blob
from caffesolve.layers import Layer

F32 = np.float32
SHAPE = (2, 3, 4, 5)
GAUSSIAN = 'filler { type: "gaussian" }'

# (axis, bottom[1]'s shape) of Caffe's two-bottom cases, named after its tests
# (TestForward<id>, TestGradient<id>; Scalar is TestForwardScale/-Bias).
BROADCASTS = [
    pytest.param(0, SHAPE, id="Eltwise"),
    pytest.param(0, (2, 3), id="BroadcastBegin"),
    pytest.param(1, (3, 4), id="BroadcastMiddle"),
    pytest.param(2, (4, 5), id="BroadcastEnd"),
    pytest.param(1, (), id="Scalar"),
    pytest.param(2, (), id="ScalarAxis2"),
]


def uniform(shape: tuple[int, ...], seed: int = 1701) -> Blob:
    """Caffe's test bottoms: uniform in [1, 10]."""
    b = Blob(shape)
    b.data[...] = rng(seed).uniform(1, 10, size=shape)
    return b


def placed(s: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    """s reshaped to broadcast against a blob of `ndim` axes from `axis`."""
    return s.reshape((1,) * axis + s.shape + (1,) * (ndim - axis - s.ndim))


def forward(
    text: str, bottom: list[Blob], in_place: bool = False
) -> tuple[Layer, Blob]:
    """Set up and forward the layer `text` (in place: top is bottom[0])."""
    layer = layer_from(text)
    top = bottom[0] if in_place else Blob()
    layer.setup(bottom, [top])
    layer.forward(bottom, [top])
    return layer, top


def diffs_in_and_out_of_place(
    text: str, shape: tuple[int, ...]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(bottom[0] diff, bottom[1] diff) of one backward out of place, then in
    place (Caffe's TestBackward*InPlace), from the same random top diff."""
    dy = rng(3).normal(size=SHAPE).astype(F32)
    results = []
    for in_place in (False, True):
        x, b = uniform(SHAPE), uniform(shape, seed=2)
        layer, top = forward(text, [x, b], in_place)
        top.diff[...] = dy
        layer.backward([top], [True, True], [x, b])
        results.append((x.diff.copy(), b.diff.copy()))
    return results
