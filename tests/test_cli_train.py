"""`caffesolve train` / `caffesolve test` end to end, and the log they write
read the way Caffe's log tools read it (tools/extra/parse_log.py,
parse_log.sh, extract_seconds.py; restated here at the regex level)."""

from __future__ import annotations

import datetime as dt
import re
import signal
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from solver_helpers import FIXED, FORWARDS, SEND_SIGNAL, make_data

from caffesolve.cli import cli
from caffesolve.log import LOG
from caffesolve.proto import caffe_pb2
from caffesolve.proto.io import read_binaryproto

NET = """
name: "LeastSquares"
layer { name: "data" type: "TestFixedData" top: "data" top: "targets" }
layer {
  name: "innerprod" type: "InnerProduct" bottom: "data" top: "innerprod"
  param { lr_mult: 1 } param { lr_mult: 2 }
  inner_product_param { num_output: 1
    weight_filler { type: "gaussian" std: 1.0 }
    bias_filler { type: "constant" value: 0 } }
}
layer { name: "loss" type: "EuclideanLoss" bottom: "innerprod" bottom: "targets"
        top: "loss" }
"""

SOLVER = """
net: "net.prototxt"
test_iter: 2
test_interval: 5
base_lr: 0.05
momentum: 0.9
weight_decay: 0.0005
lr_policy: "inv"
gamma: 0.0001
power: 0.75
display: 2
max_iter: 10
snapshot: 5
snapshot_prefix: "%(prefix)s"
random_seed: 1
"""


@pytest.fixture(autouse=True)
def _data() -> None:
    FIXED["data"] = make_data(batches=4)
    SEND_SIGNAL.clear()
    FORWARDS["train"] = 0
    LOG.quiet = False
    yield
    SEND_SIGNAL.clear()


def write_solver(tmp_path: Path, extra: str = "", name: str = "solver") -> Path:
    (tmp_path / "net.prototxt").write_text(NET)
    path = tmp_path / f"{name}.prototxt"
    path.write_text(SOLVER % {"prefix": tmp_path / "snap" / "ls"} + extra)
    (tmp_path / "snap").mkdir(exist_ok=True)
    return path


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


# -- Caffe's log tools, restated --------------------------------------------------

RE_ITERATION = re.compile(r"Iteration (\d+)")
RE_TRAIN = re.compile(r"Train net output #(\d+): (\S+) = ([\.\deE+-]+)")
RE_TEST = re.compile(r"Test net output #(\d+): (\S+) = ([\.\deE+-]+)")
RE_LR = re.compile(r"lr = ([-+]?[0-9]*\.?[0-9]+([eE]?[-+]?[0-9]+)?)")


def line_datetime(line: str, year: int) -> dt.datetime:
    """extract_seconds.extract_datetime_from_line (IndexError is NOT caught by
    parse_log.py, so a blank or odd line after training starts breaks it)."""
    fields = line.strip().split()
    month, day = int(fields[0][1:3]), int(fields[0][3:])
    stamp = fields[1]
    pos = stamp.rfind(".")
    h, m, s = (int(x) for x in stamp[:pos].split(":"))
    return dt.datetime(year, month, day, h, m, s, int(stamp[pos + 1 :]))


def parse_log(path: Path) -> tuple[list[dict], list[dict]]:
    """parse_log.parse_log: (train rows, test rows)."""
    year = dt.datetime.now().year
    lines = path.read_text().splitlines(keepends=True)
    it_lines = iter(lines)
    start = None
    for line in it_lines:  # extract_seconds.get_start_time
        if "Solving" in line:
            start = line_datetime(line, year)
            break
    assert start is not None, "no 'Solving' line: extract_seconds needs it"
    iteration, lr = -1.0, float("nan")
    train: list[dict] = []
    test: list[dict] = []
    rows: dict[str, OrderedDict | None] = {"train": None, "test": None}
    for line in it_lines:
        m = RE_ITERATION.search(line)
        if m:
            iteration = float(m.group(1))
        if iteration == -1:
            continue
        try:
            seconds = (line_datetime(line, year) - start).total_seconds()
        except ValueError:
            continue
        m = RE_LR.search(line)
        if m:
            lr = float(m.group(1))
        for key, regex, table in (("train", RE_TRAIN, train), ("test", RE_TEST, test)):
            row = rows[key]
            m = regex.search(line)
            if m:
                if not row or row["NumIters"] != iteration:
                    if row:
                        table.append(row)
                    row = OrderedDict(
                        [("NumIters", iteration), ("Seconds", seconds), ("LR", lr)]
                    )
                row[m.group(2)] = float(m.group(3))
            if row and len(table) >= 1 and len(row) == len(table[0]):
                table.append(row)
                row = None
            rows[key] = row
    return train, test


