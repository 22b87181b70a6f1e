"""Compiled CPU kernels (numba): when they run, how they are compiled.

NumPy and BLAS do everything else. A kernel replaces a chain of array
operations (strided window passes, transposes, one pass per arithmetic
step) with a single loop over memory, and exists only where that measured
faster on LeNet's shapes (benchmarks/bench_vision.py --kernels
compiled,numpy): MAX pooling 2x2/2 forward about 2.5x (4x without the
argmax, in TEST nets) and backward about 2x, conv2's row-shift matrix about
1.3x and its bottom-diff fold about 3.5x, SGD's decay and momentum steps
about 2x, LSTMUnit's step 2.7x to 21x (benchmarks/bench_recurrent.py;
its NumPy twin asks libm for expf values, see ops/lstm_unit.py), and MAX/AVE
pooling of any other shape (benchmarks/bench_pooling.py). Each kernel is
Caffe's loop written out, with the comparisons and the float32 operations
in the NumPy path's order, so both paths give the same bits (the tests check
it), signs of zeros included. Each kernel lives beside its NumPy twin
(ops/pooling_kernels.py beside ops/pooling.py, ops/row_shift.py,
ops/lstm_unit.py, solvers/sgd.py). numba compiles a
kernel on its first use for each dtype and caches it on disk (about 3 s
once, then about 1 s to load numba); kernels run without the GIL.

`enabled()` says whether the kernels are used: numba must be importable and
CAFFESOLVE_KERNELS must not be "numpy" (that setting forces the NumPy paths,
e.g. to compare the two, or to save numba's ~80 MB of memory). Callers keep
their NumPy path for when it is not, and for arrays that are not NumPy's.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

_forced_numpy: bool | None = None
_env_numpy: bool | None = None
_have_numba: bool | None = None
_compiled: dict[str, Callable[..., Any]] = {}
_compile_lock = threading.Lock()
# No GIL, no bounds checks, and NumPy's float rules: x / 0 gives inf or NaN
# (as in C, and in the NumPy twins) instead of raising ZeroDivisionError.
_OPTIONS: dict[str, Any] = {
    "nogil": True,
    "boundscheck": False,
    "error_model": "numpy",
}


def enabled() -> bool:
    """True when the compiled kernels are used (numba installed and not
    turned off with CAFFESOLVE_KERNELS=numpy)."""
    global _have_numba, _env_numpy
    if _forced_numpy is not None:
        wanted = not _forced_numpy
    else:
        if _env_numpy is None:  # read once: the hot paths ask every call
            _env_numpy = os.environ.get("CAFFESOLVE_KERNELS", "").lower() == "numpy"
        wanted = not _env_numpy
    if wanted and _have_numba is None:
        _have_numba = importlib.util.find_spec("numba") is not None
    return wanted and bool(_have_numba)


@contextmanager
def forced(numpy_paths: bool) -> Iterator[None]:
    """Within the block, force the NumPy paths (True) or the kernels (False,
    if numba is installed); afterwards, go back to what was in force before
    (CAFFESOLVE_KERNELS is read again)."""
    global _forced_numpy, _env_numpy
    before = _forced_numpy
    _forced_numpy, _env_numpy = numpy_paths, None
    try:
        yield
    finally:
        _forced_numpy, _env_numpy = before, None


def takes(*arrays: Any) -> bool:
    """True when the kernels run on these arrays: C-contiguous NumPy arrays
    of one float dtype (not CuPy's, not strided views), kernels enabled."""
    first = arrays[0]
    return (
        all(
            type(a) is np.ndarray and a.dtype == first.dtype and a.flags.c_contiguous
            for a in arrays
        )
        and first.dtype.kind == "f"
        and enabled()
    )


def compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` compiled by numba (_OPTIONS, cached on disk), made on
    first use: importing numba costs about half a second, so commands that
    run no kernel never pay it. Call only when enabled() is True."""
    kernel = _compiled.get(fn.__name__)
    if kernel is not None:
        return kernel
    with _compile_lock:  # worker threads may ask for the same kernel at once
        kernel = _compiled.get(fn.__name__)
        if kernel is None:
            from numba import njit

            try:
                kernel = njit(**_OPTIONS, cache=True)(fn)
            except RuntimeError:  # no writable cache folder: compile each run
                kernel = njit(**_OPTIONS)(fn)
            _compiled[fn.__name__] = kernel
    return kernel
