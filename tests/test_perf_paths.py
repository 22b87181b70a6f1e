"""Correctness of the fast paths added for issue #6 (no timing here): the BLAS
and worker threads policy, the worker pieces of Convolution and InnerProduct
(bit for bit the results of the inline path), the update rules with and
without their scratch buffers, InnerProduct writing through out= buffers,
ReLU reading its mask off the top, SoftmaxWithLoss with and without
ignore_label, and batch decoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from caffesolve import backend
from caffesolve.blob import Blob
from caffesolve.data.lmdb_source import decode_datums, mnist_datum_bytes
from caffesolve.errors import ConfigError, DataError
from caffesolve.layers import Layer, create_layer
from caffesolve.proto import caffe_pb2
from caffesolve.proto.io import parse_prototxt_text
from caffesolve.solvers.adagrad import adagrad_update
from caffesolve.solvers.adam import adam_update
from caffesolve.solvers.nesterov import nesterov_update
from caffesolve.solvers.rmsprop import rmsprop_update
from caffesolve.solvers.sgd import l1_regularize, l2_regularize, sgd_update

F32 = np.float32


def layer_from(text: str, phase: int = caffe_pb2.TRAIN) -> Layer:
    param = parse_prototxt_text(text, caffe_pb2.LayerParameter(), "<test>")
    return create_layer(param, phase, np.random.default_rng(1701))


# -- BLAS threads policy ----------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, 1),
        # CAFFESOLVE_THREADS counts worker threads; BLAS keeps 1 thread
        ({"CAFFESOLVE_THREADS": "2"}, 1),
        ({"CAFFESOLVE_THREADS": " 3 ", "OPENBLAS_NUM_THREADS": "1"}, None),
        ({"OPENBLAS_NUM_THREADS": "4"}, None),
        ({"OMP_NUM_THREADS": "2"}, None),
        ({"OMP_NUM_THREADS": ""}, 1),
    ],
)
def test_threads_policy(environ: dict[str, str], expected: int | None) -> None:
    assert backend.threads_policy(environ) == expected


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_threads_policy_rejects_bad_values(value: str) -> None:
    with pytest.raises(ConfigError, match=r"CAFFESOLVE_THREADS=.*>= 1"):
        backend.threads_policy({"CAFFESOLVE_THREADS": value})


def test_set_blas_threads_round_trip() -> None:
    before = backend.blas_threads()
    if before is None:
        pytest.skip("NumPy is not linked to OpenBLAS here")
    try:
        assert backend.set_blas_threads(1)
        assert backend.blas_threads() == 1
        # once chosen explicitly, the policy leaves the count alone
        assert backend.configure_blas_threads({"CAFFESOLVE_THREADS": "2"}) is None
        assert backend.blas_threads() == 1
    finally:
        backend.set_blas_threads(before)
    with pytest.raises(ValueError):
        backend.set_blas_threads(0)


# -- update rules: scratch buffers change nothing ---------------------------------


def _arrays(seed: int, n: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((7, 5)).astype(F32) for _ in range(n)]


def test_sgd_update_matches_formula_with_and_without_scratch() -> None:
    diff, history, data = _arrays(0)
    # reference in float64 from the float32 inputs: Caffe's formula
    h_ref = 0.9 * history.astype(np.float64) + 0.01 * diff.astype(np.float64)
    results = []
    for scratch in (None, np.empty_like(diff)):
        d, h = diff.copy(), history.copy()
        sgd_update(d, h, 0.01, 0.9, scratch)
        np.testing.assert_allclose(h, h_ref, rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(d, h)  # diff = history
        results.append((d, h))
    np.testing.assert_array_equal(results[0][0], results[1][0])


@pytest.mark.parametrize("regularize", [l2_regularize, l1_regularize])
def test_regularizers_same_with_scratch(regularize: object) -> None:
    diff, _, data = _arrays(1)
    a, b = diff.copy(), diff.copy()
    regularize(a, data, 5e-4)  # type: ignore[operator]
    regularize(b, data, 5e-4, np.empty_like(diff))  # type: ignore[operator]
    np.testing.assert_array_equal(a, b)
    sign = np.sign(data) if regularize is l1_regularize else data
    np.testing.assert_allclose(a, diff + F32(5e-4) * sign, rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_sgd_passes_give_the_numpy_bits(dtype: type) -> None:
    # Large enough for the compiled kernels (kernels.py); the NumPy path is
    # the reference, bit for bit, and both match Caffe's formula.
    from caffesolve import kernels
    from caffesolve.solvers import sgd

    n = sgd.COMPILED_MIN_SIZE + 7
    rng = np.random.default_rng(4)
    diff, history, data = (rng.standard_normal(n).astype(dtype) for _ in range(3))
    assert kernels.enabled() and sgd._compiled_pass(diff, history)
    out = []
    for numpy_path in (False, True):
        with kernels.forced(numpy_path):
            assert sgd._compiled_pass(diff, data) is not numpy_path
            d, h = diff.copy(), history.copy()
            l2_regularize(d, data, 5e-4, np.empty_like(d))
            sgd_update(d, h, 0.01, 0.9, np.empty_like(d))
            out.append((d, h))
    for got, ref in zip(*out):
        assert got.dtype == dtype
        np.testing.assert_array_equal(got, ref)
    d64 = diff.astype(np.float64) + 5e-4 * data.astype(np.float64)
    h_ref = 0.9 * history.astype(np.float64) + 0.01 * d64
    np.testing.assert_allclose(out[0][1], h_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out[0][0], out[0][1])  # diff = history


def test_adaptive_updates_same_with_scratch() -> None:
    diff, h1, h2 = _arrays(2)
    h1, h2 = np.abs(h1), np.abs(h2)
    cases = [
        (lambda d, h, g, s: nesterov_update(d, h, 0.01, 0.9, s), False),
        (lambda d, h, g, s: adagrad_update(d, h, 0.01, 1e-8, s), False),
        (lambda d, h, g, s: rmsprop_update(d, h, 0.01, 0.98, 1e-8, s), False),
        (lambda d, h, g, s: adam_update(d, h, g, 0.01, 0.9, 0.999, 1e-8, 3, s), True),
    ]
    for update, _ in cases:
        out = []
        for scratch in (None, np.empty_like(diff)):
            d, a, b = diff.copy(), h1.copy(), h2.copy()
            update(d, a, b, scratch)
            out.append((d, a, b))
        for x, y in zip(*out):
            np.testing.assert_array_equal(x, y)


def test_nesterov_formula() -> None:
    diff, history, _ = _arrays(3)
    h64 = history.astype(np.float64)
    h_new = 0.9 * h64 + 0.01 * diff.astype(np.float64)
    expected = 1.9 * h_new - 0.9 * h64
    d, h = diff.copy(), history.copy()
    nesterov_update(d, h, 0.01, 0.9, np.empty_like(d))
    np.testing.assert_allclose(h, h_new, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(d, expected, rtol=1e-5, atol=1e-6)


# -- InnerProduct through out= ----------------------------------------------------


@pytest.mark.parametrize("transpose", [False, True])
def test_inner_product_forward_backward_reference(transpose: bool) -> None:
    layer = layer_from(
        'name: "ip" type: "InnerProduct" inner_product_param { num_output: 4 '
        f"transpose: {str(transpose).lower()} "
        'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }'
    )
    rng = np.random.default_rng(5)
    bottom, top = Blob((3, 2, 5)), Blob()
    bottom.data[...] = rng.standard_normal(bottom.shape)
    layer.setup([bottom], [top])
    layer.forward([bottom], [top])
    x = bottom.data.reshape(3, 10).astype(np.float64)
    w = layer.blobs[0].data.astype(np.float64)
    w_nk = w.T if transpose else w
    b = layer.blobs[1].data.astype(np.float64)
    np.testing.assert_allclose(top.data, x @ w_nk.T + b, rtol=1e-5, atol=1e-5)
    top.diff[...] = rng.standard_normal(top.shape)
    bottom.diff[...] = 123.0  # overwritten, not accumulated
    layer.blobs[0].diff[...] = 1.0  # accumulated
    layer.blobs[1].diff[...] = 2.0
    layer.backward([top], [True], [bottom])
    dy = top.diff.astype(np.float64)
    dw = dy.T @ x
    np.testing.assert_allclose(
        layer.blobs[0].diff, 1.0 + (dw.T if transpose else dw), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(layer.blobs[1].diff, 2.0 + dy.sum(0), rtol=1e-5)
    np.testing.assert_allclose(
        bottom.diff.reshape(3, 10), dy @ w_nk, rtol=1e-5, atol=1e-5
    )


def test_inner_product_top_replaced_by_strided_view() -> None:
    layer = layer_from(
        'name: "ip" type: "InnerProduct" inner_product_param { num_output: 3 '
        'weight_filler { type: "constant" value: 1 } }'
    )
    bottom, top = Blob((2, 4)), Blob()
    bottom.data[...] = np.arange(8).reshape(2, 4)
    layer.setup([bottom], [top])
    backing = np.zeros((3, 2), F32)
    top.data = backing.T  # not C-contiguous: the layer must still fill it
    layer.forward([bottom], [top])
    np.testing.assert_array_equal(backing.T, [[6, 6, 6], [22, 22, 22]])


# -- ReLU mask read off the top ------------------------------------------------------


@pytest.mark.parametrize("in_place", [True, False])
def test_relu_backward_uses_top(in_place: bool) -> None:
    layer = layer_from('name: "relu" type: "ReLU"')
    x = np.array([[-2.0, -0.0, 0.0, 1e-30, 3.0]], F32)
    bottom = Blob(x.shape)
    bottom.data[...] = x
    top = bottom if in_place else Blob()
    layer.setup([bottom], [top])
    layer.forward([bottom], [top])
    np.testing.assert_array_equal(top.data, np.array([[0, 0, 0, 1e-30, 3]], F32))
    top.diff[...] = [[1, 2, 3, 4, 5]]
    layer.backward([top], [True], [bottom])
    np.testing.assert_array_equal(bottom.diff, [[0, 0, 0, 4, 5]])


# -- SoftmaxWithLoss ---------------------------------------------------------------


@pytest.mark.parametrize("ignore", [None, 2])
def test_softmax_with_loss_hand_reference(ignore: int | None) -> None:
    extra = "" if ignore is None else f"loss_param {{ ignore_label: {ignore} }}"
    layer = layer_from(f'name: "loss" type: "SoftmaxWithLoss" {extra}')
    x = np.array([[1.0, 2.0, 3.0], [0.5, 0.5, 0.0], [3.0, 1.0, 1.0]], F32)
    labels = np.array([2, 0, 2], F32)
    data, label, top = Blob(x.shape), Blob((3,)), Blob()
    data.data[...], label.data[...] = x, labels
    layer.setup([data, label], [top])
    top.diff[...] = 1.0
    layer.forward([data, label], [top])
    x64 = x.astype(np.float64)
    prob = np.exp(x64) / np.exp(x64).sum(1, keepdims=True)
    counted = [i for i in range(3) if ignore is None or labels[i] != ignore]
    loss = -sum(np.log(prob[i, int(labels[i])]) for i in counted) / len(counted)
    assert float(top.data) == pytest.approx(loss, rel=1e-6)
    layer.backward([top], [True, False], [data, label])
    expected = prob.copy()
    for i in range(3):
        if i in counted:
            expected[i, int(labels[i])] -= 1
        else:
            expected[i] = 0
    np.testing.assert_allclose(data.diff, expected / len(counted), atol=1e-7)


def test_softmax_with_loss_label_out_of_range_named() -> None:
    layer = layer_from('name: "loss" type: "SoftmaxWithLoss"')
    data, label, top = Blob((2, 3)), Blob((2,)), Blob()
    label.data[...] = [1, 3]
    layer.setup([data, label], [top])
    with pytest.raises(DataError, match=r"layer 'loss'.*label value 3 out of range"):
        layer.forward([data, label], [top])


# -- batch decoding -----------------------------------------------------------------


def test_decode_datums_batch_and_shape_mismatch() -> None:
    imgs = np.arange(2 * 6, dtype=np.uint8).reshape(2, 2, 3)
    values = [mnist_datum_bytes(im, i + 4) for i, im in enumerate(imgs)]
    data, labels = decode_datums(values, "db")
    np.testing.assert_array_equal(data, imgs[:, None])
    np.testing.assert_array_equal(labels, [4, 5])
    assert labels.dtype == F32
    odd = mnist_datum_bytes(np.zeros((3, 2), np.uint8), 0)
    with pytest.raises(DataError, match=r"db: Datum 2 of the batch is 1x3x2"):
        decode_datums([*values, odd], "db")


def _bench_lenet():  # type: ignore[no-untyped-def]
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import bench_lenet
    finally:
        sys.path.pop(0)
    return bench_lenet


def test_bench_lenet_gemm_floor_shapes(tmp_path: Path) -> None:
    """The GEMMs-alone row times LeNet's GEMMs at Caffe's shapes, worked out
    by hand from lenet_train_test.prototxt at batch 64: conv1 20 x 25 over
    64*24*24 columns, conv2 50 x (20*5*5) over 64*8*8, ip1 800 -> 500, ip2
    500 -> 10; backward adds each weight GEMM and every data GEMM except
    conv1's (its bottom is the data). 0.844 GFLOP: the issue's 'about 0.84'."""
    bench_lenet = _bench_lenet()
    solver, _ = bench_lenet.make_solver(tmp_path, 64, 100)
    c1, c2 = (20, 25, 64 * 24 * 24), (50, 500, 64 * 8 * 8)
    ip1, ip2 = (64, 800, 500), (64, 500, 10)
    forward = [c1, c2, ip1, ip2]
    assert bench_lenet.gemm_shapes(solver.net, False) == forward
    assert bench_lenet.gemm_shapes(solver.net, True) == [
        c1,
        (20, 64 * 24 * 24, 25),
        c2,
        (50, 64 * 8 * 8, 500),
        (500, 50, 64 * 8 * 8),
        ip1,
        (500, 64, 800),
        (64, 500, 800),
        ip2,
        (10, 64, 500),
        (64, 10, 500),
    ]
    test = bench_lenet.gemm_shapes(solver.test_nets[0], False)
    assert test == [
        (20, 25, 100 * 576),
        (50, 500, 100 * 64),
        (100, 800, 500),
        (100, 500, 10),
    ]
    gemms = bench_lenet.GemmsAlone(solver, 1)
    assert round(gemms.gflop["train"], 3) == 0.844
    gemms.train_step()
    a, b, c = gemms.train_ops[2]
    np.testing.assert_allclose(c, a.astype(np.float64) @ b, rtol=1e-4)


def test_bench_lenet_imports(tmp_path: Path) -> None:
    """The benchmark's net builder falls back to Input layers without LMDBs."""
    bench_lenet = _bench_lenet()
    param, where = bench_lenet.lenet_net_param(tmp_path, 16, 10)
    assert "Input" in where or "random" in where
    inputs = [lp for lp in param.layer if lp.type == "Input"]
    assert [list(lp.input_param.shape[0].dim) for lp in inputs] == [
        [16, 1, 28, 28],
        [10, 1, 28, 28],
    ]


