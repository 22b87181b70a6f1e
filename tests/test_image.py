"""Image decoding and resizing against OpenCV (the library Caffe calls), on
real photos and on the modes Caffe's tools meet; resize values by hand."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from image_helpers import photos
from PIL import Image

from caffesolve.data.image import (
    decode_image,
    encode_image,
    read_image,
    resize_linear,
)
from caffesolve.errors import DataError

MODES = {
    "color": cv2.IMREAD_COLOR,
    "gray": cv2.IMREAD_GRAYSCALE,
    "unchanged": cv2.IMREAD_UNCHANGED,
}


def cv_decode(data: bytes, mode: str) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), MODES[mode])
    return img[:, :, None] if img.ndim == 2 else img


# -- resize ------------------------------------------------------------------------


def test_resize_by_hand() -> None:
    # 1x2 -> 1x4: source x = (d + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25;
    # weights 0.25 -> (1536, 512) in 1/2048; horizontal sums 0, 255*512,
    # 255*1536, 255*2048; vertical weight (2048, 0):
    # ((2048 * (S >> 4)) >> 16 + 2) >> 2 -> 0, 64, 191, 255
    src = np.array([[[0], [255]]], np.uint8)
    out = resize_linear(src, 1, 4)
    assert out[0, :, 0].tolist() == [0, 64, 191, 255]
    # an exact halving is OpenCV's 2x2 area average, (a + b + c + d + 2) >> 2
    src = np.array([[1, 2], [3, 5]], np.uint8)[:, :, None]
    assert resize_linear(src, 1, 1)[0, 0, 0] == (1 + 2 + 3 + 5 + 2) >> 2
    # same size: a copy
    same = resize_linear(src, 2, 2)
    assert np.array_equal(same, src) and same is not src


@pytest.mark.parametrize("seed", range(4))
def test_resize_matches_opencv_on_random_sizes(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(40):
        h, w, dh, dw = (int(v) for v in rng.integers(1, 70, 4))
        c = int(rng.choice([1, 3, 4]))
        img = rng.integers(0, 256, (h, w, c), dtype=np.uint8)
        ref = cv2.resize(img, (dw, dh), interpolation=cv2.INTER_LINEAR)
        ref = ref[:, :, None] if ref.ndim == 2 else ref
        np.testing.assert_array_equal(resize_linear(img, dh, dw), ref)


def test_resize_matches_opencv_on_real_photos() -> None:
    for path in photos():
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        h, w = img.shape[:2]
        for dh, dw in ((227, 227), (32, 32), (h // 2, w // 2), (2 * h // 3, w + 7)):
            ref = cv2.resize(img, (dw, dh))
            np.testing.assert_array_equal(resize_linear(img, dh, dw), ref, str(path))


def test_pillow_bilinear_is_not_opencvs() -> None:
    """What the README reports: Pillow's BILINEAR (an antialiasing filter when
    it shrinks) is not OpenCV's INTER_LINEAR; ours is, bit for bit."""
    path = photos()[0]
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    ref = cv2.resize(img, (227, 227)).astype(int)
    pil = Image.fromarray(img[:, :, ::-1]).resize((227, 227), Image.BILINEAR)
    diff = np.abs(np.asarray(pil)[:, :, ::-1].astype(int) - ref)
    assert diff.max() > 20 and 1 < diff.mean() < 6
    assert np.array_equal(resize_linear(img, 227, 227), ref)


# -- decode --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", list(MODES))
def test_decode_matches_opencv_on_real_photos(mode: str) -> None:
    for path in photos():
        data = path.read_bytes()
        np.testing.assert_array_equal(
            decode_image(data, mode, str(path)), cv_decode(data, mode), str(path)
        )


def _encoded(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def odd_images() -> dict[str, bytes]:
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (17, 23, 4), dtype=np.uint8)
    rgb = Image.fromarray(a[:, :, :3].copy())
    exif = rgb.getexif()
    exif[0x0112] = 6  # orientation: rotate 90
    return {
        "rgba.png": _encoded(Image.fromarray(a, "RGBA"), "PNG"),
        "la.png": _encoded(Image.fromarray(a[:, :, :2].copy(), "LA"), "PNG"),
        "palette.png": _encoded(rgb.convert("P"), "PNG"),
        "gray.jpg": _encoded(rgb.convert("L"), "JPEG"),
        "exif.jpg": _encoded(rgb, "JPEG", exif=exif.tobytes()),
        "rgb.bmp": _encoded(rgb, "BMP"),
    }


@pytest.mark.parametrize("mode", list(MODES))
def test_decode_matches_opencv_on_odd_images(mode: str) -> None:
    for name, data in odd_images().items():
        np.testing.assert_array_equal(
            decode_image(data, mode, name), cv_decode(data, mode), name
        )


def test_sixteen_bit_gray_keeps_the_high_byte() -> None:
    a = np.random.default_rng(1).integers(0, 65536, (9, 11)).astype(np.uint16)
    data = _encoded(Image.fromarray(a), "PNG")
    for mode in ("color", "gray"):
        np.testing.assert_array_equal(
            decode_image(data, mode, "x"), cv_decode(data, mode)
        )
    with pytest.raises(DataError, match="8-bit pixels"):
        decode_image(data, "unchanged", "x.png")


def test_corrupt_and_missing_images(tmp_path: Path) -> None:
    good = odd_images()["exif.jpg"]
    with pytest.raises(DataError, match="bad.jpg: cannot decode the image"):
        decode_image(good[: len(good) // 2], "color", "bad.jpg")
    with pytest.raises(DataError, match="junk: cannot decode"):
        decode_image(b"not an image", "color", "junk")
    with pytest.raises(DataError, match="Could not open or find file .*nope.png"):
        read_image(str(tmp_path / "nope.png"))


def test_read_image_resizes_like_caffe(tmp_path: Path) -> None:
    path = photos()[1]
    img = read_image(str(path), 100, 120, is_color=True)
    ref = cv2.resize(cv2.imread(str(path)), (120, 100))
    np.testing.assert_array_equal(img, ref)
    gray = read_image(str(path), 0, 0, is_color=False)
    np.testing.assert_array_equal(gray[:, :, 0], cv2.imread(str(path), 0))


def test_encode_png_round_trips_and_jpeg_decodes() -> None:
    img = cv2.imread(str(photos()[2]))[:64, :80]
    png = encode_image(img, "png", "x")
    np.testing.assert_array_equal(cv_decode(png, "color"), img)
    gray = img[:, :, :1].copy()
    np.testing.assert_array_equal(
        cv_decode(encode_image(gray, "PNG", "x"), "unchanged"), gray
    )
    jpg = encode_image(img, "jpg", "x")
    assert jpg[:2] == b"\xff\xd8"
    assert np.abs(cv_decode(jpg, "color").astype(int) - img).mean() < 4
    with pytest.raises(DataError, match="cannot encode as 'xyz'"):
        encode_image(img, "xyz", "x")
