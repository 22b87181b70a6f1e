"""Tests of the lowering functions (caffesolve/ops/im2col.py, row_shift.py,
pooling.py), after Caffe's test_im2col_layer.cpp / test_im2col_kernel: every
column element against its definition, col2im as the exact adjoint of
im2col, both column layouts, the output-size formulas, and buffer reuse."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import pytest

from caffesolve import kernels
from caffesolve.ops import conv, im2col, row_shift
from caffesolve.ops.im2col import ConvGeometry

GEOMETRIES = [
    ConvGeometry(2, 3, 5, 6, 3, 3),
    ConvGeometry(2, 2, 7, 5, 3, 2, 2, 1, 1, 2),
    ConvGeometry(1, 2, 8, 8, 3, 3, 1, 2, 2, 1, 2, 3),
    ConvGeometry(3, 1, 4, 4, 1, 1),
    ConvGeometry(2, 2, 6, 6, 2, 2, 3, 3),
    ConvGeometry(2, 1, 3, 4, 4, 4, 2, 2),  # kernel past the image: 1 output
]


def column_index(g: ConvGeometry, n: int, y: int, x: int) -> int:
    """Column of image n's output (y, x) in the batch-inner matrix."""
    return (y * g.out_w + x) * g.num + n


def col2im(
    col: np.ndarray,
    g: ConvGeometry,
    out: np.ndarray | None = None,
    work: np.ndarray | None = None,
) -> np.ndarray:
    """Caffe's col2im_cpu for batch-inner columns, from the lowering's two
    steps (add back into the padded image, crop)."""
    if out is None:
        out = np.empty((g.num, g.channels, g.height, g.width), col.dtype)
    if work is None:
        work = np.empty(im2col.padded_shape(g, True), col.dtype)
    work[...] = 0
    im2col.col2im_add(col, g, work)
    im2col.col2im_finish(work, g, out)
    return out


def per_image_from_batch_inner(col: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """Batch-inner columns (K, oh*ow*N) rearranged as per-image (N, K, oh*ow)."""
    return col.reshape(g.kernel_dim, -1, g.num).transpose(2, 0, 1)


def caffe_im2col_values(
    x: np.ndarray, g: ConvGeometry
) -> Iterator[tuple[int, int, int, int, float]]:
    """Every element of Caffe's im2col, from its loop's index arithmetic:
    (image n, row (c, i, j), output y, output x, value; 0 in the padding)."""
    for n, c, i, j, y, xx in itertools.product(
        range(g.num), range(g.channels), range(g.kernel_h), range(g.kernel_w),
        range(g.out_h), range(g.out_w),
    ):  # fmt: skip
        h = y * g.stride_h - g.pad_h + i * g.dilation_h
        w = xx * g.stride_w - g.pad_w + j * g.dilation_w
        inside = 0 <= h < g.height and 0 <= w < g.width
        row = (c * g.kernel_h + i) * g.kernel_w + j
        yield n, row, y, xx, x[n, c, h, w] if inside else 0.0


@pytest.mark.parametrize("g", GEOMETRIES)
def test_im2col_elements(g: ConvGeometry) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(g.num, g.channels, g.height, g.width))
    col = im2col.im2col(x, g)
    assert col.shape == (g.channels * g.kernel_h * g.kernel_w, g.col_cols)
    for n, row, y, xx, expect in caffe_im2col_values(x, g):
        assert col[row, column_index(g, n, y, xx)] == expect


@pytest.mark.parametrize("g", GEOMETRIES)
def test_col2im_is_adjoint_of_im2col(g: ConvGeometry) -> None:
    # <im2col(x), c> == <x, col2im(c)> for all x, c: col2im adds every column
    # value back where im2col read it (and drops what came from padding).
    rng = np.random.default_rng(1)
    x = rng.normal(size=(g.num, g.channels, g.height, g.width))
    c = rng.normal(size=(g.kernel_dim, g.col_cols))
    lhs = np.sum(im2col.im2col(x, g) * c)
    rhs = np.sum(x * col2im(c, g))
    assert lhs == pytest.approx(rhs, rel=1e-12)


def col2im_per_image(
    col: np.ndarray,
    g: ConvGeometry,
    out: np.ndarray | None = None,
    work: np.ndarray | None = None,
) -> np.ndarray:
    if out is None:
        out = np.empty((g.num, g.channels, g.height, g.width), col.dtype)
    return im2col.col2im_per_image(col, g, out, work)


@pytest.mark.parametrize("batch_inner", [False, True])
def test_buffers_reused_and_padding_stays_zero(batch_inner: bool) -> None:
    g = ConvGeometry(2, 2, 4, 4, 3, 3, 1, 1, 1, 1)
    rng = np.random.default_rng(2)
    work = np.zeros(im2col.padded_shape(g, batch_inner))
    diff_work = np.full(im2col.padded_shape(g, batch_inner), 99.0)  # dirty
    dx = np.empty((g.num, g.channels, g.height, g.width))
    if batch_inner:
        lower, lift = im2col.im2col, col2im
        out = np.empty((g.kernel_dim, g.col_cols))
    else:
        lower, lift = im2col.im2col_per_image, col2im_per_image
        out = np.empty(im2col.per_image_shape(g))
    for _ in range(2):
        x = rng.normal(size=dx.shape)
        lower(x, g, out=out, work=work)
        np.testing.assert_array_equal(out, lower(x, g))
        c = rng.normal(size=out.shape)
        lift(c, g, out=dx, work=diff_work)
        np.testing.assert_array_equal(dx, lift(c, g))


