"""pycaffe's solvers: caffe.SGDSolver(path) ... caffe.AdamSolver(path) and
caffe.get_solver(path), faces over caffesolve's solvers (_caffe.cpp's Solver).

    solver = caffe.SGDSolver('lenet_solver.prototxt')
    solver.net.forward(); solver.test_nets[0].forward()
    solver.step(1)           # one iteration: test, forward, backward, update
    solver.net.blobs['loss'].data

As in pycaffe, `caffe.AdamSolver(path)` makes an Adam solver whatever the
file's `type` says; `get_solver(path)` goes by the file's `type`. The file is
read as `caffesolve train` reads it (net paths from the working folder first).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cached_property
from typing import ClassVar

from caffesolve.errors import ConfigError
from caffesolve.proto import caffe_pb2
from caffesolve.pycaffe.net import Net
from caffesolve.pycaffe.runtime import MULTI_GPU, NCCL, random_generator
from caffesolve.solver_param import load_solver
from caffesolve.solvers import SOLVERS, create_solver
from caffesolve.solvers.base import Solver as CoreSolver
from caffesolve.solvers.base import SolverCallback

PathLike = str | os.PathLike[str]


class _Callbacks(SolverCallback):
    """pycaffe's add_callback(on_start, on_gradients_ready) as a SolverCallback."""

    def __init__(
        self, on_start: Callable[[], None], on_gradients_ready: Callable[[], None]
    ) -> None:
        self._on_start = on_start
        self._on_gradients_ready = on_gradients_ready

    def on_start(self) -> None:
        self._on_start()

    def on_gradients_ready(self) -> None:
        self._on_gradients_ready()


class Solver:
    """pycaffe's Solver: the training loop of the solver file at `path`."""

    solver_type: ClassVar[str | None] = None  # None: the file's type

    _solver: CoreSolver

    def __init__(self, filename: PathLike) -> None:
        param = load_solver(filename)
        source, rng = str(filename), random_generator()
        if self.solver_type is None:
            self._solver = create_solver(param, source, rng=rng)
        else:
            self._solver = SOLVERS[self.solver_type](param, source=source, rng=rng)

    @classmethod
    def _of(cls, solver: CoreSolver) -> Solver:
        """The face over a solver built elsewhere."""
        face = cls.__new__(cls)
        face._solver = solver
        return face

    @cached_property
    def net(self) -> Net:
        """The train net."""
        return Net._of(self._solver.net)

    @cached_property
    def test_nets(self) -> list[Net]:
        return [Net._of(n) for n in self._solver.test_nets]

    @property
    def iter(self) -> int:
        return self._solver.iter

    @property
    def param(self) -> caffe_pb2.SolverParameter:
        """The SolverParameter the solver reads (base_lr may be changed)."""
        return self._solver.param

    def step(self, iters: int) -> None:
        """`iters` iterations: test when due, forward/backward, update."""
        self._solver.step(iters)

    def solve(self, resume_file: PathLike | None = None) -> None:
        """Train to max_iter (after restoring `resume_file`, a .solverstate)."""
        self._solver.solve(os.fspath(resume_file) if resume_file else None)

    def restore(self, state_file: PathLike) -> None:
        self._solver.restore(os.fspath(state_file))

    def snapshot(self) -> None:
        """<snapshot_prefix>_iter_N.caffemodel and .solverstate now."""
        self._solver.snapshot()

    def apply_update(self) -> None:
        """ApplyUpdate with the current diffs: rate, clip, decay, update, iter+1."""
        self._solver.apply_update()

    def share_weights(self, net: Net) -> None:
        """`net` uses the train net's weights (ShareTrainedLayersWith)."""
        net._net.share_trained_layers_with(self._solver.net)

    def add_callback(
        self,
        on_start: Callable[[], None] | NCCL,
        on_gradients_ready: Callable[[], None] | None = None,
    ) -> None:
        """on_start() before each iteration's passes, on_gradients_ready()
        before its update."""
        if on_gradients_ready is None:
            raise ConfigError(f"solver.add_callback(nccl): {MULTI_GPU}")
        self._solver.add_callback(_Callbacks(on_start, on_gradients_ready))


class SGDSolver(Solver):
    solver_type = "SGD"

    @property
    def lr(self) -> float:
        """This iteration's learning rate (GetLearningRate)."""
        return self._solver.get_learning_rate()  # type: ignore[attr-defined]


class NesterovSolver(SGDSolver):
    solver_type = "Nesterov"


class AdaGradSolver(SGDSolver):
    solver_type = "AdaGrad"


class RMSPropSolver(SGDSolver):
    solver_type = "RMSProp"


class AdaDeltaSolver(SGDSolver):
    solver_type = "AdaDelta"


class AdamSolver(SGDSolver):
    solver_type = "Adam"


# The face of each solver type (SOLVERS' keys), for get_solver.
FACES: dict[str, type[SGDSolver]] = {
    str(cls.solver_type): cls for cls in (SGDSolver, *SGDSolver.__subclasses__())
}


def get_solver(filename: PathLike) -> Solver:
    """The solver the file's `type` (or legacy solver_type) names."""
    solver = Solver(filename)
    return FACES[solver._solver.type]._of(solver._solver)
