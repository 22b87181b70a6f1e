"""Recurrent layers: RNN, LSTM and LSTMUnit (Caffe's recurrent_layer.cpp,
rnn_layer.cpp, lstm_layer.cpp and lstm_unit_layer.cpp).

Caffe's RecurrentLayer builds an unrolled Net inside itself, one group of
layers per time step, and runs it. caffesolve does not build that Net (so
this module imports no caffesolve.net): it runs the same recurrence directly,
a loop over the T time steps with one batched GEMM per step, doing each
unrolled layer's operations in that layer's order and precision. The input
projection of all T steps is one InnerProduct over T*N rows, as in Caffe's
unrolled net (caffesolve's own InnerProductLayer runs it). LSTM, for
t = 1..T (RNN likewise with W_xh, W_hh and TanH):

    W_xc_x         = x W_xc^T + b_c                  (x_transform, all steps)
    W_xc_x_static  = x_static W_xc_static^T          (static input, if any)
    h_conted_{t-1} = cont_t * h_{t-1}                (Scale: reset at cont 0)
    gate_input_t   = h_conted_{t-1} W_hc^T + W_xc_x_t [+ W_xc_x_static]
    c_t, h_t       = LSTMUnit(c_{t-1}, gate_input_t, cont_t)

Backward runs the steps from T down to 1 as the unrolled net does: the
recurrent weights' diffs gain one GEMM per step in that order (the shared
W_hc of the unrolled net), the static input's diff is the sum of the gate
diffs for t = 1..T in that order (its Split), nothing flows into `cont`, and
with expose_hidden no diff flows out of the final-state tops or into the
initial-state bottoms (Caffe shares only their data with the unrolled net;
caffesolve zeroes those bottom diffs). Without expose_hidden each forward
starts from the previous forward's final state (zero at first), which the
`cont` indicators reset; solver snapshots keep it (get_state).

The param blobs are those of Caffe's unrolled net, in its order, so Caffe's
.caffemodel files load: LSTM W_xc (4H x K), b_c (4H), [W_xc_static (4H x
K_static)], W_hc (4H x H), gate rows in the order i, f, o, g; RNN W_xh, b_h,
[W_xh_static], W_hh, W_ho, b_o.
"""

from __future__ import annotations

import base64
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from caffesolve.blob import Blob
from caffesolve.layers import register
from caffesolve.layers.base import Layer
from caffesolve.layers.inner_product import InnerProductLayer
from caffesolve.log import LOG, fmt32
from caffesolve.ops.lstm_unit import lstm_unit_backward, lstm_unit_forward
from caffesolve.proto import caffe_pb2

Array = npt.NDArray[np.float32]


@register
class LSTMUnitLayer(Layer):
    """Caffe's LSTMUnit (lstm_unit_layer.cpp): bottoms c_prev (1 x N x H),
    gate inputs X (1 x N x 4H, gates i, f, o, g) and cont (1 x N); tops c and
    h (1 x N x H). See lstm_unit_forward / lstm_unit_backward. No diff into
    cont (Caffe: "Cannot backpropagate to sequence indicators")."""

    type = "LSTMUnit"
    exact_num_bottom_blobs = 3
    exact_num_top_blobs = 2

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        num = bottom[0].shape[1] if bottom[0].num_axes > 1 else -1
        for i, b in enumerate(bottom):
            axes = 2 if i == 2 else 3
            if b.num_axes != axes or b.shape[0] != 1 or b.shape[1] != num:
                raise self.shape_error(
                    f"bottom[{i}] '{b.name}' has shape "
                    f"{b.shape_string()}; LSTMUnit takes c_prev 1 x N x H, "
                    "gate inputs 1 x N x 4H and cont 1 x N"
                )
        dim = bottom[0].shape[2]
        if bottom[1].shape[2] != 4 * dim:
            raise self.shape_error(
                f"bottom[1] '{bottom[1].name}' has "
                f"{bottom[1].shape[2]} gate inputs per stream; c_prev's {dim} "
                f"cells take 4 * {dim} = {4 * dim}"
            )
        top[0].reshape(bottom[0].shape)
        top[1].reshape(bottom[0].shape)
        dtype = bottom[0].data.dtype
        self.acts = self.buffer("acts", bottom[1].shape[1:], dtype)
        self.tanh_c = self.buffer("tanh_c", bottom[0].shape[1:], dtype)

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        c_prev, x, cont = (b.data[0] for b in bottom)
        lstm_unit_forward(
            c_prev, x, cont, self.acts, top[0].data[0], self.tanh_c, top[1].data[0]
        )

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        if propagate_down[2]:
            raise self.config_error("Cannot backpropagate to sequence indicators.")
        if not (propagate_down[0] or propagate_down[1]):
            return
        lstm_unit_backward(
            bottom[0].data[0],
            self.acts,
            self.tanh_c,
            top[0].diff[0],
            top[1].diff[0],
            bottom[0].diff[0],
            bottom[1].diff[0],
        )

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index != 2


