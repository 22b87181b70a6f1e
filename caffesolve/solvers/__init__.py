"""The solver registry: SolverParameter.type -> solver class.

`create_solver(param)` picks the class by `type` ("SGD", "Nesterov", "AdaGrad",
"RMSProp", "AdaDelta", "Adam"), or by the legacy `solver_type` enum, which
Caffe's UpgradeSolverType maps to the same names.
"""

from __future__ import annotations

from typing import Any

from caffesolve.errors import ConfigError
from caffesolve.proto import caffe_pb2
from caffesolve.proto.io import suggest
from caffesolve.solver_param import solver_type_name
from caffesolve.solvers.adadelta import AdaDeltaSolver
from caffesolve.solvers.adagrad import AdaGradSolver
from caffesolve.solvers.adam import AdamSolver
from caffesolve.solvers.base import SignalHandler, Solver, SolverAction
from caffesolve.solvers.nesterov import NesterovSolver
from caffesolve.solvers.rmsprop import RMSPropSolver
from caffesolve.solvers.sgd import SGDSolver

SOLVERS: dict[str, type[Solver]] = {
    cls.type: cls
    for cls in (
        SGDSolver,
        NesterovSolver,
        AdaGradSolver,
        RMSPropSolver,
        AdaDeltaSolver,
        AdamSolver,
    )
}


def create_solver(
    param: caffe_pb2.SolverParameter, source: str = "<solver>", **kwargs: Any
) -> Solver:
    """Caffe's SolverRegistry::CreateSolver; kwargs go to the Solver."""
    name = solver_type_name(param, source)
    cls = SOLVERS.get(name)
    if cls is None:
        known = ", ".join(SOLVERS)
        raise ConfigError(
            f"{source}: type: Unknown solver type: {name}"
            f"{suggest(name, list(SOLVERS))} (known types: {known})"
        )
    return cls(param, source=source, **kwargs)


__all__ = [
    "SOLVERS",
    "SignalHandler",
    "Solver",
    "SolverAction",
    "create_solver",
    "solver_type_name",
]
