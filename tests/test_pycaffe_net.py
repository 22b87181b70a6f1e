"""caffe.Net, after pycaffe's python/caffe/test/test_net.py: the constructors,
blobs and params as ordered dicts of live arrays, the 0-d loss, forward and
backward with start/end and keyword arrays, forward_all, weights in and
out, levels and stages. References are worked out here with NumPy."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

import caffe
from caffesolve.errors import CaffesolveError, ConfigError, ShapeError

pytestmark = pytest.mark.usefixtures("quiet_log")

NUM_OUTPUT = 13

# test_net.py's simple net, with an Input layer where it had DummyData.
SIMPLE_NET = """name: 'testnet' force_backward: true
layer { type: 'Input' name: 'data' top: 'data' top: 'label'
  input_param { shape { dim: 5 dim: 2 dim: 3 dim: 4 } shape { dim: 5 } } }
layer { type: 'Convolution' name: 'conv' bottom: 'data' top: 'conv'
  convolution_param { num_output: 11 kernel_size: 2 pad: 3
    weight_filler { type: 'gaussian' std: 1 }
    bias_filler { type: 'constant' value: 2 } }
  param { decay_mult: 1 } param { decay_mult: 0 } }
layer { type: 'InnerProduct' name: 'ip' bottom: 'conv' top: 'ip_blob'
  inner_product_param { num_output: 13
    weight_filler { type: 'gaussian' std: 2.5 }
    bias_filler { type: 'constant' value: -3 } } }
layer { type: 'SoftmaxWithLoss' name: 'loss' bottom: 'ip_blob' bottom: 'label'
  top: 'loss' }
