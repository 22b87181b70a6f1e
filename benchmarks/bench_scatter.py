"""ms per row scatter-add (Embed's and BatchReindex's backward), in order.

    python benchmarks/bench_scatter.py [--repeat 30]

Times caffesolve.ops.scatter.add_rows_at (rounds of whole-row adds, or
np.add.at below its threshold) against np.add.at alone, on table shapes from an
LSTM captioning net's Embed (vocabulary 10,000 x 256, 1280 words) down to
narrow rows with many repeats. Both give Caffe's bits; the runs alternate.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from caffesolve.ops.scatter import add_rows_at

CASES = [  # (table rows, row width, rows added)
    (10000, 256, 1280),
    (8801, 1000, 400),
    (1000, 64, 64),
    (64, 512, 256),
    (100, 3, 1000),
    (10, 1, 1000),
]


def time_both(
    target: np.ndarray, index: np.ndarray, values: np.ndarray, repeat: int
) -> tuple[float, float]:
    """Median ms of add_rows_at and of np.add.at, run alternately."""
    ours, at = [], []
    for _ in range(repeat):
        t = time.perf_counter()
        add_rows_at(target, index, values)
        ours.append((time.perf_counter() - t) * 1e3)
        t = time.perf_counter()
        np.add.at(target, index, values)
        at.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ours), statistics.median(at)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"{'table':>12} {'added':>6} {'add_rows_at':>12} {'np.add.at':>10} ratio")
    for rows, width, n in CASES:
        target = rng.standard_normal((rows, width)).astype(np.float32)
        index = rng.integers(0, rows, n)
        values = rng.standard_normal((n, width)).astype(np.float32)
        ours, at = time_both(target, index, values, args.repeat)
        print(
            f"{rows:>6}x{width:<5} {n:>6} {ours:>12.3f} {at:>10.3f} {at / ours:5.1f}x"
        )


if __name__ == "__main__":
    main()
