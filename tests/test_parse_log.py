"""`caffesolve parse-log` (Caffe's tools/extra/parse_log.py, in Python 3) on
a Caffe log excerpt (tests/data/caffe_lenet_mnist.log, Caffe 1.0's glog lines
for LeNet on MNIST) and on a log caffesolve writes while training here.

Expected values are read off the excerpt by hand; for our own log they come
from the solver's settings (Caffe's inv policy) and the lines of the log."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from solver_helpers import FIXED, least_squares_net, make_data

from caffesolve.cli import cli
from caffesolve.log import LOG
from caffesolve.logs import parse_lines, parse_log

CAFFE_LOG = Path(__file__).parent / "data" / "caffe_lenet_mnist.log"


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path) as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def test_caffe_log_tables(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["parse-log", str(CAFFE_LOG), "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    train_csv = tmp_path / "caffe_lenet_mnist.log.train"
    test_csv = tmp_path / "caffe_lenet_mnist.log.test"
    assert result.output.split() == [str(train_csv), str(test_csv)]

    header, rows = read_csv(train_csv)
    assert header == ["NumIters", "Seconds", "LearningRate", "loss"]
    assert [r[0] for r in rows] == ["0", "100", "200", "300", "400", "500", "600"]
    assert [float(r[3]) for r in rows] == [
        2.34839,
        0.211946,
        0.147127,
        0.182381,
        0.0782518,
        0.0790215,
        0.0923445,
    ]
    # each row's own rate (Caffe's inv policy, as logged at that iteration)
    assert [float(r[2]) for r in rows] == [
        0.01,
        0.00992565,
        0.00985258,
        0.00978075,
        0.00971013,
        0.00964069,
        0.0095724,
    ]
    # seconds from "Solving LeNet" (23:58:07.655725) to the row's first output
    # line, as parse_log.py counts; iteration 600 is past midnight
    assert float(rows[0][1]) == pytest.approx(0.090562, abs=1e-6)
    assert float(rows[6][1]) == pytest.approx(121.606357, abs=1e-6)

    header, rows = read_csv(test_csv)
    assert header == ["NumIters", "Seconds", "LearningRate", "accuracy", "loss"]
    assert [r[0] for r in rows] == ["0", "500", "700"]
    assert [float(r[3]) for r in rows] == [0.0838, 0.9727, 0.9781]
    assert [float(r[4]) for r in rows] == [2.37597, 0.0864061, 0.0671542]
    assert float(rows[0][1]) == pytest.approx(0.08741, abs=1e-6)
    # no lr is logged at 700 (training has ended): the last one, from 600
    assert [float(r[2]) for r in rows] == [0.01, 0.00964069, 0.0095724]


def test_default_out_is_the_logs_folder(tmp_path: Path) -> None:
    log = tmp_path / "caffe.INFO"
    log.write_text(CAFFE_LOG.read_text())
    result = CliRunner().invoke(cli, ["parse-log", str(log)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "caffe.INFO.train").exists()
    assert (tmp_path / "caffe.INFO.test").exists()


def test_new_year_and_two_test_nets() -> None:
    lines = [
        "I1231 23:59:59.500000 7 solver.cpp:289] Solving Net",
        "I1231 23:59:59.600000 7 solver.cpp:347] Iteration 0, Testing net (#0)",
        "I1231 23:59:59.700000 7 solver.cpp:414]     Test net output #0: acc = 0.5",
        "I1231 23:59:59.800000 7 solver.cpp:347] Iteration 0, Testing net (#1)",
        "I0101 00:00:00.100000 7 solver.cpp:414]     Test net output #0: acc = 0.25",
        "I0101 00:00:00.200000 7 solver.cpp:239] Iteration 0 (0 iter/s), loss = nan",
        "I0101 00:00:00.300000 7 solver.cpp:258]     Train net output #0: loss = nan",
    ]
    parsed = parse_lines(lines, 2025)
    assert [r["acc"] for r in parsed.test.rows] == [0.5, 0.25]
    assert parsed.test.rows[1]["Seconds"] == pytest.approx(0.6)
    assert math.isnan(parsed.train.rows[0]["loss"])
    assert math.isnan(parsed.train.rows[0]["LearningRate"])  # none logged


def test_text_that_is_no_log_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello\nworld\n")
    result = CliRunner().invoke(cli, ["parse-log", str(path)])
    assert result.exit_code == 1
    assert f"{path}: no training or test outputs found" in result.output
    assert "Traceback" not in result.output


SOLVER = """net: "net.prototxt"
test_iter: 2
test_interval: 4
base_lr: 0.05
momentum: 0.9
lr_policy: "inv"
gamma: 0.01
power: 0.75
display: 2
max_iter: 8
random_seed: 1
snapshot_prefix: "%s"
"""


def test_caffesolve_log_tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Train 8 iterations here (display 2, test every 4), then parse the log."""
    FIXED["data"] = make_data(batches=4)
    monkeypatch.setattr(LOG, "quiet", False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.prototxt").write_text(least_squares_net())
    (tmp_path / "solver.prototxt").write_text(SOLVER % (tmp_path / "ls"))
    log = tmp_path / "train.log"
    result = CliRunner().invoke(cli, ["train", "solver.prototxt", "--log", str(log)])
    assert result.exit_code == 0, result.output

    parsed = parse_log(log)
    train, test = parsed.train, parsed.test
    assert train.columns == ["NumIters", "Seconds", "LearningRate", "loss"]
    assert train.column("NumIters") == [0, 2, 4, 6]
    inv = [0.05 * (1 + 0.01 * it) ** -0.75 for it in (0, 2, 4, 6)]
    assert train.column("LearningRate") == pytest.approx(inv, rel=1e-5)
    text = log.read_text()
    shown = [float(v) for v in re.findall(r"Train net output #0: loss = (\S+)", text)]
    assert train.column("loss") == shown
    assert test.column("NumIters") == [0, 4, 8]
    assert test.outputs() == ["loss"]
    seconds = train.column("Seconds")
    assert seconds == sorted(seconds) and seconds[0] >= 0
