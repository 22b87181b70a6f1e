"""caffe.SGDSolver and friends, after pycaffe's python/caffe/test/test_solver.py:
solve, step, apply_update against the hand-worked SGD update, snapshot and
restore, callbacks, a SolverParameter written from Python, the solver
classes, and the random seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_pycaffe_net import SIMPLE_NET

import caffe
from caffe.proto import caffe_pb2
from caffesolve.errors import ConfigError
from caffesolve.pycaffe import runtime
from caffesolve.pycaffe.solver import FACES
from caffesolve.solvers import SOLVERS
from caffesolve.solvers.adam import AdamSolver as CoreAdam

pytestmark = pytest.mark.usefixtures("quiet_log")

SOLVER = """net: '{net}'
test_iter: 2 test_interval: 10 base_lr: 0.01 momentum: {momentum}
weight_decay: 0.0005 lr_policy: 'inv' gamma: 0.0001 power: 0.75
display: 100 max_iter: {max_iter} snapshot_after_train: false
snapshot_prefix: "model" {extra}"""


def solver_file(
    tmp_path: Path,
    max_iter: int = 10,
    extra: str = "",
    name: str = "solver",
    momentum: float = 0.9,
) -> str:
    net = tmp_path / "net.prototxt"
    net.write_text(SIMPLE_NET)
    path = tmp_path / f"{name}.prototxt"
    path.write_text(
        SOLVER.format(net=net, max_iter=max_iter, extra=extra, momentum=momentum)
    )
    return str(path)


def fill_labels(solver: caffe.SGDSolver) -> None:
    """Valid labels and some data in the train and test nets' inputs."""
    rng = np.random.default_rng(1701)
    for net in [solver.net, *solver.test_nets]:
        net.blobs["label"].data[...] = rng.integers(13, size=5)
        net.blobs["data"].data[...] = rng.uniform(-0.1, 0.1, (5, 2, 3, 4))


@pytest.fixture
def solver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> caffe.SGDSolver:
    monkeypatch.chdir(tmp_path)
    # A fixed seed: from some random starting weights ten steps at this rate
    # do not lower the loss of these few samples.
    solver = caffe.SGDSolver(solver_file(tmp_path, extra="random_seed: 1701"))
    fill_labels(solver)
    return solver


def test_solve(solver: caffe.SGDSolver) -> None:
    assert solver.iter == 0
    solver.solve()
    assert solver.iter == 10
    assert len(solver.test_nets) == 1
    assert solver.net is solver.net  # one face per net
    assert solver.test_nets[0].blobs["label"] is solver._solver.test_nets[0].blobs[1]


def test_step_trains_the_net(solver: caffe.SGDSolver) -> None:
    first = float(solver.net.forward()["loss"])
    solver.step(10)
    assert solver.iter == 10
    assert float(solver.net.blobs["loss"].data) < first


def test_apply_update(solver: caffe.SGDSolver) -> None:
    net = solver.net
    data = net.layers[1].blobs[0].data
    data[...] = 0
    net.layers[1].blobs[0].diff[...] = 1
    # rate 0.01 at iter 0; decay adds 0.0005 * 0; history = 0.01 * 1
    solver.apply_update()
    np.testing.assert_array_equal(data, np.float32(-0.01))
    assert solver.iter == 1
    assert solver.lr == pytest.approx(0.01 * (1 + 0.0001) ** -0.75, rel=1e-6)


def test_base_lr_set_through_param(solver: caffe.SGDSolver) -> None:
    solver.param.base_lr = 0.5
    blob = solver.net.layers[1].blobs[0]
    blob.data[...] = 0
    blob.diff[...] = 1
    solver.apply_update()
    np.testing.assert_array_equal(blob.data, np.float32(-0.5))


def test_nets_outlive_the_solver(solver: caffe.SGDSolver) -> None:
    nets = [solver.net, *solver.test_nets]
    del solver
    total = 0.0
    for net in nets:
        for blobs in net.params.values():
            total += sum(float(p.data.sum() + p.diff.sum()) for p in blobs)
        total += sum(float(b.data.sum()) for b in net.blobs.values())
    assert np.isfinite(total)


