"""InfogainLoss and MultinomialLogisticLoss, after Caffe's
test_infogain_loss_layer.cpp and test_multinomial_logistic_loss_layer.cpp."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import layer_from, rng
from gradient_check import check_gradient, make_blob

from caffesolve.blob import Blob
from caffesolve.errors import ConfigError, DataError, ShapeError
from caffesolve.layers import Layer
from caffesolve.proto.io import write_binaryproto

LOG_THRESHOLD = float(np.float32(1e-20))


def tops(n: int) -> list[Blob]:
    return [Blob(dtype=np.float64) for _ in range(n)]


# -- InfogainLoss --------------------------------------------------------------------


def infogain_bottoms() -> list[Blob]:
    """Caffe's fixture: scores (4, 2, 5, 2) with the 5 classes on axis 2,
    labels (4, 2, 1, 2), H (1, 1, 5, 5) uniform in [0.1, 2)."""
    g = rng()
    x = make_blob((4, 2, 5, 2), g, low=-0.5, high=2.0)
    label = Blob((4, 2, 1, 2), dtype=np.float64)
    label.data[...] = g.integers(0, 5, size=label.shape)
    h = make_blob((1, 1, 5, 5), g, low=0.1, high=2.0)
    return [x, label, h]


def reference_infogain(
    x: np.ndarray, label: np.ndarray, h: np.ndarray, counted: np.ndarray
) -> tuple[np.ndarray, float]:
    """prob and the unnormalised loss with the classes on axis 2, item by item."""
    e = np.exp(x)
    prob = e / e.sum(axis=2, keepdims=True)
    h = h.reshape(5, 5)
    loss = 0.0
    for i, j, k in np.ndindex(4, 2, 2):
        if counted[i, j, 0, k]:
            gt = int(label[i, j, 0, k])
            loss -= sum(
                h[gt, c] * np.log(max(prob[i, j, c, k], LOG_THRESHOLD))
                for c in range(5)
            )
    return prob, loss


def infogain(extra: str = "", source: Path | None = None) -> Layer:
    """Caffe's test layer: classes on axis 2; H from `source` if given."""
    src = f'source: "{source}"' if source else ""
    return layer_from(
        f'name: "loss" type: "InfogainLoss" infogain_loss_param {{ axis: 2 {src} }} '
        + extra
    )


def test_infogain_loss_forward() -> None:
    bottom, top = infogain_bottoms(), tops(2)
    layer = infogain("loss_weight: 1 loss_weight: 0")
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    counted = np.ones(bottom[1].shape, bool)
    prob, loss = reference_infogain(
        bottom[0].data, bottom[1].data, bottom[2].data, counted
    )
    np.testing.assert_allclose(top[1].data, prob, rtol=1e-12)
    assert float(top[0].data) == pytest.approx(loss / 16, rel=1e-12)


def test_infogain_loss_gradient() -> None:
    # Caffe: GradientChecker(1e-4, 2e-2) on the scores.
    bottom = infogain_bottoms()
    layer = infogain()
    check_gradient(
        layer, bottom, tops(1), check_bottom=[0], stepsize=1e-4, threshold=2e-2
    )


def test_infogain_loss_backward_closed_form() -> None:
    # dx[c] = (prob[c] * sum_k H[gt, k] - H[gt, c]) * loss_weight / normalizer.
    bottom, top = infogain_bottoms(), tops(1)
    layer = infogain("loss_weight: 3")
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    top[0].diff[...] = 3.0
    layer.backward(top, [True, False, False], bottom)
    h = bottom[2].data.reshape(5, 5)
    e = np.exp(bottom[0].data)
    prob = e / e.sum(axis=2, keepdims=True)
    gt = bottom[1].data.astype(int)[:, :, 0, :]  # (4, 2, 2)
    rows = np.moveaxis(h[gt], -1, 2)  # H[gt, c] at [i, j, c, k]
    expected = (prob * rows.sum(axis=2, keepdims=True) - rows) * 3.0 / 16
    np.testing.assert_allclose(bottom[0].diff, expected, rtol=1e-12)


