"""A tiny least-squares net for the solver tests (after Caffe's
test_gradient_based_solver.cpp): fixed batches from a test data layer, an
InnerProduct, an EuclideanLoss."""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
from google.protobuf import text_format

from caffesolve.blob import Blob
from caffesolve.layers import LAYERS, register
from caffesolve.layers.base import Layer
from caffesolve.log import Log
from caffesolve.proto import caffe_pb2
from caffesolve.solvers import Solver, create_solver

# Batches per layer name: (x of shape (B, N, D), y of shape (B, N, 1)).
FIXED: dict[str, tuple[np.ndarray, np.ndarray]] = {}
# Signals to send to this process: {forward pass number: signal}, counted
# over every TRAIN-phase FixedData forward (a user pressing Ctrl-C mid-run).
SEND_SIGNAL: dict[int, int] = {}
FORWARDS = {"train": 0}


class FixedDataLayer(Layer):
    """Tops `data`, `targets`: batch `cursor` of FIXED[name], cycling."""

    type = "TestFixedData"
    exact_num_bottom_blobs = 0
    exact_num_top_blobs = 2

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        self.x, self.y = FIXED[self.layer_param.name]
        self.cursor = 0
        top[0].reshape(self.x.shape[1:])
        top[1].reshape(self.y.shape[1:])

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        pass

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        if self.phase == caffe_pb2.TRAIN:
            FORWARDS["train"] += 1
            sig = SEND_SIGNAL.pop(FORWARDS["train"], None)
            if sig is not None:
                os.kill(os.getpid(), sig)
        top[0].data[...] = self.x[self.cursor]
        top[1].data[...] = self.y[self.cursor]
        self.cursor = (self.cursor + 1) % len(self.x)

    def get_state(self) -> dict[str, Any]:
        return {"cursor": self.cursor}

    def set_state(self, state: dict[str, Any]) -> None:
        self.cursor = int(state["cursor"])


if FixedDataLayer.type not in LAYERS:
    register(FixedDataLayer)


def make_data(
    batches: int = 3, num: int = 4, dim: int = 3, seed: int = 7
) -> tuple[np.ndarray, np.ndarray]:
    """Float32 inputs and noisy linear targets."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batches, num, dim)).astype(np.float32)
    w = rng.normal(size=(dim, 1))
    y = (x @ w + 0.3 + 0.1 * rng.normal(size=(batches, num, 1))).astype(np.float32)
    return x, y


LEAST_SQUARES_NET = """
name: "LeastSquares"
layer { name: "data" type: "TestFixedData" top: "data" top: "targets" }
layer {
  name: "innerprod" type: "InnerProduct" bottom: "data" top: "innerprod"
  param { lr_mult: %(w_lr)s decay_mult: %(w_decay)s }
  param { lr_mult: %(b_lr)s decay_mult: %(b_decay)s }
  inner_product_param {
    num_output: 1
    weight_filler { type: "gaussian" std: 1.0 }
    bias_filler { type: "gaussian" std: 1.0 }
  }
}
layer { name: "loss" type: "EuclideanLoss" bottom: "innerprod" bottom: "targets"
        top: "loss" }
"""


def least_squares_net(
    w_lr: float = 1, w_decay: float = 1, b_lr: float = 2, b_decay: float = 0
) -> str:
    return LEAST_SQUARES_NET % {
        "w_lr": w_lr,
        "w_decay": w_decay,
        "b_lr": b_lr,
        "b_decay": b_decay,
    }


def solver_param(net_text: str, **fields: Any) -> caffe_pb2.SolverParameter:
    """A SolverParameter with the net inline as train_net_param."""
    param = caffe_pb2.SolverParameter()
    text_format.Parse(net_text, param.train_net_param)
    defaults: dict[str, Any] = {
        "base_lr": 0.1,
        "lr_policy": "fixed",
        "max_iter": 4,
        "display": 0,
        "random_seed": 1701,
        "snapshot_after_train": False,
    }
    defaults.update(fields)
    for key, value in defaults.items():
        if isinstance(value, list):
            getattr(param, key).extend(value)
        else:
            setattr(param, key, value)
    return param


def quiet_log() -> tuple[Log, io.StringIO]:
    stream = io.StringIO()
    return Log(stream), stream


def make_solver(param: caffe_pb2.SolverParameter, **kwargs: Any) -> Solver:
    log, _ = quiet_log()
    kwargs.setdefault("log", log)
    return create_solver(param, **kwargs)
