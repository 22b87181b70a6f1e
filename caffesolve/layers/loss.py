"""Loss layers: EuclideanLoss, SoftmaxWithLoss, SigmoidCrossEntropyLoss, and
Accuracy (Caffe's loss_layer.cpp and the *_loss_layer.cpp files), with the
LossLayer base, loss_param's normalization and the label helpers that
logistic_loss.py (MultinomialLogisticLoss, InfogainLoss) and margin_loss.py
(HingeLoss, ContrastiveLoss) share.

Every loss writes a scalar (0-axis) top; backward scales its gradient by the
loss weight the Net put in top[0].diff, as Caffe does.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from caffesolve.blob import Blob
from caffesolve.errors import ConfigError, DataError, ShapeError
from caffesolve.layers import register
from caffesolve.layers.base import Layer
from caffesolve.layers.common import softmax
from caffesolve.layers.neuron import sigmoid
from caffesolve.proto import caffe_pb2

Array = npt.NDArray[np.float32]
Norm = caffe_pb2.LossParameter
FLT_MIN = float(np.finfo(np.float32).tiny)


class LossLayer(Layer):
    """Caffe's LossLayer: two bottoms (prediction, target), a scalar top."""

    exact_num_bottom_blobs = 2
    exact_num_top_blobs = 1
    auto_top_blobs = True  # a loss layer without a top still gets one
    is_loss = True

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        """Same first dimension for data and label; top is a 0-axis scalar."""
        if num(bottom[0]) != num(bottom[1]):
            raise ShapeError(
                f"{self.where()}: The data and label should have the same first "
                f"dimension: bottom '{bottom[0].name}' {bottom[0].shape_string()} "
                f"vs bottom '{bottom[1].name}' {bottom[1].shape_string()}"
            )
        top[0].reshape(())

    def allow_force_backward(self, bottom_index: int) -> bool:
        """Caffe: labels (bottom 1) take no forced gradient."""
        return bottom_index != 1

    def bottom_diff_wanted(self, propagate_down: list[bool]) -> bool:
        """Whether backward must write bottom 0's diff; a gradient asked of
        the labels (bottom 1) is Caffe's LOG(FATAL), an error here."""
        if propagate_down[1]:
            raise self.config_error(
                f"{self.layer_param.type} Layer cannot backpropagate to label inputs."
            )
        return propagate_down[0]


def legacy_dim(b: Blob, index: int) -> int:
    """Caffe's Blob::LegacyShape: dimension `index` of a blob of at most 4
    axes, 1 past its last axis (num, channels, height, width = 0, 1, 2, 3)."""
    if b.num_axes > 4:
        raise ShapeError(
            f"blob '{b.name}' {b.shape_string()}: Cannot use legacy accessors on "
            "Blobs with > 4 axes."
        )
    return b.shape[index] if index < b.num_axes else 1


def num(b: Blob) -> int:
    """Caffe's Blob::num(): the legacy first dimension (1 for a 0-axis blob)."""
    return b.shape[0] if b.num_axes else 1


@register
class EuclideanLossLayer(LossLayer):
    """Caffe's EuclideanLoss: loss = sum((a - b)^2) / num / 2; the gradient to
    a is +(a - b) * w / num and to b is -(a - b) * w / num, w = top diff
    (euclidean_loss_layer.cpp)."""

    type = "EuclideanLoss"

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        super().reshape(bottom, top)
        if bottom[0].count_range(1) != bottom[1].count_range(1):
            raise ShapeError(
                f"{self.where()}: Inputs must have the same dimension: bottom "
                f"'{bottom[0].name}' {bottom[0].shape_string()} vs bottom "
                f"'{bottom[1].name}' {bottom[1].shape_string()}"
            )

    def allow_force_backward(self, bottom_index: int) -> bool:
        """Both inputs may receive a gradient (Caffe: true for both)."""
        return True

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        self.diff_ = bottom[0].data - bottom[1].data.reshape(bottom[0].shape)
        d = self.diff_.reshape(-1)
        top[0].data[...] = d.dot(d) / num(bottom[0]) / 2

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        weight = top[0].diff.reshape(-1)[0]
        for i, sign in ((0, 1), (1, -1)):
            if propagate_down[i]:
                alpha = sign * weight / num(bottom[i])
                bottom[i].diff[...] = (alpha * self.diff_).reshape(bottom[i].shape)


