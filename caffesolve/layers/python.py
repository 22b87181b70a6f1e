"""Python layers: `type: "Python"` runs a class from the user's own module
(Caffe's python_layer.hpp, and GetPythonLayer in layer_factory.cpp).

    layer { name: "loss" type: "Python" bottom: "ip" bottom: "label" top: "loss"
            python_param { module: "pyloss" layer: "EuclideanLossLayer" }
            loss_weight: 1 }

`python_param.module` is imported with Python's own import, from sys.path
(PYTHONPATH, a script's folder), and its class `python_param.layer` is made
with the LayerParameter, as Caffe does. This runs whatever code that module
holds: a prototxt naming a module is as trusted as the module itself.

The class follows pycaffe's caffe.Layer (caffesolve.pycaffe.layer): it gets
`param_str` and `phase` before its `setup(bottom, top)`, then `reshape`,
`forward(bottom, top)` and `backward(top, propagate_down, bottom)` run as
for any layer, with the net's own Blobs. Its learnable blobs are
`self.blobs` (`add_blob(*shape)`), which the net records, shares, saves and
loads like any layer's. Exceptions from the user's code reach the caller
unchanged. No blob-count rules: the class checks what it needs.
"""

from __future__ import annotations

import importlib
from typing import Any

from caffesolve.blob import Blob
from caffesolve.layers import register
from caffesolve.layers.base import Layer
from caffesolve.proto.io import suggest

# What a Python layer class must have (pycaffe's caffe.Layer gives them all).
USER_METHODS = ("setup", "reshape", "forward", "backward")


class BlobVec(list[Blob]):
    """pycaffe's BlobVec: a layer's learnable blobs, in order."""

    def add_blob(self, *shape: int) -> None:
        """Append a new zero-filled float32 Blob of `shape` (a learnable
        param of the layer once its setup returns)."""
        self.append(Blob(shape))


@register
class PythonLayer(Layer):
    """Caffe's PythonLayer: every step is the user object's method (`self.py`)."""

    type = "Python"
    runs_user_code = True

    def configure(self) -> None:
        self.py = self._user_layer()
        blobs = getattr(self.py, "blobs", None)
        if not isinstance(blobs, BlobVec):
            blobs = BlobVec(blobs or [])
            self.py.blobs = blobs
        self.blobs = blobs  # one list: what the user adds, the net sees

    def _user_layer(self) -> Any:
        """Import python_param.module and make its python_param.layer class."""
        p = self.layer_param.python_param
        if not p.module or not p.layer:
            raise self.config_error(
                "python_param.module and python_param.layer are required (the "
                "module to import and the layer class in it)"
            )
        try:
            module = importlib.import_module(p.module)
        except ImportError as e:
            raise self.config_error(
                f"python_param.module '{p.module}' cannot be imported ({e}); put "
                "the folder that holds it on PYTHONPATH"
            ) from None
        cls = getattr(module, p.layer, None)
        if cls is None:
            names = [n for n in dir(module) if not n.startswith("_")]
            raise self.config_error(
                f"python_param.layer: module '{p.module}' "
                f"({getattr(module, '__file__', '?')}) has no '{p.layer}'"
                + suggest(p.layer, names)
            )
        user = cls(self.layer_param)
        missing = [m for m in USER_METHODS if not callable(getattr(user, m, None))]
        if missing:
            raise self.config_error(
                f"python_param.layer '{p.module}.{p.layer}' is not a caffe.Layer "
                f"(no {', '.join(missing)}); derive it from caffe.Layer"
            )
        return user

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        """PythonLayer::LayerSetUp: param_str and phase, then the user's setup."""
        self.py.param_str = self.layer_param.python_param.param_str
        self.py.phase = int(self.phase)
        self.py.setup(bottom, top)

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        self.py.reshape(bottom, top)

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        self.py.forward(bottom, top)

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        self.py.backward(top, propagate_down, bottom)
