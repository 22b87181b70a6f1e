"""Adding rows into a table at given row numbers, in order: the backward of
Embed (embed_layer.cpp: one axpy per input into the weight diff) and of
BatchReindex (batch_reindex_layer.cpp: one add per top element into the
bottom diff).

Caffe adds the rows one after another, so a target row that several inputs
hit sums them in input order. `np.add.at` does the same (unbuffered, in
order) but element by element; `add_rows_at` gets the same bits with whole-row
NumPy adds in rounds: round r adds the r-th row of every distinct index, and
within a round no index repeats, so one fancy-index `+=` per round is exact.
benchmarks/bench_scatter.py measures the two; rows of fewer than ROUND_MIN
elements per round go to np.add.at, where the rounds' fixed cost dominates.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.floating]

# A round costs about as much as np.add.at on ~1000 elements (2-core EPYC,
# NumPy 2.4: 12 us a round, 10 ns an element): rounds pay when each moves
# more than that.
ROUND_MIN = 1024


def occurrence_rank(index: npt.NDArray[np.intp]) -> npt.NDArray[np.intp]:
    """For each position n, how many earlier positions hold index[n]."""
    order = np.argsort(index, kind="stable")
    ranked = index[order]
    first = np.ones(len(index), bool)
    np.not_equal(ranked[1:], ranked[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    lengths = np.diff(np.append(starts, len(index)))
    rank = np.empty(len(index), np.intp)
    rank[order] = np.arange(len(index)) - np.repeat(starts, lengths)
    return rank


def add_rows_at(target: Array, index: npt.NDArray[np.intp], rows: Array) -> None:
    """target[index[n]] += rows[n] for n = 0, 1, ... in order (same bits as
    np.add.at(target, index, rows) and Caffe's loop)."""
    if len(index) == 0:
        return
    rank = occurrence_rank(index)
    rounds = int(rank.max()) + 1
    row_size = rows[0].size
    if rounds > 1 and len(index) * row_size < rounds * ROUND_MIN:
        np.add.at(target, index, rows)
        return
    if rounds == 1:
        target[index] += rows
        return
    for r in range(rounds):
        pick = np.flatnonzero(rank == r)
        target[index[pick]] += rows[pick]
