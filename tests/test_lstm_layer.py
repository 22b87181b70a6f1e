"""LSTM and LSTMUnit, after Caffe's test_lstm_layer.cpp (TestSetUp,
TestForward, TestLSTMUnitSetUp, TestLSTMUnitGradient[NonZeroCont],
TestGradient[NonZeroCont[BufferSize2[WithStaticInput]]]), plus: values from
the unrolled net's formulas, cont resets, expose_hidden, the .caffemodel
layout, both arithmetic paths bit for bit against LSTMUnit's expressions
compiled as C++, snapshots of the carried state, and the sine-wave example
learning (configs/lstm_sine)."""

from __future__ import annotations

import io
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import compile_cpp
from google.protobuf import text_format
from gradient_check import check_gradient
from recurrent_helpers import (
    GRADIENT_CASES,
    NUM_OUTPUT,
    blob,
    check_cont_reset_mid_batch,
    check_expose_hidden_halves,
    check_gradient_case,
    check_one_batch_equals_one_step_at_a_time,
    layer_param,
    lstm_reference,
    make_bottoms,
    make_layer,
    tops,
)

from caffesolve import kernels, tools
from caffesolve.data.sine import write_sine_dataset
from caffesolve.errors import CaffesolveError, ConfigError, ShapeError
from caffesolve.layers import create_layer
from caffesolve.log import LOG
from caffesolve.net import Net
from caffesolve.ops.lstm_unit import lstm_unit_backward, lstm_unit_forward
from caffesolve.proto import caffe_pb2
from caffesolve.solver_param import load_solver
from caffesolve.solvers import create_solver

ROOT = Path(__file__).resolve().parents[1]
H = NUM_OUTPUT


pytestmark = pytest.mark.usefixtures("quiet_log")


def params(layer) -> list[np.ndarray]:
    return [b.data for b in layer.blobs]


# -- set-up and the param layout ----------------------------------------------------


def test_set_up() -> None:
    layer = make_layer("LSTM")
    bottom, top = make_bottoms(1, 3, [0, 0, 0]), tops(1)
    layer.setup(bottom, top)
    assert top[0].shape == (1, 3, H)
    # Caffe's unrolled net's params: W_xc, b_c, W_hc (gate rows i, f, o, g)
    assert [b.shape for b in layer.blobs] == [(4 * H, 6), (4 * H,), (4 * H, H)]


def test_set_up_static_input_and_expose_hidden() -> None:
    layer = make_layer("LSTM", expose_hidden=True)
    bottom = make_bottoms(2, 3, [0] * 6, static=True, hidden=2)
    top = tops(3)
    layer.setup(bottom, top)
    shapes = [b.shape for b in layer.blobs]
    assert shapes == [(4 * H, 6), (4 * H,), (4 * H, 24), (4 * H, H)]
    assert [t.shape for t in top] == [(2, 3, H), (1, 3, H), (1, 3, H)]
    with pytest.raises(ConfigError, match="takes at least 4 bottom"):
        make_layer("LSTM", expose_hidden=True).setup(bottom[:3], tops(3))
    with pytest.raises(ConfigError, match="produces 3 top"):
        make_layer("LSTM", expose_hidden=True).setup(bottom, tops(1))


def test_bad_shapes_name_the_layer() -> None:
    bottom = make_bottoms(2, 3, [0] * 6)
    bad_cont = [bottom[0], blob(np.zeros((2, 4)))]
    with pytest.raises(ShapeError, match=r"lstm1.*\(#timesteps, #streams\) = 2 x 3"):
        make_layer("LSTM").setup(bad_cont, tops(1))
    layer = make_layer("LSTM")
    layer.setup(bottom, tops(1))
    longer = make_bottoms(3, 3, [0] * 9)
    with pytest.raises(ShapeError, match="number of timesteps changed"):
        layer.reshape(longer, tops(1))
    lp = layer_param("LSTM")
    lp.recurrent_param.num_output = 0
    with pytest.raises(ConfigError, match="num_output must be positive"):
        create_layer(lp).setup(bottom, tops(1))
    exposed = make_layer("LSTM", expose_hidden=True)
    wrong = make_bottoms(2, 3, [0] * 6, hidden=2)
    wrong[3] = blob(np.zeros((1, 3, H + 1)))
    with pytest.raises(ShapeError, match="must match hidden state input shape"):
        exposed.setup(wrong, tops(3))


# -- forward ---------------------------------------------------------------------------


