"""Pooling's array functions (caffesolve/ops/pooling*.py): Caffe's output
size and AVE divisor by hand, the mask conversion, and the paths that must
give the same bits: the compiled loops against the NumPy paths (values, the
sign of zeros, NaN, argmax, bottom diffs) on data full of ties, the NumPy
tiling path against the general one, and any number of worker threads."""

from __future__ import annotations

import numpy as np
import pytest

from caffesolve import backend, kernels
from caffesolve.ops import pooling, pooling_tiles
from caffesolve.ops.pooling import AVE, MAX, PoolGeometry
from caffesolve.ops.pooling_kernels import (
    is_2x2,
    phases_pay,
    pool_backward_compiled,
    pool_forward_compiled,
)

FLT_MAX = float(np.finfo(np.float32).max)


@pytest.mark.parametrize(
    "size,kernel,stride,pad,ceil_mode,expect",
    [
        (24, 2, 2, 0, True, 12),  # LeNet pool1
        (5, 2, 2, 0, True, 3),  # ceil keeps a partial window
        (5, 2, 2, 0, False, 2),
        (6, 3, 2, 0, True, 3),  # Caffe TestSetup
        (6, 3, 2, 1, True, 4),  # TestSetupPadded
        (5, 3, 2, 1, True, 3),
        (5, 2, 2, 1, True, 3),  # 4 by ceil, last would start in the padding
        (55, 3, 2, 0, True, 27),  # AlexNet pool1
        (13, 3, 2, 0, True, 6),
        (112, 3, 2, 0, True, 56),  # GoogLeNet pool1/3x3_s2: ceil
        (112, 3, 2, 0, False, 55),
        (28, 3, 1, 1, True, 28),  # inception pool: 3x3 stride 1 pad 1
        (7, 7, 1, 0, True, 1),  # pool5/7x7_s1
        (32, 3, 2, 0, True, 16),  # cifar10 pool1 (ceil); floor: 15
        (5, 1, 3, 0, True, 3),  # stride > kernel: the last window is empty
        (4, 5, 2, 0, True, 1),  # kernel past the image: ceil(-0.5) + 1
    ],
)
def test_pool_out_size(
    size: int, kernel: int, stride: int, pad: int, ceil_mode: bool, expect: int
) -> None:
    assert pooling.pool_out_size(size, kernel, stride, pad, ceil_mode) == expect


def test_ave_pool_divisor_hand_values() -> None:
    # 4 wide, kernel 3, stride 2, pad 1: windows start at -1, 1, 3 and end
    # at min(start + 3, 5): sizes 3, 3, 2.
    g = PoolGeometry(1, 1, 4, 4, 3, 3, 2, 2, 1, 1)
    np.testing.assert_array_equal(
        pooling.ave_pool_divisor(g, np.float64), np.outer([3, 3, 2], [3, 3, 2])
    )
    # A window wholly past the image (start 6 of 5): Caffe's (5 - 6) = -1.
    g = PoolGeometry(1, 1, 1, 5, 1, 1, 1, 3)
    np.testing.assert_array_equal(pooling.ave_pool_divisor(g, int), [[1, 1, -1]])


def test_argmax_to_caffe_mask() -> None:
    g = PoolGeometry(1, 1, 4, 5, 2, 3, 2, 2, 1, 1)
    argmax = np.zeros((1, 1, g.out_h, g.out_w), np.uint8)
    argmax[0, 0, 1, 1] = 1 * 3 + 2  # kernel row 1, column 2
    argmax[0, 0, 0, 0] = g.area  # none won
    mask = pooling.argmax_to_caffe_mask(argmax, g, np.float32)
    # output (1, 1) starts at (1*2 - 1, 1*2 - 1) = (1, 1): element (2, 3)
    assert mask[0, 0, 1, 1] == 2 * 5 + 3
    assert mask[0, 0, 0, 0] == -1  # Caffe's mask stays -1
    assert mask[0, 0, 0, 1] == -1 * 5 + 1  # offset 0 of a window in the padding


def test_argmax_dtype_holds_none() -> None:
    assert pooling.argmax_dtype(255) == np.uint8
    assert pooling.argmax_dtype(256) == np.uint16  # 256 is the "none" offset
    assert pooling.argmax_dtype(70000) == np.uint32


# -- compiled loops against the NumPy paths --------------------------------------