# -- tests ------------------------------------------------------------------------


def test_train_log_parses_with_caffe_tools(tmp_path: Path) -> None:
    solver = write_solver(tmp_path)
    log = tmp_path / "train.log"
    code, out = run("train", str(solver), "--log", str(log))
    assert code == 0, out
    text = log.read_text()
    train, test = parse_log(log)
    # display every 2 of 10 iterations: rows at 0, 2, ..., 8 (the final
    # `Iteration 10, loss = ...` line has no per-output lines, as in Caffe)
    assert [r["NumIters"] for r in train] == [0, 2, 4, 6, 8]
    assert all(r["Seconds"] >= 0 for r in train)
    # as with Caffe's logs, a row carries the last lr printed before it
    assert train[2]["LR"] == pytest.approx(0.05 * (1 + 0.0001 * 2) ** -0.75, 1e-5)
    assert all(np.isfinite(r["loss"]) for r in train)
    # test_initialization: test at 0, 5 and after the last iteration (10)
    assert [r["NumIters"] for r in test] == [0, 5, 10]
    assert "Iteration 10, Testing net (#0)" in text
    assert "Optimization Done." in text
    # parse_log.sh fields: '] Solving ', ', loss = ' split on '=', lr is $9
    assert re.search(r"\] Solving LeastSquares$", text, re.M)
    losses = [ln.split("=")[1] for ln in text.splitlines() if ", loss = " in ln]
    assert len(losses) == 6 and all(float(v) > 0 for v in losses)
    lrs = [ln.split()[8] for ln in text.splitlines() if ", lr = " in ln]
    assert [float(v) for v in lrs][0] == pytest.approx(0.05)
    for ln in text.splitlines():
        if "Test net output #0" in ln:
            float(ln.split()[10])
    # snapshots every 5 iterations; none extra at the end (10 % 5 == 0)
    snaps = sorted(p.name for p in (tmp_path / "snap").iterdir())
    assert snaps == [
        "ls_iter_10.caffemodel",
        "ls_iter_10.solverstate",
        "ls_iter_5.caffemodel",
        "ls_iter_5.solverstate",
    ]
    assert "Snapshotting to binary proto file" in text
    assert "Snapshotting solver state to binary proto file" in text


def test_loss_falls(tmp_path: Path) -> None:
    solver = write_solver(tmp_path, "average_loss: 2\n")
    log = tmp_path / "train.log"
    code, out = run(
        "train",
        str(solver),
        "--log",
        str(log),
        "--set",
        "max_iter=40",
        "--set",
        "display=10",
        "--set",
        "snapshot=0",
    )
    assert code == 0, out
    train, _ = parse_log(log)
    assert train[-1]["loss"] < 0.5 * train[0]["loss"]


def test_snapshot_and_weights_together_is_caffes_error(tmp_path: Path) -> None:
    solver = write_solver(tmp_path)
    state = tmp_path / "x.solverstate"
    state.write_bytes(b"")
    code, out = run(
        "train", str(solver), "--snapshot", str(state), "--weights", "a.caffemodel"
    )
    assert code == 1
    assert (
        "Give a snapshot to resume training or weights to finetune but not both" in out
    )


