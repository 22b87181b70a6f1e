"""`caffe train` and `caffe test` (tools/caffe.cpp) as library functions.

cli.py parses the options and calls these; they raise CaffesolveError for bad
input and log with Caffe's messages.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from caffesolve import log as msg
from caffesolve import snapshot as snap
from caffesolve.errors import ConfigError
from caffesolve.log import LOG, Log
from caffesolve.proto import caffe_pb2
from caffesolve.proto.io import read_prototxt
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
    """
    from caffesolve.solver_param import load_solver

    if snapshot and weights:
        raise ConfigError(
            "Give a snapshot to resume training or weights to finetune but not both."
        )
    source = str(solver_path)
    param = load_solver(solver_path, overrides)
    if iterations is not None:
        param.max_iter = iterations
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
        solver = create_solver(
            param, source, log=log, action_function=handler.check_for_signals
        )
        if snapshot:
            log.info(*msg.resuming_from(snapshot))
            solver.restore(snapshot)
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
    from caffesolve.net import Net

    if iterations < 1:
        raise ConfigError(f"--iterations must be >= 1 (got {iterations})")
    log.info(*msg.use_cpu("caffe.cpp:275"))
    net_param = read_prototxt(model, caffe_pb2.NetParameter())
    net = Net(net_param, caffe_pb2.TEST, rng=np.random.default_rng(), source=str(model))
    for path in weights.split(","):
        if path.strip():
            snap.load_weights(net, path.strip())
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


def open_log_file(path: str | os.PathLike[str], log: Log = LOG) -> object:
    """`--log FILE`: append the glog lines to FILE too; returns the stream."""
    p = Path(path)
    try:
        stream = p.open("a")
    except OSError as e:
        raise ConfigError(f"{p}: cannot write log file ({e})") from None
    log.add_file(stream)
    return stream
