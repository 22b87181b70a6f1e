"""caffe.NetSpec, caffe.layers and caffe.params, after pycaffe's
python/caffe/test/test_net_spec.py. The expected prototxt texts are written
out by hand from pycaffe's rules (names, order, in-place, the routing of each
keyword into `<type>_param` or LayerParameter)."""

from __future__ import annotations

from pathlib import Path

import pytest

import caffe
from caffe import layers as L
from caffe import params as P
from caffe.proto import caffe_pb2

pytestmark = pytest.mark.usefixtures("quiet_log")


def lenet(batch_size: int) -> caffe_pb2.NetParameter:
    """test_net_spec.py's lenet with an Input layer for its DummyData."""
    n = caffe.NetSpec()
    n.data, n.label = L.Input(
        shape=[dict(dim=[batch_size, 1, 28, 28]), dict(dim=[batch_size, 1, 1, 1])],
        ntop=2,
    )
    n.conv1 = L.Convolution(
        n.data, kernel_size=5, num_output=20, weight_filler=dict(type="xavier")
    )
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.conv2 = L.Convolution(
        n.pool1, kernel_size=5, num_output=50, weight_filler=dict(type="xavier")
    )
    n.pool2 = L.Pooling(n.conv2, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.ip1 = L.InnerProduct(n.pool2, num_output=500, weight_filler=dict(type="xavier"))
    n.relu1 = L.ReLU(n.ip1, in_place=True)
    n.ip2 = L.InnerProduct(n.relu1, num_output=10, weight_filler=dict(type="xavier"))
    n.loss = L.SoftmaxWithLoss(n.ip2, n.label)
    return n.to_proto()


def anon_lenet(batch_size: int) -> caffe_pb2.NetParameter:
    data, label = L.Input(
        shape=[dict(dim=[batch_size, 1, 28, 28]), dict(dim=[batch_size, 1, 1, 1])],
        ntop=2,
    )
    conv1 = L.Convolution(data, kernel_size=5, num_output=20)
    pool1 = L.Pooling(conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    conv2 = L.Convolution(pool1, kernel_size=5, num_output=50)
    pool2 = L.Pooling(conv2, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    ip1 = L.InnerProduct(pool2, num_output=500)
    relu1 = L.ReLU(ip1, in_place=True)
    ip2 = L.InnerProduct(relu1, num_output=10)
    return L.SoftmaxWithLoss(ip2, label).to_proto()


def load(tmp_path: Path, proto: caffe_pb2.NetParameter) -> caffe.Net:
    path = tmp_path / "net.prototxt"
    path.write_text(str(proto))
    return caffe.Net(str(path), caffe.TEST)


def test_lenet_builds_the_net(tmp_path: Path) -> None:
    proto = lenet(50)
    assert proto.layer[6].bottom == proto.layer[6].top == ["ip1"]  # in-place ReLU
    assert [layer.name for layer in proto.layer] == [
        "data", "conv1", "pool1", "conv2", "pool2", "ip1", "relu1", "ip2", "loss",
    ]  # fmt: skip
    net = load(tmp_path, proto)
    assert len(net.layers) == 9
    assert net.blobs["ip2"].data.shape == (50, 10)


def test_anonymous_names_count_per_type(tmp_path: Path) -> None:
    proto = anon_lenet(50)
    assert [(layer.name, list(layer.top)) for layer in proto.layer] == [
        ("Input1", ["Input1", "Input2"]),
        ("Convolution1", ["Convolution1"]),
        ("Pooling1", ["Pooling1"]),
        ("Convolution2", ["Convolution2"]),
        ("Pooling2", ["Pooling2"]),
        ("InnerProduct1", ["InnerProduct1"]),
        ("ReLU1", ["InnerProduct1"]),
        ("InnerProduct2", ["InnerProduct2"]),
        ("SoftmaxWithLoss1", ["SoftmaxWithLoss1"]),
    ]
    assert list(proto.layer[8].bottom) == ["InnerProduct2", "Input2"]
    assert len(load(tmp_path, proto).layers) == 9


EXPECTED = """layer {
  name: "data"
  type: "Input"
  top: "data"
  top: "label"
  input_param {
    shape {
      dim: 2
      dim: 3
    }
    shape {
      dim: 2
    }
  }
}
layer {
  name: "ip"
  type: "InnerProduct"
  bottom: "data"
  top: "ip"
  param {
    lr_mult: 1
  }
  param {
    lr_mult: 2
    decay_mult: 0
  }
  include {
    phase: TRAIN
  }
  inner_product_param {
    num_output: 4
    weight_filler {
      type: "xavier"
    }
  }
}
layer {
  name: "relu"
  type: "ReLU"
  bottom: "ip"
  top: "ip"
}
layer {
  name: "pool"
  type: "Pooling"
  bottom: "ip"
  top: "pool"
  pooling_param {
    pool: AVE
    kernel_size: 2
  }
}
layer {
  name: "loss"
  type: "SoftmaxWithLoss"
  bottom: "ip"
  bottom: "label"
  top: "loss"
  loss_weight: 0.5
}
layer {
  name: "silence"
  type: "Silence"
  bottom: "pool"
}
"""


def test_prototxt_text() -> None:
    n = caffe.NetSpec()
    n.data, n.label = L.Input(shape=[dict(dim=[2, 3]), dict(dim=[2])], ntop=2)
    n["ip"] = L.InnerProduct(
        n.data,
        num_output=4,
        weight_filler=dict(type="xavier"),
        param=[dict(lr_mult=1), dict(lr_mult=2, decay_mult=0)],
        include=dict(phase=caffe.TRAIN),
    )
    n.relu = L.ReLU(n.ip, in_place=True)
    n.pool = L.Pooling(n.relu, pool=P.Pooling.AVE, kernel_size=2)
    n.loss = L.SoftmaxWithLoss(n.relu, n["label"], loss_weight=0.5)
    silence = L.Silence(n.pool, ntop=0)  # ntop=0 gives the layer, not a top
    assert silence.tops == ()
    n.silence = silence
    assert str(n.to_proto()) == EXPECTED
    # to_proto(top): the layers that top needs, every name generated
    assert [layer.name for layer in caffe.to_proto(n.loss).layer] == [
        "Input1", "InnerProduct1", "ReLU1", "SoftmaxWithLoss1",
    ]  # fmt: skip


def test_keyword_routing() -> None:
    top = L.Convolution(
        L.Input(shape=dict(dim=[1, 1, 4, 4])),
        kernel_size=3,  # repeated field, one value
        pad=[1, 1],  # a list extends it
        stride=(2,),  # a tuple too
        name="c",  # LayerParameter's own field
        propagate_down=True,
        convolution_param=dict(num_output=2),  # ...param: LayerParameter field
        ntop=1,
    )
    layer = top.to_proto().layer[-1]
    assert layer.name == "c" and list(layer.top) == ["Convolution1"]
    p = layer.convolution_param
    assert (list(p.kernel_size), list(p.pad), list(p.stride)) == ([3], [1, 1], [2])
    assert p.num_output == 2 and list(layer.propagate_down) == [True]
    assert P.Data.LMDB == caffe_pb2.DataParameter.LMDB
    assert P.Pooling.STOCHASTIC == caffe_pb2.PoolingParameter.STOCHASTIC
    with pytest.raises(AttributeError):
        L.ReLU(top, no_such_field=1).to_proto()


def test_zero_tops(tmp_path: Path) -> None:
    """test_net_spec.py's silent net: DummyData tops eaten by Silence layers."""
    n = caffe.NetSpec()
    n.data, n.data2 = L.DummyData(shape=dict(dim=3), ntop=2)
    n.silence_data = L.Silence(n.data, ntop=0)
    n.silence_data2 = L.Silence(n.data2, ntop=0)
    proto = n.to_proto()
    assert [(layer.name, list(layer.top)) for layer in proto.layer] == [
        ("data", ["data", "data2"]), ("silence_data", []), ("silence_data2", []),
    ]  # fmt: skip
    net = load(tmp_path, proto)
    assert net.forward() == {} and net.outputs == []


def test_type_error() -> None:
    data = L.Input(ntop=2)  # a 2-tuple of Tops
    with pytest.raises(
        TypeError, match=r"^Silence input 0 is not a Top \(type is <class 'tuple'>\)$"
    ):
        L.Silence(data, ntop=0)
    L.Silence(*data, ntop=0)


def test_netspec_attribute_access() -> None:
    n = caffe.NetSpec()
    with pytest.raises(AttributeError):
        _ = n.missing
    with pytest.raises(KeyError):
        _ = n["missing"]
    n.x = L.Input()
    assert n["x"] is n.x and list(n.tops) == ["x"]
