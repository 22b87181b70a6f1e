"""Caffe's log: glog's line prefix and Caffe's message texts, nothing else.

A glog line is `Immdd hh:mm:ss.uuuuuu PPPPP file:line] message`, the thread id
right-aligned in five columns. Numbers print like C++ iostream's default
(6 significant digits, %g), so a float32 0.01 read from a prototxt prints as
`0.01`, exactly as in Caffe's logs.
"""

from __future__ import annotations

import datetime as _dt
import os
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


class Log:
    """Where caffesolve's glog-style lines go: stderr, plus an optional file."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.streams: list[TextIO] = [stream if stream is not None else sys.stderr]
        self.quiet = False

    def add_file(self, stream: TextIO) -> None:
        self.streams.append(stream)

    def write(self, severity: str, source: str, message: str) -> None:
        if self.quiet:
            return
        line = glog_prefix(severity, source) + message + "\n"
        for s in self.streams:
            s.write(line)
            s.flush()

    def info(self, source: str, message: str) -> None:
        self.write("I", source, message)

    def warning(self, source: str, message: str) -> None:
        self.write("W", source, message)


# The process-wide log; the CLI adds a file to it for --log.
LOG = Log()