def test_forward_hand_worked_one_cell() -> None:
    """One cell, one input, two steps, from lstm_layer.cpp's formulas by hand:
    gate rows i, f, o, g; step 1 starts a sequence (cont 0: h_conted = 0,
    f = 0), step 2 continues it."""
    lp = text_format.Parse(
        'name: "l" type: "LSTM" recurrent_param { num_output: 1 }',
        caffe_pb2.LayerParameter(),
    )
    layer = create_layer(lp)
    x = blob(np.array([1.0, 2.0]).reshape(2, 1, 1))
    cont = blob(np.array([[0.0], [1.0]]))
    top = tops(1)
    layer.setup([x, cont], top)
    w_xc, b_c, w_hc = layer.blobs
    w_xc.data[:, 0] = [0.5, -0.5, 1.0, 2.0]
    b_c.data[:] = [0.1, 0.2, 0.3, 0.4]
    w_hc.data[:, 0] = [-1.0, 0.25, 0.75, 1.5]
    layer.forward([x, cont], top)

    def s(v: float) -> float:
        return 1 / (1 + math.exp(-v))

    c1 = s(0.5 + 0.1) * math.tanh(2.0 + 0.4)
    h1 = s(1.0 + 0.3) * math.tanh(c1)
    i2, f2 = s(1.0 + 0.1 - h1), s(-1.0 + 0.2 + 0.25 * h1)
    o2, g2 = s(2.0 + 0.3 + 0.75 * h1), math.tanh(4.0 + 0.4 + 1.5 * h1)
    h2 = o2 * math.tanh(f2 * c1 + i2 * g2)
    np.testing.assert_allclose(top[0].data.ravel(), [h1, h2], rtol=1e-14)


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_forward_equals_unrolled_formulas(static: bool, dtype: type) -> None:
    """Three steps of five streams; cont mixes starts, continuations and a
    fractional 0.5 (Caffe scales h and f by it)."""
    cont = [0, 0, 0, 0, 0, 1, 1, 0, 0.5, 1, 1, 1, 1, 0, 0.5]
    bottom = make_bottoms(3, 5, cont, static=static, dtype=dtype)
    layer = make_layer("LSTM")
    top = tops(1, dtype)
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    zero = np.zeros((5, H))
    xs = bottom[2].data if static else None
    want, h_t, c_t = lstm_reference(
        bottom[0].data, bottom[1].data, params(layer), zero, zero, xs
    )
    tol = 1e-12 if dtype == np.float64 else 2e-6
    np.testing.assert_allclose(top[0].data, want, rtol=tol, atol=tol)
    # the next forward starts from h_T, c_T (cont 1 now continues them)
    bottom[1].data[...] = 1
    layer.forward(bottom, top)
    want, _, _ = lstm_reference(
        bottom[0].data, bottom[1].data, params(layer), h_t, c_t, xs
    )
    np.testing.assert_allclose(top[0].data, want, rtol=tol, atol=tol)


def test_forward_full_sequence_equals_one_timestep_at_a_time() -> None:
    check_one_batch_equals_one_step_at_a_time("LSTM")


def test_cont_zero_resets_the_state_mid_batch() -> None:
    check_cont_reset_mid_batch("LSTM")


# -- gradients: Caffe's GradientChecker (1e-2, 1e-3) ------------------------------


@pytest.mark.parametrize("cont", [[0, 0, 0], [1, 0, 1]], ids=["zero", "nonzero"])
def test_lstm_unit_gradient(cont: list[float]) -> None:
    """TestLSTMUnitGradient / ...NonZeroCont (bottoms c_prev and X)."""
    rng = np.random.default_rng(3)
    c_prev = blob(rng.uniform(-1, 1, (1, 3, H)))
    x = blob(rng.uniform(-1, 1, (1, 3, 4 * H)))
    unit = create_layer(caffe_pb2.LayerParameter(name="unit", type="LSTMUnit"))
    top = tops(2)
    bottom = [c_prev, x, blob(np.array([cont], np.float64))]
    unit.setup(bottom, top)
    assert top[0].shape == top[1].shape == (1, 3, H)
    assert check_gradient(unit, bottom, top, check_bottom=[0, 1]) == 3 * 5 * H


def test_lstm_unit_rejects_bad_shapes() -> None:
    unit = create_layer(caffe_pb2.LayerParameter(name="unit", type="LSTMUnit"))
    bottom = [blob(np.zeros((1, 3, H))), blob(np.zeros((1, 3, 3 * H))),
              blob(np.zeros((1, 3)))]  # fmt: skip
    with pytest.raises(ShapeError, match=f"4 \\* {H} = {4 * H}"):
        unit.setup(bottom, tops(2))


