"""Shared set-up of the recurrent layer tests, after Caffe's LSTMLayerTest
and RNNLayerTest fixtures: num_output 7, gaussian weights (std 0.2) and
biases (std 0.1), x of T x N x 3 x 2, a static input of N x 2 x 3 x 4, and a
float64 reference of each unrolled net written from its formulas."""

from __future__ import annotations

import numpy as np
from google.protobuf import text_format

from caffesolve.blob import Blob
from caffesolve.layers import Layer, create_layer
from caffesolve.proto import caffe_pb2

NUM_OUTPUT = 7


def layer_param(
    type_: str, *, expose_hidden: bool = False, debug_info: bool = False
) -> caffe_pb2.LayerParameter:
    text = f"""name: "{type_.lower()}1" type: "{type_}"
    recurrent_param {{ num_output: {NUM_OUTPUT}
      weight_filler {{ type: "gaussian" std: 0.2 }}
      bias_filler {{ type: "gaussian" std: 0.1 }}
      expose_hidden: {str(expose_hidden).lower()}
      debug_info: {str(debug_info).lower()} }}"""
    return text_format.Parse(text, caffe_pb2.LayerParameter())


def make_layer(type_: str, seed: int = 1701, **kw: bool) -> Layer:
    return create_layer(layer_param(type_, **kw), rng=np.random.default_rng(seed))


def blob(values: np.ndarray, name: str = "") -> Blob:
    b = Blob(values.shape, name=name, dtype=values.dtype)
    b.data[...] = values
    return b


def make_bottoms(
    steps: int,
    num: int,
    cont: list[float] | np.ndarray,
    *,
    static: bool = False,
    hidden: int = 0,
    dtype: type = np.float64,
    seed: int = 0,
) -> list[Blob]:
    """x (uniform in [-1, 1]), cont, then the static input and `hidden`
    initial states if asked."""
    rng = np.random.default_rng(seed)
    bottoms = [
        blob(rng.uniform(-1, 1, (steps, num, 3, 2)).astype(dtype), "x"),
        blob(np.asarray(cont, dtype).reshape(steps, num), "cont"),
    ]
    if static:
        bottoms.append(blob(rng.uniform(-1, 1, (num, 2, 3, 4)).astype(dtype), "xs"))
    for j in range(hidden):
        state = rng.uniform(-1, 1, (1, num, NUM_OUTPUT)).astype(dtype)
        bottoms.append(blob(state, f"state{j}"))
    return bottoms


def tops(count: int, dtype: type = np.float64) -> list[Blob]:
    return [Blob(dtype=dtype) for _ in range(count)]


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def lstm_reference(
    x: np.ndarray,
    cont: np.ndarray,
    params: list[np.ndarray],
    h0: np.ndarray,
    c0: np.ndarray,
    x_static: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """lstm_layer.cpp's unrolled net in float64: gates i, f, o, g from
    W_xc x_t + b_c + W_hc (cont_t h_{t-1}) [+ W_xc_static x_static];
    c_t = cont_t f_t c_{t-1} + i_t g_t; h_t = o_t tanh(c_t)."""
    steps, num = cont.shape
    w_xc, b_c, *rest = (np.asarray(p, np.float64) for p in params)
    w_hc = rest[-1]
    dim = w_hc.shape[1]
    h, c, out = h0, c0, []
    for t in range(steps):
        k = cont[t][:, None]
        gates = x[t].reshape(num, -1) @ w_xc.T + b_c + (k * h) @ w_hc.T
        if x_static is not None:
            gates = gates + x_static.reshape(num, -1) @ rest[0].T
        i, f, o = (sigmoid(gates[:, j * dim : (j + 1) * dim]) for j in range(3))
        g = np.tanh(gates[:, 3 * dim :])
        c = k * f * c + i * g
        h = o * np.tanh(c)
        out.append(h)
    return np.stack(out), h, c


def rnn_reference(
    x: np.ndarray,
    cont: np.ndarray,
    params: list[np.ndarray],
    h0: np.ndarray,
    x_static: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """rnn_layer.cpp's unrolled net in float64: h_t = tanh(W_xh x_t + b_h +
    W_hh (cont_t h_{t-1}) [+ W_xh_static x_static]); o_t = tanh(W_ho h_t + b_o)."""
    steps, num = cont.shape
    w_xh, b_h, *rest = (np.asarray(p, np.float64) for p in params)
    w_hh, w_ho, b_o = rest[-3:]
    h, out = h0, []
    for t in range(steps):
        pre = x[t].reshape(num, -1) @ w_xh.T + b_h + (cont[t][:, None] * h) @ w_hh.T
        if x_static is not None:
            pre = pre + x_static.reshape(num, -1) @ rest[0].T
        h = np.tanh(pre)
        out.append(np.tanh(h @ w_ho.T + b_o))
    return np.stack(out), h