"""


def write(tmp_path: Path, text: str, name: str = "net.prototxt") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.fixture
def net_file(tmp_path: Path) -> str:
    return write(tmp_path, SIMPLE_NET)


@pytest.fixture
def net(net_file: str) -> caffe.Net:
    net = caffe.Net(net_file, caffe.TRAIN)
    rng = np.random.default_rng(1701)
    net.blobs["data"].data[...] = rng.uniform(-1, 1, net.blobs["data"].shape)
    net.blobs["label"].data[...] = rng.integers(NUM_OUTPUT, size=5)
    return net


def softmax_loss(scores: np.ndarray, labels: np.ndarray) -> float:
    """SoftmaxWithLoss in float64: mean of -log(max(prob[label], FLT_MIN))
    (softmax_loss_layer.cpp clamps at FLT_MIN)."""
    s = scores.astype(np.float64)
    e = np.exp(s - s.max(axis=1, keepdims=True))
    prob = (e / e.sum(axis=1, keepdims=True))[
        np.arange(len(labels)), labels.astype(int)
    ]
    return float(-np.log(np.maximum(prob, np.finfo(np.float32).tiny)).mean())


def test_blobs_and_params_are_ordered_dicts_in_caffes_order(net: caffe.Net) -> None:
    assert isinstance(net.blobs, OrderedDict)
    assert list(net.blobs) == ["data", "label", "conv", "ip_blob", "loss"]
    assert list(net.params) == ["conv", "ip"]  # layers with learnable blobs
    assert [p.data.shape for p in net.params["conv"]] == [(11, 2, 2, 2), (11,)]
    assert [p.data.shape for p in net.params["ip"]] == [(13, 11 * 8 * 9), (13,)]
    assert np.all(net.params["conv"][1].data == 2)  # bias_filler constant 2
    assert net.inputs == ["data", "label"] and net.outputs == ["loss"]
    assert list(net._layer_names) == ["data", "conv", "ip", "loss"]
    assert [layer.type for layer in net.layers] == [
        "Input",
        "Convolution",
        "InnerProduct",
        "SoftmaxWithLoss",
    ]
    assert list(net.layer_dict) == list(net._layer_names)
    assert net.layer_dict["ip"].blobs[0] is net.params["ip"][0]
    assert net.blob_loss_weights == OrderedDict(
        [("data", 0), ("label", 0), ("conv", 0), ("ip_blob", 0), ("loss", 1)]
    )


def test_top_bottom_names(net: caffe.Net) -> None:
    assert net.top_names == OrderedDict(
        [
            ("data", ["data", "label"]),
            ("conv", ["conv"]),
            ("ip", ["ip_blob"]),
            ("loss", ["loss"]),
        ]  # fmt: skip
    )
    assert net.bottom_names == OrderedDict(
        [
            ("data", []),
            ("conv", ["data"]),
            ("ip", ["conv"]),
            ("loss", ["ip_blob", "label"]),
        ]  # fmt: skip
    )


def test_blob_shape_accessors(net: caffe.Net) -> None:
    conv = net.blobs["conv"]
    assert (conv.num, conv.channels, conv.height, conv.width) == (5, 11, 8, 9)
    assert conv.count == 5 * 11 * 8 * 9 and conv.shape == (5, 11, 8, 9)
    ip = net.blobs["ip_blob"]  # 2-D: Caffe's LegacyShape gives 1 past the axes
    assert (ip.num, ip.channels, ip.height, ip.width) == (5, 13, 1, 1)
    ip.reshape(1, 2, 3, 4, 5)
    with pytest.raises(ShapeError, match="up to 4 axes"):
        _ = ip.num
    ip.reshape(7, 13)  # pycaffe's reshape(*dims)
    assert ip.data.shape == (7, 13) and ip.diff.shape == (7, 13)


def test_loss_is_0d_and_forward_returns_live_arrays(net: caffe.Net) -> None:
    out = net.forward()
    assert set(out) == {"loss"}
    assert out["loss"].shape == () and net.blobs["loss"].data.shape == ()
    expected = softmax_loss(net.blobs["ip_blob"].data, net.blobs["label"].data)
    assert float(out["loss"]) == pytest.approx(expected, rel=1e-5)
    assert out["loss"] is net.blobs["loss"].data  # the blob's own array


def test_views_kept_across_forward_see_new_values(net: caffe.Net) -> None:
    kept = {name: blob.data for name, blob in net.blobs.items()}
    kept_slice = net.blobs["ip_blob"].data[2:4]
    net.forward()
    first = net.blobs["ip_blob"].data.copy()
    # Writing into the input's array feeds the net.
    net.blobs["data"].data[...] = 0.5
    net.forward()
    for name, array in kept.items():
        assert array is net.blobs[name].data, name
    assert not np.array_equal(first, net.blobs["ip_blob"].data)
    np.testing.assert_array_equal(kept_slice, net.blobs["ip_blob"].data[2:4])
    # ip_blob = W conv + b, row by row (test_net.py's manual forward).
    w, b = (p.data for p in net.params["ip"])
    conv = net.blobs["conv"].data.reshape(5, -1)
    np.testing.assert_allclose(kept["ip_blob"], conv @ w.T + b, rtol=1e-4, atol=1e-4)


def test_forward_start_end(net: caffe.Net) -> None:
    conv_blob, ip_blob = net.blobs["conv"], net.blobs["ip_blob"]
    rng = np.random.default_rng(3)
    conv_blob.data[...] = rng.uniform(size=conv_blob.data.shape)
    out = net.forward(start="ip", end="ip")
    assert set(out) == {"ip_blob"}
    w, b = (p.data for p in net.params["ip"])
    manual = conv_blob.data.reshape(5, -1) @ w.T + b
    np.testing.assert_allclose(ip_blob.data, manual, rtol=1e-3, atol=1e-5)
    # start alone: the data layer is not run, the conv input stays as set
    out = net.forward(start="conv", blobs=["conv"])
    assert set(out) == {"loss", "conv"}


def test_backward_start_end(net: caffe.Net) -> None:
    conv_blob, ip_blob = net.blobs["conv"], net.blobs["ip_blob"]
    net.forward()
    top_diff = np.random.default_rng(4).uniform(size=ip_blob.data.shape)
    ip_blob.diff[...] = top_diff
    out = net.backward(start="ip", end="ip")
    assert set(out) == {"conv"}
    manual = (top_diff @ net.params["ip"][0].data.astype(np.float64)).reshape(
        conv_blob.data.shape
    )
    np.testing.assert_allclose(conv_blob.diff, manual, rtol=1e-3, atol=1e-5)


def test_forward_backward_keyword_arrays(net: caffe.Net) -> None:
    data = np.full((5, 2, 3, 4), 0.25, np.float32)
    labels = np.arange(5, dtype=np.float32)
    out = net.forward(data=data, label=labels)
    np.testing.assert_array_equal(net.blobs["data"].data, data)
    assert float(out["loss"]) == pytest.approx(
        softmax_loss(net.blobs["ip_blob"].data, labels), rel=1e-5
    )
    with pytest.raises(ConfigError, match="do not match net inputs"):
        net.forward(data=data)
    with pytest.raises(ShapeError, match="not batch sized"):
        net.forward(data=data[:3], label=labels[:3])
    grads = net.backward()  # the loss blob's diff holds its loss weight, 1
    assert set(grads) == {"data", "label"}
    once = grads["data"].copy()
    twice = net.backward(loss=np.float32(2.0).reshape(()))["data"]
    np.testing.assert_allclose(twice, 2 * once, rtol=1e-5)
    with pytest.raises(ConfigError, match="Unknown layer name ipp.*did you mean"):
        net.forward(start="ipp")


def test_clear_param_diffs(net: caffe.Net) -> None:
    net.forward()
    net.backward()
    diff = net.params["conv"][0].diff
    assert diff.max() > 0
    net.clear_param_diffs()
    assert (diff == 0).all()


def test_save_and_read(net: caffe.Net, net_file: str, tmp_path: Path) -> None:
    weights = str(tmp_path / "w.caffemodel")
    net.save(weights)
    legacy = caffe.Net(net_file, weights, caffe.TRAIN)
    named = caffe.Net(net_file, caffe.TRAIN, weights=weights)
    positional = caffe.Net(net_file, caffe.TEST, 0, None, weights)
    for other in (legacy, named, positional):
        for name, blobs in net.params.items():
            for mine, theirs in zip(blobs, other.params[name]):
                np.testing.assert_array_equal(mine.data, theirs.data)
    # copy_from into a fresh net, then share_with a third
    fresh = caffe.Net(net_file, caffe.TRAIN)
    fresh.copy_from(weights)
    np.testing.assert_array_equal(fresh.params["ip"][0].data, net.params["ip"][0].data)
    third = caffe.Net(net_file, caffe.TEST)
    third.share_with(fresh)
    fresh.params["ip"][0].data[...] = 7
    assert np.all(third.params["ip"][0].data == 7)


def test_save_hdf5(net: caffe.Net, net_file: str, tmp_path: Path) -> None:
    path = str(tmp_path / "w.caffemodel.h5")
    net.save_hdf5(path)
    other = caffe.Net(net_file, caffe.TRAIN)
    other.load_hdf5(path)
    for name, blobs in net.params.items():
        for mine, theirs in zip(blobs, other.params[name]):
            np.testing.assert_array_equal(mine.data, theirs.data)


def test_constructor_errors(net_file: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs the phase"):
        caffe.Net(net_file)
    with pytest.raises(ConfigError, match="file not found"):
        caffe.Net(str(tmp_path / "missing.prototxt"), caffe.TEST)
    with pytest.raises(CaffesolveError, match="weights file not found"):
        caffe.Net(net_file, caffe.TEST, weights=str(tmp_path / "none.caffemodel"))
    with pytest.raises(TypeError, match="unexpected"):
        caffe.Net(net_file, caffe.TEST, weight="x")


DEPLOY = """name: 'deploy'
input: 'data' input_shape { dim: 4 dim: 3 }
layer { type: 'InnerProduct' name: 'ip' bottom: 'data' top: 'ip'
  inner_product_param { num_output: 2 weight_filler { type: 'gaussian' } } }
