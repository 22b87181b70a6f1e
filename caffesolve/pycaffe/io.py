"""pycaffe's caffe.io: BlobProto / Datum <-> arrays, the input Transformer,
and image loading, resizing and oversampling (python/caffe/io.py).

Images are (H, W, K) float32 arrays in [0, 1], RGB, as skimage gave pycaffe;
here Pillow reads them (the `image` extra) and NumPy resizes them, with
skimage's arithmetic for the linear case (see resize_image). Where NumPy 2
and Python 3 changed what pycaffe called (`tostring`, `fromstring`,
skimage's `as_grey`), this does what pycaffe meant.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from caffesolve.errors import ConfigError, require_extra
from caffesolve.proto import caffe_pb2

F32 = np.float32
Array = npt.NDArray[Any]

# skimage's rgb2gray weights (ITU-R BT.709 luma), what load_image(color=False)
# used through skimage.io.imread(as_grey=True).
GREY_WEIGHTS = np.array([0.2125, 0.7154, 0.0721])


# -- BlobProto and Datum ------------------------------------------------------------


def blobproto_to_array(blob: caffe_pb2.BlobProto, return_diff: bool = False) -> Array:
    """The data (or diff) of a BlobProto as a float64 array of its shape: the
    legacy num/channels/height/width if any is set, else `shape` (no shape
    at all: 0-d, so only a single value fits)."""
    values = np.array(blob.diff if return_diff else blob.data, dtype=np.float64)
    if any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
        return values.reshape(blob.num, blob.channels, blob.height, blob.width)
    return values.reshape(tuple(blob.shape.dim))


def array_to_blobproto(arr: Array, diff: Array | None = None) -> caffe_pb2.BlobProto:
    """A BlobProto of arr's shape and values (and diff's values, same shape)."""
    arr = np.asarray(arr)
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend(arr.shape)
    blob.data.extend(arr.astype(float).flat)
    if diff is not None:
        blob.diff.extend(np.asarray(diff).astype(float).flat)
    return blob


def arraylist_to_blobprotovector_str(arraylist: Iterable[Array]) -> bytes:
    """A serialized BlobProtoVector of the arrays."""
    vec = caffe_pb2.BlobProtoVector()
    vec.blobs.extend(array_to_blobproto(a) for a in arraylist)
    return vec.SerializeToString()


def blobprotovector_str_to_arraylist(data: bytes) -> list[Array]:
    """The arrays of a serialized BlobProtoVector."""
    vec = caffe_pb2.BlobProtoVector()
    vec.ParseFromString(data)
    return [blobproto_to_array(b) for b in vec.blobs]


def array_to_datum(arr: Array, label: int | None = None) -> caffe_pb2.Datum:
    """A Datum of a (C, H, W) array: uint8 as the bytes `data`, any other
    dtype as `float_data`; `label` if given."""
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise ValueError("Incorrect array shape.")
    datum = caffe_pb2.Datum()
    datum.channels, datum.height, datum.width = arr.shape
    if arr.dtype == np.uint8:
        datum.data = arr.tobytes()
    else:
        datum.float_data.extend(arr.astype(float).flat)
    if label is not None:
        datum.label = label
    return datum


def datum_to_array(datum: caffe_pb2.Datum) -> Array:
    """A Datum's (C, H, W) array: uint8 from `data`, else float64 from
    `float_data` (the label is datum.label)."""
    shape = (datum.channels, datum.height, datum.width)
    if len(datum.data):
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(shape).copy()
    return np.array(datum.float_data, dtype=float).reshape(shape)


# -- the Transformer ---------------------------------------------------------------


class Transformer:
    """Turns (H, W, K) images into a net's (K, H, W) inputs and back.

    `inputs` maps input blob names to their shapes (N, K, H, W). preprocess
    does, in order: float32, resize to (H, W), transpose, channel swap,
    * raw_scale, - mean, * input_scale; deprocess undoes them in reverse.
    """

    def __init__(self, inputs: Mapping[str, Sequence[int]]) -> None:
        self.inputs = {name: tuple(shape) for name, shape in inputs.items()}
        self.transpose: dict[str, Sequence[int]] = {}
        self.channel_swap: dict[str, Sequence[int]] = {}
        self.raw_scale: dict[str, float] = {}
        self.mean: dict[str, Array] = {}
        self.input_scale: dict[str, float] = {}

    def _check_input(self, in_: str) -> None:
        if in_ not in self.inputs:
            raise ConfigError(f"{in_} is not one of the net inputs: {self.inputs}")

    def preprocess(self, in_: str, data: Array) -> Array:
        """(H', W', K) image -> (K, H, W) float32 input for blob `in_` (a new
        array: the image is not changed)."""
        self._check_input(in_)
        caffe_in = np.array(data, dtype=F32)
        in_dims = self.inputs[in_][2:]
        if caffe_in.shape[:2] != in_dims:
            caffe_in = resize_image(caffe_in, in_dims)
        if in_ in self.transpose:
            caffe_in = caffe_in.transpose(self.transpose[in_])
        if in_ in self.channel_swap:
            caffe_in = caffe_in[list(self.channel_swap[in_]), :, :]
        if in_ in self.raw_scale:
            caffe_in *= self.raw_scale[in_]
        if in_ in self.mean:
            caffe_in -= self.mean[in_]
        if in_ in self.input_scale:
            caffe_in *= self.input_scale[in_]
        return caffe_in

    def deprocess(self, in_: str, data: Array) -> Array:
        """Undo preprocess (except the resize): (K, H, W) -> (H, W, K)."""
        self._check_input(in_)
        decaf_in = np.array(data).squeeze()
        if in_ in self.input_scale:
            decaf_in /= self.input_scale[in_]
        if in_ in self.mean:
            decaf_in += self.mean[in_]
        if in_ in self.raw_scale:
            decaf_in /= self.raw_scale[in_]
        if in_ in self.channel_swap:
            decaf_in = decaf_in[np.argsort(self.channel_swap[in_]), :, :]
        if in_ in self.transpose:
            decaf_in = decaf_in.transpose(np.argsort(self.transpose[in_]))
        return decaf_in

    def set_transpose(self, in_: str, order: Sequence[int]) -> None:
        """Axis order, e.g. (2, 0, 1) for (H, W, K) images into (K, H, W)."""
        self._check_input(in_)
        if len(order) != len(self.inputs[in_]) - 1:
            raise ConfigError(
                "Transpose order needs to have the same number of dimensions as "
                "the input."
            )
        self.transpose[in_] = order

    def set_channel_swap(self, in_: str, order: Sequence[int]) -> None:
        """Channel order after the transpose, e.g. (2, 1, 0) for RGB -> BGR."""
        self._check_input(in_)
        if len(order) != self.inputs[in_][1]:
            raise ConfigError(
                "Channel swap needs to have the same number of dimensions as the "
                "input channels."
            )
        self.channel_swap[in_] = order

    def set_raw_scale(self, in_: str, scale: float) -> None:
        """Input * scale, before the mean (255 for models trained on 0-255)."""
        self._check_input(in_)
        self.raw_scale[in_] = scale

    def set_mean(self, in_: str, mean: Array) -> None:
        """The mean to subtract: one value per channel (K,), or (K, H, W)
        (a (H, W) mean is one channel), resized to the input if it differs."""
        self._check_input(in_)
        mean = np.asarray(mean)
        if mean.ndim == 1:
            if mean.shape[0] != self.inputs[in_][1]:
                raise ValueError("Mean channels incompatible with input.")
            mean = mean[:, np.newaxis, np.newaxis]
        else:
            shape = mean.shape if mean.ndim != 2 else (1, *mean.shape)
            if len(shape) != 3:
                raise ValueError("Mean shape invalid")
            mean = mean.reshape(shape)
            in_shape = self.inputs[in_][1:]
            if shape != in_shape:
                low, high = mean.min(), mean.max()
                normal = (mean - low) / (high - low)
                resized = resize_image(normal.transpose((1, 2, 0)), in_shape[1:])
                mean = resized.transpose((2, 0, 1)) * (high - low) + low
        self.mean[in_] = mean

    def set_input_scale(self, in_: str, scale: float) -> None:
        """Input * scale after the mean is subtracted."""
        self._check_input(in_)
        self.input_scale[in_] = scale


# -- images ----------------------------------------------------------------------------


def load_image(filename: str | os.PathLike[str], color: bool = True) -> Array:
    """An image file as (H, W, 3) RGB (color) or (H, W, 1) grey float32 in
    [0, 1]; grey from colour uses skimage's rgb2gray weights, an alpha
    channel is dropped, and a grey file loaded in colour repeats its channel."""
    require_extra("PIL", "image", "caffe.io.load_image needs Pillow")
    from PIL import Image

    try:
        with Image.open(filename) as im:
            if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGBA" if "A" in im.mode else "RGB")
            elif im.mode == "LA":
                im = im.convert("L")
            pixels = np.asarray(im)
    except OSError as e:
        raise ConfigError(f"{filename}: cannot read the image ({e})") from None
    if pixels.dtype == np.uint8 or pixels.dtype == np.uint16:
        img = pixels / float(np.iinfo(pixels.dtype).max)
    elif pixels.dtype == bool:
        img = pixels.astype(np.float64)
    else:
        img = pixels.astype(np.float64)  # 32-bit images: values as stored
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, :3]
    if not color and img.ndim == 3:
        img = img @ GREY_WEIGHTS
    img = img.astype(F32)
    if img.ndim == 2:
        img = img[:, :, np.newaxis]
        if color:
            img = np.tile(img, (1, 1, 3))
    return img


def _linear_axis(im: Array, axis: int, size: int, centres: bool, order: int) -> Array:
    """Resample `axis` of `im` to `size` samples by linear (order 1) or
    nearest (order 0) interpolation. centres=True maps pixel centres
    (x = (o + 0.5) * n / size - 0.5) with zeros beyond the edge, as skimage's
    resize in mode 'constant'; False maps the end pixels onto each other
    (x = o * (n - 1) / (size - 1)), as scipy.ndimage.zoom."""
    n = im.shape[axis]
    o = np.arange(size, dtype=np.float64)
    if centres:
        x = (o + 0.5) * (n / size) - 0.5
    else:
        x = o * ((n - 1) / (size - 1)) if size > 1 else np.zeros(1)
    if order == 0:
        index = np.clip(np.floor(x + 0.5).astype(np.intp), 0, n - 1)
        return np.take(im, index, axis=axis)
    low = np.floor(x).astype(np.intp)
    w = x - low
    padded = np.concatenate(
        [
            np.zeros_like(np.take(im, [0], axis=axis)),
            im,
            np.zeros_like(np.take(im, [0], axis=axis)),
        ],
        axis=axis,
    )
    # index + 1: position in `padded`; clipping keeps far-off samples at 0
    a = np.take(padded, np.clip(low + 1, 0, n + 1), axis=axis)
    b = np.take(padded, np.clip(low + 2, 0, n + 1), axis=axis)
    shape = [1] * im.ndim
    shape[axis] = size
    w = w.reshape(shape)
    return a * (1 - w) + b * w


def resize_image(im: Array, new_dims: Sequence[int], interp_order: int = 1) -> Array:
    """(H, W, K) image resized to new_dims = (height, width), float32.

    K of 1 or 3: pycaffe scaled the image to [0, 1], resized it with
    skimage's resize (mode 'constant', pixel centres aligned, no
    anti-aliasing in the skimage it was written for) and scaled back; a
    constant image stays constant. Other K: scipy.ndimage.zoom (end pixels
    aligned). Orders 0 (nearest) and 1 (linear) are supported.
    """
    if interp_order not in (0, 1):
        raise ConfigError(
            f"resize_image: interp_order {interp_order} is not supported "
            "(0 nearest, 1 linear)"
        )
    im = np.asarray(im)
    height, width = (int(d) for d in new_dims)
    if im.shape[-1] in (1, 3):
        low, high = im.min(), im.max()
        if not high > low:
            return np.full((height, width, im.shape[-1]), low, dtype=F32)
        std = (im - low) / (high - low)
        out = _linear_axis(std, 0, height, True, interp_order)
        out = _linear_axis(out, 1, width, True, interp_order)
        if interp_order == 1:
            out = np.clip(out, 0.0, 1.0)  # skimage clips to the input range
        return (out * (high - low) + low).astype(F32)
    out = _linear_axis(im.astype(np.float64), 0, height, False, interp_order)
    out = _linear_axis(out, 1, width, False, interp_order)
    return out.astype(F32)


def oversample(images: Sequence[Array], crop_dims: Sequence[int]) -> Array:
    """Ten crops of each (H, W, K) image: the four corners and the centre,
    then the same five mirrored left-right; (10 * N, h, w, K) float32."""
    im_shape = np.array(images[0].shape)
    crop_h, crop_w = (int(d) for d in crop_dims)
    centre = im_shape[:2] / 2.0
    corners = [
        (i, j) for i in (0, im_shape[0] - crop_h) for j in (0, im_shape[1] - crop_w)
    ]
    # The centre crop's corner, truncated toward zero as pycaffe's int array did.
    corners.append((int(centre[0] - crop_h / 2.0), int(centre[1] - crop_w / 2.0)))
    crops = np.empty((10 * len(images), crop_h, crop_w, im_shape[-1]), dtype=F32)
    ix = 0
    for im in images:
        for i, j in corners:
            crops[ix] = im[i : i + crop_h, j : j + crop_w, :]
            ix += 1
        crops[ix : ix + 5] = crops[ix - 5 : ix, :, ::-1, :]
        ix += 5
    return crops