def _encode(a: Array) -> dict[str, Any]:
    """An array as JSON: shape, dtype and its bytes in base64 (exact)."""
    raw = np.ascontiguousarray(a)
    return {
        "shape": list(raw.shape),
        "dtype": raw.dtype.str,
        "data": base64.b64encode(raw.tobytes()).decode("ascii"),
    }


def _decode(state: dict[str, Any]) -> Array:
    data = base64.b64decode(state["data"])
    return np.frombuffer(data, np.dtype(state["dtype"])).reshape(state["shape"])


# -- RecurrentLayer -----------------------------------------------------------------


class UnrolledInnerProduct:
    """One InnerProduct layer of Caffe's unrolled net (x_transform, the
    static input's, or a step's transform), run by caffesolve's own
    InnerProductLayer on arrays: the recurrent layer's bottoms or the views of
    one step in its buffers. Its param blobs are the recurrent layer's."""

    def __init__(
        self,
        owner: RecurrentLayer,
        name: str,
        bottom: Array,
        num_output: int,
        axis: int,
        bias: bool,
    ) -> None:
        p = owner.layer_param.recurrent_param
        lp = caffe_pb2.LayerParameter(name=f"{owner.name}_{name}", type="InnerProduct")
        ip = lp.inner_product_param
        ip.num_output, ip.bias_term, ip.axis = num_output, bias, axis
        ip.weight_filler.CopyFrom(p.weight_filler)
        if bias:
            ip.bias_filler.CopyFrom(p.bias_filler)
        self.layer = InnerProductLayer(lp, owner.phase, owner.rng)
        self.layer.xp = owner.xp
        self.bottom = Blob(dtype=owner.dtype, xp=owner.xp)
        self.top = Blob(dtype=owner.dtype, xp=owner.xp)
        self.bottom.data = bottom
        self.layer.setup([self.bottom], [self.top])  # fills W (and b): Caffe's order

    def reshape(self, bottom: Array) -> None:
        """Size the top for bottoms shaped like `bottom`."""
        self.bottom.data = bottom
        self.layer.reshape([self.bottom], [self.top])

    def forward(self, x: Array, out: Array) -> None:
        """out = x W^T (+ b)."""
        self.bottom.data, self.top.data = x, out
        self.layer.forward([self.bottom], [self.top])

    def backward(self, x: Array, dy: Array, dx: Array | None) -> None:
        """W diff += dy^T x (b diff += column sums of dy); dx = dy W if given."""
        self.bottom.data, self.top.diff = x, dy
        if dx is not None:
            self.bottom.diff = dx
        self.layer.backward([self.top], [dx is not None], [self.bottom])


