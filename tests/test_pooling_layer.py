"""Pooling layer tests after Caffe's test_pooling_layer.cpp: output sizes
(ceil and floor rounding, the last window that would start in the padding,
empty windows), Caffe's hand-worked MAX values and masks (square, tall and
wide kernels, padded), AVE with its clipped divisor, ties and NaN, global
pooling, a direct loop reference for forward and backward, Caffe's gradient
checks, and Caffe's parameter checks; each on the compiled loops and on the
NumPy paths (STOCHASTIC: test_stochastic_pooling.py)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from conftest import layer_from
from gradient_check import check_gradient

from caffesolve import kernels
from caffesolve.blob import Blob
from caffesolve.errors import ConfigError, ShapeError
from caffesolve.layers.pooling import PoolingLayer
from caffesolve.proto import caffe_pb2

FLT_MAX = float(np.finfo(np.float32).max)


@pytest.fixture(params=["compiled", "numpy"])
def paths(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test on the compiled loops, then on the NumPy paths."""
    with kernels.forced(request.param == "numpy"):
        yield request.param


def pool_layer(
    params: str, name: str = "pool", phase: int = caffe_pb2.TRAIN
) -> PoolingLayer:
    text = f'name: "{name}" type: "Pooling" pooling_param {{ {params} }}'
    layer = layer_from(text, phase)
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
    _, top = run(
        pool_layer("pool: AVE kernel_size: 3 stride: 2 pad: 1"), np.zeros((2, 3, 6, 5))
    )
    assert top.shape == (2, 3, 4, 3)
    # TestSetupGlobalPooling.
    _, top = run(pool_layer("pool: AVE global_pooling: true"), np.zeros((2, 3, 6, 5)))
    assert top.shape == (2, 3, 1, 1)


def test_ceil_rounding_keeps_partial_last_window(paths: str) -> None:
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


def test_last_window_starting_in_padding_is_dropped(paths: str) -> None:
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


def test_window_wholly_past_the_image(paths: str) -> None:
    # 5 wide, kernel 1, stride 3, no pad: ceil(4/3) + 1 = 3 windows, the
    # last starting at 6 (the drop rule only applies with padding). Caffe's
    # loops then visit nothing: MAX stays at -FLT_MAX with mask -1, and AVE
    # divides 0 by its pool_size (5 - 6) = -1.
    x = np.array([[[[1.0, 2.0, 3.0, 4.0, 5.0]]]])
    params = "kernel_size: 1 stride_h: 1 stride_w: 3"
    layer = pool_layer(params)
    bottom, top, mask = run(layer, x, tops=2)
    assert top.data[0, 0, 0].tolist() == [1.0, 4.0, -FLT_MAX]
    assert mask.data[0, 0, 0].tolist() == [0.0, 3.0, -1.0]
    top.diff[...] = 1.0
    layer.backward([top, mask], [True], [bottom])  # the -1 routes nowhere
    assert bottom.diff[0, 0, 0].tolist() == [1.0, 0.0, 0.0, 1.0, 0.0]
    layer = pool_layer(params)
    bottom, top = run(layer, x)
    top.diff[...] = 1.0
    layer.backward([top], [True], [bottom])
    assert bottom.diff[0, 0, 0].tolist() == [1.0, 0.0, 0.0, 1.0, 0.0]
    _, top = run(pool_layer(f"pool: AVE {params}"), x)
    assert top.data[0, 0, 0].tolist() == [1.0, 4.0, 0.0]
    assert np.signbit(top.data[0, 0, 0, 2])  # 0 / -1 = -0, as in Caffe
    # Starting exactly at the edge (4 wide, stride 2): pool_size 4 - 4 = 0,
    # and Caffe's 0 / 0 is NaN.
    _, top = run(pool_layer("pool: AVE kernel_size: 1 stride: 2"), x[..., :4])
    assert top.data[0, 0, 0, :2].tolist() == [1.0, 3.0]
    assert np.isnan(top.data[0, 0, 0, 2])


# -- Caffe's hand-worked MAX values ------------------------------------------------

# Caffe's TestForwardRectHigh / RectWide input: MATLAB's magic(6).
MAGIC6 = np.array(
    [
        [35, 1, 6, 26, 19, 24],
        [3, 32, 7, 21, 23, 25],
        [31, 9, 2, 22, 27, 20],
        [8, 28, 33, 17, 10, 15],
        [30, 5, 34, 12, 14, 16],
        [4, 36, 29, 13, 18, 11],
    ],
    float,
)

