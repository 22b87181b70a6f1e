"""LeNet on the CPU, side by side: caffesolve against PyTorch (issue #6).

    python benchmarks/bench_lenet.py [--quick] [--threads 1,2] [--full]
                                     [--data data/fashion-mnist] [--no-torch]

One run prints:

1. ms per training iteration at batch 64 (forward + backward + SGD update:
   the real Solver's `step(1)` on configs/fashion/lenet_train_test.prototxt
   with lenet_solver.prototxt's settings) and ms per test forward at batch
   100 (the solver's TEST net), also with the compiled kernels turned off
   ("NumPy only", caffesolve/kernels.py), next to PyTorch's same LeNet in its
   default and channels_last layouts (benchmarks/torch_lenet.py; skipped if
   torch is not installed), and the net's GEMMs alone: every Convolution and
   InnerProduct GEMM at its shape, one OpenBLAS call each on all the cores
   (the floor under any lowering on this BLAS; no Python, data, pooling or
   update). All of them alternate in rounds, so load on a shared machine
   hits them alike; medians are shown. `--threads 1,2` repeats
   this table for each BLAS/torch thread count.
2. per-layer forward/backward ms (`caffesolve time`'s code, tools.time_net).
3. the batch-size sweep 16 ... 512: ms/iteration, images/s, and ms per image
   relative to batch 64 (1.00 = cost grows linearly with the batch).
4. the peak resident memory of a LeNet training run (a child process: 1000
   iterations with two test passes of 100 batches; --quick: 200 and 10),
   from getrusage(RUSAGE_CHILDREN).ru_maxrss.
5. the full lenet_solver run (10,000 iterations + 21 test passes of 100
   batches): timed in a child process with --full, else extrapolated from
   the medians of 1 (and labelled so).

Data: when the Fashion-MNIST LMDBs exist (`caffesolve data fashion-mnist`
makes them in data/fashion-mnist; --data names another folder) the Data
layers read them, as in training; otherwise the Data layers are replaced by
Input layers holding random in-memory images and labels. The header says
which. PyTorch always trains on in-memory tensors.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from caffesolve import kernels  # noqa: E402
from caffesolve.backend import blas_threads, set_blas_threads, workers  # noqa: E402
from caffesolve.data.lmdb_source import lmdb_exists  # noqa: E402
from caffesolve.log import LOG  # noqa: E402
from caffesolve.net import Net  # noqa: E402
from caffesolve.proto import caffe_pb2  # noqa: E402
from caffesolve.proto.io import read_prototxt  # noqa: E402
from caffesolve.proto.upgrade import read_net_params_from_text_file  # noqa: E402
from caffesolve.solvers import Solver, create_solver  # noqa: E402
from caffesolve.tools import time_net  # noqa: E402

SOLVER = ROOT / "configs" / "fashion" / "lenet_solver.prototxt"
SWEEP = (16, 32, 64, 128, 256, 512)


# -- building the solver ------------------------------------------------------------


def data_to_input(lp: caffe_pb2.LayerParameter, shape: tuple[int, ...]) -> None:
    """Turn a Data layer into an Input layer with the same name, tops and
    include rules: images of `shape` and shape[0] labels."""
    tops, include, name = list(lp.top), list(lp.include), lp.name
    lp.Clear()
    lp.name, lp.type = name, "Input"
    lp.top.extend(tops)
    lp.include.extend(include)
    lp.input_param.shape.add().dim.extend(shape)
    lp.input_param.shape.add().dim.append(shape[0])


def lenet_net_param(
    data_dir: Path | None, batch: int, test_batch: int
) -> tuple[caffe_pb2.NetParameter, str]:
    """The LeNet train/test net with batch sizes set, and where its data comes
    from: the LMDBs in `data_dir` if both exist, else Input layers."""
    solver = read_prototxt(SOLVER, caffe_pb2.SolverParameter())
    param = read_net_params_from_text_file(ROOT / solver.net)
    data_layers = [lp for lp in param.layer if lp.type == "Data"]
    sources = [
        data_dir / Path(lp.data_param.source).name if data_dir else None
        for lp in data_layers
    ]
    use_lmdb = all(s is not None and lmdb_exists(s) for s in sources)
    for lp, src in zip(data_layers, sources):
        test = any(r.phase == caffe_pb2.TEST for r in lp.include)
        n = test_batch if test else batch
        if use_lmdb:
            lp.data_param.source = str(src)
            lp.data_param.batch_size = n
            continue
        data_to_input(lp, (n, 1, 28, 28))
    if use_lmdb:
        where = f"LMDB records from {data_dir} (Data layers, as in training)"
    else:
        where = "random in-memory images (Input layers; no LMDB found)"
    return param, where


def fill_inputs(net: Net, seed: int = 0) -> None:
    """Random images in [0, 1) and labels 0..9 in a net's Input tops."""
    rng = np.random.default_rng(seed)
    for blob, name in zip(
        net.input_blobs, [net.blob_names[i] for i in net.input_blob_indices]
    ):
        if name == "label":
            blob.data[...] = rng.integers(0, 10, blob.shape)
        else:
            blob.data[...] = rng.random(blob.shape, dtype=np.float32)


