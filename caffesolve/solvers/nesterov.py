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
    scratch: npt.NDArray[np.float32] | None = None,
) -> None:
    """Nesterov, in place on Caffe's buffers (nesterov_solver.cpp):

    h_old = h; h = momentum*h + local_rate*diff;
    diff = (1 + momentum)*h - momentum*h_old.

    `scratch` (shaped like diff) holds h_old; diff holds the temporaries.
    """
    m = F32(momentum)
    if scratch is None:
        h_old = history.copy()
    else:
        h_old = scratch
        np.copyto(h_old, history)
    history *= m
    diff *= F32(local_rate)
    history += diff
    h_old *= -m
    np.multiply(history, F32(1) + m, out=diff)
    diff += h_old


class NesterovSolver(SGDSolver):
    """SGD with Nesterov momentum; only the update value differs."""

    type = "Nesterov"
    update_rule = staticmethod(nesterov_update)
