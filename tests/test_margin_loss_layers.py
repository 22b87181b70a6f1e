"""HingeLoss and ContrastiveLoss, after Caffe's test_hinge_loss_layer.cpp and
test_contrastive_loss_layer.cpp."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import layer_from, rng
from gradient_check import check_gradient, make_blob

from caffesolve.blob import Blob
from caffesolve.errors import ConfigError, DataError, ShapeError
from caffesolve.net import Net
from caffesolve.proto import caffe_pb2
from caffesolve.proto.io import parse_prototxt_text


def tops(n: int = 1) -> list[Blob]:
    return [Blob(dtype=np.float64) for _ in range(n)]


# -- HingeLoss -----------------------------------------------------------------------


def hinge_bottoms() -> list[Blob]:
    """Caffe's fixture: (10, 5, 1, 1) scores, Gaussian with std 10, and 10
    labels in [0, 5). Scores within 0.05 of the kinks at +-1 are moved off."""
    g = rng()
    x = Blob((10, 5, 1, 1), dtype=np.float64)
    x.data[...] = g.normal(0, 10, x.shape)
    near = np.abs(np.abs(x.data) - 1) < 0.05
    x.data[near] += 0.2
    label = Blob((10, 1, 1, 1), dtype=np.float64)
    label.data[...] = g.integers(0, 5, size=label.shape)
    return [x, label]


def hinge_margins(x: np.ndarray, label: np.ndarray) -> np.ndarray:
    """max(0, 1 + x) for other classes, max(0, 1 - x) for the label's."""
    x = x.reshape(len(label.reshape(-1)), -1)
    y = -np.ones_like(x)
    y[np.arange(len(x)), label.reshape(-1).astype(int)] = 1
    return np.maximum(0, 1 - y * x)


@pytest.mark.parametrize(("norm", "power"), [("L1", 1), ("L2", 2)])
def test_hinge_loss_forward_backward(norm: str, power: int) -> None:
    bottom, top = hinge_bottoms(), tops()
    layer = layer_from(
        f'name: "h" type: "HingeLoss" hinge_loss_param {{ norm: {norm} }}'
    )
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    t = hinge_margins(*(b.data for b in bottom))
    assert float(top[0].data) == pytest.approx((t**power).sum() / 10, rel=1e-12)
    # d/dx of the margin is -1 for the label's entry, +1 for the others.
    y = np.where(hinge_margins(bottom[0].data, bottom[1].data) > 0, 1.0, 0.0)
    sign = -np.ones((10, 5))
    sign[np.arange(10), bottom[1].data.reshape(-1).astype(int)] = 1
    slope = -sign * (y if power == 1 else 2 * t)
    top[0].diff[...] = 0.5
    layer.backward(top, [True, False], bottom)
    np.testing.assert_allclose(
        bottom[0].diff.reshape(10, 5), slope * 0.5 / 10, rtol=1e-12
    )


def test_hinge_loss_default_norm_is_l1() -> None:
    bottom, top = hinge_bottoms(), tops()
    layer = layer_from('name: "h" type: "HingeLoss"')
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    t = hinge_margins(*(b.data for b in bottom))
    assert float(top[0].data) == pytest.approx(t.sum() / 10, rel=1e-12)


@pytest.mark.parametrize(("norm", "threshold"), [("L1", 2e-3), ("L2", 1e-2)])
def test_hinge_loss_gradient(norm: str, threshold: float) -> None:
    layer = layer_from(
        f'name: "h" type: "HingeLoss" hinge_loss_param {{ norm: {norm} }}'
    )
    check_gradient(
        layer, hinge_bottoms(), tops(), check_bottom=[0], threshold=threshold
    )


def test_hinge_loss_errors() -> None:
    bottom, top = hinge_bottoms(), tops()
    layer = layer_from('name: "h" type: "HingeLoss"')
    layer.setup(bottom, top)
    bottom[1].data[2] = 5
    with pytest.raises(DataError, match="label value 5 out of range"):
        layer.forward(bottom, top)
    with pytest.raises(
        ConfigError, match="HingeLoss Layer cannot backpropagate to label"
    ):
        layer.backward(top, [True, True], bottom)


# -- ContrastiveLoss ----------------------------------------------------------------


def contrastive_bottoms() -> list[Blob]:
    """Caffe's fixture at a quarter the size: (128, 2, 1, 1) pairs uniform in
    [-1, 1) (distances about the margin of 1) and labels 0 or 1."""
    g = rng()
    a = make_blob((128, 2, 1, 1), g)
    b = make_blob((128, 2, 1, 1), g)
    y = Blob((128, 1, 1, 1), dtype=np.float64)
    y.data[...] = g.integers(0, 2, size=y.shape)
    return [a, b, y]


