"""Caffe's image reading: OpenCV's imread / imdecode / resize / imencode, as
io.cpp uses them, in Pillow and NumPy.

An image is an (H, W, C) uint8 array in OpenCV's channel order (BGR, or BGRA;
C = 1 for gray), as a cv::Mat is. Decoding follows cv::imread's three modes:

- "color" (CV_LOAD_IMAGE_COLOR; ImageData with is_color, convert_imageset):
  3 channels BGR; gray images are repeated, alpha is dropped, and the EXIF
  orientation of a JPEG is applied, as OpenCV 3 and later do.
- "gray" (CV_LOAD_IMAGE_GRAYSCALE; is_color: false, --gray, force_gray): one
  channel, converted the way OpenCV's decoders convert: a JPEG is decoded to
  gray by libjpeg (its luma), a PNG by libpng's rgb_to_gray with OpenCV's
  coefficients, (9797 R + 19234 G + 3737 B) >> 15, any other format by
  cvtColor's (4899 R + 9617 G + 1868 B + 8192) >> 14.
- "unchanged" (-1; Datums decoded natively by the Data layer and
  compute_image_mean): the file's channels, 1, 3 or 4 (BGRA); no EXIF turn.

Against opencv-python (3.4, 4.14, 5.0) on real photos this gives the same bytes
in "color" mode for PNG and JPEG, and in "gray" mode for JPEG and for PNG
without a colour profile; a PNG with a gAMA/iCCP profile differs by up to 35
levels in "gray" mode with OpenCV 3.4 (its libpng converts in linear light).

resize_linear is cv::resize(..., INTER_LINEAR) for 8-bit images bit for bit
(resize.cpp): source coordinate (d + 0.5) * (1 / (dst / src)) - 0.5 in float,
weights rounded to 11-bit fixed point, the horizontal pass in int, the
vertical pass as (((b0 * (S0 >> 4)) >> 16) + ((b1 * (S1 >> 4)) >> 16) + 2) >> 2,
edge pixels repeated; an exact halving of both sides is OpenCV's 2x2 area
average, (a + b + c + d + 2) >> 2.
"""

from __future__ import annotations

import io
import os
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from caffesolve.errors import DataError

F32 = np.float32
U8 = npt.NDArray[np.uint8]
Mode = Literal["color", "gray", "unchanged"]

# INTER_RESIZE_COEF_BITS = 11 in resize.cpp
_COEF_SCALE = 2048


def _pil() -> Any:
    try:
        from PIL import Image
    except ModuleNotFoundError:
        raise DataError(
            "reading images needs Pillow: pip install 'caffesolve[image]'"
        ) from None
    return Image


# -- decode (cv::imdecode / cv::imread) -----------------------------------------------


def _gray_libpng(rgb: npt.NDArray[np.uint8]) -> U8:
    """libpng's png_do_rgb_to_gray for 8 bits, OpenCV's (0.299, 0.587): the
    coefficients 0.299 and 0.587 in 1/32768 truncated (9797, 19234), blue
    the rest (3737), and the sum truncated (no gamma)."""
    x = rgb.astype(np.int32)
    g = (9797 * x[..., 0] + 19234 * x[..., 1] + 3737 * x[..., 2]) >> 15
    return g.astype(np.uint8)


def _gray_cvtcolor(rgb: npt.NDArray[np.uint8]) -> U8:
    """cv::cvtColor BGR2GRAY for 8 bits: 14-bit fixed point, rounded."""
    x = rgb.astype(np.int32)
    g = (4899 * x[..., 0] + 9617 * x[..., 1] + 1868 * x[..., 2] + 8192) >> 14
    return g.astype(np.uint8)


