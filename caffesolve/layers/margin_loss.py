"""Margin losses: HingeLoss and ContrastiveLoss (Caffe's hinge_loss_layer.cpp
and contrastive_loss_layer.cpp). Neither honours ignore_label or
normalization: Caffe divides both by the batch size.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from caffesolve.blob import Blob
from caffesolve.layers import register
from caffesolve.layers.common import sign
from caffesolve.layers.loss import (
    LossLayer,
    integer_labels,
    legacy_dim,
    num,
    valid_labels,
)
from caffesolve.proto import caffe_pb2

Array = npt.NDArray[np.float32]
HingeNorm = caffe_pb2.HingeLossParameter


@register
class HingeLossLayer(LossLayer):
    """Caffe's HingeLoss (hinge_loss_layer.cpp), one-vs-all over the dim =
    count / N scores of each item: t = max(0, 1 + x) for the other classes,
    max(0, 1 - x) for the label's; loss = sum(t) / N (L1) or sum(t^2) / N
    (L2). Backward, with t's label entries negated: dx = sign(t) *
    (top_diff / N) (L1) or t * (top_diff * 2 / N) (L2)."""

    type = "HingeLoss"

    def _margins(self, bottom: list[Blob]) -> Array:
        """t of the docstring, (N, dim) (Caffe keeps it in bottom[0]'s diff
        between the passes; backward recomputes it)."""
        n = num(bottom[0])
        x = bottom[0].data.reshape(n, -1)
        labels = integer_labels(bottom[1].data.reshape(-1)[:n])
        valid_labels(self, labels, None, x.shape[1])
        t = x.copy()
        rows = self.xp.arange(n)
        t[rows, labels] *= -1
        t += 1
        # std::max(0, v): 0 unless 0 < v (a NaN gives 0, as in Caffe)
        t = self.xp.where(t > 0, t, 0).astype(x.dtype, copy=False)
        self.label_index = (rows, labels)
        return t

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        t = self._margins(bottom)
        dtype = t.dtype.type
        if self.layer_param.hinge_loss_param.norm == HingeNorm.L1:
            loss = t.sum(dtype=t.dtype)  # asum: t >= 0
        else:
            loss = self.xp.vdot(t, t)
        top[0].data[...] = dtype(loss) / dtype(num(bottom[0]))

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        if not self.bottom_diff_wanted(propagate_down):
            return
        t = self._margins(bottom)
        t[self.label_index] *= -1
        dtype = t.dtype.type
        weight = dtype(top[0].diff.reshape(-1)[0])
        n = dtype(num(bottom[0]))
        if self.layer_param.hinge_loss_param.norm == HingeNorm.L1:
            dx = sign(t) * (weight / n)
        else:
            dx = t * (weight * 2 / n)
        bottom[0].diff[...] = dx.reshape(bottom[0].shape)


@register
class ContrastiveLossLayer(LossLayer):
    """Caffe's ContrastiveLoss (contrastive_loss_layer.cpp) over pairs of
    (N, C[, 1, 1]) features a, b and a similarity label y (N[, 1, 1, 1]),
    d^2 = |a - b|^2 per pair: loss = sum(y ? d^2 : max(margin - d, 0)^2)
    / N / 2, or max(margin - d^2, 0) for dissimilar pairs with
    legacy_version. Backward, alpha = +-top_diff / N for a and b: similar
    pairs alpha * (a - b); dissimilar ones -alpha * (a - b), times
    (margin - d) / (d + 1e-4) unless legacy, where margin - d (margin - d^2)
    > 0, else 0. No gradient to y."""

    type = "ContrastiveLoss"
    exact_num_bottom_blobs = 3

    def allow_force_backward(self, bottom_index: int) -> bool:
        """Caffe: both features may be forced, the similarity label not."""
        return bottom_index != 2

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        a, b, y = bottom
        ok = (
            legacy_dim(a, 1) == legacy_dim(b, 1)
            and all(legacy_dim(blob, i) == 1 for blob in (a, b) for i in (2, 3))
            and all(legacy_dim(y, i) == 1 for i in (1, 2, 3))
        )
        if not ok:
            raise self.shape_error(
                "ContrastiveLoss takes two (N, C, 1, 1) feature blobs and an "
                f"(N, 1, 1, 1) similarity label: got '{a.name}' {a.shape_string()}, "
                f"'{b.name}' {b.shape_string()}, '{y.name}' {y.shape_string()}"
            )

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        super().reshape(bottom, top)
        y = bottom[2]
        if y.count != num(bottom[0]):
            raise self.shape_error(
                f"the similarity label '{y.name}' {y.shape_string()} must hold one "
                f"value per pair ({num(bottom[0])} pairs)"
            )

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        xp = self.xp
        n = num(bottom[0])
        a = bottom[0].data.reshape(n, -1)
        dtype = a.dtype.type
        self.diff_ = a - bottom[1].data.reshape(n, -1)
        self.dist_sq = xp.einsum("ij,ij->i", self.diff_, self.diff_)
        self.similar = integer_labels(bottom[2].data.reshape(n)) != 0
        p = self.layer_param.contrastive_loss_param
        margin = dtype(p.margin)
        if p.legacy_version:
            apart = xp.maximum(margin - self.dist_sq, dtype(0))
        else:
            gap = xp.maximum(margin - xp.sqrt(self.dist_sq), dtype(0))
            apart = gap * gap
        loss = xp.where(self.similar, self.dist_sq, apart).sum(dtype=a.dtype)
        top[0].data[...] = loss / dtype(n) / dtype(2)

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        xp = self.xp
        dtype = self.diff_.dtype.type
        p = self.layer_param.contrastive_loss_param
        margin = dtype(p.margin)
        for i, sign_i in ((0, 1), (1, -1)):
            if not propagate_down[i]:
                continue
            n = num(bottom[i])
            alpha = dtype(sign_i) * dtype(top[0].diff.reshape(-1)[0]) / dtype(n)
            if p.legacy_version:
                mdist = margin - self.dist_sq
                beta = -alpha
            else:
                dist = xp.sqrt(self.dist_sq)
                mdist = margin - dist
                beta = -alpha * mdist / (dist + dtype(1e-4))
            scale = xp.where(self.similar, alpha, beta)
            active = self.similar | (mdist > 0)
            dx = xp.where(active[:, None], scale[:, None] * self.diff_, 0)
            bottom[i].diff[...] = dx.reshape(bottom[i].shape)
