"""Common layers: Split; InnerProduct, Flatten, Reshape, Concat, Eltwise,
Softmax follow."""

from __future__ import annotations

from caffesolve.blob import Blob
from caffesolve.layers import register
from caffesolve.layers.base import Layer


@register
class SplitLayer(Layer):
    """Caffe's Split: every top shares the bottom's data; the bottom's diff is
    the sum of the tops' diffs (split_layer.cpp). The Net inserts one wherever
    a blob feeds several layers."""

    type = "Split"
    exact_num_bottom_blobs = 1
    min_top_blobs = 1

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        for t in top:
            if t is bottom[0]:
                raise self.config_error(
                    "Split Layer does not allow in-place computation."
                )
            t.reshape(bottom[0].shape)
            t.share_data(bottom[0])

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        for t in top:
            t.share_data(bottom[0])

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        if not propagate_down[0]:
            return
        out = bottom[0].diff
        out[...] = top[0].diff
        for t in top[1:]:
            out += t.diff
