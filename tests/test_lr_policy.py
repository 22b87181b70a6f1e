"""Caffe's learning-rate policies (sgd_solver.cpp GetLearningRate).

Every policy against an independent float64 evaluation of the formula (with the
float32 parameters Caffe reads), Caffe's LeNet reference values, the multistep
counter's one-step-per-call rule, the up-front checks, and (when a C++
compiler is present) bit equality with Caffe's expressions compiled as C++.
"""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import compile_cpp

from caffesolve import lr_policy
from caffesolve.errors import ConfigError
from caffesolve.log import fmt
from caffesolve.lr_policy import (
    POLICIES,
    advance_multistep,
    check_lr_policy,
    get_learning_rate,
    schedule,
    update_current_step,
)
from caffesolve.proto.caffe_pb2 import SolverParameter


def f32(x: float) -> float:
    """A prototxt float as Caffe holds it."""
    return float(np.float32(x))


def reference(p: SolverParameter, it: int) -> float:
    """The policy formulas of the issue, in float64 on Caffe's float params."""
    base, gamma, power = f32(p.base_lr), f32(p.gamma), f32(p.power)
    if p.lr_policy == "fixed":
        return base
    if p.lr_policy == "step":
        return base * gamma ** math.floor(it / p.stepsize)
    if p.lr_policy == "exp":
        return base * gamma**it
    if p.lr_policy == "inv":
        return base * (1 + gamma * it) ** (-power)
    if p.lr_policy == "multistep":
        return base * gamma ** sum(1 for v in p.stepvalue if v <= it)
    if p.lr_policy == "poly":
        return base * (1 - it / p.max_iter) ** power
    if p.lr_policy == "sigmoid":
        return base * (1 / (1 + math.exp(-gamma * (it - p.stepsize))))
    raise AssertionError(p.lr_policy)


CASES = [
    dict(lr_policy="fixed", base_lr=0.01),
    dict(lr_policy="step", base_lr=0.01, gamma=0.1, stepsize=3000),
    dict(lr_policy="step", base_lr=0.001, gamma=0.5, stepsize=7),
    dict(lr_policy="exp", base_lr=0.01, gamma=0.9999),
    dict(lr_policy="inv", base_lr=0.01, gamma=1e-4, power=0.75),
    dict(lr_policy="inv", base_lr=0.1, gamma=1e-3, power=2.5),
    dict(lr_policy="multistep", base_lr=0.01, gamma=0.9, stepvalue=[5000, 7000]),
    dict(lr_policy="multistep", base_lr=0.3, gamma=0.33, stepvalue=[1, 2, 900]),
    dict(lr_policy="poly", base_lr=0.01, power=0.75, max_iter=20000),
    dict(lr_policy="poly", base_lr=0.2, power=2.0, max_iter=12345),
    dict(lr_policy="sigmoid", base_lr=0.01, gamma=1e-3, stepsize=10000),
    dict(lr_policy="sigmoid", base_lr=0.07, gamma=0.0137, stepsize=31),
]


def _ids(case: dict) -> str:
    return "-".join(f"{v}" for v in case.values())


