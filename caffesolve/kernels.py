"""Compiled CPU kernels (numba) for the loops NumPy runs slowly.

NumPy and BLAS do everything else. A kernel here replaces a chain of array
operations (strided window passes, transposes, one pass per arithmetic
step) with a single loop over memory, and exists only where that measured
faster on LeNet's shapes (benchmarks/bench_vision.py --kernels
compiled,numpy): MAX pooling 2x2/2 forward about 2.5x (4x without the
argmax, in TEST nets) and backward about 2x, conv2's row-shift matrix about
1.3x and its bottom-diff fold about 3.5x, SGD's decay and momentum steps
about 2x. Each kernel is Caffe's loop written out, with the comparisons and
the float32 operations in the NumPy path's order, so both paths give the
same bits (the tests check it). The one exception is the sign of a zero in
pooling: the kernels keep Caffe's (the first of +0 and -0 in a window wins;
a diff lands on Caffe's zero fill, so 0 + -0 is +0), where NumPy's fmax and
products may give the other zero. numba
compiles a kernel on its first use for each dtype and caches it on disk
(about 3 s once, then about 1 s to load numba); kernels run without the
GIL.

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

# Caffe's -FLT_MAX, where MAX pooling starts every output (pooling_layer.cpp).
FLT_MAX = float(np.finfo(np.float32).max)

_forced_numpy: bool | None = None
_env_numpy: bool | None = None
_have_numba: bool | None = None
_compiled: dict[str, Callable[..., Any]] = {}
_compile_lock = threading.Lock()


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
    """`fn` compiled by numba (without the GIL, cached on disk), made on
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
                kernel = njit(nogil=True, cache=True, boundscheck=False)(fn)
            except RuntimeError:  # no writable cache folder: compile each run
                kernel = njit(nogil=True, boundscheck=False)(fn)
            _compiled[fn.__name__] = kernel
    return kernel


# -- MAX pooling, 2x2 windows with stride 2 -------------------------------------
#
# x (planes, 2*oh, 2*ow) -> out (planes, oh, ow): Caffe's loop for windows that
# tile the plane. Each output starts at -FLT_MAX and takes an element only if
# it is strictly greater, visiting (0,0), (0,1), (1,0), (1,1): so NaN never
# wins, an all-NaN window gives -FLT_MAX, and a tie keeps the first element
# (+0 before -0 included). argmax gets the window offset i*2 + j of the winner;
# when nothing beats -FLT_MAX (all NaN or -inf) it is 0, so backward sends the
# diff to the window's first element, as the NumPy path does (Caffe's mask
# stays -1 there, and its backward would write outside the plane).


def max_pool_2x2(x, out, argmax):  # type: ignore[no-untyped-def]
    """MAX pooling forward, with the window offset of each output's first
    maximum in `argmax` (always: in this loop it costs next to nothing)."""
    oh, ow = out.shape[1], out.shape[2]
    floor = out.dtype.type(-FLT_MAX)
    for p in range(x.shape[0]):
        for y in range(oh):
            r0 = x[p, 2 * y]
            r1 = x[p, 2 * y + 1]
            o = out[p, y]
            a = argmax[p, y]
            for c in range(ow):
                best = floor
                k = 0
                v = r0[2 * c]
                if v > best:
                    best = v
                v = r0[2 * c + 1]
                if v > best:
                    best = v
                    k = 1
                v = r1[2 * c]
                if v > best:
                    best = v
                    k = 2
                v = r1[2 * c + 1]
                if v > best:
                    best = v
                    k = 3
                o[c] = best
                a[c] = k


def max_pool_2x2_max(x, out):  # type: ignore[no-untyped-def]
    """MAX pooling forward without the argmax, for nets that run no backward
    (TEST): the same comparisons as max_pool_2x2, written as selects, which
    LLVM turns into vector max instructions (x86's MAXPS is exactly `v > best
    ? v : best`, NaN and signed zeros included): about 2.5x faster."""
    oh, ow = out.shape[1], out.shape[2]
    floor = out.dtype.type(-FLT_MAX)
    for p in range(x.shape[0]):
        for y in range(oh):
            r0 = x[p, 2 * y]
            r1 = x[p, 2 * y + 1]
            o = out[p, y]
            for c in range(ow):
                best = floor
                v = r0[2 * c]
                best = v if v > best else best
                v = r0[2 * c + 1]
                best = v if v > best else best
                v = r1[2 * c]
                best = v if v > best else best
                v = r1[2 * c + 1]
                best = v if v > best else best
                o[c] = best


