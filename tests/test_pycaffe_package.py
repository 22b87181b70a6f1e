"""The `caffe` package and _caffe's module-level calls, after pycaffe's
test_layer_type_list.py, test_nccl.py and test_draw.py: module names and
objects, the layer type list, mode and device, the log level, Timer,
multi-GPU refusals, and caffe.draw's picture of a NetParameter."""

from __future__ import annotations

import fnmatch
import importlib
import io
import re
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from test_draw import LENET, svg_nodes

import caffe
import caffesolve.proto.caffe_pb2
import caffesolve.pycaffe
from caffesolve.errors import ConfigError
from caffesolve.layers import LAYERS
from caffesolve.log import LOG, env_min_level
from caffesolve.pycaffe import runtime

ROOT = Path(__file__).resolve().parents[1]


def test_module_names_are_caffesolves_modules() -> None:
    from caffe.proto import caffe_pb2

    assert caffe_pb2 is caffesolve.proto.caffe_pb2
    assert caffe.proto.caffe_pb2 is caffe_pb2
    for name in ("io", "net_spec", "classifier", "detector", "draw"):
        module = importlib.import_module(f"caffe.{name}")
        assert module is importlib.import_module(f"caffesolve.pycaffe.{name}")
    assert caffe.io is caffesolve.pycaffe.io
    assert caffe.classifier.Classifier is caffe.Classifier
    from caffe.pycaffe import Net, SGDSolver

    assert Net is caffe.Net and SGDSolver is caffe.SGDSolver
    assert (caffe.TRAIN, caffe.TEST) == (0, 1) and caffe.__version__ == "1.0.0"
    from caffe import layers as L
    from caffe import params as P

    assert L is caffe.layers and P.Pooling.MAX == caffe_pb2.PoolingParameter.MAX


def test_the_wheel_ships_both_packages() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split("[tool.setuptools.packages.find]")[1]
    include = re.findall(r'"([^"]+)"', re.search(r"include = \[(.*)\]", section)[1])
    # setuptools' find: folders with an __init__.py, kept by fnmatch patterns
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ROOT.iterdir()
        if top.is_dir() and not top.name.startswith(".")
        for init in top.glob("**/__init__.py")
    }
    packages = {p for p in found if any(fnmatch.fnmatch(p, pat) for pat in include)}
    assert {"caffe", "caffe.proto", "caffesolve", "caffesolve.pycaffe"} <= packages
    assert not any(p.startswith("tests") for p in packages)


def test_layer_type_list() -> None:
    types = caffe.layer_type_list()
    for name in ("Data", "Convolution", "InnerProduct", "Python"):
        assert name in types
    assert types == sorted(LAYERS)


@pytest.fixture
def log_text(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    stream = io.StringIO()
    monkeypatch.setattr(LOG, "streams", [stream])
    monkeypatch.setattr(LOG, "quiet", False)
    monkeypatch.setattr(LOG, "min_level", 0)
    return stream


def test_gpu_calls_warn_once(
    log_text: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(runtime._state, "warned_gpu", False)
    caffe.set_mode_cpu()
    assert log_text.getvalue() == ""
    caffe.set_device(0)
    caffe.set_mode_gpu()
    caffe.set_mode_gpu()
    lines = log_text.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("W")
    assert "runs on the CPU" in lines[0]


def test_multi_gpu_calls_point_at_mpi() -> None:
    assert caffe.solver_count() == 1 and caffe.solver_rank() == 0
    assert not caffe.has_nccl()
    caffe.set_solver_count(1)
    caffe.set_solver_rank(0)
    caffe.set_multiprocess(False)
    for call in (
        lambda: caffe.NCCL(None, b""),
        lambda: caffe.NCCL.new_uid(),
        lambda: caffe.set_solver_count(2),
        lambda: caffe.set_solver_rank(1),
        lambda: caffe.set_multiprocess(True),
    ):
        with pytest.raises(ConfigError, match="mpirun"):
            call()


def test_log_and_levels(log_text: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> None:
    caffe.log("hello from pycaffe")
    assert log_text.getvalue().startswith("I")
    assert "_caffe.cpp:68] hello from pycaffe" in log_text.getvalue()
    caffe.init_log(2)  # glog's ERROR: INFO and WARNING lines go
    caffe.log("hidden")
    LOG.warning("x.cpp:1", "hidden too")
    assert "hidden" not in log_text.getvalue()
    monkeypatch.setenv("GLOG_minloglevel", "1")
    assert env_min_level() == 1
    monkeypatch.setenv("GLOG_minloglevel", "junk")
    assert env_min_level() == 0


def test_timer(log_text: io.StringIO) -> None:
    timer = caffe.Timer()
    assert timer.ms == 0.0 and "never been run" in log_text.getvalue()
    timer.start()
    sum(range(10000))
    timer.stop()
    first = timer.ms
    assert first > 0
    assert timer.ms == first  # stopped: the reading stays


def lenet_param() -> caffe.proto.caffe_pb2.NetParameter:
    return text_format.Parse(LENET.read_text(), caffe.proto.caffe_pb2.NetParameter())


def test_draw_net_dot_text() -> None:
    import caffe.draw

    param = lenet_param()
    dot = caffe.draw.draw_net(param, "LR", ext="dot").decode()
    edge_20 = re.compile(r'-> blob\d+ \[label="?20"?\]')  # conv1's num_output
    assert "conv1" in dot and "(Convolution)" in dot and edge_20.search(dot)
    bare = caffe.draw.get_pydot_graph(param, "TB", label_edges=False)
    assert not edge_20.search(bare.to_string())
    lrm = caffe.draw.get_pydot_graph(param, "LR", display_lrm=True).to_string()
    assert "lr mult: 1.0, 2.0" in lrm  # LeNet's conv1: lr_mult 1 and 2
    train_only = caffe.draw.draw_net(param, "LR", "dot", phase=caffe.TRAIN).decode()
    assert "accuracy" not in train_only and "accuracy" in dot


def test_draw_net_to_file_svg(tmp_path: Path) -> None:
    import caffe.draw

    out = tmp_path / "lenet.svg"
    caffe.draw.draw_net_to_file(lenet_param(), str(out), "LR", phase=caffe.TEST)
    nodes, edges, labels = svg_nodes(out)
    assert any(text.startswith("conv1") for text in nodes)
    assert "20" in labels and edges > 10
    png = caffe.draw.draw_net(lenet_param(), "LR", "png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ConfigError, match="does not write .nope"):
        caffe.draw.draw_net(lenet_param(), "LR", "nope")


def test_seed_state_is_one_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(runtime._state, "rng", None)  # restored afterwards
    assert runtime.random_generator() is None
    caffe.set_random_seed(3)
    a = runtime.random_generator()
    assert isinstance(a, np.random.Generator)
    assert a is runtime.random_generator()
