"""Caffe's learning-rate policies: pure functions (SolverParameter, iter) -> rate.

One function per `lr_policy`, after SGDSolver::GetLearningRate
(src/caffe/solvers/sgd_solver.cpp). Every function accepts `it` as an int or
as an integer array and returns float32 (a 0-d array for an int), so the same
code gives the rate of one iteration and a whole schedule at once.

Arithmetic follows the C++ types Caffe compiles (float params, int iter), as a
C++11 build with GCC >= 6 resolves the overloads (sgd_solver.cpp sees <math.h>
through mkl_alternate.hpp, whose libstdc++ wrapper puts std::pow/std::exp in
the global namespace):

- `pow(float, int)` (step, exp, multistep) promotes to double: the power and
  the product with base_lr are double, rounded to float once at the end.
- `pow(float, float)` (inv, poly) is powf and `exp(float)` (sigmoid) is expf:
  every step, including `1 + gamma * iter` and `iter / max_iter`, is float32.

Checked bit for bit against a C++ program compiled with g++ 12 (-std=c++11)
that evaluates Caffe's expressions with these types, for every iteration of
0..100000 of each policy (tests/test_lr_policy.py repeats this when g++ is
there). numpy's array loops call libm's pow; powf and expf go through
caffesolve.ops.libm, which asks libm's own function wherever rounding is in
doubt. An older
all-double build (GCC < 6) differs by at most one float32 ulp, visible in the
printed 6 digits for 1-3% of the iterations of inv, poly and sigmoid.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from caffesolve.errors import ConfigError
from caffesolve.ops.libm import expf, powf
from caffesolve.proto.caffe_pb2 import SolverParameter
from caffesolve.proto.io import suggest

IterLike = int | npt.ArrayLike
Rates = npt.NDArray[np.float32]


def _iters(it: IterLike) -> npt.NDArray[np.int64]:
    return np.asarray(it, dtype=np.int64)


def _f32(x: float) -> np.float32:
    return np.float32(x)


def _scaled_power(p: SolverParameter, exponent: npt.ArrayLike) -> Rates:
    """float(base_lr * pow(gamma, n)): pow(float, int) and the product in double.

    Integer exponents spanning a short range (step, multistep) are looked up in
    a table of pow(gamma, k): the same libm calls, made once per distinct k.
    """
    n = np.asarray(exponent, dtype=np.int64)
    flat = np.atleast_1d(n)
    lo = int(flat.min()) if flat.size else 0
    hi = int(flat.max()) if flat.size else 0
    gamma = np.float64(_f32(p.gamma))
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if flat.size > 64 and hi - lo < flat.size // 4:
            ks = np.arange(lo, hi + 1, dtype=np.float64)
            power = np.power(np.full(ks.shape, gamma), ks)[flat - lo]
        else:
            power = np.power(np.full(flat.shape, gamma), flat.astype(np.float64))
    rate = np.float64(_f32(p.base_lr)) * power.reshape(n.shape)
    with np.errstate(over="ignore"):  # past float32's range: inf, as float(x) in C
        return np.asarray(rate).astype(np.float32)


def fixed(p: SolverParameter, it: IterLike) -> Rates:
    """Caffe lr_policy "fixed": base_lr."""
    return np.full(np.shape(it), _f32(p.base_lr), dtype=np.float32)


def step(p: SolverParameter, it: IterLike) -> Rates:
    """Caffe lr_policy "step": base_lr * gamma ^ floor(iter / stepsize)."""
    return _scaled_power(p, _iters(it) // p.stepsize)


def exp(p: SolverParameter, it: IterLike) -> Rates:
    """Caffe lr_policy "exp": base_lr * gamma ^ iter."""
    return _scaled_power(p, _iters(it))


def inv(p: SolverParameter, it: IterLike) -> Rates:
    """Caffe lr_policy "inv": base_lr * (1 + gamma * iter) ^ (-power), in float."""
    x = _f32(1) + _f32(p.gamma) * _iters(it).astype(np.float32)
    return np.asarray(_f32(p.base_lr) * powf(x, -_f32(p.power)))


def multistep(
    p: SolverParameter, it: IterLike, current_step: IterLike | None = None
) -> Rates:
    """Caffe lr_policy "multistep": base_lr * gamma ^ current_step.

    `current_step` is the solver's counter after `advance_multistep` for this
    iteration. None computes it in closed form: the count of stepvalues <= iter,
    which is what the one-step-per-call counter reaches when the rate is asked
    for every iteration (stepvalues strictly increasing, as validated).
    """
    if current_step is None:
        current_step = count_passed_stepvalues(p, it)
    return _scaled_power(p, current_step)


def poly(p: SolverParameter, it: IterLike) -> Rates:
    """Caffe lr_policy "poly": base_lr * (1 - iter / max_iter) ^ power, in float.

    Past max_iter the base is negative and, as in Caffe, the rate is NaN.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = _iters(it).astype(np.float32) / _f32(p.max_iter)
    base = np.asarray(_f32(1) - frac, dtype=np.float32)
    return np.asarray(_f32(p.base_lr) * powf(base, _f32(p.power)))


