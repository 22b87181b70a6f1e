"""Python layers (`type: "Python"`), after pycaffe's test_python_layer.py and
test_python_layer_with_param_str.py: the layer classes below are found by
importing this module (`module: 'test_python_layer'`), as pycaffe's tests do.
Then a Python Euclidean loss trained end to end (it recovers the weights the
data were made with, and follows the built-in EuclideanLoss), and `caffesolve
train` with a Python data layer from a module on sys.path."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

import caffe
from caffesolve.errors import ConfigError

pytestmark = pytest.mark.usefixtures("quiet_log")


class SimpleLayer(caffe.Layer):
    """Multiplies by ten."""

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = 10 * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = 10 * top[0].diff


class ExceptionLayer(caffe.Layer):
    def setup(self, bottom, top):
        raise RuntimeError("from the user's setup")


class ParameterLayer(caffe.Layer):
    """One learnable value, whose diff backward sets to 1."""

    def setup(self, bottom, top):
        self.blobs.add_blob(1)
        self.blobs[0].data[0] = 0

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[0] = 1


class PhaseLayer(caffe.Layer):
    def reshape(self, bottom, top):
        top[0].reshape()

    def forward(self, bottom, top):
        top[0].data[()] = self.phase


class SimpleParamLayer(caffe.Layer):
    """Multiplies by the number in param_str."""

    def setup(self, bottom, top):
        try:
            self.value = float(self.param_str)
        except ValueError:
            raise ValueError("Parameter string must be a legible float") from None

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.value * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = self.value * top[0].diff


class EuclideanLoss(caffe.Layer):
    """sum((a - b)^2) / num / 2, as Caffe's EuclideanLoss, written in Python."""

    def setup(self, bottom, top):
        if len(bottom) != 2:
            raise ValueError("EuclideanLoss needs two bottoms")

    def reshape(self, bottom, top):
        if bottom[0].count != bottom[1].count:
            raise ValueError("bottoms must have the same count")
        self.diff = np.zeros_like(bottom[0].data)
        top[0].reshape()

    def forward(self, bottom, top):
        np.subtract(bottom[0].data, bottom[1].data, out=self.diff)
        top[0].data[...] = np.sum(self.diff**2) / bottom[0].num / 2

    def backward(self, top, propagate_down, bottom):
        for i, sign in enumerate((1, -1)):
            if propagate_down[i]:
                bottom[i].diff[...] = sign * top[0].diff * self.diff / bottom[i].num


def python_layer(name: str, cls: str, bottom: str, top: str, extra: str = "") -> str:
    return (
        f"layer {{ type: 'Python' name: '{name}' bottom: '{bottom}' top: '{top}' "
        f"python_param {{ module: 'test_python_layer' layer: '{cls}' {extra} }} }}\n"
    )


HEAD = "name: 'pythonnet' force_backward: true\n"
INPUT = "input: 'data' input_shape { dim: 10 dim: 9 dim: 8 }\n"


def make_net(tmp_path: Path, text: str, phase: int = caffe.TRAIN) -> caffe.Net:
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    return caffe.Net(str(path), phase)


@pytest.fixture
def chain(tmp_path: Path) -> caffe.Net:
    text = HEAD + INPUT
    for name, bottom in (("one", "data"), ("two", "one"), ("three", "two")):
        text += python_layer(name, "SimpleLayer", bottom, name)
    return make_net(tmp_path, text)


def test_forward(chain: caffe.Net) -> None:
    chain.blobs["data"].data[...] = 8
    chain.forward()
    assert np.all(chain.blobs["three"].data == 10**3 * 8)
    assert [layer.type for layer in chain.layers] == ["Input"] + ["Python"] * 3
    assert isinstance(chain.layers[1], SimpleLayer)  # the user's own object


def test_backward(chain: caffe.Net) -> None:
    chain.blobs["three"].diff[...] = 7
    chain.backward()
    assert np.all(chain.blobs["data"].diff == 10**3 * 7)


def test_reshape(chain: caffe.Net) -> None:
    chain.blobs["data"].reshape(4, 4, 4, 4)
    chain.forward()
    for blob in chain.blobs.values():
        assert blob.data.shape == (4, 4, 4, 4)


def test_exception_reaches_the_caller(tmp_path: Path) -> None:
    text = HEAD + INPUT + python_layer("layer", "ExceptionLayer", "data", "top")
    with pytest.raises(RuntimeError, match="from the user's setup"):
        make_net(tmp_path, text, caffe.TEST)