def test_infogain_loss_identity_is_softmax_with_loss() -> None:
    # H = I makes the loss -log(prob[label]): SoftmaxWithLoss, values and diffs.
    bottom = infogain_bottoms()
    bottom[2].data[...] = np.eye(5).reshape(1, 1, 5, 5)
    info, t1 = infogain(), tops(1)
    soft, t2 = (
        layer_from('name: "s" type: "SoftmaxWithLoss" softmax_param { axis: 2 }'),
        tops(1),
    )
    info.setup(bottom, t1)
    soft.setup(bottom[:2], t2)
    for layer, top, bot in ((info, t1, bottom), (soft, t2, bottom[:2])):
        layer.forward(bot, top)
        top[0].diff[...] = 1.0
    info.backward(t1, [True, False, False], bottom)
    expected = bottom[0].diff.copy()
    soft.backward(t2, [True, False], bottom[:2])
    assert float(t1[0].data) == pytest.approx(float(t2[0].data), rel=1e-12)
    np.testing.assert_allclose(expected, bottom[0].diff, rtol=1e-12, atol=1e-15)


def write_h(path: Path, h: np.ndarray) -> None:
    blob = Blob(h.shape)
    blob.data[...] = h
    write_binaryproto(path, blob.to_proto())


def test_infogain_loss_reads_h_from_source(tmp_path: Path) -> None:
    bottom = infogain_bottoms()
    bottom[2].data[...] = bottom[2].data.astype(np.float32)  # as the file keeps it
    path = tmp_path / "H.binaryproto"
    write_h(path, bottom[2].data)
    from_file = infogain(source=path)
    from_bottom = infogain()
    t1, t2 = tops(1), tops(1)
    from_file.setup(bottom[:2], t1)
    from_file.forward(bottom[:2], t1)
    from_bottom.setup(bottom, t2)
    from_bottom.forward(bottom, t2)
    assert float(t1[0].data) == pytest.approx(float(t2[0].data), rel=1e-12)
    check_gradient(
        from_file, bottom[:2], t1, check_bottom=[0], stepsize=1e-4, threshold=2e-2
    )


@pytest.mark.parametrize(
    ("norm", "divisor"),
    [("VALID", 10), ("FULL", 16), ("BATCH_SIZE", 8), ("NONE", 1)],
)
def test_infogain_loss_ignore_label_and_normalization(norm: str, divisor: int) -> None:
    bottom = infogain_bottoms()
    bottom[1].data[:3, 0] = 7  # 6 of the 16 labels ignored (out of range too)
    params = f"loss_param {{ ignore_label: 7 normalization: {norm} }}"
    layer, top = infogain(params), tops(1)
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    counted = bottom[1].data != 7
    _, loss = reference_infogain(
        bottom[0].data, bottom[1].data, bottom[2].data, counted
    )
    assert float(top[0].data) == pytest.approx(loss / divisor, rel=1e-12)
    check_gradient(
        layer, bottom, top, check_bottom=[0], stepsize=1e-4, threshold=2e-2, setup=False
    )
    assert np.all(bottom[0].diff[:3, 0] == 0)


def test_infogain_loss_errors(tmp_path: Path) -> None:
    bottom = infogain_bottoms()
    with pytest.raises(
        ConfigError,
        match=r"^layer 'loss' \(InfogainLoss\): loss_param.normalize is deprecated",
    ):
        infogain("loss_param { normalize: true }").setup(bottom, tops(1))
    with pytest.raises(
        ConfigError,
        match="infogain_loss_param.source: Infogain matrix source must be specified",
    ):
        infogain().setup(bottom[:2], tops(1))
    missing = tmp_path / "nope.binaryproto"
    with pytest.raises(
        ConfigError, match=f"infogain_loss_param.source: {missing}: file not found"
    ):
        infogain(source=missing).setup(bottom[:2], tops(1))
    path = tmp_path / "H4.binaryproto"
    write_h(path, np.eye(4))
    with pytest.raises(
        ShapeError, match="infogain_loss_param.source: H must be 5x5 .* holds 16 values"
    ):
        infogain(source=path).setup(bottom[:2], tops(1))
    layer, top = infogain(), tops(1)
    layer.setup(bottom, top)
    bottom[1].data[0, 0, 0, 0] = 5
    with pytest.raises(DataError, match="label value 5 out of range"):
        layer.forward(bottom, top)
    with pytest.raises(ConfigError, match="cannot backpropagate to label inputs"):
        layer.backward(top, [True, True, False], bottom)
    with pytest.raises(ConfigError, match="cannot backpropagate to infogain inputs"):
        layer.backward(top, [True, False, True], bottom)


