"""Caffe's "learning LeNet" notebook (examples/01-learning-lenet.ipynb) in
Python 3 through `import caffe`, on Fashion-MNIST: NetSpec writes the train
and test prototxts, a SolverParameter written from Python is the solver
file, SGDSolver builds the nets, the blobs and params have the notebook's
shapes, then a hand-written loop of solver.step(1) reads the loss blob and
the test net's scores, and scores the test set itself. The LMDBs hold the
first 2,000 training and 1,000 test images (Debian's dataset-fashion-mnist,
which .ci/run installs), so the whole flow takes seconds."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import caffe
from caffe import layers as L
from caffe import params as P
from caffe.proto import caffe_pb2
from caffesolve.data.idx import read_mnist_pair
from caffesolve.data.lmdb_source import write_datum_lmdb

pytestmark = pytest.mark.usefixtures("quiet_log")

DEBIAN = Path("/usr/share/datasets/fashion-mnist")


def lenet(lmdb: str, batch_size: int) -> caffe_pb2.NetParameter:
    """The notebook's LeNet: a series of linear and simple nonlinear steps."""
    n = caffe.NetSpec()
    n.data, n.label = L.Data(batch_size=batch_size, backend=P.Data.LMDB, source=lmdb,
                             transform_param=dict(scale=1.0 / 255), ntop=2)  # fmt: skip
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20,
                            weight_filler=dict(type="xavier"))  # fmt: skip
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.conv2 = L.Convolution(n.pool1, kernel_size=5, num_output=50,
                            weight_filler=dict(type="xavier"))  # fmt: skip
    n.pool2 = L.Pooling(n.conv2, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.fc1 = L.InnerProduct(n.pool2, num_output=500, weight_filler=dict(type="xavier"))
    n.relu1 = L.ReLU(n.fc1, in_place=True)
    n.score = L.InnerProduct(n.relu1, num_output=10, weight_filler=dict(type="xavier"))
    n.loss = L.SoftmaxWithLoss(n.score, n.label)
    return n.to_proto()


@pytest.fixture
def fashion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> np.ndarray:
    """The LMDBs in tmp_path/fashion (the working folder); the test labels."""
    if not DEBIAN.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{DEBIAN} is missing: .ci/run should install it")
        pytest.skip(f"{DEBIAN} missing (apt-get install dataset-fashion-mnist)")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fashion").mkdir()
    test_labels = None
    for split, prefix, count in (("train", "train", 2000), ("test", "t10k", 1000)):
        images, labels = read_mnist_pair(
            DEBIAN / f"{prefix}-images-idx3-ubyte.gz",
            DEBIAN / f"{prefix}-labels-idx1-ubyte.gz",
        )
        write_datum_lmdb(f"fashion/{split}_lmdb", images[:count], labels[:count])
        test_labels = labels[:count]
    return test_labels


def test_learning_lenet_on_fashion_mnist(fashion: np.ndarray) -> None:
    with open("fashion/lenet_auto_train.prototxt", "w") as f:
        f.write(str(lenet("fashion/train_lmdb", 64)))
    with open("fashion/lenet_auto_test.prototxt", "w") as f:
        f.write(str(lenet("fashion/test_lmdb", 100)))
    s = caffe_pb2.SolverParameter()  # the notebook's lenet_auto_solver settings
    s.random_seed = 1701
    s.train_net = "fashion/lenet_auto_train.prototxt"
    s.test_net.append("fashion/lenet_auto_test.prototxt")
    s.test_interval = 500
    s.test_iter.append(10)
    s.base_lr = 0.01
    s.momentum = 0.9
    s.weight_decay = 5e-4
    s.lr_policy = "inv"
    s.gamma = 1e-4
    s.power = 0.75
    s.display = 100
    s.max_iter = 10000
    s.snapshot_prefix = "fashion/lenet"
    with open("fashion/lenet_auto_solver.prototxt", "w") as f:
        f.write(str(s))

    caffe.set_device(0)
    caffe.set_mode_gpu()  # the notebook's GPU calls run, on the CPU
    solver = caffe.SGDSolver("fashion/lenet_auto_solver.prototxt")

    assert [(k, v.data.shape) for k, v in solver.net.blobs.items()] == [
        ("data", (64, 1, 28, 28)), ("label", (64,)), ("conv1", (64, 20, 24, 24)),
        ("pool1", (64, 20, 12, 12)), ("conv2", (64, 50, 8, 8)),
        ("pool2", (64, 50, 4, 4)), ("fc1", (64, 500)), ("score", (64, 10)),
        ("loss", ()),
    ]  # fmt: skip
    assert [(k, v[0].data.shape) for k, v in solver.net.params.items()] == [
        ("conv1", (20, 1, 5, 5)), ("conv2", (50, 20, 5, 5)), ("fc1", (500, 800)),
        ("score", (10, 500)),
    ]  # fmt: skip

    solver.net.forward()  # train net
    solver.test_nets[0].forward()  # test net
    data = solver.test_nets[0].blobs["data"].data
    assert 0 <= data.min() and data.max() <= 1  # scale 1/255
    np.testing.assert_array_equal(
        solver.test_nets[0].blobs["label"].data, fashion[:100]
    )

    solver.step(1)  # iteration 0 tests first: the test net now shares the weights
    train_w = solver.net.params["conv1"][0].data
    assert np.array_equal(solver.test_nets[0].params["conv1"][0].data, train_w)

    niter, test_interval = 150, 50
    train_loss = np.zeros(niter)
    test_acc = np.zeros(niter // test_interval + 1)
    output = np.zeros((niter, 8, 10))
    test_net = solver.test_nets[0]
    for it in range(niter):
        solver.step(1)
        train_loss[it] = solver.net.blobs["loss"].data
        # the test net on its current batch, from conv1 (no new data)
        test_net.forward(start="conv1")
        output[it] = test_net.blobs["score"].data[:8]
        if it % test_interval == 0 or it == niter - 1:
            correct = 0
            for _ in range(10):  # the 1,000 test images
                test_net.forward()
                correct += np.sum(
                    test_net.blobs["score"].data.argmax(1)
                    == test_net.blobs["label"].data
                )
            test_acc[-1 if it == niter - 1 else it // test_interval] = correct / 1e3

    assert solver.iter == niter + 1
    assert train_loss[0] > 1.0 and train_loss[-10:].mean() < 0.8
    assert test_acc[0] < 0.6 and test_acc[-1] >= 0.7, test_acc
    # the scores read each iteration are the test net's, moving with training
    assert not np.allclose(output[0], output[-1])
    probs = np.exp(output[-1]) / np.exp(output[-1]).sum(1, keepdims=True)
    assert probs.max(1).mean() > 0.5
