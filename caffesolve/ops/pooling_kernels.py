"""Compiled pooling loops (numba, caffesolve.kernels) for MAX and AVE of any
kernel, stride and pad, forward and backward: Caffe's arithmetic in Caffe's
order, the same bits as the NumPy paths of ops/pooling.py (the tests check
it), split over the worker threads by image planes (backend.run_parallel:
each plane is computed alike, whatever the number of workers).

The general loop splits each image plane into its stride_h x stride_w
"phases" (canvas rows hc = mh*stride_h + rh, columns wc = m*stride_w + rw,
canvas = the image moved by the pad; the rest holds -FLT_MAX for MAX, 0 for
AVE). Window offset (i, j) of output (y, x) is then element (y + i //
stride_h, x + j // stride_w) of phase (i % stride_h, j % stride_w), so one
window offset is one contiguous pass over all the outputs of a chunk of
planes, rows `cols` apart: vector compares and adds, where Caffe's loop
visits each window element by element. Each output still meets its window
elements in row-major order, from Caffe's start (-FLT_MAX, strict `>`; +0),
and backward adds each window's diff in Caffe's output order (the offsets
reversed), so the results are Caffe's. The passes also cover the phase
positions no output reads (the last (kernel-1)/stride rows and columns of
each plane): where those are most of the work (global pooling, kernels
nearly as large as the image), Caffe's own loop, window by window, is
faster and runs instead. 2x2 windows with stride 2 (LeNet's) have loops of
their own, 2x (with the argmax) to 3.5x faster than the general one there.
"""

from __future__ import annotations

import numpy as np

from caffesolve.backend import parallel_parts, run_parallel, split_range
from caffesolve.kernels import compiled, takes
from caffesolve.ops.pooling import (
    AVE,
    FLT_MAX,
    MAX,
    Array,
    Index,
    PoolGeometry,
    ave_pool_backward,
    ave_pool_forward,
)

# Phase buffers of about this many bytes per chunk of planes (stays in L2),
# and outputs per strip of the passes (their running values stay in L1).
CHUNK_BYTES = 1 << 16
STRIP = 512


def is_2x2(g: PoolGeometry) -> bool:
    """2x2 windows with stride 2 tiling the image (the 2x2 loops' case)."""
    return (
        g.kernel_h == g.kernel_w == g.stride_h == g.stride_w == 2
        and not g.pad_h
        and not g.pad_w
        and g.height == 2 * g.out_h
        and g.width == 2 * g.out_w
    )


def phases_pay(g: PoolGeometry) -> bool:
    """True unless the outputs fill under 1/8 of the phase positions that
    the passes cover (measured: the window loop is faster below about 1/8,
    and up to 10x at GoogLeNet's global 7x7)."""
    rows = g.out_h + (g.kernel_h - 1) // g.stride_h
    cols = g.out_w + (g.kernel_w - 1) // g.stride_w
    return 8 * g.out_h * g.out_w >= rows * cols


def _over_planes(g: PoolGeometry, nbytes: int, piece: object) -> None:
    """Call piece(first, stop) over the image planes, cut into pieces for
    the workers when the work is large enough (backend.parallel_parts)."""
    planes = g.num * g.channels
    parts = parallel_parts(nbytes, planes)
    if parts == 1:
        piece(0, planes)  # type: ignore[operator]
        return
    run_parallel(
        [lambda a=a, b=b: piece(a, b) for a, b in split_range(planes, parts)]  # type: ignore[misc,operator]
    )


