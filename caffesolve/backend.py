"""Where a net's arrays live, and how its work uses the cores.

`Backend` is the one place that picks the array module: a Net is built with
one (CPU: NumPy), every Blob it makes allocates through it, and every layer
gets its module as `layer.xp`. Pure array functions (caffesolve.ops, the
layers' module-level formulas) call NumPy's functions, which dispatch to the
arrays' own module (NEP 13/18), or allocate through `array_module` of their
inputs. Today every blob holds NumPy arrays; a GPU backend would add one
`Backend` here.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeVar

import numpy as np

from caffesolve.errors import ConfigError


@dataclass(frozen=True)
class Backend:
    """A net's array module (Caffe's Caffe::mode()): `name` as the solver
    logs it ("CPU") and `xp`, the module its blobs and layers allocate with."""

    name: str
    xp: ModuleType


CPU = Backend("CPU", np)


def array_module(*arrays: Any) -> ModuleType:
    """The module (numpy, later cupy) that owns `arrays`; numpy by default."""
    for a in arrays:
        module = type(a).__module__.split(".")[0]
        if module == "cupy":  # pragma: no cover - no CuPy backend yet
            import cupy

            return cupy
    return np


# -- BLAS threads and worker threads ---------------------------------------------
#
# NumPy's GEMMs (InnerProduct, Convolution) run on OpenBLAS, which starts one
# thread per core. Measured on the 2-core machine of issue #6 (LeNet training
# iteration, batch 64, medians): idle, 2 threads 22.5 ms and 1 thread 25.4 ms;
# with ONE other busy process on the machine, 2 threads 42 ms (p90 166 ms:
# a threaded GEMM waits for a descheduled or spinning worker) and 1 thread
# 23.7 ms. So OpenBLAS gets 1 thread (configure_blas_threads, applied once
# per process when a Solver or the CLI starts) unless the user set
# OPENBLAS_NUM_THREADS / OMP_NUM_THREADS; an explicit set_blas_threads() call
# before that wins. The count is set through OpenBLAS's own
# openblas_set_num_threads with ctypes (no threadpoolctl), since
# OPENBLAS_NUM_THREADS only counts before NumPy loads.
#
# The other cores are used by the layers themselves: they split their work
# into independent pieces (halves of a batch, of the output rows, or the
# weight and the data gradient of a convolution) and run them with
# run_parallel on a small pool of worker threads. NumPy releases the GIL in
# matmul and in its element loops, and a piece that finds the other core busy
# simply runs later, with no spinning. CAFFESOLVE_THREADS=N sets the number
# of workers (default: min(2, cores)); 1 runs everything inline, with no
# threads. Each piece writes its own part of the output, so the results do
# not depend on the number of workers.

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
    found in /proc/self/maps), in the order of `names`; [] elsewhere or if
    none is loaded."""
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
        for rank, name in enumerate(names):
            fn = getattr(lib, name, None)
            if fn is not None:
                found.append((rank, fn))
                break
    # NumPy's own (the 64-bit interface, first in `names`) before others,
    # e.g. SciPy's, which numba loads when it compiles a kernel.
    found.sort(key=lambda item: item[0])
    return [fn for _, fn in found]


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


def _threads_env(environ: Mapping[str, str]) -> int | None:
    """CAFFESOLVE_THREADS from `environ`, or None if unset; a bad value is a
    ConfigError naming the variable."""
    value = environ.get(THREADS_ENV, "").strip()
    if not value:
        return None
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(
            f"{THREADS_ENV}={value!r}: must be a whole number of threads >= 1 "
            "(e.g. 1 on a busy shared machine, 2 on a 2-core one)"
        )
    return n


def threads_policy(environ: Mapping[str, str]) -> int | None:
    """The BLAS thread count the policy above picks for `environ`: 1, or None
    to leave BLAS as the user configured it through its own variables. A bad
    CAFFESOLVE_THREADS is a ConfigError naming the variable."""
    _threads_env(environ)
    if any(environ.get(name, "").strip() for name in _BLAS_ENV):
        return None
    return 1


def workers_policy(environ: Mapping[str, str], cpu_count: int | None) -> int:
    """Worker threads for run_parallel: CAFFESOLVE_THREADS if set, else
    min(2, cpu_count)."""
    n = _threads_env(environ)
    if n is not None:
        return n
    return max(1, min(2, cpu_count or 1))


def configure_blas_threads(environ: Mapping[str, str] | None = None) -> int | None:
    """Apply threads_policy once per process, unless set_blas_threads came
    first; the count set, or None if nothing was changed."""
    if _threads_chosen:
        _threads_env(os.environ if environ is None else environ)
        return None
    n = threads_policy(os.environ if environ is None else environ)
    if n is None:
        return None
    return n if set_blas_threads(n) else None


# -- worker pool ---------------------------------------------------------------------

