"""Shared set-up of the recurrent layer tests, after Caffe's LSTMLayerTest
and RNNLayerTest fixtures: num_output 7, gaussian weights (std 0.2) and
biases (std 0.1), x of T x N x 3 x 2, a static input of N x 2 x 3 x 4; a
float64 reference of each unrolled net written from its formulas; and the
checks that test_lstm_layer.py and test_rnn_layer.py both run."""

from __future__ import annotations

import numpy as np
from google.protobuf import text_format
from gradient_check import check_gradient

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


# -- checks both test files run, one layer type each ---------------------------------

GRADIENT_CASES = {
    # name: (T, N, cont, static input): Caffe's TestGradient cases, then one
    # of three steps where a stream restarts mid-batch
    "Gradient": (1, 3, [0, 0, 0], False),
    "GradientNonZeroContBufferSize2": (2, 2, [0, 0, 0, 1], False),
    "GradientNonZeroContBufferSize2WithStaticInput": (2, 2, [0, 0, 0, 1], True),
    "GradientThreeStepsMixedCont": (3, 2, [0, 0, 1, 0, 1, 1], True),
}


def check_gradient_case(type_: str, case: str) -> None:
    """Caffe's GradientChecker (1e-2, 1e-3) on x (and the static input) and
    every param; cont 0 at step 1, as the carried state changes between the
    checker's forwards."""
    steps, num, cont, static = GRADIENT_CASES[case]
    layer = make_layer(type_)
    bottom = make_bottoms(steps, num, cont, static=static)
    check = [0, 2] if static else [0]
    assert check_gradient(layer, bottom, tops(1), check_bottom=check) > 0


def run(layer: Layer, bottom: list[Blob], top: list[Blob]) -> np.ndarray:
    """Set up (first time), reshape and forward; a copy of the output."""
    if not layer.blobs:
        layer.setup(bottom, top)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    return top[0].data.copy()


def check_one_batch_equals_one_step_at_a_time(type_: str) -> None:
    """Caffe's TestForward: a 3-step batch equals three 1-step batches that
    carry the state (within Caffe's 1e-5); with every cont 0 only the first
    step stays the same."""
    steps, num = 3, 3
    x = np.random.default_rng(1).normal(0, 1, (steps, num, 3, 2)).astype(np.float32)
    cont = (np.arange(steps)[:, None] > 0).repeat(num, 1).astype(np.float32)
    full = run(make_layer(type_), [blob(x), blob(cont)], tops(1, np.float32))
    for all_zero in (False, True):
        one_step, top = make_layer(type_), tops(1, np.float32)
        for t in range(steps):
            c = np.zeros((1, num), np.float32) if all_zero else cont[t : t + 1]
            out = run(one_step, [blob(x[t : t + 1]), blob(c)], top)[0]
            if all_zero and t > 0:
                assert (out != full[t]).all()
            else:
                np.testing.assert_allclose(out, full[t], atol=1e-5)


def check_cont_reset_mid_batch(type_: str) -> None:
    """Stream 0 starts a new sequence at step 3 of 5: its outputs from there
    equal a run of those steps alone from a zero state; stream 1's differ."""
    cont = np.ones((5, 2))
    cont[0] = 0
    cont[3, 0] = 0
    bottom = make_bottoms(5, 2, cont)
    whole = run(make_layer(type_), bottom, tops(1))
    rest = [blob(bottom[0].data[3:]), blob(np.vstack([[0, 0], cont[4:]]))]
    alone = run(make_layer(type_), rest, tops(1))
    np.testing.assert_array_equal(whole[3:, 0], alone[:, 0])
    assert not np.allclose(whole[3:, 1], alone[:, 1])


def check_expose_hidden_halves(type_: str) -> None:
    """Steps 1-2 then 3-4, the state handed over through the exposed tops and
    bottoms, equal steps 1-4 in one batch; as Caffe shares only the exposed
    blobs' data, diffs on the final-state tops change nothing and the
    initial-state bottoms get zero diffs."""
    cont = np.ones((4, 3))
    cont[0] = 0
    bottom = make_bottoms(4, 3, cont)
    whole = run(make_layer(type_), bottom, tops(1))
    layer = make_layer(type_, expose_hidden=True)
    n_states = len(layer.states)
    state = [blob(np.zeros((1, 3, NUM_OUTPUT))) for _ in range(n_states)]
    halves = []
    for part in (slice(0, 2), slice(2, 4)):
        b = [blob(bottom[0].data[part]), blob(cont[part]), *state]
        top = tops(1 + n_states)
        halves.append(run(layer, b, top))
        state = [blob(t.data.copy()) for t in top[1:]]
    np.testing.assert_array_equal(np.concatenate(halves), whole)
    propagate = [True, False] + [True] * n_states
    diffs = []
    for state_diff in (0.0, 5.0):
        for param in layer.blobs:
            param.diff[...] = 0
        for initial in b[2:]:
            initial.diff[...] = 7
        top[0].diff[...] = 1
        for t in top[1:]:
            t.diff[...] = state_diff
        layer.backward(top, propagate, b)
        assert all((s.diff == 0).all() for s in b[2:])
        diffs.append([p.diff.copy() for p in layer.blobs] + [b[0].diff.copy()])
    for first, second in zip(*diffs):
        np.testing.assert_array_equal(first, second)
