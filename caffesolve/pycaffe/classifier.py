"""pycaffe's caffe.Classifier: a TEST-phase Net that classifies images,
scaling them, then taking the centre crop or ten crops (python/caffe/classifier.py).

    clf = caffe.Classifier('deploy.prototxt', 'w.caffemodel', image_dims=(256, 256),
                           mean=mean, raw_scale=255, channel_swap=(2, 1, 0))
    probs = clf.predict([caffe.io.load_image('cat.jpg')])   # (N, classes)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from caffesolve.proto import caffe_pb2
from caffesolve.pycaffe import io
from caffesolve.pycaffe.net import Net

Array = np.ndarray[Any, Any]


def configure_transformer(
    net: Net,
    mean: Array | None,
    input_scale: float | None,
    raw_scale: float | None,
    channel_swap: Sequence[int] | None,
) -> io.Transformer:
    """A Transformer for the net's first input: (H, W, K) images to (K, H, W),
    with the given mean, scales and channel order."""
    in_ = net.inputs[0]
    transformer = io.Transformer({in_: net.blobs[in_].data.shape})
    transformer.set_transpose(in_, (2, 0, 1))
    if mean is not None:
        transformer.set_mean(in_, mean)
    if input_scale is not None:
        transformer.set_input_scale(in_, input_scale)
    if raw_scale is not None:
        transformer.set_raw_scale(in_, raw_scale)
    if channel_swap is not None:
        transformer.set_channel_swap(in_, channel_swap)
    return transformer


class Classifier(Net):
    """Image classification with a deploy net and its weights."""

    def __init__(
        self,
        model_file: str | os.PathLike[str],
        pretrained_file: str | os.PathLike[str],
        image_dims: Sequence[int] | None = None,
        mean: Array | None = None,
        input_scale: float | None = None,
        raw_scale: float | None = None,
        channel_swap: Sequence[int] | None = None,
    ) -> None:
        """`image_dims`: the size images are scaled to before cropping
        (default: the net's input size, so the crop is the whole image)."""
        super().__init__(model_file, caffe_pb2.TEST, weights=pretrained_file)
        self.transformer = configure_transformer(
            self, mean, input_scale, raw_scale, channel_swap
        )
        self.crop_dims = np.array(self.blobs[self.inputs[0]].data.shape[2:])
        self.image_dims = np.array(image_dims if image_dims else self.crop_dims)

    def predict(self, inputs: Sequence[Array], oversample: bool = True) -> Array:
        """Class probabilities (N, classes) of (H, W, K) images: averaged over
        ten crops with `oversample`, else the centre crop's."""
        scaled = np.zeros(
            (len(inputs), self.image_dims[0], self.image_dims[1], inputs[0].shape[2]),
            dtype=np.float32,
        )
        for ix, image in enumerate(inputs):
            scaled[ix] = io.resize_image(image, self.image_dims)
        if oversample:
            crops = io.oversample(scaled, self.crop_dims)
        else:
            centre = np.array(self.image_dims) / 2.0
            half = self.crop_dims / 2.0
            box = np.concatenate([centre - half, centre + half]).astype(int)
            crops = scaled[:, box[0] : box[2], box[1] : box[3], :]
        in_ = self.inputs[0]
        caffe_in = np.zeros(np.array(crops.shape)[[0, 3, 1, 2]], dtype=np.float32)
        for ix, crop in enumerate(crops):
            caffe_in[ix] = self.transformer.preprocess(in_, crop)
        predictions = self.forward_all(**{in_: caffe_in})[self.outputs[0]]
        if oversample:
            predictions = predictions.reshape((len(predictions) // 10, 10, -1))
            predictions = predictions.mean(1)
        return predictions