def _as_8bit(img: Any) -> Any:
    """16-bit and 32-bit gray Pillow images as 8-bit L (OpenCV keeps the high
    byte of 16-bit samples)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        Image = _pil()
        a = np.asarray(img).astype(np.int64)
        return Image.fromarray((np.clip(a, 0, 65535) >> 8).astype(np.uint8), "L")
    return img


def decode_image(data: bytes, mode: Mode, source: str) -> U8:
    """Encoded image bytes -> (H, W, C) uint8 BGR(A), like cv::imdecode."""
    Image = _pil()
    from PIL import ImageOps

    try:
        img = Image.open(io.BytesIO(data))
        fmt = img.format
        if mode == "gray" and fmt == "JPEG" and img.mode in ("RGB", "YCbCr"):
            img.draft("L", img.size)  # libjpeg's own gray output, as OpenCV asks
        img.load()
        if mode != "unchanged":
            img = ImageOps.exif_transpose(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{source}: cannot decode the image ({e})") from None
    if mode == "unchanged" and img.mode.startswith("I"):
        raise DataError(
            f"{source}: a {img.mode} image: Datums hold 8-bit pixels (Caffe's "
            "CVMatToDatum stops here too); convert the image to 8 bits"
        )
    img = _as_8bit(img)
    if mode == "gray":
        if img.mode == "L":
            return np.asarray(img, np.uint8)[:, :, None].copy()
        if img.mode == "LA":
            return np.asarray(img.convert("L"), np.uint8)[:, :, None].copy()
        rgb = np.asarray(img.convert("RGB"), np.uint8)
        gray = _gray_libpng(rgb) if fmt == "PNG" else _gray_cvtcolor(rgb)
        return gray[:, :, None]
    if mode == "unchanged":
        if img.mode in ("1", "L"):
            return np.asarray(img.convert("L"), np.uint8)[:, :, None].copy()
        alpha = img.mode in ("RGBA", "LA", "PA") or (
            img.mode == "P" and "transparency" in img.info
        )
        if alpha:
            rgba = np.asarray(img.convert("RGBA"), np.uint8)
            return np.ascontiguousarray(rgba[:, :, [2, 1, 0, 3]])
    rgb = np.asarray(img.convert("RGB"), np.uint8)
    return np.ascontiguousarray(rgb[:, :, ::-1])


def read_image(
    filename: str, height: int = 0, width: int = 0, is_color: bool = True
) -> U8:
    """Caffe's ReadImageToCVMat: imread, then cv::resize to height x width
    when both are positive."""
    try:
        with open(filename, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataError(
            f"Could not open or find file {filename} ({e.strerror or e})"
        ) from None
    img = decode_image(data, "color" if is_color else "gray", filename)
    if height > 0 and width > 0:
        img = resize_linear(img, height, width)
    return img


def hwc_to_chw(img: U8) -> U8:
    """A cv::Mat's (H, W, C) pixels in a Datum's (C, H, W) order (CVMatToDatum)."""
    return np.ascontiguousarray(img.transpose(2, 0, 1))


# -- resize (cv::resize INTER_LINEAR, 8-bit) ------------------------------------------


def _source_coords(
    dst: int, src: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """sx = floor(f), the fraction f - sx, with f = (float)((d + 0.5) * scale - 0.5)
    and scale = 1 / (dst / src) in double, as resize.cpp computes them."""
    scale = 1.0 / (dst / src)
    f = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(F32)
    s = np.floor(f).astype(np.int64)
    return s, f - s.astype(F32)


def _fixed(weights: npt.NDArray[np.float32]) -> npt.NDArray[np.int32]:
    """saturate_cast<short>(w * INTER_RESIZE_COEF_SCALE): rounded half to even."""
    return np.rint(weights * F32(_COEF_SCALE)).astype(np.int32)


def resize_linear(img: U8, height: int, width: int) -> U8:
    """cv::resize(img, Size(width, height)) with INTER_LINEAR, bit for bit."""
    src_h, src_w = img.shape[:2]
    if (src_h, src_w) == (height, width):
        return img.copy()
    x = img.astype(np.int32)
    if src_w == 2 * width and src_h == 2 * height:  # resizeAreaFast_, 2x2
        s = x[0::2, 0::2] + x[0::2, 1::2] + x[1::2, 0::2] + x[1::2, 1::2]
        return ((s + 2) >> 2).astype(np.uint8)
    extra = (1,) * (img.ndim - 2)
    # horizontal: past either edge the edge pixel, weight 1 (fx = 0)
    sx, fx = _source_coords(width, src_w)
    edge = (sx < 0) | (sx >= src_w - 1)
    sx = np.clip(sx, 0, src_w - 1)
    fx[edge] = 0
    a0 = _fixed(F32(1) - fx).reshape((1, width, *extra))
    a1 = _fixed(fx).reshape((1, width, *extra))
    rows = x[:, sx] * a0 + x[:, np.minimum(sx + 1, src_w - 1)] * a1
    # vertical: row indices clipped, weights as computed (not zeroed)
    sy, fy = _source_coords(height, src_h)
    b0 = _fixed(F32(1) - fy).reshape((height, 1, *extra))
    b1 = _fixed(fy).reshape((height, 1, *extra))
    r0 = rows[np.clip(sy, 0, src_h - 1)] >> 4
    r1 = rows[np.clip(sy + 1, 0, src_h - 1)] >> 4
    out = ((b0 * r0) >> 16) + ((b1 * r1) >> 16)
    return ((out + 2) >> 2).astype(np.uint8)


# -- encode (cv::imencode) -------------------------------------------------------------

# Pillow's writer and options per extension; JPEG quality 95 is OpenCV's default.
_WRITERS: dict[str, tuple[str, dict[str, Any]]] = {
    "jpg": ("JPEG", {"quality": 95}),
    "jpeg": ("JPEG", {"quality": 95}),
    "jpe": ("JPEG", {"quality": 95}),
    "png": ("PNG", {}),
    "bmp": ("BMP", {}),
    "tif": ("TIFF", {}),
    "tiff": ("TIFF", {}),
    "webp": ("WEBP", {"lossless": True}),
    "ppm": ("PPM", {}),
    "pgm": ("PPM", {}),
}


def encode_image(img: U8, encoding: str, source: str) -> bytes:
    """cv::imencode("." + encoding, img): the image's bytes in that format.

    The pixels round-trip exactly for lossless formats; JPEG bytes are
    Pillow's (libjpeg at quality 95), not OpenCV's.
    """
    Image = _pil()
    writer = _WRITERS.get(encoding.lower())
    if writer is None:
        raise DataError(
            f"{source}: cannot encode as '{encoding}' (known: "
            f"{', '.join(sorted(_WRITERS))})"
        )
    fmt, options = writer
    if img.shape[2] == 1:
        pil = Image.fromarray(img[:, :, 0], "L")
    elif img.shape[2] == 4:
        pil = Image.fromarray(np.ascontiguousarray(img[:, :, [2, 1, 0, 3]]), "RGBA")
    else:
        pil = Image.fromarray(np.ascontiguousarray(img[:, :, ::-1]), "RGB")
    buf = io.BytesIO()
    pil.save(buf, fmt, **options)
    return buf.getvalue()


def file_extension(filename: str | os.PathLike[str]) -> str:
    """The text after the last '.', lower-cased ('' if none)."""
    name = str(filename)
    dot = name.rfind(".")
    return name[dot + 1 :].lower() if dot >= 0 else ""
