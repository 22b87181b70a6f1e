"""Pooling layers of CIFAR-10, GoogLeNet, ResNet-50 and LeNet beside PyTorch.

    python benchmarks/bench_pooling.py [--rounds 7] [--zoo-batch 16]
                                       [--threads 2] [--numpy] [--only NAME]

Times caffesolve's Pooling layer (TRAIN: forward with the argmax, and
backward; TEST: forward alone) against PyTorch's max_pool2d / avg_pool2d
(forward with autograd, backward; forward under no_grad) at the same shapes,
in PyTorch's default (NCHW) and channels_last layouts, all with the same
thread count (caffesolve's workers, torch.set_num_threads). Every shape and
implementation runs once per round, rounds repeat, medians are printed, so
load from other processes on a shared machine hits them alike. `--numpy`
adds caffesolve with the compiled kernels off (CAFFESOLVE_KERNELS=numpy).
The ratio columns are caffesolve's time over PyTorch's best layout (below 1:
caffesolve is faster). PyTorch's AVE uses count_include_pad, Caffe's
divisor; its ceil_mode drops a last window that starts in the right padding,
as Caffe does: the output shapes are checked to agree.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from torch_lenet import torch_available  # noqa: E402

from caffesolve import backend, kernels  # noqa: E402
from caffesolve.blob import Blob  # noqa: E402
from caffesolve.layers import create_layer  # noqa: E402
from caffesolve.proto import caffe_pb2  # noqa: E402
from caffesolve.proto.io import parse_prototxt_text  # noqa: E402

# name: (pool, kernel, stride, pad, channels, size, batch; 0 = --zoo-batch).
SHAPES = {
    "cifar10 pool1": ("MAX", 3, 2, 0, 32, 32, 100),  # quick and full alike
    "cifar10 pool2": ("AVE", 3, 2, 0, 32, 16, 100),
    "cifar10 pool3": ("AVE", 3, 2, 0, 64, 8, 100),
    "lenet pool1": ("MAX", 2, 2, 0, 20, 24, 64),
    "googlenet/resnet50 pool1": ("MAX", 3, 2, 0, 64, 112, 0),
    "googlenet pool2": ("MAX", 3, 2, 0, 192, 56, 0),
    "googlenet 3a/pool": ("MAX", 3, 1, 1, 192, 28, 0),
    "googlenet 4a/pool": ("MAX", 3, 1, 1, 480, 14, 0),
    "googlenet pool4": ("MAX", 3, 2, 0, 832, 14, 0),
    "googlenet 5a/pool": ("MAX", 3, 1, 1, 832, 7, 0),
    "googlenet pool5": ("AVE", 7, 1, 0, 1024, 7, 0),
    "resnet50 pool5": ("AVE", 7, 1, 0, 2048, 7, 0),
}

Timing = dict[str, float]  # "fwd", "bwd", "test" -> ms


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


class CaffesolvePool:
    """A Pooling layer in TRAIN and in TEST, on fixed data."""

    def __init__(self, spec: tuple, batch: int, x: np.ndarray, dy: np.ndarray) -> None:
        pool, k, s, p = spec[:4]
        text = (
            f'name: "pool" type: "Pooling" pooling_param {{ pool: {pool} '
            f"kernel_size: {k} stride: {s} pad: {p} }}"
        )
        param = parse_prototxt_text(text, caffe_pb2.LayerParameter(), "<bench>")
        self.train = create_layer(param, caffe_pb2.TRAIN)
        self.test = create_layer(param, caffe_pb2.TEST)
        self.bottom = Blob(x.shape)
        self.bottom.data[...] = x
        self.top, self.test_top = Blob(), Blob()
        self.train.setup([self.bottom], [self.top])
        self.test.setup([self.bottom], [self.test_top])
        self.top.diff[...] = dy

    @property
    def out_shape(self) -> tuple[int, ...]:
        return self.top.shape

    def run(self) -> Timing:
        b, t = [self.bottom], [self.top]
        return {
            "fwd": timed(lambda: self.train.forward(b, t)),
            "bwd": timed(lambda: self.train.backward(t, [True], b)),
            "test": timed(lambda: self.test.forward(b, [self.test_top])),
        }


class TorchPool:
    """The same pooling in PyTorch, NCHW or channels_last."""

    def __init__(
        self, spec: tuple, x: np.ndarray, dy: np.ndarray, channels_last: bool
    ) -> None:
        import torch
        import torch.nn.functional as F

        pool, k, s, p = spec[:4]
        self.torch = torch
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.x = torch.from_numpy(x).contiguous(memory_format=fmt).requires_grad_()
        self.dy = torch.from_numpy(dy).contiguous(memory_format=fmt)
        if pool == "MAX":
            self.fn = lambda a: F.max_pool2d(a, k, s, p, ceil_mode=True)
        else:
            self.fn = lambda a: F.avg_pool2d(
                a, k, s, p, ceil_mode=True, count_include_pad=True
            )

    @property
    def out_shape(self) -> tuple[int, ...]:
        with self.torch.no_grad():
            return tuple(self.fn(self.x).shape)

    def run(self) -> Timing:
        y = None

        def forward() -> None:
            nonlocal y
            y = self.fn(self.x)

        def backward() -> None:
            self.x.grad = None
            y.backward(self.dy)  # type: ignore[union-attr]

        def test() -> None:
            with self.torch.no_grad():
                self.fn(self.x)

        return {"fwd": timed(forward), "bwd": timed(backward), "test": timed(test)}


def build(
    name: str, spec: tuple, zoo_batch: int, numpy_row: bool, threads: int
) -> dict:
    """Every implementation of one pooling, on the same random data."""
    pool, k, s, p, channels, size, batch = spec
    batch = batch or zoo_batch
    rng = np.random.default_rng(1701)
    x = np.maximum(rng.normal(size=(batch, channels, size, size)), 0)
    x = x.astype(np.float32)  # as after a ReLU
    impls: dict = {}
    caffesolve = CaffesolvePool(spec, batch, x, np.zeros(1, np.float32))
    dy = rng.normal(size=caffesolve.out_shape).astype(np.float32)
    caffesolve.top.diff[...] = dy
    impls["caffesolve"] = caffesolve
    if threads > 1:
        impls["caffesolve 1 worker"] = CaffesolvePool(spec, batch, x, dy)
    if numpy_row:
        impls["caffesolve NumPy"] = CaffesolvePool(spec, batch, x, dy)
    if torch_available():
        impls["torch NCHW"] = TorchPool(spec, x, dy, channels_last=False)
        impls["torch channels_last"] = TorchPool(spec, x, dy, channels_last=True)
        got = impls["torch NCHW"].out_shape
        if got != caffesolve.out_shape:
            print(
                f"  note: {name}: PyTorch's output {got}, "
                f"Caffe's {caffesolve.out_shape}"
            )
    return impls


def run_once(name: str, impl: object, threads: int) -> Timing:
    backend.set_workers(1 if name == "caffesolve 1 worker" else threads)
    with kernels.forced(name == "caffesolve NumPy"):
        return impl.run()  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--zoo-batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--numpy", action="store_true", help="add the NumPy paths")
    parser.add_argument("--only", default="", help="shapes whose name has this")
    args = parser.parse_args()
    backend.set_workers(args.threads)
    if torch_available():
        import torch

        torch.set_num_threads(args.threads)
    else:
        print("(torch is not installed: pip install -e '.[bench]' for its rows)")
    shapes = {n: s for n, s in SHAPES.items() if args.only in n}
    built = {
        n: build(n, s, args.zoo_batch, args.numpy, args.threads)
        for n, s in shapes.items()
    }
    times: dict[tuple[str, str], list[Timing]] = {}
    for r in range(args.rounds + 1):  # round 0 warms up (numba loads, caches)
        for name, impls in built.items():
            for impl_name, impl in impls.items():
                t = run_once(impl_name, impl, args.threads)
                if r:
                    times.setdefault((name, impl_name), []).append(t)
    for stat in ("median", "min"):
        report(built, shapes, times, stat, args)


def report(
    built: dict,
    shapes: dict,
    times: dict[tuple[str, str], list[Timing]],
    stat: str,
    args: argparse.Namespace,
) -> None:
    """One table of every shape and implementation: medians of the rounds,
    or their minimum (the cost with the least interference)."""
    pick = statistics.median if stat == "median" else min
    print(
        f"Pooling, ms ({stat} of {args.rounds} interleaved rounds), "
        f"{args.threads} thread(s), float32; zoo batch {args.zoo_batch}"
    )
    header = f"  {'':<24} {'fwd':>8} {'bwd':>8} {'f+b':>8} {'test fwd':>9}"
    for name, impls in built.items():
        pool, k, s, p, channels, size, batch = shapes[name]
        batch = batch or args.zoo_batch
        print(
            f"{name}: {pool} {k}x{k}/{s} pad {p} over {batch}x{channels}x{size}x{size}"
        )
        print(header)
        cell: dict[str, Timing] = {}
        for impl_name in impls:
            runs = times[(name, impl_name)]
            cell[impl_name] = {
                key: pick(run[key] for run in runs) for key in ("fwd", "bwd", "test")
            }
            m = cell[impl_name]
            print(
                f"  {impl_name:<24} {m['fwd']:8.2f} {m['bwd']:8.2f} "
                f"{m['fwd'] + m['bwd']:8.2f} {m['test']:9.2f}"
            )
        torch_rows = [m for n, m in cell.items() if n.startswith("torch")]
        if torch_rows:
            ours = cell["caffesolve"]
            best_fb = min(m["fwd"] + m["bwd"] for m in torch_rows)
            best_test = min(m["test"] for m in torch_rows)
            print(
                f"  {'caffesolve / best torch':<24} {'':>8} {'':>8} "
                f"{(ours['fwd'] + ours['bwd']) / best_fb:8.2f} "
                f"{ours['test'] / best_test:9.2f}"
            )


if __name__ == "__main__":
    main()
