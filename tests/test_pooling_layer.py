"""Pooling layer tests after Caffe's test_pooling_layer.cpp: output sizes
(ceil rounding, the last window that would start in the padding), hand-worked
MAX/AVE values and masks, ties, global pooling, a direct loop reference for
forward and backward, numerical gradients, and Caffe's checks."""

from __future__ import annotations

import numpy as np
import pytest
from gradient_check import check_gradient

from caffesolve import kernels
from caffesolve.blob import Blob
from caffesolve.errors import ConfigError, ShapeError
from caffesolve.layers import create_layer
from caffesolve.layers.pooling import PoolingLayer
from caffesolve.ops import pooling as lowering
from caffesolve.proto import caffe_pb2
from caffesolve.proto.io import parse_prototxt_text


def pool_layer(
    params: str, name: str = "pool", phase: int = caffe_pb2.TRAIN
) -> PoolingLayer:
    text = f'name: "{name}" type: "Pooling" pooling_param {{ {params} }}'
    param = parse_prototxt_text(text, caffe_pb2.LayerParameter(), "<test>")
    layer = create_layer(param, phase, np.random.default_rng(1701))
    assert isinstance(layer, PoolingLayer)
    return layer


def blob(values: np.ndarray) -> Blob:
    b = Blob(values.shape, dtype=np.float64)
    b.data[...] = values
    return b


def run(layer: PoolingLayer, x: np.ndarray, tops: int = 1) -> list[Blob]:
    bottom = blob(x)
    top = [Blob(dtype=np.float64) for _ in range(tops)]
    layer.setup([bottom], top)
    layer.forward([bottom], top)
    return [bottom, *top]


