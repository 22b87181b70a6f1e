"""ops.scatter.add_rows_at: the same bits as Caffe's row-by-row loop and as
np.add.at, on both of its paths (rounds of whole-row adds, and np.add.at)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import rng

from caffesolve.ops.scatter import ROUND_MIN, add_rows_at, occurrence_rank


def test_occurrence_rank() -> None:
    index = np.array([4, 0, 4, 0, 1, 4])
    np.testing.assert_array_equal(occurrence_rank(index), [0, 0, 1, 1, 0, 2])


@pytest.mark.parametrize(
    ("rows", "width", "n"),
    [
        (50, 300, 400),  # rounds of whole-row adds
        (5, 2000, 30),  # few distinct rows, wide: rounds
        (20, 3, 500),  # narrow rows, many repeats: np.add.at
        (1000, 8, 64),  # all distinct (most likely): one fancy-index +=
    ],
)
def test_add_rows_at_matches_caffes_loop(rows: int, width: int, n: int) -> None:
    g = rng()
    target = g.standard_normal((rows, width)).astype(np.float32)
    index = g.integers(0, rows, n)
    values = g.standard_normal((n, width)).astype(np.float32)
    loop = target.copy()
    for k in range(n):  # Caffe's order: one row after another
        loop[index[k]] += values[k]
    at = target.copy()
    np.add.at(at, index, values)
    ours = target.copy()
    add_rows_at(ours, index, values)
    np.testing.assert_array_equal(ours, loop)
    np.testing.assert_array_equal(ours, at)


def test_add_rows_at_path_choice_covers_both() -> None:
    # The cases above take both paths: rounds when rows move enough elements.
    assert 400 * 300 >= 8 * ROUND_MIN and 500 * 3 < 20 * ROUND_MIN


def test_add_rows_at_nothing() -> None:
    target = np.ones((3, 2), np.float32)
    add_rows_at(target, np.zeros(0, np.intp), np.zeros((0, 2), np.float32))
    np.testing.assert_array_equal(target, 1.0)
