"""Nesterov's accelerated gradient (Caffe's nesterov_solver.cpp)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from caffesolve.solvers.sgd import SGDSolver

F32 = np.float32


def nesterov_update(
    diff: npt.NDArray[np.float32],
    history: npt.NDArray[np.float32],
    local_rate: float,
    momentum: float,
) -> None:
    """Nesterov, in place on Caffe's buffers (nesterov_solver.cpp):

    h_old = h; h = momentum*h + local_rate*diff;
    diff = (1 + momentum)*h - momentum*h_old.
    """
    m = F32(momentum)
    h_old = history.copy()
    history *= m
    history += F32(local_rate) * diff
    h_old *= -m
    h_old += (F32(1) + m) * history
    diff[...] = h_old


class NesterovSolver(SGDSolver):
    """SGD with Nesterov momentum; only the update value differs."""

    type = "Nesterov"

    def compute_update_value(self, param_id: int, rate: float) -> None:
        param = self.net.learnable_params[param_id]
        nesterov_update(
            param.diff,
            self.history[param_id].data,
            self.local_rate(param_id, rate),
            self.param.momentum,
        )