def distinct(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Values 0.1 apart (no ties, no kinks within Caffe's stepsize)."""
    rng = np.random.default_rng(seed)
    return (rng.permutation(int(np.prod(shape))) * 0.1 - 1.0).reshape(shape)


def reference_pool(
    x: np.ndarray,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    pad: tuple[int, int],
    method: str,
    dy: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Direct loops over Caffe's rules (written from pooling_layer.cpp's
    description): returns top, mask (for MAX) and, given dy, bottom diff."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    oh = int(np.ceil((h + 2 * ph - kh) / sh)) + 1
    ow = int(np.ceil((w + 2 * pw - kw) / sw)) + 1
    if ph or pw:
        oh -= (oh - 1) * sh >= h + ph
        ow -= (ow - 1) * sw >= w + pw
    top = np.zeros((n, c, oh, ow))
    mask = np.full((n, c, oh, ow), -1.0)
    dx = None if dy is None else np.zeros_like(x)
    for a in range(n):
        for b in range(c):
            for i in range(oh):
                for j in range(ow):
                    h0, w0 = i * sh - ph, j * sw - pw
                    if method == "MAX":
                        best, where = -np.inf, -1
                        for y in range(max(h0, 0), min(h0 + kh, h)):
                            for z in range(max(w0, 0), min(w0 + kw, w)):
                                if x[a, b, y, z] > best:
                                    best, where = x[a, b, y, z], y * w + z
                        top[a, b, i, j], mask[a, b, i, j] = best, where
                        if dx is not None:
                            dx[a, b, where // w, where % w] += dy[a, b, i, j]
                    else:
                        h1, w1 = min(h0 + kh, h + ph), min(w0 + kw, w + pw)
                        size = (h1 - h0) * (w1 - w0)
                        ys = range(max(h0, 0), min(h1, h))
                        zs = range(max(w0, 0), min(w1, w))
                        top[a, b, i, j] = sum(x[a, b, y, z] for y in ys for z in zs)
                        top[a, b, i, j] /= size
                        if dx is not None:
                            for y in ys:
                                for z in zs:
                                    dx[a, b, y, z] += dy[a, b, i, j] / size
    return top, mask, dx


# -- output sizes --------------------------------------------------------------------


def test_setup() -> None:
    # Caffe TestSetup: 2x3x6x5, kernel 3, stride 2 -> 3x2.
    _, top = run(pool_layer("kernel_size: 3 stride: 2"), np.zeros((2, 3, 6, 5)))
    assert top.shape == (2, 3, 3, 2)
    # TestSetupPadded: pad 1 -> 4x3.
    _, top = run(pool_layer("kernel_size: 3 stride: 2 pad: 1"), np.zeros((2, 3, 6, 5)))
    assert top.shape == (2, 3, 4, 3)
    # TestSetupGlobalPooling.
    _, top = run(pool_layer("global_pooling: true"), np.zeros((2, 3, 6, 5)))
    assert top.shape == (2, 3, 1, 1)


def test_ceil_rounding_keeps_partial_last_window() -> None:
    # 5 wide, kernel 2, stride 2: ceil(3/2) + 1 = 3 windows; the last one holds
    # only column 4.
    x = np.array([[[[1.0, 7.0, 3.0, 2.0, -4.0]]]])
    _, top = run(pool_layer("kernel_h: 1 kernel_w: 2 stride: 2"), x)
    np.testing.assert_array_equal(top.data[0, 0, 0], [7.0, 3.0, -4.0])
    # AVE: the last window is clipped to width + pad = 5, so divides by 1.
    _, top = run(pool_layer("pool: AVE kernel_h: 1 kernel_w: 2 stride: 2"), x)
    np.testing.assert_allclose(top.data[0, 0, 0], [4.0, 2.5, -4.0])
    # round_mode FLOOR drops it.
    _, top = run(pool_layer("kernel_h: 1 kernel_w: 2 stride: 2 round_mode: FLOOR"), x)
    np.testing.assert_array_equal(top.data[0, 0, 0], [7.0, 3.0])


def test_last_window_starting_in_padding_is_dropped() -> None:
    # 5 wide, kernel 2, stride 2, pad 1: ceil((5+2-2)/2)+1 = 4, but window 4
    # would start at 3*2-1 = 5 = width, inside the padding: Caffe keeps 3.
    x = np.array([[[[1.0, 7.0, 3.0, 2.0, -4.0]]]])
    _, top = run(
        pool_layer("kernel_h: 1 kernel_w: 2 stride_h: 1 stride_w: 2 pad_h: 0 pad_w: 1"),
        x,
    )
    assert top.shape == (1, 1, 1, 3)
    # windows: [pad, 1], [7, 3], [2, -4]
    np.testing.assert_array_equal(top.data[0, 0, 0], [1.0, 7.0, 2.0])


def test_forward_max_hand_values_and_mask() -> None:
    # Caffe TestForwardMax: 3x5 input, kernel 2, stride 1.
    plane = np.array([[1, 2, 5, 2, 3], [9, 4, 1, 4, 8], [1, 2, 5, 2, 3]], float)
    x = np.stack([np.stack([plane, plane + 10])] * 2)  # 2x2x3x5
    bottom, top, mask = run(pool_layer("kernel_size: 2 stride: 1"), x, tops=2)
    expect = np.array([[9, 5, 5, 8], [9, 5, 5, 8]], float)
    expect_mask = np.array([[5, 2, 2, 9], [5, 12, 12, 9]], float)
    for n in range(2):
        np.testing.assert_array_equal(top.data[n, 0], expect)
        np.testing.assert_array_equal(top.data[n, 1], expect + 10)
        np.testing.assert_array_equal(mask.data[n, 0], expect_mask)
        np.testing.assert_array_equal(mask.data[n, 1], expect_mask)


def test_max_ties_go_to_first_in_window_order() -> None:
    # Windows of equal values (as after a ReLU): Caffe's strict > keeps the
    # first; backward routes the whole diff there.
    x = np.array([[[[0.0, 0.0, 1.0, 3.0], [0.0, 0.0, 3.0, 3.0]]]])
    bottom, top, mask = run(pool_layer("kernel_size: 2 stride: 2"), x, tops=2)
    np.testing.assert_array_equal(top.data[0, 0], [[0.0, 3.0]])
    np.testing.assert_array_equal(mask.data[0, 0], [[0.0, 3.0]])
    layer = pool_layer("kernel_size: 2 stride: 2")
    bottom, top = run(layer, x)
    top.diff[...] = [[[[5.0, 7.0]]]]
    layer.backward([top], [True], [bottom])
    np.testing.assert_array_equal(
        bottom.diff[0, 0], [[5.0, 0.0, 0.0, 7.0], [0.0, 0.0, 0.0, 0.0]]
    )


@pytest.mark.parametrize("phase", [caffe_pb2.TRAIN, caffe_pb2.TEST])
def test_max_skips_nan_like_caffe(phase: int) -> None:
    # Caffe compares `bottom > top` from -FLT_MAX: NaN never wins, and a
    # window of only NaN stays at -FLT_MAX.
    nan = np.nan
    x = np.array([[[[nan, 1.0, nan, nan], [2.0, nan, nan, nan]]]])
    layer = pool_layer("kernel_size: 2 stride: 2", phase=phase)
    bottom, top = run(layer, x)
    flt_max = float(np.finfo(np.float32).max)
    np.testing.assert_array_equal(top.data[0, 0], [[2.0, -flt_max]])
    if phase == caffe_pb2.TRAIN:
        top.diff[...] = [[[[5.0, 0.0]]]]
        layer.backward([top], [True], [bottom])
        assert bottom.diff[0, 0, 1, 0] == 5.0
        assert bottom.diff.sum() == 5.0


def test_forward_ave_with_pad_counts_padding() -> None:
    # Caffe TestForwardAve: 3x3 of 2s, kernel 3, stride 1, pad 1.
    _, top = run(
        pool_layer("pool: AVE kernel_size: 3 stride: 1 pad: 1"),
        np.full((1, 1, 3, 3), 2.0),
    )
    corner, edge = 8.0 / 9.0, 12.0 / 9.0
    expect = [[corner, edge, corner], [edge, 2.0, edge], [corner, edge, corner]]
    np.testing.assert_allclose(top.data[0, 0], expect, rtol=1e-15)


def test_ave_divisor_clipped_to_height_plus_pad() -> None:
    # 4x4, kernel 3, stride 2, pad 1 -> 3x3 outputs. The last window starts at
    # 3 and would end at 6, clipped to 4 + 1 = 5: pool_size 2 per axis, so the
    # last corner averages x[3, 3] over 2*2 = 4, not 9 and not 1.
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    _, top = run(pool_layer("pool: AVE kernel_size: 3 stride: 2 pad: 1"), x)
    assert top.shape == (1, 1, 3, 3)
    assert top.data[0, 0, 2, 2] == pytest.approx(15.0 / 4)
    assert top.data[0, 0, 0, 0] == pytest.approx((0 + 1 + 4 + 5) / 9)
    assert top.data[0, 0, 0, 2] == pytest.approx((3 + 7) / 6)  # cols 3..4 of -1..4


def test_global_pooling() -> None:
    x = distinct((2, 3, 4, 5), seed=3)
    _, top = run(pool_layer("global_pooling: true"), x)
    np.testing.assert_array_equal(top.data[..., 0, 0], x.max(axis=(2, 3)))
    _, top = run(pool_layer("pool: AVE global_pooling: true"), x)
    np.testing.assert_allclose(top.data[..., 0, 0], x.mean(axis=(2, 3)), rtol=1e-13)


# -- against the direct reference ------------------------------------------------------

REFERENCE_CASES = [
    # (kernel, stride, pad, shape)
    ((2, 2), (2, 2), (0, 0), (2, 3, 6, 8)),  # LeNet's tiling case
    ((2, 2), (2, 2), (0, 0), (2, 2, 5, 7)),  # ceil: partial last windows
    ((3, 3), (2, 2), (0, 0), (2, 2, 7, 6)),  # overlapping
    ((3, 3), (2, 2), (1, 1), (1, 2, 6, 5)),  # pad, last window dropped in w
    ((3, 2), (1, 2), (1, 0), (2, 1, 4, 5)),
    ((2, 3), (3, 1), (0, 2), (1, 2, 7, 4)),  # stride > kernel: gaps
    ((4, 4), (1, 1), (3, 3), (1, 1, 3, 3)),
]


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("kernel,stride,pad,shape", REFERENCE_CASES)
def test_forward_backward_match_reference(
    method: str,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    pad: tuple[int, int],
    shape: tuple[int, ...],
) -> None:
    params = (
        f"pool: {method} kernel_h: {kernel[0]} kernel_w: {kernel[1]} "
        f"stride_h: {stride[0]} stride_w: {stride[1]} pad_h: {pad[0]} pad_w: {pad[1]}"
    )
    x = distinct(shape)
    # Ties too: quantised values make equal maxima common.
    x[0, 0] = np.round(x[0, 0])
    layer = pool_layer(params)
    bottom, top = run(layer, x)
    dy = np.random.default_rng(1).normal(size=top.shape)
    ref_top, _, ref_dx = reference_pool(x, kernel, stride, pad, method, dy)
    assert top.shape == ref_top.shape
    np.testing.assert_allclose(top.data, ref_top, rtol=1e-14, atol=1e-14)
    top.diff[...] = dy
    bottom.diff[...] = np.nan  # must be overwritten everywhere
    layer.backward([top], [True], [bottom])
    np.testing.assert_allclose(bottom.diff, ref_dx, rtol=1e-13, atol=1e-14)
    if method == "MAX":
        # The mask top agrees, and backward through it gives the same diff.
        layer2 = pool_layer(params)
        bottom2, top2, mask2 = run(layer2, x, tops=2)
        _, ref_mask, _ = reference_pool(x, kernel, stride, pad, method)
        np.testing.assert_array_equal(mask2.data, ref_mask)
        top2.diff[...] = dy
        layer2.backward([top2, mask2], [True], [bottom2])
        np.testing.assert_allclose(bottom2.diff, ref_dx, rtol=1e-13, atol=1e-14)


def test_float32_kept() -> None:
    layer = pool_layer("kernel_size: 2 stride: 2")
    bottom, top = Blob((2, 3, 4, 4)), Blob()
    bottom.data[...] = distinct((2, 3, 4, 4))
    layer.setup([bottom], [top])
    layer.forward([bottom], [top])
    assert top.data.dtype == np.float32
    ref, _, _ = reference_pool(bottom.data.astype(float), (2, 2), (2, 2), (0, 0), "MAX")
    np.testing.assert_array_equal(top.data, ref.astype(np.float32))


def test_test_phase_backward_still_works() -> None:
    # A TEST net skips the argmax in forward; backward (caffe time --phase
    # TEST) recomputes it.
    x = distinct((1, 2, 4, 4))
    layer = pool_layer("kernel_size: 2 stride: 2", phase=caffe_pb2.TEST)
    bottom, top = run(layer, x)
    top.diff[...] = 1.0
    layer.backward([top], [True], [bottom])
    _, _, ref_dx = reference_pool(x, (2, 2), (2, 2), (0, 0), "MAX", top.diff)
    np.testing.assert_array_equal(bottom.diff, ref_dx)


def test_propagate_down_false_leaves_bottom_diff() -> None:
    layer = pool_layer("kernel_size: 2 stride: 2")
    bottom, top = run(layer, distinct((1, 1, 4, 4)))
    bottom.diff[...] = 3.0
    layer.backward([top], [False], [bottom])
    assert np.all(bottom.diff == 3.0)


# -- gradients ---------------------------------------------------------------------


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize(
    "params,shape",
    [
        ("kernel_size: 2 stride: 2", (2, 2, 4, 6)),
        ("kernel_size: 3 stride: 2", (2, 2, 5, 6)),
        ("kernel_h: 3 kernel_w: 2 stride: 2 pad: 1", (1, 2, 5, 4)),
        ("kernel_size: 3 stride: 1 pad: 2", (1, 1, 4, 4)),
        ("global_pooling: true", (2, 2, 3, 4)),
    ],
)
def test_gradient(method: str, params: str, shape: tuple[int, ...]) -> None:
    layer = pool_layer(f"pool: {method} {params}")
    bottom, top = blob(distinct(shape, seed=7)), Blob(dtype=np.float64)
    check_gradient(layer, [bottom], [top])


# -- Caffe's checks ----------------------------------------------------------------


@pytest.mark.parametrize(
    "params,message",
    [
        ("pool: STOCHASTIC kernel_size: 2", "STOCHASTIC is not supported"),
        ("kernel_size: 2 kernel_h: 2 kernel_w: 2", "not both"),
        ("kernel_h: 2", "kernel_size is required"),
        ("stride: 2", "kernel_size is required"),
        ("global_pooling: true kernel_size: 2", "Filter size cannot specified"),
        ("global_pooling: true stride: 2", "only pad = 0 and stride = 1"),
        ("kernel_size: 2 pad: 2", "must be smaller than the kernel"),
        ("kernel_size: 2 pad: 1 pad_h: 1 pad_w: 1", "pad is pad OR pad_h and pad_w"),
        ("kernel_size: 2 stride_h: 1", "Stride is stride OR stride_h and stride_w"),
        ("kernel_size: 0", "Filter dimensions cannot be zero"),
    ],
)
def test_config_errors_name_the_layer(params: str, message: str) -> None:
    layer = pool_layer(params, name="pool9")
    with pytest.raises(ConfigError) as e:
        layer.setup([Blob((1, 1, 4, 4))], [Blob()])
    assert "layer 'pool9' (Pooling)" in str(e.value)
    assert message in str(e.value)


def test_blob_count_and_shape_errors() -> None:
    layer = pool_layer("pool: AVE kernel_size: 2", name="p")
    with pytest.raises(ConfigError, match="at most 1 top"):
        layer.setup([Blob((1, 1, 4, 4))], [Blob(), Blob()])
    layer = pool_layer("kernel_size: 2", name="p")
    with pytest.raises(ShapeError, match=r"layer 'p'.*Input must have 4 axes"):
        layer.setup([Blob((1, 4, 4))], [Blob()])
    layer = pool_layer("kernel_size: 5", name="p")
    with pytest.raises(ShapeError, match="larger than the padded bottom"):
        layer.setup([Blob((1, 1, 4, 4))], [Blob()])


# -- the tiling path (kernel == stride, no pad, sizes divisible) ---------------------


def lenet_like(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """float32 values with many ties (zeros, as after a ReLU, and repeats),
    a few NaN and -inf."""
    rng = np.random.default_rng(seed)
    x = np.maximum(np.round(rng.normal(size=shape), 1), 0).astype(np.float32)
    x.reshape(-1)[rng.choice(x.size, x.size // 20, replace=False)] = np.nan
    x.reshape(-1)[rng.choice(x.size, x.size // 20, replace=False)] = -np.inf
    return x


@pytest.mark.parametrize("phase", [caffe_pb2.TRAIN, caffe_pb2.TEST])
@pytest.mark.parametrize(
    "params,shape",
    [
        ("kernel_size: 2 stride: 2", (4, 3, 8, 6)),
        ("kernel_h: 3 kernel_w: 2 stride_h: 3 stride_w: 2", (2, 2, 9, 4)),
    ],
)
def test_tiling_path_matches_general_path_bitwise(
    params: str, shape: tuple[int, ...], phase: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = []
    for tiles in (True, False):
        monkeypatch.setattr(lowering, "pool_tiles", lambda g, t=tiles: t)
        layer = pool_layer(params, phase=phase)
        bottom, top, mask = Blob(shape), Blob(), Blob()
        bottom.data[...] = lenet_like(shape, 0)
        layer.setup([bottom], [top, mask])
        layer.forward([bottom], [top, mask])
        top.diff[...] = np.random.default_rng(1).normal(size=top.shape)
        bottom.diff[...] = np.nan
        layer.backward([top, mask], [True], [bottom])
        plain = Blob(shape)  # one top: backward routes by the argmax
        layer2 = pool_layer(params, phase=phase)
        out2 = Blob()
        plain.data[...] = bottom.data
        layer2.setup([plain], [out2])
        layer2.forward([plain], [out2])
        out2.diff[...] = top.diff
        layer2.backward([out2], [True], [plain])
        assert (layer2._tiles(np.float32) is not None) is tiles
        results.append((top.data, mask.data, bottom.diff, out2.data, plain.diff))
    for got, ref in zip(*results):
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, ref)
    kernel = (2, 2) if "kernel_size" in params else (3, 2)
    x = lenet_like(shape, 0).astype(float)
    ref_top, _, _ = reference_pool(x, kernel, kernel, (0, 0), "MAX")
    flt_max = float(np.finfo(np.float32).max)
    ref_top[np.isneginf(ref_top)] = -flt_max  # Caffe starts from -FLT_MAX
    np.testing.assert_array_equal(results[0][0], ref_top.astype(np.float32))


# -- the compiled 2x2 kernel (kernels.py) ----------------------------------------


def pool_2x2_all_paths(x: np.ndarray, phase: int) -> list[tuple[np.ndarray, ...]]:
    """Forward (top, mask top) and backward (bottom diff, through the argmax
    and through the mask) of 2x2 stride-2 MAX pooling, with the compiled
    kernel and with the NumPy path."""
    results = []
    for numpy_path in (False, True):
        with kernels.forced(numpy_path):
            layer = pool_layer("kernel_size: 2 stride: 2", phase=phase)
            assert layer is not None
            bottom = Blob(x.shape, dtype=x.dtype)
            bottom.data[...] = x
            top, mask = Blob(dtype=x.dtype), Blob(dtype=x.dtype)
            layer.setup([bottom], [top])
            layer.forward([bottom], [top])
            assert layer._compiled_2x2(bottom.data, top.data) is not numpy_path
            top.diff[...] = np.random.default_rng(2).normal(size=top.shape)
            top.diff[0, 0, 0, 1] = -0.0  # Caffe's 0 + -0: +0 at the argmax too
            bottom.diff[...] = np.nan
            layer.backward([top], [True], [bottom])
            masked = pool_layer("kernel_size: 2 stride: 2", phase=phase)
            masked_top = Blob(dtype=x.dtype)
            masked.setup([bottom], [masked_top, mask])
            masked.forward([bottom], [masked_top, mask])
            results.append((top.data.copy(), mask.data.copy(), bottom.diff.copy()))
    return results


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("phase", [caffe_pb2.TRAIN, caffe_pb2.TEST])
def test_compiled_2x2_kernel_is_caffes_loop(phase: int, dtype: type) -> None:
    # numba is a dependency, so the kernel path is the one that runs here.
    assert kernels.enabled()
    shape = (4, 3, 8, 10)
    x = lenet_like(shape, 3).astype(dtype)
    x[0, 0, :2, :2] = [[0.0, -0.0], [-0.0, -1.0]]  # +0 first: Caffe keeps it
    x[0, 0, :2, 2:4] = [[-0.0, 0.0], [0.0, 0.0]]  # -0 first: Caffe keeps -0
    x[0, 1, :2, :2] = np.nan  # an all-NaN window stays at -FLT_MAX
    x[0, 1, :2, 2:4] = [[np.nan, -2.0], [-3.0, np.nan]]  # NaN never wins: -2
    x[0, 1, :2, 4:6] = -np.inf  # nothing beats -FLT_MAX
    x[0, 1, :2, 6:8] = [[-np.inf, 5.0], [5.0, np.nan]]  # a tie: the first 5
    compiled, numpy_path = pool_2x2_all_paths(x, phase)
    top, mask, dx = compiled
    dy = np.random.default_rng(2).normal(size=top.shape)
    dy[0, 0, 0, 1] = -0.0
    ref_top, ref_mask, _ = reference_pool(
        x.astype(float), (2, 2), (2, 2), (0, 0), "MAX"
    )
    flt_max = float(np.finfo(np.float32).max)
    none_won = ref_mask < 0  # all NaN or -inf
    assert none_won[0, 1, 0, 0]
    ref_top[none_won] = -flt_max  # Caffe starts from -FLT_MAX
    # and the diff goes to the window's first element
    oy, ox = np.nonzero(none_won)[2:]
    ref_mask[none_won] = 2 * oy * shape[3] + 2 * ox
    np.testing.assert_array_equal(top, ref_top.astype(dtype))
    assert np.signbit(top[0, 0, 0, :2]).tolist() == [False, True]
    assert top[0, 1, 0, :4].tolist() == [-flt_max, -2.0, -flt_max, 5.0]
    np.testing.assert_array_equal(mask, ref_mask)
    # Each top diff lands on its window's maximum (windows do not overlap).
    ref_dx = np.zeros(shape)
    planes = ref_dx.reshape(shape[0], shape[1], -1)
    np.put_along_axis(
        planes, ref_mask.reshape(shape[0], shape[1], -1).astype(int),
        dy.reshape(shape[0], shape[1], -1), axis=2,
    )  # fmt: skip
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-6, atol=0)
    # Caffe zero-fills the bottom diff and adds: the other elements are +0.
    assert not np.signbit(dx[ref_dx == 0]).any()
    # The NumPy path gives the same values; of a +0/-0 tie it may keep
    # either zero, and where the diff is -0 it may leave -0 (its fast
    # whole-array operations do not order ties the way Caffe's loop does).
    for got, other in zip(compiled, numpy_path):
        assert got.dtype == dtype
        np.testing.assert_array_equal(got, other)