def test_resume_via_cli_matches_straight_run(tmp_path: Path) -> None:
    straight_dir, resumed_dir = tmp_path / "a", tmp_path / "b"
    straight_dir.mkdir()
    resumed_dir.mkdir()
    s1 = write_solver(straight_dir)
    assert run("train", str(s1))[0] == 0
    s2 = write_solver(resumed_dir)
    assert run("train", str(s2), "--iterations", "5")[0] == 0
    FIXED["data"] = make_data(batches=4)
    code, out = run(
        "train", str(s2), "--snapshot", str(resumed_dir / "snap/ls_iter_5.solverstate")
    )
    assert code == 0, out
    a = read_binaryproto(
        straight_dir / "snap/ls_iter_10.caffemodel", caffe_pb2.NetParameter()
    )
    b = read_binaryproto(
        resumed_dir / "snap/ls_iter_10.caffemodel", caffe_pb2.NetParameter()
    )
    blobs = lambda p: [list(blob.data) for lp in p.layer for blob in lp.blobs]  # noqa: E731
    assert blobs(a) == blobs(b)


def test_finetune_via_weights(tmp_path: Path) -> None:
    solver = write_solver(tmp_path)
    assert run("train", str(solver), "--iterations", "5")[0] == 0
    model = tmp_path / "snap/ls_iter_5.caffemodel"
    log = tmp_path / "ft.log"
    code, out = run(
        "train",
        str(solver),
        "--weights",
        str(model),
        "--iterations",
        "0",
        "--set",
        "test_initialization=false",
        "--log",
        str(log),
    )
    assert code == 0, out
    assert f"Finetuning from {model}" in log.read_text()
    # 0 iterations: the snapshot after training holds exactly the copied weights
    a = read_binaryproto(model, caffe_pb2.NetParameter())
    b = read_binaryproto(
        tmp_path / "snap/ls_iter_0.caffemodel", caffe_pb2.NetParameter()
    )
    assert [list(x.data) for lp in a.layer for x in lp.blobs] == [
        list(x.data) for lp in b.layer for x in lp.blobs
    ]


def test_gpu_mode_warns_and_runs_on_cpu(tmp_path: Path) -> None:
    solver = write_solver(tmp_path, "solver_mode: GPU\n")
    log = tmp_path / "gpu.log"
    code, out = run("train", str(solver), "--log", str(log), "--iterations", "2")
    assert code == 0, out
    text = log.read_text()
    assert re.search(r"^W\d{4} .*solver_mode: GPU.*CPU", text, re.M)
    assert "Optimization Done." in text


def test_multistep_logs_status(tmp_path: Path) -> None:
    solver = write_solver(tmp_path)
    log = tmp_path / "ms.log"
    code, out = run(
        "train",
        str(solver),
        "--log",
        str(log),
        "--set",
        "lr_policy=multistep",
        "--set",
        "gamma=0.5",
        "--set",
        "stepvalue=3,6",
    )
    assert code == 0, out
    text = log.read_text()
    assert "MultiStep Status: Iteration 3, step = 1" in text
    assert "MultiStep Status: Iteration 6, step = 2" in text
    state = read_binaryproto(
        tmp_path / "snap/ls_iter_10.solverstate", caffe_pb2.SolverState()
    )
    assert state.current_step == 2
    assert "Iteration 6, lr = 0.0125" in text


def test_missing_snapshot_folder_fails_before_training(tmp_path: Path) -> None:
    (tmp_path / "net.prototxt").write_text(NET)
    solver = tmp_path / "solver.prototxt"
    solver.write_text(SOLVER % {"prefix": tmp_path / "nowhere" / "ls"})
    log = tmp_path / "x.log"
    code, out = run("train", str(solver), "--log", str(log))
    assert code == 1
    assert "Cannot write to snapshot prefix" in out
    assert "Solving" not in log.read_text()


@pytest.mark.parametrize(
    ("sig", "flags", "stopped", "snap_iters"),
    [
        (signal.SIGINT, [], True, [3]),  # Caffe's default: stop (snapshot first)
        (signal.SIGHUP, [], False, [3, 5, 10]),  # default: snapshot, go on
        (signal.SIGINT, ["--sigint-effect", "none"], False, [5, 10]),
        (signal.SIGHUP, ["--sighup-effect", "stop"], True, [3]),
        (signal.SIGINT, ["--sigint-effect", "snapshot"], False, [3, 5, 10]),
    ],
)
def test_signals(
    tmp_path: Path, sig: int, flags: list, stopped: bool, snap_iters: list
) -> None:
    """A real signal to this process during forward pass 3 (iteration 2) is
    acted on at the end of that iteration, as Caffe's SignalHandler."""
    solver = write_solver(tmp_path)
    SEND_SIGNAL[3] = sig
    log = tmp_path / "sig.log"
    previous = signal.getsignal(signal.SIGINT)
    code, out = run("train", str(solver), "--log", str(log), *flags)
    assert code == 0, out
    assert signal.getsignal(signal.SIGINT) is previous  # handler unhooked
    text = log.read_text()
    assert ("Optimization stopped early." in text) == stopped
    found = sorted(
        int(m.group(1)) for m in re.finditer(r"ls_iter_(\d+)\.solverstate$", text, re.M)
    )
    assert found == snap_iters


