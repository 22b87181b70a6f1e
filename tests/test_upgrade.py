"""Old net formats upgrade as Caffe's upgrade_proto.cpp does (V0, V1, inputs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from caffesolve.errors import ConfigError
from caffesolve.net import Net
from caffesolve.proto import caffe_pb2
from caffesolve.proto.io import parse_prototxt_text, write_binaryproto
from caffesolve.proto.upgrade import (
    V1_LAYER_TYPES,
    net_needs_upgrade,
    read_net_params_from_binary_file,
    read_net_params_from_text_file,
    upgrade_net_as_needed,
    upgrade_v0_net,
    upgrade_v1_layer_parameter,
)

V1 = caffe_pb2.V1LayerParameter


def parse(text: str) -> caffe_pb2.NetParameter:
    return parse_prototxt_text(text, caffe_pb2.NetParameter(), "old.prototxt")


# An old-style LeNet deploy definition, as Caffe's examples once shipped it.
V1_LENET = """
name: "LeNet"
input: "data"
input_dim: 2 input_dim: 1 input_dim: 12 input_dim: 12
layers {
  name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"
  blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
  convolution_param { num_output: 4 kernel_size: 5 stride: 1
    weight_filler { type: "xavier" } bias_filler { type: "constant" } }
}
layers {
  name: "pool1" type: POOLING bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 }
}
layers {
  name: "ip1" type: INNER_PRODUCT bottom: "pool1" top: "ip1"
  param: "shared_w" blob_share_mode: PERMISSIVE
  inner_product_param { num_output: 3 weight_filler { type: "xavier" } }
}
layers { name: "relu1" type: RELU bottom: "ip1" top: "ip1" }
layers { name: "prob" type: SOFTMAX bottom: "ip1" top: "prob" }
"""


def test_v1_layer_fields_map_to_today() -> None:
    v1 = parse(V1_LENET).layers[0]
    v1.loss_weight.append(0.5)
    v1.include.add(phase=caffe_pb2.TEST)
    v1.blobs.add().data.extend([1.0, 2.0])
    layer, ok = upgrade_v1_layer_parameter(v1)
    assert ok
    assert (layer.name, layer.type) == ("conv1", "Convolution")
    assert list(layer.bottom) == ["data"] and list(layer.top) == ["conv1"]
    assert [(p.lr_mult, p.decay_mult) for p in layer.param] == [(1, 1), (2, 0)]
    assert layer.convolution_param.num_output == 4
    assert layer.convolution_param.weight_filler.type == "xavier"
    assert list(layer.loss_weight) == [0.5]
    assert layer.include[0].phase == caffe_pb2.TEST
    assert list(layer.blobs[0].data) == [1.0, 2.0]

    ip1 = upgrade_v1_layer_parameter(parse(V1_LENET).layers[2])[0]
    assert ip1.param[0].name == "shared_w"
    assert ip1.param[0].share_mode == caffe_pb2.ParamSpec.PERMISSIVE
    assert not ip1.param[0].HasField("lr_mult")  # stays Caffe's default 1


def test_every_v1_type_has_a_type_string() -> None:
    assert set(V1_LAYER_TYPES) == {v.number for v in V1.LayerType.DESCRIPTOR.values}
    assert V1_LAYER_TYPES[V1.SOFTMAX_LOSS] == "SoftmaxWithLoss"
    assert V1_LAYER_TYPES[V1.INNER_PRODUCT] == "InnerProduct"


def test_v1_net_with_input_dims_builds_and_runs(tmp_path: Path) -> None:
    path = tmp_path / "old.prototxt"
    path.write_text(V1_LENET)
    param = read_net_params_from_text_file(path)
    assert not param.layers and not param.input and not net_needs_upgrade(param)
    assert [lp.type for lp in param.layer] == [
        "Input", "Convolution", "Pooling", "InnerProduct", "ReLU", "Softmax",
    ]  # fmt: skip
    assert list(param.layer[0].top) == ["data"]
    assert list(param.layer[0].input_param.shape[0].dim) == [2, 1, 12, 12]
    net = Net(param, rng=np.random.default_rng(0), quiet=True)
    assert net.params_lr == [1.0, 2.0, 1.0, 1.0]
    assert net.params_weight_decay == [1.0, 0.0, 1.0, 1.0]
    net.blob_by_name("data").data[...] = np.random.default_rng(1).random((2, 1, 12, 12))
    net.forward()
    prob = net.blob_by_name("prob").data
    assert prob.shape == (2, 3)
    np.testing.assert_allclose(prob.sum(1), 1, rtol=1e-6)


def test_layer_and_layers_together_is_refused() -> None:
    param = parse(V1_LENET + 'layer { name: "x" type: "ReLU" }')
    with pytest.raises(ConfigError, match="both 'layer' and 'layers'"):
        upgrade_net_as_needed(param, "old.prototxt")


def test_input_shape_fields_become_an_input_layer() -> None:
    param = parse(
        'input: "a" input_shape { dim: 2 dim: 3 } input: "b" input_shape { dim: 2 }\n'
        'layer { name: "e" type: "EuclideanLoss" bottom: "a" bottom: "a" top: "l" }'
    )
    upgrade_net_as_needed(param)
    first = param.layer[0]
    assert (first.name, first.type, list(first.top)) == ("input", "Input", ["a", "b"])
    assert [list(s.dim) for s in first.input_param.shape] == [[2, 3], [2]]
    assert param.layer[1].name == "e"


def test_input_without_shape_is_dropped() -> None:
    """Old .caffemodel files name inputs without shapes: just strip them."""
    param = parse('input: "data" layer { name: "x" type: "ReLU" }')
    upgrade_net_as_needed(param)
    assert [lp.name for lp in param.layer] == ["x"] and not param.input


def test_input_dim_count_must_fit() -> None:
    param = parse('input: "a" input: "b" input_dim: 1 input_dim: 2 input_dim: 3 '
                  "input_dim: 4 input_dim: 5")  # fmt: skip
    with pytest.raises(ConfigError, match="input 'b' needs 4 input_dim values"):
        upgrade_net_as_needed(param)


def test_v1_data_layer_transform_fields_move() -> None:
    param = parse(
        'layers { name: "mnist" type: DATA top: "data" top: "label" data_param { '
        'source: "db" batch_size: 64 scale: 0.00390625 mean_file: "m.binaryproto" '
        "crop_size: 20 mirror: true } }"
    )
    upgrade_net_as_needed(param)
    layer = param.layer[0]
    assert layer.type == "Data"
    t = layer.transform_param
    assert (t.scale, t.mean_file, t.crop_size, t.mirror) == (
        0.00390625, "m.binaryproto", 20, True,
    )  # fmt: skip
    assert not layer.data_param.HasField("scale")
    assert (layer.data_param.source, layer.data_param.batch_size) == ("db", 64)


def test_v0_net_with_padding_layer() -> None:
    param = parse(
        'input: "data" input_dim: 1 input_dim: 1 input_dim: 6 input_dim: 6\n'
        'layers { layer { name: "pad1" type: "padding" pad: 2 } bottom: "data" '
        'top: "pad1" }\n'
        'layers { layer { name: "conv1" type: "conv" num_output: 3 kernelsize: 3 '
        "stride: 1 group: 1 biasterm: false blobs_lr: 1 weight_decay: 1 "
        'weight_filler { type: "gaussian" std: 0.1 } } '
        'bottom: "pad1" top: "conv1" }\n'
        'layers { layer { name: "pool1" type: "pool" pool: AVE kernelsize: 2 '
        'stride: 2 } bottom: "conv1" top: "pool1" }\n'
        'layers { layer { name: "drop" type: "dropout" dropout_ratio: 0.25 '
        'kernelsize: 3 } bottom: "pool1" top: "pool1" }\n'
    )
    v1, problems = upgrade_v0_net(param)
    assert [v.name for v in v1.layers] == ["conv1", "pool1", "drop"]
    assert problems == ["Unknown parameter kernelsize for layer type dropout"]
    ok = upgrade_net_as_needed(param, "v0.prototxt")
    assert not ok  # the stray kernelsize was dropped
    conv = param.layer[1]
    assert (conv.type, list(conv.bottom)) == ("Convolution", ["data"])
    c = conv.convolution_param
    assert (c.num_output, list(c.kernel_size), list(c.pad), list(c.stride)) == (
        3, [3], [2], [1],
    )  # fmt: skip
    assert not c.bias_term and c.weight_filler.std == pytest.approx(0.1)
    assert [(p.lr_mult, p.decay_mult) for p in conv.param] == [(1, 1)]
    pool = param.layer[2].pooling_param
    assert (pool.pool, pool.kernel_size, pool.stride) == (
        caffe_pb2.PoolingParameter.AVE, 2, 2,
    )  # fmt: skip
    assert param.layer[3].dropout_param.dropout_ratio == pytest.approx(0.25)


def test_old_batch_norm_params_get_zero_multipliers() -> None:
    param = parse(
        'layer { name: "bn" type: "BatchNorm" param { lr_mult: 1 } '
        "param { lr_mult: 1 } param { lr_mult: 1 } }"
    )
    assert net_needs_upgrade(param)
    upgrade_net_as_needed(param)
    assert [(p.lr_mult, p.decay_mult) for p in param.layer[0].param] == [(0, 0)] * 3


def test_binary_v1_file_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "old.caffemodel"
    write_binaryproto(path, parse(V1_LENET))
    param = read_net_params_from_binary_file(path)
    assert [lp.name for lp in param.layer][:2] == ["input", "conv1"]
