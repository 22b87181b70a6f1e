"""Embed and Parameter, the layers that own blobs without a GEMM, after Caffe's
test_embed_layer.cpp (Caffe has no Parameter test; this one follows its
parameter_layer.hpp), and their blob layout through a .caffemodel round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import layer_from, rng
from gradient_check import check_gradient

from caffesolve.blob import Blob
from caffesolve.errors import ConfigError, DataError
from caffesolve.net import Net
from caffesolve.proto import caffe_pb2
from caffesolve.proto.io import parse_prototxt_text

EMBED = (
    'name: "e" type: "Embed" embed_param { num_output: 10 input_dim: 5 '
    'weight_filler { type: "uniform" min: -10 max: 10 } '
    'bias_filler { type: "uniform" min: -10 max: 10 } %s }'
)


def index_blob(values: list[int]) -> Blob:
    """Caffe's fixture shape (4, 1, 1, 1), holding indices."""
    b = Blob((len(values), 1, 1, 1), dtype=np.float64)
    b.data.reshape(-1)[:] = values
    return b


def test_embed_setup() -> None:
    layer, t = layer_from(EMBED % ""), Blob(dtype=np.float64)
    layer.setup([index_blob([0, 1, 2, 3])], [t])
    assert t.shape == (4, 1, 1, 1, 10)
    assert [b.shape for b in layer.blobs] == [(5, 10), (10,)]


@pytest.mark.parametrize("bias", [False, True])
def test_embed_forward(bias: bool) -> None:
    layer = layer_from(EMBED % f"bias_term: {str(bias).lower()}")
    bottom, t = index_blob([4, 0, 2, 4]), Blob(dtype=np.float64)
    layer.setup([bottom], [t])
    assert len(layer.blobs) == (2 if bias else 1)
    layer.forward([bottom], [t])
    w = layer.blobs[0].data
    b = layer.blobs[1].data if bias else 0.0
    for i, index in enumerate([4, 0, 2, 4]):
        np.testing.assert_array_equal(t.data[i, 0, 0, 0], w[index] + b)


@pytest.mark.parametrize("bias", [False, True])
def test_embed_gradient(bias: bool) -> None:
    # Caffe checks the params only (the indices take no gradient).
    layer = layer_from(EMBED % f"bias_term: {str(bias).lower()}")
    bottom = index_blob([4, 2, 2, 3])
    check_gradient(layer, [bottom], [Blob(dtype=np.float64)], check_bottom=[])


def test_embed_backward_adds_repeated_rows_and_accumulates() -> None:
    layer, t = layer_from(EMBED % ""), Blob(dtype=np.float64)
    bottom = index_blob([1, 3, 1, 1])
    layer.setup([bottom], [t])
    layer.forward([bottom], [t])
    t.diff[...] = np.arange(4).reshape(4, 1, 1, 1, 1) + 1.0  # rows 1, 2, 3, 4
    for blob in layer.blobs:
        blob.diff[...] = 0.5  # param diffs accumulate
    layer.backward([t], [False], [bottom])
    expected = np.full((5, 10), 0.5)
    expected[1] += 1 + 3 + 4
    expected[3] += 2
    np.testing.assert_array_equal(layer.blobs[0].diff, expected)
    np.testing.assert_array_equal(layer.blobs[1].diff, np.full(10, 0.5 + 10))


@pytest.mark.parametrize("value", [5.0, -1.0, 1.5])
def test_embed_rejects_bad_indices(value: float) -> None:
    layer, t = layer_from(EMBED % ""), Blob(dtype=np.float64)
    bottom = index_blob([0, 1, 2, 3])
    layer.setup([bottom], [t])
    bottom.data[2] = value
    with pytest.raises(
        DataError, match=r"layer 'e' \(Embed\).*not an index in \[0, 5\)"
    ):
        layer.forward([bottom], [t])


def test_embed_errors() -> None:
    with pytest.raises(ConfigError, match="embed_param.num_output must be positive"):
        layer_from('name: "e" type: "Embed" embed_param { input_dim: 5 }').setup(
            [index_blob([0])], [Blob()]
        )
    with pytest.raises(ConfigError, match="embed_param.input_dim must be positive"):
        layer_from('name: "e" type: "Embed" embed_param { num_output: 5 }').setup(
            [index_blob([0])], [Blob()]
        )
    layer, t = layer_from(EMBED % ""), Blob(dtype=np.float64)
    bottom = index_blob([0])
    layer.setup([bottom], [t])
    with pytest.raises(ConfigError, match="Can't backpropagate to EmbedLayer input"):
        layer.backward([t], [True], [bottom])


