"""`caffesolve time MODEL`: Caffe's benchmark layout, phases, weights, errors."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from caffesolve.cli import cli
from caffesolve.errors import ConfigError
from caffesolve.log import LOG
from caffesolve.net import Net
from caffesolve.proto import caffe_pb2
from caffesolve.proto.io import write_binaryproto
from caffesolve.proto.upgrade import read_net_params_from_text_file
from caffesolve.tools import time_net

MODEL = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" top: "target"
  input_param { shape { dim: 8 dim: 6 } shape { dim: 8 dim: 2 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
  inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip2" bottom: "target"
  top: "loss" include { phase: TRAIN } }
"""

NUMBER = r"[0-9.e+-]+"


@pytest.fixture
def log_lines(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    buffer = io.StringIO()
    monkeypatch.setattr(LOG, "streams", [buffer])
    monkeypatch.setattr(LOG, "quiet", False)
    return buffer


def messages(buffer: io.StringIO, source: str = "caffe.cpp") -> list[str]:
    """The message part of each glog line logged from `source`."""
    out = []
    for line in buffer.getvalue().splitlines():
        m = re.match(r"^I\d{4} [\d:.]+ +\d+ ([\w.]+):\d+\] (.*)$", line)
        if m and m.group(1) == source:
            out.append(m.group(2))
    return out


def run(*args: str) -> object:
    return CliRunner().invoke(cli, ["time", *args])


def test_time_prints_caffe_layout(tmp_path: Path, log_lines: io.StringIO) -> None:
    model = tmp_path / "tiny.prototxt"
    model.write_text(MODEL)
    result = run(str(model), "--iterations", "3")
    assert result.exit_code == 0, result.output
    lines = messages(log_lines)
    assert lines[:3] == ["Use CPU.", "Performing Forward", lines[2]]
    assert re.fullmatch(f"Initial loss: {NUMBER}", lines[2])
    assert lines[3:6] == [
        "Performing Backward",
        "*** Benchmark begins ***",
        "Testing for 3 iterations.",
    ]
    for j in range(3):
        assert re.fullmatch(
            f"Iteration: {j + 1} forward-backward time: {NUMBER} ms.", lines[6 + j]
        )
    assert lines[9] == "Average time per layer: "
    per_layer = lines[10:20]
    names = ["data", "ip1", "relu1", "ip2", "loss"]
    for k, name in enumerate(names):
        assert re.fullmatch(f" *{name}\tforward: {NUMBER} ms.", per_layer[2 * k])
        assert re.fullmatch(f" *{name}\tbackward: {NUMBER} ms.", per_layer[2 * k + 1])
        assert len(per_layer[2 * k].split("\t")[0]) == 10  # setw(10)
    tail = lines[20:]
    assert [t.split(":")[0] for t in tail[:4]] == [
        "Average Forward pass",
        "Average Backward pass",
        "Average Forward-Backward",
        "Total Time",
    ]
    assert tail[4] == "*** Benchmark ends ***"
    forward = float(tail[0].split()[3])
    per_layer_forward = sum(float(p.split()[2]) for p in per_layer[::2])
    assert per_layer_forward <= forward * 1.5 + 0.1


def test_time_test_phase_and_weights(tmp_path: Path, log_lines: io.StringIO) -> None:
    model = tmp_path / "tiny.prototxt"
    model.write_text(MODEL)
    param = read_net_params_from_text_file(model)
    net = Net(param, caffe_pb2.TRAIN, rng=np.random.default_rng(3), quiet=True)
    weights = tmp_path / "w.caffemodel"
    write_binaryproto(weights, net.to_proto())
    # The command feeds Input tops uniform [0, 1) values from seed 1701.
    rng = np.random.default_rng(1701)
    for blob in net.input_blobs:
        blob.data[...] = rng.random(blob.shape, dtype=np.float32)
    expected = net.forward()

    result = run("--model", str(model), "--weights", str(weights), "--iterations", "1")
    assert result.exit_code == 0, result.output
    initial = [m for m in messages(log_lines) if m.startswith("Initial loss")]
    assert initial == [f"Initial loss: {float(np.float32(expected)):.6g}"]

    log_lines.truncate(0)
    result = run(str(model), "--phase", "TEST", "--iterations", "1")
    assert result.exit_code == 0, result.output
    layers = [m.split("\t")[0].strip() for m in messages(log_lines) if "\tforward" in m]
    assert layers == ["data", "ip1", "relu1", "ip2"]


def test_time_errors(tmp_path: Path, log_lines: io.StringIO) -> None:
    result = run()
    assert result.exit_code == 2 and "Need a model definition" in result.output
    result = run(str(tmp_path / "missing.prototxt"))
    assert result.exit_code == 1 and "file not found" in result.output
    bad = tmp_path / "bad.prototxt"
    bad.write_text(
        MODEL.replace('bottom: "ip1" top: "ip2"', 'bottom: "ipl" top: "ip2"')
    )
    result = run(str(bad))
    assert result.exit_code == 1
    assert "Unknown bottom blob 'ipl' (layer 'ip2', bottom index 0)" in result.output
    assert result.output.count("\n") == 1  # one line, no traceback
    with pytest.raises(ConfigError, match="at least 1"):
        time_net(Net(caffe_pb2.NetParameter(), quiet=True), 0)


def test_time_data_layer_without_source_reports_the_layer(
    tmp_path: Path, log_lines: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "data.prototxt"
    model.write_text(
        'layer { name: "mnist" type: "Data" top: "data" top: "label" '
        'data_param { source: "no_such_lmdb" batch_size: 4 backend: LMDB } }\n'
    )
    result = run(str(model))
    assert result.exit_code == 1
    assert "layer 'mnist' (Data)" in result.output and "no_such_lmdb" in result.output