layer { type: 'Softmax' name: 'prob' bottom: 'ip' top: 'prob' }
"""


def test_forward_all_batches_and_drops_padding(tmp_path: Path) -> None:
    net = caffe.Net(write(tmp_path, DEPLOY), caffe.TEST)
    rows = np.random.default_rng(5).normal(size=(10, 3)).astype(np.float32)
    out = net.forward_all(data=rows, blobs=["ip"])
    assert set(out) == {"prob", "ip"}
    assert out["ip"].shape == (10, 2) and out["prob"].shape == (10, 2)
    w, b = (p.data.astype(np.float64) for p in net.params["ip"])
    ip = rows @ w.T + b
    np.testing.assert_allclose(out["ip"], ip, rtol=1e-5, atol=1e-6)
    e = np.exp(ip - ip.max(1, keepdims=True))
    np.testing.assert_allclose(out["prob"], e / e.sum(1, keepdims=True), atol=1e-6)
    with pytest.raises(ConfigError, match="forward_all takes the input arrays"):
        net.forward_all()


def test_forward_backward_all(tmp_path: Path) -> None:
    net = caffe.Net(write(tmp_path, "force_backward: true\n" + DEPLOY), caffe.TEST)
    rng = np.random.default_rng(6)
    rows = rng.normal(size=(6, 3)).astype(np.float32)
    prob_diff = rng.normal(size=(6, 2)).astype(np.float32)
    outs, diffs = net.forward_backward_all(data=rows, prob=prob_diff)
    assert outs["prob"].shape == (6, 2) and diffs["data"].shape == (6, 3)
    # d data = W^T (J_softmax^T d prob), row by row
    p = outs["prob"].astype(np.float64)
    d_ip = p * (prob_diff - (prob_diff * p).sum(1, keepdims=True))
    expected = d_ip @ net.params["ip"][0].data.astype(np.float64)
    np.testing.assert_allclose(diffs["data"], expected, rtol=1e-4, atol=1e-6)


def test_input_reshape_then_forward(tmp_path: Path) -> None:
    net = caffe.Net(write(tmp_path, DEPLOY), caffe.TEST)
    net.blobs["data"].reshape(7, 3)
    net.reshape()
    assert net.blobs["prob"].data.shape == (7, 2)
    net.blobs["data"].data[...] = 1
    assert net.forward()["prob"].shape == (7, 2)


def test_after_backward_hook(net: caffe.Net) -> None:
    seen: list[int] = []
    net.after_backward(seen.append)
    net.forward()
    net.backward()
    assert seen == [3, 2, 1, 0]
    with pytest.raises(NotImplementedError, match="after_backward hooks only"):
        net.before_forward(seen.append)


def test_set_input_arrays_needs_memory_data_first(net: caffe.Net) -> None:
    data = np.zeros((5, 2, 3, 4), np.float32)
    with pytest.raises(ConfigError, match="first layer is a MemoryDataLayer"):
        net.set_input_arrays(data, np.zeros(5, np.float32))


MEMORY_NET = """layer { type: 'MemoryData' name: 'data' top: 'data' top: 'label'
  memory_data_param { batch_size: 2 channels: 1 height: 2 width: 3 } }