# -- Parameter ----------------------------------------------------------------------


def test_parameter_blob_is_zeros_and_shared_with_top() -> None:
    layer = layer_from(
        'name: "p" type: "Parameter" parameter_param { shape { dim: 2 dim: 3 } }'
    )
    t = Blob()
    layer.setup([], [t])
    assert t.shape == (2, 3) and len(layer.blobs) == 1
    np.testing.assert_array_equal(layer.blobs[0].data, np.zeros((2, 3)))
    layer.blobs[0].data[...] = np.arange(6).reshape(2, 3)
    layer.forward([], [t])
    np.testing.assert_array_equal(t.data, np.arange(6).reshape(2, 3))
    t.diff[...] = 4.0  # what the layer above writes is the param's gradient
    layer.backward([t], [], [])
    np.testing.assert_array_equal(layer.blobs[0].diff, np.full((2, 3), 4.0))


def test_parameter_gradient() -> None:
    layer = layer_from(
        'name: "p" type: "Parameter" parameter_param { shape { dim: 3 } }'
    )
    layer.blobs = [Blob((3,), dtype=np.float64)]  # given blobs skip the init
    layer.blobs[0].data[...] = rng().uniform(-1, 1, 3)
    check_gradient(layer, [], [Blob(dtype=np.float64)])


def test_parameter_copies_a_replaced_top_diff_back() -> None:
    layer = layer_from(
        'name: "p" type: "Parameter" parameter_param { shape { dim: 2 } }'
    )
    t = Blob()
    layer.setup([], [t])
    layer.forward([], [t])
    t.diff = np.array([1.0, 2.0], np.float32)  # a layer above replaced the array
    layer.backward([t], [], [])
    np.testing.assert_array_equal(layer.blobs[0].diff, [1.0, 2.0])


NET = """
name: "params"
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 4 } } }
layer { name: "embed" type: "Embed" bottom: "x" top: "e"
  embed_param { num_output: 3 input_dim: 5 weight_filler { type: "gaussian" }
                bias_filler { type: "gaussian" } } }
layer { name: "w" type: "Parameter" top: "w"
  parameter_param { shape { dim: 4 dim: 3 } } }
layer { name: "prod" type: "Eltwise" bottom: "e" bottom: "w" top: "ew"
  eltwise_param { operation: PROD } }
layer { name: "loss" type: "Reduction" bottom: "ew" top: "loss" loss_weight: 1 }
"""


def make_net() -> Net:
    param = parse_prototxt_text(NET, caffe_pb2.NetParameter(), "params.prototxt")
    return Net(param, caffe_pb2.TRAIN, rng=rng(), source="params.prototxt", quiet=True)


def test_net_trains_parameter_and_embed_blobs_and_round_trips(tmp_path: Path) -> None:
    net = make_net()
    net.layer_by_name("w").blobs[0].data[...] = rng().uniform(-1, 1, (4, 3))
    net.blob_by_name("x").data[...] = [1, 4, 1, 0]
    net.clear_param_diffs()
    loss = net.forward()
    e, w = net.blob_by_name("e").data, net.layer_by_name("w").blobs[0].data
    assert loss == pytest.approx(float((e * w).sum()), rel=1e-6)
    net.backward()
    # d loss / d w = e; d loss / d W_embed[k] = sum of w rows whose index is k.
    np.testing.assert_allclose(net.layer_by_name("w").blobs[0].diff, e, rtol=1e-6)
    embed = net.layer_by_name("embed")
    np.testing.assert_allclose(embed.blobs[0].diff[1], w[0] + w[2], rtol=1e-6)
    np.testing.assert_allclose(embed.blobs[1].diff, w.sum(axis=0), rtol=1e-6)
    # Caffe's layout: Embed (input_dim, num_output) + (num_output,), Parameter
    # one blob of its shape; a written .caffemodel loads back unchanged.
    proto = net.to_proto()
    layers = {lp.name: lp for lp in proto.layer}
    assert [list(b.shape.dim) for b in layers["embed"].blobs] == [[5, 3], [3]]
    assert [list(b.shape.dim) for b in layers["w"].blobs] == [[4, 3]]
    path = tmp_path / "params.caffemodel"
    path.write_bytes(proto.SerializeToString())
    other = make_net()
    other.copy_trained_layers_from(str(path))
    np.testing.assert_array_equal(other.layer_by_name("w").blobs[0].data, w)
    np.testing.assert_array_equal(
        other.layer_by_name("embed").blobs[0].data, embed.blobs[0].data
    )
