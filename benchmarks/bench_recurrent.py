"""ms per forward and forward + backward of an LSTM layer, against its parts
and PyTorch.

    python benchmarks/bench_recurrent.py [--runs 30] [--sizes 20x16x1x32,...]
                                         [--no-torch]

(with caffesolve installed, or PYTHONPATH=. from the repository root; PyTorch
from the `bench` extra). Each size is T x N x K x H: T steps of N streams,
K inputs, H cells. For each size, in interleaved rounds so that load on a
shared machine hits all alike, prints the median of --runs of:

- caffesolve's LSTM layer, compiled kernels and NumPy paths
  (CAFFESOLVE_KERNELS=numpy's path), forward and forward + backward;
- its GEMMs alone at the same shapes, one after another on one OpenBLAS
  thread (x_transform over T*N rows, per step the recurrent GEMM forward,
  and the recurrent data and weight GEMMs backward); the layer runs large
  ones as two halves on two workers, as caffesolve's InnerProduct does;
- the LSTMUnit step alone (T calls forward and backward), compiled kernel
  and NumPy twin;
- the weight diff of W_hc as Caffe's unrolled net sums it (one GEMM per
  step, added in turn) and as one GEMM over all T*N rows (a different order
  of float sums, not used: see caffesolve/layers/recurrent.py);
- PyTorch's nn.LSTM (float32, CPU) on the same input, forward and forward +
  backward (its own fused kernels; no cont input), on --torch-threads.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from caffesolve import backend, kernels
from caffesolve.blob import Blob
from caffesolve.layers import create_layer
from caffesolve.log import LOG
from caffesolve.ops.lstm_unit import lstm_unit_backward, lstm_unit_forward
from caffesolve.proto import caffe_pb2
from caffesolve.proto.io import parse_prototxt_text

F32 = np.float32


def lstm_layer(t: int, n: int, k: int, h: int) -> tuple[Callable, Callable]:
    """Forward and forward + backward closures of an LSTM layer."""
    text = (
        f'name: "lstm" type: "LSTM" recurrent_param {{ num_output: {h} '
        'weight_filler { type: "uniform" min: -0.08 max: 0.08 } }'
    )
    layer = create_layer(
        parse_prototxt_text(text, caffe_pb2.LayerParameter()),
        rng=np.random.default_rng(0),
    )
    rng = np.random.default_rng(1)
    x, cont, top = Blob((t, n, k)), Blob((t, n)), Blob()
    x.data[...] = rng.uniform(-1, 1, x.shape)
    cont.data[1:] = 1
    bottom = [x, cont]
    layer.setup(bottom, [top])
    top.diff[...] = rng.uniform(-1, 1, (t, n, h))

    def forward() -> None:
        layer.forward(bottom, [top])

    def forward_backward() -> None:
        layer.forward(bottom, [top])
        layer.backward([top], [True, False], bottom)

    return forward, forward_backward


def gemms_alone(t: int, n: int, k: int, h: int) -> Callable:
    """The layer's GEMMs at Caffe's shapes, forward and backward."""
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, (t * n, k)).astype(F32)
    w_xc, w_hc = (rng.uniform(-1, 1, s).astype(F32) for s in ((4 * h, k), (4 * h, h)))
    xw, dxw = np.zeros((t * n, 4 * h), F32), np.ones((t * n, 4 * h), F32)
    hs, dh = np.ones((t, n, h), F32), np.zeros((n, h), F32)
    gate, w_diff, scratch = (
        np.zeros((n, 4 * h), F32),
        np.zeros_like(w_hc),
        np.zeros_like(w_hc),
    )
    x_diff, w_xc_diff = np.zeros_like(x), np.zeros_like(w_xc)

    def run() -> None:
        np.matmul(x, w_xc.T, out=xw)
        for s in range(t):
            np.matmul(hs[s], w_hc.T, out=gate)
        for s in range(t - 1, -1, -1):
            np.matmul(dxw[s * n : (s + 1) * n].T, hs[s], out=scratch)
            w_diff[...] += scratch
            np.matmul(dxw[s * n : (s + 1) * n], w_hc, out=dh)
        np.matmul(dxw.T, x, out=w_xc_diff)
        np.matmul(dxw, w_xc, out=x_diff)

    return run


def unit_alone(t: int, n: int, h: int) -> Callable:
    rng = np.random.default_rng(3)
    c_prev, c_diff, h_diff = rng.uniform(-1, 1, (3, n, h)).astype(F32)
    x = rng.uniform(-2, 2, (n, 4 * h)).astype(F32)
    cont = np.ones(n, F32)
    acts, x_diff = np.zeros((n, 4 * h), F32), np.zeros((n, 4 * h), F32)
    c, tanh_c, hh, c_prev_diff = np.zeros((4, n, h), F32)

    def run() -> None:
        for _ in range(t):
            lstm_unit_forward(c_prev, x, cont, acts, c, tanh_c, hh)
        for _ in range(t):
            lstm_unit_backward(
                c_prev, acts, tanh_c, c_diff, h_diff, c_prev_diff, x_diff
            )

    return run


def weight_diff_orders(t: int, n: int, h: int) -> tuple[Callable, Callable]:
    rng = np.random.default_rng(4)
    dg = rng.uniform(-1, 1, (t, n, 4 * h)).astype(F32)
    hc = rng.uniform(-1, 1, (t, n, h)).astype(F32)
    diff, scratch = np.zeros((4 * h, h), F32), np.zeros((4 * h, h), F32)

    def per_step() -> None:
        for s in range(t - 1, -1, -1):
            np.matmul(dg[s].T, hc[s], out=scratch)
            diff[...] += scratch

    def one_gemm() -> None:
        np.matmul(dg.reshape(t * n, 4 * h).T, hc.reshape(t * n, h), out=scratch)
        diff[...] += scratch

    return per_step, one_gemm


def torch_lstm(
    t: int, n: int, k: int, h: int, threads: int
) -> tuple[Callable, Callable] | None:
    try:
        import torch
    except ImportError:
        return None
    if threads:
        torch.set_num_threads(threads)
    lstm = torch.nn.LSTM(k, h)
    x = torch.rand(t, n, k) * 2 - 1
    dy = torch.rand(t, n, h) * 2 - 1

    def forward() -> None:
        with torch.no_grad():
            lstm(x)

    def forward_backward() -> None:
        lstm.zero_grad()
        xr = x.clone().requires_grad_(True)
        y, _ = lstm(xr)
        y.backward(dy)

    return forward, forward_backward


def median_ms(fn: Callable, samples: list[float]) -> None:
    start = time.perf_counter()
    fn()
    samples.append(1000 * (time.perf_counter() - start))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--sizes", default="20x16x1x32,20x32x128x256,20x64x512x512")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument(
        "--torch-threads", type=int, default=0, help="PyTorch's threads (0: its own)"
    )
    args = parser.parse_args()
    LOG.quiet = True
    backend.configure_blas_threads()  # as a solver does: OpenBLAS on 1 thread
    for size in args.sizes.split(","):
        t, n, k, h = (int(v) for v in size.split("x"))
        cases: dict[str, Callable] = {}
        for numpy_paths, label in ((False, "compiled"), (True, "numpy")):
            with kernels.forced(numpy_paths):
                fwd, both = lstm_layer(t, n, k, h)
            cases[f"caffesolve LSTM, {label}: forward"] = (fwd, numpy_paths)
            cases[f"caffesolve LSTM, {label}: forward + backward"] = (both, numpy_paths)
        cases["its GEMMs alone: forward + backward"] = (gemms_alone(t, n, k, h), False)
        for numpy_paths, label in ((False, "compiled"), (True, "numpy")):
            name = f"LSTMUnit alone, {label}: T forward + T backward"
            cases[name] = (unit_alone(t, n, h), numpy_paths)
        per_step, one_gemm = weight_diff_orders(t, n, h)
        cases["W_hc diff, T GEMMs in Caffe's order"] = (per_step, False)
        cases["W_hc diff, one GEMM over T*N rows"] = (one_gemm, False)
        torch_fns = (
            None if args.no_torch else torch_lstm(t, n, k, h, args.torch_threads)
        )
        if torch_fns:
            cases["PyTorch nn.LSTM: forward"] = (torch_fns[0], False)
            cases["PyTorch nn.LSTM: forward + backward"] = (torch_fns[1], False)
        samples: dict[str, list[float]] = {name: [] for name in cases}
        for fn, numpy_paths in cases.values():  # warm up (numba, caches)
            with kernels.forced(numpy_paths):
                fn()
        for _ in range(args.runs):
            for name, (fn, numpy_paths) in cases.items():
                with kernels.forced(numpy_paths):
                    median_ms(fn, samples[name])
        print(f"\nT x N x K x H = {size} (median of {args.runs} runs, ms)")
        for name, values in samples.items():
            print(f"  {name:55s} {statistics.median(values):9.3f}")


if __name__ == "__main__":
    main()
