"""BatchNorm tests after Caffe's test_batch_norm_layer.cpp (zero mean and unit
variance per channel, in place too, gradients), plus the stored statistics
worked out by hand from batch_norm_layer.cpp's update (s = s * maf + 1, the
m/(m-1) correction), the TEST phase's division by s, Caffe's lr_mult 0
ParamSpecs in a Net, and the blob-count errors of a weights file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import forward_backward, layer_from, rng
from gradient_check import check_gradient, make_blob

from caffesolve.blob import Blob
from caffesolve.errors import ConfigError, ShapeError
from caffesolve.layers import Layer
from caffesolve.net import Net
from caffesolve.proto import caffe_pb2
from caffesolve.proto.io import parse_prototxt_text

F32 = np.float32
BN = 'name: "bn" type: "BatchNorm" %s'
TEST = caffe_pb2.TEST


def gaussian(shape: tuple[int, ...] = (5, 2, 3, 4), seed: int = 1701) -> Blob:
    b = Blob(shape, "x")
    b.data[...] = rng(seed).normal(size=shape)
    return b


def forward(layer: Layer, x: Blob, in_place: bool = False) -> Blob:
    top = x if in_place else Blob()
    layer.setup([x], [top])
    layer.forward([x], [top])
    return top


def channel_moments(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per channel: mean and mean square over N and the spatial axes."""
    per = np.moveaxis(y, 1, 0).reshape(y.shape[1], -1).astype(np.float64)
    return per.mean(axis=1), (per**2).mean(axis=1)


@pytest.mark.parametrize("in_place", [False, True])
def test_forward(in_place: bool) -> None:
    """TestForward, TestForwardInplace: each channel of the top has mean 0
    and variance 1."""
    top = forward(layer_from(BN % ""), gaussian(), in_place)
    mean, square = channel_moments(top.data)
    np.testing.assert_allclose(mean, 0, atol=1e-3)
    np.testing.assert_allclose(square, 1, atol=1e-3)


def test_forward_hand_computed() -> None:
    """One channel holding 1, 2, 3, 6 (mean 3, variance 3.5), eps 0.5:
    y = (x - 3) / 2."""
    x = Blob((2, 1, 2))
    x.data.ravel()[:] = [1, 2, 3, 6]
    top = forward(layer_from(BN % "batch_norm_param { eps: 0.5 }"), x)
    np.testing.assert_allclose(top.data.ravel(), [-1, -0.5, 0, 1.5])


def test_moving_averages_update_as_caffe() -> None:
    """Two TRAIN batches, maf 0.5, then the TEST layer on the same blobs.
    Batch 1: x = 1, 2, 3, 6 (mean 3, biased variance 3.5, m = 4, so 3.5 *
    4/3 stored); batch 2: x = 0, 0, 2, 2 (mean 1, variance 1, 4/3 stored)."""
    layer = layer_from(BN % "batch_norm_param { moving_average_fraction: 0.5 }")
    x = Blob((2, 1, 2))
    x.data.ravel()[:] = [1, 2, 3, 6]
    forward(layer, x)
    blobs = [b.data.copy() for b in layer.blobs]
    np.testing.assert_allclose(blobs[0], [3])
    np.testing.assert_allclose(blobs[1], [3.5 * 4 / 3], rtol=1e-6)
    np.testing.assert_allclose(blobs[2], [1])
    x.data.ravel()[:] = [0, 0, 2, 2]
    layer.forward([x], [Blob(x.shape)])
    s = 0.5 * 1 + 1
    mean_sum = 0.5 * 3 + 1
    var_sum = 0.5 * 3.5 * 4 / 3 + 4 / 3
    np.testing.assert_allclose(layer.blobs[2].data, [s])
    np.testing.assert_allclose(layer.blobs[0].data, [mean_sum])
    np.testing.assert_allclose(layer.blobs[1].data, [var_sum], rtol=1e-6)
    test_layer = layer_from(BN % "", phase=TEST)
    test_layer.blobs = layer.blobs  # the TEST net shares the TRAIN net's blobs
    x.data.ravel()[:] = [1, 2, 3, 4]
    top = forward(test_layer, x)
    eps = float(F32(1e-5))
    expected = (np.array([1, 2, 3, 4]) - mean_sum / s) / np.sqrt(var_sum / s + eps)
    np.testing.assert_allclose(top.data.ravel(), expected, rtol=1e-6)
    np.testing.assert_array_equal(layer.blobs[2].data, [s])  # TEST changes nothing


def test_global_stats_with_zero_factor() -> None:
    """s = 0 (fresh blobs): Caffe's scale factor is 0, so mean = var = 0 and
    y = x / sqrt(eps)."""
    x = gaussian()
    top = forward(layer_from(BN % "batch_norm_param { eps: 0.25 }", phase=TEST), x)
    np.testing.assert_allclose(top.data, x.data / 0.5)


