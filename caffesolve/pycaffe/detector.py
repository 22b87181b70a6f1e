"""pycaffe's caffe.Detector: classify windows of images (R-CNN style), each
window cropped (with `context_pad` pixels of surrounding context) and warped
to the net's input (python/caffe/detector.py).

    det = caffe.Detector('deploy.prototxt', 'w.caffemodel', context_pad=16,
                         mean=mean, raw_scale=255, channel_swap=(2, 1, 0))
    dets = det.detect_windows([('img.jpg', [(ymin, xmin, ymax, xmax), ...])])
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from caffesolve.errors import MissingExtraError
from caffesolve.proto import caffe_pb2
from caffesolve.pycaffe import io
from caffesolve.pycaffe.classifier import configure_transformer
from caffesolve.pycaffe.net import Net

Array = np.ndarray[Any, Any]


def _round(x: float) -> int:
    """Python 2's round() of a non-negative number (halves up), which
    pycaffe's crop arithmetic was written with."""
    return int(math.floor(x + 0.5))


class Detector(Net):
    """Windowed detection with a deploy net and its weights."""

    def __init__(
        self,
        model_file: str | os.PathLike[str],
        pretrained_file: str | os.PathLike[str],
        mean: Array | None = None,
        input_scale: float | None = None,
        raw_scale: float | None = None,
        channel_swap: Sequence[int] | None = None,
        context_pad: int | None = None,
    ) -> None:
        super().__init__(model_file, caffe_pb2.TEST, weights=pretrained_file)
        self.transformer = configure_transformer(
            self, mean, input_scale, raw_scale, channel_swap
        )
        self.configure_crop(context_pad)

    def detect_windows(
        self, images_windows: Iterable[tuple[str, Sequence[Sequence[int]]]]
    ) -> list[dict[str, Any]]:
        """[{'window', 'prediction', 'filename'}] for every window (ymin,
        xmin, ymax, xmax) of every image file."""
        images_windows = list(images_windows)
        window_inputs = []
        for filename, windows in images_windows:
            image = io.load_image(filename).astype(np.float32)
            for window in windows:
                window_inputs.append(self.crop(image, window))
        in_ = self.inputs[0]
        caffe_in = np.zeros(
            (len(window_inputs), window_inputs[0].shape[2])
            + self.blobs[in_].data.shape[2:],
            dtype=np.float32,
        )
        for ix, window_in in enumerate(window_inputs):
            caffe_in[ix] = self.transformer.preprocess(in_, window_in)
        predictions = self.forward_all(**{in_: caffe_in})[self.outputs[0]]
        detections = []
        ix = 0
        for filename, windows in images_windows:
            for window in windows:
                detections.append(
                    {
                        "window": window,
                        "prediction": predictions[ix],
                        "filename": filename,
                    }  # fmt: skip
                )
                ix += 1
        return detections

    def detect_selective_search(self, image_fnames: Sequence[str]) -> list[dict]:
        """detect_windows over Selective Search proposals (needs the
        selective_search_ijcv_with_python module and MATLAB)."""
        try:
            import selective_search_ijcv_with_python as selective_search
        except ImportError:
            raise MissingExtraError(
                "Detector.detect_selective_search needs the "
                "selective_search_ijcv_with_python module (and MATLAB); give "
                "windows to detect_windows instead"
            ) from None
        image_fnames = [os.path.abspath(f) for f in image_fnames]
        windows_list = selective_search.get_windows(
            image_fnames, cmd="selective_search_rcnn"
        )
        return self.detect_windows(zip(image_fnames, windows_list))

    def crop(self, im: Array, window: Sequence[int]) -> Array:
        """The window (ymin, xmin, ymax, xmax) of an (H, W, K) image; with
        context_pad, the box grown so that context_pad pixels of the net's
        input are context, parts outside the image filled with the mean."""
        window = np.asarray(window)
        crop = im[int(window[0]) : int(window[2]), int(window[1]) : int(window[3])]
        if not self.context_pad:
            return crop
        crop_size = self.blobs[self.inputs[0]].width  # assumes a square input
        scale = crop_size / (1.0 * crop_size - self.context_pad * 2)
        half_h = (window[2] - window[0] + 1) / 2.0
        half_w = (window[3] - window[1] + 1) / 2.0
        centre = (window[0] + half_h, window[1] + half_w)
        scaled = scale * np.array((-half_h, -half_w, half_h, half_w))
        box = np.round(np.tile(centre, 2) + scaled)
        scale_h = crop_size / (box[2] - box[0] + 1)
        scale_w = crop_size / (box[3] - box[1] + 1)
        pad_y = _round(max(0, -box[0]) * scale_h)  # rows out of bounds
        pad_x = _round(max(0, -box[1]) * scale_w)
        im_h, im_w = im.shape[:2]
        box = np.clip(box, 0.0, [im_h, im_w, im_h, im_w])
        clip_h = box[2] - box[0] + 1
        clip_w = box[3] - box[1] + 1
        if not (clip_h > 0 and clip_w > 0):
            raise ValueError(f"window {tuple(window)} lies outside the image")
        crop_h = min(_round(clip_h * scale_h), crop_size - pad_y)
        crop_w = min(_round(clip_w * scale_w), crop_size - pad_x)
        box = box.astype(int)
        context = im[box[0] : box[2], box[1] : box[3]]
        context = io.resize_image(context, (crop_h, crop_w))
        out = np.ones(self.crop_dims, dtype=np.float32) * self.crop_mean
        out[pad_y : pad_y + crop_h, pad_x : pad_x + crop_w] = context
        return out

    def configure_crop(self, context_pad: int | None) -> None:
        """crop_dims (H, W, K) from the input, and for context padding the
        mean in the unprocessed image's space (crop_mean)."""
        in_ = self.inputs[0]
        tpose = self.transformer.transpose[in_]
        inv_tpose = [tpose[t] for t in tpose]
        self.crop_dims = np.array(self.blobs[in_].data.shape[1:])[inv_tpose]
        self.context_pad = context_pad
        if not self.context_pad:
            return
        mean = self.transformer.mean.get(in_)
        if mean is None:
            self.crop_mean = np.zeros(self.crop_dims, dtype=np.float32)
            return
        crop_mean = mean.copy().transpose(inv_tpose)
        channel_order = self.transformer.channel_swap.get(in_)
        if channel_order is not None:
            order = list(channel_order)
            crop_mean = crop_mean[:, :, [order.index(i) for i in range(len(order))]]
        raw_scale = self.transformer.raw_scale.get(in_)
        if raw_scale is not None:
            crop_mean = crop_mean / raw_scale
        self.crop_mean = crop_mean
