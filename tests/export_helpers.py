"""Shared pieces of the export tests: deploy nets with random weights, and the
rule that a test of a layer type caffesolve does not have yet is skipped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from caffesolve.layers import LAYERS
from caffesolve.net import Net
from caffesolve.proto import caffe_pb2
from caffesolve.proto.io import parse_prototxt_text, write_binaryproto

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT.parent / "shared" / "caffe-examples"


def needs_layers(*types: str) -> pytest.MarkDecorator:
    """Skip while a layer type is not registered (the zoo layers arrive on
    another branch; these tests run from the merge on)."""
    missing = [t for t in types if t not in LAYERS]
    return pytest.mark.skipif(
        bool(missing), reason=f"layer type not registered yet: {', '.join(missing)}"
    )


def missing_types(param: caffe_pb2.NetParameter) -> list[str]:
    return sorted({lp.type for lp in param.layer} - set(LAYERS))


def net_from_text(text: str, seed: int = 1701) -> Net:
    """A TEST-phase net from prototxt text, every param blob random."""
    param = parse_prototxt_text(text, caffe_pb2.NetParameter(), "<test>")
    net = Net(param, caffe_pb2.TEST, quiet=True, source="test.prototxt")
    randomize(net, seed)
    return net


def randomize(net: Net, seed: int = 1701) -> None:
    """Normal(0, 0.5) weights; BatchNorm gets positive variances and a
    scale factor, as a trained net has."""
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        blobs = layer.blobs
        for b in blobs:
            b.data[...] = rng.normal(0, 0.5, b.shape)
        if layer.layer_param.type == "BatchNorm":
            blobs[1].data[...] = rng.uniform(0.5, 2.0, blobs[1].shape)
            blobs[2].data[...] = 1.5


def write_caffemodel(net: Net, path: Path) -> Path:
    write_binaryproto(path, net.to_proto())
    return path


def forward(net: Net, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """caffesolve's outputs for `inputs` (one per net input)."""
    for blob, x in zip(net.input_blobs, inputs):
        if blob.shape != x.shape:
            blob.reshape(x.shape)
    net.reshape()
    for blob, x in zip(net.input_blobs, inputs):
        blob.data[...] = x
    net.forward()
    return [net.blobs[i].data.copy() for i in net.output_blob_indices]


def random_inputs(net: Net, seed: int = 7, scale: float = 1.0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        rng.uniform(-scale, scale, b.shape).astype(np.float32) for b in net.input_blobs
    ]


def assert_close(theirs: np.ndarray, ours: np.ndarray, rel: float) -> None:
    """|theirs - ours| <= rel * max |ours| everywhere (the issue's measure)."""
    assert theirs.shape == ours.shape
    scale = max(float(np.abs(ours).max()), 1e-30)
    worst = float(np.abs(theirs.astype(np.float64) - ours).max())
    assert worst <= rel * scale, f"max |diff| {worst:.3g}, max |ours| {scale:.3g}"