# -- normalization -----------------------------------------------------------------


def normalization_mode(p: caffe_pb2.LossParameter, default: int) -> int:
    """The normalization a loss layer uses: `normalization` if given, else the
    legacy `normalize` (true -> VALID, false -> BATCH_SIZE), else `default`
    (VALID for SoftmaxWithLoss, BATCH_SIZE for SigmoidCrossEntropyLoss)."""
    if p.HasField("normalization"):
        return int(p.normalization)
    if p.HasField("normalize"):
        return Norm.VALID if p.normalize else Norm.BATCH_SIZE
    return default


def get_normalizer(
    mode: int, outer_num: int, inner_num: int, valid_count: int
) -> float:
    """Caffe's get_normalizer: FULL -> outer*inner, VALID -> valid_count (or
    outer*inner if -1), BATCH_SIZE -> outer, NONE -> 1; at least 1."""
    if mode == Norm.FULL:
        normalizer = outer_num * inner_num
    elif mode == Norm.VALID:
        normalizer = outer_num * inner_num if valid_count == -1 else valid_count
    elif mode == Norm.BATCH_SIZE:
        normalizer = outer_num
    elif mode == Norm.NONE:
        normalizer = 1
    else:
        raise ConfigError(f"Unknown normalization mode: {mode}")
    return float(max(1.0, normalizer))


def integer_labels(label: Array) -> npt.NDArray[np.int64]:
    """static_cast<int>(label): truncation toward zero."""
    return label.astype(np.int64)  # works on NumPy and CuPy arrays alike


def check_labels(
    layer: Layer, labels: npt.NDArray[np.int64], valid: npt.NDArray[np.bool_], n: int
) -> None:
    """Labels that are not ignored must lie in [0, n) (Caffe's DCHECKs)."""
    used = labels[valid]
    if used.size and (used.min() < 0 or used.max() >= n):
        bad = used[(used < 0) | (used >= n)][0]
        raise DataError(
            f"{layer.where()}: label value {bad} out of range [0, {n}) "
            "(set loss_param.ignore_label to skip it, or fix the labels)"
        )


