"""Convolution's lowering interface: the GEMM steps of Caffe's
base_conv_layer.cpp for a whole batch, and the one choice of strategy.

Caffe's BaseConvolutionLayer runs a convolution image by image as three GEMM
steps around im2col (util/im2col.cpp), plus two bias GEMMs:

    forward_cpu_gemm(input, weights, output):  output = W x im2col(input)
    backward_cpu_gemm(output, weights, input): input = col2im(W^T x output)
    weight_cpu_gemm(input, output, weights):   weights += output x im2col(input)^T
    forward_cpu_bias(output, bias):            output += bias x ones
    backward_cpu_bias(bias, output):           bias += output x ones

Convolution's forward is the first step and its backward the other two;
Deconvolution runs the same steps with the roles swapped (its forward is
backward_gemm). So here, as in Caffe, `x` is always the image side, the one
im2col reads (Caffe's `input`: Convolution's bottom, Deconvolution's top),
and `y` the GEMM side (Caffe's `output`). Arrays are (N, C, *spatial) with
the batch first, W is the weight blob (M, C/group, *kernel), and every step
covers the whole batch and all groups in batched GEMM calls.

A ConvLowering is one way to run these steps; `choose_lowering` picks one
from the geometry (tests force one by replacing it), `make_lowering` builds
it. The strategies, each in its own module and registered in LOWERINGS:

- "per_image" (ops/per_image.py): per-image columns and stacked GEMMs that
  write NCHW directly; large output planes (LeNet conv1).
- "batch_inner" (ops/batch_inner.py): one column matrix with the batch as
  the innermost column index; small output planes.
- "row_shift" (ops/row_shift.py): batch-inner columns as the smaller
  row-shift matrix, one GEMM per output row; small planes with vertical
  stride and dilation 1 and one group (LeNet conv2).

The 2-D strategies take a ConvGeometry; per-image columns also take an
NDGeometry, for any number of spatial axes (Caffe's im2col_nd_cpu, used
there when the spatial axes are not two or force_nd_im2col is set).

Results differ from Caffe's only in the order of float32 sums. A lowering
keeps its buffers across iterations (through the layer's `buffer`), and the
columns its forward_gemm made can serve weight_gemm (Caffe rebuilds them
from the same bottom). Where the work is large enough, a lowering splits its
steps into independent pieces for the worker threads (backend.run_parallel),
each writing its own part of the result with the same GEMMs, so results do
not depend on the number of workers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import cached_property, partial
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from caffesolve.backend import array_module, parallel_parts, run_parallel, split_range
from caffesolve.ops.im2col import ConvGeometry, NDGeometry

Array = npt.NDArray[np.floating]
# A layer's `buffer(name, shape, dtype, fill=0.0)`: a work array kept across
# iterations under `name`.
BufferFn = Callable[..., Any]


class ConvLowering:
    """One strategy for the GEMM steps of base_conv_layer.cpp over a batch
    of the geometry `g` (the image side: num, channels, spatial sizes) into
    `num_output` channels (Caffe's conv_out_channels_) in `group` groups.

    `slot` tells apart the lowerings of one layer (one per bottom): each
    keeps its own columns, and shares the layer's other work arrays."""

    name: ClassVar[str] = ""

    def __init__(
        self,
        g: ConvGeometry | NDGeometry,
        num_output: int,
        group: int,
        buffer: BufferFn,
        slot: int = 0,
    ) -> None:
        self.g = g
        self.num_output = num_output
        self.group = group
        self.buffer = buffer
        self.slot = slot
        # True once this lowering's column buffer holds the columns of the
        # last x it lowered (weight_gemm may then reuse them).
        self.columns_ready = False

    @classmethod
    def applies(cls, g: ConvGeometry | NDGeometry, num_output: int, group: int) -> bool:
        """Whether this strategy can run the geometry."""
        return isinstance(g, ConvGeometry)

    # -- the steps ------------------------------------------------------------------

    def forward_gemm(
        self,
        x: Array,
        w: Array,
        y: Array,
        bias: Array | None = None,
        reuse_columns: bool = False,
    ) -> None:
        """y = W * x for every image and group (forward_cpu_gemm), plus the
        bias if given (forward_cpu_bias); keeps x's columns. With
        reuse_columns, the columns weight_gemm made of this same x are used
        as they are (Caffe's skip_im2col)."""
        raise NotImplementedError

    def output_columns(self, y: Array) -> Array:
        """The GEMM side y (N, M, oh, ow) in this lowering's layout, as the
        three backward steps read it (a view, or a copy in a buffer)."""
        raise NotImplementedError

    def backward_bias(self, dy: Array, bias_diff: Array) -> None:
        """bias_diff += dy summed over images and positions
        (backward_cpu_bias); dy from output_columns."""
        raise NotImplementedError

    def weight_gemm(
        self, x: Array, dy: Array, weight_diff: Array, reuse_columns: bool = False
    ) -> None:
        """weight_diff += dy x im2col(x)^T summed over the batch
        (weight_cpu_gemm); dy from output_columns. With reuse_columns, the
        columns forward_gemm made of this same x are used as they are."""
        raise NotImplementedError

    def backward_gemm(self, dy: Array, w: Array, dx: Array) -> None:
        """dx = col2im(W^T x dy) (backward_cpu_gemm), overwriting dx; dy
        from output_columns."""
        raise NotImplementedError

    def backward_gemms(
        self,
        x: Array,
        dy: Array,
        w: Array,
        dx: Array | None,
        weight_diff: Array | None,
    ) -> None:
        """Convolution's backward after the bias: weight_gemm (into
        weight_diff, reusing forward's columns) and backward_gemm (into dx),
        either may be None, as Caffe's Backward_cpu runs them image by
        image. Here the two steps run side by side on the workers (they
        read the same dy and write different arrays)."""
        steps: list[Callable[[], None]] = []
        if dx is not None:
            steps.append(partial(self.backward_gemm, dy, w, dx))
        if weight_diff is not None:
            steps.append(partial(self.weight_gemm, x, dy, weight_diff, True))
        if len(steps) > 1 and parallel_parts(dy.nbytes, 2) > 1:
            run_parallel(steps)
            return
        for step in steps:
            step()

    # -- shared by the strategies ------------------------------------------------------

    def column_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def columns(self, dtype: Any) -> Array:
        """This lowering's own column buffer."""
        return self.buffer(f"col{self.slot}", self.column_shape(), dtype)

    def im2col(self, x: Array) -> Array:
        """Lower x into the column buffer; returns it."""
        raise NotImplementedError

    def lowered(self, x: Array, reuse_columns: bool) -> Array:
        """x's columns: those already in the buffer if reuse_columns (and
        there are some), else made now."""
        if reuse_columns and self.columns_ready:
            return self.columns(x.dtype)
        return self.im2col(x)


# Bytes of columns per chunk of a chunked lowering: a chunk's columns stay in
# the core's cache (2 MiB of L2 here) between the lowering that writes them
# and the GEMMs that read them.
CHUNK_BYTES = 1 << 19
# Fixed parts of the batch for the workers; a chunked lowering sums each
# part's weight gradient in image order and adds the parts in order, so the
# result does not depend on the number of workers.
SEGMENTS = 2
# A batch whose columns take no more than this is lowered in one chunk per
# segment and its columns kept for the weight gradient (LeNet's conv1):
# remaking them would cost more than the cache saves.
KEEP_COLUMNS_BYTES = 1 << 22


class ChunkedLowering(ConvLowering):
    """A lowering that runs the batch chunk by chunk: each chunk holds as
    many images as CHUNK_BYTES of columns, so the GEMMs read the columns
    from cache right after they are made (on this machine 100-140 GFLOP/s
    on one core, against about 60 for GEMMs over the whole batch's columns,
    which come from memory). The loop is over cache blocks, each a batched
    call; backward makes the columns again, as Caffe's weight_cpu_gemm does,
    and runs a chunk's weight GEMM, data GEMM and col2im in turn while its
    columns are in cache. A batch with few columns (KEEP_COLUMNS_BYTES) is
    one chunk per segment, and its columns are kept for the weight gradient
    instead (`reusing` is then True while a step reads them). The batch is
    cut into SEGMENTS parts that run on the workers; the weight gradient
    sums in another order than Caffe's per-image accumulation (allowed,
    issue 18), the same whatever the number of workers. A strategy says what
    one chunk's steps are."""

    # True while a step reads the columns kept in the pieces' buffers.
    reusing = False

    def image_column_bytes(self) -> int:
        """Bytes of one image's columns (float32)."""
        raise NotImplementedError

    def forward_chunk(
        self,
        x: Array,
        w: Array,
        y: Array,
        bias: Array | None,
        c0: int,
        c1: int,
        piece: int,
    ) -> None:
        """forward_gemm (and the bias) for images c0 .. c1-1."""
        raise NotImplementedError

    def backward_chunk(
        self,
        x: Array,
        dy: Array,
        w: Array,
        dx: Array | None,
        weight_sum: Array | None,
        c0: int,
        c1: int,
        piece: int,
    ) -> None:
        """For images c0 .. c1-1: weight_sum += their weight gradient (in
        weight_sum_shape's layout) if weight_sum is given, and their dx if
        dx is given."""
        raise NotImplementedError

    def weight_sum_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def add_weight_sum(self, total: Array, weight_diff: Array) -> None:
        """weight_diff += total (weight_sum_shape's layout)."""
        raise NotImplementedError

    @cached_property
    def keeps_columns(self) -> bool:
        """Whether the batch's columns are kept (one chunk per segment)."""
        return self.g.num * self.image_column_bytes() <= KEEP_COLUMNS_BYTES

    @cached_property
    def chunk(self) -> int:
        """Images per chunk."""
        if self.keeps_columns:
            return -(-self.g.num // SEGMENTS)
        return max(1, min(self.g.num, CHUNK_BYTES // self.image_column_bytes()))

    def _reuse(self, reuse_columns: bool) -> None:
        """Set `reusing` for the next step: the caller vouches that x is the
        one last lowered, and the columns are still there."""
        self.reusing = reuse_columns and self.keeps_columns and self.columns_ready

    @property
    def chunk_geometry(self) -> Any:
        """The geometry the chunks' steps take (the lowering's own)."""
        return self.g

    def part(self, num: int) -> Any:
        """chunk_geometry for `num` images (a chunk), made once."""
        parts = self.__dict__.setdefault("_parts", {})
        if num not in parts:
            parts[num] = dataclasses.replace(self.chunk_geometry, num=num)
        return parts[num]

    def piece_buffer(
        self, name: str, piece: int, shape: tuple[int, ...], dtype: Any
    ) -> Array:
        """A work array of one piece of the batch (each worker has its own)."""
        return self.buffer(f"{name}{self.slot}.{piece}", shape, dtype)

    def _segments(self, fn: Callable[[int, int, int], None], dtype: Any) -> None:
        """fn(piece, n0, n1) for each segment of the batch: on the workers,
        or one after the other when the batch is too small to be worth a
        hand-off (the same segments either way)."""
        segments = split_range(self.g.num, SEGMENTS)
        nbytes = self.g.num * self.image_column_bytes() * np.dtype(dtype).itemsize // 4
        pieces = [partial(fn, i, n0, n1) for i, (n0, n1) in enumerate(segments)]
        if parallel_parts(nbytes, len(pieces)) > 1:
            run_parallel(pieces)
            return
        for piece in pieces:
            piece()

    def _chunks(self, n0: int, n1: int) -> list[tuple[int, int]]:
        return [(c, min(c + self.chunk, n1)) for c in range(n0, n1, self.chunk)]

    def forward_gemm(
        self,
        x: Array,
        w: Array,
        y: Array,
        bias: Array | None = None,
        reuse_columns: bool = False,
    ) -> None:
        """Chunk by chunk (reusing kept columns where asked and possible)."""

        def segment(piece: int, n0: int, n1: int) -> None:
            for c0, c1 in self._chunks(n0, n1):
                self.forward_chunk(x, w, y, bias, c0, c1, piece)

        self._reuse(reuse_columns)
        self._segments(segment, x.dtype)
        self.columns_ready = self.keeps_columns

    def output_columns(self, y: Array) -> Array:
        """y itself: the chunks take their images' part of it."""
        return y

    def backward_bias(self, dy: Array, bias_diff: Array) -> None:
        add_bias_diff(dy, bias_diff, self.buffer)

    def weight_gemm(
        self, x: Array, dy: Array, weight_diff: Array, reuse_columns: bool = False
    ) -> None:
        self._backward(x, dy, dy, None, weight_diff, reuse_columns)

    def backward_gemm(self, dy: Array, w: Array, dx: Array) -> None:
        self._backward(dy, dy, w, dx, None, False)

    def backward_gemms(
        self,
        x: Array,
        dy: Array,
        w: Array,
        dx: Array | None,
        weight_diff: Array | None,
    ) -> None:
        self._backward(x, dy, w, dx, weight_diff, True)

    def _backward(
        self,
        x: Array,
        dy: Array,
        w: Array,
        dx: Array | None,
        weight_diff: Array | None,
        reuse_columns: bool,
    ) -> None:
        """Each chunk's backward_chunk, the weight sums of the segments added
        in order at the end."""
        sums = None
        if weight_diff is not None:
            shape = (SEGMENTS,) + self.weight_sum_shape()
            sums = self.buffer(f"weight_sums{self.slot}", shape, dy.dtype)

        def segment(piece: int, n0: int, n1: int) -> None:
            weight_sum = None
            if sums is not None:
                weight_sum = sums[piece]
                weight_sum[...] = 0
            for c0, c1 in self._chunks(n0, n1):
                self.backward_chunk(x, dy, w, dx, weight_sum, c0, c1, piece)

        self._reuse(reuse_columns and weight_diff is not None)
        self._segments(segment, dy.dtype)
        if sums is not None and weight_diff is not None:
            segments = len(split_range(self.g.num, SEGMENTS))
            self.add_weight_sum(sums[:segments].sum(axis=0), weight_diff)
            self.columns_ready = self.keeps_columns


LOWERINGS: dict[str, type[ConvLowering]] = {}


def register_lowering(cls: type[ConvLowering]) -> type[ConvLowering]:
    """Class decorator: add a strategy to LOWERINGS under its name."""
    if not cls.name or cls.name in LOWERINGS:
        raise RuntimeError(f"bad or duplicate lowering {cls.name!r}")
    LOWERINGS[cls.name] = cls
    return cls


def prefer_batch_inner(g: ConvGeometry, num_output: int) -> bool:
    """Batch-inner columns when they copy less than per-image columns.

    Per-image im2col copies K*N*oh rows of `ow` values (a fixed cost per
    row); batch-inner pays element-wise transposes of the bottom and top.
    Roughly one short row costs as much as four transposed elements.
    """
    rows = g.kernel_dim * g.num * g.out_h
    transposed = g.num * (
        g.channels * g.height * g.width + num_output * g.out_h * g.out_w
    )
    return 4 * rows > transposed


# Output planes smaller than this (positions per image) take batch-inner
# columns: their per-image and per-row GEMMs would be too small.
MIN_CHUNKED_PLANE = 64


def choose_lowering(g: ConvGeometry | NDGeometry, num_output: int, group: int) -> str:
    """The strategy for a geometry (measured on CIFAR-10, LeNet and zoo-like
    shapes, benchmarks/bench_conv.py): per-image columns where per-image
    copies are cheap (large output planes) and for any N-D geometry; else
    batch-inner columns for tiny output planes, the row-shift matrix where
    it applies, and per-image columns otherwise."""
    if isinstance(g, NDGeometry) or not prefer_batch_inner(g, num_output):
        return "per_image"
    if g.out_h * g.out_w < MIN_CHUNKED_PLANE:
        return "batch_inner"
    if LOWERINGS["row_shift"].applies(g, num_output, group):
        return "row_shift"
    return "per_image"


def make_lowering(
    g: ConvGeometry | NDGeometry,
    num_output: int,
    group: int,
    buffer: BufferFn,
    slot: int = 0,
) -> ConvLowering:
    """The lowering choose_lowering picks, built."""
    cls = LOWERINGS[choose_lowering(g, num_output, group)]
    return cls(g, num_output, group, buffer, slot)


def add_bias(y: Array, bias: Array) -> None:
    """forward_cpu_bias for every image: y (N, M, *spatial) += bias[m]."""
    y.reshape(y.shape[0], y.shape[1], -1)[...] += bias[:, None]


def add_bias_diff(dy: Array, bias_diff: Array, buffer: BufferFn) -> None:
    """backward_cpu_bias for every image: bias_diff[m] += the sum of
    dy (N, M, *spatial) over images and positions, as a GEMV with ones per
    image (Caffe's bias_multiplier_), added up over the images."""
    d = dy.reshape(dy.shape[0], dy.shape[1], -1)
    ones = buffer("ones", (d.shape[2],), d.dtype, fill=1.0)
    bias_diff += array_module(d).matmul(d, ones).sum(axis=0)
