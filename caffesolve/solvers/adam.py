"""Adam (Caffe's adam_solver.cpp)."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from caffesolve.solvers.sgd import SGDSolver

F32 = np.float32


def adam_correction(beta1: float, beta2: float, t: int) -> float:
    """sqrt(1 - beta2^t) / (1 - beta1^t), computed in double and stored as
    float, as adam_solver.cpp does."""
    b1, b2 = float(F32(beta1)), float(F32(beta2))
    return float(F32(math.sqrt(1.0 - b2**t) / (1.0 - b1**t)))


def adam_update(
    diff: npt.NDArray[np.float32],
    m: npt.NDArray[np.float32],
    v: npt.NDArray[np.float32],
    local_rate: float,
    beta1: float,
    beta2: float,
    delta: float,
    t: int,
    scratch: npt.NDArray[np.float32] | None = None,
) -> None:
    """Adam, in place (adam_solver.cpp), t = iter + 1:

    m = beta1*m + (1-beta1)*diff; v = beta2*v + (1-beta2)*diff^2;
    diff = local_rate * sqrt(1-beta2^t)/(1-beta1^t) * m / (sqrt(v) + delta).

    `scratch` (shaped like diff) saves allocating the temporaries.
    """
    b1, b2 = F32(beta1), F32(beta2)
    m *= b1
    work = np.multiply(diff, F32(1) - b1, out=scratch)
    m += work
    v *= b2
    np.multiply(diff, diff, out=work)
    work *= F32(1) - b2
    v += work
    update = np.sqrt(v, out=work)
    update += F32(delta)
    np.divide(m, update, out=update)
    step = F32(local_rate) * F32(adam_correction(beta1, beta2, t))
    np.multiply(update, step, out=diff)


class AdamSolver(SGDSolver):
    """Adam: history holds all first moments m, then all second moments v."""

    type = "Adam"
    history_blocks = 2

    def check_param(self) -> None:
        """beta1 = momentum and beta2 = momentum2 must lie in [0, 1)."""
        super().check_param()
        for field in ("momentum", "momentum2"):
            if not 0 <= getattr(self.param, field) < 1:
                raise self.param_error(
                    field,
                    f"Adam needs 0 <= {field} < 1 (Caffe's defaults: "
                    "momentum 0.9, momentum2 0.999)",
                )

    def compute_update_value(self, param_id: int, rate: float) -> None:
        param = self.net.learnable_params[param_id]
        offset = len(self.net.learnable_params)
        adam_update(
            param.diff,
            self.history[param_id].data,
            self.history[offset + param_id].data,
            self.local_rate(param_id, rate),
            self.param.momentum,
            self.param.momentum2,
            self.param.delta,
            self.iter + 1,
            self.scratch(param_id),
        )
