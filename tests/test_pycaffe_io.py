"""caffe.io after pycaffe's python/caffe/test/test_io.py and its documented
behaviour: BlobProto / Datum conversions, the Transformer against the same
steps written out with NumPy, resize_image against scikit-image and SciPy
(what pycaffe called), load_image against Pillow-written files, oversample
against hand-taken crops; Classifier and Detector against a hand-computed
InnerProduct + Softmax."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import zoom
from skimage.transform import resize

import caffe
import caffe.io
from caffesolve.errors import ConfigError

pytestmark = pytest.mark.usefixtures("quiet_log")

RNG = np.random.default_rng(1701)


# -- BlobProto, Datum -------------------------------------------------------------


def test_blobproto_old_and_new_format() -> None:
    blob = caffe.proto.caffe_pb2.BlobProto()
    blob.data.extend(list(np.zeros(100)))
    blob.num, blob.channels, blob.height, blob.width = 1, 1, 10, 10
    assert caffe.io.blobproto_to_array(blob).shape == (1, 1, 10, 10)
    blob = caffe.proto.caffe_pb2.BlobProto()
    blob.data.extend(list(np.zeros(100)))
    blob.shape.dim.extend([10, 10])
    assert caffe.io.blobproto_to_array(blob).shape == (10, 10)


def test_blobproto_without_shape() -> None:
    blob = caffe.proto.caffe_pb2.BlobProto()
    blob.data.extend(list(np.zeros(100)))
    with pytest.raises(ValueError):
        caffe.io.blobproto_to_array(blob)
    scalar = caffe.proto.caffe_pb2.BlobProto()
    scalar.data.append(123)
    assert caffe.io.blobproto_to_array(scalar) == 123


def test_array_to_blobproto_round_trip() -> None:
    arr = RNG.normal(size=(2, 3, 4)).astype(np.float32)
    diff = RNG.normal(size=(2, 3, 4)).astype(np.float32)
    blob = caffe.io.array_to_blobproto(arr, diff)
    assert list(blob.shape.dim) == [2, 3, 4]
    np.testing.assert_array_equal(caffe.io.blobproto_to_array(blob), arr)
    np.testing.assert_array_equal(caffe.io.blobproto_to_array(blob, True), diff)
    arrays = [arr, np.arange(5.0)]
    data = caffe.io.arraylist_to_blobprotovector_str(arrays)
    back = caffe.io.blobprotovector_str_to_arraylist(data)
    for a, b in zip(arrays, back):
        np.testing.assert_array_equal(a, b)


def test_datum_round_trips() -> None:
    with_label = caffe.io.array_to_datum(np.ones((10, 10, 3)), label=1)
    without = caffe.io.array_to_datum(np.ones((10, 10, 3)))
    assert len(with_label.SerializeToString()) > len(without.SerializeToString())
    pixels = RNG.integers(0, 256, (3, 4, 5), dtype=np.uint8)
    datum = caffe.io.array_to_datum(pixels, label=7)
    assert datum.data == pixels.tobytes() and not datum.float_data
    assert (datum.channels, datum.height, datum.width, datum.label) == (3, 4, 5, 7)
    back = caffe.io.datum_to_array(datum)
    np.testing.assert_array_equal(back, pixels)
    back[0, 0, 0] = 1  # a writable array, as fromstring gave
    values = RNG.normal(size=(2, 2, 2))
    np.testing.assert_allclose(
        caffe.io.datum_to_array(caffe.io.array_to_datum(values)), values
    )
    with pytest.raises(ValueError, match="Incorrect array shape"):
        caffe.io.array_to_datum(np.zeros((2, 2)))


# -- the Transformer ------------------------------------------------------------------


def classic_transformer(shape: tuple[int, ...]) -> caffe.io.Transformer:
    """The classification notebook's set-up."""
    t = caffe.io.Transformer({"data": shape})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255)
    t.set_mean("data", np.array([104.0, 117.0, 123.0]))
    t.set_input_scale("data", 0.5)
    return t


def test_preprocess_steps_and_deprocess() -> None:
    image = RNG.random((4, 5, 3)).astype(np.float32)
    kept = image.copy()
    t = classic_transformer((1, 3, 4, 5))
    out = t.preprocess("data", image)
    bgr = image.transpose(2, 0, 1)[[2, 1, 0]]
    expected = (bgr * np.float32(255) - np.array([104, 117, 123])[:, None, None]) * 0.5
    assert out.dtype == np.float32 and out.shape == (3, 4, 5)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-4)
    np.testing.assert_array_equal(image, kept)  # the caller's image is untouched
    np.testing.assert_allclose(t.deprocess("data", out), image, atol=1e-5)