@pytest.mark.parametrize("case", GRADIENT_CASES)
def test_gradient(case: str) -> None:
    check_gradient_case("LSTM", case)


def test_gradient_with_exposed_hidden_state() -> None:
    """h_0 and c_0 given (cont 1 at step 1 uses them); the objective is the
    output h only, since Caffe passes no diff through the state tops."""
    layer = make_layer("LSTM", expose_hidden=True)
    bottom = make_bottoms(2, 2, [1, 1, 0, 1], static=True, hidden=2)
    n = check_gradient(layer, bottom, tops(3), check_bottom=[0, 2], check_top=[0])
    assert n == 24 + 48 + sum(b.count for b in layer.blobs)


# -- expose_hidden, cont and the diffs Caffe does not compute ---------------------


def test_expose_hidden_continues_a_sequence_and_passes_no_diff() -> None:
    check_expose_hidden_halves("LSTM")


def test_no_diff_into_cont() -> None:
    layer = make_layer("LSTM")
    bottom = make_bottoms(2, 2, [0, 0, 1, 1])
    top = tops(1)
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    top[0].diff[...] = 1
    bottom[1].diff[...] = 42
    layer.backward(top, [True, False], bottom)
    assert (bottom[1].diff == 42).all()
    assert not layer.allow_force_backward(1) and layer.allow_force_backward(0)
    with pytest.raises(ConfigError, match="Cannot backpropagate to sequence"):
        layer.backward(top, [True, True], bottom)


def test_param_diffs_are_computed_even_for_lr_mult_0() -> None:
    """Caffe's unrolled net computes every param diff (the Net's lr_mult 0
    flags reach only the outer layer), so frozen LSTM weights still count in
    clip_gradients' norm; the diffs equal those of a layer without flags."""
    bottom = make_bottoms(3, 2, [0, 0, 1, 1, 1, 1])
    diffs = []
    for frozen in (False, True):
        layer = make_layer("LSTM")
        top = tops(1)
        layer.setup(bottom, top)
        layer.param_propagate_down = [not frozen] * 3
        layer.forward(bottom, top)
        top[0].diff[...] = 1
        layer.backward(top, [False, False], bottom)
        diffs.append([b.diff.copy() for b in layer.blobs])
    for a, b in zip(*diffs):
        assert np.abs(a).sum() > 0
        np.testing.assert_array_equal(a, b)


# -- Caffe's arithmetic, bit for bit ------------------------------------------------


def _run_lstm(numpy_paths: bool) -> list[np.ndarray]:
    cont = np.ones((6, 4), np.float32)
    cont[0] = 0
    cont[3, 1] = 0
    with kernels.forced(numpy_paths):
        layer = make_layer("LSTM")
        bottom = make_bottoms(6, 4, cont, static=True, dtype=np.float32)
        top = tops(1, np.float32)
        layer.setup(bottom, top)
        for _ in range(2):  # the second forward starts from the carried state
            layer.forward(bottom, top)
        top[0].diff[...] = np.random.default_rng(2).normal(size=top[0].shape)
        layer.backward(top, [True, False, True], bottom)
    return [top[0].data, bottom[0].diff, bottom[2].diff] + [b.diff for b in layer.blobs]


def test_compiled_and_numpy_paths_are_bit_identical() -> None:
    compiled, numpy = _run_lstm(False), _run_lstm(True)
    for a, b in zip(compiled, numpy):
        np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))


