"""DummyData, after Caffe's test_dummy_data_layer.cpp: TestOneTopConstant,
TestTwoTopConstant, TestThreeTopConstantGaussianConstant, plus shape rules."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import layer_from

from caffesolve.blob import Blob
from caffesolve.errors import ConfigError
from caffesolve.layers.base import Layer


def dummy(param_text: str, tops: int, seed: int = 1701) -> tuple[Layer, list[Blob]]:
    names = " ".join(f'top: "t{i}"' for i in range(tops))
    lay = layer_from(
        f'name: "d" type: "DummyData" {names} dummy_data_param {{ {param_text} }}',
        seed=seed,
    )
    top = [Blob() for _ in range(tops)]
    lay.setup([], top)
    return lay, top


def test_one_top_constant() -> None:
    lay, top = dummy("num: 5 channels: 3 height: 2 width: 4", 1)
    assert top[0].shape == (5, 3, 2, 4)
    assert not top[0].data.any()  # no filler: constant 0
    lay.forward([], top)
    assert not top[0].data.any()


def test_two_top_constant() -> None:
    lay, top = dummy(
        "num: 5 channels: 3 height: 2 width: 4 num: 5 channels: 3 height: 1 width: 4 "
        'data_filler { type: "constant" value: 7 }',
        2,
    )
    assert [t.shape for t in top] == [(5, 3, 2, 4), (5, 3, 1, 4)]
    for t in top:
        assert (t.data == 7).all()
    top[0].data[...] = 0  # constant tops are filled once, at setup
    lay.forward([], top)
    assert not top[0].data.any() and (top[1].data == 7).all()


def test_three_top_constant_gaussian_constant() -> None:
    lay, top = dummy(
        "shape { dim: 5 dim: 3 dim: 2 dim: 4 } "
        'data_filler { type: "constant" value: 1 } '
        'data_filler { type: "gaussian" std: 1 } '
        'data_filler { type: "constant" value: 2 }',
        3,
    )
    assert all(t.shape == (5, 3, 2, 4) for t in top)
    assert (top[0].data == 1).all() and (top[2].data == 2).all()
    assert not top[1].data.any()  # a non-constant filler fills in forward
    lay.forward([], top)
    first = top[1].data.copy()
    assert first.std() > 0.5 and len(np.unique(first)) == first.size
    lay.forward([], top)
    assert not np.array_equal(first, top[1].data)  # refilled each forward
    assert (top[0].data == 1).all() and (top[2].data == 2).all()
    # the same seed gives the same values
    lay2, top2 = dummy(
        "shape { dim: 5 dim: 3 dim: 2 dim: 4 } "
        'data_filler { type: "constant" value: 1 } '
        'data_filler { type: "gaussian" std: 1 } '
        'data_filler { type: "constant" value: 2 }',
        3,
    )
    lay2.forward([], top2)
    np.testing.assert_array_equal(top2[1].data, first)


def test_one_shape_and_filler_for_every_top() -> None:
    lay, top = dummy(
        'shape { dim: 2 dim: 3 } data_filler { type: "uniform" min: 4 max: 5 }', 2
    )
    lay.forward([], top)
    for t in top:
        assert t.shape == (2, 3) and (t.data >= 4).all() and (t.data <= 5).all()
    assert not np.array_equal(top[0].data, top[1].data)


@pytest.mark.parametrize(
    ("text", "tops", "message"),
    [
        ("shape { dim: 1 } num: 1 channels: 1 height: 1 width: 1", 1, "Both shape"),
        ("shape { dim: 1 } shape { dim: 2 }", 3, "Must specify 'shape' once"),
        ("num: 1 num: 2 channels: 1 height: 1 width: 1", 3, "Must specify 'num'"),
        (
            'shape { dim: 1 } data_filler { type: "constant" } '
            'data_filler { type: "constant" }',
            3,
            "Number of data fillers must be 0, 1 or equal",
        ),
        ('shape { dim: 2 } data_filler { type: "nope" }', 1, "Unknown filler name"),
    ],
)
def test_bad_parameters(text: str, tops: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        lay, top = dummy(text, tops)
        lay.forward([], top)