class RecurrentLayer(Layer):
    """Caffe's RecurrentLayer (recurrent_layer.cpp): bottoms x (T x N x ...),
    cont (T x N), optional x_static (N x ...), then with expose_hidden the
    initial states (1 x N x H each); tops the output (T x N x H), then with
    expose_hidden the final states. Subclasses write the recurrence."""

    # The recurrent states, as Caffe names them (h_0, c_0 -> h_T, c_T).
    states: ClassVar[tuple[str, ...]] = ()
    # Rows of the input weights per output (4 gates for LSTM).
    gates: ClassVar[int] = 1
    # The unrolled net's names: x_transform's top, the static input's layer.
    x_names: ClassVar[tuple[str, str]] = ("", "")
    # The unrolled net's param names (the static input's weight third).
    param_names: ClassVar[tuple[str, ...]] = ()
    # The unrolled net's names at step t (s = t - 1), for debug_info: the
    # recurrent InnerProduct layer, its top and its param; the sum and its top.
    step_names: ClassVar[tuple[str, ...]] = ()

    def configure(self) -> None:
        p = self.layer_param.recurrent_param
        self.expose_hidden = bool(p.expose_hidden)
        self.debug_info = bool(p.debug_info)
        self.exposed = len(self.states) if self.expose_hidden else 0
        self.min_bottom_blobs = 2 + self.exposed
        self.max_bottom_blobs = 3 + self.exposed
        self.exact_num_top_blobs = 1 + self.exposed
        self.N = -1

    # -- setup -----------------------------------------------------------------

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        x = bottom[0]
        if x.num_axes < 2:
            raise self.shape_error(
                f"bottom[0] '{x.name}' has shape {x.shape_string()}; it must "
                "have at least 2 axes -- (#timesteps, #streams, ...)"
            )
        self.T, num = x.shape[0], x.shape[1]
        if self.T == 0:
            raise self.shape_error(f"bottom[0] '{x.name}' has no timesteps")
        LOG.info(
            "recurrent_layer.cpp:20",
            "Initializing recurrent layer: assuming input batch contains "
            f"{self.T} timesteps of {num} independent streams.",
        )
        self._check_cont(bottom)
        p = self.layer_param.recurrent_param
        if p.num_output == 0:
            raise self.config_error("recurrent_param.num_output must be positive")
        self.H = int(p.num_output)
        self.static_input = len(bottom) > 2 + self.exposed
        if self.static_input:
            self._check_static(bottom[2], num)
        self.dtype = x.data.dtype
        # The unrolled net's InnerProducts in its order, which is the order
        # of their fills and of the params: x_transform, static, recurrence.
        rows = self.gates * self.H
        self.x_transform = UnrolledInnerProduct(
            self, "x_transform", x.data, rows, axis=2, bias=True
        )
        self.inner = [self.x_transform]
        if self.static_input:
            self.static_transform = UnrolledInnerProduct(
                self, self.x_names[1], bottom[2].data, rows, axis=1, bias=False
            )
            self.inner.append(self.static_transform)
        step = self.xp.zeros((1, num, self.H), self.dtype)  # one step's h
        self.inner += self.make_step_transforms(step)
        self.blobs = [b for ip in self.inner for b in ip.layer.blobs]
        names = [n for n in self.param_names if self.static_input or "static" not in n]
        for i, name in enumerate(names):
            LOG.info("recurrent_layer.cpp:150", f"Adding parameter {i}: {name}")
        self.param_propagate_down = [True] * len(self.blobs)

    def make_step_transforms(self, step: Array) -> list[UnrolledInnerProduct]:
        """The per-step InnerProducts (their weights shared by all steps),
        for bottoms shaped like `step`."""
        raise NotImplementedError

    def _check_cont(self, bottom: list[Blob]) -> None:
        cont = bottom[1]
        if cont.shape != (self.T, bottom[0].shape[1]):
            raise self.shape_error(
                f"bottom[1] '{cont.name}' (cont) has shape {cont.shape_string()}; "
                f"it must be exactly 2 axes -- (#timesteps, #streams) = "
                f"{self.T} x {bottom[0].shape[1]}"
            )

    def _check_static(self, b: Blob, num: int) -> None:
        if b.num_axes < 1 or b.shape[0] != num:
            raise self.shape_error(
                f"bottom[2] '{b.name}' (the static input) has shape "
                f"{b.shape_string()}; its first axis must be the {num} streams"
            )

    def _sync_params(self) -> None:
        """Hand the inner InnerProducts this layer's current param blobs (a
        Net may have swapped some for shared ones). They compute every param
        diff whatever param_propagate_down says, as the unrolled net does in
        Caffe: a param with lr_mult 0 still counts in clip_gradients' norm."""
        start = 0
        for ip in self.inner:
            count = len(ip.layer.blobs)
            ip.layer.blobs = self.blobs[start : start + count]
            ip.layer.param_propagate_down = [True] * count
            start += count

    # -- reshape, forward, backward ------------------------------------------------

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        x = bottom[0]
        if x.num_axes < 2 or x.shape[0] != self.T:
            raise self.shape_error(
                f"bottom[0] '{x.name}' has shape {x.shape_string()}: input "
                f"number of timesteps changed (was {self.T})"
            )
        self._check_cont(bottom)
        n = x.shape[1]
        if self.static_input:
            self._check_static(bottom[2], n)
        state_shape = (1, n, self.H)
        offset = 2 + self.static_input
        for i, b in enumerate(bottom[offset:], offset):
            if b.shape != state_shape:
                raise self.shape_error(
                    f"bottom[{i}] '{b.name}' shape must match hidden state input "
                    f"shape: 1 {n} {self.H} ({n * self.H})"
                )
        self.x_transform.reshape(x.data)
        if self.static_input:
            self.static_transform.reshape(bottom[2].data)
        if n != self.N:
            self.N = n
            self.allocate(self.T, n, self.dtype)
            for ip in self.inner[1 + self.static_input :]:
                ip.reshape(self.h_conted[0])
        top[0].reshape((self.T, n, self.H))
        for t in top[1:]:
            t.reshape(state_shape)

    def allocate(self, steps: int, num: int, dtype: Any) -> None:
        """Make the state and work arrays for `num` streams (zero state)."""
        self.h_conted = self.xp.zeros((steps, 1, num, self.H), dtype)
        self.dh_conted = self.xp.zeros((1, num, self.H), dtype)

    def step_input(
        self,
        s: int,
        h_prev: Array,
        cont: Array,
        xw: Array,
        static: Array | None,
        out: Array,
    ) -> None:
        """Step t = s + 1's input, as the unrolled net's Scale, InnerProduct
        and Eltwise SUM compute it: h_conted_{t-1} = cont_t * h_{t-1};
        out = h_conted_{t-1} W^T, then + W_x_x_t, then + W_x_x_static."""
        h_conted = self.h_conted[s]
        self.xp.multiply(h_prev, cont[s][:, None], out=h_conted[0])
        self.recurrence.forward(h_conted, out)
        if self.debug_info:
            layer, top, param = (n.format(s=s, t=s + 1) for n in self.step_names[:3])
            self.debug("top", f"h_conted_{s}", f"h_conted_{s}", h_conted)
            self.debug("top", layer, top, out)
            self.debug("param", layer, param, self.recurrence.layer.blobs[0].data)
        out += xw[s]
        if static is not None:
            out += static
        if self.debug_info:
            layer, top = (n.format(s=s, t=s + 1) for n in self.step_names[3:])
            self.debug("top", layer, top, out)

    def step_input_backward(
        self, s: int, cont: Array, diff: Array, h_prev_diff: Array
    ) -> None:
        """The recurrent InnerProduct's backward at step t = s + 1 (its weight
        diff gains one GEMM per step, in the order T..1, as the unrolled net's
        shared weight does), then for t > 1 the Scale's diff into h_{t-1}:
        h_prev_diff = cont_t * (diff W)."""
        dh_conted = self.dh_conted
        self.recurrence.backward(self.h_conted[s], diff, dh_conted if s else None)
        if self.debug_info:
            layer = self.step_names[0].format(s=s, t=s + 1)
            self.debug("param_diff", layer, "0", self.recurrence.layer.blobs[0].diff)
            if s:
                self.debug("bottom", layer, f"h_conted_{s}", dh_conted)
        if s:
            self.xp.multiply(dh_conted[0], cont[s][:, None], out=h_prev_diff)

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        self._sync_params()
        xw = self.x_transform.top
        self.x_transform.forward(bottom[0].data, xw.data)
        static = None
        if self.static_input:
            static = self.static_transform.top.data
            self.static_transform.forward(bottom[2].data, static)
        if self.debug_info:
            self.debug("top", "x_transform", self.x_names[0], xw.data)
            for j in range(2):
                self.debug(
                    "param", "x_transform", self.param_names[j], self.blobs[j].data
                )
            if static is not None:
                top_name = f"{self.x_names[1]}_preshape"
                self.debug("top", self.x_names[1], top_name, static)
                self.debug(
                    "param", self.x_names[1], self.param_names[2], self.blobs[2].data
                )
        offset = 2 + self.static_input
        initial = [b.data[0] for b in bottom[offset:]] if self.expose_hidden else None
        out = self.recurrent_forward(xw.data, bottom[1].data, static, initial)
        top[0].data[...] = out
        for t, state in zip(top[1:], self.final_states()):
            t.data[0] = state

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        if propagate_down[1]:
            raise self.config_error("Cannot backpropagate to sequence indicators.")
        self._sync_params()
        xw_diff = self.x_transform.top.diff
        self.recurrent_backward(top[0].diff, bottom[1].data, xw_diff)
        if self.static_input:
            total = self.static_transform.top.diff
            total[...] = xw_diff[0]
            for s in range(1, self.T):  # the Split's sum, t = 1..T in order
                total += xw_diff[s]
            dx = bottom[2].diff if propagate_down[2] else None
            self.static_transform.backward(bottom[2].data, total, dx)
            self.debug("bottom", self.x_names[1], "x_static", bottom[2].diff)
            self.debug("param_diff", self.x_names[1], "0", self.blobs[2].diff)
        dx = bottom[0].diff if propagate_down[0] else None
        self.x_transform.backward(bottom[0].data, xw_diff, dx)
        self.debug("bottom", "x_transform", "x", bottom[0].diff)
        for j in range(2):
            self.debug("param_diff", "x_transform", str(j), self.blobs[j].diff)
        offset = 2 + self.static_input
        for i in range(offset, len(bottom)):
            if propagate_down[i]:
                bottom[i].diff[...] = 0  # Caffe shares only these bottoms' data

    def recurrent_forward(
        self,
        xw: Array,
        cont: Array,
        static: Array | None,
        initial: list[Array] | None,
    ) -> Array:
        """Steps 1..T from the input projections `xw`; the T x N x H output."""
        raise NotImplementedError

    def recurrent_backward(self, top_diff: Array, cont: Array, xw_diff: Array) -> None:
        """Steps T..1: param diffs, and the input projections' diff `xw_diff`."""
        raise NotImplementedError

    def final_states(self) -> list[Array]:
        """The N x H states after step T, in `states` order."""
        raise NotImplementedError

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index != 1

    # -- hidden state: Caffe's Reset, and snapshots --------------------------------

    def reset(self) -> None:
        """Caffe's RecurrentLayer::Reset: zero the state the next forward
        starts from."""
        for state in self.final_states():
            state[...] = 0

    def get_state(self) -> dict[str, Any] | None:
        """The state the next forward starts from (without expose_hidden), so
        a resumed run continues exactly; Caffe's solverstate lacks it."""
        if self.expose_hidden:
            return None
        return {"states": [_encode(s) for s in self.final_states()]}

    def set_state(self, state: dict[str, Any]) -> None:
        for target, saved in zip(self.final_states(), state["states"]):
            values = _decode(saved)
            if values.shape != target.shape:
                raise self.config_error(
                    f"saved recurrent state has shape {values.shape}, the layer "
                    f"{target.shape} (streams changed?)"
                )
            target[...] = values

    # -- debug_info: the unrolled net's lines (net.cpp Forward/BackwardDebugInfo) ---

    def debug(self, kind: str, layer: str, name: str, values: Array) -> None:
        """With recurrent_param.debug_info, one of the lines Caffe's unrolled
        net logs: mean |values| (Blob::asum_data() / count()) of a `kind` in
        {"top", "param", "bottom", "param_diff"} of the unrolled `layer`."""
        if not self.debug_info:
            return
        stage, what, source = {
            "top": ("Forward", "top blob", "net.cpp:593"),
            "param": ("Forward", "param blob", "net.cpp:605"),
            "bottom": ("Backward", "bottom blob", "net.cpp:621"),
            "param_diff": ("Backward", "param blob", "net.cpp:632"),
        }[kind]
        field = "diff" if stage == "Backward" else "data"
        mean = float(np.abs(values).sum(dtype=np.float32) / max(values.size, 1))
        LOG.info(
            source,
            f"    [{stage}] Layer {self.name}_{layer}, {what} {name} {field}: "
            f"{fmt32(mean)}",
        )


