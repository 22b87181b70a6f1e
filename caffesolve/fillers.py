"""Fillers: the initial values of learnable blobs (Caffe's filler.hpp).

`fill(blob, filler, rng)` writes `blob.data` from a FillerParameter with an
explicit np.random.Generator, so the same seed gives the same weights. Each
filler type is a small pure function from (shape, parameter, rng) to values;
values are cast to the blob's dtype (float32 in nets).

Fan sizes follow filler.hpp: fan_in = count / shape[0]; fan_out = count /
shape[1] for blobs of two or more axes, else count.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from caffesolve.blob import Blob
from caffesolve.errors import ConfigError
from caffesolve.proto import caffe_pb2

Shape = tuple[int, ...]
Values = npt.NDArray[np.float64]
FillFn = Callable[[Shape, caffe_pb2.FillerParameter, np.random.Generator], Values]


def constant(
    shape: Shape, p: caffe_pb2.FillerParameter, rng: np.random.Generator
) -> Values:
    """constant: every element is `value` (a read-only broadcast view: fill
    copies it into the blob in one pass, with no temporary the blob's size,
    which matters for VGG's 100M-weight fc6)."""
    return np.broadcast_to(np.float64(p.value), shape)


def uniform(
    shape: Shape, p: caffe_pb2.FillerParameter, rng: np.random.Generator
) -> Values:
    """uniform: U(min, max) (caffe_rng_uniform requires min <= max)."""
    if p.min > p.max:
        raise ConfigError(
            f"uniform filler: min ({p.min:.6g}) must not exceed max ({p.max:.6g})"
        )
    return rng.uniform(p.min, p.max, size=shape)


def gaussian(
    shape: Shape, p: caffe_pb2.FillerParameter, rng: np.random.Generator
) -> Values:
    """gaussian: N(mean, std^2); with `sparse` >= 0 each element is kept with
    probability sparse / shape[0] (a Bernoulli mask), else zeroed."""
    if p.std <= 0:
        raise ConfigError(f"gaussian filler: std must be > 0 (got {p.std:.6g})")
    if p.sparse < -1:
        raise ConfigError(f"gaussian filler: sparse must be >= -1 (got {p.sparse})")
    values = rng.normal(p.mean, p.std, size=shape)
    if p.sparse >= 0:
        if len(shape) < 1:
            raise ConfigError("gaussian filler: sparse needs a blob of >= 1 axis")
        probability = np.float32(p.sparse) / np.float32(shape[0])
        if not 0 <= probability <= 1:
            raise ConfigError(
                f"gaussian filler: sparse / num_outputs = {p.sparse}/{shape[0]} "
                "must be a probability in [0, 1]"
            )
        mask = rng.random(size=shape) < probability
        values = values * mask
    return values


def positive_unitball(
    shape: Shape, p: caffe_pb2.FillerParameter, rng: np.random.Generator
) -> Values:
    """positive_unitball: U(0, 1), then each of the shape[0] rows (of
    count / shape[0] elements) divided by its sum."""
    values = rng.uniform(0.0, 1.0, size=shape)
    rows = values.reshape(shape[0], -1) if len(shape) else values.reshape(1, -1)
    rows /= rows.sum(axis=1, keepdims=True)
    return values


def fan_sizes(shape: Shape) -> tuple[int, int]:
    """(fan_in, fan_out) as filler.hpp: count/shape[0], count/shape[1]."""
    if not shape:
        raise ConfigError("xavier/msra filler: the blob needs at least 1 axis")
    count = int(np.prod(shape, dtype=np.int64))
    fan_in = count // shape[0]
    fan_out = count // shape[1] if len(shape) > 1 else count
    return fan_in, fan_out


def variance_n(shape: Shape, p: caffe_pb2.FillerParameter) -> float:
    """n of xavier/msra: fan_in, fan_out or their average (variance_norm)."""
    fan_in, fan_out = fan_sizes(shape)
    if p.variance_norm == caffe_pb2.FillerParameter.AVERAGE:
        return (fan_in + fan_out) / 2.0
    if p.variance_norm == caffe_pb2.FillerParameter.FAN_OUT:
        return float(fan_out)
    return float(fan_in)


def xavier(
    shape: Shape, p: caffe_pb2.FillerParameter, rng: np.random.Generator
) -> Values:
    """xavier: U(-scale, scale), scale = sqrt(3 / n)."""
    scale = float(np.sqrt(np.float32(3) / np.float32(variance_n(shape, p))))
    return rng.uniform(-scale, scale, size=shape)


def msra(
    shape: Shape, p: caffe_pb2.FillerParameter, rng: np.random.Generator
) -> Values:
    """msra: N(0, std^2), std = sqrt(2 / n)."""
    std = float(np.sqrt(np.float32(2) / np.float32(variance_n(shape, p))))
    return rng.normal(0.0, std, size=shape)


def bilinear(
    shape: Shape, p: caffe_pb2.FillerParameter, rng: np.random.Generator
) -> Values:
    """bilinear: for a (.., .., K, K) blob, f = ceil(K/2), c = (K-1)/(2f),
    w(y, x) = (1 - |x/f - c|) * (1 - |y/f - c|) in every (K, K) slice."""
    if len(shape) != 4:
        raise ConfigError(f"bilinear filler: Blob must be 4 dim (got {shape})")
    if shape[2] != shape[3]:
        raise ConfigError(f"bilinear filler: Filter must be square (got {shape})")
    k = shape[3]
    f = math.ceil(k / 2.0)
    c = np.float32((k - 1) / (2.0 * f))
    x = np.arange(k, dtype=np.float32)
    line = 1 - np.abs(x / np.float32(f) - c)
    kernel = line[:, None] * line[None, :]
    return np.broadcast_to(kernel, shape).astype(np.float64)


FILLERS: dict[str, FillFn] = {
    "constant": constant,
    "gaussian": gaussian,
    "positive_unitball": positive_unitball,
    "uniform": uniform,
    "xavier": xavier,
    "msra": msra,
    "bilinear": bilinear,
}


def fill(
    blob: Blob, filler: caffe_pb2.FillerParameter, rng: np.random.Generator
) -> None:
    """Caffe's GetFiller(param)->Fill(blob): write blob.data in its dtype."""
    fn = FILLERS.get(filler.type)
    if fn is None:
        known = ", ".join(FILLERS)
        raise ConfigError(f"Unknown filler name: {filler.type} (known: {known})")
    if filler.type != "gaussian" and filler.sparse != -1:
        raise ConfigError(
            f"{filler.type} filler: Sparsity not supported by this Filler "
            '(remove `sparse`, or use type: "gaussian")'
        )
    shape = blob.shape
    if blob.count == 0:
        raise ConfigError(f"{filler.type} filler: blob '{blob.name}' is empty")
    blob.data[...] = fn(shape, filler, rng)
