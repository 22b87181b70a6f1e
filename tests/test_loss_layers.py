"""Loss layer tests after Caffe's test_euclidean_loss_layer.cpp,
test_softmax_with_loss_layer.cpp, test_sigmoid_cross_entropy_loss_layer.cpp
and test_accuracy_layer.cpp."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import EXAMPLES, layer_from, rng
from gradient_check import check_gradient, make_blob

from caffesolve.blob import Blob
from caffesolve.errors import ConfigError, DataError, ShapeError
from caffesolve.layers import Layer, create_layer
from caffesolve.net import Net
from caffesolve.proto import caffe_pb2
from caffesolve.proto.io import parse_prototxt_text

# -- EuclideanLoss ---------------------------------------------------------------


def test_euclidean_loss_forward() -> None:
    layer = layer_from('name: "loss" type: "EuclideanLoss"')
    a, b = make_blob((10, 5, 1, 1), rng()), make_blob((10, 5, 1, 1), rng())
    top = Blob(dtype=np.float64)
    layer.setup([a, b], [top])
    assert top.shape == () and layer.loss == [1.0]
    layer.forward([a, b], [top])
    ref = np.sum((a.data - b.data) ** 2) / 10 / 2
    assert float(top.data) == pytest.approx(ref, rel=1e-12)


def test_euclidean_loss_gradient() -> None:
    layer = layer_from('name: "loss" type: "EuclideanLoss"')
    g = rng()
    a, b = make_blob((10, 5, 1, 1), g), make_blob((10, 5, 1, 1), g)
    check_gradient(layer, [a, b], [Blob(dtype=np.float64)])


def test_euclidean_loss_gradient_scaled_by_loss_weight() -> None:
    layer = layer_from('name: "loss" type: "EuclideanLoss" loss_weight: 3')
    g = rng()
    a, b = make_blob((4, 3), g), make_blob((4, 3), g)
    top = Blob(dtype=np.float64)
    layer.setup([a, b], [top])
    assert layer.loss == [3.0]
    layer.forward([a, b], [top])
    top.diff[...] = 3.0
    layer.backward([top], [True, True], [a, b])
    np.testing.assert_allclose(a.diff, 3.0 * (a.data - b.data) / 4)
    np.testing.assert_allclose(b.diff, -3.0 * (a.data - b.data) / 4)


def test_euclidean_loss_float32() -> None:
    layer = layer_from('name: "loss" type: "EuclideanLoss"')
    a, b, top = Blob((2, 3)), Blob((2, 3)), Blob()
    a.data[...] = 1.5
    layer.setup([a, b], [top])
    layer.forward([a, b], [top])
    top.diff[...] = 1.0
    layer.backward([top], [True, False], [a, b])
    assert top.data.dtype == np.float32 and a.diff.dtype == np.float32
    assert float(top.data) == pytest.approx(6 * 2.25 / 2 / 2)
    np.testing.assert_allclose(a.diff, 0.75)


def test_euclidean_loss_shape_errors() -> None:
    layer = layer_from('name: "loss" type: "EuclideanLoss"')
    with pytest.raises(ShapeError, match="same first dimension"):
        layer.setup([Blob((2, 3)), Blob((3, 3))], [Blob()])
    with pytest.raises(ShapeError, match="same dimension"):
        layer.setup([Blob((2, 3)), Blob((2, 4))], [Blob()])


# -- SoftmaxWithLoss ---------------------------------------------------------------


def softmax_loss_blobs() -> tuple[Blob, Blob]:
    """Caffe's fixture: (10, 5, 2, 3) scores, (10, 1, 2, 3) labels in [0, 5)."""
    g = rng()
    x = make_blob((10, 5, 2, 3), g, low=-3, high=3)
    label = Blob((10, 1, 2, 3), dtype=np.float64)
    label.data[...] = g.integers(0, 5, size=label.shape)
    return x, label


def reference_nll(x: np.ndarray, label: np.ndarray) -> np.ndarray:
    """-log softmax(x)[label] per (n, h, w), computed independently."""
    logz = np.log(np.exp(x).sum(axis=1))
    picked = np.take_along_axis(x, label.astype(int), axis=1)[:, 0]
    return logz - picked


def softmax_loss(params: str = "") -> Layer:
    return layer_from(f'name: "loss" type: "SoftmaxWithLoss" {params}')