def test_preprocess_resizes_to_the_input() -> None:
    image = RNG.random((8, 6, 3)).astype(np.float32)
    t = caffe.io.Transformer({"data": (1, 3, 4, 3)})
    t.set_transpose("data", (2, 0, 1))
    out = t.preprocess("data", image)
    expected = caffe.io.resize_image(image, (4, 3)).transpose(2, 0, 1)
    np.testing.assert_array_equal(out, expected)


def test_transformer_checks() -> None:
    t = caffe.io.Transformer({"data": (1, 3, 4, 5)})
    with pytest.raises(ConfigError, match="not one of the net inputs"):
        t.set_raw_scale("image", 255)
    with pytest.raises(ConfigError, match="Transpose order"):
        t.set_transpose("data", (1, 0))
    with pytest.raises(ConfigError, match="Channel swap"):
        t.set_channel_swap("data", (1, 0))
    with pytest.raises(ValueError, match="Mean channels"):
        t.set_mean("data", np.zeros(4))
    with pytest.raises(ValueError, match="Mean shape invalid"):
        t.set_mean("data", np.zeros((1, 3, 4, 5)))


def test_set_mean_elementwise_and_resized() -> None:
    t = caffe.io.Transformer({"data": (1, 3, 4, 5)})
    mean = RNG.random((3, 4, 5))
    t.set_mean("data", mean)
    np.testing.assert_array_equal(t.mean["data"], mean)
    big = RNG.random((3, 8, 10)) * 100
    t.set_mean("data", big)
    low, high = big.min(), big.max()
    normal = (big - low) / (high - low)
    ref = resize(normal.transpose(1, 2, 0), (4, 5), order=1, mode="constant",
                 anti_aliasing=False)  # fmt: skip
    expected = ref.transpose(2, 0, 1) * (high - low) + low
    np.testing.assert_allclose(t.mean["data"], expected, rtol=1e-5)


# -- images ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, new", [((7, 5, 3), (15, 11)), ((20, 13, 1), (6, 4)), ((9, 6, 3), (4, 17))]
)
def test_resize_image_is_skimages_linear_resize(shape: tuple, new: tuple) -> None:
    im = (RNG.random(shape) * 200 - 50).astype(np.float32)
    low, high = im.min(), im.max()
    for order in (0, 1):
        ref = resize((im - low) / (high - low), new, order=order, mode="constant",
                     anti_aliasing=False) * (high - low) + low  # fmt: skip
        out = caffe.io.resize_image(im, new, order)
        assert out.dtype == np.float32 and out.shape == (*new, shape[2])
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-4)


def test_resize_image_other_channel_counts_zoom() -> None:
    im = RNG.random((7, 5, 4)).astype(np.float32)
    for order in (0, 1):
        ref = zoom(im, (15 / 7, 3 / 5, 1), order=order)
        np.testing.assert_allclose(
            caffe.io.resize_image(im, (15, 3), order), ref, atol=1e-6
        )


def test_resize_constant_image_and_bad_order() -> None:
    out = caffe.io.resize_image(np.full((3, 3, 3), 0.25, np.float32), (5, 2))
    assert out.shape == (5, 2, 3) and np.all(out == 0.25)
    with pytest.raises(ConfigError, match="interp_order 3"):
        caffe.io.resize_image(np.zeros((3, 3, 3)), (5, 5), 3)


