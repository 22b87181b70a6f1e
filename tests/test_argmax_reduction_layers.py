"""ArgMax and Reduction, after Caffe's test_argmax_layer.cpp and
test_reduction_layer.cpp."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import layer_from, rng
from gradient_check import check_gradient, make_blob

from caffesolve.blob import Blob
from caffesolve.errors import ConfigError


def top() -> Blob:
    return Blob(dtype=np.float64)


# -- ArgMax ----------------------------------------------------------------------------

ARGMAX = 'name: "a" type: "ArgMax" argmax_param { %s }'


def argmax_bottom() -> Blob:
    # Caffe uses (10, 10, 20, 20); a smaller blob has the same cases.
    return make_blob((4, 3, 5, 6), rng())


@pytest.mark.parametrize(
    ("param", "shape"),
    [
        ("", (4, 1, 1, 1)),
        ("out_max_val: true", (4, 2, 1, 1)),
        ("top_k: 5", (4, 1, 5, 1)),
        ("axis: 0", (1, 3, 5, 6)),
        ("axis: -2 top_k: 2", (4, 3, 2, 6)),
        ("axis: 2 out_max_val: true top_k: 3", (4, 3, 3, 6)),
    ],
)
def test_argmax_setup(param: str, shape: tuple[int, ...]) -> None:
    t = top()
    layer_from(ARGMAX % param).setup([argmax_bottom()], [t])
    assert t.shape == shape


def test_argmax_setup_pads_small_bottoms_to_three_axes() -> None:
    t = top()
    layer_from(ARGMAX % "top_k: 2").setup([Blob((7, 3))], [t])
    assert t.shape == (7, 1, 2)


def reference_top_k(row: np.ndarray, k: int) -> list[tuple[int, float]]:
    """Caffe's partial_sort of (value, index) pairs with std::greater: by
    value, then by index, both descending."""
    pairs = sorted(((float(v), j) for j, v in enumerate(row)), reverse=True)
    return [(j, v) for v, j in pairs[:k]]


@pytest.mark.parametrize("top_k", [1, 3])
def test_argmax_forward(top_k: int) -> None:
    bottom, t = argmax_bottom(), top()
    layer = layer_from(ARGMAX % f"top_k: {top_k} out_max_val: true")
    layer.setup([bottom], [t])
    layer.forward([bottom], [t])
    rows = bottom.data.reshape(4, -1)
    for i in range(4):
        expected = reference_top_k(rows[i], top_k)
        np.testing.assert_array_equal(t.data[i, 0, :, 0], [j for j, _ in expected])
        np.testing.assert_array_equal(t.data[i, 1, :, 0], [v for _, v in expected])
    plain, t2 = layer_from(ARGMAX % f"top_k: {top_k}"), top()
    plain.setup([bottom], [t2])
    plain.forward([bottom], [t2])
    np.testing.assert_array_equal(t2.data[:, 0, :, 0], t.data[:, 0, :, 0])


@pytest.mark.parametrize(("axis", "top_k"), [(0, 1), (2, 3), (-1, 2)])
def test_argmax_forward_axis(axis: int, top_k: int) -> None:
    bottom = argmax_bottom()
    for max_val in (False, True):
        t = top()
        param = f"axis: {axis} top_k: {top_k} out_max_val: {str(max_val).lower()}"
        layer = layer_from(ARGMAX % param)
        layer.setup([bottom], [t])
        layer.forward([bottom], [t])
        moved = np.moveaxis(bottom.data, axis, -1)
        got = np.moveaxis(t.data, axis, -1)
        for pos in np.ndindex(moved.shape[:-1]):
            expected = reference_top_k(moved[pos], top_k)
            column = 1 if max_val else 0
            np.testing.assert_array_equal(got[pos], [e[column] for e in expected])


def test_argmax_ties_go_to_the_higher_index() -> None:
    bottom, t = Blob((1, 5), dtype=np.float64), top()
    bottom.data[...] = [[2.0, 7.0, 1.0, 7.0, 2.0]]
    layer = layer_from(ARGMAX % "top_k: 4 out_max_val: true")
    layer.setup([bottom], [t])
    layer.forward([bottom], [t])
    np.testing.assert_array_equal(t.data[0, 0], [3, 1, 4, 0])
    np.testing.assert_array_equal(t.data[0, 1], [7, 7, 2, 2])


@pytest.mark.parametrize(
    ("param", "message"),
    [
        ("top_k: 0", "argmax_param.top_k: top k must not be less than 1"),
        ("top_k: 91", "top_k must be less than or equal to the dimension of the "),
        ("axis: 1 top_k: 4", "dimension of the axis \\(4 > 3"),
        ("axis: 4", "argmax_param.axis"),
    ],
)
def test_argmax_errors(param: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^layer 'a' \\(ArgMax\\): .*{message}"):
        layer_from(ARGMAX % param).setup([argmax_bottom()], [top()])


def test_argmax_has_no_backward() -> None:
    bottom, t = argmax_bottom(), top()
    layer = layer_from(ARGMAX % "")
    layer.setup([bottom], [t])
    layer.backward([t], [False], [bottom])  # nothing asked: fine
    with pytest.raises(ConfigError, match="cannot backpropagate"):
        layer.backward([t], [True], [bottom])


# -- Reduction ----------------------------------------------------------------------

REDUCTION = 'name: "r" type: "Reduction" reduction_param { %s }'
OPS = ["SUM", "ASUM", "SUMSQ", "MEAN"]


def reduction_bottom() -> Blob:
    # Caffe's fixture: (2, 3, 4, 5), uniform in [0, 1); signs for ASUM.
    return make_blob((2, 3, 4, 5), rng(), low=-1, high=1)


@pytest.mark.parametrize(
    ("axis", "shape"), [(0, ()), (1, (2,)), (2, (2, 3)), (-1, (2, 3, 4))]
)
def test_reduction_setup(axis: int, shape: tuple[int, ...]) -> None:
    t = top()
    layer_from(REDUCTION % f"axis: {axis}").setup([reduction_bottom()], [t])
    assert t.shape == shape


def reference_reduction(x: np.ndarray, op: str, coeff: float, axis: int) -> np.ndarray:
    rows = x.reshape(int(np.prod(x.shape[:axis])), -1)
    total = {
        "SUM": lambda r: r.sum(),
        "ASUM": lambda r: np.abs(r).sum(),
        "SUMSQ": lambda r: (r * r).sum(),
        "MEAN": lambda r: r.sum() / r.size,
    }[op]
    return np.array([total(r) for r in rows]) * coeff


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize(("coeff", "axis"), [(1.0, 0), (2.3, 0), (2.3, 1)])
def test_reduction_forward(op: str, coeff: float, axis: int) -> None:
    bottom, t = reduction_bottom(), top()
    param = f"operation: {op} axis: {axis} coeff: {coeff}"
    layer = layer_from(REDUCTION % param)
    layer.setup([bottom], [t])
    layer.forward([bottom], [t])
    coeff32 = float(np.float32(coeff))  # the proto field is a float
    expected = reference_reduction(bottom.data, op, coeff32, axis)
    np.testing.assert_allclose(t.data.reshape(-1), expected, rtol=1e-12)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize(("coeff", "axis"), [(1.0, 0), (2.3, 0), (2.3, 1)])
def test_reduction_gradient(op: str, coeff: float, axis: int) -> None:
    bottom = make_blob((2, 3, 2, 2), rng(), low=-1, high=1)
    layer = layer_from(REDUCTION % f"operation: {op} axis: {axis} coeff: {coeff}")
    # ASUM has a kink at 0; Caffe's threshold for this layer is 2e-3.
    check_gradient(layer, [bottom], [top()], threshold=2e-3, kink=0.0, kink_range=0.02)


def test_reduction_backward_closed_form() -> None:
    # Two rows [1, -2, 0] and [3, 0.5, -1]; top diff (2, -1), coeff 0.5.
    bottom, t = Blob((2, 3), dtype=np.float64), top()
    bottom.data[...] = [[1, -2, 0], [3, 0.5, -1]]
    expected = {
        "SUM": [[1, 1, 1], [-0.5, -0.5, -0.5]],
        "MEAN": [[1 / 3] * 3, [-0.5 / 3] * 3],
        "ASUM": [[1, -1, 0], [-0.5, -0.5, 0.5]],
        "SUMSQ": [[2, -4, 0], [-3, -0.5, 1]],
    }
    for op, diff in expected.items():
        layer = layer_from(REDUCTION % f"operation: {op} axis: 1 coeff: 0.5")
        layer.setup([bottom], [t])
        layer.forward([bottom], [t])
        t.diff[...] = [2, -1]
        layer.backward([t], [True], [bottom])
        np.testing.assert_allclose(bottom.diff, diff, rtol=1e-15, err_msg=op)


def test_reduction_float32_mean_scales_by_coeff_over_dim() -> None:
    # MEAN: coeff / dim is one float32 division, then one multiply per row.
    bottom, t = Blob((1, 3)), Blob()
    bottom.data[...] = [[1.0, 2.0, 4.0]]
    layer = layer_from(REDUCTION % "operation: MEAN axis: 1 coeff: 0.7")
    layer.setup([bottom], [t])
    layer.forward([bottom], [t])
    f = np.float32
    assert t.data.dtype == np.float32
    assert t.data[0] == f(7.0) * (f(0.7) / f(3))


def test_reduction_axis_error() -> None:
    with pytest.raises(
        ConfigError, match="^layer 'r' \\(Reduction\\): reduction_param.axis"
    ):
        layer_from(REDUCTION % "axis: 4").setup([reduction_bottom()], [top()])
