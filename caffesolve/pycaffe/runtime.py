"""What pycaffe's _caffe module exposes beside Net and Solver: mode and
device, the random seed, the log, the solver count and rank, NCCL, Timer and
the layer type list (python/caffe/_caffe.cpp).

caffesolve runs on the CPU: set_mode_gpu() and set_device() are accepted with
a one-time warning. Multi-GPU calls (NCCL, a solver count above 1) raise an
error that points at data-parallel training on MPI instead.
"""

from __future__ import annotations

import time

import numpy as np

from caffesolve.errors import ConfigError
from caffesolve.layers import LAYERS
from caffesolve.log import LOG

# Caffe's version, which pycaffe reports as caffe.__version__.
CAFFE_VERSION = "1.0.0"

MULTI_GPU = (
    "caffesolve has no GPU or NCCL backend; train data-parallel across "
    "processes on MPI instead (mpirun -n N caffesolve train SOLVER)"
)

_state: dict[str, object] = {"rng": None, "warned_gpu": False}


# -- mode and device ---------------------------------------------------------------


def set_mode_cpu() -> None:
    """Caffe::set_mode(CPU): the only mode caffesolve has."""


def _warn_gpu(call: str) -> None:
    if not _state["warned_gpu"]:
        _state["warned_gpu"] = True
        LOG.warning(
            "_caffe.cpp:52",
            f"caffe.{call}: caffesolve runs on the CPU (no GPU backend yet); "
            "continuing on the CPU.",
        )


def set_mode_gpu() -> None:
    """Accepted; nets keep running on the CPU (warns once)."""
    _warn_gpu("set_mode_gpu()")


def set_device(device_id: int) -> None:
    """Accepted; nets keep running on the CPU (warns once)."""
    _warn_gpu(f"set_device({device_id})")


# -- the random seed ------------------------------------------------------------------


def set_random_seed(seed: int) -> None:
    """Caffe::set_random_seed: nets made from now on draw their fillers (and
    Dropout masks, data shuffles) from one Generator seeded with `seed`, as
    Caffe's global RNG; a solver uses it when its random_seed is -1."""
    _state["rng"] = np.random.default_rng(int(seed))


def random_generator() -> np.random.Generator | None:
    """The Generator set_random_seed made, or None (OS entropy, Caffe's default)."""
    rng = _state["rng"]
    return rng if isinstance(rng, np.random.Generator) else None


# -- the log --------------------------------------------------------------------------


def init_log(level: int | None = None, stderr: bool = True) -> None:
    """glog's InitGoogleLogging; `level` is glog's minloglevel (0 INFO,
    1 WARNING, 2 ERROR). The log always goes to stderr."""
    if level is not None:
        LOG.min_level = int(level)


def log(message: str) -> None:
    """One INFO line in Caffe's log (_caffe.cpp's Log)."""
    LOG.info("_caffe.cpp:68", message)


# -- solvers in parallel ---------------------------------------------------------------


def solver_count() -> int:
    return 1


def set_solver_count(count: int) -> None:
    if count != 1:
        raise ConfigError(f"caffe.set_solver_count({count}): {MULTI_GPU}")


def solver_rank() -> int:
    return 0


def set_solver_rank(rank: int) -> None:
    if rank != 0:
        raise ConfigError(f"caffe.set_solver_rank({rank}): {MULTI_GPU}")


def set_multiprocess(multiprocess: bool) -> None:
    if multiprocess:
        raise ConfigError(f"caffe.set_multiprocess(True): {MULTI_GPU}")


def has_nccl() -> bool:
    return False


class NCCL:
    """pycaffe's NCCL (multi-GPU gradient sharing): not available."""

    def __init__(self, solver: object = None, uid: object = None) -> None:
        raise ConfigError(f"caffe.NCCL: {MULTI_GPU}")

    @staticmethod
    def new_uid() -> bytes:
        raise ConfigError(f"caffe.NCCL.new_uid(): {MULTI_GPU}")


# -- Timer and layer types ---------------------------------------------------------


class Timer:
    """Caffe's Timer (util/benchmark.cpp): start(), stop(), ms."""

    def __init__(self) -> None:
        self.running = False
        self.has_run_at_least_once = False
        self._start = 0.0
        self._stop = 0.0

    def start(self) -> None:
        if not self.running:
            self._start = time.perf_counter()
            self.running = True
            self.has_run_at_least_once = True

    def stop(self) -> None:
        if self.running:
            self._stop = time.perf_counter()
            self.running = False

    @property
    def ms(self) -> float:
        """Milliseconds from start to stop (stopping a running timer first)."""
        if not self.has_run_at_least_once:
            LOG.warning(
                "benchmark.cpp:84", "Timer has never been run before reading time."
            )
            return 0.0
        if self.running:
            self.stop()
        return (self._stop - self._start) * 1e3


def layer_type_list() -> list[str]:
    """Every registered layer type, sorted (LayerRegistry::LayerTypeList)."""
    return sorted(LAYERS)
