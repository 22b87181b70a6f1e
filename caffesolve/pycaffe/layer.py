"""pycaffe's caffe.Layer: the base class of Python layers.

A prototxt layer `type: "Python"` with `python_param { module: "m" layer:
"C" }` makes `m.C(layer_param)` (caffesolve.layers.python runs it). The
subclass overrides:

    setup(bottom, top)                      once; self.param_str, self.phase set
    reshape(bottom, top)                    before every forward: shape the tops
    forward(bottom, top)                    top[i].data[...] = ...
    backward(top, propagate_down, bottom)   bottom[i].diff[...] = ...

bottom and top are lists of the net's Blobs (data, diff, reshape(*dims),
num, channels, height, width, count). Learnable blobs go in self.blobs
(self.blobs.add_blob(*shape)); the net updates, shares, saves and loads them.
"""

from __future__ import annotations

from typing import Any

from caffesolve.blob import Blob
from caffesolve.layers.python import BlobVec
from caffesolve.proto import caffe_pb2


class Layer:
    """Subclass this for a `type: "Python"` layer (pycaffe's caffe.Layer)."""

    type = "Python"

    def __init__(self, param: caffe_pb2.LayerParameter | None = None) -> None:
        self.blobs = BlobVec()
        self.param_str = ""
        self.phase = param.phase if param is not None else caffe_pb2.TRAIN
        self.layer_param: Any = param

    def setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        """Read self.param_str, check the bottoms, add learnable blobs."""

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        raise NotImplementedError(
            f"{type(self).__name__} must define reshape(bottom, top)"
        )

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        raise NotImplementedError(
            f"{type(self).__name__} must define forward(bottom, top)"
        )

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        raise NotImplementedError(
            f"{type(self).__name__} must define backward(top, propagate_down, "
            "bottom): the net needs gradients through it"
        )
