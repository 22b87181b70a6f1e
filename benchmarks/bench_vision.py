"""ms per forward and backward of LeNet's vision layers at batch 64.

    python benchmarks/bench_vision.py [--batch 64] [--runs 50] [--dtype float32]
                                      [--threads 1] [--workers 1,2]
                                      [--kernels compiled,numpy]

(with caffesolve installed, or PYTHONPATH=. from the repository root).

Times conv1 (64x1x28x28 -> 20, kernel 5), pool1 (MAX 2/2), conv2 (20 -> 50,
kernel 5 on 12x12) and pool2 as LeNet's lenet_train_test.prototxt builds them,
in the TRAIN phase (pooling keeps its argmax). conv1's backward skips the
bottom diff, as in a net whose first layer reads the data. For each BLAS
thread count (set through OpenBLAS) and caffesolve worker count (run_parallel),
runs of all layers are interleaved so load on a shared machine hits them
alike; prints the median and minimum of --runs per layer and pass, and for
the convolutions the time of Caffe's GEMMs alone at the same shapes (one
forward, weight and data GEMM on a full column matrix: the floor for an
im2col lowering). --kernels repeats everything with the compiled kernels
(caffesolve/kernels.py: MAX pooling 2x2/2 forward and backward, conv2's
row-shift matrix and bottom-diff fold) and with the NumPy paths they
replace.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator

import numpy as np

from caffesolve import backend, kernels
from caffesolve.blob import Blob
from caffesolve.layers import create_layer
from caffesolve.layers.base import Layer
from caffesolve.proto import caffe_pb2
from caffesolve.proto.io import parse_prototxt_text

LAYERS = {
    "conv1": (
        'name: "conv1" type: "Convolution" convolution_param { num_output: 20 '
        'kernel_size: 5 stride: 1 weight_filler { type: "xavier" } '
        'bias_filler { type: "constant" } }',
        (1, 28, 28),
        False,
    ),
    "pool1": (
        'name: "pool1" type: "Pooling" pooling_param { pool: MAX kernel_size: 2 '
        "stride: 2 }",
        (20, 24, 24),
        True,
    ),
    "conv2": (
        'name: "conv2" type: "Convolution" convolution_param { num_output: 50 '
        'kernel_size: 5 stride: 1 weight_filler { type: "xavier" } '
        'bias_filler { type: "constant" } }',
        (20, 12, 12),
        True,
    ),
    "pool2": (
        'name: "pool2" type: "Pooling" pooling_param { pool: MAX kernel_size: 2 '
        "stride: 2 }",
        (50, 8, 8),
        True,
    ),
}


def build(text: str, shape: tuple[int, ...], dtype: type) -> tuple:
    param = parse_prototxt_text(text, caffe_pb2.LayerParameter(), "<bench>")
    rng = np.random.default_rng(1701)
    layer = create_layer(param, caffe_pb2.TRAIN, rng)
    bottom, top = Blob(shape, dtype=dtype), Blob(dtype=dtype)
    bottom.data[...] = np.maximum(rng.normal(size=shape), 0)  # as after a ReLU
    layer.setup([bottom], [top])
    top.diff[...] = rng.normal(size=top.shape)
    return layer, bottom, top


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def gemm_only(layer: Layer, dtype: type, with_data: bool) -> Callable[[], None]:
    """Caffe's forward GEMM, weight GEMM and (with_data) data GEMM at the
    layer's shapes, on a full (K, N*oh*ow) column matrix, outputs
    preallocated."""
    g = layer.geometry
    w = layer.blobs[0].data.reshape(layer.num_output, -1)
    col = np.ones((g.kernel_dim, g.col_cols), dtype)
    y = np.empty((layer.num_output, g.col_cols), dtype)
    dw = np.empty_like(w)

    def run() -> None:
        np.matmul(w, col, out=y)
        np.matmul(y, col.T, out=dw)
        if with_data:
            np.matmul(w.T, y, out=col)

    return run


@contextlib.contextmanager
def blas_threads(n: int) -> Iterator[bool]:
    """Limit BLAS to n threads for the block (caffesolve.backend's OpenBLAS
    call); yields False (and changes nothing) when NumPy has no OpenBLAS."""
    before = backend.blas_threads()
    if before is None or not backend.set_blas_threads(n):
        yield False
        return
    try:
        yield True
    finally:
        backend.set_blas_threads(before)


def measure(built: dict, runs: int, dtype: type) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {}
    gemms = {
        name: gemm_only(layer, dtype, down)
        for name, (layer, _, _, down) in built.items()
        if name.startswith("conv")
    }
    for r in range(runs + 3):  # 3 warm-up runs, dropped
        for name, (layer, bottom, top, down) in built.items():
            fwd = timed(lambda: layer.forward([bottom], [top]))  # noqa: B023
            bwd = timed(lambda: layer.backward([top], [down], [bottom]))  # noqa: B023
            gemm = timed(gemms[name]) if name in gemms else None
            if r < 3:
                continue
            times.setdefault(f"{name} forward", []).append(fwd)
            times.setdefault(f"{name} backward", []).append(bwd)
            if gemm is not None:
                times.setdefault(f"{name} GEMMs only", []).append(gemm)
    return times


def report(
    times: dict[str, list[float]], threads: int, workers: int, paths: str
) -> None:
    print(f"  {threads} BLAS thread(s), {workers} worker(s), {paths}")
    print(f"    {'':<18} {'median':>8} {'min':>8}")
    total = total_min = 0.0
    for key, values in times.items():
        ms, best = statistics.median(values), min(values)
        if "GEMMs" not in key:
            total += ms
            total_min += best
        print(f"    {key:<18} {ms:8.3f} {best:8.3f}")
    print(f"    {'total fwd+bwd':<18} {total:8.3f} {total_min:8.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", default="1", help="BLAS thread counts")
    parser.add_argument(
        "--workers", default="1,2", help="caffesolve worker thread counts"
    )
    parser.add_argument(
        "--kernels",
        default="compiled,numpy",
        help="compiled (numba kernels) and/or numpy (the NumPy paths)",
    )
    args = parser.parse_args()
    dtype = np.dtype(args.dtype).type
    built = {}
    for name, (text, shape, down) in LAYERS.items():
        built[name] = (*build(text, (args.batch, *shape), dtype), down)
    print(
        f"LeNet vision layers, batch {args.batch}, {args.dtype}, {args.runs} runs, "
        "ms (min: the cost without interference on a shared machine)"
    )
    for name in ("conv1", "conv2"):
        print(f"  {name} lowering: {built[name][0].lowerings[0].name}")
    for threads in (int(t) for t in args.threads.split(",")):
        with blas_threads(threads) as limited:
            if not limited:
                print("  (no OpenBLAS: BLAS threads left as they are)")
            for workers in (int(w) for w in args.workers.split(",")):
                backend.set_workers(workers)
                for paths in args.kernels.split(","):
                    with kernels.forced(paths == "numpy"):
                        if paths == "compiled" and not kernels.enabled():
                            print("  (numba is not installed: no compiled kernels)")
                            continue
                        times = measure(built, args.runs, dtype)
                    report(times, threads, workers, f"{paths} paths")
            backend.set_workers(None)


if __name__ == "__main__":
    main()