def valid_labels(
    layer: Layer, labels: np.ndarray, ignore_label: int | None, n: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """(labels with ignored ones replaced by 0, mask of labels that count, or
    None when all count); counted labels must lie in [0, n)."""
    if ignore_label is None:
        if labels.size and (labels.min() < 0 or labels.max() >= n):
            check_labels(layer, labels, labels == labels, n)  # names the label
        return labels, None
    valid = labels != ignore_label
    check_labels(layer, labels, valid, n)
    return np.where(valid, labels, 0), valid


def label_blob_check(layer: Layer, bottom: list[Blob], axis: int) -> tuple[int, int]:
    """(outer_num, inner_num) around `axis`; labels must number outer*inner."""
    outer = bottom[0].count_range(0, axis)
    inner = bottom[0].count_range(axis + 1)
    if outer * inner != bottom[1].count:
        raise ShapeError(
            f"{layer.where()}: Number of labels must match number of predictions; "
            f"e.g., if the axis is 1 and prediction shape is (N, C, H, W), label "
            f"count (number of labels) must be N*H*W, with integer values in "
            f"{{0, 1, ..., C-1}} (bottom '{bottom[0].name}' "
            f"{bottom[0].shape_string()}, labels '{bottom[1].name}' "
            f"{bottom[1].shape_string()})"
        )
    return outer, inner


# -- SoftmaxWithLoss -----------------------------------------------------------------


@register
class SoftmaxWithLossLayer(LossLayer):
    """Caffe's SoftmaxWithLoss (softmax_loss_layer.cpp): prob = softmax(x)
    along softmax_param.axis; loss = -sum log(max(prob[label], FLT_MIN)) /
    normalizer over labels != ignore_label; dx = (prob - onehot(label)) *
    top_diff / normalizer, zero where ignored. A second top gets prob."""

    type = "SoftmaxWithLoss"
    exact_num_top_blobs = -1
    min_top_blobs = 1
    max_top_blobs = 2

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.layer_param.loss_param
        self.ignore_label = int(p.ignore_label) if p.HasField("ignore_label") else None
        self.normalization = normalization_mode(p, Norm.VALID)

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        shapes = (bottom[0].data.shape, bottom[1].data.shape)
        if shapes == getattr(self, "_reshaped_for", None):
            top[0].reshape(())  # the usual case: nothing changed
            if len(top) >= 2:
                top[1].reshape(shapes[0])
            return
        super().reshape(bottom, top)
        self.axis = self.axis_index(bottom[0], "softmax_param.axis")
        self.outer_num, self.inner_num = label_blob_check(self, bottom, self.axis)
        if len(top) >= 2:
            top[1].reshape(bottom[0].shape)
        self._reshaped_for = shapes

    def _labels(self, bottom: list[Blob]) -> tuple[np.ndarray, np.ndarray | None]:
        """Labels as (outer, 1, inner) ints with ignored ones set to 0, and
        the (outer, 1, inner) mask of labels that count (None: all do)."""
        labels = integer_labels(bottom[1].data).reshape(
            self.outer_num, 1, self.inner_num
        )
        return valid_labels(self, labels, self.ignore_label, bottom[0].shape[self.axis])

    def _label_index(
        self, labels: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Fancy index of prob[i, label[i, j], j] in the (outer, C, inner) view."""
        xp = self.xp
        outer = xp.arange(self.outer_num).reshape(-1, 1, 1)
        inner = xp.arange(self.inner_num).reshape(1, 1, -1)
        return outer, labels, inner

    def _normalizer(self, valid: np.ndarray | None) -> float:
        count = -1 if valid is None else int(valid.sum())
        return get_normalizer(self.normalization, self.outer_num, self.inner_num, count)

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        x = bottom[0].data
        xp = self.xp
        self.prob = softmax(x, self.axis)
        prob3 = self.prob.reshape(self.outer_num, -1, self.inner_num)
        labels, valid = self._labels(bottom)
        p = prob3[self._label_index(labels)]
        logs = xp.log(xp.maximum(p, x.dtype.type(FLT_MIN), out=p), out=p)
        if valid is not None:
            logs = xp.where(valid, logs, 0)
        loss = -logs.sum(dtype=x.dtype)
        top[0].data[...] = loss / x.dtype.type(self._normalizer(valid))
        if len(top) == 2:
            top[1].data[...] = self.prob

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        if not self.bottom_diff_wanted(propagate_down):
            return
        prob3 = self.prob.reshape(self.outer_num, -1, self.inner_num)
        diff = bottom[0].diff
        direct = diff.flags.c_contiguous
        dx = diff.reshape(prob3.shape) if direct else prob3.copy()
        if direct:
            dx[...] = prob3
        labels, valid = self._labels(bottom)
        dx[self._label_index(labels)] -= 1  # prob - onehot(label)
        if valid is not None:
            dx *= valid
        dtype = dx.dtype.type
        weight = dtype(top[0].diff.reshape(-1)[0]) / dtype(self._normalizer(valid))
        dx *= weight
        if not direct:
            diff[...] = dx.reshape(diff.shape)


# -- SigmoidCrossEntropyLoss --------------------------------------------------------


def sigmoid_cross_entropy(x: Array, t: Array) -> Array:
    """Per-element loss in Caffe's stable form:
    -(x * (t - (x >= 0)) - log(1 + exp(x - 2 * x * (x >= 0))))."""
    pos = (x >= 0).astype(x.dtype)
    return -(x * (t - pos) - np.log(1 + np.exp(x - 2 * x * pos)))


@register
class SigmoidCrossEntropyLossLayer(LossLayer):
    """Caffe's SigmoidCrossEntropyLoss (sigmoid_cross_entropy_loss_layer.cpp):
    loss = sum over targets != ignore_label of the stable cross-entropy /
    normalizer (default BATCH_SIZE); dx = (sigmoid(x) - t) * top_diff /
    normalizer, zero where ignored."""

    type = "SigmoidCrossEntropyLoss"

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.layer_param.loss_param
        self.ignore_label = int(p.ignore_label) if p.HasField("ignore_label") else None
        self.normalization = normalization_mode(p, Norm.BATCH_SIZE)

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        super().reshape(bottom, top)
        self.outer_num = num(bottom[0])
        self.inner_num = bottom[0].count_range(1)
        if bottom[0].count != bottom[1].count:
            raise ShapeError(
                f"{self.where()}: SIGMOID_CROSS_ENTROPY_LOSS layer inputs must "
                f"have the same count: '{bottom[0].name}' "
                f"{bottom[0].shape_string()} vs '{bottom[1].name}' "
                f"{bottom[1].shape_string()}"
            )

    def _valid(self, target: Array) -> np.ndarray:
        if self.ignore_label is None:
            return self.xp.ones(target.shape, bool)
        return integer_labels(target) != self.ignore_label

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        x = bottom[0].data
        t = bottom[1].data.reshape(x.shape).astype(x.dtype, copy=False)
        self.sigmoid_output = sigmoid(x)
        valid = self._valid(t)
        xp = self.xp
        loss = xp.where(valid, sigmoid_cross_entropy(x, t), 0).sum(dtype=x.dtype)
        self.normalizer = get_normalizer(
            self.normalization, self.outer_num, self.inner_num, int(valid.sum())
        )
        top[0].data[...] = loss / x.dtype.type(self.normalizer)

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        if not self.bottom_diff_wanted(propagate_down):
            return
        t = bottom[1].data.reshape(bottom[0].shape)
        dx = self.sigmoid_output - t
        if self.ignore_label is not None:
            dx *= self._valid(t)
        dtype = dx.dtype.type
        weight = dtype(top[0].diff.reshape(-1)[0]) / dtype(self.normalizer)
        bottom[0].diff[...] = dx * weight


# -- Accuracy --------------------------------------------------------------------------


@register
class AccuracyLayer(Layer):
    """Caffe's Accuracy (accuracy_layer.cpp): a prediction is right when
    fewer than top_k classes score >= the true class's score (the true class
    itself not counted); accuracy = right / counted over labels !=
    ignore_label (0 if none). A second top gets per-class accuracy."""

    type = "Accuracy"
    exact_num_bottom_blobs = 2
    min_top_blobs = 1
    max_top_blobs = 2

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.layer_param.accuracy_param
        self.top_k = int(p.top_k)
        self.ignore_label = int(p.ignore_label) if p.HasField("ignore_label") else None

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        if bottom[1].count == 0 or self.top_k > bottom[0].count // bottom[1].count:
            raise self.config_error(
                "top_k must be less than or equal to the number of classes "
                f"(accuracy_param.top_k {self.top_k}, bottom '{bottom[0].name}' "
                f"{bottom[0].shape_string()})"
            )
        self.axis = self.axis_index(bottom[0], "accuracy_param.axis")
        self.outer_num, self.inner_num = label_blob_check(self, bottom, self.axis)
        top[0].reshape(())
        if len(top) > 1:
            top[1].reshape((bottom[0].shape[self.axis],))

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        num_labels = bottom[0].shape[self.axis]
        scores = bottom[0].data.reshape(self.outer_num, num_labels, self.inner_num)
        labels = integer_labels(bottom[1].data).reshape(
            self.outer_num, 1, self.inner_num
        )
        labels, valid = valid_labels(self, labels, self.ignore_label, num_labels)
        xp = self.xp
        true_score = xp.take_along_axis(scores, labels, axis=1)
        better = (scores >= true_score).sum(axis=1, keepdims=True) - 1
        right = better < self.top_k
        if valid is not None:
            right &= valid
        count = right.size if valid is None else int(valid.sum())
        dtype = bottom[0].data.dtype.type
        top[0].data[...] = 0 if count == 0 else dtype(right.sum()) / dtype(count)
        if len(top) > 1:
            counted = labels if valid is None else labels[valid]
            seen = xp.bincount(counted.ravel(), minlength=num_labels)
            hits = xp.bincount(labels[right].ravel(), minlength=num_labels)
            ratio = hits.astype(dtype) / xp.maximum(seen, 1).astype(dtype)
            top[1].data[...] = xp.where(seen > 0, ratio, 0)

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        if any(propagate_down):
            raise self.config_error(
                "Accuracy Layer cannot backpropagate (Caffe: Not Implemented Yet)"
            )