# -- LSTM -----------------------------------------------------------------------------


@register
class LSTMLayer(RecurrentLayer):
    """Caffe's LSTM (lstm_layer.cpp), unrolled as in the module docstring;
    the output is h_1..h_T."""

    type = "LSTM"
    states = ("h", "c")
    gates = 4
    x_names = ("W_xc_x", "W_xc_x_static")
    param_names = ("W_xc", "b_c", "W_xc_static", "W_hc")
    step_names = ("transform_{t}", "W_hc_h_{s}", "W_hc", "gate_input_{t}",
                  "gate_input_{t}")  # fmt: skip

    def make_step_transforms(self, step: Array) -> list[UnrolledInnerProduct]:
        self.recurrence = UnrolledInnerProduct(
            self, "transform", step, 4 * self.H, axis=2, bias=False
        )
        return [self.recurrence]

    def allocate(self, steps: int, num: int, dtype: Any) -> None:
        super().allocate(steps, num, dtype)
        h = self.H
        self.hs = self.xp.zeros((steps + 1, num, h), dtype)  # h_0 .. h_T
        self.cs = self.xp.zeros((steps + 1, num, h), dtype)  # c_0 .. c_T
        self.acts = self.xp.zeros((steps, num, 4 * h), dtype)  # i, f, o, g
        self.tanh_c = self.xp.zeros((steps, num, h), dtype)
        self.gate_input = self.xp.zeros((1, num, 4 * h), dtype)
        self.work = [self.xp.zeros((num, h), dtype) for _ in range(3)]

    def final_states(self) -> list[Array]:
        return [self.hs[self.T], self.cs[self.T]]

    def recurrent_forward(
        self,
        xw: Array,
        cont: Array,
        static: Array | None,
        initial: list[Array] | None,
    ) -> Array:
        hs, cs = self.hs, self.cs
        if initial is None:  # the previous forward's final state (Caffe's copy)
            hs[0], cs[0] = hs[self.T], cs[self.T]
        else:
            hs[0], cs[0] = initial
        gate = self.gate_input[0]
        for s in range(self.T):
            t = s + 1
            self.step_input(s, hs[s], cont, xw, static, self.gate_input)
            lstm_unit_forward(
                cs[s], gate, cont[s], self.acts[s], cs[t], self.tanh_c[s], hs[t]
            )
            self.debug("top", f"unit_{t}", f"c_{t}", cs[t])
            self.debug("top", f"unit_{t}", f"h_{t}", hs[t])
        self.debug("top", "h_concat", "h", hs[1:])
        return hs[1:]

    def recurrent_backward(self, top_diff: Array, cont: Array, xw_diff: Array) -> None:
        dh, dc, dc_prev = self.work
        dh[...] = top_diff[self.T - 1]  # h_T feeds only the output
        dc[...] = 0  # c_T's diff: Caffe's c_T top gets none
        for s in range(self.T - 1, -1, -1):
            t, gate_diff = s + 1, xw_diff[s : s + 1]
            lstm_unit_backward(
                self.cs[s], self.acts[s], self.tanh_c[s], dc, dh, dc_prev, gate_diff[0]
            )
            self.debug("bottom", f"unit_{t}", f"gate_input_{t}", gate_diff)
            self.step_input_backward(s, cont, gate_diff, dh)
            if s == 0:
                break  # h_0 and c_0 take no diff
            self.debug("bottom", f"unit_{t}", f"c_{s}", dc_prev)
            dh += top_diff[s - 1]  # h_s's Split: the Scale's diff + the output's
            dc, dc_prev = dc_prev, dc