def test_caffe_test_command(tmp_path: Path) -> None:
    solver = write_solver(tmp_path)
    assert run("train", str(solver), "--iterations", "5")[0] == 0
    log = tmp_path / "test.log"
    code, out = run(
        "test",
        "--model",
        str(tmp_path / "net.prototxt"),
        "--weights",
        str(tmp_path / "snap/ls_iter_5.caffemodel"),
        "--iterations",
        "4",
        "--log",
        str(log),
    )
    assert code == 0, out
    text = log.read_text()
    batches = [float(v) for v in re.findall(r"\] Batch \d, loss = (\S+)", text)]
    assert len(batches) == 4
    # Independent check: the loss of each batch from the saved weights.
    model = read_binaryproto(
        tmp_path / "snap/ls_iter_5.caffemodel", caffe_pb2.NetParameter()
    )
    ip = [lp for lp in model.layer if lp.name == "innerprod"][0]
    w = np.asarray(ip.blobs[0].data, np.float64).reshape(1, 3)
    b = np.asarray(ip.blobs[1].data, np.float64)
    x, y = FIXED["data"]
    expected = [
        ((x[k] @ w.T + b - y[k]) ** 2).sum() / (2 * len(x[k])) for k in range(4)
    ]
    np.testing.assert_allclose(batches, expected, rtol=1e-5)
    mean = float(re.search(r"\] Loss: (\S+)", text).group(1))
    assert mean == pytest.approx(np.mean(expected), rel=1e-5)
    assert re.search(r"\] loss = \S+ \(\* 1 = \S+ loss\)$", text, re.M)


CAFFE_TOOLS = Path("/work/caffe-src/tools/extra")


@pytest.mark.skipif(
    not (CAFFE_TOOLS / "parse_log.sh").exists(), reason="Caffe's tools not here"
)
def test_caffes_own_tools_read_the_log(tmp_path: Path, monkeypatch) -> None:
    """Caffe's extract_seconds.py (imported) and parse_log.sh (run) unchanged."""
    import importlib.util
    import shutil
    import subprocess

    solver = write_solver(tmp_path)
    log = tmp_path / "train.log"
    assert run("train", str(solver), "--log", str(log))[0] == 0
    spec = importlib.util.spec_from_file_location(
        "extract_seconds", CAFFE_TOOLS / "extract_seconds.py"
    )
    extract_seconds = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(extract_seconds)
    out = tmp_path / "seconds.txt"
    extract_seconds.extract_seconds(str(log), str(out))
    seconds = [float(v) for v in out.read_text().split()]
    iteration_lines = [ln for ln in log.read_text().splitlines() if "Iteration" in ln]
    assert len(seconds) == len(iteration_lines)
    assert seconds == sorted(seconds) and seconds[0] >= 0

    if shutil.which("column") is None or shutil.which("python") is None:
        return
    for name in ("parse_log.sh", "extract_seconds.py"):
        shutil.copy(CAFFE_TOOLS / name, tmp_path / name)
        (tmp_path / name).chmod(0o755)
    subprocess.run(
        ["bash", str(tmp_path / "parse_log.sh"), str(log)],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    train_rows = (tmp_path / "train.log.train").read_text().splitlines()
    test_rows = (tmp_path / "train.log.test").read_text().splitlines()
    assert [int(r.split()[0]) for r in train_rows[1:]] == [0, 2, 4, 6, 8, 10]
    assert float(train_rows[2].split()[3]) == pytest.approx(0.05 * 1.0002**-0.75, 1e-5)
    assert [int(r.split()[0]) for r in test_rows[1:]] == [0, 5, 10]
    assert all(float(r.split()[2]) > 0 for r in test_rows[1:])