GEOMETRIES = [
    PoolGeometry(2, 3, 9, 11, 3, 3, 2, 2),  # cifar10's pool: 3x3 stride 2, ceil
    PoolGeometry(1, 4, 6, 5, 3, 3, 2, 2, 1, 1),  # pad, last window dropped in w
    PoolGeometry(2, 2, 6, 6, 3, 3, 1, 1, 1, 1),  # inception: 3x3 stride 1 pad 1
    PoolGeometry(2, 2, 7, 7, 3, 3, 2, 2, ceil_mode=False),  # round_mode FLOOR
    PoolGeometry(2, 3, 7, 7, 7, 7),  # GoogLeNet's global 7x7
    PoolGeometry(1, 2, 6, 6, 3, 3),  # stride 1 without pad: no phase copy
    PoolGeometry(1, 2, 7, 4, 2, 3, 3, 1, 0, 2),  # stride > kernel: gaps
    PoolGeometry(1, 2, 4, 5, 3, 2, 1, 2, 1, 0),  # non-square everything
    PoolGeometry(2, 1, 3, 3, 4, 4, 1, 1, 3, 3),  # pad 3 of kernel 4
    PoolGeometry(1, 1, 1, 5, 1, 1, 1, 3),  # an empty last window
    PoolGeometry(1, 2, 10, 11, 3, 3, 3, 3, 1, 1),  # stride 3
    PoolGeometry(2, 3, 8, 6, 2, 2, 2, 2),  # the 2x2 loops' tiling
    PoolGeometry(1, 2, 7, 5, 2, 2, 2, 2),  # 2x2 stride 2 with ceil remainder
    PoolGeometry(1, 1, 17, 17, 17, 17),  # 289 offsets: uint16 argmax
]


def tricky_values(shape: tuple[int, ...], dtype: type, seed: int) -> np.ndarray:
    """Few distinct values (many ties), with NaN, +-0, -inf and -FLT_MAX."""
    rng = np.random.default_rng(seed)
    pool = np.array([np.nan, -np.inf, -FLT_MAX, -1.0, 0.0, -0.0, 0.5, 2.0, np.inf])
    p = [0.08, 0.08, 0.08, 0.16, 0.16, 0.16, 0.1, 0.13, 0.05]
    return rng.choice(pool, size=shape, p=p).astype(dtype)


def same_bits(a: np.ndarray, b: np.ndarray) -> None:
    """Equal values, NaN where NaN, and the same sign of every zero (a NaN's
    sign bit depends on operand order inside the FPU: not compared)."""
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)
    numbers = ~np.isnan(a)
    np.testing.assert_array_equal(np.signbit(a[numbers]), np.signbit(b[numbers]))


def all_paths(
    x: np.ndarray, dy: np.ndarray, g: PoolGeometry
) -> dict[str, list[np.ndarray]]:
    """Every forward and backward result, compiled and NumPy."""
    out_shape = dy.shape
    index_dtype = pooling.argmax_dtype(g.area)
    divisor = pooling.ave_pool_divisor(g, x.dtype)
    results: dict[str, list[np.ndarray]] = {}

    def keep(name: str, a: np.ndarray) -> None:
        results.setdefault(name, []).append(a)

    # compiled
    top, index = np.empty(out_shape, x.dtype), np.empty(out_shape, index_dtype)
    pool_forward_compiled(x, g, MAX, top, index)
    keep("max", top), keep("argmax", index)
    top = np.empty(out_shape, x.dtype)
    pool_forward_compiled(x, g, MAX, top)
    keep("max without argmax", top)
    dx = np.full_like(x, np.nan)
    pool_backward_compiled(dy, g, MAX, dx, index)
    keep("max backward", dx)
    top = np.empty(out_shape, x.dtype)
    pool_forward_compiled(x, g, AVE, top, divisor=divisor)
    keep("ave", top)
    dx = np.full_like(x, np.nan)
    pool_backward_compiled(dy, g, AVE, dx, divisor=divisor)
    keep("ave backward", dx)
    # NumPy
    top, index = np.empty(out_shape, x.dtype), np.empty(out_shape, index_dtype)
    pooling.max_pool_forward(x, g, top, index)
    keep("max", top), keep("argmax", index)
    top = np.empty(out_shape, x.dtype)
    pooling.max_pool_forward(x, g, top)
    keep("max without argmax", top)
    dx = np.full_like(x, np.nan)
    pooling.max_pool_backward(dy, index, g, dx)
    keep("max backward", dx)
    top = np.empty(out_shape, x.dtype)
    pooling.ave_pool_forward(x, g, divisor, top)
    keep("ave", top)
    dx = np.full_like(x, np.nan)
    pooling.ave_pool_backward(dy, g, divisor, dx)
    keep("ave backward", dx)
    return results


