"""The command line under faults that are not about one file (issue cases 6
and 7), faults in a layer, and the Caffe-compatibility points: warnings
where a user would want to know, and messages that say what to do.
"""

from __future__ import annotations

import io
import re
import resource
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from fault_helpers import (
    NET,
    PAGE,
    REPO,
    error_line,
    make_lmdb,
    pages,
    put_records,
    run,
    snap_prefix,
    snapshot_names,
    write_setup,
)

import caffe
from caffesolve import tools
from caffesolve.layers.inner_product import InnerProductLayer
from caffesolve.log import LOG

# -- memory (case 6) ------------------------------------------------------------------


def test_lenet_batch_of_100000_says_what_to_lower(tmp_path: Path) -> None:
    """LeNet with batch_size 100000 in 1.5 GB of address space (a process of
    its own, RLIMIT_AS): the layer that cannot get its top, the size asked,
    and the field to lower, instead of a MemoryError traceback."""
    db = make_lmdb(tmp_path / "mnist_train_lmdb", n=20, side=28)
    net = (REPO / "configs" / "lenet_train_test.prototxt").read_text()
    net = re.sub(r'source: "[^"]*"', f'source: "{db}"', net)
    net = net.replace("batch_size: 64", "batch_size: 100000", 1)
    (tmp_path / "lenet.prototxt").write_text(net)
    solver = tmp_path / "solver.prototxt"
    solver.write_text(
        f'net: "{tmp_path / "lenet.prototxt"}"\nbase_lr: 0.01\nlr_policy: "fixed"\n'
        "max_iter: 1\n"
    )

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1500 << 20, 1500 << 20))

    result = subprocess.run(
        [sys.executable, "-m", "caffesolve", "train", str(solver)],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limit,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    line = error_line(result.stderr)
    assert re.fullmatch(
        rf"Error: {tmp_path / 'lenet.prototxt'}: layer 'conv1' \(Convolution\): out "
        r"of memory \(Unable to allocate 4.29 GiB for an array with shape \(100000, "
        r"20, 24, 24\) and data type float32\); the blobs made so far hold [\d.]+ "
        r"GiB; lower data_param.batch_size in layer 'mnist'",
        line,
    ), line


def test_lr_schedule_of_a_trillion_rows_says_what_to_change(tmp_path: Path) -> None:
    solver = tmp_path / "s.prototxt"
    solver.write_text('base_lr: 0.01\nlr_policy: "fixed"\nmax_iter: 100\n')
    code, stdout, stderr = run(
        "lr-schedule", str(solver), "--stop", "1000000000000", "--every", "1"
    )
    assert code == 1 and stdout == ""
    assert re.fullmatch(
        r"Error: --start 0 --stop 1000000000000 --every 1 make "
        r"1,000,000,000,001 rows, which need about 350 TB of memory to print "
        r"\([\d.]+ [KMGT]?B free\); raise --every or narrow --start/--stop",
        error_line(stderr),
    )


# -- smaller ones (case 7) ------------------------------------------------------------


def test_truncated_caffemodel_h5(tmp_path: Path) -> None:
    """Weights cut short (an interrupted copy): `train --weights` and `test
    --weights` say so in one line (h5py's OSError traceback before)."""
    solver = write_setup(
        tmp_path, tmp_path / "x", max_iter=5, extra="snapshot_format: HDF5\n"
    )
    assert run("train", str(solver))[0] == 0
    model = tmp_path / "x_iter_5.caffemodel.h5"
    cut = tmp_path / "cut.caffemodel.h5"
    cut.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    for args in (
        ["train", str(solver), "--weights", str(cut)],
        ["test", "--model", str(tmp_path / "net.prototxt"), "--weights", str(cut)],
    ):
        code, _, stderr = run(*args)
        assert code == 1
        line = error_line(stderr)
        assert line.startswith(f"Error: {cut}: cannot read this HDF5 file: Unable to")
        assert "truncated file" in line
        assert line.endswith("; copy it again, or use another snapshot")


def test_ctrl_c_during_start_up_is_quiet() -> None:
    """SIGINT while Python imports the command line (made to land there by an
    import hook): exit 130 as a shell reports Ctrl-C, nothing printed."""
    code = (
        "import os, signal, sys\n"
        "class Hook:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'click':\n"
        "            os.kill(os.getpid(), signal.SIGINT)\n"
        "sys.meta_path.insert(0, Hook())\n"
        "sys.argv = ['caffesolve', '--version']\n"
        "from caffesolve.__main__ import main\n"
        "main()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stdout, result.stderr) == (130, "", "")


def test_overflowing_exp_schedule_prints_no_numpy_warning(tmp_path: Path) -> None:
    solver = tmp_path / "s.prototxt"
    solver.write_text('base_lr: 0.01\nlr_policy: "exp"\ngamma: 2\nmax_iter: 300\n')
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        code, stdout, stderr = run("lr-schedule", str(solver), "--every", "100")
    assert code == 0
    assert stderr == ""
    assert stdout.split()[-6:] == ["100", "1.26765e+28", "200", "inf", "300", "inf"]


# -- a fault in a layer, and a fault whose snapshot fails ---------------------------


def failing_forward(monkeypatch: pytest.MonkeyPatch, call: int) -> None:
    """InnerProduct's forward raises an unexpected error on its call-th run
    (a bug in a layer, as any exception a layer might raise)."""
    real = InnerProductLayer.forward
    calls = {"n": 0}

    def forward(self: InnerProductLayer, bottom: list, top: list) -> None:
        calls["n"] += 1
        if calls["n"] == call:
            raise IndexError("index 10 is out of bounds for axis 0 with size 10")
        real(self, bottom, top)

    monkeypatch.setattr(InnerProductLayer, "forward", forward)


def test_unexpected_exception_in_a_layer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = snap_prefix(tmp_path)
    solver = write_setup(tmp_path / "run", prefix)
    failing_forward(monkeypatch, 13)  # iteration 12's forward
    code, _, stderr = run("train", str(solver))
    assert code == 1
    assert error_line(stderr) == (
        f"Error: {tmp_path / 'run' / 'net.prototxt'}: layer 'ip' (InnerProduct): "
        "IndexError: index 10 is out of bounds for axis 0 with size 10; training "
        "stopped at iteration 12 after writing a snapshot of it (resume with "
        f"--snapshot {prefix}_iter_12.solverstate)"
    )
    assert "x_iter_12.solverstate" in snapshot_names(prefix.parent)
    monkeypatch.undo()
    code, _, stderr = run(
        "train", str(solver), "--snapshot", f"{prefix}_iter_12.solverstate"
    )
    assert code == 0, stderr


class FailsOnEighthForward(caffe.Layer):
    """A Python layer (user code) passing its bottom on, that fails once
    (in iteration 7)."""

    forwards = 0

    def setup(self, bottom: list, top: list) -> None:
        pass

    def reshape(self, bottom: list, top: list) -> None:
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom: list, top: list) -> None:
        FailsOnEighthForward.forwards += 1
        if FailsOnEighthForward.forwards == 8:
            raise KeyError("the user's own bug")
        top[0].data[...] = bottom[0].data

    def backward(self, top: list, propagate_down: list, bottom: list) -> None:
        bottom[0].diff[...] = top[0].diff


def test_exception_of_a_python_layer_is_passed_on_after_the_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """User code's exception reaches the caller as it is (as pycaffe), but
    only after the snapshot of the last completed iteration, which an E line
    names."""
    monkeypatch.setattr(FailsOnEighthForward, "forwards", 0)
    prefix = snap_prefix(tmp_path)
    python = (
        'layer { name: "user" type: "Python" bottom: "data" top: "copy" '
        "python_param { module: 'test_faults_cli' layer: 'FailsOnEighthForward' } }"
    )
    net = NET.replace('bottom: "data" top: "ip"', 'bottom: "copy" top: "ip"')
    net = net.replace('layer { name: "ip"', python + '\nlayer { name: "ip"')
    solver = write_setup(tmp_path / "run", prefix, net=net)
    log = io.StringIO()
    monkeypatch.setattr(LOG, "streams", [log])
    monkeypatch.setattr(LOG, "quiet", False)
    with pytest.raises(KeyError, match="the user's own bug"):
        tools.train(solver)
    assert snapshot_names(prefix.parent) == [
        f"x_iter_{i}.{e}" for i in (5, 7) for e in ("caffemodel", "solverstate")
    ]
    errors = [ln for ln in log.getvalue().splitlines() if ln.startswith("E")]
    assert len(errors) == 1 and errors[0].endswith(
        'KeyError: "the user\'s own bug"; training stopped at iteration 7 after '
        f"writing a snapshot of it (resume with --snapshot {prefix}_iter_7.solverstate)"
    )


def test_fault_whose_snapshot_cannot_be_written(
    tmp_path: Path, disk, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fault at iteration 12 on a disk with room for two pairs: the
    snapshot of iteration 12 fails too; the message names both faults and
    the last good pair, which is intact."""
    ref = tmp_path / "ref"
    assert run("train", str(write_setup(ref, ref / "x", max_iter=5)))[0] == 0
    size = 2 * pages(ref / "x_iter_5.caffemodel", ref / "x_iter_5.solverstate") + 1
    d = disk(size * PAGE)
    prefix = d.path / "x"
    failing_forward(monkeypatch, 13)
    code, _, stderr = run("train", str(write_setup(tmp_path / "run", prefix)))
    assert code == 1
    line = error_line(stderr)
    state10 = f"{prefix}_iter_10.solverstate"
    assert line.endswith(
        "IndexError: index 10 is out of bounds for axis 0 with size 10; training "
        f"stopped at iteration 12; {prefix}_iter_12.caffemodel + "
        "x_iter_12.solverstate: cannot write the snapshot (No space left on "
        f"device); the last good snapshot is {state10} (resume with --snapshot "
        f"{state10})"
    )
    assert snapshot_names(d.path) == sorted(
        f"x_iter_{i}{e}" for i in (5, 10) for e in (".caffemodel", ".solverstate")
    )


# -- Caffe compatibility: accepted, with warnings ------------------------------------


def warnings_of(stderr: str) -> list[str]:
    return [ln.split("] ", 1)[1] for ln in stderr.splitlines() if ln.startswith("W")]


def test_test_iter_without_test_interval_is_accepted(tmp_path: Path) -> None:
    """test_interval defaults to 0: the test net is built and never run. Caffe
    itself refuses this (InitTestNets: CHECK_GT(test_interval, 0)); caffesolve
    runs it and says so."""
    solver = write_setup(tmp_path, tmp_path / "x", max_iter=5, extra="test_iter: 3\n")
    code, _, stderr = run("train", str(solver))
    assert code == 0, stderr
    assert "Creating test net (#0)" in stderr
    assert "Testing net" not in stderr
    assert warnings_of(stderr) == [
        f"{solver}: test_iter is set but test_interval is not: the 1 test net(s) are "
        "built and never run (set test_interval to test every N iterations; Caffe "
        "itself refuses a solver without it)"
    ]


def test_empty_net_warns(tmp_path: Path) -> None:
    net = 'name: "Empty"\nlayer { name: "data" type: "Input" top: "data"\n' \
        "  include { phase: TEST } input_param { shape { dim: 1 } } }\n"  # fmt: skip
    solver = write_setup(tmp_path, tmp_path / "x", max_iter=1, net=net)
    code, _, stderr = run("train", str(solver))
    assert code == 0, stderr
    assert (
        f"{tmp_path / 'net.prototxt'}: the TRAIN net 'Empty' has no layers (check "
        "the include/exclude rules)"
    ) in warnings_of(stderr)


def test_weights_that_match_no_layer_warn(tmp_path: Path) -> None:
    """--weights from another net (no layer name in common): Caffe copies
    nothing and says nothing; we warn."""
    solver = write_setup(tmp_path, tmp_path / "x", max_iter=5)
    assert run("train", str(solver))[0] == 0
    other = write_setup(tmp_path / "other", tmp_path / "y", max_iter=1,
                        net=NET.replace('"ip"', '"fc"'))  # fmt: skip
    code, _, stderr = run(
        "train", str(other), "--weights", f"{tmp_path}/x_iter_5.caffemodel"
    )
    assert code == 0, stderr
    assert (
        f"{tmp_path}/x_iter_5.caffemodel: no layer of this file has the name of a "
        "layer of the net with weights, so no weight was copied (the file's "
        "layers: data, ip, loss; the net's: fc)"
    ) in warnings_of(stderr)


def test_resume_by_another_solver_type_or_source_warns(tmp_path: Path) -> None:
    solver = write_setup(tmp_path, tmp_path / "x", max_iter=5)
    assert run("train", str(solver))[0] == 0
    state = f"{tmp_path}/x_iter_5.solverstate"
    code, _, stderr = run(
        "train", str(solver), "--snapshot", state, "--set", "type=AdaGrad",
        "--set", "momentum=0",
    )  # fmt: skip
    assert code == 0, stderr
    assert (
        f"{state}: written by a SGD solver, resumed by AdaGrad: the history blobs "
        "hold SGD's values, which AdaGrad reads as its own (start from the weights "
        "with --weights instead to begin a fresh history)"
    ) in warnings_of(stderr)
    other = make_lmdb(tmp_path / "other_lmdb", seed=5)
    moved = write_setup(tmp_path / "moved", tmp_path / "x", max_iter=10, train=other)
    code, _, stderr = run("train", str(moved), "--snapshot", state)
    assert code == 0, stderr
    assert (
        f"{state}: layer 'data' read {tmp_path / 'train_lmdb'} when this state was "
        f"written and reads {other} now: its saved data position belongs to the "
        "other source"
    ) in warnings_of(stderr)


# -- messages that say what to do --------------------------------------------------


def test_error_in_the_test_net_names_the_phase(tmp_path: Path) -> None:
    test_top = 'top: "data" top: "label"\n  include { phase: TEST }'
    net = NET.replace(test_top, test_top.replace('"data"', '"dat"'))
    solver = write_setup(
        tmp_path, tmp_path / "x", extra="test_iter: 1\ntest_interval: 5\n", net=net
    )
    code, _, stderr = run("train", str(solver))
    assert code == 1
    assert error_line(stderr) == (
        f"Error: {tmp_path / 'net.prototxt'}: in the TEST net: Unknown bottom blob "
        "'data' (layer 'ip', bottom index 0) (did you mean `dat`?)"
    )


@pytest.mark.parametrize("fmt", ["BINARYPROTO", "HDF5"])
def test_caffemodel_given_to_snapshot_suggests_weights(
    tmp_path: Path, fmt: str
) -> None:
    solver = write_setup(tmp_path, tmp_path / "x", max_iter=5)
    assert run("train", str(solver), "--set", f"snapshot_format={fmt}")[0] == 0
    model = f"{tmp_path}/x_iter_5.caffemodel" + (".h5" if fmt == "HDF5" else "")
    code, _, stderr = run("train", str(solver), "--snapshot", model)
    assert code == 1
    assert error_line(stderr) == (
        f"Error: {model}: this is a model (the net's weights), not a solver "
        f"state: to start training from these weights use --weights {model}; "
        "to resume a run, give its .solverstate"
    )


def test_bad_record_in_the_test_database_names_the_test_net(tmp_path: Path) -> None:
    """Met while testing at iteration 10, just after the snapshot of 10: the
    message says it was the TEST net, and which pair to resume from."""
    train = make_lmdb(tmp_path / "train_lmdb")
    test = make_lmdb(tmp_path / "test_lmdb", n=30, seed=2)
    put_records(test, {"00000015": b"\x00\x01 not a datum"})
    prefix = snap_prefix(tmp_path)
    solver = write_setup(
        tmp_path / "run",
        prefix,
        train=train,
        test=test,
        extra="test_iter: 3\ntest_interval: 10\ntest_initialization: false\n",
    )
    code, _, stderr = run("train", str(solver))
    assert code == 1
    line = error_line(stderr)
    assert line.startswith(
        f"Error: {tmp_path / 'run' / 'net.prototxt'}: in the TEST net: layer 'data' "
        f"(Data): {test}: record 00000015: not a Datum"
    )
    state10 = f"{prefix}_iter_10.solverstate"
    assert line.endswith(
        f"training stopped at iteration 10; the last good snapshot is {state10} "
        f"(resume with --snapshot {state10})"
    )
