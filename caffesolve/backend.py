"""Which array module a piece of layer math runs on.

Layer code asks `array_module(x)` for the module of the arrays it was given
instead of importing numpy directly, so the same code can later run on CuPy
arrays. Today every blob holds NumPy arrays.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import numpy as np

from caffesolve.errors import ConfigError


def array_module(*arrays: Any) -> ModuleType:
    """The module (numpy, later cupy) that owns `arrays`; numpy by default."""
    for a in arrays:
        module = type(a).__module__.split(".")[0]
        if module == "cupy":  # pragma: no cover - no CuPy backend yet
            import cupy

            return cupy
    return np


# -- BLAS threads ------------------------------------------------------------------
#
# NumPy's GEMMs (InnerProduct, Convolution) run on OpenBLAS, which starts one
# thread per core. Measured on the 2-core machine of issue #6 (LeNet training
# iteration, batch 64, medians): idle, 2 threads 22.5 ms and 1 thread 25.4 ms;
# with ONE other busy process on the machine, 2 threads 42 ms (p90 166 ms:
# a threaded GEMM waits for a descheduled or spinning worker) and 1 thread
# 23.7 ms. So the policy, applied once per process when a Solver is built
# (configure_blas_threads), is: CAFFESOLVE_THREADS=N if set; else whatever
# OPENBLAS_NUM_THREADS / OMP_NUM_THREADS say if the user set them; else 1
# thread. An explicit set_blas_threads() call before that wins. The count is
# set through OpenBLAS's own openblas_set_num_threads with ctypes (no
# threadpoolctl), since OPENBLAS_NUM_THREADS only counts before NumPy loads.

THREADS_ENV = "CAFFESOLVE_THREADS"
_BLAS_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "GOTO_NUM_THREADS")
_threads_chosen = False

_SET_THREADS = (
    "scipy_openblas_set_num_threads64_",  # NumPy's wheels (scipy-openblas64)
    "scipy_openblas_set_num_threads",
    "openblas_set_num_threads64_",
    "openblas_set_num_threads",
)
_GET_THREADS = (
    "scipy_openblas_get_num_threads64_",
    "scipy_openblas_get_num_threads",
    "openblas_get_num_threads64_",
    "openblas_get_num_threads",
)


def _openblas_functions(names: tuple[str, ...]) -> list[Any]:
    """`names`' first match in each OpenBLAS this process has loaded (Linux:
    found in /proc/self/maps); [] elsewhere or if none is loaded."""
    paths: list[str] = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.rstrip("\n").split(" ")[-1]
                if "openblas" in path.rsplit("/", 1)[-1].lower() and path not in paths:
                    paths.append(path)
    except OSError:
        return []
    found = []
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in names:
            fn = getattr(lib, name, None)
            if fn is not None:
                found.append(fn)
                break
    return found


def blas_threads() -> int | None:
    """OpenBLAS's thread count, or None if NumPy does not use OpenBLAS."""
    fns = _openblas_functions(_GET_THREADS)
    if not fns:
        return None
    fns[0].restype = ctypes.c_int
    return int(fns[0]())


def set_blas_threads(n: int) -> bool:
    """Make OpenBLAS use `n` threads from now on; False if it cannot be set
    (NumPy linked to another BLAS: then set its own environment variable,
    e.g. OMP_NUM_THREADS, before starting Python)."""
    if n < 1:
        raise ValueError(f"BLAS threads must be at least 1 (got {n})")
    global _threads_chosen
    _threads_chosen = True
    fns = _openblas_functions(_SET_THREADS)
    for fn in fns:
        fn.argtypes = [ctypes.c_int]
        fn(n)
    return bool(fns)


def threads_policy(environ: Mapping[str, str]) -> int | None:
    """The BLAS thread count the policy above picks for `environ`, or None to
    leave BLAS as the user configured it. A bad CAFFESOLVE_THREADS is a
    ConfigError naming the variable."""
    value = environ.get(THREADS_ENV, "").strip()
    if value:
        try:
            n = int(value)
        except ValueError:
            n = 0
        if n < 1:
            raise ConfigError(
                f"{THREADS_ENV}={value!r}: must be a whole number of threads >= 1 "
                "(e.g. 1 on a shared machine, 2 on an idle 2-core one)"
            )
        return n
    if any(environ.get(name, "").strip() for name in _BLAS_ENV):
        return None
    return 1


def configure_blas_threads(environ: Mapping[str, str] | None = None) -> int | None:
    """Apply threads_policy once per process, unless set_blas_threads came
    first; the count set, or None if nothing was changed."""
    if _threads_chosen:
        return None
    n = threads_policy(os.environ if environ is None else environ)
    if n is None:
        return None
    return n if set_blas_threads(n) else None
