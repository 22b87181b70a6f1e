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

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from caffesolve.backend import array_module, parallel_parts, run_parallel
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


def choose_lowering(g: ConvGeometry | NDGeometry, num_output: int, group: int) -> str:
    """The strategy for a geometry: per-image columns for large output
    planes (and any N-D geometry), else batch-inner columns, as the
    row-shift matrix where that applies."""
    if isinstance(g, NDGeometry) or not prefer_batch_inner(g, num_output):
        return "per_image"
    if LOWERINGS["row_shift"].applies(g, num_output, group):
        return "row_shift"
    return "batch_inner"


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


def run_steps(steps: Sequence[Callable[[], None]], nbytes: int) -> None:
    """Run backward steps that read the same top diff (`nbytes` of it) and
    write different arrays (backward_gemm, weight_gemm): side by side on the
    workers when the work is large enough, else one after the other."""
    if len(steps) > 1 and parallel_parts(nbytes, 2) > 1:
        run_parallel(steps)
        return
    for step in steps:
        step()


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
