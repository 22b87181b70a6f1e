"""CIFAR-10 on the CPU, side by side: Caffe's cifar10_quick and cifar10_full at
batch 100, forward + backward (issue 18).

    python benchmarks/bench_cifar10.py [--nets quick,full] [--rounds 5]
                                       [--iters 4] [--layer-iters 5]
                                       [--threads N] [--no-torch]
                                       [--examples DIR]

Each net is Caffe's own examples/cifar10/cifar10_{quick,full}_train_test.prototxt
(from ../shared/caffe-examples, or --examples), its Data layers replaced by
Input layers holding random images and labels (no data loading is timed).
One run prints, per net, in alternating rounds (load on a shared machine
hits every row alike; medians of all iterations, and the spread of the
rounds' medians as the noise):

- caffesolve: Net.forward + Net.backward, what `caffesolve time` times;
- PyTorch 2.13, default and channels_last layouts: the same net (LRN
  WITHIN_CHANNEL written out as Caffe computes it), forward + loss +
  backward, as many threads as caffesolve uses cores;
- Caffe-shape GEMMs: the net's Convolution and InnerProduct GEMMs at the
  shapes Caffe's CPU code calls them (one GEMM per image and group for a
  convolution: forward_cpu_gemm, weight_cpu_gemm, backward_cpu_gemm; one
  per layer for InnerProduct), each one OpenBLAS call on all the cores,
  nothing else;
- compute limit: the net's GEMM FLOPs (forward, weight and data GEMMs)
  divided by the rate of a large square SGEMM (2048^3) measured in the same
  rounds at the same thread count.

--threads N gives every row N cores: caffesolve N workers, PyTorch N threads,
the GEMM rows N OpenBLAS threads (default: as caffesolve starts, 2 workers).
On a shared machine under load, threaded OpenBLAS and PyTorch slow down many
times over when another process holds a core (issue 18), so --threads 1 is
the steady comparison of the work each does.

Then the ratios, and caffesolve's per-layer table (tools.time_net, the code
of `caffesolve time`). cifar10_full needs LRN, which lands with issue 12's
normalization layers: until then its caffesolve and per-layer rows are
skipped with a message (PyTorch's, the GEMMs' and the limit still run).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_lenet import data_to_input  # noqa: E402

from caffesolve.backend import (  # noqa: E402
    blas_threads,
    configure_blas_threads,
    set_blas_threads,
    set_workers,
    workers,
)
from caffesolve.layers import LAYERS  # noqa: E402
from caffesolve.log import LOG  # noqa: E402
from caffesolve.net import Net  # noqa: E402
from caffesolve.proto import caffe_pb2  # noqa: E402
from caffesolve.proto.upgrade import read_net_params_from_text_file  # noqa: E402
from caffesolve.tools import time_net  # noqa: E402

EXAMPLES = ROOT.parent / "shared" / "caffe-examples"
BATCH = 100
SQUARE = 2048  # the large square SGEMM of the compute limit


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


# -- caffesolve ------------------------------------------------------------------------


def net_param(examples: Path, name: str) -> caffe_pb2.NetParameter:
    """Caffe's train_test net with Input layers (batch 100) for its Data."""
    param = read_net_params_from_text_file(
        examples / f"cifar10__cifar10_{name}_train_test.prototxt"
    )
    for lp in param.layer:
        if lp.type == "Data":
            data_to_input(lp, (BATCH, 3, 32, 32))
    return param


def make_net(examples: Path, name: str, stand_in: bool = False) -> Net:
    """The TRAIN net with random images in [0, 1) and labels 0..9. With
    `stand_in`, layer types caffesolve lacks become identity Power layers,
    which keep the shapes: enough for the GEMM rows, never timed."""
    LOG.quiet = True
    param = net_param(examples, name)
    if stand_in:
        for lp in param.layer:
            if lp.type not in LAYERS:
                lp.type = "Power"
    net = Net(param, caffe_pb2.TRAIN)
    rng = np.random.default_rng(1701)
    data, label = net.input_blobs
    data.data[...] = rng.random(data.shape, dtype=np.float32)
    label.data[...] = rng.integers(0, 10, label.shape)
    return net


def missing_layers(examples: Path, name: str) -> list[str]:
    """Layer types of the net that caffesolve does not register yet."""
    param = net_param(examples, name)
    return sorted({lp.type for lp in param.layer if lp.type not in LAYERS})


# -- the GEMM rows ---------------------------------------------------------------------


