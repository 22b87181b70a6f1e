"""Slice, Crop, Tile and Silence, after Caffe's test_slice_layer.cpp,
test_crop_layer.cpp and test_tile_layer.cpp; and the Concat, Flatten and Reshape
edge cases of test_concat_layer.cpp and test_reshape_layer.cpp."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import layer_from, rng, run_cli
from gradient_check import check_gradient, make_blob

from caffesolve.blob import Blob
from caffesolve.errors import ConfigError, ShapeError
from caffesolve.net import Net
from caffesolve.proto import caffe_pb2


def tops(n: int) -> list[Blob]:
    return [Blob(dtype=np.float64) for _ in range(n)]


def counting(shape: tuple[int, ...]) -> Blob:
    """A float64 blob holding 0, 1, 2, ... in C order."""
    b = Blob(shape, dtype=np.float64)
    b.data[...] = np.arange(b.count).reshape(shape)
    return b


# -- Slice -----------------------------------------------------------------------------

SLICE = 'name: "s" type: "Slice" slice_param { %s }'


def test_slice_setup_num() -> None:
    bottom, top = make_blob((6, 12, 2, 3), rng()), tops(3)
    layer_from(SLICE % "axis: 0").setup([bottom], top)
    assert [t.shape for t in top] == [(2, 12, 2, 3)] * 3


def test_slice_setup_channels() -> None:
    bottom, top = make_blob((6, 12, 2, 3), rng()), tops(2)
    layer_from(SLICE % "slice_point: 3").setup([bottom], top)
    assert [t.shape for t in top] == [(6, 3, 2, 3), (6, 9, 2, 3)]


def test_slice_trivial_is_identity_and_shares() -> None:
    bottom, top = make_blob((6, 12, 2, 3), rng()), tops(1)
    layer = layer_from(SLICE % "")
    layer.setup([bottom], top)
    layer.forward([bottom], top)
    np.testing.assert_array_equal(top[0].data, bottom.data)
    assert np.shares_memory(top[0].data, bottom.data)
    assert np.shares_memory(top[0].diff, bottom.diff)


def test_slice_across_num() -> None:
    bottom, top = counting((6, 4, 2, 3)), tops(2)
    layer = layer_from(SLICE % "axis: 0")
    layer.setup([bottom], top)
    layer.forward([bottom], top)
    # Item n of top 1 is item n + 3 of the bottom: 24 values per item.
    np.testing.assert_array_equal(top[0].data.reshape(-1), np.arange(72))
    np.testing.assert_array_equal(top[1].data.reshape(-1), np.arange(72, 144))


def test_slice_across_channels() -> None:
    # Slice points 2, 8 of 12 channels: 2, 6 and 4 channels.
    bottom, top = counting((2, 12, 1, 1)), tops(3)
    layer = layer_from(SLICE % "slice_point: 2 slice_point: 8")
    layer.setup([bottom], top)
    layer.forward([bottom], top)
    assert [t.shape[1] for t in top] == [2, 6, 4]
    np.testing.assert_array_equal(top[0].data.reshape(2, -1), [[0, 1], [12, 13]])
    np.testing.assert_array_equal(top[1].data[1].reshape(-1), np.arange(14, 20))
    np.testing.assert_array_equal(top[2].data[0].reshape(-1), [8, 9, 10, 11])
    # Backward puts each top's diff back in its place.
    for k, t in enumerate(top):
        t.diff[...] = k + 1
    layer.backward(top, [True], [bottom])
    expected = np.repeat([1.0, 2.0, 3.0], [2, 6, 4])
    np.testing.assert_array_equal(bottom.diff[:, :, 0, 0], [expected, expected])


def test_slice_negative_axis_and_legacy_slice_dim() -> None:
    for param in ("axis: -1 slice_point: 1", "slice_dim: 3 slice_point: 1"):
        top = tops(2)
        layer_from(SLICE % param).setup([Blob((2, 3, 4, 5))], top)
        assert [t.shape for t in top] == [(2, 3, 4, 1), (2, 3, 4, 4)]


@pytest.mark.parametrize(
    ("param", "extra"), [("axis: 0", ""), ("slice_point: 4", ""), ("", "trivial")]
)
def test_slice_gradient(param: str, extra: str) -> None:
    bottom = make_blob((4, 5, 2, 2), rng())
    n = 1 if extra else 2
    check_gradient(layer_from(SLICE % param), [bottom], tops(n))


@pytest.mark.parametrize(
    ("param", "n", "message"),
    [
        ("slice_point: 3 slice_point: 2", 3, "slice_point must increase.*2 after 3"),
        ("slice_point: 0", 2, "must increase and be > 0"),
        ("slice_point: 2", 3, "1 points for 3 tops"),
        ("slice_point: 13", 2, "beyond the slice axis of size 12"),
        ("", 5, "Number of top blobs \\(5\\) should evenly divide input slice axis"),
        ("axis: 1 slice_dim: 1", 2, "Either axis or slice_dim"),
        ("slice_dim: 4", 2, "slice_param.slice_dim out of range"),
        ("axis: 4", 2, "slice_param.axis: axis 4 out of range"),
    ],
)
def test_slice_errors_name_layer_and_field(param: str, n: int, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^layer 's' \\(Slice\\): .*{message}"):
        layer_from(SLICE % param).setup([Blob((6, 12, 2, 3))], tops(n))


# -- Crop ------------------------------------------------------------------------------

CROP = 'name: "c" type: "Crop" crop_param { %s }'


def crop_blobs(extra_axis: bool = False) -> list[Blob]:
    g = rng()
    shapes = [(2, 4, 5, 4), (2, 3, 4, 2)]
    if extra_axis:
        shapes = [s + (d,) for s, d in zip(shapes, (2, 1))]
    return [make_blob(shapes[0], g), make_blob(shapes[1], g)]


@pytest.mark.parametrize(
    ("param", "shape"),
    [
        ("axis: 0", (2, 3, 4, 2)),  # every axis
        ("", (2, 4, 4, 2)),  # default axis 2
        ("axis: -1", (2, 4, 5, 2)),
    ],
)
def test_crop_setup_shape(param: str, shape: tuple[int, ...]) -> None:
    top = tops(1)
    layer_from(CROP % param).setup(crop_blobs(), top)
    assert top[0].shape == shape


def test_crop_dimensions_check_ignores_uncropped_axes() -> None:
    # The size blob has more channels, but channels are not cropped.
    data, top = crop_blobs()[0], tops(1)
    layer_from(CROP % "").setup([data, Blob((2, 5, 4, 2))], top)
    assert top[0].shape == (2, 4, 4, 2)


@pytest.mark.parametrize(
    ("param", "offsets"),
    [
        ("axis: 0", (0, 0, 0, 0)),
        ("axis: 0 offset: 0 offset: 1 offset: 1 offset: 2", (0, 1, 1, 2)),
        ("axis: 2 offset: 1 offset: 2", (0, 0, 1, 2)),
        ("axis: 1 offset: 1", (0, 1, 1, 1)),  # one offset for every axis
    ],
)
def test_crop_forward_backward(param: str, offsets: tuple[int, ...]) -> None:
    bottom, top = crop_blobs(), tops(1)
    layer = layer_from(CROP % param)
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    window = tuple(slice(o, o + s) for o, s in zip(offsets, top[0].shape))
    np.testing.assert_array_equal(top[0].data, bottom[0].data[window])
    top[0].diff[...] = 1.0
    bottom[0].diff[...] = 7.0  # stale values must be cleared
    layer.backward(top, [True, False], bottom)
    expected = np.zeros(bottom[0].shape)
    expected[window] = 1.0
    np.testing.assert_array_equal(bottom[0].diff, expected)


def test_crop_5d() -> None:
    bottom, top = crop_blobs(extra_axis=True), tops(1)
    layer = layer_from(CROP % "axis: 2 offset: 1 offset: 2 offset: 0")
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    assert top[0].shape == (2, 4, 4, 2, 1)
    np.testing.assert_array_equal(top[0].data, bottom[0].data[:, :, 1:5, 2:4, 0:1])


@pytest.mark.parametrize(
    ("param", "extra_axis"),
    [("axis: 0", False), ("axis: 2 offset: 1 offset: 2", False)]
    + [("axis: 2 offset: 1 offset: 2 offset: 0", True)],
)
def test_crop_gradient(param: str, extra_axis: bool) -> None:
    bottom = crop_blobs(extra_axis)
    check_gradient(layer_from(CROP % param), bottom, tops(1), check_bottom=[0])


@pytest.mark.parametrize(
    ("param", "size", "message"),
    [
        ("", (2, 4, 6, 2), "crop for dimension 2 is out-of-bounds with size 6 and "),
        ("offset: 2", (2, 4, 4, 2), "dimension 2 .* size 4 and offset 2"),
        ("offset: 1 offset: 2 offset: 3", (2, 4, 4, 2), "number of offset values"),
    ],
)
def test_crop_errors(param: str, size: tuple[int, ...], message: str) -> None:
    with pytest.raises(
        ConfigError, match=f"^layer 'c' \\(Crop\\): crop_param.*{message}"
    ):
        layer_from(CROP % param).setup([Blob((2, 4, 5, 4)), Blob(size)], tops(1))


def test_crop_size_blob_with_fewer_axes() -> None:
    with pytest.raises(ShapeError, match="fewer axes"):
        layer_from(CROP % "").setup([Blob((2, 4, 5, 4)), Blob((2, 4, 4))], tops(1))


# -- Tile ------------------------------------------------------------------------------

TILE = 'name: "t" type: "Tile" tile_param { %s }'


@pytest.mark.parametrize("tiles", [1, 3])
def test_tile_setup(tiles: int) -> None:
    for axis in range(4):
        top = tops(1)
        layer_from(TILE % f"axis: {axis} tiles: {tiles}").setup(
            [Blob((2, 3, 4, 5))], top
        )
        expected = [2, 3, 4, 5]
        expected[axis] *= tiles
        assert top[0].shape == tuple(expected)


@pytest.mark.parametrize("axis", [0, 1, 3])
def test_tile_forward(axis: int) -> None:
    bottom, top = make_blob((2, 3, 4, 5), rng()), tops(1)
    layer = layer_from(TILE % f"axis: {axis} tiles: 3")
    layer.setup([bottom], top)
    layer.forward([bottom], top)
    # top[..., i, ...] == bottom[..., i % size, ...] along the tiled axis.
    size = bottom.shape[axis]
    index = np.arange(3 * size) % size
    np.testing.assert_array_equal(top[0].data, np.take(bottom.data, index, axis=axis))


def test_tile_backward_sums_copies() -> None:
    bottom, top = counting((2, 2)), tops(1)
    layer = layer_from(TILE % "axis: 1 tiles: 3")
    layer.setup([bottom], top)
    top[0].diff[...] = np.arange(12).reshape(2, 6)
    layer.backward(top, [True], [bottom])
    # Item 0: columns (0, 2, 4) and (1, 3, 5) of row 0; item 1 the same + 6.
    np.testing.assert_array_equal(bottom.diff, [[6, 9], [24, 27]])


@pytest.mark.parametrize("param", ["tiles: 1", "axis: 0 tiles: 3", "axis: 1 tiles: 3"])
def test_tile_gradient(param: str) -> None:
    bottom = make_blob((2, 3, 2, 2), rng())
    check_gradient(layer_from(TILE % param), [bottom], tops(1), threshold=1e-2)


@pytest.mark.parametrize(
    ("param", "message"),
    [
        ("axis: 1", "tile_param.tiles: Number of tiles must be specified"),
        ("tiles: 0", "tile_param.tiles: Number of tiles must be positive"),
        ("tiles: 2 axis: 4", "tile_param.axis"),
    ],
)
def test_tile_errors(param: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^layer 't' \\(Tile\\): {message}"):
        layer_from(TILE % param).setup([Blob((2, 3, 4, 5))], tops(1))


# -- Silence ---------------------------------------------------------------------------


def test_silence_zeroes_bottom_diffs() -> None:
    a, b = make_blob((2, 3), rng()), make_blob((4,), rng())
    a.diff[...] = b.diff[...] = 5.0
    layer = layer_from('name: "quiet" type: "Silence"')
    layer.setup([a, b], [])
    layer.forward([a, b], [])
    layer.backward([], [True, False], [a, b])
    assert np.all(a.diff == 0) and np.all(b.diff == 5.0)


def test_silence_takes_no_top() -> None:
    with pytest.raises(ConfigError, match="Silence Layer produces 0 top blob"):
        layer_from('name: "q" type: "Silence"').setup([Blob((2,))], tops(1))


# -- Concat, Flatten, Reshape edge cases -----------------------------------------------


def test_concat_gradient_to_one_bottom_only() -> None:
    # Caffe's TestGradientChannelsBottomOneOnly: bottom 0 is not asked for.
    g = rng()
    a, b = make_blob((2, 3, 2, 2), g), make_blob((2, 5, 2, 2), g)
    a.diff[...] = 9.0
    check_gradient(
        layer_from('name: "c" type: "Concat"'), [a, b], tops(1), check_bottom=[1]
    )
    assert np.all(a.diff == 9.0)


def test_concat_negative_axis_and_errors() -> None:
    top = tops(1)
    layer_from('name: "c" type: "Concat" concat_param { axis: -3 }').setup(
        [Blob((2, 3, 6, 5)), Blob((2, 4, 6, 5))], top
    )
    assert top[0].shape == (2, 7, 6, 5)
    with pytest.raises(ConfigError, match="concat_param.concat_dim out of range"):
        layer_from('name: "c" type: "Concat" concat_param { concat_dim: 2 }').setup(
            [Blob((2, 3)), Blob((2, 3))], tops(1)
        )
    with pytest.raises(ShapeError, match="same shape, except at concat_axis"):
        layer_from('name: "c" type: "Concat"').setup(
            [Blob((2, 3, 4)), Blob((2, 3))], tops(1)
        )


@pytest.mark.parametrize(
    ("dims", "extra", "shape"),
    [
        # Caffe's TestInsertSingletonAxesStart / Middle / End, TestFlattenMiddle
        ("dim: 1 dim: 1 dim: 1", "axis: 0 num_axes: 0", (1, 1, 1, 2, 3, 6, 5)),
        ("dim: 1 dim: 1 dim: 1", "axis: 2 num_axes: 0", (2, 3, 1, 1, 1, 6, 5)),
        ("dim: 1 dim: 1 dim: 1", "axis: -1 num_axes: 0", (2, 3, 6, 5, 1, 1, 1)),
        ("dim: -1", "axis: 1 num_axes: 2", (2, 18, 5)),
        (
            "dim: 0 dim: -1",
            "axis: 1",
            (2, 3, 30),
        ),  # TestInferenceOfUnspecifiedWithStartAxis
    ],
)
def test_reshape_caffe_cases(dims: str, extra: str, shape: tuple[int, ...]) -> None:
    top = tops(1)
    layer_from(
        f'name: "r" type: "Reshape" reshape_param {{ shape {{ {dims} }} {extra} }}'
    ).setup([Blob((2, 3, 6, 5))], top)
    assert top[0].shape == shape


def test_reshape_forward_after_reshape() -> None:
    # Caffe's TestForwardAfterReshape: a new bottom shape gives new views.
    layer = layer_from(
        'name: "r" type: "Reshape" reshape_param { shape { dim: 0 dim: -1 } }'
    )
    bottom, top = counting((2, 3, 2)), tops(1)
    layer.setup([bottom], top)
    bottom.reshape((3, 3, 2))
    bottom.data[...] = np.arange(18).reshape(3, 3, 2)
    layer.reshape([bottom], top)
    layer.forward([bottom], top)
    np.testing.assert_array_equal(top[0].data, np.arange(18).reshape(3, 6))


@pytest.mark.parametrize("param", ["", "flatten_param { axis: 2 end_axis: 3 }"])
def test_flatten_gradient(param: str) -> None:
    bottom = make_blob((2, 3, 2, 2), rng())
    check_gradient(layer_from(f'name: "f" type: "Flatten" {param}'), [bottom], tops(1))


# -- in a net: wiring, and errors that name the file -----------------------------------

ROUTING_NET = """
name: "routing"
force_backward: true
layer { name: "in" type: "Input" top: "x" top: "ref"
  input_param { shape { dim: 2 dim: 6 dim: 5 dim: 5 }
                shape { dim: 2 dim: 1 dim: 3 dim: 3 } } }