UNIT_CPP = r"""
// LSTMUnit's expressions with the types of Caffe's LSTMUnitLayer<float>
// (lstm_unit_layer.cpp); <math.h> as Caffe includes it (mkl_alternate.hpp).
#include <cmath>
#include <math.h>
#include <cstdio>
#include <cstdlib>
#include <vector>
namespace caffe {
template <typename Dtype> inline Dtype sigmoid(Dtype x) {
  return 1. / (1. + exp(-x));
}
template <typename Dtype> inline Dtype tanh(Dtype x) {
  return 2. * sigmoid(2. * x) - 1.;
}
void unit(int num, int dim, const float* c_prev, const float* x,
          const float* cont, const float* c_diff, const float* h_diff,
          float* c, float* h, float* c_prev_diff, float* x_diff) {
  for (int n = 0; n < num; ++n) {
    const float* xn = x + n * 4 * dim;
    float* xd = x_diff + n * 4 * dim;
    for (int d = 0; d < dim; ++d) {
      const int k = n * dim + d;
      const float i = sigmoid(xn[d]);
      const float f = (cont[n] == 0) ? 0 : (cont[n] * sigmoid(xn[dim + d]));
      const float o = sigmoid(xn[2 * dim + d]);
      const float g = tanh(xn[3 * dim + d]);
      const float cv = f * c_prev[k] + i * g;
      c[k] = cv;
      const float tanh_c = tanh(cv);
      h[k] = o * tanh_c;
      const float c_term = c_diff[k] + h_diff[k] * o * (1 - tanh_c * tanh_c);
      c_prev_diff[k] = c_term * f;
      xd[d] = c_term * g * i * (1 - i);
      xd[dim + d] = c_term * c_prev[k] * f * (1 - f);
      xd[2 * dim + d] = h_diff[k] * tanh_c * o * (1 - o);
      xd[3 * dim + d] = c_term * i * (1 - g * g);
    }
  }
}
}  // namespace caffe
int main(int argc, char** argv) {
  const int num = atoi(argv[1]), dim = atoi(argv[2]);
  const size_t s = (size_t)num * dim;
  std::vector<float> in(7 * s + num), out(7 * s);
  if (fread(in.data(), 4, in.size(), stdin) != in.size()) return 1;
  const float *c_prev = &in[0], *x = &in[s], *cont = &in[5 * s];
  const float *c_diff = &in[5 * s + num], *h_diff = &in[6 * s + num];
  caffe::unit(num, dim, c_prev, x, cont, c_diff, h_diff, &out[0], &out[s],
              &out[2 * s], &out[3 * s]);
  fwrite(out.data(), 4, out.size(), stdout);
  return 0;
}
"""


@pytest.fixture(scope="module")
def caffe_unit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_cpp(tmp_path_factory, UNIT_CPP, "unit")


@pytest.mark.parametrize("numpy_paths", [False, True], ids=["compiled", "numpy"])
def test_lstm_unit_bit_equal_to_caffe_expressions_in_cpp(
    caffe_unit: Path, numpy_paths: bool
) -> None:
    """Forward and backward of 64 x 300 cells (wide gate inputs, including
    0, -0, +-50, +-100, where exp overflows), cont 0, 1 and 0.5."""
    num, dim = 64, 300
    rng = np.random.default_rng(5)
    f32 = np.float32
    c_prev = rng.normal(0, 2, (num, dim)).astype(f32)
    x = rng.normal(0, 3, (num, 4 * dim)).astype(f32)
    x[0, :8] = [0, -0.0, 50, -50, 100, -100, 1e-8, 20]
    cont = rng.integers(0, 2, num).astype(f32)
    cont[:3] = [0.5, 1, 0]
    c_diff, h_diff = rng.normal(size=(2, num, dim)).astype(f32)
    raw = b"".join(a.tobytes() for a in (c_prev, x, cont, c_diff, h_diff))
    out = subprocess.run(
        [str(caffe_unit), str(num), str(dim)], input=raw, capture_output=True
    ).stdout
    want = np.frombuffer(out, f32)
    acts = np.zeros((num, 4 * dim), f32)
    c, tanh_c, h, c_prev_diff = np.zeros((4, num, dim), f32)
    x_diff = np.zeros_like(x)
    with kernels.forced(numpy_paths):
        lstm_unit_forward(c_prev, x, cont, acts, c, tanh_c, h)
        lstm_unit_backward(c_prev, acts, tanh_c, c_diff, h_diff, c_prev_diff, x_diff)
    got = np.concatenate([a.ravel() for a in (c, h, c_prev_diff, x_diff)])
    assert got.size == want.size
    differ = got.view(np.uint32) != want.view(np.uint32)
    assert not differ.any(), f"{differ.sum()} of {got.size} differ"


# -- weights, snapshots, debug_info ---------------------------------------------------

NET = """
name: "seq"
layer { name: "input" type: "Input" top: "x" top: "cont"
  input_param { shape { dim: 3 dim: 2 dim: 5 } shape { dim: 3 dim: 2 } } }
layer { name: "lstm1" type: "LSTM" bottom: "x" bottom: "cont" top: "h"
  recurrent_param { num_output: 4 } }
"""


