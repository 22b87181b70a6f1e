"""A PyTorch twin of a built caffesolve Net, the yardstick of bench_zoo.py.

Optional: needs the `bench` extra (torch), and only the benchmark uses it.
`TorchNet(net)` walks the Net's layers in order (after Split insertion, with
its blob names) and runs each as the torch.nn.functional call that computes
what the Caffe layer computes, on the Net's own weights:

- Convolution: conv2d (stride, pad, dilation, group; bias if any);
- Pooling MAX / AVE: max_pool2d / avg_pool2d with ceil_mode (Caffe's rounding:
  a last window that would start in the padding is dropped, as in PyTorch)
  and count_include_pad (Caffe's AVE divides by the window clipped to the
  padded input, as PyTorch does); global_pooling: adaptive pooling to 1x1;
- LRN (ACROSS_CHANNELS): local_response_norm, whose alpha is divided by the
  size as Caffe's;
- BatchNorm (global statistics): batch_norm on the blobs divided by the
  moving-average factor, with Caffe's eps; Scale: per-channel affine;
- InnerProduct: linear on the bottom flattened from axis 1; ReLU, Dropout
  (identity at test time), Eltwise SUM (coefficients), Concat, Softmax,
  Split (the same tensor), Input (the data).

Other layer types raise NotImplementedError. Inference only (torch.no_grad).
With `channels_last`, the input and the 4-D weights use that memory format.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from caffesolve.net import Net
from caffesolve.proto import caffe_pb2

Op = Callable[[list[Any], list[Any]], list[Any]]


def _pair(values: Any, h: int, w: int, default: int) -> tuple[int, int]:
    """A ConvolutionParameter repeated field or its _h/_w twins."""
    if h or w:
        return h, w
    if len(values) == 0:
        return default, default
    if len(values) == 1:
        return int(values[0]), int(values[0])
    return int(values[0]), int(values[1])


class TorchNet:
    """The layers of `net` as torch functional calls on its weights."""

    def __init__(self, net: Net, channels_last: bool = False) -> None:
        import torch

        self.torch = torch
        self.fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.steps: list[tuple[str, str, list[str], list[str], Op]] = []
        for layer, bottoms, tops in zip(net.layers, net.bottom_vecs, net.top_vecs):
            lp = layer.layer_param
            op = self._op(lp, [self._tensor(b.data) for b in layer.blobs])
            self.steps.append(
                (
                    lp.name,
                    lp.type,
                    [b.name for b in bottoms],
                    [t.name for t in tops],
                    op,
                )
            )
        self.inputs = [net.blob_names[i] for i in net.input_blob_indices]
        self.outputs = list(net.output_blob_names)

    def _tensor(self, a: np.ndarray) -> Any:
        t = self.torch.from_numpy(np.array(a, np.float32))
        return t.contiguous(memory_format=self.fmt) if t.ndim == 4 else t

    def _op(self, lp: caffe_pb2.LayerParameter, w: list[Any]) -> Op:  # noqa: C901
        F = self.torch.nn.functional
        torch = self.torch
        kind = lp.type
        if kind in ("Input", "Dropout"):  # the data is there; identity
            return lambda xs, tops: xs
        if kind == "Split":  # every top is the bottom
            return lambda xs, tops: xs * len(tops)
        if kind == "Convolution":
            p = lp.convolution_param
            stride = _pair(p.stride, p.stride_h, p.stride_w, 1)
            pad = _pair(p.pad, p.pad_h, p.pad_w, 0)
            dilation = _pair(p.dilation, 0, 0, 1)
            bias = w[1] if p.bias_term else None
            return lambda xs, _: [
                F.conv2d(xs[0], w[0], bias, stride, pad, dilation, p.group)
            ]
        if kind == "Pooling":
            p = lp.pooling_param
            if p.global_pooling:
                pool = (
                    F.adaptive_max_pool2d if p.pool == p.MAX else F.adaptive_avg_pool2d
                )
                return lambda xs, _: [pool(xs[0], 1)]
            k = _pair(
                [p.kernel_size] if p.kernel_size else [], p.kernel_h, p.kernel_w, 0
            )
            s = _pair([p.stride], p.stride_h, p.stride_w, 1)
            pad = _pair([p.pad], p.pad_h, p.pad_w, 0)
            if p.pool == p.MAX:
                return lambda xs, _: [F.max_pool2d(xs[0], k, s, pad, ceil_mode=True)]
            return lambda xs, _: [
                F.avg_pool2d(xs[0], k, s, pad, ceil_mode=True, count_include_pad=True)
            ]
        if kind == "LRN":
            p = lp.lrn_param
            if p.norm_region != p.ACROSS_CHANNELS:
                raise NotImplementedError("LRN WITHIN_CHANNEL")
            return lambda xs, _: [
                F.local_response_norm(xs[0], p.local_size, p.alpha, p.beta, p.k)
            ]
        if kind == "BatchNorm":
            factor = float(w[2].reshape(-1)[0])
            scale = 0.0 if factor == 0 else 1.0 / factor
            mean, var = w[0] * scale, w[1] * scale
            eps = lp.batch_norm_param.eps
            return lambda xs, _: [F.batch_norm(xs[0], mean, var, eps=eps)]
        if kind == "Scale":
            gamma = w[0].reshape(1, -1, 1, 1)
            beta = w[1].reshape(1, -1, 1, 1) if len(w) > 1 else None
            if beta is None:
                return lambda xs, _: [xs[0] * gamma]
            return lambda xs, _: [torch.addcmul(beta, xs[0], gamma)]
        if kind == "ReLU":
            return lambda xs, _: [F.relu(xs[0])]
        if kind == "Eltwise":
            p = lp.eltwise_param
            if p.operation != p.SUM:
                raise NotImplementedError("Eltwise other than SUM")
            coeff = list(p.coeff) or [1.0] * len(lp.bottom)

            def eltwise(xs: list[Any], _: list[Any]) -> list[Any]:
                out = xs[0] * coeff[0] if coeff[0] != 1 else xs[0]
                for x, c in zip(xs[1:], coeff[1:]):
                    out = out + (x * c if c != 1 else x)
                return [out]

            return eltwise
        if kind == "Concat":
            axis = lp.concat_param.axis
            return lambda xs, _: [torch.cat(xs, axis)]
        if kind == "InnerProduct":
            bias = w[1] if lp.inner_product_param.bias_term else None
            return lambda xs, _: [F.linear(xs[0].flatten(1), w[0], bias)]
        if kind == "Softmax":
            return lambda xs, _: [F.softmax(xs[0], 1)]
        raise NotImplementedError(f"layer type {kind}")

    def tensors(self, inputs: list[np.ndarray]) -> list[Any]:
        """The net's inputs as tensors in this net's memory format."""
        return [self._tensor(x) for x in inputs]

    def run(
        self, inputs: list[Any], layer_ms: dict[str, float] | None = None
    ) -> list[Any]:
        """The net's outputs for `inputs` (tensors, one per net input); with
        `layer_ms`, each layer's milliseconds are added to it."""
        clock = time.perf_counter
        with self.torch.no_grad():
            blobs = dict(zip(self.inputs, inputs, strict=True))
            for name, _, bottoms, tops, op in self.steps:
                start = clock()
                blobs.update(zip(tops, op([blobs[b] for b in bottoms], tops)))
                if layer_ms is not None:
                    layer_ms[name] = layer_ms.get(name, 0.0) + (clock() - start) * 1e3
            return [blobs[n] for n in self.outputs]