def test_geometries_cover_both_general_loops() -> None:
    # The phase passes for most; Caffe's window loop where the outputs are
    # few against the kernel (GoogLeNet's global 7x7).
    assert not phases_pay(PoolGeometry(16, 1024, 7, 7, 7, 7))
    assert phases_pay(PoolGeometry(100, 32, 32, 32, 3, 3, 2, 2))
    uses = {phases_pay(g) for g in GEOMETRIES if not is_2x2(g)}
    assert uses == {True, False}
    assert any(is_2x2(g) for g in GEOMETRIES)


@pytest.mark.filterwarnings("ignore:overflow", "ignore:invalid value")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("g", GEOMETRIES)
def test_compiled_loops_give_the_numpy_bits(g: PoolGeometry, dtype: type) -> None:
    assert kernels.enabled()  # numba is a dependency: the kernels run here
    shape = (g.num, g.channels, g.height, g.width)
    for seed in range(2):
        x = tricky_values(shape, dtype, seed)
        out_shape = (g.num, g.channels, g.out_h, g.out_w)
        dy = np.random.default_rng(seed).normal(size=out_shape).astype(dtype)
        dy.reshape(-1)[::7] = -0.0  # Caffe's 0 + -0 is +0
        for name, (compiled, numpy_path) in all_paths(x, dy, g).items():
            assert compiled.dtype == numpy_path.dtype, name
            same_bits(compiled, numpy_path)


def test_compiled_max_is_caffes_loop_on_ties_nan_and_zeros() -> None:
    # Hand-made 2x2 windows with stride 2 (the 2x2 loops) and 3x3 stride 1
    # (the general loop): the first of +0/-0 wins, NaN never does, an
    # all-NaN or all -inf window stays at -FLT_MAX with no argmax.
    x = np.array(
        [[[[0.0, -0.0, -0.0, 0.0, np.nan, np.nan, -np.inf, 5.0],
           [-0.0, -1.0, 0.0, 0.0, np.nan, np.nan, 5.0, np.nan]]]],
        np.float32,
    )  # fmt: skip
    g = PoolGeometry(1, 1, 2, 8, 2, 2, 2, 2)
    top, index = np.empty((1, 1, 1, 4), np.float32), np.empty((1, 1, 1, 4), np.uint8)
    pool_forward_compiled(x, g, MAX, top, index)
    assert top[0, 0, 0].tolist() == [0.0, -0.0, -FLT_MAX, 5.0]
    assert np.signbit(top[0, 0, 0, :2]).tolist() == [False, True]
    assert index[0, 0, 0].tolist() == [0, 0, 4, 1]
    g3 = PoolGeometry(1, 1, 2, 8, 2, 2, 1, 2)  # stride_h 1: the general loop
    pool_forward_compiled(x, g3, MAX, top, index)
    assert index[0, 0, 0].tolist() == [0, 0, 4, 1]
    assert np.signbit(top[0, 0, 0, :2]).tolist() == [False, True]