def test_float32_stays_float32() -> None:
    g = GEOMETRIES[1]
    x = np.ones((g.num, g.channels, g.height, g.width), np.float32)
    col = im2col.im2col(x, g)
    assert col.dtype == np.float32
    assert col2im(col, g).dtype == np.float32
    col = im2col.im2col_per_image(x, g)
    assert col.dtype == np.float32
    assert col2im_per_image(col, g).dtype == np.float32


def test_layout_round_trips() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, 2, 4, 5))
    np.testing.assert_array_equal(im2col.chwn_to_nchw(im2col.nchw_to_chwn(x)), x)
    y = rng.normal(size=(3, 4, 2, 2))
    cols = np.empty((4, 3 * 2 * 2))
    im2col.nchw_to_columns(y, cols)
    back = np.empty_like(y)
    im2col.columns_to_nchw(cols, 3, back)
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
    assert im2col.conv_out_size(size, kernel, stride, pad, dilation) == expect


def test_prefer_batch_inner_for_lenet() -> None:
    conv1 = ConvGeometry(64, 1, 28, 28, 5, 5)
    conv2 = ConvGeometry(64, 20, 12, 12, 5, 5)
    assert not conv.prefer_batch_inner(conv1, 20)
    assert conv.prefer_batch_inner(conv2, 50)


# -- per-image columns and the row-shift lowering -------------------------------------


@pytest.mark.parametrize("g", GEOMETRIES)
def test_im2col_per_image_elements(g: ConvGeometry) -> None:
    # col[n] is Caffe's im2col of image n: row (c, i, j), column (y, x).
    rng = np.random.default_rng(4)
    x = rng.normal(size=(g.num, g.channels, g.height, g.width))
    work = np.zeros(im2col.padded_shape(g, False)) if g.has_pad else None
    col = im2col.im2col_per_image(x, g, work=work)
    assert col.shape == (g.num, g.kernel_dim, g.out_h * g.out_w)
    for n, row, y, xx, expect in caffe_im2col_values(x, g):
        assert col[n, row, y * g.out_w + xx] == expect
    # the same numbers as the batch-inner matrix, image by image
    batch_inner = im2col.im2col(x, g)
    np.testing.assert_array_equal(col, per_image_from_batch_inner(batch_inner, g))


@pytest.mark.parametrize("g", GEOMETRIES)
def test_col2im_per_image_is_adjoint(g: ConvGeometry) -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(g.num, g.channels, g.height, g.width))
    c = rng.normal(size=im2col.per_image_shape(g))
    work = np.full(im2col.padded_shape(g, False), 7.0) if g.has_pad else None
    dx = np.full_like(x, np.nan)  # must be overwritten everywhere
    im2col.col2im_per_image(c, g, dx, work)
    lhs = np.sum(im2col.im2col_per_image(x, g) * c)
    assert lhs == pytest.approx(np.sum(x * dx), rel=1e-12)


def test_im2col_per_image_float32_runs_copy() -> None:
    # stride_w 1 in float32: the run-copy path (rows as records) on a padded
    # and an unpadded image, against the strided-window definition.
    rng = np.random.default_rng(6)
    for g in (
        ConvGeometry(3, 2, 9, 8, 3, 2, 2, 1, 1, 2, 1, 2),
        ConvGeometry(2, 1, 7, 7, 5, 5),
    ):
        x = rng.normal(size=(g.num, g.channels, g.height, g.width)).astype(np.float32)
        shape = im2col.padded_shape(g, False)
        work = np.zeros(shape, np.float32) if g.has_pad else None
        col = im2col.im2col_per_image(x, g, work=work)
        assert col.dtype == np.float32
        flat = im2col.im2col(x.astype(np.float64), g)
        expect = per_image_from_batch_inner(flat, g)
        np.testing.assert_array_equal(col, expect.astype(np.float32))


ROW_SHIFT_GEOMETRIES = [g for g in GEOMETRIES if row_shift.row_shift_ok(g)] + [
    ConvGeometry(3, 2, 6, 7, 2, 3, 1, 2, 1, 0, 1, 2),  # stride_w 2, dilation_w 2
    ConvGeometry(2, 2, 6, 5, 3, 3, 1, 1, 2, 1),  # pad 2 rows, 1 column
]


