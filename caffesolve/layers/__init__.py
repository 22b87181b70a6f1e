"""The layer registry: Caffe's type string -> layer class.

Each layer module registers its classes with `@register` when imported; this
package imports them all, so LAYERS is complete once `caffesolve.layers` is.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import numpy as np

from caffesolve.errors import ConfigError
from caffesolve.layers.base import Layer
from caffesolve.proto import caffe_pb2

LAYERS: dict[str, type[Layer]] = {}


def register(cls: type[Layer]) -> type[Layer]:
    """Class decorator: add `cls` to LAYERS under `cls.type`."""
    if not cls.type or cls.type in LAYERS:
        raise RuntimeError(f"bad or duplicate layer type {cls.type!r}")
    LAYERS[cls.type] = cls
    return cls


def create_layer(
    param: caffe_pb2.LayerParameter,
    phase: int = caffe_pb2.TRAIN,
    rng: np.random.Generator | None = None,
    xp: ModuleType = np,
) -> Layer:
    """Caffe's LayerRegistry::CreateLayer; `xp` is the array module of the
    net's backend, which the layer allocates with."""
    cls = LAYERS.get(param.type)
    if cls is None:
        known = ", ".join(sorted(LAYERS))
        raise ConfigError(
            f"layer '{param.name}': Unknown layer type: {param.type} "
            f"(known types: {known})"
        )
    layer = cls(param, phase, rng)
    layer.xp = xp
    return layer


# Importing each family registers its layers.
for _module in (
    "data",
    "hdf5",
    "image_data",
    "neuron",
    "conv",
    "pooling",
    "spp",
    "inner_product",
    "shape",
    "common",
    "routing",
    "loss",
    "logistic_loss",
    "margin_loss",
    "normalization",
    "scale",
    "recurrent",
    "python",
):
    importlib.import_module(f"caffesolve.layers.{_module}")

__all__ = ["LAYERS", "Layer", "create_layer", "register"]
