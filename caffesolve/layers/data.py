"""Data layers: Input (deploy nets); Data (LMDB) and HDF5Data follow."""

from __future__ import annotations

from caffesolve.blob import Blob
from caffesolve.layers import register
from caffesolve.layers.base import Layer


@register
class InputLayer(Layer):
    """Caffe's Input: tops shaped by input_param.shape, filled by the user.

    One shape gives every top that shape; otherwise one shape per top
    (input_layer.cpp).
    """

    type = "Input"
    exact_num_bottom_blobs = 0
    min_top_blobs = 1

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        shapes = self.layer_param.input_param.shape
        if len(shapes) not in (0, 1, len(top)):
            raise self.config_error(
                "input_param.shape must be given once, or once per top "
                f"({len(top)} tops, {len(shapes)} shapes)"
            )
        for i, t in enumerate(top):
            if shapes:
                t.reshape(list(shapes[0 if len(shapes) == 1 else i].dim))

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        """Tops keep whatever shape they were given (Caffe: no-op)."""

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        """Tops hold what the caller put there."""
