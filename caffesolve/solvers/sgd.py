"""SGDSolver: Caffe's ApplyUpdate skeleton and the momentum SGD formula.

The update order lives only here (sgd_solver.cpp ApplyUpdate): the rate of
this iteration, ClipGradients over the whole net, then per learnable param
Normalize (iter_size), Regularize (L2/L1 weight decay), ComputeUpdateValue,
and finally `net.update()` (data -= diff) and `iter += 1`. Other solvers
override `compute_update_value` (and `history_blocks`) only, or, with SGD's
arguments, just `update_rule` (Nesterov).

All arithmetic is float32 in place on the params' arrays, as Caffe's CPU path.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from caffesolve import kernels, lr_policy
from caffesolve import log as msg
from caffesolve.blob import Blob
from caffesolve.solvers.base import Solver

F32 = np.float32


# Arrays smaller than this are updated by NumPy: a compiled call costs a few
# microseconds more than an array operation.
COMPILED_MIN_SIZE = 4096


def _compiled_pass(a: npt.NDArray[np.floating], b: npt.NDArray[np.floating]) -> bool:
    """True when the compiled kernels take an element-wise update of a and b
    (large enough to pay the call)."""
    return a.size >= COMPILED_MIN_SIZE and kernels.takes(a, b)


def sgd_update(
    diff: npt.NDArray[np.float32],
    history: npt.NDArray[np.float32],
    local_rate: float,
    momentum: float,
    scratch: npt.NDArray[np.float32] | None = None,
) -> None:
    """SGD, in place: history = momentum*history + local_rate*diff;
    diff = history (sgd_solver.cpp ComputeUpdateValue). `scratch`, shaped like
    diff, saves allocating the local_rate*diff temporary. One compiled pass
    (kernels.py, the same bits) where it applies."""
    if _compiled_pass(diff, history):
        kernel = kernels.compiled(sgd_update_kernel)
        kernel(diff.reshape(-1), history.reshape(-1), F32(local_rate), F32(momentum))
        return
    history *= F32(momentum)
    history += np.multiply(diff, F32(local_rate), out=scratch)
    np.copyto(diff, history)


def l2_regularize(
    diff: npt.NDArray[np.float32],
    data: npt.NDArray[np.float32],
    local_decay: float,
    scratch: npt.NDArray[np.float32] | None = None,
) -> None:
    """L2 weight decay, in place: diff += local_decay * data (sgd_solver.cpp).
    One compiled pass (kernels.py, the same bits) where it applies."""
    if _compiled_pass(diff, data):
        kernel = kernels.compiled(l2_regularize_kernel)
        kernel(diff.reshape(-1), data.reshape(-1), F32(local_decay))
        return
    diff += np.multiply(data, F32(local_decay), out=scratch)


def l1_regularize(
    diff: npt.NDArray[np.float32],
    data: npt.NDArray[np.float32],
    local_decay: float,
    scratch: npt.NDArray[np.float32] | None = None,
) -> None:
    """L1 weight decay, in place: diff += local_decay * sign(data)."""
    sign = np.sign(data, out=scratch)
    diff += np.multiply(sign, F32(local_decay), out=sign)


REGULARIZERS = {"L2": l2_regularize, "L1": l1_regularize}


def clip_scale(sumsq_diff: float, clip_gradients: float) -> tuple[float, float] | None:
    """(l2norm, clip/l2norm) if the diffs' L2 norm exceeds clip_gradients
    (>= 0), else None (sgd_solver.cpp ClipGradients), in float."""
    if clip_gradients < 0:
        return None
    l2norm = F32(np.sqrt(F32(sumsq_diff)))
    if l2norm > F32(clip_gradients):
        return float(l2norm), float(F32(clip_gradients) / l2norm)
    return None


class SGDSolver(Solver):
    """Stochastic gradient descent with momentum (Caffe's SGDSolver)."""

    type = "SGD"
    # The momentum formula, with sgd_update's arguments: (diff, history,
    # local_rate, momentum, scratch). Nesterov swaps in its own.
    update_rule = staticmethod(sgd_update)
    # History blobs per learnable param: 1 (SGD ...) or 2 (AdaDelta, Adam),
    # laid out as Caffe does: all first-block blobs, then all second-block.
    history_blocks = 1

    def pre_solve(self) -> None:
        """Caffe's PreSolve: zero history, one blob per learnable param (x blocks)."""
        params = self.net.learnable_params
        self.history = [
            Blob(p.shape, name=f"history{b}_{i}", xp=self.net.backend.xp)
            for b in range(self.history_blocks)
            for i, p in enumerate(params)
        ]
        self._scratch: dict[int, npt.NDArray[np.float32]] = {}

    def scratch(self, param_id: int) -> npt.NDArray[np.float32]:
        """A work array shaped like learnable param `param_id`, reused by every
        iteration's update for its temporaries (not solver state: never saved)."""
        p = self.net.learnable_params[param_id]
        buf = self._scratch.get(param_id)
        if buf is None or buf.shape != p.diff.shape or buf.dtype != p.diff.dtype:
            buf = self._scratch[param_id] = np.empty_like(p.diff)
        return buf

    # -- the update, in Caffe's order ----------------------------------------------

    def apply_update(self) -> None:
        """SGDSolver::ApplyUpdate: the one place that fixes the update order."""
        rate = self.get_learning_rate()
        if self.param.display and self.iter % self.param.display == 0:
            self.log.info(*msg.iteration_lr(self.iter, rate))
        self.clip_gradients()
        for param_id in range(len(self.net.learnable_params)):
            self.normalize(param_id)
            self.regularize(param_id)
            self.compute_update_value(param_id, rate)
        self.net.update()
        self.iter += 1

    def get_learning_rate(self) -> float:
        """This iteration's rate (lr_policy.py); advances current_step as Caffe."""
        step = lr_policy.update_current_step(self.param, self.iter, self.current_step)
        if self.param.lr_policy == "multistep" and step != self.current_step:
            self.log.info(*msg.multistep_status(self.iter, step))
        self.current_step = step
        return lr_policy.get_learning_rate(self.param, self.iter, self.current_step)

    def clip_gradients(self) -> None:
        """Scale all diffs by clip_gradients / L2 norm when the norm exceeds it."""
        clip = self.param.clip_gradients
        if clip < 0:
            return
        params = self.net.learnable_params
        sumsq = F32(0)
        for p in params:
            d = p.diff.ravel()
            sumsq += F32(np.dot(d, d))
        scaled = clip_scale(float(sumsq), clip)
        if scaled is None:
            return
        l2norm, scale = scaled
        self.log.info(*msg.gradient_clipping(l2norm, clip, scale))
        for p in params:
            p.diff *= F32(scale)

    def normalize(self, param_id: int) -> None:
        """Normalize: diff /= iter_size (as diff *= 1/iter_size, in float)."""
        if self.param.iter_size == 1:
            return
        self.net.learnable_params[param_id].diff *= F32(1) / F32(self.param.iter_size)

    def regularize(self, param_id: int) -> None:
        """local_decay = weight_decay * decay_mult; L2 or L1 added to diff."""
        local_decay = F32(self.param.weight_decay) * F32(
            self.net.params_weight_decay[param_id]
        )
        if not local_decay:
            return
        kind = self.param.regularization_type
        regularizer = REGULARIZERS.get(kind)
        if regularizer is None:
            raise self.param_error(
                "regularization_type", f"Unknown regularization type: {kind}"
            )
        p = self.net.learnable_params[param_id]
        regularizer(p.diff, p.data, float(local_decay), self.scratch(param_id))

    def local_rate(self, param_id: int, rate: float) -> float:
        """local_rate = rate * lr_mult, in float."""
        return float(F32(rate) * F32(self.net.params_lr[param_id]))

    def compute_update_value(self, param_id: int, rate: float) -> None:
        p = self.net.learnable_params[param_id]
        self.update_rule(
            p.diff,
            self.history[param_id].data,
            self.local_rate(param_id, rate),
            self.param.momentum,
            self.scratch(param_id),
        )


# -- the compiled loops ------------------------------------------------------------
#
# The two element-wise steps of an SGD update in one pass each, over flat
# contiguous arrays, instead of NumPy's one pass per operation. The operations
# and their rounding are the NumPy path's (sgd.py): every product is rounded
# to the array's type before the sum (scalars come as float32, as Caffe's
# Dtype), so both give the same bits.


def l2_regularize_kernel(diff, data, local_decay):  # type: ignore[no-untyped-def]
    """diff += local_decay * data (Caffe's Regularize, L2)."""
    for k in range(diff.size):
        diff[k] += local_decay * data[k]


def sgd_update_kernel(diff, history, local_rate, momentum):  # type: ignore[no-untyped-def]
    """history = momentum * history + local_rate * diff; diff = history
    (Caffe's SGD ComputeUpdateValue)."""
    for k in range(diff.size):
        h = momentum * history[k] + local_rate * diff[k]
        history[k] = h
        diff[k] = h