def pool_forward_compiled(
    x: Array,
    g: PoolGeometry,
    method: int,
    out: Array,
    argmax: Index | None = None,
    divisor: Array | None = None,
) -> None:
    """MAX (with argmax, or None) or AVE (with `divisor`) forward of x into
    out: ops/pooling.py's max_pool_forward / ave_pool_forward, compiled."""
    planes = g.num * g.channels
    x3 = x.reshape(planes, g.height, g.width)
    out3 = out.reshape(planes, g.out_h, g.out_w)
    a3 = None if argmax is None else argmax.reshape(out3.shape)
    if method == MAX and is_2x2(g):
        if a3 is None:
            kernel = compiled(max_pool_2x2_max)
            _over_planes(g, x.nbytes, lambda a, b: kernel(x3[a:b], out3[a:b]))
        else:
            kernel = compiled(max_pool_2x2)
            _over_planes(g, x.nbytes, lambda a, b: kernel(x3[a:b], out3[a:b], a3[a:b]))
        return
    kernel = compiled(pool_phases_kernel if phases_pay(g) else pool_windows_kernel)
    div = np.ones((1, 1), x.dtype) if divisor is None else divisor
    index = np.zeros((planes, 1, 1), np.uint8) if a3 is None else a3
    geometry = (g.kernel_h, g.kernel_w, g.stride_h, g.stride_w, g.pad_h, g.pad_w)

    def piece(a: int, b: int) -> None:
        kernel(
            x3[a:b], out3[a:b], index[a:b], div, method, False, a3 is not None,
            *geometry,
        )  # fmt: skip

    _over_planes(g, x.nbytes, piece)


def pool_backward_compiled(
    dy: Array,
    g: PoolGeometry,
    method: int,
    dx: Array,
    argmax: Index | None = None,
    divisor: Array | None = None,
) -> None:
    """MAX (through `argmax`) or AVE (with `divisor`) backward of dy into dx
    (overwritten): max_pool_backward / ave_pool_backward, compiled."""
    planes = g.num * g.channels
    dy3 = dy.reshape(planes, g.out_h, g.out_w)
    dx3 = dx.reshape(planes, g.height, g.width)
    geometry = (g.kernel_h, g.kernel_w, g.stride_h, g.stride_w, g.pad_h, g.pad_w)
    if method == MAX:
        assert argmax is not None
        a3 = argmax.reshape(dy3.shape)
        kernel = compiled(max_pool_backward_kernel)
        _over_planes(
            g, dx.nbytes, lambda a, b: kernel(dy3[a:b], a3[a:b], dx3[a:b], *geometry)
        )
        return
    assert divisor is not None
    kernel = compiled(pool_phases_kernel if phases_pay(g) else pool_windows_kernel)
    index = np.zeros((planes, 1, 1), np.uint8)

    def piece(a: int, b: int) -> None:
        kernel(dx3[a:b], dy3[a:b], index[a:b], divisor, method, True, False, *geometry)

    _over_planes(g, dx.nbytes, piece)


# -- the general loop ------------------------------------------------------------


