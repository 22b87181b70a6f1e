"""ms per forward+backward of Caffe's LeNet at batch 64, per layer.

Builds the TRAIN net of Caffe's examples/mnist/lenet_train_test.prototxt with
its Data layer swapped for an Input layer of the same tops (random images in
[0, 1), random labels), then times it with `caffesolve.tools.time_net`, the
code behind `caffesolve time`. Also reports the Net's own overhead: a whole
`forward_backward()` against the sum of the layers' times.

    python benchmarks/bench_net.py [--model PATH] [--batch 64] [--iterations 50]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from caffesolve.net import Net
from caffesolve.proto import caffe_pb2
from caffesolve.proto.upgrade import read_net_params_from_text_file
from caffesolve.tools import time_net

DEFAULT_MODEL = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "caffe-examples"
    / "mnist__lenet_train_test.prototxt"
)


def with_input_layer(
    param: caffe_pb2.NetParameter, batch: int, image: tuple[int, ...]
) -> caffe_pb2.NetParameter:
    """`param` with each Data layer replaced by an Input layer (same tops)."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    for lp in out.layer:
        if lp.type != "Data":
            continue
        tops = list(lp.top)
        include = list(lp.include)
        name = lp.name
        lp.Clear()
        lp.name, lp.type = name, "Input"
        lp.top.extend(tops)
        lp.include.extend(include)
        lp.input_param.shape.add().dim.extend((batch, *image))
        if len(tops) > 1:
            lp.input_param.shape.add().dim.append(batch)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=50)
    args = parser.parse_args()

    param = with_input_layer(
        read_net_params_from_text_file(args.model), args.batch, (1, 28, 28)
    )
    net = Net(
        param,
        caffe_pb2.TRAIN,
        rng=np.random.default_rng(1701),
        source=str(args.model),
        quiet=True,
    )
    rng = np.random.default_rng(0)
    net.blob_by_name("data").data[...] = rng.random((args.batch, 1, 28, 28))
    net.blob_by_name("label").data[...] = rng.integers(0, 10, args.batch)

    timing = time_net(net, args.iterations, log=False)
    print(f"LeNet TRAIN, batch {args.batch}, {args.iterations} iterations (ms)")
    print(f"{'layer':>10}  {'forward':>9}  {'backward':>9}")
    for name, f, b in zip(timing.layer_names, timing.forward_ms, timing.backward_ms):
        print(f"{name:>10}  {f:9.3f}  {b:9.3f}")
    print(
        f"{'total':>10}  {timing.forward_pass_ms:9.3f}  {timing.backward_pass_ms:9.3f}"
    )
    print(f"forward+backward: {timing.forward_backward_ms:.3f} ms per iteration")

    # The Net's own cost: whole passes against the sum of layer times.
    whole = []
    for _ in range(args.iterations):
        net.clear_param_diffs()
        t = time.perf_counter()
        net.forward_backward()
        whole.append((time.perf_counter() - t) * 1e3)
    layers_ms = sum(timing.forward_ms) + sum(timing.backward_ms)
    print(
        f"Net.forward_backward(): median {statistics.median(whole):.3f} ms "
        f"(layers alone {layers_ms:.3f} ms)"
    )


if __name__ == "__main__":
    main()
