"""Caffe's tools/caffe.cpp as library functions: `train`, `test` (score) and
`time`, and the `--log FILE` stream.

caffesolve.cli parses the options and calls these; they raise CaffesolveError for bad
input and log with Caffe's messages.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import TextIO

import numpy as np

from caffesolve import log as msg
from caffesolve import weights as weights_io
from caffesolve.errors import ConfigError
from caffesolve.log import LOG, Log, fmt, fmt32
from caffesolve.net import Net
from caffesolve.proto import caffe_pb2
from caffesolve.proto.io import read_prototxt
from caffesolve.proto.upgrade import read_net_params_from_text_file
from caffesolve.solvers import create_solver
from caffesolve.solvers.base import SignalHandler, Solver, SolverAction

F32 = np.float32


def train(
    solver_path: str | os.PathLike[str],
    *,
    snapshot: str | None = None,
    weights: str | None = None,
    overrides: Sequence[str] = (),
    iterations: int | None = None,
    sigint_effect: str = SolverAction.STOP,
    sighup_effect: str = SolverAction.SNAPSHOT,
    log: Log = LOG,
) -> Solver:
    """Caffe's `train`: load the solver, finetune from `weights` or resume
    from `snapshot`, solve; SIGINT/SIGHUP act at iteration boundaries.

    `iterations` overrides max_iter. Returns the solver after training.
    Started by `mpirun -n N`, the N processes train one model data-parallel
    (parallel.py): rank 0 restores, logs, tests and snapshots.
    """
    from caffesolve import parallel
    from caffesolve.solver_param import load_solver

    if snapshot and weights:
        raise ConfigError(
            "Give a snapshot to resume training or weights to finetune but not both."
        )
    world = parallel.world()
    with world.quiet_unless_root(log, LOG):
        source = str(solver_path)
        with world.together():
            param = load_solver(solver_path, overrides)
        if iterations is not None:
            param.max_iter = iterations
        parallel.check_same_files(world, param, source)
        if (
            param.HasField("solver_mode")
            and param.solver_mode == caffe_pb2.SolverParameter.GPU
        ):
            log.warning(*msg.gpu_mode_on_cpu())
        log.info(*msg.use_cpu())
        if snapshot:
            param.ClearField("weights")
        elif weights:
            param.ClearField("weights")
            param.weights.append(weights)

        handler = SignalHandler(sigint_effect, sighup_effect, log)
        in_main_thread = threading.current_thread() is threading.main_thread()
        if in_main_thread:
            handler.hook_up()
        try:
            with world.together():
                solver = create_solver(
                    parallel.rank_param(world, param),
                    source,
                    log=log,
                    action_function=handler.check_for_signals,
                )
                if snapshot and world.is_root:
                    log.info(*msg.resuming_from(snapshot))
                    solver.restore(snapshot)
            parallel.attach(solver, world, log)
            log.info(*msg.starting_optimization())
            solver.solve()
        finally:
            if in_main_thread:
                handler.unhook()
        log.info(*msg.optimization_done("caffe.cpp:250"))
    return solver


def score(
    model: str | os.PathLike[str],
    weights: str,
    iterations: int = 50,
    *,
    log: Log = LOG,
) -> tuple[float, list[tuple[str, float]]]:
    """Caffe's `test` ("score a model"): the TEST-phase net with `weights`,
    `iterations` forward passes; logs each batch's outputs, the mean loss and
    each output's mean. Returns (mean loss, [(output name, mean), ...])."""
    if iterations < 1:
        raise ConfigError(f"--iterations must be >= 1 (got {iterations})")
    log.info(*msg.use_cpu("caffe.cpp:275"))
    net_param = read_prototxt(model, caffe_pb2.NetParameter())
    net = Net(net_param, caffe_pb2.TEST, rng=np.random.default_rng(), source=str(model))
    for path in weights.split(","):
        if path.strip():
            weights_io.load_weights(net, path.strip())
    log.info(*msg.running_for(iterations))
    scores: np.ndarray | None = None
    loss = F32(0)
    names = [
        name
        for name, blob in zip(net.output_blob_names, net.output_blobs)
        for _ in range(blob.count)
    ]
    for i in range(iterations):
        loss += F32(net.forward())
        values = (
            np.concatenate([b.data.ravel().astype(F32) for b in net.output_blobs])
            if net.output_blobs
            else np.zeros(0, F32)
        )
        for name, value in zip(names, values):
            log.info(*msg.batch_output(i, name, value))
        scores = values.copy() if scores is None else scores + values
    loss /= F32(iterations)
    log.info(*msg.loss_line(loss))
    results: list[tuple[str, float]] = []
    weights_by_value = [
        w
        for blob, w in zip(net.output_blobs, net.output_loss_weights)
        for _ in range(blob.count)
    ]
    assert scores is not None
    for k, (name, weight) in enumerate(zip(names, weights_by_value)):
        mean = F32(scores[k] / F32(iterations))
        log.info(*msg.mean_output(name, mean, weight))
        results.append((name, float(mean)))
    return float(loss), results