def max_pool_2x2_backward(dy, argmax, dx, width):  # type: ignore[no-untyped-def]
    """MAX pooling backward over flat arrays (images of `width` columns):
    every window of dx is zeroed and the top diff is added to its argmax
    element, as Caffe's zero fill and `+=` (so 0 + -0 gives +0; no window
    overlaps another). Flat indices: numba compiles this loop several times
    faster than over row views."""
    ow = width // 2
    for r in range(dy.size // ow):  # output rows, i.e. pairs of image rows
        base = 2 * r * width
        for w in range(2 * width):
            dx[base + w] = 0
        first = r * ow
        for c in range(ow):
            k = np.int64(argmax[first + c])
            dx[base + (k >> 1) * width + 2 * c + (k & 1)] += dy[first + c]


# -- SGD ---------------------------------------------------------------------------
#
# The two element-wise steps of an SGD update in one pass each, over flat
# contiguous arrays, instead of NumPy's one pass per operation. The operations
# and their rounding are the NumPy path's (sgd.py): every product is rounded
# to the array's type before the sum (scalars come as float32, as Caffe's
# Dtype), so both give the same bits.


def l2_regularize(diff, data, local_decay):  # type: ignore[no-untyped-def]
    """diff += local_decay * data (Caffe's Regularize, L2)."""
    for k in range(diff.size):
        diff[k] += local_decay * data[k]


def sgd_update(diff, history, local_rate, momentum):  # type: ignore[no-untyped-def]
    """history = momentum * history + local_rate * diff; diff = history
    (Caffe's SGD ComputeUpdateValue)."""
    for k in range(diff.size):
        h = momentum * history[k] + local_rate * diff[k]
        history[k] = h
        diff[k] = h


# -- the row-shift lowering of convolution (im2col.py) ---------------------------
#
# rows (Hp, C, kw, ow, N) holds, for padded image row hp, channel c and kernel
# column j, the values x[n, c, hp - pad_h, x*stride_w + j*dilation_w - pad_w]
# for every output column x and image n (zero in the padding). Both kernels
# take the channels c0 .. c1-1, so halves of the channels may run on separate
# workers.


def row_shift_columns(x, rows, pad_h, pad_w, stride_w, dilation_w, c0, c1):  # type: ignore[no-untyped-def]
    """Fill `rows` from the bottom x (N, C, H, W) in one pass: each image row
    is transposed once into a (W, N) tile, then copied out kw times."""
    n_img, _, height, width = x.shape
    padded_h, _, kw, ow, _ = rows.shape
    tile = np.empty((width, n_img), x.dtype)
    for c in range(c0, c1):
        for hp in range(padded_h):
            h = hp - pad_h
            inside = 0 <= h < height
            if inside:
                for n in range(n_img):
                    for w in range(width):
                        tile[w, n] = x[n, c, h, w]
            for j in range(kw):
                for col in range(ow):
                    w = col * stride_w + j * dilation_w - pad_w
                    out = rows[hp, c, j, col]
                    if inside and 0 <= w < width:
                        src = tile[w]
                        for n in range(n_img):
                            out[n] = src[n]
                    else:
                        for n in range(n_img):
                            out[n] = 0


def row_shift_fold(rows, out, pad_h, pad_w, stride_w, dilation_w, c0, c1):  # type: ignore[no-untyped-def]
    """The bottom diff (N, C, H, W) from the row-shift matrix's diff `rows`:
    every value goes back to the image element it was copied from, and the
    kernel columns' contributions add up, j ascending from 0 (the NumPy
    path's order: the same bits). Padding is dropped."""
    n_img, _, height, width = out.shape
    kw, ow = rows.shape[2], rows.shape[3]
    acc = np.empty(n_img, out.dtype)
    for c in range(c0, c1):
        for h in range(height):
            hp = h + pad_h
            for w in range(width):
                for n in range(n_img):
                    acc[n] = 0
                for j in range(kw):
                    t = w + pad_w - j * dilation_w
                    if t < 0 or t % stride_w != 0 or t // stride_w >= ow:
                        continue
                    src = rows[hp, c, j, t // stride_w]
                    for n in range(n_img):
                        acc[n] += src[n]
                for n in range(n_img):
                    out[n, c, h, w] = acc[n]
