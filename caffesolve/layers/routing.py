"""Batch routing layers: Filter and BatchReindex (Caffe's filter and
batch_reindex layers). Both pick items along the first (batch) axis by a
bottom that holds item numbers or flags, forward with one gather and backward
with one scatter.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from caffesolve.blob import Blob
from caffesolve.errors import DataError
from caffesolve.layers import register
from caffesolve.layers.base import Layer
from caffesolve.ops.scatter import add_rows_at


@register
class FilterLayer(Layer):
    """Caffe's Filter (filter_layer.cpp): the last bottom is the selector, one
    value per item (its other axes 1); every other bottom passes on the items
    whose selector is non-zero, in order, to the top of the same index.
    The first reshape (at setup) sizes the tops for the whole batch, as
    Caffe does. Backward copies the tops' diffs back to the selected items
    and zeroes the others; the selector gets no gradient."""

    type = "Filter"
    min_bottom_blobs = 2
    min_top_blobs = 1

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        if len(top) != len(bottom) - 1:
            raise self.config_error(
                f"Filter Layer needs one top per bottom except the last, the "
                f"selector ({len(bottom)} bottoms, {len(top)} tops)"
            )
        self.first_reshape = True

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        selector = bottom[-1]
        if selector.num_axes == 0 or any(d != 1 for d in selector.shape[1:]):
            raise self.shape_error(
                "Selector blob dimensions must be singletons (1), except the "
                f"first: bottom[{len(bottom) - 1}] '{selector.name}' "
                f"{selector.shape_string()}"
            )
        for i, b in enumerate(bottom[:-1]):
            if b.num_axes == 0 or b.shape[0] != selector.shape[0]:
                raise self.shape_error(
                    "Each bottom should have the same 0th dimension as the "
                    f"selector blob: bottom[{i}] '{b.name}' {b.shape_string()}, "
                    f"selector '{selector.name}' {selector.shape_string()}"
                )
        self.indices = self.xp.flatnonzero(selector.data)
        num = len(self.indices)
        if self.first_reshape:
            num = selector.shape[0]
            self.first_reshape = False
        for t, b in zip(top, bottom):
            t.reshape((num,) + b.shape[1:])

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        for t, b in zip(top, bottom):
            self.xp.take(b.data, self.indices, axis=0, out=t.data)

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        if propagate_down[-1]:
            raise self.config_error(
                "Filter Layer cannot backpropagate to filter index inputs"
            )
        for t, b, down in zip(top, bottom, propagate_down):
            if down:
                b.diff[...] = 0
                b.diff[self.indices] = t.diff


@register
class BatchReindexLayer(Layer):
    """Caffe's BatchReindex (batch_reindex_layer.cpp): top item i is bottom[0]
    item bottom[1][i] (a 1-D blob of item numbers, repeats allowed); top shape
    (len(bottom[1]),) + bottom[0].shape[1:]. Backward zeroes bottom[0]'s diff
    and adds each top item's diff to the item it came from, in top order."""

    type = "BatchReindex"
    exact_num_bottom_blobs = 2
    exact_num_top_blobs = 1

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        data, permut = bottom
        if permut.num_axes != 1:
            raise self.shape_error(
                f"bottom[1] '{permut.name}' {permut.shape_string()} must be 1-D: "
                "one item number per top item"
            )
        top[0].reshape(permut.shape[:1] + data.shape[1:])

    def _indices(self, bottom: list[Blob]) -> npt.NDArray[np.intp]:
        """bottom[1] as item numbers, each in [0, batch size) (Caffe's CHECKs,
        made on the float values before the cast)."""
        data, permut = bottom
        values = permut.data
        bad = ~((values >= 0) & (values < data.shape[0]))  # NaN is bad too
        if bad.any():
            value = values[bad][0]
            which = (
                "negative"
                if value < 0
                else "greater than batch size"
                if value >= data.shape[0]
                else "not a number"
            )
            raise DataError(
                f"{self.where()}: Index specified for reindex layer was {which}: "
                f"{value!r} in bottom[1] '{permut.name}' (bottom[0] "
                f"'{data.name}' holds {data.shape[0]} items)"
            )
        return values.astype(np.intp)

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        index = self._indices(bottom)
        if top[0].count:
            self.xp.take(bottom[0].data, index, axis=0, out=top[0].data)

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        if propagate_down[1]:
            raise self.config_error("Cannot backprop to index.")
        if not propagate_down[0]:
            return
        diff = bottom[0].diff
        diff[...] = 0
        rows = top[0].diff.reshape(top[0].shape[0], -1)
        add_rows_at(diff.reshape(diff.shape[0], -1), self._indices(bottom), rows)
