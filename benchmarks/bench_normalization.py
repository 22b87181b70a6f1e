"""ms per forward and backward of LRN (and BatchNorm) beside PyTorch's CPU ops.

    python benchmarks/bench_normalization.py [--runs 20] [--alexnet-batch 32]
                                             [--cifar-batch 100] [--workers 1,2]
                                             [--no-torch]

(with caffesolve and, for the comparison, PyTorch installed: pip install -e
'.[bench]'; or PYTHONPATH=. from the repository root).

Shapes and parameters as the nets use them:

- cifar10_full norm1 / norm2 (Caffe's examples/cifar10/cifar10_full*.prototxt):
  LRN WITHIN_CHANNEL, local_size 3, alpha 5e-05, beta 0.75, on the pooled
  32 x 16 x 16 and 32 x 8 x 8 maps, batch 100 (its train batch).
- AlexNet / CaffeNet norm1 / norm2 (models/bvlc_alexnet): LRN ACROSS_CHANNELS,
  local_size 5, alpha 1e-4, beta 0.75, on 96 x 55 x 55 and 256 x 27 x 27;
  batch --alexnet-batch (Caffe's train_val uses 256, which needs about 2 GB
  here; 32 keeps the run short).
- cifar10_full_sigmoid_train_test_bn's bn1: BatchNorm (TRAIN) on 32 x 16 x 16.

PyTorch: torch.nn.functional.local_response_norm for ACROSS_CHANNELS (the same
formula: alpha/size, k, beta), and for WITHIN_CHANNEL (which PyTorch lacks)
x * (1 + alpha * avg_pool2d(x^2, size, 1, pad, count_include_pad))^-beta, the
formula Caffe's layer chain computes; batch_norm in training mode. Backward is
autograd's. Both run on all cores (torch's default threads; caffesolve's
default 2 workers, or --workers). Rounds of every case alternate, so load on a
shared machine hits them alike; medians (and minima) of --runs rounds after
3 warm-up rounds. Each case also prints the largest difference between the
two tops, as a check that both compute the same thing.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from caffesolve import backend
from caffesolve.blob import Blob
from caffesolve.layers import create_layer
from caffesolve.proto import caffe_pb2
from caffesolve.proto.io import parse_prototxt_text

WITHIN = (
    'name: "norm" type: "LRN" lrn_param { local_size: 3 alpha: 5e-05 beta: 0.75 '
    "norm_region: WITHIN_CHANNEL }"
)
ACROSS = 'name: "norm" type: "LRN" lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 }'
BN = 'name: "bn" type: "BatchNorm"'


def cases(alexnet_batch: int, cifar_batch: int) -> dict[str, tuple[str, tuple]]:
    return {
        "cifar10_full norm1": (WITHIN, (cifar_batch, 32, 16, 16)),
        "cifar10_full norm2": (WITHIN, (cifar_batch, 32, 8, 8)),
        "AlexNet norm1": (ACROSS, (alexnet_batch, 96, 55, 55)),
        "AlexNet norm2": (ACROSS, (alexnet_batch, 256, 27, 27)),
        "cifar10 BN bn1": (BN, (cifar_batch, 32, 16, 16)),
    }


def build(text: str, shape: tuple[int, ...]) -> tuple[Any, Blob, Blob]:
    param = parse_prototxt_text(text, caffe_pb2.LayerParameter(), "<bench>")
    rng = np.random.default_rng(1701)
    layer = create_layer(param, caffe_pb2.TRAIN, rng)
    bottom, top = Blob(shape), Blob()
    bottom.data[...] = np.maximum(rng.normal(size=shape), 0) * 4  # after a ReLU
    layer.setup([bottom], [top])
    top.diff[...] = rng.normal(size=top.shape)
    return layer, bottom, top


def torch_case(
    text: str, bottom: Blob, top: Blob
) -> tuple[Callable[[], None], Callable[[], None], dict[str, Any]]:
    """PyTorch's forward and backward for the same layer and arrays, and a
    dict with the largest difference from caffesolve's top ("max_diff")."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(bottom.data.copy()).requires_grad_()
    dy = torch.from_numpy(top.diff.copy())
    state: dict[str, Any] = {}
    if "BatchNorm" in text:
        c = bottom.shape[1]
        mean, var = torch.zeros(c), torch.ones(c)

        def f(t: Any) -> Any:
            return F.batch_norm(t, mean, var, training=True, momentum=0.001, eps=1e-5)

    elif "WITHIN" in text:

        def f(t: Any) -> Any:
            avg = F.avg_pool2d(t * t, 3, 1, 1, count_include_pad=True)
            return t * (1 + 5e-05 * avg) ** -0.75

    else:

        def f(t: Any) -> Any:
            return F.local_response_norm(t, 5, alpha=1e-4, beta=0.75, k=1.0)

    def forward() -> None:
        state["y"] = f(x)

    def backward() -> None:
        x.grad = None
        state["y"].backward(dy, retain_graph=True)

    forward()
    state["max_diff"] = float(
        (state["y"].detach() - torch.from_numpy(top.data)).abs().max()
    )
    return forward, backward, state


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--alexnet-batch", type=int, default=32)
    parser.add_argument("--cifar-batch", type=int, default=100)
    parser.add_argument("--workers", default="2", help="caffesolve worker counts")
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args()
    torch_ok = not args.no_torch
    if torch_ok:
        try:
            import torch

            threads = torch.get_num_threads()
        except ImportError:
            print("(PyTorch is not installed: pip install -e '.[bench]')")
            torch_ok = False
    worker_counts = [int(w) for w in args.workers.split(",")]
    runners: dict[str, tuple[Callable, Callable]] = {}
    notes: dict[str, str] = {}
    for name, (text, shape) in cases(args.alexnet_batch, args.cifar_batch).items():
        layer, bottom, top = build(text, shape)
        layer.forward([bottom], [top])
        for w in worker_counts:

            def fwd(
                layer: Any = layer, bottom: Blob = bottom, top: Blob = top, w: int = w
            ) -> None:
                backend.set_workers(w)
                layer.forward([bottom], [top])

            def bwd(
                layer: Any = layer, bottom: Blob = bottom, top: Blob = top, w: int = w
            ) -> None:
                backend.set_workers(w)
                layer.backward([top], [True], [bottom])

            runners[f"{name} | caffesolve {w}w"] = (fwd, bwd)
        if torch_ok:
            tf, tb, state = torch_case(text, bottom, top)
            runners[f"{name} | PyTorch {threads}t"] = (tf, tb)
            notes[name] = f"max |top - PyTorch's| = {state['max_diff']:.2g}"
        settings = text.split("{")[-1].strip(" }") if "{" in text else "defaults"
        print(f"{name}: {'x'.join(map(str, shape))} ({settings})")
    times: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in runners}
    for r in range(args.runs + 3):
        for key, (fwd, bwd) in runners.items():
            f_ms, b_ms = timed(fwd), timed(bwd)
            if r >= 3:
                times[key][0].append(f_ms)
                times[key][1].append(b_ms)
    backend.set_workers(None)
    print(f"\nms, median (min) of {args.runs} rounds")
    print(f"{'':<44} {'forward':>16} {'backward':>16}")
    for key, (f, b) in times.items():
        fs = f"{statistics.median(f):.2f} ({min(f):.2f})"
        bs = f"{statistics.median(b):.2f} ({min(b):.2f})"
        print(f"{key:<44} {fs:>16} {bs:>16}")
    for name, note in notes.items():
        print(f"{name}: {note}")


if __name__ == "__main__":
    main()
