"""AdaDelta (Caffe's adadelta_solver.cpp)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from caffesolve.solvers.sgd import SGDSolver

F32 = np.float32


def adadelta_update(
    diff: npt.NDArray[np.float32],
    history: npt.NDArray[np.float32],
    update_history: npt.NDArray[np.float32],
    local_rate: float,
    momentum: float,
    delta: float,
) -> None:
    """AdaDelta, in place (adadelta_solver.cpp):

    h = momentum*h + (1-momentum)*diff^2;
    upd = diff * sqrt((h2 + delta) / (h + delta));
    h2 = momentum*h2 + (1-momentum)*upd^2; diff = local_rate*upd.
    """
    m = F32(momentum)
    one_minus_m = F32(1) - m
    d = F32(delta)
    history *= m
    history += one_minus_m * (diff * diff)
    update = update_history + d
    np.divide(update, history + d, out=update)
    np.sqrt(update, out=update)
    diff *= update
    update_history *= m
    update_history += one_minus_m * (diff * diff)
    diff *= F32(local_rate)


class AdaDeltaSolver(SGDSolver):
    """AdaDelta: history holds all squared-diff blobs, then all squared updates."""

    type = "AdaDelta"
    history_blocks = 2

    def compute_update_value(self, param_id: int, rate: float) -> None:
        param = self.net.learnable_params[param_id]
        offset = len(self.net.learnable_params)
        adadelta_update(
            param.diff,
            self.history[param_id].data,
            self.history[offset + param_id].data,
            self.local_rate(param_id, rate),
            self.param.momentum,
            self.param.delta,
        )
