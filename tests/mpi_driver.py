"""What tests/test_parallel.py runs under mpirun (one copy per rank).

    python mpi_driver.py train OUT SOLVER...   tools.train each solver; save
                                               every rank's weights and
                                               history to OUT/<name>_rank<r>.npz
    python mpi_driver.py cli ARGS...           `caffesolve ARGS` (the CLI)

Both register TestFault, an in-place layer that at given forward passes of
given ranks raises, kills its process or signals it, as CAFFESOLVE_TEST_FAULT
= "RANK:FORWARD:ACTION[:TEST],..." says (ACTION: raise, kill, sigint, sighup).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import numpy as np

from caffesolve import parallel, tools
from caffesolve.blob import Blob
from caffesolve.errors import DataError
from caffesolve.layers import LAYERS, register
from caffesolve.layers.base import Layer
from caffesolve.proto import caffe_pb2


class TestFaultLayer(Layer):
    """In place, does nothing to the data; counts its forward passes and acts
    at those CAFFESOLVE_TEST_FAULT names: comma-separated "RANK:FORWARD:ACTION",
    each with ":TEST" added to act in the test net instead of the train net."""

    type = "TestFault"
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        self.forwards = 0
        self.events: dict[int, str] = {}
        rank = parallel.world().rank
        for event in filter(
            None, os.environ.get("CAFFESOLVE_TEST_FAULT", "").split(",")
        ):
            on, at, action, *phase = event.split(":")
            in_phase = caffe_pb2.Phase.Value(phase[0] if phase else "TRAIN")
            if int(on) == rank and in_phase == self.phase:
                self.events[int(at)] = action

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        pass

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        self.forwards += 1
        action = self.events.get(self.forwards)
        if action is None:
            return
        if action == "raise":
            raise DataError(
                f"{self.where()}: injected fault at forward {self.forwards}"
            )
        signum = {"kill": signal.SIGKILL, "sigint": signal.SIGINT}.get(
            action, signal.SIGHUP
        )
        os.kill(os.getpid(), signum)

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        pass


if TestFaultLayer.type not in LAYERS:
    register(TestFaultLayer)


def train_and_save(out: Path, solvers: list[str]) -> None:
    rank = parallel.world().rank
    for path in solvers:
        solver = tools.train(path)
        arrays = {
            f"param{i}": p.data for i, p in enumerate(solver.net.learnable_params)
        }
        arrays.update({f"history{i}": h.data for i, h in enumerate(solver.history)})
        arrays["iter"] = np.array(solver.iter)
        np.savez(out / f"{Path(path).parent.name}_rank{rank}.npz", **arrays)


if __name__ == "__main__":
    if sys.argv[1] == "train":
        train_and_save(Path(sys.argv[2]), sys.argv[3:])
    else:
        from caffesolve.cli import main

        sys.argv = ["caffesolve", *sys.argv[2:]]
        main()