def test_caffe_layout_weights_load_by_layer_name(tmp_path: Path) -> None:
    """A .caffemodel with Caffe's three LSTM blobs (W_xc 16 x 5, b_c 16,
    W_hc 16 x 4, gate rows i, f, o, g) loads, and the net computes the
    unrolled formulas with them; a wrong blob count is refused."""
    net_param = text_format.Parse(NET, caffe_pb2.NetParameter())
    rng = np.random.default_rng(4)
    weights = [rng.normal(0, 0.5, s) for s in ((16, 5), (16,), (16, 4))]
    model = caffe_pb2.NetParameter(name="seq")
    layer = model.layer.add(name="lstm1", type="LSTM")
    for w in weights:
        b = layer.blobs.add()
        b.shape.dim.extend(w.shape)
        b.data.extend(w.astype(np.float32).ravel().tolist())
    path = tmp_path / "seq.caffemodel"
    path.write_bytes(model.SerializeToString())
    net = Net(net_param, caffe_pb2.TEST, quiet=True)
    net.copy_trained_layers_from(path)
    x = rng.uniform(-1, 1, (3, 2, 5))
    cont = np.array([[0, 0], [1, 1], [1, 0]])
    net.blob_by_name("x").data[...] = x
    net.blob_by_name("cont").data[...] = cont
    net.forward()
    zero = np.zeros((2, 4))
    f32 = [w.astype(np.float32) for w in weights]
    want, _, _ = lstm_reference(x.astype(np.float32), cont, f32, zero, zero)
    np.testing.assert_allclose(net.blob_by_name("h").data, want, atol=2e-6)
    # save and load back: the same three blobs in the same order
    saved = net.to_proto()
    lstm = next(p for p in saved.layer if p.name == "lstm1")
    assert [tuple(b.shape.dim) for b in lstm.blobs] == [(16, 5), (16,), (16, 4)]
    del layer.blobs[2]
    path.write_bytes(model.SerializeToString())
    with pytest.raises(CaffesolveError, match="file has 2, net has 3"):
        Net(net_param, caffe_pb2.TEST, quiet=True).copy_trained_layers_from(path)


def test_carried_state_goes_into_snapshots() -> None:
    """get_state holds the state the next forward starts from; a layer given
    it continues exactly where the first left off."""
    bottom = make_bottoms(3, 2, [0, 0, 1, 1, 1, 1], dtype=np.float32)
    a, b = make_layer("LSTM"), make_layer("LSTM")
    top_a, top_b = tops(1, np.float32), tops(1, np.float32)
    a.setup(bottom, top_a)
    b.setup(bottom, top_b)
    a.forward(bottom, top_a)
    bottom[1].data[...] = 1
    b.set_state(a.get_state())
    a.forward(bottom, top_a)
    b.forward(bottom, top_b)
    np.testing.assert_array_equal(top_a[0].data, top_b[0].data)
    a.reset()
    a.forward(bottom, top_a)
    assert not np.array_equal(top_a[0].data, top_b[0].data)
    assert make_layer("LSTM", expose_hidden=True).get_state() is None


def test_debug_info_logs_the_unrolled_nets_lines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    layer = make_layer("LSTM", debug_info=True)
    bottom = make_bottoms(2, 2, [0, 0, 1, 1])
    top = tops(1)
    layer.setup(bottom, top)
    stream = io.StringIO()
    monkeypatch.setattr(LOG, "streams", [stream])
    monkeypatch.setattr(LOG, "quiet", False)
    layer.forward(bottom, top)
    top[0].diff[...] = 1
    layer.backward(top, [True, False], bottom)
    text = stream.getvalue()
    mean = np.abs(top[0].data).mean()
    assert f"[Forward] Layer lstm1_h_concat, top blob h data: {mean:.6g}" in text
    assert "[Forward] Layer lstm1_unit_2, top blob c_2 data:" in text
    assert "[Forward] Layer lstm1_transform_1, param blob W_hc data:" in text
    assert "[Backward] Layer lstm1_unit_2, bottom blob gate_input_2 diff:" in text
    assert "[Backward] Layer lstm1_x_transform, param blob 1 diff:" in text


# -- learning a sequence: configs/lstm_sine ------------------------------------------


@pytest.fixture
def sine_workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copytree(ROOT / "configs" / "lstm_sine", tmp_path / "configs" / "lstm_sine")
    write_sine_dataset(tmp_path / "data" / "sine", steps=(800, 200))
    monkeypatch.chdir(tmp_path)
    return tmp_path


SOLVER = "configs/lstm_sine/lstm_sine_solver.prototxt"