def printed_units_apart(a: float, b: float) -> float:
    """How many units of Caffe's 6th printed digit separate a and b."""
    unit = 10.0 ** (math.floor(math.log10(abs(b))) - 5)
    return round(abs(float(fmt(a)) - float(fmt(b))) / unit, 6)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_policy_matches_float64_formula(case: dict) -> None:
    p = SolverParameter(**case)
    iters = np.arange(0, 20001, 7)
    if p.lr_policy == "poly":
        # near max_iter Caffe's float 1 - iter/max_iter cancels (so do we:
        # see the C++ test); the formula check stays where float is accurate
        iters = iters[iters <= p.max_iter // 2]
    rates = schedule(p, iters)
    assert rates.dtype == np.float32
    expected = np.array([reference(p, int(i)) for i in iters])
    normal = expected > np.finfo(np.float32).tiny  # float32 subnormals print short
    assert normal.sum() > 100
    np.testing.assert_allclose(rates[normal], expected[normal], rtol=1e-6)
    apart = [printed_units_apart(a, b) for a, b in zip(rates[normal], expected[normal])]
    assert max(apart) <= 1.0
    assert np.mean(np.array(apart) == 0) > 0.9


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_one_iteration_equals_schedule_bit_for_bit(case: dict) -> None:
    p = SolverParameter(**case)
    iters = np.arange(0, 12001, 37)
    rates = schedule(p, iters)
    one = np.array([get_learning_rate(p, int(i)) for i in iters], dtype=np.float32)
    np.testing.assert_array_equal(one.view(np.uint32), rates.view(np.uint32))


def test_lenet_reference_values() -> None:
    """Caffe's examples/mnist/lenet_solver.prototxt, as `caffe train` logs it."""
    p = SolverParameter(lr_policy="inv", base_lr=0.01, gamma=0.0001, power=0.75)
    assert fmt(get_learning_rate(p, 0)) == "0.01"
    assert fmt(get_learning_rate(p, 100)) == "0.00992565"
    assert fmt(get_learning_rate(p, 1000)) == "0.00931012"
    assert fmt(get_learning_rate(p, 10000)) == "0.00594604"
    rates = schedule(p, np.array([100, 1000, 10000]))
    assert [fmt(r) for r in rates] == ["0.00992565", "0.00931012", "0.00594604"]


def test_inv_base_is_float_arithmetic() -> None:
    """Caffe computes 1 + gamma*iter in float: the float32 base, not float64."""
    p = SolverParameter(lr_policy="inv", base_lr=1.0, gamma=1e-4, power=1.0)
    it = 12345
    base32 = np.float32(1) + np.float32(1e-4) * np.float32(it)
    assert get_learning_rate(p, it) == float(np.float32(1) / base32)


def test_step_and_multistep_hand_values() -> None:
    step = SolverParameter(lr_policy="step", base_lr=0.01, gamma=0.1, stepsize=100)
    assert [fmt(get_learning_rate(step, i)) for i in (0, 99, 100, 250)] == [
        "0.01",
        "0.01",
        "0.001",
        "0.0001",
    ]
    multi = SolverParameter(
        lr_policy="multistep", base_lr=0.01, gamma=0.9, stepvalue=[5000, 7000, 8000]
    )
    rates = schedule(multi, np.array([4999, 5000, 6999, 7000, 8000, 10000]))
    assert [fmt(r) for r in rates] == [
        "0.01",
        "0.009",
        "0.009",
        "0.0081",
        "0.00729",
        "0.00729",
    ]


def test_poly_past_max_iter_is_nan_like_caffe() -> None:
    p = SolverParameter(lr_policy="poly", base_lr=0.01, power=0.5, max_iter=100)
    assert get_learning_rate(p, 100) == 0.0
    assert math.isnan(get_learning_rate(p, 101))


def test_sigmoid_overflow_gives_zero() -> None:
    p = SolverParameter(lr_policy="sigmoid", base_lr=0.01, gamma=1.0, stepsize=1000)
    assert get_learning_rate(p, 0) == 0.0
    assert get_learning_rate(p, 1000) == f32(0.01) / 2
    assert get_learning_rate(p, 5000) == f32(0.01)


def test_multistep_advances_one_step_per_call() -> None:
    p = SolverParameter(lr_policy="multistep", stepvalue=[10, 11, 12])
    assert advance_multistep(p, 9, 0) == 0
    assert advance_multistep(p, 10, 0) == 1
    assert advance_multistep(p, 10, 1) == 1  # 10 < stepvalue[1]
    # far past every stepvalue: still only one step per call
    assert advance_multistep(p, 100, 0) == 1
    assert advance_multistep(p, 100, 2) == 3
    assert advance_multistep(p, 100, 3) == 3  # no stepvalue left


def test_multistep_counter_through_a_run_and_a_late_start() -> None:
    p = SolverParameter(
        lr_policy="multistep", base_lr=1.0, gamma=0.5, stepvalue=[3, 5, 6]
    )
    # every iteration from 0, as the solver runs: counter == closed form
    step, log = 0, []
    for it in range(10):
        new = advance_multistep(p, it, step)
        if new != step:
            log.append(f"MultiStep Status: Iteration {it}, step = {new}")
        step = new
        assert get_learning_rate(p, it, step) == float(schedule(p, np.array([it]))[0])
    assert log == [
        "MultiStep Status: Iteration 3, step = 1",
        "MultiStep Status: Iteration 5, step = 2",
        "MultiStep Status: Iteration 6, step = 3",
    ]
    # starting at iteration 8 with a fresh counter, Caffe catches up one step
    # per iteration: 0.5, 0.25, 0.125
    step, rates = 0, []
    for it in (8, 9, 10):
        step = advance_multistep(p, it, step)
        rates.append(get_learning_rate(p, it, step))
    assert rates == [0.5, 0.25, 0.125]


def test_update_current_step_per_policy() -> None:
    p = SolverParameter(lr_policy="step", stepsize=100, gamma=0.1)
    assert update_current_step(p, 250, 0) == 2
    p = SolverParameter(lr_policy="multistep", stepvalue=[100])
    assert update_current_step(p, 250, 0) == 1
    p = SolverParameter(lr_policy="inv")
    assert update_current_step(p, 250, 4) == 4


@pytest.mark.parametrize("power", [2.0, 0.5, -1.0, 1.0])
def test_poly_and_inv_scalar_paths_agree_for_special_powers(power: float) -> None:
    """numpy's scalar power fast paths (square, sqrt) must not be used."""
    poly = SolverParameter(lr_policy="poly", base_lr=0.3, power=power, max_iter=999)
    inv = SolverParameter(lr_policy="inv", base_lr=0.3, gamma=0.01, power=-power)
    for p in (poly, inv):
        iters = np.arange(0, 999)
        rates = schedule(p, iters)
        one = np.array([get_learning_rate(p, int(i)) for i in iters], np.float32)
        np.testing.assert_array_equal(one.view(np.uint32), rates.view(np.uint32))


def test_policies_are_caffes_seven() -> None:
    assert set(POLICIES) == {
        "fixed",
        "step",
        "exp",
        "inv",
        "multistep",
        "poly",
        "sigmoid",
    }


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        (dict(lr_policy="stepp"), ["lr_policy", "'stepp'", "`step`", "sigmoid"]),
        (dict(lr_policy=""), ["lr_policy is not set", "multistep"]),
        (dict(lr_policy="step", gamma=0.1), ["stepsize must be > 0", "'step'"]),
        (dict(lr_policy="sigmoid", stepsize=-5), ["stepsize must be > 0", "-5"]),
        (dict(lr_policy="step", stepsize=10, gamma=-1), ["gamma must be >= 0"]),
        (dict(lr_policy="exp", gamma=-0.5), ["gamma", "'exp'"]),
        (dict(lr_policy="inv", gamma=-0.5), ["gamma", "'inv'"]),
        (dict(lr_policy="multistep", gamma=-0.5), ["gamma", "'multistep'"]),
        (dict(lr_policy="sigmoid", stepsize=5, gamma=-0.5), ["gamma", "'sigmoid'"]),
        (
            dict(lr_policy="multistep", gamma=0.1, stepvalue=[100, 100]),
            ["stepvalue", "strictly increasing"],
        ),
        (
            dict(lr_policy="multistep", gamma=0.1, stepvalue=[300, 200]),
            ["stepvalue 1 is 200, after 300"],
        ),
        (dict(lr_policy="poly", power=1), ["max_iter must be > 0", "'poly'"]),
    ],
)
def test_check_lr_policy_errors(fields: dict, words: list[str]) -> None:
    p = SolverParameter(**fields)
    with pytest.raises(ConfigError) as e:
        check_lr_policy(p, "my_solver.prototxt")
    text = str(e.value)
    assert text.startswith("my_solver.prototxt: ")
    assert "\n" not in text
    for w in words:
        assert w in text


