"""RNN, after Caffe's test_rnn_layer.cpp (TestSetUp, TestForward,
TestGradient[NonZeroCont[BufferSize2[WithStaticInput]]]), plus values from
rnn_layer.cpp's formulas, a cont reset mid-batch and expose_hidden."""

from __future__ import annotations

import numpy as np
import pytest
from gradient_check import check_gradient
from recurrent_helpers import (
    GRADIENT_CASES,
    NUM_OUTPUT,
    check_cont_reset_mid_batch,
    check_expose_hidden_halves,
    check_gradient_case,
    check_one_batch_equals_one_step_at_a_time,
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
    check_one_batch_equals_one_step_at_a_time("RNN")


def test_cont_zero_resets_the_state_mid_batch() -> None:
    check_cont_reset_mid_batch("RNN")


@pytest.mark.parametrize("case", GRADIENT_CASES)
def test_gradient(case: str) -> None:
    check_gradient_case("RNN", case)


def test_gradient_with_exposed_hidden_state() -> None:
    """h_0 given (cont 1 at step 1 uses it); the objective is the output
    only, since Caffe passes no diff through the state top."""
    layer = make_layer("RNN", expose_hidden=True)
    bottom = make_bottoms(3, 2, [1, 1, 0, 1, 1, 1], hidden=1)
    n = check_gradient(layer, bottom, tops(2), check_bottom=[0], check_top=[0])
    assert n == 36 + sum(b.count for b in layer.blobs)


def test_expose_hidden_continues_a_sequence_and_passes_no_diff() -> None:
    check_expose_hidden_halves("RNN")
