"""Convolution lowerings side by side, per shape (ops/conv.py's strategies).

    python benchmarks/bench_conv.py [--rounds 12] [--workers 1] [--shapes cifar]
                                    [--strategies per_image,batch_inner,row_shift]

For each shape (CIFAR-10's, LeNet's, and 3x3, 1x1, strided, grouped,
depthwise and tiny-plane layers as in the zoo nets), one Convolution layer
per strategy (where the strategy applies; else the one choose_lowering
falls back to) runs forward + backward in interleaved rounds. Printed: the
median milliseconds of CPU time of this process (time.process_time: on a
shared, loaded machine the wall clock mostly measures the other processes;
the CPU time still grows with cache misses they cause), the strategy
choose_lowering picks (*), and PyTorch's conv2d forward + backward at the
same shape in its default and channels_last layouts when torch is
installed, at the same thread count. Use --workers 1 (and torch's 1
thread) to compare the work done; --workers 2 to see the split.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from caffesolve import backend
from caffesolve.blob import Blob
from caffesolve.layers import create_layer
from caffesolve.layers.conv import ConvolutionLayer
from caffesolve.ops import conv as lowering
from caffesolve.proto import caffe_pb2
from caffesolve.proto.io import parse_prototxt_text

# name: (num_output, convolution_param fields, bottom shape, bottom diff?)
SHAPES: dict[str, tuple[int, str, tuple[int, ...], bool]] = {
    "cifar conv1 3>32 5x5 p2 32px": (
        32,
        "kernel_size: 5 pad: 2",
        (100, 3, 32, 32),
        False,
    ),
    "cifar conv2 32>32 5x5 p2 16px": (
        32,
        "kernel_size: 5 pad: 2",
        (100, 32, 16, 16),
        True,
    ),
    "cifar conv3 32>64 5x5 p2 8px": (
        64,
        "kernel_size: 5 pad: 2",
        (100, 32, 8, 8),
        True,
    ),
    "lenet conv1 1>20 5x5 28px": (20, "kernel_size: 5", (64, 1, 28, 28), False),
    "lenet conv2 20>50 5x5 12px": (50, "kernel_size: 5", (64, 20, 12, 12), True),
    "3x3 p1 64>64 16px": (64, "kernel_size: 3 pad: 1", (32, 64, 16, 16), True),
    "1x1 128>64 14px": (64, "kernel_size: 1", (32, 128, 14, 14), True),
    "3x3 s2 p1 32>64 32px": (
        64,
        "kernel_size: 3 pad: 1 stride: 2",
        (32, 32, 32, 32),
        True,
    ),
    "group 4 3x3 p1 64>64 16px": (
        64,
        "kernel_size: 3 pad: 1 group: 4",
        (32, 64, 16, 16),
        True,
    ),
    "depthwise 3x3 p1 64 16px": (
        64,
        "kernel_size: 3 pad: 1 group: 64",
        (32, 64, 16, 16),
        True,
    ),
    "tiny 3x3 p1 256>256 7px": (256, "kernel_size: 3 pad: 1", (16, 256, 7, 7), True),
    "tiny 3x3 s2 p1 128>128 8px": (
        128,
        "kernel_size: 3 pad: 1 stride: 2",
        (32, 128, 8, 8),
        True,
    ),
    "tiny depthwise 3x3 s2 128 8px": (
        128,
        "kernel_size: 3 pad: 1 stride: 2 group: 128",
        (32, 128, 8, 8),
        True,
    ),
}


def build(name: str, strategy: str | None) -> tuple[ConvolutionLayer, Blob, Blob]:
    """The shape's layer with `strategy` forced (None: choose_lowering's)."""
    m, fields, shape, _ = SHAPES[name]
    text = (
        f'name: "conv" type: "Convolution" convolution_param {{ num_output: {m} '
        f'{fields} weight_filler {{ type: "gaussian" std: 0.1 }} }}'
    )
    param = parse_prototxt_text(text, caffe_pb2.LayerParameter(), "<bench>")
    choose = lowering.choose_lowering
    if strategy is not None:

        def forced(g: lowering.ConvGeometry, num_output: int, group: int) -> str:
            if lowering.LOWERINGS[strategy].applies(g, num_output, group):
                return strategy
            return choose(g, num_output, group)

        lowering.choose_lowering = forced  # type: ignore[assignment]
    try:
        layer = create_layer(param, caffe_pb2.TRAIN, np.random.default_rng(1701))
        bottom, top = Blob(shape), Blob()
        bottom.data[...] = np.random.default_rng(0).random(shape, dtype=np.float32)
        layer.setup([bottom], [top])
    finally:
        lowering.choose_lowering = choose  # type: ignore[assignment]
    top.diff[...] = np.random.default_rng(1).normal(size=top.shape)
    assert isinstance(layer, ConvolutionLayer)
    return layer, bottom, top


def torch_step(name: str, channels_last: bool) -> Callable[[], None]:
    """PyTorch's conv2d forward + backward at the shape."""
    import torch

    m, fields, shape, down = SHAPES[name]
    words = dict(zip(fields.split()[0::2], fields.split()[1::2]))
    conv = torch.nn.Conv2d(
        shape[1],
        m,
        int(words["kernel_size:"]),
        stride=int(words.get("stride:", 1)),
        padding=int(words.get("pad:", 0)),
        groups=int(words.get("group:", 1)),
    )
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    conv = conv.to(memory_format=fmt)
    x = torch.rand(shape).to(memory_format=fmt).requires_grad_(down)

    def step() -> None:
        y = conv(x)
        y.backward(torch.ones_like(y))

    return step


def cpu_ms(fn: Callable[[], object]) -> float:
    start = time.process_time()
    fn()
    return (time.process_time() - start) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--shapes", default="", help="only shapes containing this")
    parser.add_argument(
        "--strategies", default=",".join(lowering.LOWERINGS), help="to compare"
    )
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args()
    backend.set_blas_threads(1)
    backend.set_workers(args.workers)
    strategies = args.strategies.split(",")
    torch_ok = not args.no_torch
    if torch_ok:
        try:
            import torch

            torch.set_num_threads(args.workers)
        except ImportError:
            torch_ok = False
    print(
        f"ms of CPU time per forward + backward, median of {args.rounds} "
        f"interleaved rounds; {args.workers} worker(s), BLAS 1 thread"
        + (f", torch {args.workers} thread(s)" if torch_ok else "")
        + "; * = choose_lowering's pick"
    )
    for name, (_, _, _, down) in SHAPES.items():
        if args.shapes not in name:
            continue
        picked = build(name, None)[0].lowerings[0].name
        runs: dict[str, Callable[[], None]] = {}
        for strategy in strategies:
            layer, bottom, top = build(name, strategy)
            label = layer.lowerings[0].name
            if label not in runs:
                runs[label] = lambda ly=layer, b=bottom, t=top, d=down: (  # type: ignore[misc]
                    ly.forward([b], [t]),
                    ly.backward([t], [d], [b]),
                )
        if torch_ok:
            runs["torch"] = torch_step(name, False)
            runs["torch cl"] = torch_step(name, True)
        times: dict[str, list[float]] = {k: [] for k in runs}
        for r in range(args.rounds + 2):
            for label, run in runs.items():
                ms = cpu_ms(run)
                if r >= 2:  # two warm-up rounds
                    times[label].append(ms)
        cells = [
            f"{label}{'*' if label == picked else ''} {statistics.median(v):.2f}"
            for label, v in times.items()
        ]
        print(f"{name:31s} " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
