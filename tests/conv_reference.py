"""Direct N-D convolution and deconvolution, element by element: the
independent references of the convolution-family tests (Caffe's tests use
their own caffe_conv loop in test_convolution_layer.cpp; these are written
from the definitions, for any number of spatial axes and groups)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np


def _positions(sizes: Sequence[int]) -> itertools.product:
    return itertools.product(*(range(s) for s in sizes))


def conv_out(size: int, k: int, stride: int, pad: int, dilation: int) -> int:
    """(size + 2*pad - extent) / stride + 1 with C++'s truncating division."""
    return int((size + 2 * pad - (dilation * (k - 1) + 1)) / stride) + 1


def reference_conv_nd(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    stride: Sequence[int],
    pad: Sequence[int],
    dilation: Sequence[int],
    group: int,
) -> np.ndarray:
    """y[n, m, o] = sum over c in m's group and kernel offsets k of
    w[m, c, k] * x[n, c, o*stride - pad + k*dilation] (zero outside) + b[m]."""
    num, _, *spatial = x.shape
    m_total, cg, *kernel = w.shape
    out = [conv_out(*a) for a in zip(spatial, kernel, stride, pad, dilation)]
    y = np.zeros([num, m_total, *out])
    mg = m_total // group
    for n, m in itertools.product(range(num), range(m_total)):
        first = (m // mg) * cg
        for o in _positions(out):
            total = 0.0
            for c, k in itertools.product(range(cg), _positions(kernel)):
                i = [
                    oo * s - p + kk * d
                    for oo, s, p, kk, d in zip(o, stride, pad, k, dilation)
                ]
                if all(0 <= ii < size for ii, size in zip(i, spatial)):
                    total += w[(m, c, *k)] * x[(n, first + c, *i)]
            y[(n, m, *o)] = total + (0.0 if b is None else b[m])
    return y


def reference_deconv_nd(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    stride: Sequence[int],
    pad: Sequence[int],
    dilation: Sequence[int],
    group: int,
) -> np.ndarray:
    """The transpose of reference_conv_nd: every bottom value x[n, c, i]
    scatters w[c, m, k] * x[n, c, i] to y[n, m in c's group,
    i*stride - pad + k*dilation] (dropped outside), then + b[m]."""
    num, channels, *spatial = x.shape
    _, mg, *kernel = w.shape
    out = [
        s * (size - 1) + d * (k - 1) + 1 - 2 * p
        for size, k, s, p, d in zip(spatial, kernel, stride, pad, dilation)
    ]
    y = np.zeros([num, mg * group, *out])
    cg = channels // group
    for n, c in itertools.product(range(num), range(channels)):
        first = (c // cg) * mg
        for i, m, k in itertools.product(
            _positions(spatial), range(mg), _positions(kernel)
        ):
            o = [
                ii * s - p + kk * d
                for ii, s, p, kk, d in zip(i, stride, pad, k, dilation)
            ]
            if all(0 <= oo < size for oo, size in zip(o, out)):
                y[(n, first + m, *o)] += w[(c, m, *k)] * x[(n, c, *i)]
    if b is not None:
        y += b.reshape((1, -1) + (1,) * len(out))
    return y