def test_load_image(tmp_path: Path) -> None:
    rgba = RNG.integers(0, 256, (4, 6, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    img = caffe.io.load_image(str(tmp_path / "rgba.png"))
    assert img.dtype == np.float32 and img.shape == (4, 6, 3)
    np.testing.assert_allclose(img, rgba[:, :, :3] / 255.0, rtol=1e-6)
    grey = caffe.io.load_image(str(tmp_path / "rgba.png"), color=False)
    weights = np.array([0.2125, 0.7154, 0.0721])  # skimage's rgb2gray
    np.testing.assert_allclose(grey[:, :, 0], (rgba[:, :, :3] / 255.0) @ weights,
                               rtol=1e-6)  # fmt: skip
    assert grey.shape == (4, 6, 1)
    luma = RNG.integers(0, 256, (3, 2), dtype=np.uint8)
    Image.fromarray(luma, "L").save(tmp_path / "l.png")
    colour = caffe.io.load_image(str(tmp_path / "l.png"))
    assert colour.shape == (3, 2, 3)
    np.testing.assert_allclose(colour, np.repeat(luma[:, :, None], 3, 2) / 255.0)
    with pytest.raises(ConfigError, match="cannot read the image"):
        caffe.io.load_image(str(tmp_path / "missing.png"))


def test_oversample_crops() -> None:
    images = [RNG.random((6, 9, 2)).astype(np.float32) for _ in range(2)]
    crops = caffe.io.oversample(images, (4, 4))
    assert crops.shape == (20, 4, 4, 2)
    # corners, then the centre (3 - 2, 4.5 - 2 truncated), then mirrored
    corners = [(0, 0), (0, 5), (2, 0), (2, 5), (1, 2)]
    for k, im in enumerate(images):
        for c, (i, j) in enumerate(corners):
            window = im[i : i + 4, j : j + 4]
            np.testing.assert_array_equal(crops[10 * k + c], window)
            np.testing.assert_array_equal(crops[10 * k + 5 + c], window[:, ::-1])


# -- Classifier and Detector -----------------------------------------------------------

DEPLOY = """name: 'tiny'
layer { name: 'data' type: 'Input' top: 'data'
  input_param { shape { dim: 10 dim: 3 dim: 4 dim: 4 } } }
layer { name: 'ip' type: 'InnerProduct' bottom: 'data' top: 'ip'
  inner_product_param { num_output: 5 weight_filler { type: 'gaussian' std: 0.1 }
    bias_filler { type: 'gaussian' std: 0.1 } } }
layer { name: 'prob' type: 'Softmax' bottom: 'ip' top: 'prob' }
"""


@pytest.fixture
def deploy(tmp_path: Path) -> tuple[str, str, caffe.Net]:
    model = tmp_path / "deploy.prototxt"
    model.write_text(DEPLOY)
    weights = str(tmp_path / "tiny.caffemodel")
    net = caffe.Net(str(model), caffe.TEST)
    net.save(weights)
    return str(model), weights, net


def probabilities(net: caffe.Net, inputs: np.ndarray) -> np.ndarray:
    w, b = (p.data.astype(np.float64) for p in net.params["ip"])
    scores = inputs.reshape(len(inputs), -1) @ w.T + b
    e = np.exp(scores - scores.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_classifier_predict(deploy: tuple[str, str, caffe.Net]) -> None:
    model, weights, net = deploy
    mean = np.array([0.1, 0.2, 0.3])
    clf = caffe.Classifier(model, weights, image_dims=(6, 6), mean=mean,
                           raw_scale=2.0, channel_swap=(2, 1, 0))  # fmt: skip
    images = [RNG.random((7, 5, 3)).astype(np.float32) for _ in range(3)]

    def prepared(crop: np.ndarray) -> np.ndarray:
        chw = crop.transpose(2, 0, 1)[[2, 1, 0]] * 2.0
        return chw - mean[:, None, None]

    scaled = [caffe.io.resize_image(im, (6, 6)) for im in images]
    centre = np.stack([prepared(s[1:5, 1:5]) for s in scaled])
    np.testing.assert_allclose(
        clf.predict(images, oversample=False), probabilities(net, centre), atol=1e-6
    )
    crops = caffe.io.oversample(scaled, (4, 4))
    ten = probabilities(net, np.stack([prepared(c) for c in crops]))
    np.testing.assert_allclose(
        clf.predict(images), ten.reshape(3, 10, 5).mean(1), atol=1e-6
    )


def test_detector_windows(deploy: tuple[str, str, caffe.Net], tmp_path: Path) -> None:
    model, weights, net = deploy
    pixels = RNG.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").save(tmp_path / "img.png")
    det = caffe.Detector(model, weights, raw_scale=255)
    windows = [(0, 0, 4, 4), (2, 3, 10, 9)]
    found = det.detect_windows([(str(tmp_path / "img.png"), windows)])
    image = pixels / np.float32(255)
    inputs = []
    for y0, x0, y1, x1 in windows:
        crop = caffe.io.resize_image(image[y0:y1, x0:x1].astype(np.float32), (4, 4))
        inputs.append(crop.transpose(2, 0, 1) * 255)
    expected = probabilities(net, np.stack(inputs))
    assert [d["window"] for d in found] == windows
    for d, p in zip(found, expected):
        assert d["filename"] == str(tmp_path / "img.png")
        # float32 scores against a float64 reference: the unseeded weights can
        # make logits of size 100, whose float32 rounding moves p by ~1e-5 of p.
        np.testing.assert_allclose(d["prediction"], p, rtol=5e-5, atol=1e-6)
    # with context: the padded border outside the image is the mean
    padded = caffe.Detector(model, weights, raw_scale=255, context_pad=1,
                            mean=np.array([10.0, 20.0, 30.0]))  # fmt: skip
    crop = padded.crop(image.astype(np.float32), np.array([0, 0, 11, 9]))
    assert crop.shape == (4, 4, 3)
    np.testing.assert_allclose(crop[0, 0], np.array([10.0, 20.0, 30.0]) / 255)