def reference_contrastive(bottom: list[Blob], margin: float, legacy: bool) -> float:
    a, b, y = (blob.data.reshape(128, -1) for blob in bottom)
    loss = 0.0
    for i in range(128):
        d2 = float(((a[i] - b[i]) ** 2).sum())
        if y[i, 0]:
            loss += d2
        elif legacy:
            loss += max(margin - d2, 0.0)
        else:
            loss += max(margin - np.sqrt(d2), 0.0) ** 2
    return loss / 128 / 2


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("margin", [1.0, 0.5])
def test_contrastive_loss_forward(legacy: bool, margin: float) -> None:
    bottom, top = contrastive_bottoms(), tops()
    param = f"margin: {margin} legacy_version: {str(legacy).lower()}"
    layer = layer_from(
        f'name: "c" type: "ContrastiveLoss" contrastive_loss_param {{ {param} }}'
    )
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    assert float(top[0].data) == pytest.approx(
        reference_contrastive(bottom, margin, legacy), rel=1e-12
    )


@pytest.mark.parametrize("legacy", [False, True])
def test_contrastive_loss_gradient(legacy: bool) -> None:
    # Caffe: GradientChecker(1e-2, 1e-2) on both feature bottoms; pairs whose
    # distance is within 0.02 of the margin are moved off the kink.
    bottom = contrastive_bottoms()
    a, b = bottom[0].data, bottom[1].data
    d = np.sqrt(((a - b) ** 2).sum(axis=1, keepdims=True))
    a[...] = np.where(np.abs(d - 1) < 0.02, a * 1.1, a)
    layer = layer_from(
        'name: "c" type: "ContrastiveLoss" '
        f"contrastive_loss_param {{ legacy_version: {str(legacy).lower()} }}"
    )
    check_gradient(layer, bottom, tops(), check_bottom=[0, 1], threshold=1e-2)


def test_contrastive_loss_backward_closed_form() -> None:
    # Three pairs: similar; dissimilar inside the margin; dissimilar outside.
    a, b, y = Blob((3, 2), dtype=np.float64), Blob((3, 2), dtype=np.float64), Blob((3,))
    a.data[...] = [[1.0, 0.0], [0.3, 0.0], [2.0, 0.0]]
    y.data[...] = [1, 0, 0]
    layer, top = layer_from('name: "c" type: "ContrastiveLoss"'), tops()
    layer.setup([a, b, y], top)
    layer.forward([a, b, y], top)
    # loss = (1 + (1 - 0.3)^2 + 0) / 3 / 2
    assert float(top[0].data) == pytest.approx((1 + 0.49) / 6, rel=1e-12)
    top[0].diff[...] = 1.0
    layer.backward(top, [True, True, False], [a, b, y])
    alpha = 1 / 3
    beta = -alpha * 0.7 / (0.3 + 1e-4)
    np.testing.assert_allclose(
        a.diff, [[alpha, 0], [beta * 0.3, 0], [0, 0]], rtol=1e-12
    )
    np.testing.assert_allclose(b.diff, -a.diff, rtol=1e-12)


def test_contrastive_loss_errors_and_force_backward() -> None:
    with pytest.raises(
        ShapeError, match=r"^layer 'c' \(ContrastiveLoss\): .*\(N, C, 1, 1\)"
    ):
        layer_from('name: "c" type: "ContrastiveLoss"').setup(
            [Blob((4, 2, 3, 1)), Blob((4, 2, 3, 1)), Blob((4,))], tops()
        )
    with pytest.raises(ShapeError, match="one value per pair"):
        layer_from('name: "c" type: "ContrastiveLoss"').setup(
            [Blob((4, 2)), Blob((4, 2)), Blob((3,))], tops()
        )
    layer = layer_from('name: "c" type: "ContrastiveLoss"')
    assert [layer.allow_force_backward(i) for i in range(3)] == [True, True, False]


def test_contrastive_loss_float32_in_caffes_order() -> None:
    # Caffe's loops with float32 scalars: loss / num / 2, and
    # beta = -alpha * mdist / (dist + 1e-4) for a dissimilar pair.
    f = np.float32
    g = rng()
    a, b, y = Blob((5, 2)), Blob((5, 2)), Blob((5,))
    a.data[...] = g.uniform(-1, 1, (5, 2))
    b.data[...] = g.uniform(-1, 1, (5, 2))
    y.data[...] = [1, 0, 0, 1, 0]
    layer, top = layer_from('name: "c" type: "ContrastiveLoss"'), Blob()
    layer.setup([a, b, y], [top])
    layer.forward([a, b, y], [top])
    margin, loss = f(1.0), f(0.0)
    for i in range(5):
        d = a.data[i] - b.data[i]
        dist_sq = f(0.0) + d[0] * d[0] + d[1] * d[1]
        if y.data[i]:
            loss += dist_sq
        else:
            gap = max(margin - np.sqrt(dist_sq), f(0.0))
            loss += gap * gap
    assert top.data.dtype == np.float32
    assert top.data[()] == loss / f(5) / f(2)
    top.diff[...] = f(0.7)
    layer.backward([top], [True, False, False], [a, b, y])
    alpha = f(1) * f(0.7) / f(5)
    for i in range(5):
        d = a.data[i] - b.data[i]
        dist = np.sqrt(f(0.0) + d[0] * d[0] + d[1] * d[1])
        if y.data[i]:
            expected = alpha * d
        elif margin - dist > 0:
            expected = (-alpha * (margin - dist) / (dist + f(1e-4))) * d
        else:
            expected = np.zeros(2, np.float32)
        np.testing.assert_array_equal(a.diff[i], expected)