def test_sine_example_learns(sine_workdir: Path) -> None:
    """The example's LSTM + InnerProduct + EuclideanLoss predicts the next
    value of noisy sine waves: in 250 iterations the loss (averaged over 20)
    falls to well under a tenth of its start (about 2.3 -> 0.08)."""
    overrides = ["average_loss=20", "test_initialization=false", "snapshot=0"]
    solver = create_solver(load_solver(SOLVER, overrides), SOLVER)
    solver.step(1)
    start = float(solver.smoothed_loss)
    solver.step(249)
    assert start > 1.0
    assert float(solver.smoothed_loss) < 0.1 * start


def test_sine_example_resumes_bit_identically(sine_workdir: Path) -> None:
    """4 + 4 iterations through a snapshot equal 8 straight: the LSTM's
    carried state (cont continues across batches) is in the snapshot."""
    common = ["test_interval=3", "test_iter=2", "snapshot_after_train=true"]
    straight = tools.train(SOLVER, overrides=[*common, "max_iter=8", "snapshot=0"])
    tools.train(SOLVER, overrides=[*common, "max_iter=4", "snapshot=0"])
    state = "data/sine/lstm_sine_iter_4.solverstate"
    resumed = tools.train(
        SOLVER, overrides=[*common, "max_iter=8", "snapshot=0"], snapshot=state
    )
    for a, b in zip(straight.net.learnable_params, resumed.net.learnable_params):
        np.testing.assert_array_equal(a.data, b.data)


CAPTION_NET = """
name: "LRCNLike"
layer { name: "input" type: "Input" top: "words" top: "cont" top: "image"
  top: "target" input_param { shape { dim: 6 dim: 4 } shape { dim: 6 dim: 4 }
  shape { dim: 4 dim: 5 } shape { dim: 6 dim: 4 } } }
layer { name: "embed" type: "Embed" bottom: "words" top: "embedded"
  embed_param { input_dim: 12 num_output: 8 bias_term: false
    weight_filler { type: "uniform" min: -0.08 max: 0.08 } } }
layer { name: "lstm1" type: "LSTM" bottom: "embedded" bottom: "cont" top: "lstm1"
  recurrent_param { num_output: 16
    weight_filler { type: "uniform" min: -0.08 max: 0.08 }
    bias_filler { type: "constant" value: 0 } } }
layer { name: "lstm2" type: "LSTM" bottom: "lstm1" bottom: "cont" bottom: "image"
  top: "lstm2"
  recurrent_param { num_output: 16
    weight_filler { type: "uniform" min: -0.08 max: 0.08 }
    bias_filler { type: "constant" value: 0 } } }
layer { name: "predict" type: "InnerProduct" bottom: "lstm2" top: "predict"
  inner_product_param { num_output: 10 axis: 2
    weight_filler { type: "uniform" min: -0.08 max: 0.08 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "predict" bottom: "target"
  top: "loss" loss_param { ignore_label: -1 } softmax_param { axis: 2 } }
"""


def test_lrcn_style_captioning_net_learns() -> None:
    """The shape of Caffe's LRCN captioning net (factored: Embed and an LSTM
    over the words, a second LSTM with the image features as static input,
    InnerProduct and SoftmaxWithLoss over axis 2 with ignore_label for the
    padding) learns its batch: the loss falls from ln(10) to under a tenth."""
    param = caffe_pb2.SolverParameter(
        type="Adam", base_lr=0.03, momentum=0.9, momentum2=0.999, max_iter=1,
        lr_policy="fixed", display=0, random_seed=1701, clip_gradients=5,
        snapshot_after_train=False,
    )  # fmt: skip
    text_format.Parse(CAPTION_NET, param.net_param)
    solver = create_solver(param)
    rng = np.random.default_rng(0)
    net = solver.net
    net.blob_by_name("words").data[...] = rng.integers(0, 12, (6, 4))
    cont = np.ones((6, 4))
    cont[0] = 0
    net.blob_by_name("cont").data[...] = cont
    net.blob_by_name("image").data[...] = rng.uniform(-1, 1, (4, 5))
    target = rng.integers(0, 10, (6, 4))
    target[4:, 1] = -1  # a shorter sentence, padded
    net.blob_by_name("target").data[...] = target
    solver.step(1)
    start = float(solver.smoothed_loss)
    solver.step(100)
    assert abs(start - math.log(10)) < 0.05
    assert float(solver.smoothed_loss) < 0.1 * start
    assert len(net.layer_by_name("lstm2").blobs) == 4  # W_xc, b_c, W_xc_static, W_hc