def caffe_gemms(net: Net) -> list[tuple[int, int, int, int]]:
    """(M, K, N, calls) of every GEMM Caffe's CPU code runs for the net's
    Convolution and InnerProduct layers in forward + backward: a
    convolution's forward, weight and (where its bottom needs a diff) data
    GEMM per image and group; InnerProduct's three GEMMs once each."""
    gemms = []
    for layer, need in zip(net.layers, net.bottom_need_backward):
        if layer.type == "Convolution":
            g = layer.geometry
            group = layer.group
            m, k = layer.num_output // group, g.kernel_dim // group
            p = g.col_cols // g.num
            calls = g.num * group
            gemms += [(m, k, p, calls), (m, p, k, calls)]
            if need and need[0]:
                gemms.append((k, m, p, calls))
        elif layer.type == "InnerProduct":
            m, k, n = layer.M, layer.K, layer.num_output
            gemms += [(m, k, n, 1), (n, m, k, 1)]
            if need and need[0]:
                gemms.append((m, n, k, 1))
    return gemms


class Gemms:
    """The net's GEMMs at Caffe's shapes, one OpenBLAS call each, and the
    large square SGEMM that sets the compute limit, at `threads` threads."""

    def __init__(self, net: Net, threads: int) -> None:
        rng = np.random.default_rng(0)
        self.threads = threads
        self.shapes = caffe_gemms(net)
        self.ops = [
            (
                rng.random((m, k), dtype=np.float32),
                rng.random((k, n), dtype=np.float32),
                np.empty((m, n), np.float32),
                calls,
            )
            for m, k, n, calls in self.shapes
        ]
        self.gflop = sum(2 * m * k * n * c for m, k, n, c in self.shapes) / 1e9
        self.square = [rng.random((SQUARE, SQUARE), dtype=np.float32) for _ in "ab"]
        self.square_out = np.empty((SQUARE, SQUARE), np.float32)

    def _with_threads(self, fn: Callable[[], None]) -> float:
        before = blas_threads() or 1
        set_blas_threads(self.threads)
        try:
            return timed(fn)
        finally:
            set_blas_threads(before)

    def caffe_shapes(self) -> float:
        def run() -> None:
            for a, b, c, calls in self.ops:
                for _ in range(calls):
                    np.matmul(a, b, out=c)

        return self._with_threads(run)

    def square_rate(self) -> float:
        """GFLOP/s of one SQUARE^3 SGEMM."""
        a, b = self.square
        ms = self._with_threads(lambda: np.matmul(a, b, out=self.square_out))
        return 2 * SQUARE**3 / ms / 1e6


# -- PyTorch ---------------------------------------------------------------------------


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


class TorchCifar:
    """Caffe's cifar10_quick or cifar10_full in PyTorch, with fixed random
    batches; time one forward + loss + backward."""

    def __init__(self, name: str, threads: int, channels_last: bool) -> None:
        import torch
        from torch import nn
        from torch.nn import functional

        torch.set_num_threads(threads)
        torch.manual_seed(1701)

        class WithinChannelLRN(nn.Module):
            """Caffe's LRN WITHIN_CHANNEL: x / (1 + alpha/size^2 * sum of x^2
            over the size x size window, zero padded)^beta."""

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                square = functional.avg_pool2d(x * x, 3, 1, 1, count_include_pad=True)
                return x * (1 + 5e-05 * square).pow(-0.75)

        def conv(cin: int, cout: int) -> nn.Conv2d:
            return nn.Conv2d(cin, cout, 5, padding=2)

        def pool(kind: type[nn.Module]) -> nn.Module:
            return kind(3, 2, ceil_mode=True)

        if name == "quick":
            layers = [
                conv(3, 32), pool(nn.MaxPool2d), nn.ReLU(),
                conv(32, 32), nn.ReLU(), pool(nn.AvgPool2d),
                conv(32, 64), nn.ReLU(), pool(nn.AvgPool2d),
                nn.Flatten(), nn.Linear(1024, 64), nn.Linear(64, 10),
            ]  # fmt: skip
        else:
            layers = [
                conv(3, 32), pool(nn.MaxPool2d), nn.ReLU(), WithinChannelLRN(),
                conv(32, 32), nn.ReLU(), pool(nn.AvgPool2d), WithinChannelLRN(),
                conv(32, 64), nn.ReLU(), pool(nn.AvgPool2d),
                nn.Flatten(), nn.Linear(1024, 10),
            ]  # fmt: skip
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.net = nn.Sequential(*layers).to(memory_format=fmt)
        self.loss = nn.CrossEntropyLoss()
        self.x = torch.rand(BATCH, 3, 32, 32).to(memory_format=fmt)
        self.y = torch.randint(0, 10, (BATCH,))

    def step(self) -> float:
        start = time.perf_counter()
        self.net.zero_grad(set_to_none=False)
        self.loss(self.net(self.x), self.y).backward()
        return (time.perf_counter() - start) * 1e3


# -- the run ---------------------------------------------------------------------------


