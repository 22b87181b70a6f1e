"""Forward time of zoo nets, caffesolve beside PyTorch CPU in the same run.

    python benchmarks/bench_zoo.py [--nets googlenet,resnet50,mobilenet_v1]
                                   [--batches 1,16] [--rounds 7] [--layers]
                                   [--examples ../shared/caffe-examples]
                                   [--threads N]

(needs the `bench` extra for PyTorch: pip install -e '.[bench]'.)

Each net is the deploy prototxt of ../shared/caffe-examples (zoo__*_deploy:
BVLC GoogLeNet, ResNet-50, MobileNet v1) at 224x224 and the given batch,
built in the TEST phase with random weights (convolutions N(0, 2/fan_in),
BatchNorm statistics 0 and 1). PyTorch runs the same layers on the same
weights (benchmarks/torch_zoo.py: a functional twin built from the Net's
layer list), in its default layout and in channels_last, under no_grad, on
torch's default threads and caffesolve's thread policy as its commands
apply it (2 workers, OpenBLAS on 1 thread), or
--threads N for both (1: the steadier comparison on a shared machine, where
a threaded step waits for a descheduled thread). The three alternate within
every round (their order rotating), so load on a shared machine hits them
alike. Each round keeps the fastest of --reps forwards of
each (after one warm-up forward); the table gives the medians over the rounds
and the ratio of caffesolve's median to PyTorch's best layout's median (and
the same ratio of the minima). Each net also prints the largest difference
between caffesolve's output and PyTorch's.

--layers adds, for each net, caffesolve's per-layer forward times (the
forward column of `caffesolve time`: each layer's forward_layer timed) beside
PyTorch's channels_last per op, summed by layer type, with the ten slowest
layers: where the time goes, and which layer family is behind.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from caffesolve.backend import (
    blas_threads,
    configure_blas_threads,
    set_workers,
    workers,
)
from caffesolve.log import LOG
from caffesolve.net import Net
from caffesolve.proto import caffe_pb2
from caffesolve.proto.upgrade import read_net_params_from_text_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from torch_zoo import TorchNet  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[2] / "shared" / "caffe-examples"
LABELS = {
    "googlenet": "GoogLeNet",
    "resnet50": "ResNet-50",
    "mobilenet_v1": "MobileNet v1",
}


def build(name: str, batch: int, examples: Path = EXAMPLES) -> Net:
    """The deploy net at `batch`, random weights as a trained net's scale."""
    param = read_net_params_from_text_file(examples / f"zoo__{name}_deploy.prototxt")
    for lp in param.layer:
        for shape in lp.input_param.shape:
            shape.dim[0] = batch
    net = Net(param, caffe_pb2.TEST, quiet=True)
    rng = np.random.default_rng(1701)
    for layer in net.layers:
        kind, blobs = layer.layer_param.type, layer.blobs
        if kind == "BatchNorm":
            blobs[0].data[...], blobs[1].data[...], blobs[2].data[...] = 0, 1, 1
        elif kind == "Scale":
            blobs[0].data[...] = 1
        elif blobs:
            fan_in = int(np.prod(blobs[0].shape[1:]))
            std = np.float32(np.sqrt(2 / fan_in))
            blobs[0].data[...] = rng.standard_normal(blobs[0].shape, np.float32) * std
    net.input_blobs[0].data[...] = rng.random(net.input_blobs[0].shape, np.float32)
    return net


def layer_forward_ms(net: Net) -> list[float]:
    """One forward pass, each layer timed (caffesolve time's forward column)."""
    out = []
    for i in range(len(net.layers)):
        start = time.perf_counter()
        net.forward_layer(i)
        out.append((time.perf_counter() - start) * 1e3)
    return out


