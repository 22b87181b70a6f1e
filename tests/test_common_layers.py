"""Common layer tests after Caffe's test_inner_product_layer.cpp,
test_flatten_layer.cpp, test_reshape_layer.cpp, test_concat_layer.cpp,
test_eltwise_layer.cpp, test_softmax_layer.cpp and test_split_layer.cpp."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import layer_from, rng
from gradient_check import check_gradient, make_blob

from caffesolve.blob import Blob
from caffesolve.errors import ConfigError, ShapeError

# -- InnerProduct ----------------------------------------------------------------

IP = """name: "ip" type: "InnerProduct"
inner_product_param { num_output: 10 %s
  weight_filler { type: "uniform" } bias_filler { type: "uniform" min: 1 max: 2 } }"""


def test_inner_product_setup() -> None:
    layer = layer_from(IP % "")
    bottom, top = Blob((2, 3, 4, 5), "data"), Blob()
    layer.setup([bottom], [top])
    assert top.shape == (2, 10)
    assert layer.blobs[0].shape == (10, 60) and layer.blobs[1].shape == (10,)
    assert layer.blobs[0].data.dtype == np.float32


def test_inner_product_setup_transpose_and_axis() -> None:
    layer = layer_from(IP % "transpose: true axis: 2")
    top = Blob()
    layer.setup([Blob((2, 3, 4, 5))], [top])
    assert top.shape == (2, 3, 10)
    assert layer.blobs[0].shape == (20, 10)


def test_inner_product_forward() -> None:
    layer = layer_from(IP % "")
    bottom = make_blob((2, 3, 4, 5), rng(), low=0, high=1)
    top = Blob(dtype=np.float64)
    layer.setup([bottom], [top])
    layer.forward([bottom], [top])
    w, b = layer.blobs[0].data, layer.blobs[1].data
    ref = bottom.data.reshape(2, 60) @ w.T + b
    np.testing.assert_allclose(top.data, ref, rtol=1e-12)
    assert top.data.min() >= 1.0  # positive inputs, weights; bias >= 1


def test_inner_product_forward_transpose_matches_plain() -> None:
    plain, trans = layer_from(IP % ""), layer_from(IP % "transpose: true")
    bottom = make_blob((2, 3, 4, 5), rng())
    t1, t2 = Blob(dtype=np.float64), Blob(dtype=np.float64)
    plain.setup([bottom], [t1])
    trans.setup([bottom], [t2])
    assert trans.blobs[0].shape == (60, 10)
    trans.blobs[0].data[...] = plain.blobs[0].data.T
    trans.blobs[1].data[...] = plain.blobs[1].data
    plain.forward([bottom], [t1])
    trans.forward([bottom], [t2])
    np.testing.assert_allclose(t1.data, t2.data, rtol=1e-12)


@pytest.mark.parametrize(
    "extra", ["", "transpose: true", "bias_term: false", "axis: 2", "axis: -1"]
)
def test_inner_product_gradient(extra: str) -> None:
    layer = layer_from(IP.replace("10", "4") % extra)
    bottom = make_blob((2, 3, 2, 2), rng())
    check_gradient(layer, [bottom], [Blob(dtype=np.float64)])


def test_inner_product_param_diffs_accumulate() -> None:
    layer = layer_from(IP % "")
    bottom, top = make_blob((2, 6), rng()), Blob(dtype=np.float64)
    layer.setup([bottom], [top])
    layer.forward([bottom], [top])
    top.diff[...] = 1.0
    layer.backward([top], [True], [bottom])
    once = layer.blobs[0].diff.copy()
    layer.backward([top], [True], [bottom])
    np.testing.assert_allclose(layer.blobs[0].diff, 2 * once)
    np.testing.assert_allclose(layer.blobs[1].diff, 4.0)  # 2 rows, twice


def test_inner_product_incompatible_input() -> None:
    layer = layer_from(IP % "")
    layer.setup([Blob((2, 60), "data")], [Blob()])
    with pytest.raises(ShapeError, match="ip.*Input size incompatible.*'data'"):
        layer.reshape([Blob((2, 61), "data")], [Blob()])


def test_inner_product_needs_num_output() -> None:
    layer = layer_from('name: "ip" type: "InnerProduct"')
    with pytest.raises(ConfigError, match="num_output"):
        layer.setup([Blob((2, 3))], [Blob()])


def test_inner_product_same_seed_same_weights() -> None:
    text = IP.replace('"uniform"', '"xavier"', 1) % ""
    a, b = layer_from(text, seed=3), layer_from(text, seed=3)
    a.setup([Blob((2, 7))], [Blob()])
    b.setup([Blob((2, 7))], [Blob()])
    assert np.array_equal(a.blobs[0].data, b.blobs[0].data)


# -- Flatten ---------------------------------------------------------------------


def test_flatten_setup_and_views() -> None:
    layer = layer_from('name: "f" type: "Flatten"')
    bottom, top = make_blob((2, 3, 6, 5), rng()), Blob(dtype=np.float64)
    layer.setup([bottom], [top])
    assert top.shape == (2, 90)
    layer.forward([bottom], [top])
    np.testing.assert_array_equal(top.data, bottom.data.reshape(2, 90))
    assert np.shares_memory(top.data, bottom.data)
    top.diff[...] = np.arange(180).reshape(2, 90)
    layer.backward([top], [True], [bottom])
    np.testing.assert_array_equal(bottom.diff.reshape(-1), np.arange(180))


@pytest.mark.parametrize(
    ("params", "shape"),
    [
        ("axis: 0", (180,)),
        ("axis: 2", (2, 3, 30)),
        ("end_axis: -2", (2, 18, 5)),
        ("axis: 0 end_axis: 1", (6, 6, 5)),
        ("axis: -1", (2, 3, 6, 5)),
    ],
)
def test_flatten_axes(params: str, shape: tuple[int, ...]) -> None:
    layer = layer_from(f'name: "f" type: "Flatten" flatten_param {{ {params} }}')
    top = Blob()
    layer.setup([Blob((2, 3, 6, 5))], [top])
    assert top.shape == shape


def test_flatten_copies_replaced_top_diff_back() -> None:
    layer = layer_from('name: "f" type: "Flatten"')
    bottom, top = make_blob((2, 3, 2), rng()), Blob(dtype=np.float64)
    layer.setup([bottom], [top])
    layer.forward([bottom], [top])
    top.diff = np.ones((2, 6))  # a later layer replaced the array
    layer.backward([top], [True], [bottom])
    np.testing.assert_array_equal(bottom.diff, 1.0)


def test_flatten_not_in_place() -> None:
    b = Blob((2, 3))
    with pytest.raises(ConfigError, match="in-place"):
        layer_from('name: "f" type: "Flatten"').setup([b], [b])


@pytest.mark.parametrize(
    "text",
    [
        'type: "Split"',
        'type: "Flatten"',
        'type: "Reshape" reshape_param { shape { dim: -1 } }',
        'type: "AbsVal"',
    ],
)
def test_layers_refusing_in_place_say_so_in_caffes_words(text: str) -> None:
    b = Blob((2, 3))
    layer_type = text.split('"')[1]
    with pytest.raises(ConfigError) as e:
        layer_from(f'name: "x" {text}').setup([b], [b])
    assert str(e.value) == (
        f"layer 'x' ({layer_type}): {layer_type} Layer does not allow in-place "
        "computation."
    )
    out = Blob()
    layer_from(f'name: "x" {text}').setup([b], [out])  # out of place is fine


# -- Reshape ----------------------------------------------------------------------

RESHAPE = 'name: "r" type: "Reshape" reshape_param { shape { %s } %s }'


@pytest.mark.parametrize(
    ("dims", "extra", "shape"),
    [
        ("dim: 0 dim: -1", "", (2, 90)),
        ("dim: 6 dim: 5 dim: 6", "", (6, 5, 6)),
        ("dim: 0 dim: 0 dim: 0 dim: 0", "", (2, 3, 6, 5)),
        ("dim: 0 dim: 3 dim: -1 dim: 1", "", (2, 3, 30, 1)),
        ("dim: -1", "", (180,)),
        ("dim: 1 dim: 1", "axis: 1 num_axes: 0", (2, 1, 1, 3, 6, 5)),
        ("dim: 1", "axis: -1 num_axes: 0", (2, 3, 6, 5, 1)),
        ("dim: 18", "axis: 1 num_axes: 2", (2, 18, 5)),
        ("dim: -1", "axis: -3", (2, 3, 30)),
        ("dim: 0 dim: -1", "axis: 1 num_axes: 2", (2, 3, 6, 5)),
    ],
)
def test_reshape_shapes(dims: str, extra: str, shape: tuple[int, ...]) -> None:
    layer = layer_from(RESHAPE % (dims, extra))
    top = Blob()
    layer.setup([Blob((2, 3, 6, 5))], [top])
    assert top.shape == shape


def test_reshape_shares_data_and_diff() -> None:
    layer = layer_from(RESHAPE % ("dim: 0 dim: -1", ""))
    bottom, top = make_blob((2, 3, 2), rng()), Blob(dtype=np.float64)
    layer.setup([bottom], [top])
    layer.forward([bottom], [top])
    np.testing.assert_array_equal(top.data, bottom.data.reshape(2, 6))
    top.diff[...] = 3.0
    layer.backward([top], [True], [bottom])
    np.testing.assert_array_equal(bottom.diff, 3.0)


def test_reshape_follows_bottom_shape_change() -> None:
    layer = layer_from(RESHAPE % ("dim: 0 dim: -1", ""))
    bottom, top = Blob((2, 3, 2)), Blob()
    layer.setup([bottom], [top])
    bottom.reshape((4, 3, 2))
    layer.reshape([bottom], [top])
    assert top.shape == (4, 6) and np.shares_memory(top.data, bottom.data)


@pytest.mark.parametrize(
    ("dims", "extra", "message"),
    [
        ("dim: -1 dim: -1", "", "multiple -1"),
        ("dim: 7 dim: -1", "", "divisible"),
        ("dim: 7 dim: 7", "", "output count must match"),
        ("dim: 0 dim: 0 dim: 0 dim: 0 dim: 0", "", "no corresponding bottom axis"),
        ("dim: 1", "axis: 5", "out of range"),
        ("dim: 1", "axis: 3 num_axes: 2", "end_axis"),
    ],
)
def test_reshape_errors(dims: str, extra: str, message: str) -> None:
    layer = layer_from(RESHAPE % (dims, extra))
    with pytest.raises(ShapeError, match=f"layer 'r' \\(Reshape\\).*{message}"):
        layer.setup([Blob((2, 3, 6, 5))], [Blob()])


# -- Concat -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("param", "axis"), [("", 1), ("axis: 0", 0), ("concat_dim: 0", 0), ("axis: -1", 3)]
)
def test_concat_forward_backward(param: str, axis: int) -> None:
    g = rng()
    shapes = [[2, 3, 6, 5], [2, 3, 6, 5]]
    shapes[1][axis] = 4
    a, b = make_blob(shapes[0], g), make_blob(shapes[1], g)
    layer = layer_from(f'name: "c" type: "Concat" concat_param {{ {param} }}')
    top = Blob(dtype=np.float64)
    layer.setup([a, b], [top])
    layer.forward([a, b], [top])
    np.testing.assert_array_equal(top.data, np.concatenate([a.data, b.data], axis))
    check_gradient(layer, [a, b], [top], setup=False)


def test_concat_shape_mismatch() -> None:
    layer = layer_from('name: "c" type: "Concat"')
    with pytest.raises(ShapeError, match="same shape, except at concat_axis"):
        layer.setup([Blob((2, 3, 4)), Blob((2, 3, 5))], [Blob()])


def test_concat_axis_and_concat_dim() -> None:
    layer = layer_from(
        'name: "c" type: "Concat" concat_param { axis: 1 concat_dim: 1 }'
    )
    with pytest.raises(ConfigError, match="not both"):
        layer.setup([Blob((2, 3)), Blob((2, 3))], [Blob()])


# -- Eltwise ---------------------------------------------------------------------

ELTWISE = 'name: "e" type: "Eltwise" eltwise_param { %s }'


def three_blobs() -> list[Blob]:
    g = rng()
    return [make_blob((2, 3, 4, 5), g) for _ in range(3)]


def test_eltwise_prod() -> None:
    a, b, c = bottom = three_blobs()
    layer = layer_from(ELTWISE % "operation: PROD")
    top = Blob(dtype=np.float64)
    layer.setup(bottom, [top])
    layer.forward(bottom, [top])
    np.testing.assert_allclose(top.data, a.data * b.data * c.data, rtol=1e-14)


def test_eltwise_sum_with_coeff() -> None:
    a, b, c = bottom = three_blobs()
    layer = layer_from(ELTWISE % "operation: SUM coeff: 1 coeff: -0.5 coeff: 2")
    top = Blob(dtype=np.float64)
    layer.setup(bottom, [top])
    layer.forward(bottom, [top])
    np.testing.assert_allclose(top.data, a.data - 0.5 * b.data + 2 * c.data)


def test_eltwise_max() -> None:
    a, b, c = bottom = three_blobs()
    layer = layer_from(ELTWISE % "operation: MAX")
    top = Blob(dtype=np.float64)
    layer.setup(bottom, [top])
    layer.forward(bottom, [top])
    np.testing.assert_array_equal(
        top.data, np.maximum(np.maximum(a.data, b.data), c.data)
    )
    top.diff[...] = 1.0
    layer.backward([top], [True] * 3, bottom)
    winner = np.argmax(np.stack([x.data for x in bottom]), axis=0)
    for i, x in enumerate(bottom):
        np.testing.assert_array_equal(x.diff, winner == i)


@pytest.mark.parametrize(
    "op",
    [
        "operation: PROD",
        "operation: PROD stable_prod_grad: false",
        "operation: SUM",
        "operation: SUM coeff: 1 coeff: -0.5 coeff: 2",
    ],
)
def test_eltwise_gradient(op: str) -> None:
    g = rng()
    bottom = [make_blob((2, 3, 2, 2), g) for _ in range(3)]
    check_gradient(layer_from(ELTWISE % op), bottom, [Blob(dtype=np.float64)])


def test_eltwise_max_gradient() -> None:
    # Well-separated inputs keep the finite differences away from ties.
    g = rng()
    bottom = [make_blob((2, 3, 2, 2), g) for _ in range(2)]
    bottom[1].data[...] = bottom[0].data + np.where(
        g.random((2, 3, 2, 2)) < 0.5, 0.5, -0.5
    )
    check_gradient(
        layer_from(ELTWISE % "operation: MAX"), bottom, [Blob(dtype=np.float64)]
    )


def test_eltwise_errors() -> None:
    with pytest.raises(ConfigError, match="one coefficient per bottom"):
        layer_from(ELTWISE % "coeff: 1").setup([Blob((2,)), Blob((2,))], [Blob()])
    with pytest.raises(ConfigError, match="only takes coefficients for summation"):
        layer_from(ELTWISE % "operation: PROD coeff: 1 coeff: 2").setup(
            [Blob((2,)), Blob((2,))], [Blob()]
        )
    with pytest.raises(ShapeError, match="bottom\\[1\\]"):
        layer_from(ELTWISE % "").setup([Blob((2,)), Blob((3,))], [Blob()])


# -- Softmax ----------------------------------------------------------------------


@pytest.mark.parametrize("axis", [1, -1, 0])
def test_softmax_forward(axis: int) -> None:
    bottom = make_blob((2, 10, 2, 3), rng(), low=-5, high=5)
    layer = layer_from(f'name: "s" type: "Softmax" softmax_param {{ axis: {axis} }}')
    top = Blob(dtype=np.float64)
    layer.setup([bottom], [top])
    layer.forward([bottom], [top])
    np.testing.assert_allclose(top.data.sum(axis=axis), 1.0, rtol=1e-12)
    e = np.exp(bottom.data)
    np.testing.assert_allclose(top.data, e / e.sum(axis=axis, keepdims=True))


def test_softmax_large_inputs_are_stable() -> None:
    bottom, top = Blob((1, 3)), Blob()
    bottom.data[...] = [1000.0, 1000.0, -1000.0]
    layer = layer_from('name: "s" type: "Softmax"')
    layer.setup([bottom], [top])
    layer.forward([bottom], [top])
    np.testing.assert_allclose(top.data, [[0.5, 0.5, 0.0]])
    assert top.data.dtype == np.float32


@pytest.mark.parametrize("axis", [1, 2])
def test_softmax_gradient(axis: int) -> None:
    bottom = make_blob((2, 3, 2, 2), rng())
    layer = layer_from(f'name: "s" type: "Softmax" softmax_param {{ axis: {axis} }}')
    check_gradient(layer, [bottom], [Blob(dtype=np.float64)])


# -- Split ------------------------------------------------------------------------


def test_split_gradient() -> None:
    bottom = make_blob((2, 3, 2, 2), rng())
    tops = [Blob(dtype=np.float64), Blob(dtype=np.float64)]
    check_gradient(layer_from('name: "s" type: "Split"'), [bottom], tops)


def test_softmax_in_place_matches_out_of_place() -> None:
    layer = layer_from('name: "s" type: "Softmax"')
    a = make_blob((3, 4, 2), rng())
    b = make_blob((3, 4, 2), rng())
    out = Blob(dtype=np.float64)
    layer.setup([a], [out])
    layer.forward([a], [out])
    out.diff[...] = np.arange(24).reshape(3, 4, 2) / 10
    layer.backward([out], [True], [a])
    layer2 = layer_from('name: "s" type: "Softmax"')
    layer2.setup([b], [b])
    layer2.forward([b], [b])
    np.testing.assert_allclose(b.data, out.data)
    b.diff[...] = out.diff
    layer2.backward([b], [True], [b])
    np.testing.assert_allclose(b.diff, a.diff)


def test_concat_single_bottom_shares() -> None:
    layer = layer_from('name: "c" type: "Concat"')
    a, top = make_blob((2, 3), rng()), Blob(dtype=np.float64)
    layer.setup([a], [top])
    layer.forward([a], [top])
    np.testing.assert_array_equal(top.data, a.data)
    top.diff[...] = 2.0
    layer.backward([top], [True], [a])
    np.testing.assert_array_equal(a.diff, 2.0)


def test_inner_product_follows_batch_size_change() -> None:
    layer = layer_from(IP % "")
    bottom, top = make_blob((2, 6), rng()), Blob(dtype=np.float64)
    layer.setup([bottom], [top])
    bottom.reshape((5, 6))
    bottom.data[...] = 1.0
    layer.reshape([bottom], [top])
    layer.forward([bottom], [top])
    assert top.shape == (5, 10)
    w, b = layer.blobs[0].data, layer.blobs[1].data
    np.testing.assert_allclose(top.data, np.tile(w.sum(axis=1) + b, (5, 1)))


@pytest.mark.parametrize(
    "text",
    [
        IP % "",
        'name: "f" type: "Flatten"',
        'name: "r" type: "Reshape" reshape_param { shape { dim: 0 dim: -1 } }',
        'name: "c" type: "Concat"',
        'name: "e" type: "Eltwise" eltwise_param { operation: PROD }',
        'name: "e" type: "Eltwise" eltwise_param { operation: MAX }',
        'name: "e" type: "Eltwise" eltwise_param { coeff: 2 coeff: -1 }',
        'name: "s" type: "Softmax"',
    ],
)
def test_float32_keeps_dtype(text: str) -> None:
    layer = layer_from(text)
    g = rng()
    two = "Concat" in text or "Eltwise" in text
    bottom = [Blob((2, 3, 4)) for _ in range(2 if two else 1)]
    for b in bottom:
        b.data[...] = g.normal(size=b.shape)
    top = Blob()
    layer.setup(bottom, [top])
    layer.forward(bottom, [top])
    top.diff[...] = 1.0
    layer.backward([top], [True] * len(bottom), bottom)
    for blob in bottom + [top] + layer.blobs:
        assert blob.data.dtype == np.float32 and blob.diff.dtype == np.float32
    assert all(np.isfinite(b.diff).all() for b in bottom)


def test_inner_product_unknown_filler_names_layer_and_field() -> None:
    layer = layer_from(
        'name: "ip" type: "InnerProduct" '
        'inner_product_param { num_output: 2 weight_filler { type: "foo" } }'
    )
    with pytest.raises(
        ConfigError,
        match=r"layer 'ip' \(InnerProduct\): inner_product_param.weight_filler: "
        r"Unknown filler name: foo \(known: constant, gaussian",
    ):
        layer.setup([Blob((2, 3))], [Blob()])


# -- Eltwise edge cases (eltwise_layer.cpp) --------------------------------------------


def test_eltwise_max_ties_go_to_bottom_one_then_the_earliest() -> None:
    # a > b picks a, else b: a tie between bottoms 0 and 1 goes to 1; a later
    # bottom must be strictly greater to win.
    a, b, c = (Blob((3,), dtype=np.float64) for _ in range(3))
    a.data[...] = [2.0, 5.0, 1.0]
    b.data[...] = [2.0, 1.0, 1.0]
    c.data[...] = [2.0, 5.0, 3.0]
    layer, top = layer_from(ELTWISE % "operation: MAX"), Blob(dtype=np.float64)
    layer.setup([a, b, c], [top])
    layer.forward([a, b, c], [top])
    np.testing.assert_array_equal(top.data, [2.0, 5.0, 3.0])
    top.diff[...] = [10.0, 20.0, 30.0]
    layer.backward([top], [True] * 3, [a, b, c])
    np.testing.assert_array_equal(a.diff, [0, 20, 0])
    np.testing.assert_array_equal(b.diff, [10, 0, 0])
    np.testing.assert_array_equal(c.diff, [0, 0, 30])


def test_eltwise_max_backward_zeros_are_positive() -> None:
    # Caffe: gradient = 0, += top diff where the bottom won: never -0.
    a, b = Blob((2,)), Blob((2,))
    a.data[...] = [1.0, 0.0]
    b.data[...] = [0.0, 1.0]
    layer, top = layer_from(ELTWISE % "operation: MAX"), Blob()
    layer.setup([a, b], [top])
    layer.forward([a, b], [top])
    top.diff[...] = [-0.0, -3.0]
    layer.backward([top], [True, True], [a, b])
    assert not np.signbit(a.diff).any() and not np.signbit(b.diff[0])
    assert b.diff[1] == -3.0


def test_eltwise_sum_coeff_is_float32_in_float32_nets() -> None:
    a, b = Blob((1,)), Blob((1,))
    a.data[...] = 3.0
    b.data[...] = 7.0
    layer, top = layer_from(ELTWISE % "coeff: 0.1 coeff: -0.3"), Blob()
    layer.setup([a, b], [top])
    layer.forward([a, b], [top])
    f = np.float32
    assert top.data[0] == f(0.1) * f(3.0) + f(-0.3) * f(7.0)