@pytest.mark.filterwarnings("ignore:overflow", "ignore:invalid value")
@pytest.mark.parametrize("g", [GEOMETRIES[0], GEOMETRIES[2], GEOMETRIES[-3]])
def test_results_do_not_depend_on_the_workers(
    g: PoolGeometry, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tiny pieces, so even these small tensors are split between threads.
    monkeypatch.setattr(backend, "PARALLEL_MIN_BYTES", 64)
    x = tricky_values((g.num, g.channels, g.height, g.width), np.float32, 5)
    dy = np.random.default_rng(5).normal(size=(g.num, g.channels, g.out_h, g.out_w))
    runs = []
    for workers in (1, 2, 3):
        backend.set_workers(workers)
        try:
            runs.append(all_paths(x, dy.astype(np.float32), g))
        finally:
            backend.set_workers(None)
    for name in runs[0]:
        for other in runs[1:]:
            same_bits(runs[0][name][0], other[name][0])


# -- the NumPy tiling path -----------------------------------------------------------


TILE_CASES = [
    PoolGeometry(2, 3, 6, 8, 2, 2, 2, 2),  # LeNet's 2x2 stride 2
    PoolGeometry(2, 2, 6, 6, 3, 2, 3, 2),  # non-square
    PoolGeometry(1, 2, 4, 6, 1, 3, 1, 3),  # one kernel row
    PoolGeometry(1, 2, 6, 4, 3, 1, 3, 1),  # one kernel column
    PoolGeometry(1, 1, 17, 17, 17, 17, 17, 17),  # 289 offsets: uint16 argmax
]


def test_pool_tiles_detects_tilings() -> None:
    for g in TILE_CASES:
        assert pooling_tiles.pool_tiles(g)
    assert not pooling_tiles.pool_tiles(PoolGeometry(1, 1, 5, 5, 2, 2, 2, 2))  # ceil
    assert not pooling_tiles.pool_tiles(PoolGeometry(1, 1, 6, 6, 3, 3, 2, 2))
    assert not pooling_tiles.pool_tiles(PoolGeometry(1, 1, 6, 6, 2, 2, 2, 2, 1, 1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("g", TILE_CASES)
def test_tiled_max_pool_matches_general_path(g: PoolGeometry, dtype: type) -> None:
    # Same values (bitwise: NaN where NaN, signs of zeros), same argmax and
    # same bottom diff as the general path, on data full of ties.
    index_dtype = pooling.argmax_dtype(g.area)
    out_shape = (g.num, g.channels, g.out_h, g.out_w)
    buf = pooling_tiles.tile_buffers(g, dtype, index_dtype)
    for seed in range(3):
        x = tricky_values((g.num, g.channels, g.height, g.width), dtype, seed)
        top, index = np.empty(out_shape, dtype), np.empty(out_shape, index_dtype)
        pooling_tiles.max_pool_tiles_forward(x, g, top, index, buf)
        ref_top, ref_index = np.empty_like(top), np.empty_like(index)
        pooling.max_pool_forward(x, g, ref_top, ref_index)
        same_bits(top, ref_top)
        np.testing.assert_array_equal(index, ref_index)
        no_index = np.empty_like(top)
        pooling_tiles.max_pool_tiles_forward(x, g, no_index, None, buf)
        same_bits(no_index, ref_top)

        dy = np.random.default_rng(seed).normal(size=out_shape).astype(dtype)
        dy.reshape(-1)[::5] = -0.0
        dx = np.full_like(x, np.nan)
        pooling_tiles.max_pool_tiles_backward(dy, index, g, dx, buf)
        ref_dx = np.empty_like(x)
        pooling.max_pool_backward(dy, ref_index, g, ref_dx)
        same_bits(dx, ref_dx)


def test_tile_planes_definition() -> None:
    g = PoolGeometry(2, 2, 6, 6, 3, 2, 3, 2)
    x = np.arange(2 * 2 * 6 * 6, dtype=np.float64).reshape(2, 2, 6, 6)
    buf = pooling_tiles.tile_buffers(g, np.float64, np.uint8)
    planes = pooling_tiles.tile_planes(x, g, buf)
    for i in range(3):
        for j in range(2):
            expect = x[:, :, i::3, j::2].reshape(-1)
            np.testing.assert_array_equal(planes[i * 2 + j], expect)


def random_geometries(count: int, seed: int) -> list[PoolGeometry]:
    """Small geometries with every kernel, stride and pad Caffe accepts."""
    rng = np.random.default_rng(seed)
    found = []
    while len(found) < count:
        kh, kw, sh, sw = (int(v) for v in rng.integers(1, 5, size=4))
        ph, pw = int(rng.integers(0, kh)), int(rng.integers(0, kw))
        h, w = (int(v) for v in rng.integers(1, 9, size=2))
        ceil_mode = bool(rng.integers(0, 2))
        g = PoolGeometry(1, 2, h, w, kh, kw, sh, sw, ph, pw, ceil_mode)
        if g.out_h > 0 and g.out_w > 0:
            found.append(g)
    return found


@pytest.mark.filterwarnings("ignore:overflow", "ignore:invalid value")
def test_random_geometries_compiled_numpy_and_reference_agree() -> None:
    for g in random_geometries(40, 11):
        shape = (g.num, g.channels, g.height, g.width)
        x = tricky_values(shape, np.float64, 3)
        out_shape = (g.num, g.channels, g.out_h, g.out_w)
        dy = np.random.default_rng(4).normal(size=out_shape)
        results = all_paths(x, dy, g)
        for compiled, numpy_path in results.values():
            same_bits(compiled, numpy_path)
        # MAX against Caffe's loop, written out element by element.
        top, index = results["max"][0], results["argmax"][0]
        for n, c, y, z in np.ndindex(*out_shape):
            h0, w0 = y * g.stride_h - g.pad_h, z * g.stride_w - g.pad_w
            best, where = -FLT_MAX, g.area
            for i in range(g.kernel_h):
                for j in range(g.kernel_w):
                    if 0 <= h0 + i < g.height and 0 <= w0 + j < g.width:
                        if x[n, c, h0 + i, w0 + j] > best:
                            best, where = x[n, c, h0 + i, w0 + j], i * g.kernel_w + j
            assert top[n, c, y, z] == best and index[n, c, y, z] == where, g
