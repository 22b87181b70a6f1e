"""OpenCV dnn (4.x, the last line with a Caffe importer) reads the
.caffemodel files caffesolve writes and computes our forward outputs within
1e-4 of the largest output: LeNet with weights caffesolve trained, and a net
of BatchNorm + Scale, LRN and Concat once those layers are registered."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from export_helpers import (
    ROOT,
    assert_close,
    forward,
    needs_layers,
    net_from_text,
    randomize,
    write_caffemodel,
)

from caffesolve.net import Net
from caffesolve.proto import caffe_pb2
from caffesolve.solver_param import load_solver
from caffesolve.solvers import create_solver

cv2 = pytest.importorskip("cv2")

REL = 1e-4


def opencv_forward(prototxt: Path, weights: Path, x: np.ndarray) -> np.ndarray:
    net = cv2.dnn.readNetFromCaffe(str(prototxt), str(weights))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setInput(x)
    return net.forward()


def test_lenet_trained_by_caffesolve(tmp_path: Path) -> None:
    """Three SGD iterations of LeNet on random digits (an Input-fed copy of
    the train net), the weights written as Caffe's .caffemodel, then the
    deploy net: OpenCV's output is ours."""
    train = (ROOT / "configs/lenet.prototxt").read_text()
    train = train.replace("dim: 64", "dim: 8")
    train += (
        '\nlayer { name: "label" type: "Input" top: "label" '
        "input_param { shape { dim: 8 } } }\n"
        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" '
        'bottom: "label" top: "loss" }\n'
    )
    # the deploy net's Softmax "prob" consumed ip2; the train net scores it
    (tmp_path / "train.prototxt").write_text(train)
    (tmp_path / "solver.prototxt").write_text(
        f'net: "{tmp_path}/train.prototxt" base_lr: 0.01 momentum: 0.9 '
        'lr_policy: "fixed" max_iter: 3 display: 0 random_seed: 1701 '
        f'snapshot_prefix: "{tmp_path}/lenet"'
    )
    solver = create_solver(load_solver(tmp_path / "solver.prototxt"))
    rng = np.random.default_rng(4)
    for _ in range(3):
        data = solver.net.blob_by_name("data")
        data.data[...] = rng.uniform(0, 1, data.shape)
        solver.net.blob_by_name("label").data[...] = rng.integers(0, 10, 8)
        solver.step(1)
    trained = tmp_path / "lenet.caffemodel"
    write_caffemodel(solver.net, trained)

    deploy = ROOT / "configs/lenet.prototxt"
    net = Net.from_prototxt(deploy, caffe_pb2.TEST, quiet=True)
    net.copy_trained_layers_from(trained)
    ip1 = net.layer_by_name("ip1").blobs[0].data
    untrained = Net.from_prototxt(deploy, caffe_pb2.TEST, quiet=True)
    assert not np.array_equal(ip1, untrained.layer_by_name("ip1").blobs[0].data)
    x = rng.uniform(0, 1, (64, 1, 28, 28)).astype(np.float32)
    ours = forward(net, [x])[0]
    theirs = opencv_forward(deploy, trained, x)
    assert_close(theirs.reshape(ours.shape), ours, REL)


NORM_CONCAT = """name: "norms"
layer { name: "data" type: "Input" top: "data"
  input_param { shape { dim: 2 dim: 3 dim: 12 dim: 12 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1"
  scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "norm1" type: "LRN" bottom: "conv1" top: "norm1"
  lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }
layer { name: "conv2" type: "Convolution" bottom: "data" top: "conv2"
  convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "cat" type: "Concat" bottom: "norm1" bottom: "conv2" top: "cat" }
layer { name: "pool" type: "Pooling" bottom: "cat" top: "pool"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "ip"
  inner_product_param { num_output: 10 } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
"""


@needs_layers("BatchNorm", "Scale", "LRN")
def test_batch_norm_scale_lrn_concat(tmp_path: Path) -> None:
    net = net_from_text(NORM_CONCAT)
    randomize(net, seed=9)
    weights = write_caffemodel(net, tmp_path / "norms.caffemodel")
    prototxt = tmp_path / "norms.prototxt"
    prototxt.write_text(NORM_CONCAT)
    x = np.random.default_rng(1).uniform(-1, 1, (2, 3, 12, 12)).astype(np.float32)
    ours = forward(net, [x])[0]
    theirs = opencv_forward(prototxt, weights, x)
    assert_close(theirs.reshape(ours.shape), ours, REL)
