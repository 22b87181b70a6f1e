"""C's float functions expf, powf and tanhf, elementwise, as the platform's
libm rounds them (Caffe's float expressions call them: lr_policy's inv, poly
and sigmoid, lstm_unit_layer.cpp's sigmoid, tanh_layer.cpp), and Caffe's
sigmoid (sigmoid_layer.cpp: 0.5 * tanh(0.5 * x) + 0.5, in double).

NumPy's own float32 exp, power and tanh are SIMD code that differs from
glibc's expf, powf and tanhf in the last bit for a large share of elements
(a third of them for tanh). expf and powf compute in double and hand the few
elements whose rounding is in doubt to libm itself (through ctypes); tanhf
and the sigmoid run compiled loops whose math.tanh is libm's own tanhf
(float32) or tanh (double), with NumPy twins for when the kernels are off
(NumPy's float32 tanh: within 2 ulps of libm's tanhf).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from caffesolve import kernels


def _load_libm(name: str, nargs: int) -> Callable[..., float] | None:
    """libm's float function `name` (expf, powf) through ctypes, or None."""
    try:
        libm = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
        fn = getattr(libm, name)
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_float
    fn.argtypes = [ctypes.c_float] * nargs
    return fn


_LIBM_EXPF = _load_libm("expf", 1)
_LIBM_POWF = _load_libm("powf", 2)


def _as_libm_rounds(
    e64: npt.NDArray[np.float64],
    libm_fn: Callable[..., float] | None,
    *args: npt.NDArray[np.float32],
) -> npt.NDArray[np.float32]:
    """A float function's double-precision value `e64` rounded to float32 as
    the platform's libm rounds it.

    The double result rounded to float is the correctly rounded float result;
    glibc's expf and powf compute in double internally and differ from it only
    where the exact value lies within a hair of halfway between two floats, so
    those few elements (1 to 2 in 100) are handed to libm's function itself,
    called on the float32 `args` (broadcast to e64's shape).
    """
    with np.errstate(invalid="ignore", over="ignore"):
        e32 = e64.astype(np.float32)
        if libm_fn is None or e32.size == 0:
            return e32
        ulp = np.spacing(e32).astype(np.float64)
        near_half = np.abs(e64 - e32.astype(np.float64)) > 0.495 * ulp
    if np.any(near_half):
        flat_e = np.array(np.atleast_1d(e32), copy=True)
        mask = np.atleast_1d(near_half)
        picked = [
            np.broadcast_to(a, e32.shape).reshape(flat_e.shape)[mask] for a in args
        ]
        flat_e[mask] = [libm_fn(*(float(v) for v in vs)) for vs in zip(*picked)]
        e32 = flat_e.reshape(e32.shape)
    return e32


def powf(x: npt.ArrayLike, y: float) -> npt.NDArray[np.float32]:
    """C's powf(x, y) elementwise, as the platform's libm rounds it (NumPy's
    own float32 power uses its own SIMD code from NumPy 2.4 on, which differs
    from glibc's powf in the last bit for about 1 in 5 elements)."""
    base = np.asarray(x, dtype=np.float32)
    y32 = np.float32(y)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        e64 = np.power(base.astype(np.float64), np.float64(y32))
    return _as_libm_rounds(e64, _LIBM_POWF, base, y32)


def expf(t: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """C's expf(t) elementwise, as the platform's libm rounds it."""
    with np.errstate(over="ignore"):
        e64 = np.exp(t.astype(np.float64))
    return _as_libm_rounds(e64, _LIBM_EXPF, t)


def tanhf_kernel(x, out):  # type: ignore[no-untyped-def]
    """out = tanh(x) elementwise: libm's tanhf for float32, tanh for double."""
    for i in range(x.size):
        out[i] = math.tanh(x[i])


def sigmoid_kernel(x, out):  # type: ignore[no-untyped-def]
    """out = 0.5 * tanh(0.5 * x) + 0.5 in double, rounded once to out's type."""
    for i in range(x.size):
        out[i] = 0.5 * math.tanh(0.5 * np.float64(x[i])) + 0.5


def tanh(x: npt.NDArray[np.floating]) -> npt.NDArray[np.floating]:
    """tanh_layer.cpp's tanh(Dtype): tanhf for float32 (libm's), tanh for
    double."""
    out = np.empty_like(x)
    if x.size and kernels.takes(x, out):
        kernels.compiled(tanhf_kernel)(x.reshape(-1), out.reshape(-1))
    else:
        np.tanh(x, out=out)
    return out


def sigmoid(x: npt.NDArray[np.floating]) -> npt.NDArray[np.floating]:
    """sigmoid_layer.cpp's sigmoid: 0.5 * tanh(0.5 * x) + 0.5, whose 0.5
    literals make it double arithmetic, rounded to x's type on return."""
    out = np.empty_like(x)
    if x.size and kernels.takes(x, out):
        kernels.compiled(sigmoid_kernel)(x.reshape(-1), out.reshape(-1))
    else:
        x64 = x.astype(np.float64)
        np.copyto(out, 0.5 * np.tanh(0.5 * x64) + 0.5, casting="unsafe")
    return out