def bench(
    name: str, batch: int, rounds: int, reps: int, layers: bool, examples: Path
) -> dict[str, float]:
    net = build(name, batch, examples)
    x = net.input_blobs[0].data.copy()
    twins = {
        "PyTorch": TorchNet(net),
        "PyTorch channels_last": TorchNet(net, channels_last=True),
    }
    inputs = {k: t.tensors([x]) for k, t in twins.items()}
    net.forward()
    ours = net.output_blobs[0].data
    for key, twin in twins.items():
        theirs = twin.run(inputs[key])[0].numpy()
        diff = float(np.abs(theirs.reshape(ours.shape) - ours).max())
        print(f"  {key}: largest output difference {diff:.3g}")

    runners = {
        "caffesolve": net.forward,
        **{k: (lambda t=t, i=inputs[k]: t.run(i)) for k, t in twins.items()},
    }
    times: dict[str, list[float]] = defaultdict(list)
    per_layer: list[list[float]] = []
    torch_layer: list[dict[str, float]] = []
    keys = list(runners)
    for r in range(rounds):
        for key in keys[r % 3 :] + keys[: r % 3]:
            best = float("inf")
            for _ in range(reps):
                start = time.perf_counter()
                runners[key]()
                best = min(best, (time.perf_counter() - start) * 1e3)
            times[key].append(best)
        if layers:
            per_layer.append(layer_forward_ms(net))
            ms: dict[str, float] = {}
            twins["PyTorch channels_last"].run(inputs["PyTorch channels_last"], ms)
            torch_layer.append(ms)

    medians = {k: statistics.median(v) for k, v in times.items()}
    best = min(medians["PyTorch"], medians["PyTorch channels_last"])
    for key in keys:
        v = times[key]
        print(
            f"  {key:22s} median {medians[key]:9.1f} ms  min {min(v):9.1f}  "
            f"max {max(v):9.1f}"
        )
    ratio = medians["caffesolve"] / best
    minima = {k: min(v) for k, v in times.items()}
    low = minima["caffesolve"] / min(minima["PyTorch"], minima["PyTorch channels_last"])
    print(
        f"  caffesolve / PyTorch's best layout: {ratio:.2f}x (medians), "
        f"{low:.2f}x (minima)"
    )
    if layers:
        print_layers(net, per_layer, torch_layer)
    return {**medians, "ratio": ratio, "low": low}


def print_layers(
    net: Net, per_layer: list[list[float]], torch_layer: list[dict[str, float]]
) -> None:
    names = list(net.layer_names)
    kinds = [layer.layer_param.type for layer in net.layers]
    ours = [statistics.median(r[i] for r in per_layer) for i in range(len(names))]
    theirs = [statistics.median(r[n] for r in torch_layer) for n in names]
    total = sum(ours)
    family: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])
    for kind, a, b in zip(kinds, ours, theirs):
        family[kind][0] += a
        family[kind][1] += b
        family[kind][2] += 1
    print(f"  per layer type (medians, ms; caffesolve's layers sum {total:.1f}):")
    print("    type            layers  caffesolve  PyTorch CL   ratio   share")
    for kind, (a, b, n) in sorted(family.items(), key=lambda kv: -kv[1][0]):
        r = a / b if b > 0 else float("inf")
        print(f"    {kind:15s} {n:6d} {a:11.1f} {b:11.1f} {r:7.1f}x {a / total:6.0%}")
    print("  slowest layers:")
    order = sorted(range(len(names)), key=lambda i: -ours[i])[:10]
    for i in order:
        shape = "x".join(map(str, net.top_vecs[i][0].shape))
        r = ours[i] / theirs[i] if theirs[i] > 0 else float("inf")
        print(
            f"    {names[i]:28s} {kinds[i]:12s} {ours[i]:8.1f} ms {theirs[i]:7.1f} "
            f"({r:5.1f}x)  top {shape}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", default="googlenet,resnet50,mobilenet_v1")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=3, help="forwards per round")
    ap.add_argument("--layers", action="store_true")
    ap.add_argument("--examples", type=Path, default=EXAMPLES, help="zoo__*.prototxt")
    ap.add_argument("--threads", type=int, default=0, help="cores for each side")
    args = ap.parse_args()
    import torch

    configure_blas_threads()  # caffesolve's thread policy, as its commands apply it
    if args.threads:  # caffesolve's workers and PyTorch's threads
        set_workers(args.threads)
        torch.set_num_threads(args.threads)
    LOG.quiet = True
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"caffesolve {workers()} workers, OpenBLAS {blas_threads()} threads; "
        f"numpy {np.__version__}; load average {os.getloadavg()[0]:.1f}"
    )
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        for name in args.nets.split(","):
            print(f"\n{LABELS.get(name, name)}, batch {batch}:")
            m = bench(name, batch, args.rounds, args.reps, args.layers, args.examples)
            rows.append((name, batch, m))
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")
    print("\n| net | batch | caffesolve ms | PyTorch ms | PyTorch channels_last ms "
          "| caffesolve / best | (minima) |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, batch, m in rows:
        print(
            f"| {LABELS.get(name, name)} | {batch} | {m['caffesolve']:.0f} | "
            f"{m['PyTorch']:.0f} | {m['PyTorch channels_last']:.0f} | "
            f"{m['ratio']:.2f}x | {m['low']:.2f}x |"
        )


if __name__ == "__main__":
    main()
