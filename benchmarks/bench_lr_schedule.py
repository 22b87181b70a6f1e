"""Time lr_policy.schedule over a million iterations, for every policy.

    python benchmarks/bench_lr_schedule.py [--iters 1000000] [--repeat 5]

(with caffesolve installed, or PYTHONPATH=. from the repository root).

Prints the best of --repeat runs per policy (the `caffesolve lr-schedule` work
without the printing), and the cost of one get_learning_rate call, which the
solver pays once per iteration.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from caffesolve.lr_policy import POLICIES, get_learning_rate, schedule
from caffesolve.proto.caffe_pb2 import SolverParameter


def solver_for(policy: str, iters: int) -> SolverParameter:
    """A SolverParameter exercising `policy` across the whole range."""
    return SolverParameter(
        lr_policy=policy,
        base_lr=0.01,
        gamma=0.99999 if policy == "exp" else (1e-3 if policy != "step" else 0.5),
        power=0.75,
        stepsize=iters // 10 if policy == "step" else iters // 2,
        stepvalue=[iters // 4, iters // 2, 3 * iters // 4],
        max_iter=iters,
    )


def best_of(repeat: int, fn: object) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    iters = np.arange(args.iters, dtype=np.int64)
    n_calls = 2000
    print(f"schedule() over {args.iters} iterations, best of {args.repeat}:")
    print(f"{'policy':>10}  {'seconds':>8}  {'one call (us)':>13}")
    for policy in POLICIES:
        p = solver_for(policy, args.iters)
        seconds = best_of(args.repeat, lambda p=p: schedule(p, iters))
        one = best_of(
            args.repeat,
            lambda p=p, n=n_calls: [get_learning_rate(p, i) for i in range(n)],
        )
        print(f"{policy:>10}  {seconds:8.4f}  {one / n_calls * 1e6:13.1f}")


if __name__ == "__main__":
    main()