T = TypeVar("T")

# Pieces smaller than this many bytes of output (or work) run inline: a hand-off
# to a worker costs some tens of microseconds.
PARALLEL_MIN_BYTES = 1 << 17

_workers: int | None = None  # None: not chosen yet (workers_policy on first use)
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()
_local = threading.local()

# After STARVED_IN_A_ROW calls of run_parallel in a row found a worker
# starved, run the next STARVED_INLINE_CALLS (about two LeNet iterations)
# inline.
STARVED_IN_A_ROW = 2
STARVED_INLINE_CALLS = 16
_starved_calls = 0
_inline_calls = 0


def set_workers(n: int | None) -> None:
    """Use `n` worker threads from now on (1: run everything inline); None
    goes back to workers_policy(os.environ)."""
    if n is not None and n < 1:
        raise ValueError(f"worker threads must be at least 1 (got {n})")
    global _workers
    _workers = n


def workers() -> int:
    """How many pieces run_parallel runs at once (1 = inline)."""
    global _workers
    if _workers is None:
        _workers = workers_policy(os.environ, os.cpu_count())
    return _workers


def _get_pool(size: int) -> ThreadPoolExecutor:
    """The shared pool of `size` worker threads, made once on first use.
    Idle workers only wait on the queue; concurrent.futures ends them when
    the interpreter exits."""
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size != size:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(
                size, thread_name_prefix="caffesolve", initializer=_mark_worker
            )
            _pool_size = size
        return _pool


def _forget_pool() -> None:
    """In a forked child: the parent's worker threads do not exist there."""
    global _pool, _pool_size, _pool_lock
    _pool, _pool_size, _pool_lock = None, 0, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def run_parallel(fns: Sequence[Callable[[], T]]) -> list[T]:
    """Call every function in `fns` and return their results in order: the
    first in the calling thread while the workers take the others, or all
    inline with 1 worker. When the calling thread is done, it runs itself
    every piece no worker has started yet (a worker may be waiting for a core
    that another process holds), so a busy machine costs no idle wait. The
    functions must not write to the same memory. An exception in any of them
    is raised here after all have finished."""
    global _inline_calls, _starved_calls
    n = workers()
    if n == 1 or len(fns) < 2 or getattr(_local, "is_worker", False):
        return [fn() for fn in fns]
    if _inline_calls > 0:  # the workers were starved lately: see below
        _inline_calls -= 1
        return [fn() for fn in fns]
    pool = _get_pool(n - 1)
    start = time.perf_counter()
    futures = [pool.submit(fn) for fn in fns[1:]]
    results: list[Any] = [None] * len(fns)
    error: BaseException | None = None
    try:
        results[0] = fns[0]()
    except BaseException as e:  # noqa: B036 - re-raised below, after the pieces
        error = e
    own = time.perf_counter() - start
    starved = False
    for k in range(len(futures), 0, -1):  # last submitted: least likely started
        if futures[k - 1].cancel():
            starved = True
            try:
                results[k] = fns[k]()
            except BaseException as e:  # noqa: B036
                error = error or e
    waited = time.perf_counter()
    for k, f in enumerate(futures, start=1):
        if f.cancelled():
            continue
        try:
            results[k] = f.result()
        except BaseException as e:  # noqa: B036
            error = error or e
    # A worker that had not started its piece when this thread finished its
    # own, or that needed more than twice as long, was waiting for a core.
    # Several such calls in a row: another process is busy. Run inline for a
    # while, then try again.
    if starved or time.perf_counter() - waited > own:
        _starved_calls += 1
        if _starved_calls >= STARVED_IN_A_ROW:
            _inline_calls, _starved_calls = STARVED_INLINE_CALLS, 0
    else:
        _starved_calls = 0
    if error is not None:
        raise error
    return results


def _mark_worker() -> None:
    """Pool thread initializer: a piece that calls run_parallel runs inline."""
    _local.is_worker = True


# Pieces per worker, so the calling thread can take over pieces a descheduled
# worker has not started.
PIECES_PER_WORKER = 1


def parallel_parts(nbytes: int, limit: int) -> int:
    """How many pieces to cut work of `nbytes` into, at most `limit`: up to
    PIECES_PER_WORKER per worker, each of PARALLEL_MIN_BYTES or more; 1 with
    one worker or little work."""
    n = workers()
    if n <= 1:
        return 1
    n = min(n * PIECES_PER_WORKER, limit, nbytes // max(PARALLEL_MIN_BYTES, 1))
    return max(1, n)


def split_range(total: int, parts: int) -> list[tuple[int, int]]:
    """[0, total) cut into `parts` nearly equal, non-empty [start, stop)."""
    parts = max(1, min(parts, total))
    edges = [total * k // parts for k in range(parts + 1)]
    return [(edges[k], edges[k + 1]) for k in range(parts)]