MAX_CASES = {
    # Caffe's TestForwardSquare: 3x5, kernel 2, stride 1.
    "square": (
        "kernel_size: 2",
        np.array([[1, 2, 5, 2, 3], [9, 4, 1, 4, 8], [1, 2, 5, 2, 3]], float),
        [[9, 5, 5, 8], [9, 5, 5, 8]],
        [[5, 2, 2, 9], [5, 12, 12, 9]],
    ),
    # TestForwardRectHigh: kernel 3x2 over magic(6).
    "rect high": (
        "kernel_h: 3 kernel_w: 2",
        MAGIC6,
        [
            [35, 32, 26, 27, 27],
            [32, 33, 33, 27, 27],
            [31, 34, 34, 27, 27],
            [36, 36, 34, 18, 18],
        ],
        [
            [0, 7, 3, 16, 16],
            [7, 20, 20, 16, 16],
            [12, 26, 26, 16, 16],
            [31, 31, 26, 34, 34],
        ],
    ),
    # TestForwardRectWide: kernel 2x3 over magic(6).
    "rect wide": (
        "kernel_h: 2 kernel_w: 3",
        MAGIC6,
        [
            [35, 32, 26, 26],
            [32, 32, 27, 27],
            [33, 33, 33, 27],
            [34, 34, 34, 17],
            [36, 36, 34, 18],
        ],
        [
            [0, 7, 3, 3],
            [7, 7, 16, 16],
            [20, 20, 20, 16],
            [26, 26, 26, 21],
            [31, 31, 26, 34],
        ],
    ),
}  # fmt: skip


@pytest.mark.parametrize("tops", [1, 2])  # TestForwardMax, TestForwardMaxTopMask
@pytest.mark.parametrize("case", MAX_CASES)
def test_forward_max_hand_values(case: str, tops: int, paths: str) -> None:
    params, plane, expect, expect_mask = MAX_CASES[case]
    x = np.stack([np.stack([plane, plane + 100])] * 2)  # 2x2 planes
    _, top, *mask = run(pool_layer(params), x, tops)
    for n in range(2):
        np.testing.assert_array_equal(top.data[n, 0], expect)
        np.testing.assert_array_equal(top.data[n, 1], np.add(expect, 100))
        if mask:
            np.testing.assert_array_equal(mask[0].data[n, 0], expect_mask)
            np.testing.assert_array_equal(mask[0].data[n, 1], expect_mask)


def test_forward_max_padded(paths: str) -> None:
    # Caffe TestForwardMaxPadded: 3x3, kernel 3, stride 2, pad 2 -> 3x3.
    x = np.array([[[[1, 2, 4], [2, 3, 2], [4, 2, 1]]]], float)
    _, top = run(pool_layer("kernel_size: 3 stride: 2 pad: 2"), x)
    np.testing.assert_array_equal(top.data[0, 0], [[1, 4, 4], [4, 4, 4], [4, 4, 1]])


def test_max_ties_go_to_first_in_window_order(paths: str) -> None:
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
@pytest.mark.parametrize("params", ["kernel_size: 2 stride: 2", "kernel_size: 2"])
def test_max_skips_nan_like_caffe(phase: int, params: str, paths: str) -> None:
    # Caffe compares `bottom > top` from -FLT_MAX: NaN never wins, and a
    # window of only NaN stays at -FLT_MAX (its mask -1: no diff goes back).
    nan = np.nan
    x = np.array([[[[nan, 1.0, nan, nan], [2.0, nan, nan, nan]]]])
    layer = pool_layer(params, phase=phase)
    bottom, top = run(layer, x)
    assert top.data[0, 0, 0, 0] == 2.0
    assert top.data[0, 0, 0, -1] == -FLT_MAX
    top.diff[...] = 5.0
    layer.backward([top], [True], [bottom])
    assert bottom.diff[0, 0, 1, 0] == 5.0
    assert bottom.diff.sum() == 5.0 * (top.data != -FLT_MAX).sum()


# -- AVE and global pooling ----------------------------------------------------------


