"""Caffe's log lines, checked against what Caffe's log tools look for.

tools/extra/parse_log.py, parse_log.sh and extract_seconds.py read Caffe's
glog output; caffesolve's lines must satisfy them unchanged. The regexes and
field positions below are written from reading those tools.
"""

from __future__ import annotations

import datetime as dt
import io
import re

import numpy as np

from caffesolve import log as msg
from caffesolve.log import Log, glog_prefix

# What parse_log.py searches for (its regexes, restated).
ITERATION = re.compile(r"Iteration (\d+)")
TRAIN_OUTPUT = re.compile(r"Train net output #(\d+): (\S+) = ([\.\deE+-]+)")
TEST_OUTPUT = re.compile(r"Test net output #(\d+): (\S+) = ([\.\deE+-]+)")
LEARNING_RATE = re.compile(r"lr = ([-+]?[0-9]*\.?[0-9]+([eE]?[-+]?[0-9]+)?)")


def glog_datetime(line: str, year: int) -> dt.datetime:
    """extract_seconds.extract_datetime_from_line, restated."""
    fields = line.strip().split()
    month, day = int(fields[0][1:3]), int(fields[0][3:])
    stamp = fields[1]
    pos = stamp.rfind(".")
    hour, minute, second = (int(x) for x in stamp[:pos].split(":"))
    return dt.datetime(year, month, day, hour, minute, second, int(stamp[pos + 1 :]))


def render(message: tuple[str, str]) -> str:
    stream = io.StringIO()
    Log(stream).info(*message)
    return stream.getvalue().rstrip("\n")


def test_glog_prefix_parses_like_extract_seconds() -> None:
    line = glog_prefix("I", "solver.cpp:289") + "Solving LeNet"
    now = dt.datetime.now()
    stamp = glog_datetime(line, now.year)
    assert abs((now - stamp).total_seconds()) < 5
    assert re.match(r"^I\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ solver\.cpp:289\] ", line)


def test_iteration_display_line() -> None:
    line = render(msg.iteration_display(100, 12.3456789, 8.1, 100, np.float32(0.25)))
    assert line.endswith(
        "] Iteration 100 (12.3457 iter/s, 8.1s/100 iters), loss = 0.25"
    )
    assert ITERATION.search(line).group(1) == "100"
    # parse_log.sh: grep ', loss = ' | awk -F = '{print $2}'
    assert float(line.split("=")[1]) == 0.25
    assert LEARNING_RATE.search(line) is None


def test_lr_line_prints_float32_like_caffe() -> None:
    rate = float(np.float32(0.01))  # 0.009999999776...
    line = render(msg.iteration_lr(200, rate))
    assert line.endswith("] Iteration 200, lr = 0.01")
    assert float(LEARNING_RATE.search(line).group(1)) == 0.01
    # parse_log.sh: grep ', lr = ' | awk '{print $9}'
    assert line.split()[8] == "0.01"


def test_train_net_output_with_loss_weight() -> None:
    line = render(msg.train_net_output(0, "loss", 2.5, 0.5))
    assert line.endswith("]     Train net output #0: loss = 2.5 (* 0.5 = 1.25 loss)")
    m = TRAIN_OUTPUT.search(line)
    assert m.groups() == ("0", "loss", "2.5")
    plain = render(msg.train_net_output(1, "accuracy", 0.984375, 0.0))
    assert plain.endswith("Train net output #1: accuracy = 0.984375")


def test_test_net_output_fields_for_parse_log_sh() -> None:
    line = render(msg.test_net_output(1, "loss", 0.0412345678, 1.0))
    assert TEST_OUTPUT.search(line).groups() == ("1", "loss", "0.0412346")
    # parse_log.sh: grep 'Test net output #1' | awk '{print $11}'
    assert line.split()[10] == "0.0412346"
    assert line.endswith("(* 1 = 0.0412346 loss)")


def test_testing_net_and_multistep_lines() -> None:
    assert render(msg.testing_net(500, 0)).endswith("] Iteration 500, Testing net (#0)")
    assert render(msg.multistep_status(5000, 1)).endswith(
        "] MultiStep Status: Iteration 5000, step = 1"
    )
    line = render(msg.testing_net(500, 0))
    # parse_log.sh: sed 's/.*Iteration \([[:digit:]]*\).*/\1/g'
    assert re.sub(r".*Iteration ([0-9]*).*", r"\1", line) == "500"


def test_small_and_large_numbers_use_g_format() -> None:
    line = render(msg.iteration_lr(1, 1e-5))
    assert line.endswith("lr = 1e-05")
    assert float(LEARNING_RATE.search(line).group(1)) == 1e-5
    assert render(msg.final_loss(10, 123456789.0)).endswith("loss = 1.23457e+08")


def test_snapshot_and_clipping_lines() -> None:
    assert render(msg.snapshotting_model("a/b_iter_10.caffemodel")).endswith(
        "] Snapshotting to binary proto file a/b_iter_10.caffemodel"
    )
    assert render(msg.snapshotting_solver_state("x_iter_1.solverstate")).endswith(
        "] Snapshotting solver state to binary proto file x_iter_1.solverstate"
    )
    assert "sgd_solver.cpp" in render(msg.snapshotting_solver_state("x", True))
    line = render(msg.gradient_clipping(20.0, 5.0, 0.25))
    assert line.endswith(
        "Gradient clipping: scaling down gradients (L2 norm 20 > 5) "
        "by scale factor 0.25"
    )


def test_caffe_test_lines() -> None:
    assert render(msg.batch_output(3, "accuracy", 0.97)).endswith(
        "] Batch 3, accuracy = 0.97"
    )
    assert render(msg.loss_line(0.031)).endswith("] Loss: 0.031")
    assert render(msg.mean_output("loss", 0.031, 1.0)).endswith(
        "] loss = 0.031 (* 1 = 0.031 loss)"
    )