layer { type: 'InnerProduct' name: 'ip' bottom: 'data' top: 'ip'
  inner_product_param { num_output: 1 weight_filler { type: 'constant' value: 1 } } }
"""


def test_set_input_arrays_feeds_memory_data(tmp_path: Path) -> None:
    net = caffe.Net(write(tmp_path, MEMORY_NET), caffe.TRAIN)
    data = np.arange(4 * 6, dtype=np.float32).reshape(4, 1, 2, 3)
    labels = np.array([3, 1, 4, 1], np.float32)
    net.set_input_arrays(data, labels)  # 1-D labels, as pycaffe allows
    for start in (0, 2, 0):  # batches of 2, wrapping after the last
        net.forward()
        np.testing.assert_array_equal(net.blobs["data"].data, data[start : start + 2])
        np.testing.assert_array_equal(
            net.blobs["label"].data.ravel(), labels[start : start + 2]
        )
        np.testing.assert_allclose(
            net.blobs["ip"].data.ravel(), data[start : start + 2].sum(axis=(1, 2, 3))
        )


def test_holding_blobs_after_the_net_is_gone(net: caffe.Net) -> None:
    params = [p for blobs in net.params.values() for p in blobs]
    blobs = list(net.blobs.values())
    del net
    total = sum(float(p.data.sum() + p.diff.sum()) for p in params + blobs)
    assert np.isfinite(total)


LEVELS = """
layer { name: "data" type: "Input" top: "data"
  input_param { shape { dim: 1 dim: 1 dim: 10 dim: 10 } } }