def test_million_iterations_vectorised() -> None:
    """Shape and sanity only; the timing lives in benchmarks/bench_lr_schedule.py."""
    p = SolverParameter(lr_policy="inv", base_lr=0.01, gamma=1e-4, power=0.75)
    rates = schedule(p, np.arange(1_000_000))
    assert rates.shape == (1_000_000,)
    assert np.all(np.diff(rates) <= 0)


# -- Caffe's expressions compiled as C++ (skipped without a compiler) ---------

CPP = r"""
#include <cmath>
#include <math.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>
namespace caffe {
// The types of SGDSolver<float>::GetLearningRate: float params, int iter.
float rate(const char* policy, float base_lr, float gamma, float power,
           int stepsize, int max_iter, int iter, int current_step) {
  if (!strcmp(policy, "fixed")) return base_lr;
  if (!strcmp(policy, "step")) return base_lr * pow(gamma, iter / stepsize);
  if (!strcmp(policy, "exp")) return base_lr * pow(gamma, iter);
  if (!strcmp(policy, "inv"))
    return base_lr * pow(float(1) + gamma * iter, -power);
  if (!strcmp(policy, "multistep")) return base_lr * pow(gamma, current_step);
  if (!strcmp(policy, "poly"))
    return base_lr * pow(float(1) - (float(iter) / float(max_iter)), power);
  if (!strcmp(policy, "sigmoid"))
    return base_lr * (float(1) / (float(1) +
        exp(-gamma * (float(iter) - float(stepsize)))));
  return -1;
}
}  // namespace caffe
int main(int argc, char** argv) {
  float base_lr = strtof(argv[2], 0), gamma = strtof(argv[3], 0);
  float power = strtof(argv[4], 0);
  int stepsize = atoi(argv[5]), max_iter = atoi(argv[6]), n = atoi(argv[7]);
  int divisor = atoi(argv[8]);
  for (int i = 0; i < n; ++i) {
    float r = caffe::rate(argv[1], base_lr, gamma, power, stepsize, max_iter, i,
                          i / divisor);
    unsigned bits;
    memcpy(&bits, &r, 4);
    printf("%08x\n", bits);
  }
  return 0;
}
"""


@pytest.fixture(scope="module")
def caffe_expressions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_cpp(tmp_path_factory, CPP, "rate")


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_bit_equal_to_caffe_expressions_in_cpp(
    case: dict, caffe_expressions: Path
) -> None:
    p = SolverParameter(**case)
    n, divisor = 30001, 1000
    args = [p.lr_policy, repr(p.base_lr), repr(p.gamma), repr(p.power)]
    args += [str(p.stepsize), str(p.max_iter), str(n), str(divisor)]
    out = subprocess.run(
        [str(caffe_expressions), *args], check=True, capture_output=True, text=True
    ).stdout.split()
    expected = np.array([int(h, 16) for h in out], dtype=np.uint32)
    it = np.arange(n)
    if p.lr_policy == "multistep":
        ours = lr_policy.multistep(p, it, it // divisor)
    else:
        ours = schedule(p, it)
    same = (ours.view(np.uint32) == expected) | (
        np.isnan(ours) & np.isnan(expected.view(np.float32))
    )
    assert same.all(), f"{(~same).sum()} of {n} differ, first at {np.argmin(same)}"
