"""Filter and BatchReindex, after Caffe's test_filter_layer.cpp and
test_batch_reindex_layer.cpp."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import layer_from, rng
from gradient_check import check_gradient, make_blob

from caffesolve.blob import Blob
from caffesolve.errors import ConfigError, DataError, ShapeError


def tops(n: int) -> list[Blob]:
    return [Blob(dtype=np.float64) for _ in range(n)]


# -- Filter ----------------------------------------------------------------------------


def filter_bottoms() -> list[Blob]:
    """Caffe's fixture: data (4, 3, 6, 4), labels (4, 1, 1, 1), selector 0 1 1 0."""
    g = rng()
    data = make_blob((4, 3, 6, 4), g)
    labels = Blob((4, 1, 1, 1), dtype=np.float64)
    labels.data[...] = g.integers(0, 5, size=labels.shape)
    selector = Blob((4, 1, 1, 1), dtype=np.float64)
    selector.data.reshape(-1)[:] = [0, 1, 1, 0]
    return [data, labels, selector]


def test_filter_reshape() -> None:
    bottom, top = filter_bottoms(), tops(2)
    layer = layer_from('name: "f" type: "Filter"')
    layer.setup(bottom, top)
    # The first reshape (at setup) keeps the whole batch, as in Caffe.
    assert [t.shape for t in top] == [(4, 3, 6, 4), (4, 1, 1, 1)]
    layer.reshape(bottom, top)
    assert [t.shape for t in top] == [(2, 3, 6, 4), (2, 1, 1, 1)]


def test_filter_forward_backward() -> None:
    bottom, top = filter_bottoms(), tops(2)
    layer = layer_from('name: "f" type: "Filter"')
    layer.setup(bottom, top)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    # Selector 0 1 1 0: items 1 and 2 go on.
    np.testing.assert_array_equal(top[0].data, bottom[0].data[1:3])
    np.testing.assert_array_equal(top[1].data, bottom[1].data[1:3])
    top[0].diff[...] = 3.0
    bottom[0].diff[...] = 8.0  # stale values must be cleared
    layer.backward(top, [True, False, False], bottom)
    np.testing.assert_array_equal(bottom[0].diff[[0, 3]], 0.0)
    np.testing.assert_array_equal(bottom[0].diff[1:3], 3.0)


def test_filter_gradient() -> None:
    bottom = filter_bottoms()
    bottom[0] = make_blob((4, 2, 2, 2), rng())
    layer = layer_from('name: "f" type: "Filter"')
    layer.setup(bottom, tops(2))
    check_gradient(layer, bottom, tops(2), check_bottom=[0], setup=False)


def test_filter_selects_nothing_or_everything() -> None:
    bottom, top = filter_bottoms(), tops(2)
    layer = layer_from('name: "f" type: "Filter"')
    layer.setup(bottom, top)
    bottom[2].data[...] = 0
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    assert top[0].shape == (0, 3, 6, 4)
    bottom[2].data[...] = [[[[0.5]]], [[[-2]]], [[[1]]], [[[3]]]]  # non-zero counts
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    np.testing.assert_array_equal(top[0].data, bottom[0].data)


def test_filter_errors() -> None:
    bottom = filter_bottoms()
    with pytest.raises(ConfigError, match="one top per bottom except the last"):
        layer_from('name: "f" type: "Filter"').setup(bottom, tops(1))
    bad = Blob((4, 2), dtype=np.float64)
    with pytest.raises(ShapeError, match="Selector blob dimensions must be singletons"):
        layer_from('name: "f" type: "Filter"').setup(bottom[:2] + [bad], tops(2))
    with pytest.raises(ShapeError, match="same 0th dimension as the selector"):
        layer_from('name: "f" type: "Filter"').setup(
            [Blob((3, 2)), Blob((4,))], tops(1)
        )
    layer, top = layer_from('name: "f" type: "Filter"'), tops(2)
    layer.setup(bottom, top)
    with pytest.raises(ConfigError, match="cannot backpropagate to filter index"):
        layer.backward(top, [True, False, True], bottom)


# -- BatchReindex ----------------------------------------------------------------------


def reindex_bottoms(data: Blob | None = None) -> list[Blob]:
    """Caffe's fixture: data (5, 4, 3, 2), indices 4 0 4 0 1 2."""
    permute = Blob((6,), dtype=np.float64)
    permute.data[...] = [4, 0, 4, 0, 1, 2]
    return [data if data is not None else make_blob((5, 4, 3, 2), rng()), permute]


def test_batch_reindex_forward() -> None:
    data = Blob((5, 4, 3, 2), dtype=np.float64)
    data.data[...] = np.arange(120).reshape(5, 4, 3, 2)
    bottom, top = reindex_bottoms(data), tops(1)
    layer = layer_from('name: "r" type: "BatchReindex"')
    layer.setup(bottom, top)
    assert top[0].shape == (6, 4, 3, 2)
    layer.forward(bottom, top)
    # Top item n is bottom item perm[n]: values 24 * perm[n] + (0 .. 23).
    expected = np.array([4, 0, 4, 0, 1, 2])[:, None] * 24 + np.arange(24)
    np.testing.assert_array_equal(top[0].data.reshape(6, 24), expected)


def test_batch_reindex_backward_adds_repeats() -> None:
    bottom, top = reindex_bottoms(), tops(1)
    layer = layer_from('name: "r" type: "BatchReindex"')
    layer.setup(bottom, top)
    top[0].diff[...] = np.arange(1.0, 7.0).reshape(6, 1, 1, 1)
    bottom[0].diff[...] = 9.0
    layer.backward(top, [True, False], bottom)
    # Item 4 got top items 0 and 2 (1 + 3), item 0 items 1 and 3 (2 + 4),
    # item 1 item 4 (5), item 2 item 5 (6), item 3 nothing.
    np.testing.assert_array_equal(bottom[0].diff[:, 0, 0, 0], [6, 5, 6, 0, 4])


def test_batch_reindex_gradient() -> None:
    # Caffe: GradientChecker(1e-4, 1e-2) on the data only.
    bottom = reindex_bottoms(make_blob((5, 2, 1, 2), rng()))
    layer = layer_from('name: "r" type: "BatchReindex"')
    check_gradient(
        layer, bottom, tops(1), check_bottom=[0], stepsize=1e-4, threshold=1e-2
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [(-1.0, "was negative"), (5.0, "was greater than batch size"), (np.nan, "number")],
)
def test_batch_reindex_index_errors(value: float, message: str) -> None:
    bottom, top = reindex_bottoms(), tops(1)
    layer = layer_from('name: "r" type: "BatchReindex"')
    layer.setup(bottom, top)
    bottom[1].data[3] = value
    with pytest.raises(DataError, match=f"layer 'r' \\(BatchReindex\\): .*{message}"):
        layer.forward(bottom, top)


def test_batch_reindex_shape_and_backward_errors() -> None:
    with pytest.raises(ShapeError, match="must be 1-D"):
        layer_from('name: "r" type: "BatchReindex"').setup(
            [Blob((5, 2)), Blob((6, 1))], tops(1)
        )
    bottom, top = reindex_bottoms(), tops(1)
    layer = layer_from('name: "r" type: "BatchReindex"')
    layer.setup(bottom, top)
    with pytest.raises(ConfigError, match="Cannot backprop to index"):
        layer.backward(top, [True, True], bottom)