layer { name: "NoLevel" type: "InnerProduct" bottom: "data" top: "NoLevel"
  inner_product_param { num_output: 1 } }
layer { name: "Level0Only" type: "InnerProduct" bottom: "data" top: "Level0Only"
  include { min_level: 0 max_level: 0 } inner_product_param { num_output: 1 } }
layer { name: "Level1Only" type: "InnerProduct" bottom: "data" top: "Level1Only"
  include { min_level: 1 max_level: 1 } inner_product_param { num_output: 1 } }
layer { name: "Level>=0" type: "InnerProduct" bottom: "data" top: "Level>=0"
  include { min_level: 0 } inner_product_param { num_output: 1 } }
layer { name: "Level>=1" type: "InnerProduct" bottom: "data" top: "Level>=1"
  include { min_level: 1 } inner_product_param { num_output: 1 } }
"""

STAGES = """
layer { name: "data" type: "Input" top: "data"
  input_param { shape { dim: 1 dim: 1 dim: 10 dim: 10 } } }
layer { name: "A" type: "InnerProduct" bottom: "data" top: "A"
  include { stage: "A" } inner_product_param { num_output: 1 } }
layer { name: "B" type: "InnerProduct" bottom: "data" top: "B"
  include { stage: "B" } inner_product_param { num_output: 1 } }
layer { name: "AorB" type: "InnerProduct" bottom: "data" top: "AorB"
  include { stage: "A" } include { stage: "B" } inner_product_param { num_output: 1 } }
layer { name: "AandB" type: "InnerProduct" bottom: "data" top: "AandB"
  include { stage: "A" stage: "B" } inner_product_param { num_output: 1 } }
"""


def non_data(net: caffe.Net) -> list[str]:
    return [b for b in net.blobs if "data" not in b]


def test_levels(tmp_path: Path) -> None:
    path = write(tmp_path, LEVELS)
    assert non_data(caffe.Net(path, caffe.TEST)) == [
        "NoLevel",
        "Level0Only",
        "Level>=0",
    ]
    assert non_data(caffe.Net(path, caffe.TEST, level=1)) == [
        "NoLevel",
        "Level1Only",
        "Level>=0",
        "Level>=1",
    ]


def test_stages(tmp_path: Path) -> None:
    path = write(tmp_path, STAGES)
    assert non_data(caffe.Net(path, caffe.TEST, stages=["A"])) == ["A", "AorB"]
    assert non_data(caffe.Net(path, caffe.TEST, stages=["B"])) == ["B", "AorB"]
    assert non_data(caffe.Net(path, caffe.TEST, stages=["A", "B"])) == [
        "A",
        "B",
        "AorB",
        "AandB",
    ]


ALL_IN_ONE = """
layer { name: "train_data" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 1 dim: 1 dim: 10 dim: 10 } shape { dim: 1 } }
  include { phase: TRAIN stage: "train" } }
layer { name: "val_data" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 1 dim: 1 dim: 10 dim: 10 } shape { dim: 1 } }
  include { phase: TEST stage: "val" } }
layer { name: "deploy_data" type: "Input" top: "data"
  input_param { shape { dim: 1 dim: 1 dim: 10 dim: 10 } }
  include { phase: TEST stage: "deploy" } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 2 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss"
  include: { phase: TRAIN stage: "train" } include: { phase: TEST stage: "val" } }
layer { name: "pred" type: "Softmax" bottom: "ip" top: "pred"
  include: { phase: TEST stage: "deploy" } }
"""


@pytest.mark.parametrize(
    "phase, stage, outputs",
    [
        (caffe.TRAIN, "train", ["loss"]),
        (caffe.TEST, "val", ["loss"]),
        (caffe.TEST, "deploy", ["pred"]),
    ],  # fmt: skip
)
def test_all_in_one(tmp_path: Path, phase: int, stage: str, outputs: list) -> None:
    net = caffe.Net(write(tmp_path, ALL_IN_ONE), phase, stages=[stage])
    assert list(net.blobs["data"].shape) == [1, 1, 10, 10]
    assert net.outputs == outputs
