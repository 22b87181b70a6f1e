"""AdaGrad (Caffe's adagrad_solver.cpp)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from caffesolve.solvers.sgd import SGDSolver

F32 = np.float32


def adagrad_update(
    diff: npt.NDArray[np.float32],
    history: npt.NDArray[np.float32],
    local_rate: float,
    delta: float,
    scratch: npt.NDArray[np.float32] | None = None,
) -> None:
    """AdaGrad, in place: history += diff^2;
    diff = local_rate * diff / (sqrt(history) + delta) (adagrad_solver.cpp).
    `scratch` (shaped like diff) saves allocating the temporary.
    """
    history += np.multiply(diff, diff, out=scratch)
    update = np.sqrt(history, out=scratch)
    update += F32(delta)
    np.divide(diff, update, out=update)
    np.multiply(update, F32(local_rate), out=diff)


class AdaGradSolver(SGDSolver):
    """AdaGrad: per-element rates from the sum of squared diffs."""

    type = "AdaGrad"

    def check_param(self) -> None:
        """Caffe's AdaGradSolver::constructor_sanity_check."""
        super().check_param()
        if self.param.momentum != 0:
            raise self.param_error("momentum", "Momentum cannot be used with AdaGrad.")

    def compute_update_value(self, param_id: int, rate: float) -> None:
        param = self.net.learnable_params[param_id]
        adagrad_update(
            param.diff,
            self.history[param_id].data,
            self.local_rate(param_id, rate),
            self.param.delta,
            self.scratch(param_id),
        )