def test_parameter(tmp_path: Path) -> None:
    text = HEAD + INPUT + python_layer("layer", "ParameterLayer", "data", "top")
    net = make_net(tmp_path, text)
    net.forward()
    net.backward()
    layer = net.layers[list(net._layer_names).index("layer")]
    assert layer.blobs[0].data[0] == 0 and layer.blobs[0].diff[0] == 1
    assert net.params["layer"] is layer.blobs  # the net records the user's blobs
    layer.blobs[0].data[0] += layer.blobs[0].diff[0]
    weights = str(tmp_path / "p.caffemodel")
    net.save(weights)
    layer.blobs[0].data[0] = -1
    net.copy_from(weights)
    assert layer.blobs[0].data[0] == 1
    other = make_net(tmp_path, text)
    other.share_with(net)
    assert other.layers[1].blobs[0].data[0] == 1


def test_phase(tmp_path: Path) -> None:
    text = HEAD + (
        "layer { type: 'Python' name: 'layer' top: 'phase' "
        "python_param { module: 'test_python_layer' layer: 'PhaseLayer' } }"
    )
    for phase in (caffe.TRAIN, caffe.TEST):
        out = make_net(tmp_path, text, phase).forward()
        assert out["phase"].shape == () and out["phase"] == phase


def test_param_str(tmp_path: Path) -> None:
    text = HEAD + INPUT
    text += python_layer(
        "mul10", "SimpleParamLayer", "data", "mul10", "param_str: '10'"
    )
    text += python_layer("mul2", "SimpleParamLayer", "mul10", "mul2", "param_str: '2'")
    net = make_net(tmp_path, text)
    net.blobs["data"].data[...] = 8
    net.forward()
    assert np.all(net.blobs["mul2"].data == 2 * 10 * 8)
    net.blobs["mul2"].diff[...] = 7
    net.backward()
    assert np.all(net.blobs["data"].diff == 2 * 10 * 7)
    bad = (
        HEAD
        + INPUT
        + python_layer("m", "SimpleParamLayer", "data", "m", "param_str: 'x'")
    )
    with pytest.raises(ValueError, match="legible float"):
        make_net(tmp_path, bad)


def test_module_and_class_errors(tmp_path: Path) -> None:
    missing = (
        HEAD
        + INPUT
        + (
            "layer { type: 'Python' name: 'p' bottom: 'data' top: 'p' "
            "python_param { module: 'no_such_module_13' layer: 'X' } }"
        )
    )
    with pytest.raises(ConfigError, match=r"layer 'p' \(Python\).*no_such_module_13.*"
                       "PYTHONPATH"):  # fmt: skip
        make_net(tmp_path, missing)
    typo = HEAD + INPUT + python_layer("p", "SimpleLayr", "data", "p")
    with pytest.raises(ConfigError, match="has no 'SimpleLayr'.*`SimpleLayer`"):
        make_net(tmp_path, typo)
    unset = HEAD + INPUT + "layer { type: 'Python' name: 'p' bottom: 'data' top: 'p' }"
    with pytest.raises(ConfigError, match="python_param.module and python_param.layer"):
        make_net(tmp_path, unset)


# -- a Python loss trained end to end ------------------------------------------------

REGRESSION = """name: 'linreg'
layer {{ name: 'input' type: 'Input' top: 'data' top: 'target'
  input_param {{ shape {{ dim: 32 dim: 3 }} shape {{ dim: 32 dim: 2 }} }} }}
layer {{ name: 'ip' type: 'InnerProduct' bottom: 'data' top: 'ip'
  inner_product_param {{ num_output: 2
    weight_filler {{ type: 'gaussian' std: 0.1 }} }} }}
{loss}
"""
PY_LOSS = """layer { name: 'loss' type: 'Python' bottom: 'ip' bottom: 'target'
  top: 'loss' python_param { module: 'test_python_layer' layer: 'EuclideanLoss' }
  loss_weight: 1 }"""
BUILTIN_LOSS = """layer { name: 'loss' type: 'EuclideanLoss' bottom: 'ip'
  bottom: 'target' top: 'loss' }"""
SOLVER = """train_net: '{net}' base_lr: 0.1 momentum: 0.9 lr_policy: 'fixed'
max_iter: 150 display: 0 random_seed: 1701 snapshot_prefix: '{prefix}'
"""