@pytest.mark.parametrize(
    ("params", "divisor"),
    [
        ("", 60),  # VALID, no ignore_label: every label counts
        ("loss_param { normalization: FULL }", 60),
        ("loss_param { normalization: BATCH_SIZE }", 10),
        ("loss_param { normalization: NONE }", 1),
        ("loss_param { normalize: true }", 60),
        ("loss_param { normalize: false }", 10),
        ("loss_param { normalization: NONE normalize: false }", 1),
    ],
)
def test_softmax_with_loss_forward(params: str, divisor: int) -> None:
    x, label = softmax_loss_blobs()
    layer = softmax_loss(params)
    top = Blob(dtype=np.float64)
    layer.setup([x, label], [top])
    layer.forward([x, label], [top])
    ref = reference_nll(x.data, label.data).sum() / divisor
    assert float(top.data) == pytest.approx(ref, rel=1e-12)


@pytest.mark.parametrize(
    ("norm", "divisor"), [("VALID", None), ("FULL", 60), ("BATCH_SIZE", 10)]
)
def test_softmax_with_loss_ignore_label(norm: str, divisor: int | None) -> None:
    x, label = softmax_loss_blobs()
    label.data[:, :, 0, :] = 255  # 30 of 60 labels ignored (out of range too)
    layer = softmax_loss(f"loss_param {{ ignore_label: 255 normalization: {norm} }}")
    top = Blob(dtype=np.float64)
    layer.setup([x, label], [top])
    layer.forward([x, label], [top])
    kept = reference_nll(x.data[:, :, 1:], label.data[:, :, 1:])
    ref = kept.sum() / (divisor or kept.size)
    assert float(top.data) == pytest.approx(ref, rel=1e-12)
    check_gradient(layer, [x, label], [top], check_bottom=[0], setup=False)
    # Ignored positions get no gradient at all.
    layer.backward([top], [True, False], [x, label])
    assert np.all(x.diff[:, :, 0, :] == 0)


def test_softmax_with_loss_all_ignored_normalizer_is_one() -> None:
    x, label = softmax_loss_blobs()
    label.data[...] = -1
    layer = softmax_loss("loss_param { ignore_label: -1 }")
    top = Blob(dtype=np.float64)
    layer.setup([x, label], [top])
    layer.forward([x, label], [top])
    assert float(top.data) == 0.0
    top.diff[...] = 1.0
    layer.backward([top], [True, False], [x, label])
    assert np.all(x.diff == 0)


@pytest.mark.parametrize("params", ["", "loss_param { normalization: NONE }"])
def test_softmax_with_loss_gradient(params: str) -> None:
    x, label = softmax_loss_blobs()
    top = Blob(dtype=np.float64)
    check_gradient(softmax_loss(params), [x, label], [top], check_bottom=[0])


def test_softmax_with_loss_gradient_closed_form() -> None:
    # dx = (prob - onehot) * loss_weight / normalizer.
    x, label = softmax_loss_blobs()
    layer = softmax_loss("loss_weight: 2")
    top = Blob(dtype=np.float64)
    layer.setup([x, label], [top])
    layer.forward([x, label], [top])
    top.diff[...] = 2.0
    layer.backward([top], [True, False], [x, label])
    e = np.exp(x.data)
    prob = e / e.sum(axis=1, keepdims=True)
    onehot = np.arange(5)[None, :, None, None] == label.data
    np.testing.assert_allclose(x.diff, (prob - onehot) * 2.0 / 60, rtol=1e-12)


def test_softmax_with_loss_prob_top_and_axis() -> None:
    g = rng()
    x = make_blob((4, 3, 7), g)  # classes on the last axis
    label = Blob((4, 3), dtype=np.float64)
    label.data[...] = g.integers(0, 7, size=(4, 3))
    layer = softmax_loss("softmax_param { axis: -1 }")
    loss, prob = Blob(dtype=np.float64), Blob(dtype=np.float64)
    layer.setup([x, label], [loss, prob])
    assert layer.loss == [1.0, 0.0]
    layer.forward([x, label], [loss, prob])
    e = np.exp(x.data)
    np.testing.assert_allclose(prob.data, e / e.sum(axis=-1, keepdims=True))
    logz = np.log(e.sum(axis=-1))
    picked = np.take_along_axis(x.data, label.data.astype(int)[..., None], -1)[..., 0]
    assert float(loss.data) == pytest.approx((logz - picked).mean(), rel=1e-12)


def test_softmax_with_loss_float32() -> None:
    x, label = Blob((2, 3)), Blob((2,))
    x.data[...] = [[1, 2, 3], [0, 0, 0]]
    label.data[...] = [2, 1]
    layer, top = softmax_loss(), Blob()
    layer.setup([x, label], [top])
    layer.forward([x, label], [top])
    ref = (np.log(np.exp([1, 2, 3]).sum()) - 3 + np.log(3)) / 2
    assert top.data.dtype == np.float32
    assert float(top.data) == pytest.approx(ref, rel=1e-6)