def test_use_global_stats_overrides_the_phase() -> None:
    x = gaussian()
    train_global = layer_from(BN % "batch_norm_param { use_global_stats: true }")
    test_batch = layer_from(
        BN % "batch_norm_param { use_global_stats: false }", phase=TEST
    )
    assert train_global.phase == caffe_pb2.TRAIN
    np.testing.assert_allclose(
        forward(train_global, x).data, x.data / np.sqrt(F32(1e-5)), rtol=1e-6
    )
    mean, _ = channel_moments(forward(test_batch, gaussian()).data)
    np.testing.assert_allclose(mean, 0, atol=1e-6)
    assert test_batch.blobs[2].data[0] == 1  # statistics updated in TEST


def test_float32_arithmetic_matches_caffe() -> None:
    """TRAIN forward and backward in float32 against batch_norm_layer.cpp's
    steps written out (1/(N*S) applied to each image's sum, the blob updates
    with maf, the backward's -1/(N*S) as a float)."""
    x = gaussian((4, 3, 5))
    dy = rng(9).normal(size=x.shape).astype(F32)
    layer = layer_from(BN % "")
    top = forward(layer, x)
    top.diff[...] = dy
    layer.backward([top], [True], [x])
    inv = F32(1.0 / 20)
    mean = (x.data.sum(axis=2) * inv).sum(axis=0)
    centered = x.data - mean[:, None]
    var = ((centered * centered).sum(axis=2) * inv).sum(axis=0)
    std = np.sqrt(var + F32(1e-5))
    y = centered / std[:, None]
    np.testing.assert_allclose(top.data, y, rtol=2e-7, atol=1e-7)
    maf = F32(0.999)
    np.testing.assert_allclose(layer.blobs[0].data, mean, rtol=1e-7)
    np.testing.assert_allclose(
        layer.blobs[1].data, (F32(20) / F32(19)) * var, rtol=2e-7
    )
    assert layer.blobs[2].data[0] == F32(0) * maf + F32(1)
    sum_dy_y = (y * dy).sum(axis=2).sum(axis=0)
    sum_dy = dy.sum(axis=2).sum(axis=0)
    dx = (dy + F32(-1.0 / 20) * (y * sum_dy_y[:, None] + sum_dy[:, None])) / std[
        :, None
    ]
    np.testing.assert_allclose(x.diff, dx, rtol=1e-5, atol=1e-6)


# -- gradients ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, phase, shape, threshold",
    [
        (BN % "", caffe_pb2.TRAIN, (5, 2, 3, 4), 1e-4),  # TestGradient's 1e-4
        (BN % "batch_norm_param { eps: 0.01 }", caffe_pb2.TRAIN, (6, 3), 1e-3),
        (BN % "", TEST, (5, 2, 3, 4), 1e-4),
    ],
)
def test_gradient(
    text: str, phase: int, shape: tuple[int, ...], threshold: float
) -> None:
    layer = layer_from(text, phase=phase)
    bottom = make_blob(shape, rng())
    top = Blob(dtype=np.float64)
    layer.setup([bottom], [top])
    if phase == TEST:  # stored statistics: mean 0.5, variance 2 (s = 2)
        layer.blobs[0].data[...] = 1
        layer.blobs[1].data[...] = 4
        layer.blobs[2].data[...] = 2
    n = check_gradient(
        layer, [bottom], [top], check_params=False, threshold=threshold, setup=False
    )
    assert n == int(np.prod(shape))


def test_backward_in_place_matches_out_of_place() -> None:
    x = gaussian().data
    dy = rng(3).normal(size=x.shape).astype(F32)
    y, dx = forward_backward(BN % "", x, dy)
    y2, dx2 = forward_backward(BN % "", x, dy, in_place=True)
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_array_equal(dx, dx2)


# -- parameters: blobs, lr_mult 0, errors -------------------------------------------


def test_blobs_and_param_specs() -> None:
    layer = layer_from(BN % "")
    forward(layer, gaussian())
    assert [b.shape for b in layer.blobs] == [(2,), (2,), (1,)]
    assert [s.lr_mult for s in layer.layer_param.param] == [0, 0, 0]


def test_lr_mult_other_than_zero_is_an_error() -> None:
    text = BN % "param { lr_mult: 0 } param { lr_mult: 1 }"
    with pytest.raises(ConfigError, match=r"param\[1\].lr_mult is 1: Cannot configure"):
        forward(layer_from(text), gaussian())


def test_wrong_blob_count_in_definition() -> None:
    layer = layer_from(BN % "")
    layer.blobs = [Blob((2,)), Blob((2,))]
    with pytest.raises(ConfigError, match="blobs: BatchNorm keeps 3 blobs"):
        forward(layer, gaussian())


def test_channels_must_not_change() -> None:
    layer = layer_from(BN % "")
    forward(layer, gaussian())
    with pytest.raises(ShapeError, match="set up for 2"):
        layer.reshape([gaussian((5, 3, 2))], [Blob()])


