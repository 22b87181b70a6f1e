"""Caffe's model zoo end to end: BVLC AlexNet and CaffeNet, GoogLeNet, VGG-16,
ResNet-50, SqueezeNet 1.1 and MobileNet v1 from their deploy prototxts
(../shared/caffe-examples, read by path): every blob's shape at full size
against shapes worked out by hand (tests/zoo_shapes.py), the parameter blobs
Caffe makes, random-weight .caffemodel files written byte by byte in the
layout of each model's release (V1 layers with 4-D blobs for the 2014 nets),
forward and backward at batch 1 checked against numerical gradients, and
`caffesolve time` and `caffesolve test` on them."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from google.protobuf import text_format
from zoo_helpers import (
    GRADIENT_SIZE,
    NETS,
    build,
    deploy_param,
    float64_gradient_check,
    global_last_pool,
    param_shapes,
    randomize,
    write_caffemodel,
    zoo_path,
)
from zoo_shapes import SHAPES

from caffesolve.data.lmdb_source import datum_bytes, write_lmdb
from caffesolve.layers import Layer
from caffesolve.net import Net
from caffesolve.proto import caffe_pb2
from caffesolve.proto.upgrade import read_net_params_from_text_file
from caffesolve.weights import load_weights

NAMES = sorted(NETS)
LEARNED = ("Convolution", "InnerProduct", "Scale")  # layers with gradients


def split_tops(net: Net) -> set[str]:
    return {
        t.name
        for layer, tops in zip(net.layers, net.top_vecs)
        if layer.layer_param.type == "Split"
        for t in tops
    }


@pytest.mark.parametrize("name", NAMES)
def test_blob_and_param_shapes_at_full_size(name: str) -> None:
    """Caffe's shapes at the deploy net's own input size (batch 1): every top
    as in the hand-made table, each Split top as its bottom, and each
    layer's parameter blobs as Caffe's layer setup makes them for that
    bottom (fc6 of AlexNet reads 256*6*6, of VGG-16 512*7*7)."""
    net = build(deploy_param(name), name)
    want = SHAPES[name]
    splits = split_tops(net)
    got = {n: b.shape for n, b in zip(net.blob_names, net.blobs) if n not in splits}
    assert got == want
    for layer, bottoms, tops in zip(net.layers, net.bottom_vecs, net.top_vecs):
        lp = layer.layer_param
        if lp.type == "Split":
            assert {t.shape for t in tops} == {bottoms[0].shape}
        if bottoms:  # its shape is the table's (a Split top: its bottom's)
            shapes = param_shapes(lp, bottoms[0].shape)
            assert [b.shape for b in layer.blobs] == shapes, lp.name


def classifier_index(net: Net) -> int:
    """The layer whose top the final Softmax reads."""
    last = net.bottom_vecs[-1][0]
    return next(i for i, tops in enumerate(net.top_vecs) if last in tops)


def loaded_net(name: str, folder: Path) -> tuple[Net, np.ndarray]:
    """The zoo net at batch 1 and its small size, its weights loaded from a
    .caffemodel written in the layout of the model's release from another
    net of random weights, blob for blob equal; and the input x for which
    those weights were made."""
    spec = NETS[name]
    param = deploy_param(name, spec.small)
    source = build(param, name)
    x = np.random.default_rng(5).random(source.input_blobs[0].shape, np.float32)
    randomize(source, x)
    path = folder / f"{name}.caffemodel"
    write_caffemodel(path, source, spec.v1)
    net = build(param, name)
    load_weights(net, path)
    for theirs, ours in zip(source.layers, net.layers):
        assert len(ours.blobs) == len(theirs.blobs)
        for a, b in zip(theirs.blobs, ours.blobs):
            assert np.array_equal(a.data, b.data), ours.layer_param.name
    return net, x


def learned_layers(net: Net) -> list[Layer]:
    return [n for n in net.layers if n.layer_param.type in LEARNED]


def float32_pass(
    net: Net, x: np.ndarray, c: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Forward x, then backward from the output diff c (the gradient of
    sum(c * prob)) with fresh parameter diffs: (prob, input diff), float64."""
    data, prob = net.input_blobs[0], net.output_blobs[0]
    data.data[...] = x
    net.forward()
    prob.diff[...] = c
    net.clear_param_diffs()
    net.backward()
    return prob.data.astype(np.float64), data.diff.astype(np.float64)