TRUE_W = np.array([[1.0, -2.0, 0.5], [0.25, 3.0, -1.0]], np.float32)
TRUE_B = np.array([0.3, -0.7], np.float32)


def regression_solver(tmp_path: Path, loss: str, name: str) -> caffe.SGDSolver:
    net = tmp_path / f"{name}.prototxt"
    net.write_text(REGRESSION.format(loss=loss))
    solver = tmp_path / f"{name}_solver.prototxt"
    solver.write_text(SOLVER.format(net=net, prefix=tmp_path / name))
    s = caffe.SGDSolver(str(solver))
    x = np.random.default_rng(7).uniform(-1, 1, (32, 3)).astype(np.float32)
    s.net.blobs["data"].data[...] = x
    s.net.blobs["target"].data[...] = x @ TRUE_W.T + TRUE_B
    return s


def test_python_loss_trains_end_to_end(tmp_path: Path) -> None:
    python = regression_solver(tmp_path, PY_LOSS, "py")
    builtin = regression_solver(tmp_path, BUILTIN_LOSS, "builtin")
    first = float(python.net.forward()["loss"])
    assert first == pytest.approx(float(builtin.net.forward()["loss"]), rel=1e-6)
    python.step(150)
    builtin.step(150)
    w, b = (p.data for p in python.net.params["ip"])
    np.testing.assert_allclose(w, TRUE_W, atol=1e-3)
    np.testing.assert_allclose(b, TRUE_B, atol=1e-3)
    assert float(python.net.blobs["loss"].data) < 1e-6 < first
    for mine, theirs in zip(python.net.params["ip"], builtin.net.params["ip"]):
        np.testing.assert_allclose(mine.data, theirs.data, rtol=1e-4, atol=1e-6)


# -- caffesolve train with a Python data layer ------------------------------------

DATA_MODULE = '''
import numpy as np
import caffe


class RegressionData(caffe.Layer):
    """A batch of x and W x + b, W and b given in param_str."""

    def setup(self, bottom, top):
        values = [float(v) for v in self.param_str.split()]
        self.w = np.array(values[:3], np.float32).reshape(1, 3)
        self.b = np.float32(values[3])
        self.rng = np.random.default_rng(0)

    def reshape(self, bottom, top):
        top[0].reshape(16, 3)
        top[1].reshape(16, 1)

    def forward(self, bottom, top):
        x = self.rng.uniform(-1, 1, (16, 3)).astype(np.float32)
        top[0].data[...] = x
        top[1].data[...] = x @ self.w.T + self.b
'''

CLI_NET = """name: 'cli'
layer {{ name: 'data' type: 'Python' top: 'data' top: 'y'
  python_param {{ module: '{module}' layer: 'RegressionData'
    param_str: '2 -1 0.5 0.25' }} }}
layer {{ name: 'ip' type: 'InnerProduct' bottom: 'data' top: 'ip'
  inner_product_param {{ num_output: 1 }} }}
layer {{ name: 'loss' type: 'EuclideanLoss' bottom: 'ip' bottom: 'y' top: 'loss' }}
"""


@pytest.fixture
def data_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = "pydata_layers_13"
    folder = tmp_path / "layers"
    folder.mkdir()
    (folder / f"{name}.py").write_text(DATA_MODULE)
    monkeypatch.syspath_prepend(str(folder))
    yield name
    sys.modules.pop(name, None)


def test_caffesolve_train_runs_a_python_layer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_module: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.prototxt").write_text(CLI_NET.format(module=data_module))
    (tmp_path / "solver.prototxt").write_text(
        "net: 'net.prototxt' base_lr: 0.2 momentum: 0.9 lr_policy: 'fixed' "
        "max_iter: 200 display: 0 snapshot_prefix: 'cli'"
    )
    code, _, err = run_cli("train", "solver.prototxt")
    assert code == 0, err
    net = caffe.Net(str(tmp_path / "net.prototxt"), caffe.TEST,
                    weights=str(tmp_path / "cli_iter_200.caffemodel"))  # fmt: skip
    np.testing.assert_allclose(net.params["ip"][0].data, [[2, -1, 0.5]], atol=1e-3)
    np.testing.assert_allclose(net.params["ip"][1].data, [0.25], atol=1e-3)
    (tmp_path / "net.prototxt").write_text(CLI_NET.format(module="absent_mod_13"))
    code, _, err = run_cli("train", "solver.prototxt")
    assert code == 1
    assert "layer 'data' (Python)" in err and "PYTHONPATH" in err
    assert "Traceback" not in err