def test_softmax_with_loss_label_errors() -> None:
    x, label = softmax_loss_blobs()
    with pytest.raises(ShapeError, match="Number of labels must match"):
        softmax_loss().setup([x, Blob((10, 2))], [Blob()])
    layer, top = softmax_loss(), Blob(dtype=np.float64)
    layer.setup([x, label], [top])
    label.data[0, 0, 0, 0] = 5
    with pytest.raises(DataError, match="label value 5 out of range"):
        layer.forward([x, label], [top])
    assert not layer.allow_force_backward(1) and layer.allow_force_backward(0)


# -- SigmoidCrossEntropyLoss --------------------------------------------------------


def sigmoid_xent_reference(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    p = 1 / (1 + np.exp(-x))
    return -(t * np.log(p) + (1 - t) * np.log(1 - p))


def xent_blobs() -> tuple[Blob, Blob]:
    g = rng()
    x = make_blob((10, 5, 1, 1), g, low=-4, high=4)
    t = Blob((10, 5, 1, 1), dtype=np.float64)
    t.data[...] = g.random(t.shape)  # soft targets in [0, 1)
    return x, t


@pytest.mark.parametrize(
    ("params", "divisor"),
    [
        ("", 10),  # Caffe's default for this layer: BATCH_SIZE
        ("loss_param { normalization: FULL }", 50),
        ("loss_param { normalization: VALID }", 50),
        ("loss_param { normalization: NONE }", 1),
        ("loss_param { normalize: true }", 50),
    ],
)
def test_sigmoid_cross_entropy_loss_forward(params: str, divisor: int) -> None:
    x, t = xent_blobs()
    layer = layer_from(f'name: "l" type: "SigmoidCrossEntropyLoss" {params}')
    top = Blob(dtype=np.float64)
    layer.setup([x, t], [top])
    layer.forward([x, t], [top])
    ref = sigmoid_xent_reference(x.data, t.data).sum() / divisor
    assert float(top.data) == pytest.approx(ref, rel=1e-10)


def test_sigmoid_cross_entropy_loss_gradient() -> None:
    x, t = xent_blobs()
    layer = layer_from('name: "l" type: "SigmoidCrossEntropyLoss"')
    check_gradient(layer, [x, t], [Blob(dtype=np.float64)], check_bottom=[0])


def test_sigmoid_cross_entropy_loss_ignore_label() -> None:
    x, t = xent_blobs()
    t.data[...] = rng().integers(0, 2, size=t.shape)
    t.data[:3] = -1
    layer = layer_from(
        'name: "l" type: "SigmoidCrossEntropyLoss" '
        "loss_param { ignore_label: -1 normalization: VALID }"
    )
    top = Blob(dtype=np.float64)
    layer.setup([x, t], [top])
    layer.forward([x, t], [top])
    ref = sigmoid_xent_reference(x.data[3:], t.data[3:]).sum() / 35
    assert float(top.data) == pytest.approx(ref, rel=1e-10)
    check_gradient(layer, [x, t], [top], check_bottom=[0], setup=False)
    assert np.all(x.diff[:3] == 0)


def test_sigmoid_cross_entropy_loss_extreme_inputs_finite() -> None:
    x, t, top = Blob((1, 2)), Blob((1, 2)), Blob()
    x.data[...] = [200.0, -200.0]
    t.data[...] = [0.0, 1.0]
    layer = layer_from('name: "l" type: "SigmoidCrossEntropyLoss"')
    layer.setup([x, t], [top])
    layer.forward([x, t], [top])
    assert float(top.data) == pytest.approx(400.0)


# -- Accuracy --------------------------------------------------------------------------


def accuracy(params: str = "") -> Layer:
    return layer_from(f'name: "acc" type: "Accuracy" {params}', caffe_pb2.TEST)


def hand_scores() -> tuple[Blob, Blob]:
    """Four samples, four classes; true class rank 1, 2, 3, 1."""
    x, label = Blob((4, 4)), Blob((4,))
    x.data[...] = [
        [0.1, 0.7, 0.1, 0.1],  # label 1: rank 1
        [0.5, 0.4, 0.05, 0.05],  # label 1: rank 2
        [0.4, 0.3, 0.2, 0.1],  # label 2: rank 3
        [0.1, 0.1, 0.1, 0.7],  # label 3: rank 1
    ]
    label.data[...] = [1, 1, 2, 3]
    return x, label


@pytest.mark.parametrize(("top_k", "expected"), [(1, 0.5), (2, 0.75), (3, 1.0)])
def test_accuracy_top_k(top_k: int, expected: float) -> None:
    x, label = hand_scores()
    layer, top = accuracy(f"accuracy_param {{ top_k: {top_k} }}"), Blob()
    layer.setup([x, label], [top])
    layer.forward([x, label], [top])
    assert top.shape == () and float(top.data) == pytest.approx(expected)


def test_accuracy_ties_count_against() -> None:
    # Caffe counts every class scoring >= the true one as better.
    x, label, top = Blob((1, 3)), Blob((1,)), Blob()
    x.data[...] = [[0.5, 0.5, 0.0]]
    label.data[...] = [1]
    layer = accuracy()
    layer.setup([x, label], [top])
    layer.forward([x, label], [top])
    assert float(top.data) == 0.0


def test_accuracy_ignore_label_and_per_class() -> None:
    x, label = hand_scores()
    label.data[0] = 7  # ignored
    layer = accuracy("accuracy_param { ignore_label: 7 }")
    top, per_class = Blob(), Blob()
    layer.setup([x, label], [top, per_class])
    layer.forward([x, label], [top, per_class])
    assert float(top.data) == pytest.approx(1 / 3)
    np.testing.assert_allclose(per_class.data, [0.0, 0.0, 0.0, 1.0])


def test_accuracy_spatial_axis() -> None:
    g = rng()
    x = Blob((3, 4, 2, 5))
    x.data[...] = g.random(x.shape)
    label = Blob((3, 1, 2, 5))
    label.data[...] = g.integers(0, 4, size=label.shape)
    layer, top = accuracy(), Blob()
    layer.setup([x, label], [top])
    layer.forward([x, label], [top])
    ref = np.mean(np.argmax(x.data, axis=1) == label.data[:, 0])
    assert float(top.data) == pytest.approx(ref)


def test_accuracy_errors() -> None:
    x, label = hand_scores()
    with pytest.raises(ConfigError, match="top_k"):
        accuracy("accuracy_param { top_k: 5 }").setup([x, label], [Blob()])
    layer, top = accuracy(), Blob()
    layer.setup([x, label], [top])
    with pytest.raises(ConfigError, match="cannot backpropagate"):
        layer.backward([top], [True, False], [x, label])


# -- Caffe's example nets: the layers of LeNet's tail and the autoencoder -----------


def example_layers(name: str) -> dict[str, caffe_pb2.LayerParameter]:
    path = EXAMPLES / name
    if not path.exists():
        pytest.skip(f"{path} not available")
    net = parse_prototxt_text(path.read_text(), caffe_pb2.NetParameter(), str(path))
    return {layer.name: layer for layer in net.layer}


def test_lenet_tail_float32() -> None:
    """pool2 -> ip1 -> relu1 (in place) -> ip2 -> loss / accuracy, float32."""
    params = example_layers("mnist__lenet_train_test.prototxt")
    g = np.random.default_rng(1701)
    names = ("ip1", "relu1", "ip2", "loss", "accuracy")
    make = {n: create_layer(params[n], caffe_pb2.TEST, g) for n in names}
    pool2, ip1, ip2, label = Blob((4, 50, 4, 4)), Blob(), Blob(), Blob((4,))
    loss, acc = Blob(), Blob()
    label.data[...] = [3, 1, 4, 1]
    chain = [
        (make["ip1"], [pool2], [ip1]),
        (make["relu1"], [ip1], [ip1]),
        (make["ip2"], [ip1], [ip2]),
        (make["loss"], [ip2, label], [loss]),
        (make["accuracy"], [ip2, label], [acc]),
    ]
    for layer, bottom, top in chain:
        layer.setup(bottom, top)
    assert make["ip1"].blobs[0].shape == (500, 800)
    assert make["ip2"].blobs[0].shape == (10, 500)
    # Zero input and constant-0 bias: every class equally likely.
    for layer, bottom, top in chain:
        layer.forward(bottom, top)
    assert float(loss.data) == pytest.approx(np.log(10), rel=1e-6)
    # Random input: the loss equals an independent NumPy evaluation.
    pool2.data[...] = g.random(pool2.shape)
    for layer, bottom, top in chain:
        layer.forward(bottom, top)
    w1, b1 = make["ip1"].blobs[0].data, make["ip1"].blobs[1].data
    w2, b2 = make["ip2"].blobs[0].data, make["ip2"].blobs[1].data
    scores = np.maximum(pool2.data.reshape(4, -1) @ w1.T + b1, 0) @ w2.T + b2
    assert float(loss.data) == pytest.approx(
        reference_nll(scores, label.data[:, None]).mean(), rel=1e-5
    )
    loss.diff[...] = 1.0
    for layer, bottom, top in reversed(chain[:4]):
        layer.backward(top, [True] + [False] * (len(bottom) - 1), bottom)
    for blob in [pool2, ip1, ip2, loss, acc] + make["ip1"].blobs + make["ip2"].blobs:
        assert blob.data.dtype == np.float32 and blob.diff.dtype == np.float32
    assert np.abs(pool2.diff).sum() > 0


def test_autoencoder_layers_set_up() -> None:
    params = example_layers("mnist__mnist_autoencoder.prototxt")
    g = np.random.default_rng(1701)
    flat = Blob()
    flatten = create_layer(params["flatdata"], caffe_pb2.TRAIN, g)
    flatten.setup([Blob((2, 1, 28, 28))], [flat])
    assert flat.shape == (2, 784)
    encode1 = create_layer(params["encode1"], caffe_pb2.TRAIN, g)
    encode1.setup([flat], [Blob()])
    w = encode1.blobs[0].data
    assert w.shape == (1000, 784)
    # gaussian sparse: 15 keeps each weight with probability 15 / 1000.
    assert abs(np.count_nonzero(w) / w.size - 0.015) < 0.002


# -- normalization and ignore_label, every mode ----------------------------------------


@pytest.mark.parametrize(
    ("norm", "divisor"),
    [
        ("normalization: FULL", 50),
        ("normalization: VALID", 35),
        ("normalization: BATCH_SIZE", 10),
        ("normalization: NONE", 1),
        ("normalize: true", 35),
        ("normalize: false", 10),
        ("", 10),
    ],
)
def test_sigmoid_cross_entropy_loss_ignore_label_every_mode(
    norm: str, divisor: int
) -> None:
    x, t = xent_blobs()
    t.data[...] = rng().integers(0, 2, size=t.shape)
    t.data[:3] = 9  # 15 of 50 targets ignored
    layer = layer_from(
        f'name: "l" type: "SigmoidCrossEntropyLoss" '
        f"loss_param {{ ignore_label: 9 {norm} }}"
    )
    top = Blob(dtype=np.float64)
    layer.setup([x, t], [top])
    layer.forward([x, t], [top])
    ref = sigmoid_xent_reference(x.data[3:], t.data[3:]).sum() / divisor
    assert float(top.data) == pytest.approx(ref, rel=1e-10)
    top.diff[...] = 1.0
    layer.backward([top], [True, False], [x, t])
    p = 1 / (1 + np.exp(-x.data[3:]))
    np.testing.assert_allclose(x.diff[3:], (p - t.data[3:]) / divisor, rtol=1e-10)
    assert np.all(x.diff[:3] == 0)


@pytest.mark.parametrize(
    ("norm", "divisor"),
    [("normalize: true", 30), ("normalize: false", 10), ("normalization: NONE", 1)],
)
def test_softmax_with_loss_ignore_label_legacy_normalize(
    norm: str, divisor: int
) -> None:
    x, label = softmax_loss_blobs()
    label.data[:, :, 0, :] = 255
    layer = softmax_loss(f"loss_param {{ ignore_label: 255 {norm} }}")
    top = Blob(dtype=np.float64)
    layer.setup([x, label], [top])
    layer.forward([x, label], [top])
    kept = reference_nll(x.data[:, :, 1:], label.data[:, :, 1:])
    assert float(top.data) == pytest.approx(kept.sum() / divisor, rel=1e-12)


def test_loss_layer_without_top_gets_one() -> None:
    # Caffe's LossLayer has AutoTopBlobs: a loss with no top still counts.
    text = (
        'layer { name: "in" type: "Input" top: "x" top: "y" input_param { '
        "shape { dim: 2 dim: 3 } shape { dim: 2 } } }\n"
        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "y" }\n'
    )
    param = parse_prototxt_text(text, caffe_pb2.NetParameter(), "auto.prototxt")
    net = Net(param, caffe_pb2.TRAIN, source="auto.prototxt", quiet=True)
    net.blob_by_name("x").data[...] = [[1, 2, 3], [0, 0, 0]]
    net.blob_by_name("y").data[...] = [2, 1]
    ref = (np.log(np.exp([1, 2, 3]).sum()) - 3 + np.log(3)) / 2
    assert net.forward() == pytest.approx(ref, rel=1e-6)
    assert len(net.top_vecs[1]) == 1