def test_forward_ave_with_pad_counts_padding(paths: str) -> None:
    # Caffe TestForwardAve: 3x3 of 2s, kernel 3, stride 1, pad 1.
    _, top = run(
        pool_layer("pool: AVE kernel_size: 3 stride: 1 pad: 1"),
        np.full((1, 1, 3, 3), 2.0),
    )
    corner, edge = 8.0 / 9.0, 12.0 / 9.0
    expect = [[corner, edge, corner], [edge, 2.0, edge], [corner, edge, corner]]
    np.testing.assert_allclose(top.data[0, 0], expect, rtol=1e-15)


def test_ave_divisor_clipped_to_height_plus_pad(paths: str) -> None:
    # 4x4, kernel 3, stride 2, pad 1 -> 3x3 outputs. The last window starts at
    # 3 and would end at 6, clipped to 4 + 1 = 5: pool_size 2 per axis, so the
    # last corner averages x[3, 3] over 2*2 = 4, not 9 and not 1.
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    _, top = run(pool_layer("pool: AVE kernel_size: 3 stride: 2 pad: 1"), x)
    assert top.shape == (1, 1, 3, 3)
    assert top.data[0, 0, 2, 2] == pytest.approx(15.0 / 4)
    assert top.data[0, 0, 0, 0] == pytest.approx((0 + 1 + 4 + 5) / 9)
    assert top.data[0, 0, 0, 2] == pytest.approx((3 + 7) / 6)  # cols 3..4 of -1..4


def test_global_pooling(paths: str) -> None:
    x = distinct((2, 3, 4, 5), seed=3)
    _, top = run(pool_layer("global_pooling: true"), x)
    np.testing.assert_array_equal(top.data[..., 0, 0], x.max(axis=(2, 3)))
    _, top = run(pool_layer("pool: AVE global_pooling: true"), x)
    np.testing.assert_allclose(top.data[..., 0, 0], x.mean(axis=(2, 3)), rtol=1e-13)
    # The kernel follows the bottom when it is reshaped (GoogLeNet's 7x7).
    layer = pool_layer("pool: AVE global_pooling: true")
    bottom, top = run(layer, x)
    bottom.reshape((1, 3, 7, 7))
    bottom.data[...] = 1.0
    layer.reshape([bottom], [top])
    layer.forward([bottom], [top])
    assert top.shape == (1, 3, 1, 1) and np.all(top.data == 1.0)


# -- against the direct reference ------------------------------------------------------