@pytest.mark.parametrize("name", NAMES)
def test_caffemodel_forward_backward(name: str, tmp_path: Path) -> None:
    """At batch 1 (and a small input where the net allows one), with weights
    loaded from a Caffe-layout .caffemodel: forward gives probabilities;
    backward reaches every parameter and the classifier's gradients are the
    softmax formula's. Then the gradient of sum(c * prob) along a random
    direction of the input and of three layers' parameters is the central
    difference of the same net computed in float64 (GoogLeNet and ResNet-50:
    at 64x64 with their last pool global), and float32 and float64 agree."""
    net, x = loaded_net(name, tmp_path)
    rng = np.random.default_rng(7)
    c = rng.standard_normal(net.output_blobs[0].shape, np.float32)
    p, g32 = float32_pass(net, x, c)
    assert np.isfinite(p).all() and p.max() < 0.5
    np.testing.assert_allclose(p.sum(), 1, rtol=1e-5)
    for layer in learned_layers(net):
        for b in layer.blobs:
            assert np.isfinite(b.diff).all() and b.diff.any(), layer.layer_param.name
    # the classifier (InnerProduct or 1x1 Convolution) under the Softmax:
    # d logits = p * (c - sum(p * c)), d weight = d logits x features^T
    k = classifier_index(net)
    if net.layers[k].layer_param.type in ("Convolution", "InnerProduct"):
        features = net.bottom_vecs[k][0].data.reshape(-1).astype(np.float64)
        dlogits = (p * (c - (p * c).sum())).reshape(-1)
        weight, bias = net.layers[k].blobs
        want = np.outer(dlogits, features)
        error = np.abs(weight.diff.reshape(want.shape) - want).max()
        assert error <= 1e-5 * np.abs(want).max()
        np.testing.assert_allclose(bias.diff, dlogits, rtol=1e-4, atol=1e-9)

    if NETS[name].small == 224:
        net = build(global_last_pool(deploy_param(name, GRADIENT_SIZE)), name)
        x = rng.random(net.input_blobs[0].shape, np.float32)
        randomize(net, x)
        c = rng.standard_normal(net.output_blobs[0].shape, np.float32)
        p, g32 = float32_pass(net, x, c)
    learned = learned_layers(net)
    checked = [learned[0], learned[len(learned) // 2], learned[-1]]
    result = float64_gradient_check(net, x, c, checked, rng)
    error = min(abs(d - result.analytic) for d in result.numeric)
    assert error <= 1e-4 * abs(result.analytic), (result.analytic, result.numeric)
    # float32 against float64: the forward is continuous; the backward may
    # differ by a few percent, where a pre-activation within float32's
    # rounding of 0 switches a ReLU (one element of MobileNet's conv5_4/dw
    # moves its input gradient by 4%)
    np.testing.assert_allclose(p, result.prob, rtol=1e-3, atol=1e-4 * p.max())
    g64 = result.input_diff
    assert np.linalg.norm(g32 - g64) < 0.1 * np.linalg.norm(g64)


# -- caffesolve time and caffesolve test on zoo nets --------------------------


def glog_messages(text: str, source: str) -> list[str]:
    """The message of every glog line from `source` (e.g. caffe.cpp)."""
    pattern = rf"^I\d{{4}} [\d:.]+ +\d+ {re.escape(source)}:\d+\] (.*)$"
    return re.findall(pattern, text, re.M)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # BatchNorm of zeros: inf
def test_time_on_unchanged_mobilenet() -> None:
    """`caffesolve time` on MobileNet's deploy file as it is (net-level
    input_dim fields, batch 1, 224x224): a forward and a backward line for
    every layer, named as in the file, in order, adding up to at most the
    pass's average."""
    path = zoo_path("mobilenet_v1")
    code, _, err = run_cli("time", str(path), "--iterations", "1")
    assert code == 0, err
    lines = glog_messages(err, "caffe.cpp")
    rows = [re.fullmatch(r" *(\S+)\t(forward|backward): (\S+) ms\.", s) for s in lines]
    rows = [m.groups() for m in rows if m]
    param = read_net_params_from_text_file(path)
    names = [lp.name for lp in param.layer]
    assert names[0] == "input" and len(names) == 1 + 27 * 4 + 2 + 1
    assert [r[0] for r in rows] == [n for n in names for _ in (0, 1)]
    assert [r[1] for r in rows] == ["forward", "backward"] * len(names)
    forward = sum(float(ms) for _, kind, ms in rows if kind == "forward")
    average = re.search(r"Average Forward pass: (\S+) ms", err)
    assert average and 0 < forward <= float(average.group(1)) * 1.001


def squeezenet_with_data_layer(layer: str, size: int) -> caffe_pb2.NetParameter:
    """SqueezeNet 1.1's deploy net fed by `layer` instead of its Input: the
    deploy net a user scores a database with."""
    param = deploy_param("squeezenet_v1_1", size)
    param.force_backward = False
    data = param.layer[0]
    assert data.type == "Input"
    data.Clear()
    data.name, data.type = "data", layer
    data.top.extend(["data", "label"])
    return param


@pytest.mark.parametrize("layer", ["Data", "HDF5Data"])
def test_score_deploy_net_fed_by_data_layer(layer: str, tmp_path: Path) -> None:
    """`caffesolve test` on SqueezeNet's deploy net whose input comes from a
    Data layer (LMDB Datums, mean values and scale) or an HDF5Data layer:
    each batch's label and prob values, then their means, are the deploy
    net's own (Input layer) on the same images and weights; the labels are
    the stored ones."""
    size, batch, iterations = 35, 2, 2
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (batch * iterations, 3, size, size), np.uint8)
    labels = rng.integers(0, 1000, batch * iterations)
    mean, scale = np.array([104, 117, 123], np.float32), np.float32(1 / 256)
    x = ((images - mean[:, None, None]) * scale).astype(np.float32)
    param = squeezenet_with_data_layer(layer, size)
    if layer == "Data":
        db = tmp_path / "images_lmdb"
        write_lmdb(
            db,
            [
                [
                    (f"{i:08d}".encode(), datum_bytes(image, int(label)))
                    for i, (image, label) in enumerate(zip(images, labels))
                ]
            ],
        )
        param.layer[0].data_param.source = str(db)
        param.layer[0].data_param.batch_size = batch
        param.layer[0].data_param.backend = caffe_pb2.DataParameter.LMDB
        param.layer[0].transform_param.scale = scale
        param.layer[0].transform_param.mean_value.extend(mean)
    else:
        import h5py

        with h5py.File(tmp_path / "images.h5", "w") as f:
            f["data"] = x
            f["label"] = labels.astype(np.float32)
        (tmp_path / "list.txt").write_text(f"{tmp_path / 'images.h5'}\n")
        param.layer[0].hdf5_data_param.source = str(tmp_path / "list.txt")
        param.layer[0].hdf5_data_param.batch_size = batch
    model = tmp_path / "deploy_from_db.prototxt"
    model.write_text(text_format.MessageToString(param))

    deploy = build(deploy_param("squeezenet_v1_1", size, batch), "squeezenet_v1_1")
    randomize(deploy, x[:batch])
    write_caffemodel(tmp_path / "w.caffemodel", deploy, v1=False)
    probs = []
    for i in range(iterations):
        deploy.input_blobs[0].data[...] = x[i * batch : (i + 1) * batch]
        deploy.forward()
        probs.append(deploy.output_blobs[0].data.reshape(-1).copy())

    code, _, err = run_cli(
        "test", "--model", str(model), "--weights", str(tmp_path / "w.caffemodel"),
        "--iterations", str(iterations),
    )  # fmt: skip
    assert code == 0, err
    text = "\n".join(glog_messages(err, "caffe.cpp"))
    for i in range(iterations):
        got = re.findall(rf"^Batch {i}, prob = (\S+)$", text, re.M)
        np.testing.assert_allclose(np.float64(got), probs[i], rtol=2e-5, atol=1e-9)
        got = re.findall(rf"^Batch {i}, label = (\S+)$", text, re.M)
        assert [int(v) for v in got] == list(labels[i * batch : (i + 1) * batch])
    means = np.float64(re.findall(r"^prob = (\S+)$", text, re.M))
    np.testing.assert_allclose(means, np.mean(probs, axis=0), rtol=2e-5, atol=1e-9)
    assert re.search(r"^Loss: 0$", text, re.M)