def test_hinge_loss_float32_in_caffes_order() -> None:
    f = np.float32
    x, label = Blob((2, 3)), Blob((2,))
    x.data[...] = [[0.25, -1.5, 0.7], [2.0, -0.1, 0.3]]
    label.data[...] = [1, 0]
    for norm in ("L1", "L2"):
        layer = layer_from(
            f'name: "h" type: "HingeLoss" hinge_loss_param {{ norm: {norm} }}'
        )
        top = Blob()
        layer.setup([x, label], [top])
        layer.forward([x, label], [top])
        t = x.data.copy()
        t[0, 1] *= -1
        t[1, 0] *= -1
        t = np.maximum(f(0), f(1) + t)
        total = f(0)
        for v in t.reshape(-1):
            total += v if norm == "L1" else v * v
        # L2's sum of squares is a BLAS dot in Caffe and here: its order
        # (and fused multiply-adds) may move the last bit.
        rtol = 0 if norm == "L1" else 2e-7
        np.testing.assert_allclose(top.data[()], total / f(2), rtol=rtol)
        top.diff[...] = f(1.3)
        layer.backward([top], [True, False], [x, label])
        t[0, 1] *= -1
        t[1, 0] *= -1
        if norm == "L1":
            expected = np.sign(t) * (f(1.3) / f(2))
        else:
            expected = t * (f(1.3) * f(2) / f(2))
        np.testing.assert_array_equal(x.diff, expected)


SIAMESE = """
name: "siamese"
layer { name: "pair_data" type: "Input" top: "pair_data" top: "sim"
  input_param { shape { dim: 6 dim: 2 dim: 3 dim: 3 } shape { dim: 6 } } }
layer { name: "slice_pair" type: "Slice" bottom: "pair_data" top: "data"
  top: "data_p" slice_param { slice_dim: 1 slice_point: 1 } }
layer { name: "feat" type: "InnerProduct" bottom: "data" top: "feat"
  param { name: "feat_w" } param { name: "feat_b" }
  inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }
layer { name: "feat_p" type: "InnerProduct" bottom: "data_p" top: "feat_p"
  param { name: "feat_w" } param { name: "feat_b" }
  inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "ContrastiveLoss" bottom: "feat" bottom: "feat_p"
  bottom: "sim" top: "loss" contrastive_loss_param { margin: 1 } }
"""


def test_siamese_net_after_caffes_example() -> None:
    # Caffe's examples/siamese: Slice (legacy slice_dim) splits each pair, two
    # towers share their params by name, ContrastiveLoss compares them.
    param = parse_prototxt_text(SIAMESE, caffe_pb2.NetParameter(), "siamese.prototxt")
    net = Net(param, caffe_pb2.TRAIN, rng=rng(), source="siamese.prototxt", quiet=True)
    g = rng()
    net.blob_by_name("pair_data").data[...] = g.uniform(0, 1, (6, 2, 3, 3))
    net.blob_by_name("sim").data[...] = [1, 0, 0, 1, 0, 1]
    net.clear_param_diffs()
    loss = net.forward()
    a, b = net.blob_by_name("feat"), net.blob_by_name("feat_p")
    y = np.array([1, 0, 0, 1, 0, 1])
    d = np.sqrt(((a.data - b.data).astype(np.float64) ** 2).sum(axis=1))
    terms = np.where(y == 1, d**2, np.maximum(1 - d, 0) ** 2)
    assert loss == pytest.approx(terms.sum() / 6 / 2, rel=1e-5)
    net.backward()
    np.testing.assert_allclose(a.diff, -b.diff, rtol=1e-6)
    # The shared weight's diff holds both towers' InnerProduct gradients.
    x = net.blob_by_name("pair_data").data.reshape(6, 2, 9)
    w_diff = a.diff.T @ x[:, 0] + b.diff.T @ x[:, 1]
    shared = net.layer_by_name("feat").blobs[0]
    assert shared is net.layer_by_name("feat_p").blobs[0] or np.shares_memory(
        shared.data, net.layer_by_name("feat_p").blobs[0].data
    )
    np.testing.assert_allclose(shared.diff, w_diff, rtol=1e-5, atol=1e-7)