REFERENCE_CASES = [
    # (kernel, stride, pad, shape)
    ((2, 2), (2, 2), (0, 0), (2, 3, 6, 8)),  # LeNet's tiling case
    ((2, 2), (2, 2), (0, 0), (2, 2, 5, 7)),  # ceil: partial last windows
    ((3, 3), (2, 2), (0, 0), (2, 2, 7, 6)),  # overlapping
    ((3, 3), (2, 2), (1, 1), (1, 2, 6, 5)),  # pad, last window dropped in w
    ((3, 3), (1, 1), (1, 1), (1, 2, 5, 6)),  # inception's 3x3 stride 1 pad 1
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
    paths: str,
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


def test_float32_kept(paths: str) -> None:
    for params in ("kernel_size: 2 stride: 2", "kernel_size: 3 stride: 2 pad: 1"):
        layer = pool_layer(params)
        bottom, top = Blob((2, 3, 5, 4)), Blob()
        bottom.data[...] = distinct((2, 3, 5, 4))
        layer.setup([bottom], [top])
        layer.forward([bottom], [top])
        assert top.data.dtype == np.float32
        kernel, stride, pad = ((2, 2), (2, 2), (0, 0)) if "2 s" in params else (
            (3, 3), (2, 2), (1, 1))  # fmt: skip
        x = bottom.data.astype(float)
        ref, _, _ = reference_pool(x, kernel, stride, pad, "MAX")
        np.testing.assert_array_equal(top.data, ref.astype(np.float32))


def test_test_phase_backward_still_works(paths: str) -> None:
    # A TEST net skips the argmax in forward; backward (caffe time --phase
    # TEST) recomputes it.
    x = distinct((1, 2, 5, 5))
    for params, kernel, stride in [
        ("kernel_size: 2 stride: 2", (2, 2), (2, 2)),
        ("kernel_size: 3 stride: 2", (3, 3), (2, 2)),
    ]:
        layer = pool_layer(params, phase=caffe_pb2.TEST)
        bottom, top = run(layer, x)
        top.diff[...] = 1.0
        layer.backward([top], [True], [bottom])
        _, _, ref_dx = reference_pool(x, kernel, stride, (0, 0), "MAX", top.diff)
        np.testing.assert_array_equal(bottom.diff, ref_dx)


def test_propagate_down_false_leaves_bottom_diff() -> None:
    layer = pool_layer("kernel_size: 2 stride: 2")
    bottom, top = run(layer, distinct((1, 1, 4, 4)))
    bottom.diff[...] = 3.0
    layer.backward([top], [False], [bottom])
    assert np.all(bottom.diff == 3.0)


# -- gradients (Caffe's TestGradient*: 2x3x6x5 Gaussian bottom) ------------------------


def gaussian_bottom() -> Blob:
    return blob(np.random.default_rng(1701).normal(size=(2, 3, 6, 5)))


@pytest.mark.parametrize("kernel", [(3, 3), (3, 4), (4, 3), (4, 4)])
@pytest.mark.parametrize(
    "case,extra,stepsize",
    [
        ("max", "pad: 1", 1e-4),  # TestGradientMax
        ("max top mask", "", 1e-4),  # TestGradientMaxTopMask
        ("ave", "pool: AVE", 1e-2),  # TestGradientAve
        ("ave padded", "pool: AVE pad: 2", 1e-2),  # TestGradientAvePadded
    ],
)
def test_gradient(
    kernel: tuple[int, int], case: str, extra: str, stepsize: float
) -> None:
    params = f"kernel_h: {kernel[0]} kernel_w: {kernel[1]} stride: 2 {extra}"
    tops = [Blob(dtype=np.float64)]
    if case == "max top mask":
        tops.append(Blob(dtype=np.float64))  # the mask's "gradient" is 0
    # Caffe's checkers: GradientChecker(1e-4, 1e-2) for MAX, (1e-2, 1e-2) AVE.
    checked = check_gradient(
        pool_layer(params), [gaussian_bottom()], tops, stepsize=stepsize, threshold=1e-2
    )
    assert checked == 2 * 3 * 6 * 5


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize(
    "params,shape",
    [
        ("kernel_size: 2 stride: 2", (2, 2, 4, 6)),
        ("kernel_size: 3 stride: 1 pad: 1", (1, 2, 4, 5)),
        (
            "kernel_h: 3 kernel_w: 2 stride_h: 1 stride_w: 2 pad_h: 1 pad_w: 0",
            (1, 2, 5, 4),
        ),
        ("kernel_size: 3 stride: 2 round_mode: FLOOR", (1, 2, 6, 6)),
        ("global_pooling: true", (2, 2, 3, 4)),
    ],
)
def test_gradient_edge_rules(method: str, params: str, shape: tuple[int, ...]) -> None:
    layer = pool_layer(f"pool: {method} {params}")
    bottom, top = blob(distinct(shape, seed=7)), Blob(dtype=np.float64)
    check_gradient(layer, [bottom], [top])


# -- Caffe's checks ----------------------------------------------------------------


@pytest.mark.parametrize(
    "params,message",
    [
        ("kernel_size: 2 kernel_h: 2 kernel_w: 2", "not both"),
        ("kernel_h: 2", "kernel_size is required"),
        ("stride: 2", "kernel_size is required"),
        ("global_pooling: true kernel_size: 2", "Filter size cannot specified"),
        ("global_pooling: true stride: 2", "only pad = 0 and stride = 1"),
        ("kernel_size: 2 pad: 2", "must be smaller than the kernel"),
        ("kernel_h: 3 kernel_w: 2 pad_h: 1 pad_w: 2", "must be smaller than the"),
        ("kernel_size: 2 pad: 1 pad_h: 1 pad_w: 1", "pad is pad OR pad_h and pad_w"),
        ("kernel_size: 2 stride_h: 1", "Stride is stride OR stride_h and stride_w"),
        ("kernel_size: 0", "Filter dimensions cannot be zero"),
        ("kernel_size: 2 stride: 0", "Stride dimensions cannot be zero"),
        ("pool: STOCHASTIC kernel_size: 3 pad: 1", "Padding implemented only for"),
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


# -- LeNet's 2x2 stride 2: the 2x2 loops, the NumPy tiling path, the general one ---


def lenet_like(shape: tuple[int, ...], seed: int, dtype: type) -> np.ndarray:
    """Values with many ties (zeros, as after a ReLU, +0 and -0, repeats), a
    few NaN and -inf."""
    rng = np.random.default_rng(seed)
    x = np.maximum(np.round(rng.normal(size=shape), 1), 0).astype(dtype)
    x.reshape(-1)[rng.choice(x.size, x.size // 10, replace=False)] = -0.0
    x.reshape(-1)[rng.choice(x.size, x.size // 20, replace=False)] = np.nan
    x.reshape(-1)[rng.choice(x.size, x.size // 20, replace=False)] = -np.inf
    return x


def pool_all_ways(x: np.ndarray, params: str, phase: int) -> list[np.ndarray]:
    """Top, mask top, bottom diff through the argmax and through the mask."""
    dy = np.random.default_rng(2).normal(size=x.shape).astype(x.dtype)
    layer, masked = pool_layer(params, phase=phase), pool_layer(params, phase=phase)
    bottom, top = Blob(x.shape, dtype=x.dtype), Blob(dtype=x.dtype)
    bottom.data[...] = x
    layer.setup([bottom], [top])
    layer.forward([bottom], [top])
    top.diff[...] = dy[..., : top.shape[2], : top.shape[3]]
    top.diff.reshape(-1)[::3] = -0.0  # Caffe's 0 + -0: +0 at the argmax too
    bottom.diff[...] = np.nan
    layer.backward([top], [True], [bottom])
    bottom2, top2 = Blob(x.shape, dtype=x.dtype), Blob(dtype=x.dtype)
    mask = Blob(dtype=x.dtype)
    bottom2.data[...] = x
    masked.setup([bottom2], [top2, mask])
    masked.forward([bottom2], [top2, mask])
    top2.diff[...] = top.diff
    masked.backward([top2, mask], [True], [bottom2])
    return [top.data.copy(), mask.data.copy(), bottom.diff.copy(), bottom2.diff]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("phase", [caffe_pb2.TRAIN, caffe_pb2.TEST])
@pytest.mark.parametrize(
    "params,shape",
    [
        ("kernel_size: 2 stride: 2", (4, 3, 8, 10)),  # the 2x2 loops / tiles
        ("kernel_h: 3 kernel_w: 2 stride_h: 3 stride_w: 2", (2, 2, 9, 4)),  # tiles
    ],
)
def test_tiling_paths_give_caffes_bits(
    params: str, shape: tuple[int, ...], phase: int, dtype: type
) -> None:
    x = lenet_like(shape, 3, dtype)
    x[0, 0, :2, :2] = [[0.0, -0.0], [-0.0, -1.0]]  # +0 first: Caffe keeps it
    x[0, 0, :2, 2:4] = [[-0.0, 0.0], [0.0, 0.0]]  # -0 first: Caffe keeps -0
    x[0, 1, :2, :2] = np.nan  # an all-NaN window stays at -FLT_MAX
    with kernels.forced(False):
        compiled = pool_all_ways(x, params, phase)
    with kernels.forced(True):
        numpy_paths = pool_all_ways(x, params, phase)
    for got, other in zip(compiled, numpy_paths):
        assert got.dtype == dtype
        np.testing.assert_array_equal(got, other)
        np.testing.assert_array_equal(np.signbit(got), np.signbit(other))
    top, mask, dx, dx_mask = compiled
    if "kernel_size" in params:
        assert np.signbit(top[0, 0, 0, :2]).tolist() == [False, True]
        assert top[0, 1, 0, 0] == -FLT_MAX and mask[0, 1, 0, 0] == -1
    kernel = (2, 2) if "kernel_size" in params else (3, 2)
    ref_top, ref_mask, _ = reference_pool(
        x.astype(float), kernel, kernel, (0, 0), "MAX"
    )
    ref_top[ref_mask < 0] = -FLT_MAX  # Caffe starts from -FLT_MAX
    np.testing.assert_array_equal(top, ref_top.astype(dtype))
    np.testing.assert_array_equal(mask, ref_mask)
    np.testing.assert_array_equal(dx, dx_mask)
    # Caffe zero-fills the bottom diff and adds: no -0 anywhere.
    assert not np.signbit(dx[dx == 0]).any()
