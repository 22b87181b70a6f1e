"""Caffe's log: glog's line prefix and Caffe's message texts, nothing else.

A glog line is `Immdd hh:mm:ss.uuuuuu PPPPP file:line] message`, the thread id
right-aligned in five columns. Numbers print like C++ iostream's default
(6 significant digits, %g), so a float32 0.01 read from a prototxt prints as
`0.01`, exactly as in Caffe's logs.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import sys
from typing import TextIO

import numpy as np


def fmt(x: float) -> str:
    """A number as C++ `ostream << x` prints it (precision 6, %g style)."""
    return f"{float(x):.6g}"


def fmt32(x: float) -> str:
    """A float32 quantity (Caffe's Dtype) as Caffe prints it."""
    return fmt(float(np.float32(x)))


def glog_prefix(severity: str = "I", source: str = "solver.cpp:0") -> str:
    """glog's prefix for a line logged now from `source` (file:line)."""
    now = _dt.datetime.now()
    return (
        f"{severity}{now:%m%d %H:%M:%S}.{now.microsecond:06d} "
        f"{os.getpid():5d} {source}] "
    )


# A glog line: severity, month, day, h:m:s.micro, thread, file:line, message
# (what glog_prefix writes; logs.py reads Caffe's logs and ours with it).
GLOG_LINE = re.compile(
    r"^([IWEF])(\d\d)(\d\d) (\d\d):(\d\d):(\d\d)\.(\d{6}) +(\d+) ([^\]]*)\] ?(.*)$"
)


class _Stderr:
    """sys.stderr as it is at each write (not as it was at import)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


# glog's severities in order; a line below `Log.min_level` is not written.
SEVERITIES = "IWEF"


def env_min_level() -> int:
    """glog's GLOG_minloglevel (0 INFO, 1 WARNING, 2 ERROR, 3 FATAL), which
    Caffe's tools and pycaffe scripts set to quieten the log; 0 if unset."""
    value = os.environ.get("GLOG_minloglevel", "")
    return int(value) if value.strip().lstrip("-").isdigit() else 0


class Log:
    """Where caffesolve's glog-style lines go: stderr, plus optional files."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.streams: list[TextIO] = [stream if stream is not None else _Stderr()]
        self.quiet = False
        self.min_level = env_min_level()

    def add_file(self, stream: TextIO) -> None:
        self.streams.append(stream)

    def write(self, severity: str, source: str, message: str) -> None:
        """One glog line to every stream. A log file that cannot be written
        (a full disk) is dropped with one warning, and the run goes on
        logging to stderr; stderr itself failing (a closed pipe) is ignored,
        as glog ignores it."""
        if self.quiet or max(SEVERITIES.find(severity), 0) < self.min_level:
            return
        line = glog_prefix(severity, source) + message + "\n"
        for s in list(self.streams):
            try:
                s.write(line)
                s.flush()
            except OSError as e:
                if s is self.streams[0]:
                    continue
                self.drop(s)
                self.write(
                    "W",
                    "log.py:0",
                    f"cannot write the log file {getattr(s, 'name', s)} "
                    f"({os.strerror(e.errno) if e.errno else e}); the log goes "
                    "on on stderr only",
                )

    def drop(self, stream: TextIO) -> None:
        """Stop writing to `stream` (a file added by add_file) and close it;
        what it could not write is lost."""
        if stream in self.streams:
            self.streams.remove(stream)
        try:
            stream.close()
        except OSError:
            pass

    def info(self, source: str, message: str) -> None:
        self.write("I", source, message)

    def warning(self, source: str, message: str) -> None:
        self.write("W", source, message)


# The process-wide log; the CLI adds a file to it for --log.
LOG = Log()


# -- Caffe's message texts -------------------------------------------------------
#
# Each function returns (source, message): the Caffe file:line that logs the
# message (so the glog prefix reads like Caffe's), and the text. Call sites
# write `log.info(*msg.iteration_lr(it, rate))`. Caffe's log tools
# (tools/extra/parse_log.py, parse_log.sh, extract_seconds.py) read these texts.

Message = tuple[str, str]

# The words Caffe's log tools key on; the messages below are written with
# them and logs.py parses with them.
SOLVING = "Solving "
ITERATION = "Iteration "
LR = "lr = "
TRAIN_OUTPUT = "Train net output #"
TEST_OUTPUT = "Test net output #"


def _loss_suffix(loss_weight: float, value: float) -> str:
    """' (* w = w*v loss)' when the output carries a loss weight (float32)."""
    if not loss_weight:
        return ""
    product = np.float32(loss_weight) * np.float32(value)
    return f" (* {fmt32(loss_weight)} = {fmt32(product)} loss)"


def use_cpu(source: str = "caffe.cpp:197") -> Message:
    return source, "Use CPU."


def gpu_mode_on_cpu() -> Message:
    return (
        "caffe.cpp:183",
        "solver_mode: GPU asked for, but caffesolve runs on the CPU; "
        "continuing on the CPU.",
    )


def initializing_solver(param_text: str) -> Message:
    return "solver.cpp:45", "Initializing solver from parameters: \n" + param_text


def finetuning_from(path: str) -> Message:
    return "solver.cpp:72", f"Finetuning from {path}"


def creating_train_net(origin: str) -> Message:
    """origin: solver_param's "net file: x" or "train_net_param"."""
    if "file:" in origin:
        return "solver.cpp:103", f"Creating training net from {origin}"
    return "solver.cpp:98", f"Creating training net specified in {origin}."


def creating_test_net(index: int, source: str) -> Message:
    return "solver.cpp:190", f"Creating test net (#{index}) specified by {source}"


def scaffolding_done() -> Message:
    return "solver.cpp:57", "Solver scaffolding done."


def resuming_from(path: str) -> Message:
    return "caffe.cpp:235", f"Resuming from {path}"


def starting_optimization() -> Message:
    return "caffe.cpp:239", "Starting Optimization"


def solving(net_name: str) -> Message:
    """extract_seconds.py takes the start time from this line ('Solving')."""
    return "solver.cpp:289", f"{SOLVING}{net_name}"


def learning_rate_policy(policy: str) -> Message:
    return "solver.cpp:290", f"Learning Rate Policy: {policy}"


def restoring_solver_state(path: str) -> Message:
    return "solver.cpp:296", f"Restoring previous solver status from {path}"


def iteration_display(
    it: int, per_s: float, lapse: float, display: int, loss: float
) -> Message:
    """Solver::Step's display line; parse_log.sh reads `, loss = `."""
    return (
        "solver.cpp:239",
        f"{ITERATION}{it} ({fmt32(per_s)} iter/s, {fmt32(lapse)}s/{display} iters), "
        f"loss = {fmt32(loss)}",
    )


def train_net_output(
    index: int, name: str, value: float, loss_weight: float
) -> Message:
    return (
        "solver.cpp:258",
        f"    {TRAIN_OUTPUT}{index}: {name} = {fmt32(value)}"
        + _loss_suffix(loss_weight, value),
    )


def iteration_lr(it: int, rate: float) -> Message:
    """SGDSolver::ApplyUpdate's line; parse_log.py reads `lr = X`."""
    return "sgd_solver.cpp:112", f"{ITERATION}{it}, {LR}{fmt32(rate)}"


def multistep_status(it: int, step: int) -> Message:
    return "sgd_solver.cpp:50", f"MultiStep Status: {ITERATION}{it}, step = {step}"


def gradient_clipping(l2norm: float, clip: float, scale: float) -> Message:
    return (
        "sgd_solver.cpp:99",
        f"Gradient clipping: scaling down gradients (L2 norm {fmt32(l2norm)} > "
        f"{fmt32(clip)}) by scale factor {fmt32(scale)}",
    )


def testing_net(it: int, index: int) -> Message:
    return "solver.cpp:347", f"{ITERATION}{it}, Testing net (#{index})"


def test_interrupted() -> Message:
    return "solver.cpp:396", "Test interrupted."


def test_loss(loss: float) -> Message:
    return "solver.cpp:401", f"Test loss: {fmt32(loss)}"


def test_net_output(index: int, name: str, mean: float, loss_weight: float) -> Message:
    return (
        "solver.cpp:414",
        f"    {TEST_OUTPUT}{index}: {name} = {fmt32(mean)}"
        + _loss_suffix(loss_weight, mean),
    )


def final_loss(it: int, loss: float) -> Message:
    return "solver.cpp:327", f"{ITERATION}{it}, loss = {fmt32(loss)}"


def optimization_stopped_early() -> Message:
    return "solver.cpp:311", "Optimization stopped early."


def optimization_done(source: str = "solver.cpp:332") -> Message:
    return source, "Optimization Done."


def snapshotting_model(path: str, hdf5: bool = False) -> Message:
    if hdf5:
        return "solver.cpp:474", f"Snapshotting to HDF5 file {path}"
    return "solver.cpp:464", f"Snapshotting to binary proto file {path}"


def snapshotting_solver_state(path: str, hdf5: bool = False) -> Message:
    if hdf5:
        return "sgd_solver.cpp:296", f"Snapshotting solver state to HDF5 file {path}"
    return (
        "sgd_solver.cpp:284",
        f"Snapshotting solver state to binary proto file {path}",
    )


def restoring_history() -> Message:
    return "sgd_solver.cpp:336", "SGDSolver: restoring history"


def restoring_data_state() -> Message:
    return (
        "sgd_solver.cpp:337",
        "caffesolve: restoring data cursors and random state",
    )


def signal_received(signal_name: str, action: str) -> Message:
    return "signal_handler.cpp:100", f"Received {signal_name}: {action} requested"


def running_for(iterations: int) -> Message:
    return "caffe.cpp:281", f"Running for {iterations} iterations."


def batch_output(batch: int, name: str, score: float) -> Message:
    return "caffe.cpp:304", f"Batch {batch}, {name} = {fmt32(score)}"


def loss_line(loss: float) -> Message:
    return "caffe.cpp:309", f"Loss: {fmt32(loss)}"


def mean_output(name: str, mean: float, loss_weight: float) -> Message:
    return (
        "caffe.cpp:321",
        f"{name} = {fmt32(mean)}" + _loss_suffix(loss_weight, mean),
    )