@pytest.fixture(params=["compiled", "numpy"])
def paths(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run a test with the compiled kernels (kernels.py) and with the NumPy
    paths they replace."""
    with kernels.forced(request.param == "numpy"):
        assert kernels.enabled() is (request.param == "compiled")
        yield request.param


@pytest.mark.parametrize("g", ROW_SHIFT_GEOMETRIES)
def test_row_shift_matches_im2col(g: ConvGeometry, paths: str) -> None:
    # Forward, weight gradient and bottom diff through the row-shift matrix
    # equal the ones through the full batch-inner column matrix.
    rng = np.random.default_rng(7)
    m = 3
    x = rng.normal(size=(g.num, g.channels, g.height, g.width))
    w = rng.normal(size=(m, g.channels, g.kernel_h, g.kernel_w))
    dy = rng.normal(size=(m, g.col_cols))
    col = im2col.im2col(x, g)

    shifted = np.empty(row_shift.shifted_shape(g))
    work = np.zeros(im2col.padded_shape(g, True))
    row_shift.row_shift_columns(x, g, shifted, work)
    rows = shifted.reshape(g.padded_h, g.channels, g.kernel_w, g.out_w, g.num)
    for h, j, xx in itertools.product(
        range(g.padded_h), range(g.kernel_w), range(g.out_w)
    ):  # the definition, element by element
        hh = h - g.pad_h
        ww = xx * g.stride_w + j * g.dilation_w - g.pad_w
        inside = 0 <= hh < g.height and 0 <= ww < g.width
        expect = x[:, :, hh, ww].T if inside else 0.0
        np.testing.assert_array_equal(rows[h, :, j, xx], expect)

    y = np.full((m, g.col_cols), np.nan)
    row_shift.row_shift_forward(row_shift.row_shift_weights(w), shifted, g, y)
    np.testing.assert_allclose(y, w.reshape(m, -1) @ col, rtol=1e-12, atol=1e-12)

    dy_rows = dy.reshape(m, g.out_h, -1).transpose(1, 0, 2).copy()
    total = np.zeros((g.kernel_h * g.channels * g.kernel_w, m))
    row_shift.row_shift_weight_gemm(dy_rows, shifted, g, total, np.empty_like(total))
    dw = row_shift.row_shift_weight_layout(total, g)
    np.testing.assert_allclose(
        dw, (dy @ col.T).reshape(w.shape), rtol=1e-12, atol=1e-12
    )

    dx = np.full_like(x, np.nan)
    acc = np.full(im2col.padded_shape(g, True), 5.0)  # dirty on purpose
    sdiff = np.full(row_shift.shifted_shape(g), np.nan)
    row_shift.row_shift_backward_data(w, dy_rows, g, sdiff, acc, dx)
    expect = col2im(w.reshape(m, -1).T @ dy, g)
    np.testing.assert_allclose(dx, expect, rtol=1e-12, atol=1e-12)


def test_row_shift_only_for_vertical_stride_and_dilation_one() -> None:
    assert row_shift.row_shift_ok(ConvGeometry(1, 1, 5, 5, 3, 3, 1, 2))
    assert not row_shift.row_shift_ok(ConvGeometry(1, 1, 5, 5, 3, 3, 2, 1))
    assert not row_shift.row_shift_ok(ConvGeometry(1, 1, 9, 9, 3, 3, 1, 1, 0, 0, 2, 1))


@pytest.mark.parametrize("g", ROW_SHIFT_GEOMETRIES)
def test_row_shift_compiled_kernels_give_the_numpy_bits(g: ConvGeometry) -> None:
    rng = np.random.default_rng(8)
    x = rng.normal(size=(g.num, g.channels, g.height, g.width)).astype(np.float32)
    w = rng.normal(size=(3, g.channels, g.kernel_h, g.kernel_w)).astype(np.float32)
    dy_rows = rng.normal(size=(g.out_h, 3, g.out_w * g.num)).astype(np.float32)
    results = []
    for numpy_path in (False, True):
        with kernels.forced(numpy_path):
            shifted = np.full(row_shift.shifted_shape(g), np.nan, np.float32)
            work = np.zeros(im2col.padded_shape(g, True), np.float32)
            row_shift.row_shift_columns(x, g, shifted, work)
            dx = np.full_like(x, np.nan)
            sdiff = np.empty(row_shift.shifted_shape(g), np.float32)
            row_shift.row_shift_backward_data(w, dy_rows, g, sdiff, work, dx)
            results.append((shifted, dx))
    for got, ref in zip(*results):
        np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("g", GEOMETRIES + ROW_SHIFT_GEOMETRIES)
def test_col2im_compiled_kernel_gives_the_numpy_bits(g: ConvGeometry) -> None:
    # The compiled adds of col2im_per_image (kernels on) against its NumPy
    # loop (kernels off): the same additions in the same order.
    rng = np.random.default_rng(9)
    c = rng.normal(size=im2col.per_image_shape(g)).astype(np.float32)
    results = []
    for numpy_path in (False, True):
        with kernels.forced(numpy_path):
            work = np.full(im2col.padded_shape(g, False), 3.0, np.float32)
            dx = np.full((g.num, g.channels, g.height, g.width), np.nan, np.float32)
            im2col.col2im_per_image(c, g, dx, work if g.has_pad else None)
            results.append(dx)
    np.testing.assert_array_equal(results[0], results[1])