NET = """name: "bn_net"
layer { name: "data" type: "Input" top: "data"
  input_param { shape { dim: 4 dim: 3 dim: 2 dim: 2 } } }
layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" %s }
layer { name: "ip" type: "InnerProduct" bottom: "bn" top: "ip" loss_weight: 1
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" } } }
"""


def make_net(extra: str = "", phase: int = caffe_pb2.TRAIN) -> Net:
    param = parse_prototxt_text(NET % extra, caffe_pb2.NetParameter(), "<test>")
    return Net(param, phase, rng=rng(), source="bn.prototxt", quiet=True)


def test_net_gives_the_statistics_lr_mult_zero() -> None:
    """Caffe's LayerSetUp adds lr_mult 0 ParamSpecs; the net's params_lr
    reads the layer's own LayerParameter (AppendParam), so the solver's
    local rate for the three blobs is 0. As in Caffe, the net's ParamSpecs
    (none here: lr_mult 1) still make the layer need backward."""
    net = make_net()
    assert net.params_lr == [0.0, 0.0, 0.0, 1.0, 1.0]
    assert net.has_params_lr[:3] == [True, True, True]
    assert net.layer_need_backward[net.layer_names.index("bn")]
    written = net.to_proto().layer[1]
    assert [s.lr_mult for s in written.param] == [0, 0, 0]


def test_caffemodel_round_trip(tmp_path: Path) -> None:
    net = make_net()
    net.blobs[net.blob_names.index("data")].data[...] = rng().normal(size=(4, 3, 2, 2))
    net.forward()
    path = tmp_path / "bn.caffemodel"
    path.write_bytes(net.to_proto().SerializeToString())
    test_net = make_net(phase=TEST)
    test_net.copy_trained_layers_from(path)
    for a, b in zip(net.layer_by_name("bn").blobs, test_net.layer_by_name("bn").blobs):
        np.testing.assert_array_equal(a.data, b.data)


def test_caffemodel_with_wrong_blob_count(tmp_path: Path) -> None:
    net = make_net()
    param = net.to_proto()
    del param.layer[1].blobs[2]
    path = tmp_path / "old.caffemodel"
    path.write_bytes(param.SerializeToString())
    with pytest.raises(ShapeError) as e:
        make_net().copy_trained_layers_from(path)
    message = str(e.value)
    assert message.startswith(f"{path}: layer 'bn' (BatchNorm): blobs:")
    assert "file has 2, net has 3: mean, variance, moving-average factor" in message
    assert "\n" not in message


def test_net_rejects_lr_mult_with_the_file_name() -> None:
    with pytest.raises(ConfigError) as e:
        make_net("param { lr_mult: 1 }")
    message = str(e.value)
    assert message.startswith("bn.prototxt: layer 'bn' (BatchNorm): param[0].lr_mult")


def test_caffe_bn_example_three_param_specs() -> None:
    """cifar10_full_sigmoid_train_test_bn.prototxt's BatchNorm layers carry
    three `param { lr_mult: 0 }`: the upgrade sets decay_mult 0 too."""
    net = make_net("param { lr_mult: 0 } param { lr_mult: 0 } param { lr_mult: 0 }")
    assert net.params_lr[:3] == [0.0, 0.0, 0.0]
    assert net.params_weight_decay[:3] == [0.0, 0.0, 0.0]


def test_solver_leaves_the_statistics_to_forward() -> None:
    """SGD with momentum and weight decay over three iterations: the BatchNorm
    blobs hold exactly the moving averages of the three batches (maf 0.5),
    untouched by the update (local rate 0)."""
    from solver_helpers import FIXED, make_data, make_solver, solver_param

    net_text = """
    name: "bn_solver"
    layer { name: "data" type: "TestFixedData" top: "data" top: "targets" }
    layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn"
            batch_norm_param { moving_average_fraction: 0.5 } }
    layer { name: "ip" type: "InnerProduct" bottom: "bn" top: "ip"
            inner_product_param { num_output: 1 weight_filler { type: "gaussian" } } }
    layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "targets"
            top: "loss" }
    """
    FIXED["data"] = make_data()
    param = solver_param(net_text, momentum=0.9, weight_decay=0.1, max_iter=3)
    solver = make_solver(param)
    solver.step(3)
    x = FIXED["data"][0].astype(np.float64)  # (3 batches, 4, 3)
    mean, var, s = np.zeros(3), np.zeros(3), 0.0
    for batch in x:
        mean = 0.5 * mean + batch.mean(axis=0)
        var = 0.5 * var + batch.var(axis=0) * 4 / 3
        s = 0.5 * s + 1
    blobs = solver.net.layer_by_name("bn").blobs
    np.testing.assert_allclose(blobs[0].data, mean, rtol=1e-6)
    np.testing.assert_allclose(blobs[1].data, var, rtol=1e-6)
    np.testing.assert_allclose(blobs[2].data, [s])
