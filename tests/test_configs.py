"""configs/: every file parses, every solver's net exists, every data source
is a database `caffesolve data` makes, and the values are Caffe's examples'
(the LSTM sine-wave example is caffesolve's own: Caffe ships none).

(Building every config and running a few iterations is an integration test.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import EXAMPLES

from caffesolve.layers.data import missing_source_hint
from caffesolve.proto import caffe_pb2
from caffesolve.proto.io import read_prototxt

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.prototxt"))
SOLVERS = [p for p in CONFIGS if "solver" in p.name]
NETS = [p for p in CONFIGS if "solver" not in p.name]


def rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


def data_set(p: Path) -> tuple[str, str]:
    """The `caffesolve data` command a config's files come from, and their folder."""
    for name in ("fashion", "cifar10", "lstm_sine"):
        if name in rel(p):
            full = {"fashion": "fashion-mnist", "lstm_sine": "sine"}.get(name, name)
            return full, f"data/{full}/"
    return "mnist", "data/mnist/"


def test_there_are_configs() -> None:
    names = {rel(p) for p in CONFIGS}
    for sub in ("configs/", "configs/fashion/"):
        for name in (
            "lenet_train_test",
            "lenet",
            "lenet_solver",
            "lenet_multistep_solver",
            "lenet_solver_adam",
            "lenet_solver_rmsprop",
            "lenet_adadelta_solver",
            "lenet_solver_nesterov",
            "mnist_autoencoder",
            "mnist_autoencoder_solver",
        ):
            assert f"{sub}{name}.prototxt" in names
    for name in ("lstm_sine_solver", "lstm_sine_train_test"):
        assert f"configs/lstm_sine/{name}.prototxt" in names


@pytest.mark.parametrize("path", SOLVERS, ids=rel)
def test_solver_parses_and_net_exists(path: Path) -> None:
    s = read_prototxt(path, caffe_pb2.SolverParameter())
    assert s.net and (ROOT / s.net).is_file(), s.net
    # the net sits beside its solver, snapshots go beside the data
    assert (ROOT / s.net).parent == path.parent
    assert s.snapshot_prefix.startswith(data_set(path)[1])
    assert s.solver_mode == caffe_pb2.SolverParameter.CPU


@pytest.mark.parametrize("path", NETS, ids=rel)
def test_net_parses_and_sources_are_makeable(path: Path) -> None:
    net = read_prototxt(path, caffe_pb2.NetParameter())
    assert net.layer
    name, folder = data_set(path)
    lists = [x.hdf5_data_param.source for x in net.layer if x.type == "HDF5Data"]
    for source in lists:  # the list files `caffesolve data sine` writes
        assert source in (f"{folder}train.txt", f"{folder}test.txt")
    sources = [x.data_param.source for x in net.layer if x.type == "Data"]
    for source in sources:
        assert source.startswith(folder)
        hint = missing_source_hint(source)
        assert f"caffesolve data {name} --out {folder.rstrip('/')}" in hint
    if not any(x.type == "Input" for x in net.layer):  # not a deploy net
        assert sources or lists


CAFFE = {
    "lenet_solver": "mnist__lenet_solver.prototxt",
    "lenet_multistep_solver": "mnist__lenet_multistep_solver.prototxt",
    "lenet_solver_adam": "mnist__lenet_solver_adam.prototxt",
    "lenet_solver_rmsprop": "mnist__lenet_solver_rmsprop.prototxt",
    "lenet_adadelta_solver": "mnist__lenet_adadelta_solver.prototxt",
    "lenet_solver_nesterov": "mnist__lenet_solver.prototxt",
    "mnist_autoencoder_solver": "mnist__mnist_autoencoder_solver.prototxt",
    "mnist_autoencoder_solver_adadelta": (
        "mnist__mnist_autoencoder_solver_adadelta.prototxt"
    ),
    "mnist_autoencoder_solver_adagrad": (
        "mnist__mnist_autoencoder_solver_adagrad.prototxt"
    ),
    "mnist_autoencoder_solver_nesterov": (
        "mnist__mnist_autoencoder_solver_nesterov.prototxt"
    ),
    "lenet_train_test": "mnist__lenet_train_test.prototxt",
    "lenet": "mnist__lenet.prototxt",
    "mnist_autoencoder": "mnist__mnist_autoencoder.prototxt",
    **{
        name: f"cifar10__{name}.prototxt"
        for name in (
            "cifar10_quick",
            "cifar10_quick_solver",
            "cifar10_quick_solver_lr1",
            "cifar10_quick_train_test",
            "cifar10_full",
            "cifar10_full_solver",
            "cifar10_full_solver_lr1",
            "cifar10_full_solver_lr2",
            "cifar10_full_train_test",
            "cifar10_full_sigmoid_solver",
            "cifar10_full_sigmoid_solver_bn",
            "cifar10_full_sigmoid_train_test",
            "cifar10_full_sigmoid_train_test_bn",
        )
    },
}


def test_lenet_solver_has_caffes_values() -> None:
    s = read_prototxt(
        ROOT / "configs/lenet_solver.prototxt", caffe_pb2.SolverParameter()
    )
    assert s.net == "configs/lenet_train_test.prototxt"
    assert (s.base_lr, s.momentum, s.weight_decay) == pytest.approx((0.01, 0.9, 5e-4))
    assert (s.lr_policy, s.gamma, s.power) == ("inv", pytest.approx(1e-4), 0.75)
    assert (s.display, s.max_iter, s.test_interval, s.snapshot) == (
        100,
        10000,
        500,
        5000,
    )
    assert list(s.test_iter) == [100]


@pytest.mark.skipif(not EXAMPLES.is_dir(), reason="no Caffe examples")
@pytest.mark.parametrize("path", [p for p in CONFIGS if p.stem in CAFFE], ids=rel)
def test_same_as_caffes_example_but_paths(path: Path) -> None:
    example = EXAMPLES / CAFFE[path.stem]
    if "solver" in path.name:
        ours = read_prototxt(path, caffe_pb2.SolverParameter())
        theirs = read_prototxt(example, caffe_pb2.SolverParameter())
        for s in (ours, theirs):
            for f in ("net", "snapshot_prefix", "solver_mode"):
                s.ClearField(f)
        if path.stem == "lenet_solver_nesterov":
            assert ours.type == "Nesterov"
            ours.ClearField("type")
    else:
        ours = read_prototxt(path, caffe_pb2.NetParameter())
        theirs = read_prototxt(example, caffe_pb2.NetParameter())
        for n in (ours, theirs):
            for layer in n.layer:
                layer.data_param.ClearField("source")
                layer.transform_param.ClearField("mean_file")
    assert ours == theirs