# -- MultinomialLogisticLoss -----------------------------------------------------------


def multinomial_bottoms() -> list[Blob]:
    """Caffe's fixture: (10, 5, 1, 1) positive probabilities (rows summing to 1,
    its PositiveUnitballFiller) and 10 labels in [0, 5)."""
    g = rng()
    p = Blob((10, 5, 1, 1), dtype=np.float64)
    raw = g.uniform(0, 1, (10, 5))
    p.data[...] = (raw / raw.sum(axis=1, keepdims=True)).reshape(10, 5, 1, 1)
    label = Blob((10, 1, 1, 1), dtype=np.float64)
    label.data[...] = g.integers(0, 5, size=label.shape)
    return [p, label]


MULTINOMIAL = 'name: "loss" type: "MultinomialLogisticLoss"'


def test_multinomial_logistic_loss_forward_backward() -> None:
    bottom, top = multinomial_bottoms(), tops(1)
    bottom[0].data[0, int(bottom[1].data[0, 0, 0, 0])] = 0.0  # clamped to 1e-20
    layer = layer_from(MULTINOMIAL)
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    p = bottom[0].data.reshape(10, 5)
    gt = bottom[1].data.reshape(10).astype(int)
    picked = np.maximum(p[np.arange(10), gt], LOG_THRESHOLD)
    assert float(top[0].data) == pytest.approx(-np.log(picked).sum() / 10, rel=1e-12)
    top[0].diff[...] = 2.0
    bottom[0].diff[...] = 5.0
    layer.backward(top, [True, False], bottom)
    expected = np.zeros((10, 5))
    expected[np.arange(10), gt] = -2.0 / 10 / picked
    np.testing.assert_allclose(bottom[0].diff.reshape(10, 5), expected, rtol=1e-12)


def test_multinomial_logistic_loss_gradient() -> None:
    # Caffe: GradientChecker(1e-2, 2e-2, 1701, 0, 0.05).
    bottom = multinomial_bottoms()
    bottom[0].data[...] = np.maximum(bottom[0].data, 0.06)  # away from the kink
    check_gradient(
        layer_from(MULTINOMIAL), bottom, tops(1), check_bottom=[0], threshold=2e-2
    )


def test_multinomial_logistic_loss_errors() -> None:
    bottom = multinomial_bottoms()
    with pytest.raises(ShapeError, match="must hold one label per item"):
        layer_from(MULTINOMIAL).setup([bottom[0], Blob((10, 2))], tops(1))
    layer, top = layer_from(MULTINOMIAL), tops(1)
    layer.setup(bottom, top)
    bottom[1].data[4] = 5
    with pytest.raises(DataError, match="label value 5 out of range"):
        layer.forward(bottom, top)
    with pytest.raises(
        ConfigError, match="MultinomialLogisticLoss Layer cannot backpropagate to label"
    ):
        layer.backward(top, [False, True], bottom)


def test_infogain_loss_backward_float32_in_caffes_order() -> None:
    # bottom_diff = prob * sum_rows_H[label] - H[label, l], then one scal by
    # loss_weight / normalizer; sum_rows_H a running float32 sum per row.
    f = np.float32
    g = rng()
    x, label, h = Blob((3, 4)), Blob((3,)), Blob((4, 4))
    x.data[...] = g.uniform(-2, 2, (3, 4))
    label.data[...] = [2, 0, 3]
    h.data[...] = g.uniform(0.1, 2, (4, 4))
    layer = layer_from('name: "l" type: "InfogainLoss" loss_weight: 1 loss_weight: 0')
    loss, prob = Blob(), Blob()
    layer.setup([x, label, h], [loss, prob])
    layer.forward([x, label, h], [loss, prob])
    loss.diff[...] = f(0.9)
    layer.backward([loss, prob], [True, False, False], [x, label, h])
    weight = f(0.9) / f(3)
    for i, gt in enumerate([2, 0, 3]):
        row_sum = f(0)
        for v in h.data[gt]:
            row_sum += v
        expected = (prob.data[i] * row_sum - h.data[gt]) * weight
        np.testing.assert_array_equal(x.diff[i], expected)