def test_snapshot_and_restore(solver: caffe.SGDSolver, tmp_path: Path) -> None:
    solver.step(3)
    solver.snapshot()
    for name in ("model_iter_3.caffemodel", "model_iter_3.solverstate"):
        assert (tmp_path / name).is_file()
    solver.step(2)
    straight = solver.net.params["ip"][0].data.copy()
    other = caffe.SGDSolver(solver_file(tmp_path))
    fill_labels(other)
    other.restore("model_iter_3.solverstate")
    assert other.iter == 3
    other.step(2)
    np.testing.assert_array_equal(other.net.params["ip"][0].data, straight)


def test_callbacks_run_each_iteration(solver: caffe.SGDSolver) -> None:
    calls: list[str] = []
    solver.add_callback(lambda: calls.append("start"), lambda: calls.append("ready"))
    solver.step(2)
    assert calls == ["start", "ready", "start", "ready"]
    with pytest.raises(ConfigError, match="MPI"):
        solver.add_callback(object())  # pycaffe's add_callback(nccl)


def test_share_weights(solver: caffe.SGDSolver, tmp_path: Path) -> None:
    other = caffe.Net(str(tmp_path / "net.prototxt"), caffe.TEST)
    solver.share_weights(other)
    solver.net.params["ip"][0].data[...] = 3
    assert np.all(other.params["ip"][0].data == 3)


def test_solver_classes_and_get_solver(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    sgd_file = solver_file(tmp_path)
    adam = caffe.AdamSolver(sgd_file)  # the class decides, not the file's type
    assert isinstance(adam, caffe.SGDSolver) and isinstance(adam._solver, CoreAdam)
    got = caffe.get_solver(sgd_file)
    assert type(got) is caffe.SGDSolver
    adam_file = solver_file(tmp_path, extra='type: "Adam"', name="adam")
    assert type(caffe.get_solver(adam_file)) is caffe.AdamSolver
    assert caffe.NesterovSolver(sgd_file)._solver.type == "Nesterov"
    with pytest.raises(ConfigError, match="Momentum cannot be used with AdaGrad"):
        caffe.AdaGradSolver(sgd_file)  # Caffe's constructor check
    plain = solver_file(tmp_path, momentum=0, name="plain")
    for cls in (caffe.AdaGradSolver, caffe.RMSPropSolver, caffe.AdaDeltaSolver):
        assert cls(plain)._solver.type == cls.solver_type
    assert sorted(FACES) == sorted(SOLVERS)  # every solver type has its class
    bad = solver_file(tmp_path, extra='type: "Adamm"', name="bad")
    with pytest.raises(ConfigError, match="Unknown solver type: Adamm"):
        caffe.get_solver(bad)


def test_solver_parameter_written_from_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.prototxt").write_text(SIMPLE_NET)
    s = caffe_pb2.SolverParameter()
    s.train_net = "net.prototxt"
    s.base_lr = 0.01
    s.momentum = 0.9
    s.lr_policy = "fixed"
    s.max_iter = 4
    s.display = 0
    s.snapshot_prefix = "py"
    s.type = "Nesterov"
    (tmp_path / "py_solver.prototxt").write_text(str(s))
    solver = caffe.get_solver("py_solver.prototxt")
    assert type(solver) is caffe.NesterovSolver and solver.test_nets == []
    fill_labels(solver)
    solver.solve()
    assert solver.iter == 4
    assert (tmp_path / "py_iter_4.caffemodel").is_file()  # snapshot_after_train


def test_set_random_seed_makes_nets_repeat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(runtime._state, "rng", None)  # restored afterwards
    net_file = tmp_path / "net.prototxt"
    net_file.write_text(SIMPLE_NET)
    caffe.set_random_seed(1701)
    a = caffe.Net(str(net_file), caffe.TRAIN)
    b = caffe.Net(str(net_file), caffe.TRAIN)  # the stream goes on
    caffe.set_random_seed(1701)
    c = caffe.Net(str(net_file), caffe.TRAIN)
    w = [n.params["conv"][0].data for n in (a, b, c)]
    assert not np.array_equal(w[0], w[1])
    np.testing.assert_array_equal(w[0], w[2])
    # a solver with random_seed -1 draws from the same Generator
    monkey_dir = tmp_path / "s"
    monkey_dir.mkdir()
    caffe.set_random_seed(5)
    s1 = caffe.SGDSolver(solver_file(monkey_dir))
    caffe.set_random_seed(5)
    s2 = caffe.SGDSolver(solver_file(monkey_dir))
    np.testing.assert_array_equal(
        s1.net.params["ip"][0].data, s2.net.params["ip"][0].data
    )
