"""LSTMUnit's arithmetic (Caffe's lstm_unit_layer.cpp): one time step of N
streams of H cells, arrays in, arrays out (layers/recurrent.py runs it).

Caffe's C++11 build resolves lstm_unit_layer.cpp's helpers so: sigmoid(x) =
1. / (1. + exp(-x)) calls expf for a float x (mkl_alternate.hpp's <math.h>
puts std::exp(float) in the global namespace), the rest is double, rounded
to float on return; tanh(x) = 2. * sigmoid(2. * x) - 1. is all double, as
2. * x is a double. Everything else is float arithmetic in the loop's
order. The compiled kernels call libm's expf and exp (numba's math.exp),
the NumPy twins the same functions (ops.libm.expf, np.exp); the tests check
both bit for bit against those expressions compiled with g++. The compiled
path is 2.7x to 21x as fast as the NumPy one (bench_recurrent.py), which
passes over the arrays once per operation and asks libm for the ~1% of
expf values whose rounding is in doubt.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from caffesolve import kernels
from caffesolve.ops.libm import expf

Array = npt.NDArray[np.float32]


def lstm_unit_forward_kernel(c_prev, x, cont, acts, c, tanh_c, h, zero):  # type: ignore[no-untyped-def]
    num, dim = c_prev.shape
    for n in range(num):
        k = cont[n]
        for d in range(dim):
            acts[n, d] = 1.0 / (1.0 + math.exp(-x[n, d]))
            acts[n, dim + d] = 1.0 / (1.0 + math.exp(-x[n, dim + d]))
            if k == 0:
                acts[n, dim + d] = zero
            else:
                acts[n, dim + d] = k * acts[n, dim + d]
            acts[n, 2 * dim + d] = 1.0 / (1.0 + math.exp(-x[n, 2 * dim + d]))
            acts[n, 3 * dim + d] = (
                2.0 * (1.0 / (1.0 + math.exp(-(2.0 * x[n, 3 * dim + d])))) - 1.0
            )
            cv = acts[n, dim + d] * c_prev[n, d] + acts[n, d] * acts[n, 3 * dim + d]
            c[n, d] = cv
            tanh_c[n, d] = 2.0 * (1.0 / (1.0 + math.exp(-(2.0 * cv)))) - 1.0
            h[n, d] = acts[n, 2 * dim + d] * tanh_c[n, d]


def lstm_unit_backward_kernel(
    c_prev, acts, tanh_c, c_diff, h_diff, c_prev_diff, x_diff, one
):  # type: ignore[no-untyped-def]
    num, dim = c_prev.shape
    for n in range(num):
        for d in range(dim):
            i = acts[n, d]
            f = acts[n, dim + d]
            o = acts[n, 2 * dim + d]
            g = acts[n, 3 * dim + d]
            tc = tanh_c[n, d]
            hd = h_diff[n, d]
            c_term = c_diff[n, d] + hd * o * (one - tc * tc)
            c_prev_diff[n, d] = c_term * f
            x_diff[n, d] = c_term * g * i * (one - i)
            x_diff[n, dim + d] = c_term * c_prev[n, d] * f * (one - f)
            x_diff[n, 2 * dim + d] = hd * tc * o * (one - o)
            x_diff[n, 3 * dim + d] = c_term * i * (one - g * g)


def caffe_sigmoid(x: Array) -> Array:
    """lstm_unit_layer.cpp's sigmoid: 1. / (1. + exp(-x)), exp in x's
    precision (expf for float32, as libm rounds it), the rest in double."""
    with np.errstate(over="ignore"):
        if x.dtype == np.float32:
            e = expf(-x).astype(np.float64)
        else:
            e = np.exp(-x.astype(np.float64))
        return (1.0 / (1.0 + e)).astype(x.dtype)


def caffe_tanh(x: Array) -> Array:
    """lstm_unit_layer.cpp's tanh: 2. * sigmoid(2. * x) - 1., all in double."""
    with np.errstate(over="ignore"):
        s = 1.0 / (1.0 + np.exp(-(2.0 * x.astype(np.float64))))
    return (2.0 * s - 1.0).astype(x.dtype)


def lstm_unit_forward(
    c_prev: Array, x: Array, cont: Array, acts: Array, c: Array, tanh_c: Array, h: Array
) -> None:
    """One LSTMUnit step (lstm_unit_layer.cpp Forward_cpu), N x H state:
    i, f, o = sigmoid(x's first three H columns), g = tanh(the last H);
    f = 0 where cont == 0, else cont * f; c = f * c_prev + i * g;
    h = o * tanh(c). Writes acts (i, f, o, g), c, tanh_c and h."""
    if kernels.takes(c_prev, x, cont, acts, c, tanh_c, h):
        kernel = kernels.compiled(lstm_unit_forward_kernel)
        kernel(c_prev, x, cont, acts, c, tanh_c, h, c.dtype.type(0))
        return
    dim = c_prev.shape[1]
    acts[:, : 3 * dim] = caffe_sigmoid(x[:, : 3 * dim])
    acts[:, 3 * dim :] = caffe_tanh(x[:, 3 * dim :])
    i, f, o, g = (acts[:, j * dim : (j + 1) * dim] for j in range(4))
    k = cont[:, None]
    f[...] = np.where(k == 0, c.dtype.type(0), k * f)
    c[...] = f * c_prev + i * g
    tanh_c[...] = caffe_tanh(c)
    np.multiply(o, tanh_c, out=h)


def lstm_unit_backward(
    c_prev: Array,
    acts: Array,
    tanh_c: Array,
    c_diff: Array,
    h_diff: Array,
    c_prev_diff: Array,
    x_diff: Array,
) -> None:
    """LSTMUnit's backward (lstm_unit_layer.cpp Backward_cpu), in float:
    c_term = dc + dh * o * (1 - tanh_c^2); dc_prev = c_term * f;
    di = c_term * g * i * (1 - i); df = c_term * c_prev * f * (1 - f);
    do = dh * tanh_c * o * (1 - o); dg = c_term * i * (1 - g^2)."""
    one = c_prev.dtype.type(1)
    if kernels.takes(c_prev, acts, tanh_c, c_diff, h_diff, c_prev_diff, x_diff):
        kernel = kernels.compiled(lstm_unit_backward_kernel)
        kernel(c_prev, acts, tanh_c, c_diff, h_diff, c_prev_diff, x_diff, one)
        return
    dim = c_prev.shape[1]
    i, f, o, g = (acts[:, j * dim : (j + 1) * dim] for j in range(4))
    c_term = c_diff + h_diff * o * (one - tanh_c * tanh_c)
    c_prev_diff[...] = c_term * f
    x_diff[:, :dim] = c_term * g * i * (one - i)
    x_diff[:, dim : 2 * dim] = c_term * c_prev * f * (one - f)
    x_diff[:, 2 * dim : 3 * dim] = h_diff * tanh_c * o * (one - o)
    x_diff[:, 3 * dim :] = c_term * i * (one - g * g)
