"""Tests of the lowering functions (caffesolve/im2col.py), after Caffe's
test_im2col_layer.cpp / test_im2col_kernel: every column element against its
definition, col2im as the exact adjoint of im2col, both column layouts, the
output-size formulas, and buffer reuse."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from caffesolve import im2col as lw
from caffesolve.im2col import ConvGeometry, PoolGeometry

GEOMETRIES = [
    ConvGeometry(2, 3, 5, 6, 3, 3),
    ConvGeometry(2, 2, 7, 5, 3, 2, 2, 1, 1, 2),
    ConvGeometry(1, 2, 8, 8, 3, 3, 1, 2, 2, 1, 2, 3),
    ConvGeometry(3, 1, 4, 4, 1, 1),
    ConvGeometry(2, 2, 6, 6, 2, 2, 3, 3),
    ConvGeometry(2, 1, 3, 4, 4, 4, 2, 2),  # kernel past the image: 1 output
]


def column_index(g: ConvGeometry, n: int, y: int, x: int, batch_inner: bool) -> int:
    if batch_inner:
        return (y * g.out_w + x) * g.num + n
    return (n * g.out_h + y) * g.out_w + x


@pytest.mark.parametrize("batch_inner", [False, True])
@pytest.mark.parametrize("g", GEOMETRIES)
def test_im2col_elements(g: ConvGeometry, batch_inner: bool) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(g.num, g.channels, g.height, g.width))
    col = lw.im2col(x, g, batch_inner)
    assert col.shape == (g.channels * g.kernel_h * g.kernel_w, g.col_cols)
    for n, c, i, j, y, xx in itertools.product(
        range(g.num), range(g.channels), range(g.kernel_h), range(g.kernel_w),
        range(g.out_h), range(g.out_w),
    ):  # fmt: skip
        h = y * g.stride_h - g.pad_h + i * g.dilation_h
        w = xx * g.stride_w - g.pad_w + j * g.dilation_w
        inside = 0 <= h < g.height and 0 <= w < g.width
        expect = x[n, c, h, w] if inside else 0.0
        row = (c * g.kernel_h + i) * g.kernel_w + j
        assert col[row, column_index(g, n, y, xx, batch_inner)] == expect


@pytest.mark.parametrize("batch_inner", [False, True])
@pytest.mark.parametrize("g", GEOMETRIES)
def test_col2im_is_adjoint_of_im2col(g: ConvGeometry, batch_inner: bool) -> None:
    # <im2col(x), c> == <x, col2im(c)> for all x, c: col2im adds every column
    # value back where im2col read it (and drops what came from padding).
    rng = np.random.default_rng(1)
    x = rng.normal(size=(g.num, g.channels, g.height, g.width))
    c = rng.normal(size=(g.kernel_dim, g.col_cols))
    lhs = np.sum(lw.im2col(x, g, batch_inner) * c)
    rhs = np.sum(x * lw.col2im(c, g, batch_inner))
    assert lhs == pytest.approx(rhs, rel=1e-12)


@pytest.mark.parametrize("batch_inner", [False, True])
def test_buffers_reused_and_padding_stays_zero(batch_inner: bool) -> None:
    g = ConvGeometry(2, 2, 4, 4, 3, 3, 1, 1, 1, 1)
    rng = np.random.default_rng(2)
    work = np.zeros(lw.padded_shape(g, batch_inner))
    out = np.empty((g.kernel_dim, g.col_cols))
    diff_work = np.full(lw.padded_shape(g, batch_inner), 99.0)  # dirty on purpose
    dx = np.empty((g.num, g.channels, g.height, g.width))
    for _ in range(2):
        x = rng.normal(size=dx.shape)
        lw.im2col(x, g, batch_inner, out=out, work=work)
        np.testing.assert_array_equal(out, lw.im2col(x, g, batch_inner))
        c = rng.normal(size=out.shape)
        lw.col2im(c, g, batch_inner, out=dx, work=diff_work)
        np.testing.assert_array_equal(dx, lw.col2im(c, g, batch_inner))


def test_float32_stays_float32() -> None:
    g = GEOMETRIES[1]
    x = np.ones((g.num, g.channels, g.height, g.width), np.float32)
    for batch_inner in (False, True):
        col = lw.im2col(x, g, batch_inner)
        assert col.dtype == np.float32
        assert lw.col2im(col, g, batch_inner).dtype == np.float32


def test_layout_round_trips() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, 2, 4, 5))
    np.testing.assert_array_equal(lw.chwn_to_nchw(lw.nchw_to_chwn(x)), x)
    y = rng.normal(size=(3, 4, 2, 2))
    for batch_inner in (False, True):
        cols = np.empty((4, 3 * 2 * 2))
        lw.nchw_to_columns(y, batch_inner, cols)
        back = np.empty_like(y)
        lw.columns_to_nchw(cols, 3, batch_inner, back)
        np.testing.assert_array_equal(back, y)


# -- sizes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size,kernel,stride,pad,dilation,expect",
    [
        (28, 5, 1, 0, 1, 24),  # LeNet conv1
        (12, 5, 1, 0, 1, 8),  # LeNet conv2
        (6, 3, 2, 0, 1, 2),
        (5, 3, 2, 1, 1, 3),
        (9, 3, 2, 1, 2, 4),  # extent 5: (9 + 2 - 5) // 2 + 1
        (227, 11, 4, 0, 1, 55),  # AlexNet conv1
    ],
)
def test_conv_out_size(
    size: int, kernel: int, stride: int, pad: int, dilation: int, expect: int
) -> None:
    assert lw.conv_out_size(size, kernel, stride, pad, dilation) == expect


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
    ],
)
def test_pool_out_size(
    size: int, kernel: int, stride: int, pad: int, ceil_mode: bool, expect: int
) -> None:
    assert lw.pool_out_size(size, kernel, stride, pad, ceil_mode) == expect


def test_prefer_batch_inner_for_lenet() -> None:
    conv1 = ConvGeometry(64, 1, 28, 28, 5, 5)
    conv2 = ConvGeometry(64, 20, 12, 12, 5, 5)
    assert not lw.prefer_batch_inner(conv1, 20)
    assert lw.prefer_batch_inner(conv2, 50)


def test_ave_pool_divisor_hand_values() -> None:
    # 4 wide, kernel 3, stride 2, pad 1: windows start at -1, 1, 3 and end
    # at min(start + 3, 5): sizes 3, 3, 2.
    g = PoolGeometry(1, 1, 4, 4, 3, 3, 2, 2, 1, 1)
    np.testing.assert_array_equal(
        lw.ave_pool_divisor(g, np.float64), np.outer([3, 3, 2], [3, 3, 2])
    )


def test_argmax_to_caffe_mask() -> None:
    g = PoolGeometry(1, 1, 4, 5, 2, 3, 2, 2, 1, 1)
    argmax = np.zeros((1, 1, g.out_h, g.out_w), np.uint8)
    argmax[0, 0, 1, 1] = 1 * 3 + 2  # kernel row 1, column 2
    mask = lw.argmax_to_caffe_mask(argmax, g, np.float32)
    # output (1, 1) starts at (1*2 - 1, 1*2 - 1) = (1, 1): element (2, 3)
    assert mask[0, 0, 1, 1] == 2 * 5 + 3
