"""The training loop (Caffe's solver.cpp Solve/Step/Test), after test_solver.cpp
and test_gradient_based_solver.cpp: smoothed loss, test nets, actions."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from solver_helpers import (
    FIXED,
    least_squares_net,
    make_data,
    make_solver,
    quiet_log,
    solver_param,
)

from caffesolve.log import LOG
from caffesolve.solvers import SolverAction
from caffesolve.solvers.base import SignalHandler, update_smoothed_loss


@pytest.fixture(autouse=True)
def _quiet_and_data(quiet_log: None) -> None:
    FIXED["data"] = make_data(batches=5)


def generic(**fields: object):
    """The least-squares net as net_param: one train net, test nets per test_iter."""
    param = solver_param("", **fields)
    param.ClearField("train_net_param")
    text_format.Parse(least_squares_net(), param.net_param)
    return param


def run_logged(param) -> tuple[object, str]:
    log, stream = quiet_log()
    solver = make_solver(param, log=log)
    solver.solve()
    return solver, stream.getvalue()


def displayed_losses(text: str) -> list[float]:
    return [float(v) for v in re.findall(r"iters\), loss = (\S+)", text)]


def test_update_smoothed_loss_is_running_mean() -> None:
    losses = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0]
    ring: list[np.float32] = []
    smoothed = np.float32(0)
    for i, loss in enumerate(losses):
        smoothed = update_smoothed_loss(ring, smoothed, np.float32(loss), i, 3)
        window = losses[max(0, i - 2) : i + 1]
        assert smoothed == pytest.approx(np.mean(window), rel=1e-6)
        assert isinstance(smoothed, np.float32)


def test_average_loss_smooths_displayed_loss() -> None:
    _, raw = run_logged(solver_param(least_squares_net(), display=1, max_iter=6))
    _, smooth = run_logged(
        solver_param(least_squares_net(), display=1, max_iter=6, average_loss=3)
    )
    per_iter = displayed_losses(raw)
    shown = displayed_losses(smooth)
    assert len(per_iter) == len(shown) == 6
    for i, value in enumerate(shown):
        assert value == pytest.approx(np.mean(per_iter[max(0, i - 2) : i + 1]), 1e-5)


def test_iter_size_averages_loss_over_passes() -> None:
    _, one = run_logged(solver_param(least_squares_net(), display=1, max_iter=1))
    _, two = run_logged(
        solver_param(least_squares_net(), display=1, max_iter=1, iter_size=2)
    )
    # Iteration 0 with iter_size 2 sees batches 0 and 1 with the initial
    # weights: batch 0 from the plain run, batch 1 computed here.
    loss_batch0 = displayed_losses(one)[0]
    x, y = FIXED["data"]
    s = make_solver(solver_param(least_squares_net()))
    w, b = (p.data.astype(np.float64) for p in s.net.learnable_params)
    batch1 = ((x[1] @ w.T + b - y[1]) ** 2).sum() / (2 * len(x[1]))
    assert displayed_losses(two)[0] == pytest.approx((loss_batch0 + batch1) / 2, 1e-5)


def test_test_nets_share_weights_and_average_outputs() -> None:
    param = generic(test_iter=[3], test_interval=2, max_iter=4, test_compute_loss=True)
    solver, text = run_logged(param)
    assert len(solver.test_nets) == 1
    test_net = solver.test_nets[0]
    for a, b in zip(solver.net.learnable_params, test_net.learnable_params):
        np.testing.assert_array_equal(a.data, b.data)
    assert [
        int(i) for i in re.findall(r"Iteration (\d+), Testing net \(#0\)", text)
    ] == [
        0,
        2,
        4,
    ]
    # The last test: mean over 3 batches of the test net, weights after 4 updates.
    means = re.findall(r"Test net output #0: loss = (\S+) \(\* 1 = (\S+) loss\)", text)
    x, y = FIXED["data"]
    w, b = (p.data.astype(np.float64) for p in solver.net.learnable_params)
    # The test net's cursor: 3 batches per test, two tests before this one.
    batches = [(6 + k) % len(x) for k in range(3)]
    expected = np.mean(
        [((x[k] @ w.T + b - y[k]) ** 2).sum() / (2 * len(x[k])) for k in batches]
    )
    assert float(means[-1][0]) == pytest.approx(expected, rel=1e-5)
    assert "Test loss: " in text


def test_no_test_initialization() -> None:
    param = generic(
        test_iter=[1], test_interval=2, max_iter=3, test_initialization=False
    )
    _, text = run_logged(param)
    assert re.findall(r"Iteration (\d+), Testing net", text) == ["2"]


def test_two_test_nets() -> None:
    param = generic(test_iter=[1, 2], test_interval=5, max_iter=5)
    solver, text = run_logged(param)
    assert len(solver.test_nets) == 2
    assert "Iteration 5, Testing net (#1)" in text


def test_loss_weight_in_output_lines() -> None:
    net = least_squares_net().replace('top: "loss" }', 'top: "loss" loss_weight: 2 }')
    _, text = run_logged(solver_param(net, display=1, max_iter=1))
    m = re.search(r"Train net output #0: loss = (\S+) \(\* 2 = (\S+) loss\)", text)
    # Printed with 6 significant digits, as Caffe.
    assert m and float(m.group(2)) == pytest.approx(2 * float(m.group(1)), 1e-5)
    # The displayed (smoothed) loss is the weighted loss.
    assert displayed_losses(text)[0] == pytest.approx(float(m.group(2)), 1e-5)


def test_same_seed_same_run_and_unseeded_differs() -> None:
    runs = [
        run_logged(solver_param(least_squares_net(), random_seed=3))[0]
        for _ in range(2)
    ]
    np.testing.assert_array_equal(
        runs[0].net.learnable_params[0].data, runs[1].net.learnable_params[0].data
    )
    a = make_solver(solver_param(least_squares_net(), random_seed=-1))
    b = make_solver(solver_param(least_squares_net(), random_seed=-1))
    assert not np.array_equal(
        a.net.learnable_params[0].data, b.net.learnable_params[0].data
    )


def test_stop_action_snapshots_then_stops(tmp_path: Path) -> None:
    requests = iter([SolverAction.NONE, SolverAction.STOP])
    param = solver_param(
        least_squares_net(), max_iter=10, snapshot_prefix=str(tmp_path / "s")
    )
    log, stream = quiet_log()
    solver = make_solver(
        param, log=log, action_function=lambda: next(requests, SolverAction.NONE)
    )
    solver.solve()
    assert solver.iter == 2
    assert (tmp_path / "s_iter_2.solverstate").exists()
    assert "Optimization stopped early." in stream.getvalue()
    assert "Optimization Done." not in stream.getvalue()


def test_stop_during_test_interrupts_it(tmp_path: Path) -> None:
    requests = iter([SolverAction.SNAPSHOT, SolverAction.NONE, SolverAction.STOP])
    param = generic(
        test_iter=[5],
        test_interval=1,
        max_iter=10,
        snapshot_prefix=str(tmp_path / "t"),
        snapshot_after_train=True,
    )
    log, stream = quiet_log()
    solver = make_solver(
        param, log=log, action_function=lambda: next(requests, SolverAction.NONE)
    )
    solver.solve()
    text = stream.getvalue()
    assert "Test interrupted." in text
    assert solver.iter == 0
    assert (tmp_path / "t_iter_0.caffemodel").exists()
    assert "Optimization stopped early." in text


def test_signal_handler_maps_signals_like_caffe() -> None:
    import signal

    log, _ = quiet_log()
    handler = SignalHandler("stop", "snapshot", log)
    assert handler.check_for_signals() == SolverAction.NONE
    handler.handle_signal(signal.SIGINT)
    handler.handle_signal(signal.SIGHUP)
    # SIGHUP is checked first, then SIGINT; each is consumed once.
    assert handler.check_for_signals() == SolverAction.SNAPSHOT
    assert handler.check_for_signals() == SolverAction.STOP
    assert handler.check_for_signals() == SolverAction.NONE
    with pytest.raises(Exception, match="Invalid signal effect"):
        SignalHandler("halt", "snapshot")


def test_max_iter_zero_and_snapshot_after_train(tmp_path: Path) -> None:
    param = solver_param(
        least_squares_net(),
        max_iter=0,
        snapshot_after_train=True,
        snapshot_prefix=str(tmp_path / "z"),
    )
    solver, text = run_logged(param)
    assert solver.iter == 0
    assert (tmp_path / "z_iter_0.caffemodel").exists()
    assert "Optimization Done." in text


def test_step_policy_current_step_is_saved(tmp_path: Path) -> None:
    param = solver_param(
        least_squares_net(),
        max_iter=7,
        lr_policy="step",
        gamma=0.1,
        stepsize=3,
        display=1,
        snapshot_after_train=True,
        snapshot_prefix=str(tmp_path / "st"),
    )
    solver, text = run_logged(param)
    assert solver.current_step == 2  # set at iteration 6: 6 // 3
    assert "Iteration 6, lr = 0.001" in text


def test_debug_info_logs_forward_backward_at_display_iterations(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Caffe: net_->set_debug_info(display && param_.debug_info()).
    buffer = io.StringIO()
    monkeypatch.setattr(LOG, "streams", [buffer])
    monkeypatch.setattr(LOG, "quiet", False)
    param = generic(max_iter=4, display=2, debug_info=True)
    param.ClearField("test_iter")
    param.test_interval = 0
    run_logged(param)
    text = buffer.getvalue()
    # one warning for the part of debug_info caffesolve leaves out
    assert len(re.findall(r"^W.*debug_info .*\[Update\]", text, re.M)) == 1
    # iterations 0 and 2 display, 1 and 3 do not: each line appears twice
    forward = re.findall(r"\[Forward\] Layer (\S+), top blob (\S+) data: (\S+)", text)
    half = len(forward) // 2
    assert half and [f[:2] for f in forward[:half]] == [f[:2] for f in forward[half:]]
    assert all(float(v) >= 0 for *_, v in forward)
    backward = re.findall(r"\[Backward\] All net params", text)
    assert len(backward) == 2


class Recorder:
    """A SolverCallback that records what it sees: the first param's diff when
    the gradients are ready, and the data at both hooks."""

    def __init__(self, solver) -> None:
        self.solver = solver
        self.events: list[tuple[str, int]] = []
        self.diffs: list[np.ndarray] = []
        self.data_at_start: list[np.ndarray] = []
        self.data_when_ready: list[np.ndarray] = []

    def on_start(self) -> None:
        blob = self.solver.net.learnable_params[0]
        self.events.append(("on_start", self.solver.iter))
        assert not blob.diff.any()  # cleared before the hook, filled after
        self.data_at_start.append(blob.data.copy())

    def on_gradients_ready(self) -> None:
        blob = self.solver.net.learnable_params[0]
        self.events.append(("on_gradients_ready", self.solver.iter))
        self.diffs.append(blob.diff.copy())
        self.data_when_ready.append(blob.data.copy())


def test_callbacks_run_between_clear_backward_and_update() -> None:
    # Caffe's Solver::Step: on_start after ClearParamDiffs, on_gradients_ready
    # after the forward/backward passes and before ApplyUpdate.
    solver = make_solver(generic(max_iter=3, momentum=0.0, weight_decay=0.0))
    recorder = Recorder(solver)
    solver.add_callback(recorder)
    solver.step(3)
    assert recorder.events == [
        ("on_start", 0),
        ("on_gradients_ready", 0),
        ("on_start", 1),
        ("on_gradients_ready", 1),
        ("on_start", 2),
        ("on_gradients_ready", 2),
    ]
    rate = np.float32(solver.param.base_lr)
    for k in range(2):
        # Not updated yet when the gradients are ready; plain SGD then moves
        # the weights by exactly lr * diff before the next on_start.
        np.testing.assert_array_equal(
            recorder.data_when_ready[k], recorder.data_at_start[k]
        )
        assert recorder.diffs[k].any()
        expected = recorder.data_at_start[k] - rate * recorder.diffs[k]
        np.testing.assert_allclose(recorder.data_at_start[k + 1], expected, 1e-6)


def test_net_after_backward_runs_once_per_layer_top_down() -> None:
    solver = make_solver(generic(max_iter=1))
    net = solver.net
    seen: list[int] = []
    net.add_after_backward(seen.append)
    net.forward()
    net.backward()
    assert seen == list(range(len(net.layers) - 1, -1, -1))


def test_non_root_solver_neither_tests_nor_snapshots(tmp_path: Path) -> None:
    # Caffe::root_solver(): only the root runs TestAll and the periodic and
    # final snapshots; the others train.
    prefix = tmp_path / "snap"
    param = generic(
        max_iter=4,
        test_interval=2,
        test_iter=[1],
        snapshot=2,
        snapshot_prefix=str(prefix),
    )
    log, stream = quiet_log()
    solver = make_solver(param, log=log)
    solver.is_root = False
    solver.solve()
    assert solver.iter == 4
    assert "Testing net" not in stream.getvalue()
    assert list(tmp_path.iterdir()) == []
    root, text = run_logged(param)
    assert "Testing net" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "snap_iter_2.caffemodel",
        "snap_iter_2.solverstate",
        "snap_iter_4.caffemodel",
        "snap_iter_4.solverstate",
    ]
