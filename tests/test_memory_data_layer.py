"""MemoryData, after Caffe's test_memory_data_layer.cpp (TestSetup,
TestForward) and pycaffe's set_input_arrays checks."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import layer_from

from caffesolve.blob import Blob
from caffesolve.errors import DataError, ShapeError
from caffesolve.layers.data import MemoryDataLayer
from caffesolve.net import Net
from caffesolve.proto import caffe_pb2
from caffesolve.proto.io import parse_prototxt_text

TEXT = (
    'name: "m" type: "MemoryData" top: "data" top: "label" '
    "memory_data_param { batch_size: 8 channels: 3 height: 4 width: 5 }"
)


def memory_layer(text: str = TEXT) -> tuple[MemoryDataLayer, list[Blob]]:
    lay = layer_from(text)
    top = [Blob(), Blob()]
    lay.setup([], top)
    return lay, top  # type: ignore[return-value]


def test_setup() -> None:
    lay, top = memory_layer()
    assert top[0].shape == (8, 3, 4, 5) and top[1].shape == (8,)


def test_forward_wraps_over_the_arrays() -> None:
    lay, top = memory_layer()
    rng = np.random.default_rng(0)
    data = rng.random((24, 3, 4, 5)).astype(np.float32)
    labels = np.arange(24, dtype=np.float32)
    lay.set_input_arrays(data, labels)
    for it in range(5):  # 3 batches per pass
        lay.forward([], top)
        k = it % 3
        np.testing.assert_array_equal(top[0].data, data[8 * k : 8 * k + 8])
        assert top[1].shape == (8, 1, 1, 1)
        assert top[1].data.reshape(-1).tolist() == list(range(8 * k, 8 * k + 8))
    # the arrays are the layer's input, not copies (Caffe keeps the pointers)
    data[16:] = 7
    lay.forward([], top)  # batch 2 of the 6th forward
    assert (top[0].data == 7).all()


def test_set_input_arrays_checks() -> None:
    lay, _ = memory_layer()
    good = np.zeros((8, 3, 4, 5), np.float32)
    cases = [
        (
            good.astype(np.float64),
            np.zeros(8, np.float32),
            "data array must be float32",
        ),
        (np.zeros((8, 2, 4, 5), np.float32), np.zeros(8), "wrong number of channels"),
        (np.zeros((8, 3, 5, 5), np.float32), np.zeros(8), "wrong height"),
        (
            good.transpose(0, 1, 3, 2).copy().transpose(0, 1, 3, 2),
            np.zeros(8, np.float32),
            "must be C contiguous",
        ),  # fmt: skip
        (good[0], np.zeros(8, np.float32), "must be 4-d"),
        (good, np.zeros(8, np.int64), "labels array must be float32"),
        (good, np.zeros(7, np.float32), "same first dimension"),
        (good[:4], np.zeros(4, np.float32), "multiple of batch size"),
    ]
    for data, labels, message in cases:
        with pytest.raises(ShapeError, match=message):
            lay.set_input_arrays(data, labels)
    lay.set_input_arrays(good, np.zeros((8, 1, 1, 1), np.float32))


def test_forward_before_set_input_arrays() -> None:
    lay, top = memory_layer()
    with pytest.raises(DataError, match="needs to be initialized .*set_input_arrays"):
        lay.forward([], top)


def test_in_a_net() -> None:
    net_text = f"""
    name: "mem"
    layer {{ {TEXT} }}
    layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
      inner_product_param {{ num_output: 2 weight_filler {{ type: "xavier" }} }} }}
    layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label"
      top: "loss" }}
    """
    net = Net(parse_prototxt_text(net_text, caffe_pb2.NetParameter()), caffe_pb2.TRAIN,
              rng=np.random.default_rng(1), quiet=True)  # fmt: skip
    layer = net.layers[0]
    assert isinstance(layer, MemoryDataLayer)
    data = np.random.default_rng(2).random((16, 3, 4, 5)).astype(np.float32)
    layer.set_input_arrays(data, np.tile([0, 1], 8).astype(np.float32))
    loss = net.forward()
    assert np.isfinite(loss)
    np.testing.assert_array_equal(net.blob_by_name("data").data, data[:8])
    state = layer.get_state()
    net.forward()
    layer.set_state(state)  # type: ignore[arg-type]
    net.forward()
    np.testing.assert_array_equal(net.blob_by_name("data").data, data[8:])
