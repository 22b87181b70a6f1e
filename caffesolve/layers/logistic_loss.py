"""Log-probability losses: MultinomialLogisticLoss and InfogainLoss (Caffe's
multinomial_logistic_loss_layer.cpp and infogain_loss_layer.cpp).

MultinomialLogisticLoss takes probabilities; InfogainLoss takes scores, runs
Caffe's Softmax on them, and weighs -log(prob) of every class by the row of the
infogain matrix H that the label picks (H = identity is SoftmaxWithLoss).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from caffesolve.blob import Blob
from caffesolve.errors import CaffesolveError
from caffesolve.layers import register
from caffesolve.layers.common import softmax
from caffesolve.layers.loss import (
    LossLayer,
    get_normalizer,
    integer_labels,
    label_blob_check,
    legacy_dim,
    num,
    valid_labels,
)
from caffesolve.proto import caffe_pb2
from caffesolve.proto.io import read_binaryproto

Array = npt.NDArray[np.float32]
# Caffe's kLOG_THRESHOLD (loss_layer.hpp): probabilities below it are clamped.
LOG_THRESHOLD = float(np.float32(1e-20))


# -- MultinomialLogisticLoss -------------------------------------------------------


@register
class MultinomialLogisticLossLayer(LossLayer):
    """Caffe's MultinomialLogisticLoss (multinomial_logistic_loss_layer.cpp):
    bottom[0] holds probabilities, (N, dim); one label per item.
    loss = -sum_i log(max(p[i, label_i], 1e-20)) / N;
    dx[i, label_i] = (-top_diff / N) / max(p[i, label_i], 1e-20), 0 elsewhere.
    No ignore_label or normalization (Caffe honours neither here)."""

    type = "MultinomialLogisticLoss"

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        super().reshape(bottom, top)
        label = bottom[1]
        if any(legacy_dim(label, i) != 1 for i in (1, 2, 3)):
            raise self.shape_error(
                f"the label bottom '{label.name}' {label.shape_string()} must hold "
                "one label per item: (N), (N, 1) or (N, 1, 1, 1)"
            )

    def _picked(self, bottom: list[Blob]) -> tuple[np.ndarray, Array]:
        """(row, label) index of each item's true class and its clamped prob."""
        n = num(bottom[0])
        x = bottom[0].data.reshape(n, -1)
        labels = integer_labels(bottom[1].data.reshape(n))
        valid_labels(self, labels, None, x.shape[1])
        index = (self.xp.arange(n), labels)
        dtype = x.dtype.type
        return index, self.xp.maximum(x[index], dtype(LOG_THRESHOLD))

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        _, prob = self._picked(bottom)
        dtype = prob.dtype.type
        loss = -self.xp.log(prob).sum(dtype=prob.dtype)
        top[0].data[...] = loss / dtype(num(bottom[0]))

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        if not self.bottom_diff_wanted(propagate_down):
            return
        index, prob = self._picked(bottom)
        dtype = prob.dtype.type
        scale = -dtype(top[0].diff.reshape(-1)[0]) / dtype(num(bottom[0]))
        diff = bottom[0].diff.reshape(len(prob), -1)
        diff[...] = 0
        diff[index] = scale / prob


# -- InfogainLoss -------------------------------------------------------------------