def make_solver(
    data_dir: Path | None,
    batch: int = 64,
    test_batch: int = 100,
    test_interval: int = 10**9,
    test_iter: int = 100,
    snapshot_prefix: str | None = None,
) -> tuple[Solver, str]:
    """lenet_solver.prototxt's SGD solver over lenet_net_param, quiet."""
    param = read_prototxt(SOLVER, caffe_pb2.SolverParameter())
    net_param, where = lenet_net_param(data_dir, batch, test_batch)
    param.ClearField("net")
    param.net_param.CopyFrom(net_param)
    param.random_seed = 1701
    param.test_initialization = False
    param.test_interval = test_interval
    del param.test_iter[:]
    param.test_iter.append(test_iter)
    if snapshot_prefix is None:
        param.display = 0
        param.snapshot = 0
        param.snapshot_after_train = False
    else:
        param.snapshot_prefix = snapshot_prefix
    LOG.quiet = True
    solver = create_solver(param, str(SOLVER))
    for net in [solver.net, *solver.test_nets]:
        fill_inputs(net)
    return solver, where


# -- timing helpers -------------------------------------------------------------------


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1e3


def median_ms(fn: Callable[[], object], iters: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    return statistics.median(timed(fn) for _ in range(iters))


def numpy_only(fn: Callable[[], object]) -> float:
    """timed(fn) with the compiled kernels turned off."""
    with kernels.forced(True):
        return timed(fn)


def test_forward(solver: Solver) -> Callable[[], float]:
    net = solver.test_nets[0]
    net.share_trained_layers_with(solver.net)
    return net.forward


def gemm_shapes(net: Net, backward: bool) -> list[tuple[int, int, int]]:
    """(M, K, N) of every GEMM Caffe runs for the net's Convolution and
    InnerProduct layers at their shapes: the forward GEMM, and with
    `backward` the weight GEMM and, where the bottom needs a diff, the data
    GEMM (Caffe's conv GEMMs taken over the whole batch at once)."""
    shapes = []
    for layer, need in zip(net.layers, net.bottom_need_backward):
        if layer.type == "Convolution":
            g = layer.geometry
            m, k, n = layer.num_output, g.kernel_dim // layer.group, g.col_cols
            shapes += [(m, k, n)] * layer.group
            if backward:
                shapes += [(m, n, k)] * layer.group
                if need and need[0]:
                    shapes += [(k, m, n)] * layer.group
        elif layer.type == "InnerProduct":
            m, k, n = layer.M, layer.K, layer.num_output
            shapes.append((m, k, n))
            if backward:
                shapes.append((n, m, k))
                if need and need[0]:
                    shapes.append((m, n, k))
    return shapes


class GemmsAlone:
    """LeNet's GEMMs alone, each one OpenBLAS call on all the cores: the floor
    under any im2col/GEMM implementation on this machine's BLAS (no
    lowering, pooling, data, update or Python around them)."""

    def __init__(self, solver: Solver, threads: int) -> None:
        rng = np.random.default_rng(0)
        self.threads = threads

        def operands(shapes: list[tuple[int, int, int]]) -> list[tuple]:
            return [
                (
                    rng.random((m, k), dtype=np.float32),
                    rng.random((k, n), dtype=np.float32),
                    np.empty((m, n), np.float32),
                )
                for m, k, n in shapes
            ]

        train_shapes = gemm_shapes(solver.net, True)
        test_shapes = gemm_shapes(solver.test_nets[0], False)
        self.train_ops, self.test_ops = operands(train_shapes), operands(test_shapes)
        self.gflop = {
            "train": sum(2 * m * k * n for m, k, n in train_shapes) / 1e9,
            "test": sum(2 * m * k * n for m, k, n in test_shapes) / 1e9,
        }

    def _run(self, ops: list[tuple]) -> float:
        before = blas_threads() or 1
        set_blas_threads(self.threads)
        t = time.perf_counter()
        for a, b, c in ops:
            np.matmul(a, b, out=c)
        ms = (time.perf_counter() - t) * 1e3
        set_blas_threads(before)
        return ms

    def train_step(self) -> float:
        return self._run(self.train_ops)

    def test_forward(self) -> float:
        return self._run(self.test_ops)


# -- sections -----------------------------------------------------------------------


def headline(
    args: argparse.Namespace, threads: int | None, torch_ok: bool
) -> dict[str, float]:
    """Section 1 at one thread count: medians over interleaved rounds."""
    if threads is not None:
        set_blas_threads(threads)
    solver, _ = make_solver(args.data)
    step = lambda: solver.step(1)  # noqa: E731
    test = test_forward(solver)
    contenders: dict[str, tuple[Callable[[], float], Callable[[], float]]] = {
        "caffesolve": (lambda: timed(step), lambda: timed(test))
    }
    if kernels.enabled():
        # The same run without the compiled kernels (kernels.py).
        numpy_solver, _ = make_solver(args.data)
        numpy_step = lambda: numpy_solver.step(1)  # noqa: E731
        numpy_test = test_forward(numpy_solver)
        contenders["caffesolve, NumPy only"] = (
            lambda: numpy_only(numpy_step),
            lambda: numpy_only(numpy_test),
        )
    cores = threads or max(blas_threads() or 1, workers())
    gemms = GemmsAlone(solver, cores)
    contenders["GEMMs alone (floor)"] = (gemms.train_step, gemms.test_forward)
    if torch_ok:
        from torch_lenet import TorchLeNet

        # torch gets as many threads as caffesolve uses cores (BLAS or workers)
        for label, cl in (("torch default", False), ("torch channels_last", True)):
            m = TorchLeNet(64, 100, cores, channels_last=cl)
            contenders[label] = (m.train_step, m.test_forward)
    for train_fn, test_fn in contenders.values():  # warm up
        for _ in range(5):
            train_fn()
            test_fn()
    train: dict[str, list[float]] = {k: [] for k in contenders}
    tests: dict[str, list[float]] = {k: [] for k in contenders}
    per_round = max(1, args.iters // args.rounds)
    for _ in range(args.rounds):
        for name, (train_fn, test_fn) in contenders.items():
            train[name] += [train_fn() for _ in range(per_round)]
            tests[name] += [test_fn() for _ in range(max(1, per_round // 2))]
    result = {}
    print(
        f"\nthreads: BLAS {blas_threads()}, caffesolve workers {workers()}"
        + (f", torch {cores}" if torch_ok else "")
        + f"  ({args.rounds} rounds x {per_round} iterations, medians)"
    )
    print(f"{'':22s}{'train ms/iter (64)':>20s}{'test fwd ms (100)':>20s}")
    for name in contenders:
        tr, te = statistics.median(train[name]), statistics.median(tests[name])
        result[f"{name} train"], result[f"{name} test"] = tr, te
        print(f"{name:22s}{tr:20.2f}{te:20.2f}")
    floor_tr = result["GEMMs alone (floor) train"]
    print(
        f"  GEMMs alone: {gemms.gflop['train']:.3f} GFLOP per training iteration "
        f"({gemms.gflop['train'] / floor_tr * 1e3:.0f} GFLOP/s), "
        f"{gemms.gflop['test']:.3f} per test forward; OpenBLAS at {cores} threads"
    )
    if torch_ok:
        cs_tr, cs_te = result["caffesolve train"], result["caffesolve test"]
        for name in [c for c in contenders if c.startswith("torch")]:
            print(
                f"  {name} / caffesolve: train "
                f"{result[f'{name} train'] / cs_tr:.2f}x, "
                f"test {result[f'{name} test'] / cs_te:.2f}x (>1: caffesolve faster)"
            )
    return result


def per_layer(args: argparse.Namespace) -> None:
    """Section 2: `caffesolve time` numbers for the training net."""
    solver, _ = make_solver(args.data)
    t = time_net(solver.net, args.layer_iters, log=False)
    print(f"\nper layer, TRAIN net batch 64, {args.layer_iters} iterations (ms, mean)")
    print(f"{'layer':>10}{'forward':>10}{'backward':>10}")
    for name, f, b in zip(t.layer_names, t.forward_ms, t.backward_ms):
        print(f"{name:>10}{f:10.3f}{b:10.3f}")
    print(f"{'total':>10}{t.forward_pass_ms:10.3f}{t.backward_pass_ms:10.3f}")
    test = test_forward(solver)
    net = solver.test_nets[0]
    test()
    times = {name: [] for name in net.layer_names}
    for _ in range(args.layer_iters):
        for i, name in enumerate(net.layer_names):
            times[name].append(timed(lambda i=i: net.forward_layer(i)))
    print("TEST net batch 100, forward (ms, median): " + ", ".join(
        f"{n} {statistics.median(v):.3f}" for n, v in times.items()
    ))  # fmt: skip


def sweep(args: argparse.Namespace) -> None:
    """Section 3: ms/iteration against batch size."""
    print("\nbatch-size sweep (training iteration, median)")
    print(f"{'batch':>6}{'ms/iter':>10}{'images/s':>11}{'ms/image vs 64':>16}")
    rows = []
    for b in SWEEP:
        solver, _ = make_solver(args.data, batch=b, test_batch=10)
        iters = max(5, args.iters * 64 // b)
        ms = median_ms(lambda s=solver: s.step(1), iters)
        rows.append((b, ms))
        del solver
    per_image_64 = dict(rows)[64] / 64
    for b, ms in rows:
        print(f"{b:6d}{ms:10.2f}{b / ms * 1e3:11.0f}{ms / b / per_image_64:16.2f}")


def vm_hwm_mb() -> float | None:
    """This process's peak RSS from /proc/self/status (VmHWM), Linux only."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def child(args: argparse.Namespace) -> None:
    """The process measured for RSS (--rss-child) or the full run (--full-child)."""
    if args.threads_child:
        set_blas_threads(args.threads_child)
    if args.full_child:
        with tempfile.TemporaryDirectory() as tmp:
            solver, _ = make_solver(
                args.data,
                test_interval=500,
                test_iter=100,
                snapshot_prefix=str(Path(tmp) / "lenet"),
            )
            solver.solve()
    else:
        solver, _ = make_solver(
            args.data,
            test_interval=min(500, args.rss_iters // 2),
            test_iter=args.rss_test_iter,
        )
        solver.param.max_iter = args.rss_iters
        solver.solve()
    print(f"VmHWM {vm_hwm_mb()}")


def run_child(
    args: argparse.Namespace, flag: str, threads: int | None
) -> tuple[float, float | None]:
    """Run this script as a child with `flag`: its wall seconds and VmHWM (MB)."""
    cmd = [sys.executable, __file__, flag]
    if args.data:
        cmd += ["--data", str(args.data)]
    if threads:
        cmd += ["--threads-child", str(threads)]
    cmd += ["--rss-iters", str(args.rss_iters), "--rss-test-iter"]
    cmd += [str(args.rss_test_iter)]
    t = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    wall = time.perf_counter() - t
    hwm = [line.split()[1] for line in out.splitlines() if line.startswith("VmHWM")]
    return wall, (float(hwm[-1]) if hwm and hwm[-1] != "None" else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument(
        "--threads",
        default="",
        help="BLAS (and torch) threads, e.g. 2 or 1,2 (default: as started)",
    )
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "fashion-mnist")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--full", action="store_true", help="time the full run")
    parser.add_argument("--iters", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--layer-iters", type=int, default=0)
    parser.add_argument("--rss-iters", type=int, default=0)
    parser.add_argument("--rss-test-iter", type=int, default=0)
    parser.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--full-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads-child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.data.is_absolute():
        args.data = Path.cwd() / args.data
    args.iters = args.iters or (30 if args.quick else 200)
    args.layer_iters = args.layer_iters or (10 if args.quick else 50)
    args.rss_iters = args.rss_iters or (200 if args.quick else 1000)
    args.rss_test_iter = args.rss_test_iter or (10 if args.quick else 100)
    if args.rss_child or args.full_child:
        child(args)
        return

    thread_counts = [int(t) for t in args.threads.split(",") if t] or [None]
    threads = thread_counts[-1]
    # The RSS child runs first, while this process is still small: Linux
    # counts a child's pre-exec (= this process's) peak in its ru_maxrss.
    rss_wall, hwm = run_child(args, "--rss-child", threads)
    rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    torch_ok = False
    if not args.no_torch:
        from torch_lenet import describe, torch_available

        torch_ok = torch_available()
    _, where = lenet_net_param(args.data, 64, 100)
    print("LeNet (configs/fashion/lenet_train_test.prototxt), SGD as lenet_solver")
    print(f"data: {where}")
    print(
        f"machine: {os.cpu_count()} cores, {platform.machine()}, Python "
        f"{platform.python_version()}, NumPy {np.__version__}, OpenBLAS threads "
        f"at start {blas_threads()}, load average {os.getloadavg()[0]:.2f}"
    )
    print(
        "torch: "
        + (
            "{version}, in-memory tensors".format(**describe())
            if torch_ok
            else "not installed (pip install 'caffesolve[bench]'), columns skipped"
        )
    )
    results = [headline(args, n, torch_ok) for n in thread_counts]
    if threads is not None:
        set_blas_threads(threads)
    per_layer(args)
    sweep(args)
    print(
        f"\npeak RSS of a LeNet training run ({args.rss_iters} iterations, test "
        f"passes of {args.rss_test_iter} batches): {rss_mb:.0f} MB "
        f"(getrusage RUSAGE_CHILDREN ru_maxrss; the child's own VmHWM "
        f"{hwm if hwm is None else round(hwm)} MB; {rss_wall:.1f} s wall)"
    )
    last = results[-1]
    if args.full:
        wall, _ = run_child(args, "--full-child", threads)
        print(f"full lenet_solver run (10,000 iterations + 21 tests): {wall:.1f} s")
    else:
        est = 10_000 * last["caffesolve train"] + 21 * 100 * last["caffesolve test"]
        print(
            "full lenet_solver run (10,000 iterations + 21 tests of 100 batches): "
            f"~{est / 1e3:.0f} s EXTRAPOLATED from the medians above (--full times it)"
        )
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
