"""A finite-difference gradient checker after Caffe's GradientChecker.

The layer runs on float64 blobs, so central differences are accurate. The
objective is sum_i w_i * top_i over every top element, with fixed random
weights w (seed 1701): its analytic gradient is what backward() computes when
each top diff holds w. Every bottom element (those in `check_bottom`) and every
learnable param element is perturbed by +/- stepsize (Caffe's 1e-2) and the
estimate compared with backward's result within threshold * max(|a|, |b|, 1)
(Caffe's 1e-3 scaled check). Elements within `kink_range` of `kink` in the
input are skipped, as Caffe does for ReLU-like and max layers. `check_top`
limits the objective to some tops (the others get zero weight).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from caffesolve.blob import Blob
from caffesolve.layers.base import Layer


def make_blob(
    shape: Sequence[int],
    rng: np.random.Generator,
    *,
    low: float = -1.0,
    high: float = 1.0,
    name: str = "",
) -> Blob:
    """A float64 blob filled uniformly in [low, high)."""
    b = Blob(shape, name=name, dtype=np.float64)
    b.data[...] = rng.uniform(low, high, size=shape)
    return b


def _objective(
    layer: Layer, bottom: list[Blob], top: list[Blob], weights: list[np.ndarray]
) -> float:
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    return float(sum(np.sum(w * t.data) for w, t in zip(weights, top)))


def check_gradient(
    layer: Layer,
    bottom: list[Blob],
    top: list[Blob],
    *,
    check_bottom: Sequence[int] | None = None,
    check_top: Sequence[int] | None = None,
    check_params: bool = True,
    stepsize: float = 1e-2,
    threshold: float = 1e-3,
    kink: float | None = None,
    kink_range: float = -1.0,
    seed: int = 1701,
    setup: bool = True,
) -> int:
    """Assert backward() matches central differences; return elements checked."""
    rng = np.random.default_rng(seed)
    if setup:
        layer.setup(bottom, top)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    weights = [rng.uniform(-1, 1, size=t.shape) for t in top]
    if check_top is not None:
        weights = [w if i in check_top else 0 * w for i, w in enumerate(weights)]
    if check_bottom is None:
        check_bottom = range(len(bottom))
    # Analytic gradients.
    for b in layer.blobs:
        b.diff[...] = 0
    for t, w in zip(top, weights):
        t.diff[...] = w
    propagate = [i in check_bottom for i in range(len(bottom))]
    layer.backward(top, propagate, bottom)
    targets: list[tuple[str, Blob, np.ndarray]] = []
    for i in check_bottom:
        targets.append((f"bottom[{i}]", bottom[i], bottom[i].diff.copy()))
    if check_params:
        for j, b in enumerate(layer.blobs):
            targets.append((f"blobs[{j}]", b, b.diff.copy()))
    checked = 0
    for label, blob, analytic in targets:
        flat = blob.data.reshape(-1)
        grad = analytic.reshape(-1)
        for k in range(flat.size):
            x = flat[k]
            if kink is not None and abs(x - kink) < kink_range:
                continue
            flat[k] = x + stepsize
            plus = _objective(layer, bottom, top, weights)
            flat[k] = x - stepsize
            minus = _objective(layer, bottom, top, weights)
            flat[k] = x
            estimate = (plus - minus) / (2 * stepsize)
            scale = max(abs(grad[k]), abs(estimate), 1.0)
            assert abs(grad[k] - estimate) <= threshold * scale, (
                f"{layer.layer_param.type} {label} element {k}: "
                f"backward {grad[k]!r} vs numerical {estimate!r}"
            )
            checked += 1
    _objective(layer, bottom, top, weights)
    return checked