# -- RNN ------------------------------------------------------------------------------


@register
class RNNLayer(RecurrentLayer):
    """Caffe's RNN (rnn_layer.cpp): h_t = tanh(cont_t * h_{t-1} W_hh^T +
    W_xh_x_t [+ W_xh_x_static]) with W_xh_x = x W_xh^T + b_h; output
    o_t = tanh(h_t W_ho^T + b_o), per step. TanH as caffesolve's TanH layer
    computes it (y = tanh(x), dx = dy * (1 - y^2))."""

    type = "RNN"
    states = ("h",)
    gates = 1
    x_names = ("W_xh_x", "W_xh_x_static")
    param_names = ("W_xh", "b_h", "W_xh_static", "W_hh", "W_ho", "b_o")
    step_names = ("W_hh_h_{s}", "W_hh_h_{s}", "W_hh", "h_input_sum_{t}",
                  "h_neuron_input_{t}")  # fmt: skip

    def make_step_transforms(self, step: Array) -> list[UnrolledInnerProduct]:
        h = self.H
        self.recurrence = UnrolledInnerProduct(self, "W_hh_h", step, h, 2, False)
        self.w_ho = UnrolledInnerProduct(self, "W_ho_h", step, h, 2, True)
        return [self.recurrence, self.w_ho]

    def allocate(self, steps: int, num: int, dtype: Any) -> None:
        super().allocate(steps, num, dtype)
        h = self.H
        self.hs = self.xp.zeros((steps + 1, 1, num, h), dtype)  # h_0 .. h_T
        self.o = self.xp.zeros((steps, num, h), dtype)
        self.work = [self.xp.zeros((1, num, h), dtype) for _ in range(3)]

    def final_states(self) -> list[Array]:
        return [self.hs[self.T, 0]]

    def recurrent_forward(
        self,
        xw: Array,
        cont: Array,
        static: Array | None,
        initial: list[Array] | None,
    ) -> Array:
        xp = self.xp
        hs = self.hs
        hs[0, 0] = hs[self.T, 0] if initial is None else initial[0]
        pre, z = self.work[:2]
        for s in range(self.T):
            t = s + 1
            self.step_input(s, hs[s, 0], cont, xw, static, pre)
            xp.tanh(pre, out=hs[t])
            self.debug("top", f"h_neuron_{t}", f"h_{t}", hs[t])
            self.w_ho.forward(hs[t], z)
            if self.debug_info:
                self.debug("top", f"W_ho_h_{t}", f"W_ho_h_{t}", z)
                self.debug("param", f"W_ho_h_{t}", "W_ho", self.blobs[-2].data)
                self.debug("param", f"W_ho_h_{t}", "b_o", self.blobs[-1].data)
            xp.tanh(z[0], out=self.o[s])
            self.debug("top", f"o_neuron_{t}", f"o_{t}", self.o[s])
        self.debug("top", "o_concat", "o", self.o)
        return self.o

    def recurrent_backward(self, top_diff: Array, cont: Array, xw_diff: Array) -> None:
        dz, dh, dh_scale = self.work
        for s in range(self.T - 1, -1, -1):
            t, o, h = s + 1, self.o[s], self.hs[s + 1]
            dz[0] = top_diff[s] * (1 - o * o)  # o_neuron_t (TanH)
            self.debug("bottom", f"o_neuron_{t}", f"W_ho_h_{t}", dz)
            self.w_ho.backward(h, dz, dh)
            self.debug("param_diff", f"W_ho_h_{t}", "0", self.blobs[-2].diff)
            self.debug("param_diff", f"W_ho_h_{t}", "1", self.blobs[-1].diff)
            if s < self.T - 1:  # h_t's Split: W_ho_h_t's diff + the Scale's
                dh += dh_scale
            self.debug("bottom", f"W_ho_h_{t}", f"h_{t}", dh)
            pre_diff = xw_diff[s : s + 1]
            pre_diff[...] = dh * (1 - h * h)  # h_neuron_t (TanH)
            self.debug("bottom", f"h_neuron_{t}", f"h_neuron_input_{t}", pre_diff)
            self.step_input_backward(s, cont, pre_diff, dh_scale[0])