# -- worker threads: the split paths give the same bits as the inline ones --------


@pytest.mark.parametrize(
    ("environ", "cpus", "expected"),
    [
        ({}, 2, 2),
        ({}, 8, 2),
        ({}, 1, 1),
        ({}, None, 1),
        ({"CAFFESOLVE_THREADS": "3"}, 2, 3),
    ],
)
def test_workers_policy(
    environ: dict[str, str], cpus: int | None, expected: int
) -> None:
    assert backend.workers_policy(environ, cpus) == expected


def test_workers_policy_rejects_bad_values() -> None:
    with pytest.raises(ConfigError, match=r"CAFFESOLVE_THREADS='0'"):
        backend.workers_policy({"CAFFESOLVE_THREADS": "0"}, 2)


@pytest.fixture
def two_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workers, and every piece of work big enough to be split."""
    monkeypatch.setattr(backend, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(backend, "STARVED_INLINE_CALLS", 0)
    monkeypatch.setattr(backend, "_inline_calls", 0)
    backend.set_workers(2)
    yield
    backend.set_workers(None)


def test_split_range() -> None:
    assert backend.split_range(7, 2) == [(0, 3), (3, 7)]
    assert backend.split_range(1, 2) == [(0, 1)]
    assert backend.split_range(5, 1) == [(0, 5)]


def test_run_parallel_uses_a_worker_and_keeps_order(two_workers: None) -> None:
    import threading

    here = threading.get_ident()
    started = threading.Event()

    def first() -> int:
        assert started.wait(10)  # the worker runs the second piece meanwhile
        return threading.get_ident()

    def second() -> int:
        started.set()
        return threading.get_ident()

    ids = backend.run_parallel([first, second])
    assert ids[0] == here and ids[1] != here
    assert backend.run_parallel([lambda: 1, lambda: 2, lambda: 3]) == [1, 2, 3]

    def boom() -> int:
        raise ValueError("piece failed")

    with pytest.raises(ValueError, match="piece failed"):
        backend.run_parallel([lambda: 1, boom])


def test_run_parallel_inline_with_one_worker() -> None:
    import threading

    backend.set_workers(1)
    try:
        here = threading.get_ident()
        assert backend.run_parallel([threading.get_ident] * 2) == [here, here]
        assert backend.parallel_parts(1 << 30, 2) == 1
    finally:
        backend.set_workers(None)
    with pytest.raises(ValueError):
        backend.set_workers(0)


def _run_layer(
    text: str, shapes: list[tuple[int, ...]], workers: int, propagate: bool
) -> list[np.ndarray]:
    """Forward and backward of a fresh layer (same seeds every time) with
    `workers` threads: top data, bottom diffs and param diffs, twice (the
    second pass reuses the layer's buffers)."""
    backend.set_workers(workers)
    try:
        layer = layer_from(text)
        rng = np.random.default_rng(5)
        bottom = [Blob(s) for s in shapes]
        for b in bottom:
            b.data[...] = rng.standard_normal(b.shape).astype(F32)
        top = [Blob() for _ in range(len(bottom))]
        layer.setup(bottom, top)
        out = []
        for _ in range(2):
            layer.forward(bottom, top)
            for t in top:
                t.diff[...] = rng.standard_normal(t.shape).astype(F32)
            layer.backward(top, [propagate] * len(bottom), bottom)
            out += [t.data.copy() for t in top]
            if propagate:
                out += [b.diff.copy() for b in bottom]
            out += [p.diff.copy() for p in layer.blobs]
        return out
    finally:
        backend.set_workers(None)


CONV = """name: "c" type: "Convolution" convolution_param {{ num_output: {m} {extra}
  weight_filler {{ type: "gaussian" std: 0.1 }}
  bias_filler {{ type: "gaussian" std: 0.1 }} }}"""


@pytest.mark.parametrize(
    ("m", "extra", "shape"),
    [
        (20, "kernel_size: 5", (9, 1, 28, 28)),  # LeNet conv1: per-image columns
        (50, "kernel_size: 5", (9, 20, 12, 12)),  # LeNet conv2: row shift
        (6, "kernel_size: 3 pad: 1", (5, 3, 16, 16)),  # padded per-image
        (8, "kernel_size: 3 pad: 1 group: 2", (7, 4, 6, 6)),  # batch inner
        (5, "kernel_size: 3 stride: 2", (7, 3, 7, 7)),  # batch inner, stride 2
    ],
)
@pytest.mark.parametrize("propagate", [True, False])
def test_convolution_two_workers_bitwise_equal(
    two_workers: None, m: int, extra: str, shape: tuple[int, ...], propagate: bool
) -> None:
    text = CONV.format(m=m, extra=extra)
    inline = _run_layer(text, [shape], 1, propagate)
    split = _run_layer(text, [shape], 2, propagate)
    assert len(inline) == len(split)
    for a, b in zip(inline, split):
        assert a.dtype == b.dtype and np.array_equal(a, b)


@pytest.mark.parametrize(
    ("m", "extra", "shape"),
    [
        (6, "kernel_size: 3 pad: 1", (7, 3, 16, 16)),  # per-image columns
        (8, "kernel_size: 5", (7, 4, 12, 12)),  # row shift
    ],
)
def test_convolution_chunks_two_workers_bitwise_equal(
    two_workers: None,
    m: int,
    extra: str,
    shape: tuple[int, ...],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Chunks of one image: the segments' weight sums add up in the same
    # order with one worker and with two.
    from caffesolve.ops import conv

    monkeypatch.setattr(conv, "CHUNK_BYTES", 1)
    monkeypatch.setattr(conv, "KEEP_COLUMNS_BYTES", 0)
    text = CONV.format(m=m, extra=extra)
    inline = _run_layer(text, [shape], 1, True)
    split = _run_layer(text, [shape], 2, True)
    for a, b in zip(inline, split):
        assert a.dtype == b.dtype and np.array_equal(a, b)


@pytest.mark.parametrize("transpose", ["false", "true"])
@pytest.mark.parametrize("shape", [(64, 50, 4, 4), (7, 13)])
def test_inner_product_two_workers_bitwise_equal(
    two_workers: None, transpose: str, shape: tuple[int, ...]
) -> None:
    text = f"""name: "ip" type: "InnerProduct" inner_product_param {{
        num_output: 500 transpose: {transpose}
        weight_filler {{ type: "xavier" }}
        bias_filler {{ type: "gaussian" std: 0.1 }} }}"""
    inline = _run_layer(text, [shape], 1, True)
    split = _run_layer(text, [shape], 2, True)
    for a, b in zip(inline, split):
        assert np.array_equal(a, b)


def test_cli_applies_the_thread_policy(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from caffesolve.cli import cli

    solver = tmp_path / "solver.prototxt"
    solver.write_text('base_lr: 0.01 lr_policy: "fixed" max_iter: 10\n')
    result = CliRunner().invoke(
        cli, ["lr-schedule", str(solver)], env={"CAFFESOLVE_THREADS": "0"}
    )
    assert result.exit_code == 1
    assert "CAFFESOLVE_THREADS='0'" in result.output


def test_run_parallel_runs_unstarted_pieces_itself(two_workers: None) -> None:
    """With the one worker held up, the calling thread takes the queued
    piece (else the worker would wait for it for ever)."""
    import threading

    here = threading.get_ident()
    released = threading.Event()

    def held_worker() -> bool:
        return released.wait(10)

    def queued() -> int:
        released.set()
        return threading.get_ident()

    result = backend.run_parallel([lambda: 0, held_worker, queued])
    assert result == [0, True, here]


def test_run_parallel_goes_inline_for_a_while_when_starved(
    two_workers: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker much slower than the calling thread (STARVED_IN_A_ROW times)
    means a busy machine: the next STARVED_INLINE_CALLS calls run inline,
    then the workers again."""
    import threading
    import time

    monkeypatch.setattr(backend, "STARVED_INLINE_CALLS", 2)
    monkeypatch.setattr(backend, "STARVED_IN_A_ROW", 1)
    here = threading.get_ident()
    started = threading.Event()

    def slow() -> int:
        started.set()
        time.sleep(0.05)
        return threading.get_ident()

    def fast() -> int:
        assert started.wait(10)
        return 0

    assert backend.run_parallel([fast, slow])[1] != here
    for _ in range(2):
        assert backend.run_parallel([fast, slow])[1] == here
    started.clear()
    assert backend.run_parallel([fast, slow])[1] != here


def test_inner_product_forward_in_halves_matches_reference() -> None:
    # 64 x 800 x 500 multiply-adds: over SPLIT_MACS, so the GEMM runs as two
    # halves of the batch; the result is still x W^T + b up to float32 sums.
    from caffesolve.layers.inner_product import SPLIT_MACS, SPLIT_ROWS

    assert 64 >= SPLIT_ROWS and 64 * 800 * 500 >= SPLIT_MACS
    layer = layer_from(
        'name: "ip" type: "InnerProduct" inner_product_param { num_output: 500 '
        'weight_filler { type: "xavier" } bias_filler { type: "gaussian" } }'
    )
    bottom, top = Blob((64, 800)), Blob()
    bottom.data[...] = np.random.default_rng(3).standard_normal((64, 800))
    layer.setup([bottom], [top])
    layer.forward([bottom], [top])
    w, b = (p.data.astype(np.float64) for p in layer.blobs)
    expect = bottom.data.astype(np.float64) @ w.T + b
    np.testing.assert_allclose(top.data, expect, rtol=1e-4, atol=1e-4)