def open_log_file(path: str | os.PathLike[str], log: Log = LOG) -> TextIO:
    """`--log FILE`: append the glog lines to FILE too; returns the stream."""
    p = Path(path)
    try:
        stream = p.open("a")
    except OSError as e:
        raise ConfigError(f"{p}: cannot write log file ({e})") from None
    log.add_file(stream)
    return stream


# -- `caffe time` -------------------------------------------------------------------


@dataclass
class NetTiming:
    """Average milliseconds per iteration, per layer and per pass."""

    layer_names: list[str]
    forward_ms: list[float]
    backward_ms: list[float]
    forward_pass_ms: float
    backward_pass_ms: float
    forward_backward_ms: float
    total_ms: float
    iterations: int


def time_net(net: Net, iterations: int = 50, log: bool = True) -> NetTiming:
    """Time forward and backward of every layer, as tools/caffe.cpp time().

    One untimed forward+backward first (allocations), then `iterations`
    timed passes; Caffe's log lines and layout ("   conv1\tforward: 0.1 ms.").
    Like Caffe's tool, every layer's backward runs (with the net's
    propagate_down flags), whether or not Net.backward would run it.
    """
    if iterations < 1:
        raise ConfigError(f"--iterations must be at least 1 (got {iterations})")

    def info(line: int, message: str) -> None:
        if log:
            LOG.info(f"caffe.cpp:{line}", message)

    info(351, "Performing Forward")
    initial_loss = net.forward()
    info(356, f"Initial loss: {fmt32(initial_loss)}")
    info(357, "Performing Backward")
    net.backward()
    n = len(net.layers)
    info(365, "*** Benchmark begins ***")
    info(366, f"Testing for {iterations} iterations.")
    layers, bottoms, tops = net.layers, net.bottom_vecs, net.top_vecs
    clock = perf_counter
    forward_s = [0.0] * n
    backward_s = [0.0] * n
    forward_total = backward_total = 0.0
    total_start = clock()
    for j in range(iterations):
        iter_start = clock()
        for i in range(n):
            t = clock()
            net.forward_layer(i)
            forward_s[i] += clock() - t
        forward_total += clock() - iter_start
        backward_start = clock()
        for i in range(n - 1, -1, -1):
            t = clock()
            try:
                layers[i].backward(tops[i], net.bottom_need_backward[i], bottoms[i])
            except Exception as e:
                net.raise_layer_failure(i, e)
            backward_s[i] += clock() - t
        backward_total += clock() - backward_start
        info(
            394,
            f"Iteration: {j + 1} forward-backward time: "
            f"{fmt((clock() - iter_start) * 1e3)} ms.",
        )
    total_ms = (clock() - total_start) * 1e3
    timing = NetTiming(
        layer_names=list(net.layer_names),
        forward_ms=[s * 1e3 / iterations for s in forward_s],
        backward_ms=[s * 1e3 / iterations for s in backward_s],
        forward_pass_ms=forward_total * 1e3 / iterations,
        backward_pass_ms=backward_total * 1e3 / iterations,
        forward_backward_ms=total_ms / iterations,
        total_ms=total_ms,
        iterations=iterations,
    )
    info(397, "Average time per layer: ")
    for name, f_ms, b_ms in zip(
        timing.layer_names, timing.forward_ms, timing.backward_ms
    ):
        info(400, f"{name:>10}\tforward: {fmt(f_ms)} ms.")
        info(403, f"{name:>10}\tbackward: {fmt(b_ms)} ms.")
    info(408, f"Average Forward pass: {fmt(timing.forward_pass_ms)} ms.")
    info(410, f"Average Backward pass: {fmt(timing.backward_pass_ms)} ms.")
    info(412, f"Average Forward-Backward: {fmt(timing.forward_backward_ms)} ms.")
    info(414, f"Total Time: {fmt(total_ms)} ms.")
    info(415, "*** Benchmark ends ***")
    return timing


def time(
    model: str | os.PathLike[str],
    phase: str = "TRAIN",
    stages: Sequence[str] = (),
    level: int = 0,
    iterations: int = 50,
    weights: str | None = None,
) -> NetTiming:
    """Caffe's `time`: build the net for `phase` (stages, level), initialise it
    from `weights` if given, fill Input blobs with random values in [0, 1)
    (Data layers read their source), then time_net."""
    param = read_net_params_from_text_file(model)
    LOG.info("caffe.cpp:343", "Use CPU.")
    net = Net(
        param,
        caffe_pb2.Phase.Value(phase),
        stages=stages,
        level=level,
        rng=np.random.default_rng(),
        source=str(model),
    )
    if weights:
        net.copy_trained_layers_from(weights)
    rng = np.random.default_rng(1701)
    for blob in net.input_blobs:
        blob.data[...] = rng.random(blob.shape, dtype=np.float32)
    return time_net(net, iterations)
