"""RNN, after Caffe's test_rnn_layer.cpp (TestSetUp, TestForward,
TestGradient[NonZeroCont[BufferSize2[WithStaticInput]]]), plus values from
rnn_layer.cpp's formulas, a cont reset mid-batch and expose_hidden."""

from __future__ import annotations

import numpy as np
import pytest
from gradient_check import check_gradient
from recurrent_helpers import (
    NUM_OUTPUT,
    blob,
    make_bottoms,
    make_layer,
    rnn_reference,
    tops,
)

H = NUM_OUTPUT


pytestmark = pytest.mark.usefixtures("quiet_log")


def test_set_up() -> None:
    layer = make_layer("RNN")
    top = tops(1)
    layer.setup(make_bottoms(1, 3, [0, 0, 0]), top)
    assert top[0].shape == (1, 3, H)
    # Caffe's unrolled net's params: W_xh, b_h, W_hh, W_ho, b_o
    shapes = [b.shape for b in layer.blobs]
    assert shapes == [(H, 6), (H,), (H, H), (H, H), (H,)]
    static = make_layer("RNN", expose_hidden=True)
    top = tops(2)
    static.setup(make_bottoms(2, 3, [0] * 6, static=True, hidden=1), top)
    assert [b.shape for b in static.blobs][2] == (H, 24)
    assert len(static.blobs) == 6 and top[1].shape == (1, 3, H)


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_forward_equals_unrolled_formulas(static: bool, dtype: type) -> None:
    cont = [0, 0, 0, 0, 1, 1, 0, 0.5, 1, 1, 0, 1]
    bottom = make_bottoms(3, 4, cont, static=static, dtype=dtype)
    layer = make_layer("RNN")
    top = tops(1, dtype)
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    xs = bottom[2].data if static else None
    params = [b.data for b in layer.blobs]
    zero = np.zeros((4, H))
    want, h_t = rnn_reference(bottom[0].data, bottom[1].data, params, zero, xs)
    tol = 1e-12 if dtype == np.float64 else 2e-6
    np.testing.assert_allclose(top[0].data, want, rtol=tol, atol=tol)
    bottom[1].data[...] = 1  # the next forward continues from h_T
    layer.forward(bottom, top)
    want, _ = rnn_reference(bottom[0].data, bottom[1].data, params, h_t, xs)
    np.testing.assert_allclose(top[0].data, want, rtol=tol, atol=tol)


def test_forward_full_sequence_equals_one_timestep_at_a_time() -> None:
    """Caffe's TestForward for RNN (see test_lstm_layer.py)."""
    steps, num = 3, 3
    x = np.random.default_rng(1).normal(0, 1, (steps, num, 3, 2)).astype(np.float32)
    cont = (np.arange(steps)[:, None] > 0).repeat(num, 1).astype(np.float32)
    layer = make_layer("RNN")
    top = tops(1, np.float32)
    layer.setup([blob(x), blob(cont)], top)
    layer.forward([blob(x), blob(cont)], top)
    full = top[0].data.copy()
    for all_zero in (False, True):
        one_step = make_layer("RNN")
        top1 = tops(1, np.float32)
        for t in range(steps):
            c = np.zeros((1, num), np.float32) if all_zero else cont[t : t + 1]
            b = [blob(x[t : t + 1]), blob(c)]
            if t == 0:
                one_step.setup(b, top1)
            one_step.forward(b, top1)
            if all_zero and t > 0:
                assert (top1[0].data[0] != full[t]).all()
            else:
                np.testing.assert_allclose(top1[0].data[0], full[t], atol=1e-5)


def test_cont_zero_resets_the_state_mid_batch() -> None:
    cont = np.ones((4, 2))
    cont[0] = 0
    cont[2, 1] = 0
    bottom = make_bottoms(4, 2, cont)
    layer = make_layer("RNN")
    top = tops(1)
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    alone = make_layer("RNN")
    rest = [blob(bottom[0].data[2:]), blob(np.zeros((2, 2)))]
    top2 = tops(1)
    alone.setup(rest, top2)
    alone.forward(rest, top2)
    np.testing.assert_array_equal(top[0].data[2, 1], top2[0].data[0, 1])
    assert not np.allclose(top[0].data[2, 0], top2[0].data[0, 0])


GRADIENT_CASES = {
    # name: (T, N, cont, static): Caffe's TestGradient... cases
    "Gradient": (1, 3, [0, 0, 0], False),
    "GradientNonZeroContBufferSize2": (2, 2, [0, 0, 0, 1], False),
    "GradientNonZeroContBufferSize2WithStaticInput": (2, 2, [0, 0, 0, 1], True),
    "GradientThreeStepsMixedCont": (3, 2, [0, 0, 1, 0, 1, 1], True),
}


@pytest.mark.parametrize("case", GRADIENT_CASES)
def test_gradient(case: str) -> None:
    steps, num, cont, static = GRADIENT_CASES[case]
    layer = make_layer("RNN")
    bottom = make_bottoms(steps, num, cont, static=static)
    check = [0, 2] if static else [0]
    assert check_gradient(layer, bottom, tops(1), check_bottom=check) > 0


def test_gradient_with_exposed_hidden_state() -> None:
    layer = make_layer("RNN", expose_hidden=True)
    bottom = make_bottoms(3, 2, [1, 1, 0, 1, 1, 1], hidden=1)
    assert check_gradient(layer, bottom, tops(2), check_bottom=[0], check_top=[0])


def test_expose_hidden_continues_a_sequence_and_passes_no_diff() -> None:
    cont = np.ones((4, 3))
    cont[0] = 0
    bottom = make_bottoms(4, 3, cont)
    whole = make_layer("RNN")
    top = tops(1)
    whole.setup(bottom, top)
    whole.forward(bottom, top)
    halves = make_layer("RNN", expose_hidden=True)
    state = blob(np.zeros((1, 3, H)))
    out = []
    for part in (slice(0, 2), slice(2, 4)):
        b = [blob(bottom[0].data[part]), blob(cont[part]), state]
        t = tops(2)
        if not out:
            halves.setup(b, t)
        halves.reshape(b, t)
        halves.forward(b, t)
        out.append(t[0].data.copy())
        state = blob(t[1].data.copy())
    np.testing.assert_array_equal(np.concatenate(out), top[0].data)
    t[0].diff[...] = 1
    b[2].diff[...] = 9
    halves.backward(t, [True, False, True], b)
    assert (b[2].diff == 0).all()