def pool_phases_kernel(  # type: ignore[no-untyped-def]
    image, pooled, argmax, divisor, method, backward, with_argmax,
    kh, kw, sh, sw, ph, pw,
):  # fmt: skip
    """Forward (backward False): MAX or AVE of image (P, H, W) into pooled
    (P, oh, ow), with the window offset of each MAX winner in argmax (kh*kw
    for none) when with_argmax. Backward: AVE's bottom diff into image from
    the top diff in pooled. divisor (oh, ow): AVE's pool sizes.

    Indices are unsigned where they can be, so numba emits no negative-index
    wraparound and LLVM vectorizes the passes."""
    u = np.uint64
    planes, height, width = image.shape
    oh, ow = pooled.shape[1], pooled.shape[2]
    rows = oh + (kh - 1) // sh  # phase rows and columns the windows reach
    cols = ow + (kw - 1) // sw
    psize = rows * cols
    fill = image.dtype.type(-FLT_MAX if method == MAX and not backward else 0)
    # Stride 1 without pad: the planes are their own (only) phase.
    direct = sh == 1 and sw == 1 and ph == 0 and pw == 0
    direct = direct and rows == height and cols == width
    chunk = min(planes, max(1, CHUNK_BYTES // (sh * sw * psize * image.itemsize)))
    step = chunk * psize  # from one phase to the next
    flat = image.reshape(image.size)
    pooled_flat = pooled.reshape(pooled.size)
    index_flat = argmax.reshape(argmax.size)
    div = divisor.reshape(divisor.size)
    phases = np.full(sh * sw * step, fill, image.dtype)
    best = np.zeros(step, image.dtype)  # outputs at q*psize + y*cols + x
    arg = np.empty(step, np.int32)
    none = np.int32(kh * kw)
    # Columns where both phases of stride 2 are inside the image.
    lo0, hi0 = max(0, (pw + 1) // 2), min(cols, (width + pw + 1) // 2)
    lo1, hi1 = max(0, pw // 2), min(cols, (width + pw) // 2)
    lo = max(lo0, lo1)
    hi = max(lo, min(hi0, hi1))

    # Where image row h starts in its phases (-1: past the windows), and the
    # phase columns m0 <= m < m1 of column phase rw inside the image: no
    # division in the loops below.
    row_start = np.full(height, -1, np.int64)
    for h in range(height):
        mh = (h + ph) // sh
        if mh < rows:
            row_start[h] = (h + ph - mh * sh) * sw * step + mh * cols
    col_m0 = np.empty(sw, np.int64)
    col_m1 = np.empty(sw, np.int64)
    for rw in range(sw):
        col_m0[rw] = max(0, (pw - rw + sw - 1) // sw)
        col_m1[rw] = max(col_m0[rw], min(cols, (width + pw - rw + sw - 1) // sw))

    def move_rows(p0, nq, to_phases):  # type: ignore[no-untyped-def]
        """Image rows of planes p0 .. p0+nq-1 into their phases, or back."""
        for q in range(nq):
            for h in range(height):
                if row_start[h] < 0:
                    break
                s = ((p0 + q) * height + h) * width - pw  # image column -pw
                base = q * psize + row_start[h]
                if sw == 2:  # both phases in one loop: paired loads, shuffles
                    d0 = base
                    d1 = d0 + step
                    e0, e1, a = u(d0 + lo), u(d1 + lo), u(s + 2 * lo)
                    if to_phases:
                        for m in range(lo0, lo):
                            phases[d0 + m] = flat[s + 2 * m]
                        for m in range(lo1, lo):
                            phases[d1 + m] = flat[s + 2 * m + 1]
                        for m in range(u(hi - lo)):
                            phases[e0 + m] = flat[a + u(2) * m]
                            phases[e1 + m] = flat[a + u(2) * m + u(1)]
                        for m in range(hi, hi0):
                            phases[d0 + m] = flat[s + 2 * m]
                        for m in range(hi, hi1):
                            phases[d1 + m] = flat[s + 2 * m + 1]
                    else:
                        for m in range(lo0, lo):
                            flat[s + 2 * m] = phases[d0 + m]
                        for m in range(lo1, lo):
                            flat[s + 2 * m + 1] = phases[d1 + m]
                        for m in range(u(hi - lo)):
                            flat[a + u(2) * m] = phases[e0 + m]
                            flat[a + u(2) * m + u(1)] = phases[e1 + m]
                        for m in range(hi, hi0):
                            flat[s + 2 * m] = phases[d0 + m]
                        for m in range(hi, hi1):
                            flat[s + 2 * m + 1] = phases[d1 + m]
                    continue
                for rw in range(sw):
                    m0 = col_m0[rw]
                    d = u(base + rw * step + m0)
                    a = u(s + m0 * sw + rw)
                    count = u(col_m1[rw] - m0)
                    if sw == 1:  # a contiguous copy
                        if to_phases:
                            for m in range(count):
                                phases[d + m] = flat[a + m]
                        else:
                            for m in range(count):
                                flat[a + m] = phases[d + m]
                    elif to_phases:
                        for m in range(count):
                            phases[d + m] = flat[a + u(sw) * m]
                    else:
                        for m in range(count):
                            flat[a + u(sw) * m] = phases[d + m]

    for p0 in range(0, planes, chunk):
        nq = min(chunk, planes - p0)
        n = u((nq - 1) * psize + (oh - 1) * cols + ow)  # outputs' span
        src = flat if direct else phases
        origin = p0 * height * width if direct else 0
        if backward:
            # best <- top_diff / pool_size (0 in the columns past ow).
            for q in range(nq):
                for y in range(oh):
                    b, r, dr = (
                        u(q * psize + y * cols),
                        u(((p0 + q) * oh + y) * ow),
                        u(y * ow),
                    )
                    for x in range(u(ow)):
                        best[b + x] = pooled_flat[r + x] / div[dr + x]
            zero_from = u(origin)
            zero_to = u(origin + (nq * height * width if direct else sh * sw * step))
            for t in range(zero_from, zero_to):
                src[t] = 0
            for k in range(kh * kw - 1, -1, -1):
                i, j = k // kw, k % kw
                first = u(
                    origin
                    + ((i % sh) * sw + j % sw) * step
                    + (i // sh) * cols
                    + j // sw
                )
                for t in range(n):
                    src[first + t] += best[t]
            if not direct:
                start = u(p0 * height * width)
                for t in range(u(nq * height * width)):
                    flat[start + t] = 0
                move_rows(p0, nq, False)
            continue
        if not direct:
            move_rows(p0, nq, True)
        # Strips of STRIP outputs: every pass over a strip finds it in L1.
        for t0 in range(u(0), n, u(STRIP)):
            t1 = min(t0 + u(STRIP), n)
            for t in range(t0, t1):
                best[t] = fill
            if with_argmax:
                for t in range(t0, t1):
                    arg[t] = none
            for i in range(kh):
                for j in range(kw):
                    first = u(
                        origin
                        + ((i % sh) * sw + j % sw) * step
                        + (i // sh) * cols
                        + j // sw
                    )
                    if method != MAX:
                        for t in range(t0, t1):
                            best[t] += src[first + t]
                    elif with_argmax:
                        k = np.int32(i * kw + j)
                        for t in range(t0, t1):
                            v = src[first + t]
                            o = best[t]
                            better = v > o
                            best[t] = v if better else o
                            arg[t] = k if better else arg[t]
                    else:
                        for t in range(t0, t1):
                            v = src[first + t]
                            o = best[t]
                            best[t] = v if v > o else o
        for q in range(nq):
            for y in range(oh):
                b, r, dr = (
                    u(q * psize + y * cols),
                    u(((p0 + q) * oh + y) * ow),
                    u(y * ow),
                )
                if method != MAX:
                    for x in range(u(ow)):
                        pooled_flat[r + x] = best[b + x] / div[dr + x]
                    continue
                for x in range(u(ow)):
                    pooled_flat[r + x] = best[b + x]
                if with_argmax:
                    for x in range(u(ow)):
                        index_flat[r + x] = arg[b + x]


def pool_windows_kernel(  # type: ignore[no-untyped-def]
    image, pooled, argmax, divisor, method, backward, with_argmax,
    kh, kw, sh, sw, ph, pw,
):  # fmt: skip
    """pool_phases_kernel's work (same arguments) as Caffe's loop: output by
    output, over the window clipped to the image; AVE's backward zeroes each
    plane of image and adds each window's share to it in output order."""
    planes, height, width = image.shape
    oh, ow = pooled.shape[1], pooled.shape[2]
    floor = image.dtype.type(-FLT_MAX)
    for p in range(planes):
        if backward:
            for h in range(height):
                for w in range(width):
                    image[p, h, w] = 0
        for y in range(oh):
            h0 = y * sh - ph
            h1 = min(h0 + kh, height)
            for x in range(ow):
                w0 = x * sw - pw
                w1 = min(w0 + kw, width)
                if method == MAX:
                    best, k = floor, kh * kw
                    for h in range(max(h0, 0), h1):
                        for w in range(max(w0, 0), w1):
                            v = image[p, h, w]
                            if v > best:
                                best, k = v, (h - h0) * kw + w - w0
                    pooled[p, y, x] = best
                    if with_argmax:
                        argmax[p, y, x] = k
                elif backward:
                    share = pooled[p, y, x] / divisor[y, x]
                    for h in range(max(h0, 0), h1):
                        for w in range(max(w0, 0), w1):
                            image[p, h, w] += share
                else:
                    total = image.dtype.type(0)
                    for h in range(max(h0, 0), h1):
                        for w in range(max(w0, 0), w1):
                            total += image[p, h, w]
                    pooled[p, y, x] = total / divisor[y, x]


def max_pool_backward_kernel(dy, argmax, dx, kh, kw, sh, sw, ph, pw):  # type: ignore[no-untyped-def]
    """MAX backward, Caffe's loop: each plane of dx zeroed, then every top
    diff added to the element its window offset names, in output order;
    none (kh*kw) adds nothing."""
    planes, height, width = dx.shape
    oh, ow = dy.shape[1], dy.shape[2]
    area = kh * kw
    delta = np.empty(area, np.int64)  # offset -> h*width + w within the window
    for k in range(area):
        delta[k] = (k // kw) * width + k % kw
    flat = dx.reshape(dx.size)
    for p in range(planes):
        plane = p * height * width
        for t in range(height * width):
            flat[plane + t] = 0
        for y in range(oh):
            row = plane + (y * sh - ph) * width - pw
            for x in range(ow):
                k = np.int64(argmax[p, y, x])
                if k < area:
                    flat[row + x * sw + delta[k]] += dy[p, y, x]


# -- MAX pooling, 2x2 windows with stride 2 -------------------------------------
#
# x (planes, 2*oh, 2*ow) -> out (planes, oh, ow): Caffe's loop for windows that
# tile the plane. Each output starts at -FLT_MAX and takes an element only if
# it is strictly greater, visiting (0,0), (0,1), (1,0), (1,1): so NaN never
# wins, an all-NaN window gives -FLT_MAX, and a tie keeps the first element
# (+0 before -0 included). argmax gets the window offset i*2 + j of the winner,
# 4 (none) when nothing beats -FLT_MAX.


def max_pool_2x2(x, out, argmax):  # type: ignore[no-untyped-def]
    """MAX pooling forward, with the window offset of each output's first
    maximum in `argmax` (always: in this loop it costs next to nothing)."""
    oh, ow = out.shape[1], out.shape[2]
    floor = out.dtype.type(-FLT_MAX)
    for p in range(x.shape[0]):
        for y in range(oh):
            r0 = x[p, 2 * y]
            r1 = x[p, 2 * y + 1]
            o = out[p, y]
            a = argmax[p, y]
            for c in range(ow):
                best = floor
                k = 0
                v = r0[2 * c]
                if v > best:
                    best = v
                v = r0[2 * c + 1]
                if v > best:
                    best = v
                    k = 1
                v = r1[2 * c]
                if v > best:
                    best = v
                    k = 2
                v = r1[2 * c + 1]
                if v > best:
                    best = v
                    k = 3
                o[c] = best
                a[c] = k
    # Only a winner moves an output off -FLT_MAX: the others get none. (One
    # pass at the end: inside the loop above the check costs a third more.)
    flat_out, flat_arg = out.reshape(out.size), argmax.reshape(argmax.size)
    for t in range(out.size):
        if flat_out[t] == floor:
            flat_arg[t] = 4


def max_pool_2x2_max(x, out):  # type: ignore[no-untyped-def]
    """MAX pooling forward without the argmax, for nets that run no backward
    (TEST): the same comparisons as max_pool_2x2, written as selects, which
    LLVM turns into vector max instructions (x86's MAXPS is exactly `v > best
    ? v : best`, NaN and signed zeros included): about 2.5x faster."""
    oh, ow = out.shape[1], out.shape[2]
    floor = out.dtype.type(-FLT_MAX)
    for p in range(x.shape[0]):
        for y in range(oh):
            r0 = x[p, 2 * y]
            r1 = x[p, 2 * y + 1]
            o = out[p, y]
            for c in range(ow):
                best = floor
                v = r0[2 * c]
                best = v if v > best else best
                v = r0[2 * c + 1]
                best = v if v > best else best
                v = r1[2 * c]
                best = v if v > best else best
                v = r1[2 * c + 1]
                best = v if v > best else best
                o[c] = best


# -- AVE pooling on whichever path takes the arrays (Pooling, LRN WITHIN_CHANNEL)


def ave_forward(
    x: Array, g: PoolGeometry, divisor: Array, out: Array, canvas: Array | None
) -> None:
    """AVE forward: the compiled loop when the kernels take these arrays,
    else ops/pooling.py's NumPy twin on `canvas` (same bits)."""
    if takes(x, out, divisor):
        pool_forward_compiled(x, g, AVE, out, divisor=divisor)
    else:
        ave_pool_forward(x, g, divisor, out, canvas)


def ave_backward(
    dy: Array, g: PoolGeometry, divisor: Array, dx: Array, canvas: Array | None
) -> None:
    """AVE backward into dx (overwritten), on the path ave_forward takes."""
    if takes(dy, dx, divisor):
        pool_backward_compiled(dy, g, AVE, dx, divisor=divisor)
    else:
        ave_pool_backward(dy, g, divisor, dx, canvas)
