"""Every solver type against a float64 reference, after Caffe's
test_gradient_based_solver.cpp.

The net is least squares: InnerProduct (weights W, bias b) then EuclideanLoss,
loss = sum((X W^T + b - y)^2) / (2N). The reference below is written from the
update formulas (issue #4 / Caffe's solvers) in float64 and knows nothing of
caffesolve's code; the solver runs in float32, as Caffe does.
"""

from __future__ import annotations

import numpy as np
import pytest
from solver_helpers import (
    FIXED,
    least_squares_net,
    make_data,
    make_solver,
    solver_param,
)

from caffesolve.errors import ConfigError
from caffesolve.solvers import SOLVERS

ITERS = 5


@pytest.fixture(autouse=True)
def _quiet_and_data(quiet_log: None) -> None:
    FIXED["data"] = make_data()


def gradients(
    w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """dLoss/dW and dLoss/db of sum((x w^T + b - y)^2) / (2N)."""
    residual = (x @ w.T + b - y) / len(x)
    return residual.T @ x, residual.sum(axis=0)


def reference(
    w0: np.ndarray,
    b0: np.ndarray,
    kind: str,
    iters: int,
    *,
    base_lr: float = 0.1,
    momentum: float = 0.0,
    momentum2: float = 0.999,
    delta: float = 1e-8,
    rms_decay: float = 0.99,
    weight_decay: float = 0.0,
    regularization_type: str = "L2",
    clip_gradients: float = -1.0,
    iter_size: int = 1,
    lr_mults: tuple[float, float] = (1.0, 2.0),
    decay_mults: tuple[float, float] = (1.0, 0.0),
    gamma: float = 1.0,
    stepsize: int = 0,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Params and history after `iters` updates, float64, straight from the
    formulas: normalize, regularize, per-solver update, data -= update."""
    x_all, y_all = (a.astype(np.float64) for a in FIXED["data"])
    params = [w0.astype(np.float64), b0.astype(np.float64)]
    blocks = 2 if kind in ("AdaDelta", "Adam") else 1
    history = [np.zeros_like(p) for _ in range(blocks) for p in params]
    cursor = 0
    for it in range(iters):
        grads = [np.zeros_like(p) for p in params]
        for _ in range(iter_size):
            gw, gb = gradients(*params, x_all[cursor], y_all[cursor])
            grads[0] += gw
            grads[1] += gb
            cursor = (cursor + 1) % len(x_all)
        rate = base_lr * gamma ** (it // stepsize) if stepsize else base_lr
        if clip_gradients >= 0:
            norm = np.sqrt(sum((g * g).sum() for g in grads))
            if norm > clip_gradients:
                grads = [g * (clip_gradients / norm) for g in grads]
        for i, p in enumerate(params):
            g = grads[i] / iter_size
            local_decay = weight_decay * decay_mults[i]
            if regularization_type == "L2":
                g = g + local_decay * p
            else:
                g = g + local_decay * np.sign(p)
            lr = rate * lr_mults[i]
            h = history[i]
            if kind == "SGD":
                h[...] = momentum * h + lr * g
                update = h.copy()
            elif kind == "Nesterov":
                old = h.copy()
                h[...] = momentum * h + lr * g
                update = (1 + momentum) * h - momentum * old
            elif kind == "AdaGrad":
                h += g * g
                update = lr * g / (np.sqrt(h) + delta)
            elif kind == "RMSProp":
                h[...] = rms_decay * h + (1 - rms_decay) * g * g
                update = lr * g / (np.sqrt(h) + delta)
            elif kind == "AdaDelta":
                h2 = history[len(params) + i]
                h[...] = momentum * h + (1 - momentum) * g * g
                step = g * np.sqrt((h2 + delta) / (h + delta))
                h2[...] = momentum * h2 + (1 - momentum) * step * step
                update = lr * step
            elif kind == "Adam":
                v = history[len(params) + i]
                t = it + 1
                h[...] = momentum * h + (1 - momentum) * g
                v[...] = momentum2 * v + (1 - momentum2) * g * g
                correction = np.sqrt(1 - momentum2**t) / (1 - momentum**t)
                update = lr * correction * h / (np.sqrt(v) + delta)
            else:
                raise AssertionError(kind)
            params[i] = p - update
    return params, history


# Hyper-parameters per solver type (Caffe's test values where it has them).
SOLVER_FIELDS = {
    "SGD": {"momentum": 0.9},
    "Nesterov": {"momentum": 0.9},
    "AdaGrad": {"delta": 1e-6},
    "RMSProp": {"rms_decay": 0.95, "delta": 1e-6},
    "AdaDelta": {"momentum": 0.95, "delta": 1e-6, "base_lr": 1.0},
    "Adam": {"momentum": 0.9, "momentum2": 0.999, "delta": 1e-8, "base_lr": 0.05},
}

VARIANTS = {
    "plain": {},
    "l2_decay": {"weight_decay": 0.05},
    "l1_decay": {"weight_decay": 0.05, "regularization_type": "L1"},
    "clip": {"clip_gradients": 0.5},
    "iter_size": {"iter_size": 2},
    "mults_step": {
        "weight_decay": 0.02,
        "lr_policy": "step",
        "gamma": 0.5,
        "stepsize": 2,
        "net": {"w_lr": 0.5, "w_decay": 2, "b_lr": 3, "b_decay": 0.5},
    },
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("kind", list(SOLVER_FIELDS))
def test_least_squares_update(kind: str, variant: str) -> None:
    fields = {**SOLVER_FIELDS[kind], **VARIANTS[variant]}
    mults = fields.pop("net", {"w_lr": 1, "w_decay": 1, "b_lr": 2, "b_decay": 0})
    solver = make_solver(
        solver_param(least_squares_net(**mults), type=kind, max_iter=ITERS, **fields)
    )
    w0, b0 = (p.data.copy() for p in solver.net.learnable_params)
    solver.solve()
    assert solver.iter == ITERS

    ref_fields = {k: v for k, v in fields.items() if k != "lr_policy"}
    expected, history = reference(
        w0,
        b0,
        kind,
        ITERS,
        lr_mults=(mults["w_lr"], mults["b_lr"]),
        decay_mults=(mults["w_decay"], mults["b_decay"]),
        **ref_fields,
    )
    got = [p.data for p in solver.net.learnable_params]
    for g, e in zip(got, expected):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)
    # The update moved the weights: the test is not vacuous.
    assert np.abs(got[0] - w0).max() > 1e-3
    # History: one blob per learnable param, a second block for AdaDelta/Adam,
    # in Caffe's order (all first-block blobs, then all second-block blobs).
    assert len(solver.history) == len(history)
    for h, e in zip(solver.history, history):
        assert h.shape == e.shape
        np.testing.assert_allclose(h.data, e, rtol=1e-4, atol=1e-6)


def test_history_layout_counts() -> None:
    for kind, cls in SOLVERS.items():
        fields = SOLVER_FIELDS[kind]
        solver = make_solver(solver_param(least_squares_net(), type=kind, **fields))
        blocks = 2 if kind in ("AdaDelta", "Adam") else 1
        assert cls.type == kind
        assert [h.shape for h in solver.history] == [(1, 3), (1,)] * blocks


def test_lr_mult_zero_freezes_param() -> None:
    solver = make_solver(
        solver_param(least_squares_net(w_lr=0), type="SGD", momentum=0.9)
    )
    w0 = solver.net.learnable_params[0].data.copy()
    solver.solve()
    np.testing.assert_array_equal(solver.net.learnable_params[0].data, w0)


def test_arithmetic_stays_float32_bit_exact_sgd() -> None:
    """One SGD step equals the float32 formula evaluated in float32."""
    solver = make_solver(
        solver_param(least_squares_net(), type="SGD", momentum=0.9, max_iter=1)
    )
    w0, b0 = (p.data.copy() for p in solver.net.learnable_params)
    solver.solve()
    x, y = FIXED["data"][0][0], FIXED["data"][1][0]
    residual = (x @ w0.T + b0 - y) / np.float32(len(x))
    gw = residual.T @ x
    lr = np.float32(0.1)
    np.testing.assert_allclose(
        solver.net.learnable_params[0].data, w0 - lr * gw, rtol=2e-7, atol=1e-7
    )


@pytest.mark.parametrize(
    ("kind", "fields", "text"),
    [
        ("AdaGrad", {"momentum": 0.9}, "Momentum cannot be used with AdaGrad."),
        ("RMSProp", {"momentum": 0.9}, "Momentum cannot be used with RMSProp."),
        ("RMSProp", {"rms_decay": 1.0}, "rms_decay should lie between 0 and 1."),
        ("Adam", {"momentum": 1.0}, "Adam needs 0 <= momentum < 1"),
        ("Adagrad", {}, "Unknown solver type: Adagrad (did you mean `AdaGrad`?)"),
    ],
)
def test_caffe_solver_checks(kind: str, fields: dict, text: str) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        make_solver(solver_param(least_squares_net(), type=kind, **fields))
    assert text in str(info.value)


def test_unknown_regularization_type() -> None:
    with pytest.raises(ConfigError) as info:
        make_solver(
            solver_param(
                least_squares_net(), weight_decay=0.1, regularization_type="L3"
            )
        )
    assert "regularization_type" in str(info.value)


def test_legacy_solver_type_enum() -> None:
    param = solver_param(least_squares_net(), momentum=0.9)
    param.solver_type = param.NESTEROV
    solver = make_solver(param)
    assert solver.type == "Nesterov"
