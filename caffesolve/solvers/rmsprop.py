"""RMSProp (Caffe's rmsprop_solver.cpp)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from caffesolve.solvers.sgd import SGDSolver

F32 = np.float32


def rmsprop_update(
    diff: npt.NDArray[np.float32],
    history: npt.NDArray[np.float32],
    local_rate: float,
    rms_decay: float,
    delta: float,
    scratch: npt.NDArray[np.float32] | None = None,
) -> None:
    """RMSProp, in place: history = rms_decay*history + (1-rms_decay)*diff^2;
    diff = local_rate * diff / (sqrt(history) + delta) (rmsprop_solver.cpp).
    `scratch` (shaped like diff) saves allocating the temporaries.
    """
    decay = F32(rms_decay)
    history *= decay
    square = np.multiply(diff, diff, out=scratch)
    square *= F32(1) - decay
    history += square
    update = np.sqrt(history, out=square)
    update += F32(delta)
    np.divide(diff, update, out=update)
    np.multiply(update, F32(local_rate), out=diff)


class RMSPropSolver(SGDSolver):
    """RMSProp: rates from a running mean of squared diffs."""

    type = "RMSProp"

    def check_param(self) -> None:
        """Caffe's RMSPropSolver::constructor_sanity_check."""
        super().check_param()
        if self.param.momentum != 0:
            raise self.param_error("momentum", "Momentum cannot be used with RMSProp.")
        if not 0 <= self.param.rms_decay < 1:
            raise self.param_error("rms_decay", "rms_decay should lie between 0 and 1.")

    def compute_update_value(self, param_id: int, rate: float) -> None:
        param = self.net.learnable_params[param_id]
        rmsprop_update(
            param.diff,
            self.history[param_id].data,
            self.local_rate(param_id, rate),
            self.param.rms_decay,
            self.param.delta,
            self.scratch(param_id),
        )