def compare(args: argparse.Namespace, name: str, torch_ok: bool) -> None:
    """The rows of one net, in interleaved rounds, then its per-layer table."""
    missing = missing_layers(args.examples, name)
    cores = max(blas_threads() or 1, workers())
    print(f"\n== cifar10_{name}, batch {BATCH}, forward + backward ==")
    rows: dict[str, Callable[[], float]] = {}
    net = make_net(args.examples, name, stand_in=bool(missing))
    if missing:
        print(
            f"caffesolve: skipped, layer types not registered yet: "
            f"{', '.join(missing)} (issue 12); the GEMM rows use the net's shapes"
        )
    else:
        rows["caffesolve"] = lambda: timed(lambda: (net.forward(), net.backward()))
    gemms = Gemms(net, cores)
    if torch_ok:
        for label, cl in (("torch default", False), ("torch channels_last", True)):
            rows[label] = TorchCifar(name, cores, cl).step
    rows["Caffe-shape GEMMs"] = gemms.caffe_shapes
    rates: list[float] = []
    for run in rows.values():  # warm up
        for _ in range(2):
            run()
    times: dict[str, list[float]] = {k: [] for k in rows}
    round_medians: dict[str, list[float]] = {k: [] for k in rows}
    load_before = os.getloadavg()[0]
    for _ in range(args.rounds):
        rates.append(gemms.square_rate())
        for label, run in rows.items():
            ms = [run() for _ in range(args.iters)]
            times[label] += ms
            round_medians[label].append(statistics.median(ms))
    rate = statistics.median(rates)
    limit = gemms.gflop / rate * 1e3
    print(
        f"threads: BLAS {blas_threads()}, caffesolve workers {workers()}, torch "
        f"and the GEMM rows {cores}; {args.rounds} rounds x {args.iters} "
        f"iterations; load average {load_before:.2f} -> {os.getloadavg()[0]:.2f}"
    )
    print(f"{'':30s}{'ms':>9s}{'rounds min..max':>20s}{'/ caffesolve':>14s}")
    base = statistics.median(times["caffesolve"]) if "caffesolve" in times else None
    for label in rows:
        ms = statistics.median(times[label])
        lo, hi = min(round_medians[label]), max(round_medians[label])
        ratio = f"{ms / base:13.2f}x" if base else ""
        print(f"{label:30s}{ms:9.1f}{lo:11.1f} ..{hi:7.1f}{ratio}")
    ratio = f"{limit / base:13.2f}x" if base else ""
    print(f"{'compute limit':30s}{limit:9.1f}{'':20s}{ratio}")
    print(
        f"  compute limit: {gemms.gflop:.2f} GFLOP of GEMMs per forward + backward "
        f"at {rate:.0f} GFLOP/s ({SQUARE}^3 SGEMM, {cores} threads; rounds "
        f"{min(rates):.0f} .. {max(rates):.0f}); Caffe-shape GEMMs "
        f"{gemms.gflop / statistics.median(times['Caffe-shape GEMMs']) * 1e3:.0f} "
        f"GFLOP/s"
    )
    if base is not None and not missing:
        best = [label for label in rows if label.startswith("torch")]
        if best:
            fastest = min(best, key=lambda k: statistics.median(times[k]))
            speed = statistics.median(times[fastest]) / base
            quiet = min(round_medians[fastest]) / min(round_medians["caffesolve"])
            print(
                f"  targets: {fastest} / caffesolve = {speed:.2f}x (>= 1.00 "
                f"wanted; {quiet:.2f}x between the two rows' least disturbed "
                f"rounds); caffesolve / compute limit = {base / limit:.2f}x "
                f"(<= 2.00 wanted)"
            )
        t = time_net(net, args.layer_iters, log=False)
        print(
            f"  per layer, {args.layer_iters} iterations (ms, mean): forward / backward"
        )
        for layer, f, b in zip(t.layer_names, t.forward_ms, t.backward_ms):
            print(f"    {layer:>10s} {f:8.2f} {b:8.2f}")
        print(f"    {'total':>10s} {t.forward_pass_ms:8.2f} {t.backward_pass_ms:8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", default="quick,full")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=4)
    parser.add_argument("--layer-iters", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="cores per row")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--examples", type=Path, default=EXAMPLES)
    args = parser.parse_args()
    if not (args.examples / "cifar10__cifar10_quick_train_test.prototxt").exists():
        sys.exit(f"{args.examples}: Caffe's CIFAR-10 example prototxts not found")
    configure_blas_threads()
    if args.threads:
        set_workers(args.threads)
    torch_ok = not args.no_torch and torch_available()
    print("CIFAR-10 nets (Caffe's examples/cifar10), random in-memory batches")
    print(
        f"machine: {os.cpu_count()} cores, {platform.machine()}, Python "
        f"{platform.python_version()}, NumPy {np.__version__}"
        + (", torch " + __import__("torch").__version__ if torch_ok else "")
    )
    for name in args.nets.split(","):
        compare(args, name, torch_ok)


if __name__ == "__main__":
    main()