def sigmoid(p: SolverParameter, it: IterLike) -> Rates:
    """Caffe lr_policy "sigmoid": base_lr / (1 + exp(-gamma * (iter - stepsize))).

    All float, with libm's expf (numpy's own float32 exp may differ by an ulp).
    """
    t = -_f32(p.gamma) * (_iters(it).astype(np.float32) - _f32(p.stepsize))
    e = expf(np.asarray(t, dtype=np.float32))
    return np.asarray(_f32(p.base_lr) * (_f32(1) / (_f32(1) + e)), dtype=np.float32)


POLICIES: dict[str, Callable[..., Rates]] = {
    "fixed": fixed,
    "step": step,
    "exp": exp,
    "inv": inv,
    "multistep": multistep,
    "poly": poly,
    "sigmoid": sigmoid,
}


def count_passed_stepvalues(p: SolverParameter, it: IterLike) -> npt.NDArray[np.int64]:
    """Number of stepvalues <= iter (multistep's current_step, closed form)."""
    values = np.sort(np.asarray(p.stepvalue, dtype=np.int64))
    return np.searchsorted(values, _iters(it), side="right").astype(np.int64)


def advance_multistep(p: SolverParameter, it: int, current_step: int) -> int:
    """Multistep's counter after one GetLearningRate call (sgd_solver.cpp).

    At most ONE step per call: if current_step < len(stepvalue) and
    iter >= stepvalue[current_step], current_step + 1, else unchanged. The
    caller logs `MultiStep Status: Iteration N, step = K` when it advances.
    """
    if current_step < len(p.stepvalue) and it >= p.stepvalue[current_step]:
        return current_step + 1
    return current_step


def update_current_step(p: SolverParameter, it: int, current_step: int) -> int:
    """Solver state current_step_ after GetLearningRate at iteration `it`.

    "step" sets it to iter / stepsize, "multistep" advances it by at most one
    (advance_multistep), every other policy leaves it as it was. It is saved in
    SolverState.current_step.
    """
    if p.lr_policy == "step":
        return it // p.stepsize
    if p.lr_policy == "multistep":
        return advance_multistep(p, it, current_step)
    return current_step


def check_lr_policy(p: SolverParameter, source: str = "<solver>") -> None:
    """Caffe's GetLearningRate CHECKs, done up front; ConfigError names the field.

    Unknown policy (list the supported ones), stepsize > 0 for step and
    sigmoid, gamma >= 0 for step/exp/inv/multistep/sigmoid, plus checks Caffe
    leaves to chance: multistep stepvalues strictly increasing, poly needs
    max_iter > 0.
    """
    name = p.lr_policy
    if name not in POLICIES:
        known = ", ".join(POLICIES)
        if not name:
            raise ConfigError(
                f"{source}: lr_policy is not set; set lr_policy to one of: {known}"
            )
        raise ConfigError(
            f"{source}: lr_policy: unknown learning rate policy '{name}'"
            f"{suggest(name, list(POLICIES))} (supported: {known})"
        )
    if name in ("step", "sigmoid") and p.stepsize <= 0:
        raise ConfigError(
            f"{source}: stepsize must be > 0 for lr_policy '{name}' (got {p.stepsize})"
        )
    if name in ("step", "exp", "inv", "multistep", "sigmoid") and p.gamma < 0:
        raise ConfigError(
            f"{source}: gamma must be >= 0 for lr_policy '{name}' (got {p.gamma:.6g})"
        )
    if name == "multistep":
        values = list(p.stepvalue)
        for i in range(1, len(values)):
            if values[i] <= values[i - 1]:
                raise ConfigError(
                    f"{source}: stepvalue must be strictly increasing for "
                    f"lr_policy 'multistep' (stepvalue {i} is {values[i]}, "
                    f"after {values[i - 1]})"
                )
    if name == "poly" and p.max_iter <= 0:
        raise ConfigError(
            f"{source}: max_iter must be > 0 for lr_policy 'poly' (got {p.max_iter})"
        )


def get_learning_rate(
    p: SolverParameter, it: int, current_step: int | None = None
) -> float:
    """The rate of iteration `it` (SGDSolver::GetLearningRate), a float32 value.

    For multistep pass the solver's current_step after advance_multistep; None
    uses the closed form (count of stepvalues <= it).
    """
    check_lr_policy(p)
    if p.lr_policy == "multistep":
        return float(multistep(p, it, current_step))
    return float(POLICIES[p.lr_policy](p, it))


def schedule(p: SolverParameter, iters: npt.ArrayLike) -> Rates:
    """Float32 rates of many iterations at once (vectorised; same values)."""
    check_lr_policy(p)
    return np.asarray(POLICIES[p.lr_policy](p, iters), dtype=np.float32)


def policy_schedules(
    p: SolverParameter,
    policies: list[str],
    iters: npt.ArrayLike,
    source: str = "<solver>",
) -> dict[str, Rates]:
    """Rates of `iters` under each policy in `policies`, all with p's other fields.

    For `lr-schedule --compare`: each policy is checked as if it were p's own
    lr_policy, so a comparison that needs a field the solver lacks (step
    without stepsize) names the policy and the field.
    """
    out: dict[str, Rates] = {}
    for name in policies:
        q = SolverParameter()
        q.CopyFrom(p)
        q.lr_policy = name
        where = source if name == p.lr_policy else f"{source} (compared policy)"
        check_lr_policy(q, where)
        out[name] = schedule(q, iters)
    return out