@register
class InfogainLossLayer(LossLayer):
    """Caffe's InfogainLoss (infogain_loss_layer.cpp), the current version
    with the softmax inside: prob = softmax(x) along infogain_loss_param.axis;
    loss = -sum over counted labels of sum_l H[label, l] *
    log(max(prob[l], 1e-20)), divided by loss_param.normalization's
    normalizer (default VALID; `normalize` is refused, as in Caffe).
    dx[l] = (prob[l] * sum_k H[label, k] - H[label, l]) * top_diff /
    normalizer, 0 where the label is ignore_label. H (K x K) is bottom[2] or
    the BlobProto file infogain_loss_param.source. A second top gets prob."""

    type = "InfogainLoss"
    exact_num_bottom_blobs = -1
    min_bottom_blobs = 2
    max_bottom_blobs = 3
    exact_num_top_blobs = -1
    min_top_blobs = 1
    max_top_blobs = 2

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.layer_param.loss_param
        self.ignore_label = int(p.ignore_label) if p.HasField("ignore_label") else None
        if p.HasField("normalize"):
            raise self.config_error(
                'loss_param.normalize is deprecated. use "normalization"'
            )
        self.normalization = int(p.normalization)
        self.infogain: Blob | None = None
        if len(bottom) < 3:
            self.infogain = self._read_infogain()

    def _read_infogain(self) -> Blob:
        """H from infogain_loss_param.source (a binaryproto BlobProto)."""
        p = self.layer_param.infogain_loss_param
        if not p.HasField("source"):
            raise self.config_error(
                "infogain_loss_param.source: Infogain matrix source must be "
                "specified (or give H as a third bottom)."
            )
        try:
            proto = read_binaryproto(p.source, caffe_pb2.BlobProto())
            h = Blob(xp=self.xp)
            h.from_proto(proto)
        except CaffesolveError as e:
            raise self.config_error(f"infogain_loss_param.source: {e}") from None
        return h

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        super().reshape(bottom, top)
        x = bottom[0]
        self.axis = self.axis_index(x, "infogain_loss_param.axis")
        self.outer_num, self.inner_num = label_blob_check(self, bottom, self.axis)
        self.num_labels = x.shape[self.axis]
        h = self._h_blob(bottom)
        if h.count != self.num_labels**2:
            where = "bottom[2]" if len(bottom) == 3 else "infogain_loss_param.source"
            raise self.shape_error(
                f"{where}: H must be {self.num_labels}x{self.num_labels} for the "
                f"{self.num_labels} classes on axis {self.axis} of bottom "
                f"'{x.name}' {x.shape_string()}, but holds {h.count} values "
                f"({h.shape_string()})"
            )
        if len(top) >= 2:
            top[1].reshape(x.shape)

    def _h_blob(self, bottom: list[Blob]) -> Blob:
        return bottom[2] if len(bottom) == 3 else self.infogain  # type: ignore[return-value]

    def _h(self, bottom: list[Blob], dtype: type) -> Array:
        """H as a (K, K) array in the bottoms' dtype."""
        h = self._h_blob(bottom).data.reshape(self.num_labels, self.num_labels)
        return h.astype(dtype, copy=False)

    def _labels(self, bottom: list[Blob]) -> tuple[np.ndarray, np.ndarray | None]:
        """(outer, inner) labels with ignored ones set to 0, and the mask of
        those that count (None: all do)."""
        labels = integer_labels(bottom[1].data).reshape(self.outer_num, self.inner_num)
        return valid_labels(self, labels, self.ignore_label, self.num_labels)

    def _normalizer(self, valid: np.ndarray | None) -> float:
        count = self.outer_num * self.inner_num if valid is None else int(valid.sum())
        return get_normalizer(self.normalization, self.outer_num, self.inner_num, count)

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        xp = self.xp
        x = bottom[0].data
        dtype = x.dtype.type
        self.prob = softmax(x, self.axis)
        prob3 = self.prob.reshape(self.outer_num, self.num_labels, self.inner_num)
        labels, valid = self._labels(bottom)
        log_prob = xp.log(xp.maximum(prob3, dtype(LOG_THRESHOLD)))
        # weights[i, l, j] = H[label[i, j], l]
        weights = self._h(bottom, x.dtype)[labels].transpose(0, 2, 1)
        terms = (weights * log_prob).sum(axis=1)
        if valid is not None:
            terms = xp.where(valid, terms, 0)
        loss = -terms.sum(dtype=x.dtype)
        top[0].data[...] = loss / dtype(self._normalizer(valid))
        if len(top) == 2:
            top[1].data[...] = self.prob

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        wanted = self.bottom_diff_wanted(propagate_down)
        if len(propagate_down) > 2 and propagate_down[2]:
            raise self.config_error(
                "InfogainLoss Layer cannot backpropagate to infogain inputs."
            )
        if not wanted:
            return
        dtype = self.prob.dtype
        prob3 = self.prob.reshape(self.outer_num, self.num_labels, self.inner_num)
        h = self._h(bottom, dtype)
        labels, valid = self._labels(bottom)
        sum_rows = h.sum(axis=1)[labels]  # (outer, inner)
        dx = prob3 * sum_rows[:, None, :] - h[labels].transpose(0, 2, 1)
        if valid is not None:
            dx = self.xp.where(valid[:, None, :], dx, 0)
        weight = dtype.type(top[0].diff.reshape(-1)[0]) / dtype.type(
            self._normalizer(valid)
        )
        dx *= weight
        bottom[0].diff[...] = dx.reshape(bottom[0].shape)