layer { name: "slice" type: "Slice" bottom: "x" top: "a" top: "b" top: "unused"
  slice_param { slice_point: 2 slice_point: 5 } }
layer { name: "crop" type: "Crop" bottom: "a" bottom: "ref" top: "ac"
  crop_param { offset: %d } }
layer { name: "tile" type: "Tile" bottom: "ac" top: "at"
  tile_param { tiles: 2 axis: 2 } }
layer { name: "quiet" type: "Silence" bottom: "unused" }
layer { name: "flat_b" type: "Flatten" bottom: "b" top: "bf" }
layer { name: "flat_t" type: "Flatten" bottom: "at" top: "tf" }
layer { name: "cat" type: "Concat" bottom: "bf" bottom: "tf" top: "cat" }
layer { name: "loss" type: "Reduction" bottom: "cat" top: "loss"
  reduction_param { operation: SUMSQ } loss_weight: 0.5 }
"""


def test_routing_layers_in_a_net(tmp_path: Path) -> None:
    model = tmp_path / "routing.prototxt"
    model.write_text(ROUTING_NET % 1)
    net = Net.from_prototxt(model, caffe_pb2.TRAIN, quiet=True)
    x = net.blob_by_name("x")
    x.data[...] = rng().uniform(-1, 1, x.shape)
    assert net.blob_by_name("cat").shape == (2, 3 * 25 + 2 * 6 * 3)
    loss = net.forward()
    b = x.data[:, 2:5].reshape(2, -1)
    ac = x.data[:, :2, 1:4, 1:4]
    assert loss == pytest.approx(0.5 * ((b**2).sum() + 2 * (ac**2).sum()), rel=1e-5)
    net.backward()
    # d/dx of 0.5 * sum(y^2) is y for each copy: b once, the crop twice
    # (tiled), the silenced channel 5 and the cropped-off border nothing.
    expected = np.zeros(x.shape, np.float32)
    expected[:, 2:5] = x.data[:, 2:5]
    expected[:, :2, 1:4, 1:4] = 2 * ac
    np.testing.assert_allclose(x.diff, expected, rtol=1e-6)


def test_a_crop_larger_than_the_input_is_a_one_line_cli_error(tmp_path: Path) -> None:
    model = tmp_path / "routing.prototxt"
    model.write_text(ROUTING_NET % 3)  # 3 + 3 > 5
    code, _, err = run_cli("time", str(model), "--iterations", "1")
    assert code != 0
    message = err.strip().splitlines()[-1]
    assert message == (
        f"Error: {model}: layer 'crop' (Crop): crop_param: the crop for dimension "
        "2 is out-of-bounds with size 3 and offset 3 (bottom[0] 'a' 2 2 5 5 (100), "
        "bottom[1] 'ref' 2 1 3 3 (18)); the crop must fit inside bottom[0]"
    )
    assert "Traceback" not in err


def test_slice_points_out_of_order_name_the_file(tmp_path: Path) -> None:
    model = tmp_path / "routing.prototxt"
    text = (ROUTING_NET % 1).replace(
        "slice_point: 2 slice_point: 5", "slice_point: 5 slice_point: 2"
    )
    model.write_text(text)
    with pytest.raises(ConfigError) as e:
        Net.from_prototxt(model, caffe_pb2.TRAIN, quiet=True)
    assert str(e.value).startswith(
        f"{model}: layer 'slice' (Slice): slice_param: slice_point must increase "
        "and be > 0: 2 after 5"
    )
