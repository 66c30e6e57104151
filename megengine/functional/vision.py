"""Image functions (F.vision): resizing, warping and remapping, ROI pooling/align, NMS,
correlation and colour conversion, with upstream MegEngine's (megdnn's) semantics."""
import functools
import itertools
import math

import numpy as np

from ..core import _config
from ..core import amp as _amp
from ..core._trace_option import as_int, is_int, is_sym, sizes_of
from ..core.dispatch import Op, apply
from ..core.dtype import refuse_quantized, round_half_away
from ..core.ops import (ArgumentError, ArgumentTypeError, LinearMap, ShapeError, acc_dtype,
                        as_dtype, cast, finite_sum, xp_of)
from ..core.ops import matmul as _mm
from ..core.tensor import Tensor, promote_types
from ..core.dtype_rules import complex_error, no_order
from ._args import _as_float, _astype_real, _int, _real, _tensor
from .math import matmul
from .tensor import Compute, _shape_arg, concat, pad, stack
from .roi import deformable_psroi_pooling, roi_align, roi_pooling  # noqa: F401  (F.vision.*)

__all__ = [
    "correlation", "cvt_color", "deformable_psroi_pooling", "interpolate", "nms", "remap",
    "nvof", "roi_align", "roi_pooling", "warp_affine", "warp_perspective",
]


# ----- resizing -----

@functools.lru_cache(maxsize=64)
def _interp_matrix(n_in, n_out, mode, align_corners):
    """The (n_out, n_in) matrix that resamples one axis, as upstream and PyTorch do (read-only:
    cached, since `_Resize` builds its matrices from the shapes of each run)."""
    m = _make_interp_matrix(n_in, n_out, mode, align_corners)
    m.setflags(write=False)
    return m


@functools.lru_cache(maxsize=64)
def _gpu_interp_matrix(n_in, n_out, mode, align_corners, dtype, device, stream):
    """`_interp_matrix` in ``dtype`` on GPU ``device`` (the current one), copied there once
    per stream, so that its copy is ordered before every later use on that stream: each call
    copied it again (a transfer per matrix, a launch's worth of host time on a GPU). Read
    only, as the host matrix: the products of `_Resize` read it, nothing writes it."""
    import cupy

    return cupy.asarray(_interp_matrix(n_in, n_out, mode, align_corners), dtype)


@functools.lru_cache(maxsize=64)
def _interp_taps(n_in, n_out, mode, align_corners):
    """Four (n_out, n_in) 0/1 matrices of the source pixels upstream's kernel reads for each
    output: all of them, those it reads with a positive weight, with a negative one, and with
    a weight of exactly 0 (a NaN or infinity there still reaches the output, as ``0 * inf``);
    a pixel read twice (clamped taps) may be in several. Nearest reads one pixel; bilinear two
    (corners not aligned: the pair below the source position clamped into the image, the last
    pair at the end; aligned: the pixel and the next, clamped: at the end, the last one
    twice); trilinear, along each axis, the pixel and the next, clamped, and an axis of one
    size the same pixel (torch's kernel, as upstream's 3-d one where it computes; so linear,
    which upstream lacks); bicubic four (clamped). Read only."""
    taps, pos, neg, zero = np.zeros((4, n_out, n_in), np.float64)
    rows = np.arange(n_out)
    if mode == "nearest":
        taps[_make_interp_matrix(n_in, n_out, mode, align_corners) != 0] = 1
        return tuple(_read_only(m) for m in (taps, taps.copy(), neg, zero))
    src = _source_positions(n_in, n_out, align_corners)
    if mode == "bicubic":
        i0 = np.floor(src).astype(np.int64)
        t = src - i0
        reads = [(i0 + k - 1, w) for k, w in enumerate(_cubic_weights(t))]
    elif mode in ("linear", "trilinear") and n_in == n_out:  # (an axis kept: copied)
        reads = [(rows, np.ones(n_out))]
    else:
        if align_corners or mode in ("linear", "trilinear"):
            src = np.maximum(src, 0)
            i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        else:
            src = np.clip(src, 0, n_in - 1)
            i0 = np.minimum(np.floor(src).astype(np.int64), max(n_in - 2, 0))
        t = src - i0
        reads = [(i0, 1 - t), (i0 + 1, t)]
    for cols, w in reads:
        cols = np.clip(cols, 0, n_in - 1)
        taps[rows, cols] = 1
        for part, at in ((pos, w > 0), (neg, w < 0), (zero, w == 0)):
            part[rows[at], cols[at]] = 1
    return tuple(_read_only(m) for m in (taps, pos, neg, zero))


def _read_only(a):
    a.setflags(write=False)
    return a


def _cubic_weights(t):
    """Keys' cubic weights (A = -0.75) of the four taps around a source position ``t`` past
    the second one."""
    a = -0.75
    taps = (t + 1, t, 1 - t, 2 - t)
    return [((a * d - 5 * a) * d + 8 * a) * d - 4 * a if k in (0, 3)
            else ((a + 2) * d - (a + 3)) * d * d + 1 for k, d in enumerate(taps)]


def _source_positions(n_in, n_out, align_corners):
    """Where each of ``n_out`` outputs samples the ``n_in`` inputs (float64, unclamped):
    corners aligned, or pixel centres scaled."""
    dst = np.arange(n_out, dtype=np.float64)
    if align_corners:
        return dst * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(n_out)
    return (dst + 0.5) * (n_in / n_out) - 0.5


def _make_interp_matrix(n_in, n_out, mode, align_corners):
    dst = np.arange(n_out, dtype=np.float64)
    m = np.zeros((n_out, n_in), np.float64)
    rows = np.arange(n_out)
    if mode == "nearest":
        # upstream's kernel divides by the float32 scale out/in: where dst * in / out is a
        # whole number that quotient can fall just below it (upstream 1.13 measured: 52 rows to
        # 32 take row 12 for row 8, not 13), so the source rows are computed as it does
        scale = np.float32(n_out) / np.float32(n_in)
        src = (dst.astype(np.float32) / scale).astype(np.int64)
        m[rows, np.minimum(src, n_in - 1)] = 1
        return m
    src = _source_positions(n_in, n_out, align_corners)
    if not align_corners and mode != "bicubic":
        src = np.maximum(src, 0)
    i0 = np.floor(src).astype(np.int64)
    t = src - i0
    if mode == "bicubic":  # Keys' cubic with A = -0.75, edges replicated
        for k, wk in enumerate(_cubic_weights(t)):
            np.add.at(m, (rows, np.clip(i0 - 1 + k, 0, n_in - 1)), wk)
        return m
    np.add.at(m, (rows, np.minimum(i0, n_in - 1)), 1 - t)
    np.add.at(m, (rows, np.minimum(i0 + 1, n_in - 1)), t)
    return m


class _Resize(Op):
    what = "interpolate"  # (the public function, for errors)
    """Separable resampling to output ``sizes`` (L; H, W; or D, H, W): ``A_h @ x @ A_w.T`` over
    the last two axes (1-d: the last axis only), trilinear also ``A_d`` along axis 2.

    The matrices are built in `forward` from the input's actual shape, so that a dumped program
    whose sizes are expressions of its inputs' shapes (``scale_factor``, ``size=x.shape[2:]``)
    resamples correctly at the shapes it runs at (`megengine.core._trace_option`)."""
    format_rule = "keep"  # how a tensor format label passes (megengine.core.format)

    # programs dumped before sizes were kept hold the matrices themselves (mat_d: trilinear)
    sizes = mat_h = mat_w = mat_d = None

    def __init__(self, sizes, mode, align_corners):
        self.sizes, self.mode, self.align_corners = tuple(sizes), mode, align_corners

    def _matrices(self, x):
        """The matrices resampling H, W and D (None where ``x`` has no such axis) as arrays of
        ``x``'s module and dtype; on a GPU each is copied there once per shape, dtype and
        stream (`_gpu_interp_matrix`), not at every call."""
        xp = xp_of(x)
        if self.sizes is None:
            return [None if m is None else xp.asarray(m, x.dtype)
                    for m in (self.mat_h, self.mat_w, self.mat_d)]
        mode = "bilinear" if self.mode == "trilinear" else self.mode  # linear along each axis
        axes = [(int(n_in), int(n_out), mode, self.align_corners)
                for n_in, n_out in zip(x.shape[2:], self.sizes)]
        if len(axes) == 3:  # (D, H, W): H and W as bilinear, D along axis 2
            axes = [axes[1], axes[2], axes[0]]
        axes += [None] * (3 - len(axes))
        if xp is np:
            return [None if a is None else np.asarray(_interp_matrix(*a), x.dtype) for a in axes]
        where = (x.dtype, x.device.id, xp.cuda.get_current_stream().ptr)
        return [None if a is None else _gpu_interp_matrix(*a, *where) for a in axes]

    def forward(self, x):
        x = _as_float(x, self)
        xp = xp_of(x)
        # float16 resamples in float32, rounded once, as torch's kernels: rounding between the
        # passes (and float16 weights) left an error of the inputs' ulps, where neighbours of
        # opposite signs average to a small value (--float16 fuzz case 51776: 40 ulps)
        self.dtype = dtype = x.dtype
        acc = acc_dtype(dtype)
        # The conversions on ATen's (`core.ops.cast`, the same values): numpy's took most of a
        # float16 resize (one thread, forward and backward of (16, 32, 32, 32) doubled: 22-28
        # ms before, 7 after; float32 6-9)
        if acc is not None:
            x = cast(x, acc)
        mats = self.ah, self.aw, self.ad = self._matrices(x)
        out = _kept_to_taps(xp, x, _resampled(xp, x, mats), lambda: (mats, self._taps(x)))
        self.in_shape = x.shape  # (for the taps of a NaN or infinite gradient)
        return as_dtype(out, dtype)

    def _taps(self, x, backward=False):
        """`_interp_taps` of each matrix of `_matrices` (None where absent), as arrays of
        ``x``'s module and dtype (``x``: the input, or an array of its shape); a program
        holding only the matrices reads its nonzero weights, by their signs. ``backward``:
        the taps upstream's backward kernel scatters to, its general bilinear ones (linear
        mode's too) wherever the forward doubles an image."""
        xp = xp_of(x)
        if self.sizes is None:
            return [None if m is None else tuple(xp.asarray(t, x.dtype) for t in (
                m != 0, m > 0, m < 0, np.zeros(m.shape))) for m in (self.mat_h, self.mat_w,
                                                                     self.mat_d)]
        sizes = [(int(n_in), int(n_out)) for n_in, n_out in zip(x.shape[2:], self.sizes)]
        mode = "bilinear" if backward and self.mode == "linear" else self.mode
        taps = [tuple(xp.asarray(m, x.dtype) for m in
                      _interp_taps(n_in, n_out, mode, self.align_corners))
                for n_in, n_out in sizes]
        if self.mode == "bilinear" and not self.align_corners and not backward and \
                all(n_out == 2 * n_in for n_in, n_out in sizes):
            # upstream's kernel for an image doubled both ways reads no pixel of weight 0
            # (measured: one NaN pixel of a 3 x 3 image reaches 16 of the 36 outputs)
            taps = [(pos + neg, pos, neg, xp.zeros_like(zero)) for _, pos, neg, zero in taps]
        if len(taps) == 3:
            taps = [taps[1], taps[2], taps[0]]
        return taps + [None] * (3 - len(taps))

    def backward(self, g):
        g = as_dtype(g, self.ah.dtype)  # (float16: in float32, as forward)
        xp = xp_of(g)
        if self.aw is None:
            gx = _mm(g, self.ah)
        else:
            gd = g if self.ad is None else xp.moveaxis(xp.tensordot(self.ad.T, g, ([1], [2])),
                                                       0, 2)
            gx = _mm(_mm(self.ah.T, gd), self.aw)

        def reads():  # the transposed map, and the taps upstream's backward kernel scatters to
            like_x = xp.broadcast_to(xp.zeros((), g.dtype), self.in_shape)
            return ([None if m is None else m.T for m in (self.ah, self.aw, self.ad)],
                    [None if t is None else tuple(m.T for m in t)
                     for t in self._taps(like_x, backward=True)])
        return as_dtype(_kept_to_taps(xp, g, gx, reads), self.dtype)

    # (dispatch runs it with autocast off, as every built-in op's: upstream 1.13 measured,
    # under autocast the gradient is float32's bit for bit)
    def grad_graph(self, inputs, outputs, grads):
        """`backward` as recorded matmuls with the constant resampling matrices (a gradient
        penalty through an up- or downsampling layer differentiates it)."""
        g = grads[0]
        dtype = g.dtype
        if g.dtype != self.ah.dtype:  # float16: in float32, as forward
            g = g.astype(self.ah.dtype)
        ah = Tensor._wrap(self.ah, g._device)
        if self.aw is None:
            return ((g @ ah).astype(dtype),)
        if self.ad is not None:  # (N, C, H, W, D') @ A_d, then depth back to axis 2
            g = (g.transpose(0, 1, 3, 4, 2) @ Tensor._wrap(self.ad, g._device))
            g = g.transpose(0, 1, 4, 2, 3)
        g = (Tensor._wrap(self.ah.T.copy(), g._device) @ g) @ Tensor._wrap(self.aw, g._device)
        return (g.astype(dtype),)


def _resampled(xp, x, mats):
    """``x`` resampled by the separable matrices ``mats`` (A_h, A_w, A_d; None where absent):
    ``A_h @ x @ A_w.T`` over the last two axes (1-d: ``x @ A_h.T``), then A_d along axis 2.
    (Products on ATen where numpy's BLAS would thread them: core/ops.py matmul.)"""
    ah, aw, ad = mats
    if aw is None:  # 1-d: (N, C, L)
        return _mm(x, ah.T)
    out = _mm(ah, _mm(x, aw.T))
    if ad is not None:  # depth: contract axis 2, then put the new depth back there
        out = xp.ascontiguousarray(xp.moveaxis(xp.tensordot(ad, out, ([1], [2])), 0, 2))
    return out


def _kept_to_taps(xp, x, out, reads):
    """``out``, ``x`` resampled by separable matrices; where ``x`` holds NaN or infinities,
    `_resampled_non_finite`'s result (``reads()``: the matrices and their taps): each reaches
    only the outputs that read it, where the products spread it over every output of its rows.
    A finite sum of ``x``, or of ``out`` where it is smaller, shows that ``x`` holds none, at
    one pass (a sum that overflowed takes the check of ``x``)."""
    if finite_sum(x if x.size <= out.size else out):
        return out
    odd = ~xp.isfinite(x)
    return _resampled_non_finite(xp, x, odd, *reads()) if odd.any() else out


def _resampled_non_finite(xp, x, odd, mats, taps):
    """`_resampled` of ``x`` holding NaN or infinities (``odd``), as upstream's kernel, which
    reads each output's few taps (``taps``, `_interp_taps`): a NaN makes NaN of the outputs
    that read it, an infinity an infinity of its weight's sign there, NaN where its weight is
    0 or both signs meet. The matrices' products would multiply it by every zero weight too:
    one NaN or infinite pixel made the whole image NaN. The finite pixels are resampled as
    they are (the others as 0); which outputs each kind of odd pixel reaches, and how, comes
    from products of 0/1 indicators by the matrices' positive, negative and zero-weight taps."""
    dtype = x.dtype
    axes = [i for i, m in enumerate(mats) if m is not None]

    def reached(flags):
        """Outputs that ``flags``' pixels reach with a positive weight, a negative one, 0."""
        flags = flags.astype(dtype)
        hits = [False, False, False]
        for kinds in itertools.product((0, 1, 2), repeat=len(axes)):
            picked = [None] * 3
            for axis, kind in zip(axes, kinds):
                picked[axis] = taps[axis][1 + kind]
            how = 2 if 2 in kinds else sum(kinds) % 2
            hits[how] = hits[how] | (_resampled(xp, flags, picked) > 0)
        return hits

    out = _resampled(xp, xp.where(odd, 0, x), mats)
    nan = _resampled(xp, xp.isnan(x).astype(dtype), [t and t[0] for t in taps]) > 0
    up_pos, up_neg, up_zero = reached(xp.isposinf(x))
    down_pos, down_neg, down_zero = reached(xp.isneginf(x))
    plus, minus = up_pos | down_neg, up_neg | down_pos
    out[plus] = np.inf
    out[minus] = -np.inf
    out[nan | up_zero | down_zero | (plus & minus)] = np.nan
    return out


class _QuantizedResize(_Resize):
    """`_Resize` of a quantized image, as upstream's Resize: its stored integers resampled (the
    weights sum to 1, so the zero point passes through), rounded half away from zero and
    saturated, in its dtype. Bilinear (2-d, corners not aligned) follows upstream's kernel to
    the float32 rounding: each output blends its four neighbours with float32 weights from
    ``(i + 0.5) / scale - 0.5``, in upstream's order, so that a blend that is a half in exact
    arithmetic rounds as upstream's does (resampling with the separable matrices rounded ~1%
    of such pixels the other way: upstream 1.13 measured). Not differentiable."""

    def forward(self, x):
        from ..core import dtype as qdtype

        ints = qdtype.stored(x).astype(np.float32)
        if self.mode == "bilinear" and not self.align_corners and x.ndim == 4:
            out = _blend_bilinear(ints, self.sizes)
        else:
            out = super().forward(ints)
        return qdtype.saturated(qdtype.round_half_away(xp_of(out), out), x.dtype)

    def backward(self, g):
        return None


def _origins(n_in, n_out):
    """Upstream's source rows of bilinear resizing: (first neighbour, second, weight of the
    second), the weight computed in float32 as its kernel does."""
    f32 = np.float32
    pos = (np.arange(n_out, dtype=f32) + f32(0.5)) / (f32(n_out) / f32(n_in)) - f32(0.5)
    first = np.floor(pos).astype(np.int64)
    alpha = (pos - first).astype(f32)
    alpha[first < 0], first[first < 0] = 0, 0
    last = first + 1 >= n_in
    alpha[last], first[last] = 1, max(n_in - 2, 0)
    return first, np.minimum(first + 1, n_in - 1), alpha


def _blend_bilinear(x, sizes):
    """Bilinear resizing of float32 ``x`` (N, C, H, W) to ``sizes`` as upstream's kernel sums:
    ``x00 (1 - aw)(1 - ah) + x01 aw (1 - ah) + x10 (1 - aw) ah + x11 aw ah`` in float32."""
    xp = xp_of(x)
    (h0, h1, ah), (w0, w1, aw) = (_origins(n, m) for n, m in zip(x.shape[2:], sizes))
    ah, aw = xp.asarray(ah)[:, None], xp.asarray(aw)
    one = np.float32(1)
    rows0, rows1 = x[:, :, h0], x[:, :, h1]
    return (rows0[..., w0] * (one - aw) * (one - ah) + rows0[..., w1] * aw * (one - ah) +
            rows1[..., w0] * (one - aw) * ah + rows1[..., w1] * aw * ah)


_INTERP_MODES = ("bilinear", "linear", "bicubic", "nearest", "trilinear")


def interpolate(inp, size=None, scale_factor=None, mode="bilinear", align_corners=None):
    """Resize NCHW ``inp`` (N, C, L for "linear", N, C, D, H, W for "trilinear") to ``size``
    or by ``scale_factor``. Other integers give float32; int8, uint8 and quantized dtypes keep
    their dtype.

    ``mode``: "bilinear", "linear", "bicubic", "nearest" or "trilinear". ``align_corners``
    (linear modes only,
    default False) maps corner pixel centres onto each other. With ``scale_factor`` the output
    size is ``floor(in * scale)`` and sampling uses in/out, as upstream.
    """
    inp = _tensor(inp)
    mode = str(mode).lower()
    what = "interpolate"
    if mode not in _INTERP_MODES:
        raise ValueError(f"{what}: mode must be one of {_INTERP_MODES}, got {mode!r}")
    if mode in ("bilinear", "linear", "trilinear"):
        align_corners = bool(align_corners)
    elif align_corners is not None:  # as upstream: bicubic and nearest take no align_corners
        raise ValueError(f"{what}: align_corners can only be set in the linear modes, not in "
                         f"{mode!r}")
    else:
        align_corners = False
    spatial = {"linear": 1, "trilinear": 3}.get(mode, 2)
    if inp.ndim != spatial + 2:
        raise ArgumentError(f"{what}: mode {mode!r} expects a {spatial + 2}-d input, "
                            f"got shape {inp.shape}")
    in_sizes = inp.shape[2:]
    if (size is None) == (scale_factor is None):
        raise ValueError(f"{what}: give exactly one of size and scale_factor")
    if size is not None:
        if isinstance(size, Tensor):  # upstream's graphs take a shape Tensor: its sizes kept
            held = sizes_of(size)  # (a Tensor made of x.shape in a dumpable trace: SymDims)
            size = size.numpy().tolist() if held is None else held.tolist()
        sizes = (size,) * spatial if is_int(size) else tuple(size)
        # (sizes from x.shape in a dumpable trace, or a TracedModule's size tensors, stay
        # expressions; int() would fix them, and would parse "2" and truncate 2.5)
        sizes = tuple(_int(s, "size", what) for s in sizes)
    else:
        scales = (scale_factor,) * spatial if isinstance(scale_factor, (int, float)) or \
            is_sym(scale_factor) else tuple(scale_factor)
        if len(scales) != spatial:
            raise ArgumentError(f"{what}: scale_factor {scale_factor!r} must have {spatial} "
                                "values")  # (upstream asserts)
        # math.floor, not int(): of a traced size it is the expression floor(h * s)
        # (a scale from a dumpable trace's sizes stays an expression too)
        sizes = tuple(math.floor(n * (s if is_sym(s) else float(s))) for n, s in zip(in_sizes,
                                                                                   scales))
    if len(sizes) != spatial or any(s < 1 for s in sizes):
        # (upstream's kernel fails: an AsyncError, a RuntimeError; ArgumentError is one)
        raise ArgumentError(f"{what}: output size {sizes} must be {spatial} positive ints")
    if inp.dtype.metadata is not None:  # a quantized image stays quantized, as upstream's
        _refuse_unresizable(inp.dtype, what)
        return apply(_QuantizedResize(sizes, mode, align_corners), inp)
    out = apply(_Resize(sizes, mode, align_corners), inp)
    if inp.dtype in _IMAGE_INTS:
        # an int8 / uint8 image stays one, as upstream's Resize keeps it: rounded half away
        # from zero and saturated (measured: at most 1 level off upstream's, in ~0.3% of pixels)
        out = apply(_RoundSaturate(inp.dtype, half_away=True), out)
    return out


_IMAGE_INTS = (np.dtype(np.uint8), np.dtype(np.int8))


def _refuse_unresizable(dtype, what):
    """Upstream's Resize takes 8-bit quantized images only (upstream 1.13 measured: qint32 and
    4-bit ones raise)."""
    from ..core import dtype as qdtype

    meta = qdtype.quant_meta(dtype)
    if meta is not None and meta.cname not in ("QuantizedS8", "Quantized8Asymm"):
        raise TypeError(f"{what}: a {qdtype.dtype_name(dtype)} image cannot be resized (upstream's "
                        "Resize takes qint8 and quint8 images only); convert it first, e.g. "
                        "inp.astype(dtype.qint8(scale)) or inp.astype('float32')")


# ----- sampling at arbitrary points: remap, warp_perspective, warp_affine -----
# Output pixel (h, w) reads the input at a source point (x, y) in pixel units (pixel centres at
# integers, no half-pixel shift). "linear" blends the four neighbours, "nearest" takes the one at
# x rounded halves to even; neighbours outside the image follow OpenCV's border modes, as
# megdnn does.

_BORDERS = ("replicate", "constant", "reflect", "reflect_101", "wrap")


def _border_index(xp, i, n, mode):
    """Integer positions ``i`` mapped into ``[0, n)`` by the border mode; and where they were
    inside (only "constant" leaves positions outside, to be filled with the border value)."""
    inside = (i >= 0) & (i < n)
    if mode == "replicate":
        return xp.clip(i, 0, n - 1), None
    if mode == "constant":
        return xp.clip(i, 0, n - 1), inside
    if mode == "wrap":
        return i % n, None
    if n == 1:
        return xp.zeros_like(i), None
    if mode == "reflect":  # fedcba|abcdefgh|hgfedcb
        m = i % (2 * n)
        return xp.where(m >= n, 2 * n - 1 - m, m), None
    m = i % (2 * n - 2)  # reflect_101: gfedcb|abcdefgh|gfedcba
    return xp.where(m >= n, 2 * n - 2 - m, m), None


class _Sample(Op):
    """``out[b, c, oh, ow] = img[batch[b], c]`` read at ``points[b, oh, ow] = (x, y)``; gradients
    reach the image and (linear mode) the points. ``batch`` (an input, so that traces replay
    it) picks the image of each point set; default one per image. Works channels-last inside,
    so that every gather and scatter moves whole pixel vectors.

    ``order`` is how upstream's kernel rounds the blend, in the images' float type (float32
    for float16 and integer ones): "table" multiplies each pixel by its corner's weight
    (OpenCV's weight tables; exact weights on its 1/32 grid), "warp" by the x factor, then the
    y factor (megdnn's warp kernels), "remap" as megdnn's remap kernel orders them."""

    def __init__(self, interp, border, border_val, order="table"):
        self.interp, self.border, self.border_val = interp, border, border_val
        self.order = order

    def forward(self, img, points, batch=None):
        xp = xp_of(img)
        n, c, h, w = img.shape
        self.img_shape, self.dtype, self.pts_dtype = img.shape, img.dtype, points.dtype
        batch = xp.arange(points.shape[0]) if batch is None else batch.astype(np.int64)
        px, py = points[..., 0].astype(np.float64), points[..., 1].astype(np.float64)
        # float16 images are summed in float32 and rounded once, as upstream's kernels
        acc = np.float32 if img.dtype == np.float16 else img.dtype
        factors = [None] * 4
        if self.interp == "nearest":  # halves to even, as upstream's remap
            x0, y0 = xp.rint(px), xp.rint(py)
            corners = [(0, 0, xp.ones_like(px), None, None)]
        else:
            x0, y0 = xp.floor(px), xp.floor(py)
            fx, fy = px - x0, py - y0
            # (dx, dy, weight, d weight / d x, d weight / d y)
            corners = [(0, 0, (1 - fx) * (1 - fy), fy - 1, fx - 1),
                       (1, 0, fx * (1 - fy), 1 - fy, -fx),
                       (0, 1, (1 - fx) * fy, -fy, 1 - fx),
                       (1, 1, fx * fy, fy, fx)]
            if self.order != "table":  # the factors in the kernel's order, in its float type
                ax, ay = fx.astype(acc), fy.astype(acc)
                bx, by = 1 - ax, 1 - ay
                factors = ([(bx, by), (ax, by), (bx, ay), (ax, ay)] if self.order == "warp"
                           else [(bx, by), (by, ax), (bx, ay), (ay, ax)])
        x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
        img_t = xp.ascontiguousarray(img.transpose(0, 2, 3, 1))  # (N, H, W, C)
        bsel = batch.reshape(-1, 1, 1)
        out = 0
        self.saved, outside = [], []
        for (dx, dy, wgt, dwx, dwy), fac in zip(corners, factors):
            xi, vx = _border_index(xp, x0 + dx, w, self.border)
            yi, vy = _border_index(xp, y0 + dy, h, self.border)
            vals = img_t[bsel, yi, xi]  # (B, OH, OW, C)
            wk = wgt
            if vx is not None:  # constant border: outside corners read the border value
                valid = vx & vy
                vals = xp.where(valid[..., None], vals, img.dtype.type(self.border_val))
                wk = wgt * valid  # ... and pass no gradient to the image
                outside.append(~valid)
            if fac is None:
                out = out + wgt[..., None].astype(acc) * vals
            else:
                out = out + vals.astype(acc, copy=False) * fac[0][..., None] * fac[1][..., None]
            self.saved.append(((bsel * h + yi) * w + xi, wk, vals, dwx, dwy))
        # (where the corners fell outside a constant border: the pixel their index was clamped
        # to takes nothing from them, not even a NaN or infinite gradient times their 0)
        self.outside = xp.concatenate([o.ravel() for o in outside]) if outside else None
        return xp.ascontiguousarray(out.transpose(0, 3, 1, 2)).astype(img.dtype, copy=False)

    def image_grad(self, g):
        """``A^T g``: for fixed points the output is ``A img`` (plus the border value read
        outside a constant border, which does not depend on the image)."""
        xp = xp_of(g)
        n, c, h, w = self.img_shape
        # scatter-add per channel: bincount over the (image, row, column) of every corner
        flat = xp.concatenate([f.ravel() for f, _, _, _, _ in self.saved])
        weights = xp.concatenate([wk.ravel() for _, wk, _, _, _ in self.saved])
        reps = len(self.saved)
        gimg = xp.empty(self.img_shape, self.dtype)
        outside = self.outside
        if outside is not None and xp is np and finite_sum(g):
            # (finite times the weight 0 of those corners is 0 already: the masked copy, ~1/3
            # of a channel's bincount, is spared; CuPy makes it, asynchronously, rather than
            # read a sum)
            outside = None
        for ch in range(c):
            gc = xp.tile(g[:, ch].ravel(), reps) * weights
            if outside is not None:
                xp.copyto(gc, 0, where=outside)  # (upstream's kernels skip those corners)
            gimg[:, ch] = xp.bincount(flat, weights=gc, minlength=n * h * w).reshape(n, h, w)
        return gimg

    def resample(self, img):
        """``A img``: an image of the forward input's shape read at the forward's points, 0
        outside a constant border (the adjoint of `image_grad`)."""
        xp = xp_of(img)
        n, c, h, w = self.img_shape
        pixels = xp.ascontiguousarray(img.transpose(0, 2, 3, 1)).reshape(n * h * w, c)
        out = 0
        for f, wk, _, _, _ in self.saved:
            out = out + wk[..., None].astype(img.dtype) * pixels[f]
        return xp.ascontiguousarray(out.transpose(0, 3, 1, 2))

    def grad_graph(self, inputs, outputs, grads):
        # the image's gradient, linear in g, as a recorded op (a gradient penalty through a
        # warp); the points' gradient depends on the image and has no recorded form here
        if self.needs_input_grad[1]:
            raise RuntimeError(
                "remap / warp_perspective / warp_affine: the gradient with respect to the "
                "sampling points (map_xy, mat) cannot be differentiated again; detach them "
                "(mat.detach()) inside a higher-order computation")
        gimg = (apply(LinearMap(self.image_grad, self.resample), grads[0])
                if self.needs_input_grad[0] else None)
        return (gimg, None, None)[:len(inputs)]

    def backward(self, g):
        gimg = gpts = None
        if self.needs_input_grad[0]:
            gimg = self.image_grad(g)
        if self.needs_input_grad[1]:
            xp = xp_of(g)
            gx = gy = xp.zeros(g.shape[:1] + g.shape[2:])
            if self.interp != "nearest":  # nearest is piecewise constant: zero gradient
                g_t = g.transpose(0, 2, 3, 1)
                for _, _, vals, dwx, dwy in self.saved:
                    s = (g_t * vals).sum(axis=-1)
                    gx, gy = gx + dwx * s, gy + dwy * s
            gpts = xp.stack([gx, gy], axis=-1).astype(self.pts_dtype)
        return (gimg, gpts, None)[:len(self.needs_input_grad)]


class _PerspectivePoints(Op):
    """The source point of each output pixel under ``mat`` (B, 3, 3) (affine: (B, 2, 3)).

    ``cv_grid`` ("linear" or "nearest") rounds the points as upstream's CPU kernels do on
    their OpenCV path (`_cv_affine_points`, `_cv_perspective_points`); the gradient stays that
    of the exact points (the rounded ones are piecewise constant in ``mat``).
    """

    def __init__(self, out_h, out_w, cv_grid=None):
        self.out_h, self.out_w, self.cv_grid = out_h, out_w, cv_grid

    def forward(self, mat):
        xp = xp_of(mat)
        m = mat.astype(np.float64)
        self.mat_dtype, self.affine = mat.dtype, mat.shape[1] == 2
        hh = xp.arange(self.out_h, dtype=np.float64).reshape(1, -1, 1)
        ww = xp.arange(self.out_w, dtype=np.float64).reshape(1, 1, -1)
        self.p = (ww, hh)

        def row(r):
            return (m[:, r, 0, None, None] * ww + m[:, r, 1, None, None] * hh
                    + m[:, r, 2, None, None])

        self.u, self.v = row(0), row(1)
        self.d = xp.ones_like(self.u) if self.affine else row(2)
        # (at least float32: a float16 point is up to 1/128 pixel off at x = 4, which moved
        # uint8 results by a level; the mat's gradient keeps its dtype)
        pdt = np.result_type(mat.dtype, np.float32)
        if self.cv_grid is not None:
            points = (_cv_affine_points(xp, m, ww, hh, self.cv_grid) if self.affine else
                      _cv_perspective_points(xp, self.u, self.v, self.d, self.cv_grid))
            return xp.stack(points, axis=-1).astype(pdt)
        if pdt == np.float32:
            # megdnn's other kernels work in float32: (M0 w + M1 h) + M2 in that order, then
            # one division (float64 points moved 0-255 results by up to 7e-4 off theirs)
            m32 = mat.astype(np.float32)
            h32, w32 = hh.astype(np.float32), ww.astype(np.float32)

            def row32(r):
                return (m32[:, r, 0, None, None] * w32 + m32[:, r, 1, None, None] * h32
                        + m32[:, r, 2, None, None])

            u, v = row32(0), row32(1)
            if not self.affine:
                d = row32(2)
                u, v = u / d, v / d
            return xp.stack([u, v], axis=-1)
        return xp.stack([self.u / self.d, self.v / self.d], axis=-1).astype(pdt)

    def backward(self, g):
        xp = xp_of(g)
        gx, gy = g[..., 0].astype(np.float64) / self.d, g[..., 1].astype(np.float64) / self.d
        ww, hh = self.p
        terms = (ww, hh, 1.0)
        rows = [[(gx * t).sum(axis=(1, 2)) for t in terms],
                [(gy * t).sum(axis=(1, 2)) for t in terms]]
        if not self.affine:
            gd = -(gx * self.u + gy * self.v) / self.d
            rows.append([(gd * t).sum(axis=(1, 2)) for t in terms])
        return xp.stack([xp.stack(r, axis=-1) for r in rows], axis=1).astype(self.mat_dtype)


# Upstream's CPU warp_affine and warp_perspective run OpenCV's algorithms when the image is
# NHWC float32 or uint8 with few channels (affine 1-3 channels, perspective 1 or 3, with or
# without mat_idx; upstream 1.13 measured): the source point is rounded to the 1/32-pixel grid of
# the interpolation tables (nearest: to whole pixels); warp_affine first computes it in
# 1/1024-pixel fixed point. A point 0.667 px into a pixel samples at 21/32 = 0.656.
# Upstream's CUDA kernels have no such grid, nor does this engine on GPUs.
_AB_BITS, _INTER_BITS = 10, 5


def _cv_affine_points(xp, m, ww, hh, interp):
    """OpenCV's warpAffine source points for the (B, 2, 3) float64 ``m``: per row, the
    column term ``round(M[r, 0] * w * 1024)`` plus ``round((M[r, 1] * h + M[r, 2]) * 1024)``
    and a rounding offset, shifted down to the interpolation grid; returned as (x, y) in
    pixels. ``rint`` is C's saturate_cast<int>: round half to even."""
    if interp == "nearest":
        shift, delta = _AB_BITS, 1 << (_AB_BITS - 1)
    else:
        shift, delta = _AB_BITS - _INTER_BITS, 1 << (_AB_BITS - _INTER_BITS - 1)
    scale = float(1 << _AB_BITS)
    points = []
    for r in (0, 1):
        col = xp.rint(m[:, r, 0, None, None] * ww * scale).astype(np.int64)
        row = xp.rint((m[:, r, 1, None, None] * hh + m[:, r, 2, None, None]) * scale)
        fixed = (row.astype(np.int64) + delta + col) >> shift  # an arithmetic (floor) shift
        points.append(fixed.astype(np.float64) / (1 << (_AB_BITS - shift)))
    return points


def _cv_perspective_points(xp, u, v, d, interp):
    """OpenCV's warpPerspective source points from the exact homogeneous (u, v, d): each of
    ``u * 32 / d`` and ``v * 32 / d`` rounded (half to even) to an int, clamped to C's int
    range first, read on the 1/32-pixel grid; nearest rounds ``u / d`` to whole pixels; a
    zero ``d`` gives the point 0."""
    scale = 1.0 if interp == "nearest" else float(1 << _INTER_BITS)
    with np.errstate(divide="ignore"):
        w = xp.where(d != 0, scale / xp.where(d != 0, d, 1.0), 0.0)
    limit = float(np.iinfo(np.int32).max)
    return [xp.rint(xp.clip(t * w, -limit - 1, limit)) / scale for t in (u, v)]


def _check_modes(what, border_mode, interp_mode, interps=("linear", "nearest")):
    border_mode, interp_mode = str(border_mode).lower(), str(interp_mode).lower()
    if border_mode not in _BORDERS:
        raise ArgumentError(f"{what}: border_mode must be one of {_BORDERS}, got {border_mode!r}")
    if interp_mode not in interps:
        raise ArgumentError(f"{what}: interp_mode must be one of {interps}, got {interp_mode!r}")
    return border_mode, interp_mode


def _sample(what, inp, points, border_mode, border_val, interp_mode, batch, channels_last,
            cv=False):
    """Run `_Sample` on an NCHW (or NHWC) image; integer images are rounded back to their dtype
    as upstream's CPU kernels do: OpenCV's (``cv``) in fixed point, halves up, with the border
    value cast to the dtype first (C's cast: truncated, wrapped); the others clip and round
    halves away from zero."""
    if inp.ndim != 4:
        raise ValueError(f"{what}: inp must be a 4-d image batch, got shape {inp.shape}")
    img = inp.transpose(0, 3, 1, 2) if channels_last else inp
    int_dtype = None if img.dtype.kind == "f" else img.dtype
    if img.dtype.kind == "b":  # (no bool kernel upstream; a cast back to bool would be lossy)
        raise TypeError(f"{what}: bool images are not supported; convert with "
                        ".astype('uint8') or .astype('float32')")
    plain_int = int_dtype is not None and int_dtype.metadata is None
    if int_dtype is not None:
        img = _astype_real(img, np.float32, what)
    border_val = _real(border_val, "border_val", what)
    if plain_int and cv:  # upstream 1.13 measured (uint8): 300 -> 44, -1 -> 255, 8.7 -> 8
        # (x86 truncates to a 32-bit int first; beyond its range that is INT_MIN)
        whole = int(border_val) if abs(border_val) < 2.0 ** 31 else -2 ** 31
        border_val = float(np.array(whole, np.int64).astype(int_dtype))
    extra = () if batch is None else (batch,)
    order = "table" if cv else ("remap" if what == "remap" else "warp")
    out = apply(_Sample(interp_mode, border_mode, border_val, order), img, points, *extra)
    if int_dtype is not None and not plain_int:
        out = out.astype(int_dtype)  # a quantized image: sampled values, quantized again
    elif plain_int:
        out = apply(_RoundSaturate(int_dtype, half_away=not cv, half_up=cv), out)
    return out.transpose(0, 2, 3, 1) if channels_last else out


class _RoundSaturate(Op):
    """Float pixels back to an integer dtype: rounded to nearest (halves to even; away from
    zero with ``half_away``, up with ``half_up``), clipped to its range."""

    def __init__(self, dtype, half_away=False, half_up=False):
        self.dtype, self.half_away, self.half_up = np.dtype(dtype), half_away, half_up

    def forward(self, x):
        xp, info = xp_of(x), np.iinfo(self.dtype)
        if self.half_up:  # OpenCV's fixed point: (sum + half) >> bits
            rounded = xp.floor(x.astype(np.float64) + 0.5)
        elif self.half_away:  # (floor(|x| + 0.5) in float32 would take 0.49999997 to 1)
            rounded = round_half_away(xp, x)
        else:
            rounded = xp.rint(x)
        return xp.clip(rounded, info.min, info.max).astype(self.dtype)

    def backward(self, g):
        return None


def _out_hw(out_shape, what):
    shape = _shape_arg(out_shape, what)
    if len(shape) == 1:
        shape = shape * 2
    # (each size against 1: min() of two sizes of a dumpable trace would guard h < w)
    if len(shape) != 2 or any(s < 1 for s in shape):
        raise ArgumentError(f"{what}: out_shape must be (h, w) with positive sizes, got "
                            f"{out_shape!r}")
    return shape


def remap(inp, map_xy, border_mode="replicate", scalar=0.0, interp_mode="linear"):
    """Sample NCHW ``inp`` at ``map_xy`` (N, OH, OW, 2), whose last axis is the source (x, y) of
    each output pixel; the output is (N, C, OH, OW). With ``megengine.config._conv_format``
    "NHWC", as upstream, ``inp`` and the output are NHWC.

    ``border_mode``: "replicate", "constant" (with ``scalar``), "reflect", "reflect_101", "wrap".
    ``interp_mode``: "linear" or "nearest". Gradients reach ``inp`` and (linear) ``map_xy``.
    """
    channels_last = _config._effective_conv_format("NCHW", "remap") == "NHWC"
    inp, map_xy = _tensor(inp), _tensor(map_xy)
    border_mode, interp_mode = _check_modes("remap", border_mode, interp_mode)
    if map_xy.ndim != 4 or map_xy.shape[-1] != 2 or map_xy.shape[0] != inp.shape[0]:
        raise ShapeError(f"remap: map_xy must be (N, OH, OW, 2) with N = {inp.shape[0]}, got "
                         f"shape {map_xy.shape}")
    map_xy = map_xy if map_xy.dtype.kind == "f" else _astype_real(map_xy, np.float32, "remap")
    scalar = _real(scalar, "scalar", "remap")
    if inp.dtype.kind in "iu" and inp.dtype.metadata is None:
        # an integer image's border value is rounded to its dtype first (upstream 1.13
        # measured: uint8 0.5 -> 1, 300 -> 255, -1 -> 0)
        info = np.iinfo(inp.dtype)
        scalar = float(round_half_away(np, np.clip(float(scalar), info.min, info.max)))
    return _sample("remap", inp, map_xy, border_mode, scalar, interp_mode, None, channels_last)


def _warp(what, inp, mat, out_shape, mat_idx, border_mode, border_val, format, interp_mode,
          rows):
    inp, mat = _tensor(inp), _tensor(mat)
    border_mode, interp_mode = _check_modes(what, border_mode, interp_mode)
    format = _config._effective_conv_format(format, what)  # the global switch wins, as upstream
    if mat.ndim != 3 or mat.shape[1:] != (rows, 3):
        raise ShapeError(f"{what}: mat must be (B, {rows}, 3), got shape {mat.shape}")
    n = inp.shape[0]
    batch = None
    if mat_idx is not None:
        batch = mat_idx
        if not isinstance(mat_idx, Tensor):
            # (np.asarray(mat_idx, np.int32) truncated floats and refused a string in its words)
            batch = Tensor(mat_idx, device=inp.device)
            if batch.dtype.kind not in "iu":
                raise ArgumentTypeError(f"{what}: mat_idx must hold image indices (integers), "
                                        f"got {batch.dtype} values")
            batch = batch.astype(np.int32).reshape(-1)
        idx = batch._peek().reshape(-1)  # a check only: unseen by jit.trace
        if idx.shape[0] != mat.shape[0] or (idx.size and (idx.min() < 0 or n <= idx.max())):
            raise ValueError(f"{what}: mat_idx must give one image index in [0, {n}) per matrix "
                             f"({mat.shape[0]}), got {idx.tolist()}")
    elif mat.shape[0] != n:
        raise ShapeError(f"{what}: {mat.shape[0]} matrices for {n} images; give mat_idx to "
                         "pair them")
    if mat.dtype.kind != "f":
        mat = mat.astype(np.float32)
    oh, ow = _out_hw(out_shape, what)
    cv_grid = None
    channels = (1, 2, 3) if rows == 2 else (1, 3)
    if (format == "NHWC" and inp.ndim == 4 and inp.shape[3] in channels
            and (inp.dtype in (np.float32, np.uint8) or inp.dtype.metadata is not None)
            and str(inp._device).startswith("cpu")):
        # upstream's CPU kernel for these is OpenCV's (see above); a quantized image samples
        # its values as a float32 one does
        cv_grid = interp_mode
    points = apply(_PerspectivePoints(oh, ow, cv_grid), mat)
    return _sample(what, inp, points, border_mode, border_val, interp_mode, batch,
                   format == "NHWC", cv=cv_grid is not None)


def warp_perspective(inp, mat, out_shape, mat_idx=None, border_mode="replicate", border_val=0.0,
                     format="NCHW", interp_mode="linear"):
    """Perspective-warp images: output pixel (h, w) reads the input at
    ``((M00 w + M01 h + M02) / d, (M10 w + M11 h + M12) / d)``, ``d = M20 w + M21 h + M22``
    (``mat`` maps output to input: the inverse of cv2.warpPerspective's matrix).

    ``mat`` is (B, 3, 3); ``mat_idx`` (B,) picks the input image of each matrix (default: one
    matrix per image). ``out_shape`` is (h, w). Border and interpolation modes as `remap`.
    Gradients reach ``inp`` and ``mat``.

    On the CPU, an NHWC float32 or uint8 image of 1 or 3 channels samples where upstream's
    CPU kernel (OpenCV's algorithm) does: source points rounded to 1/32 pixel (nearest mode:
    to whole pixels), uint8 results rounded halves up, a uint8 ``border_val`` truncated.
    Elsewhere the points are computed in float32 as upstream's other kernels do (on GPUs too;
    upstream's CUDA kernel has no 1/32 grid). The gradient in ``mat`` is that of the exact
    points either way.
    """
    return _warp("warp_perspective", inp, mat, out_shape, mat_idx, border_mode, border_val,
                 format, interp_mode, 3)


def warp_affine(inp, mat, out_shape, border_mode="replicate", border_val=0.0, format="NHWC",
                interp_mode="linear"):
    """Affine-warp images: output pixel (h, w) reads the input at
    ``(M00 w + M01 h + M02, M10 w + M11 h + M12)`` for ``mat`` (N, 2, 3).

    The default ``format`` is "NHWC", as upstream. Border and interpolation modes as `remap`.
    Differentiable in ``inp`` and ``mat`` (upstream's is forward-only).

    On the CPU, an NHWC float32 or uint8 image of 1-3 channels samples where upstream's CPU
    kernel (OpenCV's algorithm) does: source points rounded to 1/32 pixel (nearest mode: to
    whole pixels), uint8 results rounded halves up, a uint8 ``border_val`` truncated.
    Elsewhere (other layouts, dtypes, GPUs) the points are computed in float32 as upstream's
    other kernels do. The gradient in ``mat`` is that of the exact points either way.
    """
    return _warp("warp_affine", inp, mat, out_shape, None, border_mode, border_val, format,
                 interp_mode, 2)


# ----- non-maximum suppression -----

def _iou_matrix(xp, boxes):
    """Pairwise intersection-over-union of (N, 4) xyxy boxes (areas without the +1 of pixels)."""
    x1, y1, x2, y2 = (boxes[:, i] for i in range(4))
    area = (x2 - x1) * (y2 - y1)
    iw = xp.clip(xp.minimum(x2[:, None], x2) - xp.maximum(x1[:, None], x1), 0, None)
    ih = xp.clip(xp.minimum(y2[:, None], y2) - xp.maximum(y1[:, None], y1), 0, None)
    inter = iw * ih
    union = area[:, None] + area - inter
    return inter / xp.where(union > 0, union, 1)


def _nms_keep_rows(boxes, order, iou_thresh, max_output):
    """The greedy walk on the host with one IoU row per kept box: O(kept x N) time and O(N)
    memory, where the full matrix takes N**2 (the detection programs' RPN runs nms over ~5,000
    proposals at 128 px and ~10,000 at 800 px: 200-800 MB per float64 matrix)."""
    b = boxes[order].astype(np.float64)
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    area = (x2 - x1) * (y2 - y1)
    alive = np.ones(len(order), bool)
    keep = []
    for i in range(len(order)):
        if not alive[i]:
            continue
        keep.append(i)
        if len(keep) == max_output:
            break
        rest = slice(i + 1, None)
        iw = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        ih = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = iw * ih
        union = area[i] + area[rest] - inter
        alive[rest] &= ~(inter / np.where(union > 0, union, 1) > iou_thresh)
    return order[np.asarray(keep, np.int64)].astype(np.int32)


def _nms_keep(xp, boxes, scores, iou_thresh, max_output):
    if scores.dtype.kind != "f":  # (-scores of uint8 or bool wraps or refuses; float64 is exact)
        scores = scores.astype(np.float64)
    order = xp.argsort(-scores, kind="stable")
    if xp is np:
        return _nms_keep_rows(boxes, order, iou_thresh, max_output)
    # on a GPU one matrix (then one transfer) beats a host round trip per kept box
    iou = _iou_matrix(xp, boxes[order].astype(np.float64))
    over = iou > iou_thresh
    alive = np.ones(len(order), bool)
    keep = []
    over = over.get() if hasattr(over, "get") else over  # the greedy walk runs on the host
    for i in range(len(order)):  # one step per kept box, each a vector operation
        if not alive[i]:
            continue
        keep.append(i)
        if len(keep) == max_output:
            break
        alive &= ~over[i]
    return order[xp.asarray(keep, np.int64)].astype(np.int32)


_nms_keep.data_shaped = True  # (how many boxes it keeps)


def nms(boxes, scores, iou_thresh, max_output=None):
    """Greedy non-maximum suppression: indices (int32) of the kept ``boxes`` (N, 4) = xyxy, by
    descending ``scores`` (N,); a box is dropped when its IoU with a kept, higher-scoring box
    exceeds ``iou_thresh``. ``max_output`` caps how many are kept. No gradient.
    """
    boxes, scores = _tensor(boxes), _tensor(scores)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ArgumentError(f"nms: boxes must be (N, 4), got shape {boxes.shape}")
    if scores.ndim != 1 or scores.shape[0] != boxes.shape[0]:
        raise ArgumentError(f"nms: scores must be (N,) with N = {boxes.shape[0]}, got shape "
                            f"{scores.shape}")
    for t in (boxes, scores):
        if t.dtype.kind == "c":
            raise no_order("nms", t.dtype)
    if max_output is None:  # (no boxes keep none: the count below is the user's only)
        max_output = boxes.shape[0]
    else:
        max_output = _int(max_output, "max_output", "nms", follows=False)
        if max_output < 1:  # (upstream's pybind refuses a negative count, "Unable to cast",
            # and 0 aborts it; the loop here would have kept every box)
            raise ArgumentError(f"nms: max_output must be >= 1, got {max_output}")
    return apply(Compute(_nms_keep, _real(iou_thresh, "iou_thresh", "nms"), max_output),
                 boxes, scores)


# ----- correlation (FlowNet's cost volume) -----

def correlation(data1, data2, kernel_size=1, max_displacement=1, stride1=1, stride2=1,
                pad_size=0, is_multiply=True):
    """Cost volume of two NCHW feature maps, as FlowNet's (and megdnn's) Correlation.

    For each displacement (dy, dx) in ``stride2`` steps up to ``max_displacement`` (row-major:
    ``(2 * (max_displacement // stride2) + 1) ** 2`` output channels) and each output pixel (every
    ``stride1``-th position, ``pad_size`` zero padding), the ``kernel_size`` x ``kernel_size``
    patches of data1 and of data2 shifted by (dy, dx) are compared: mean over the patch and the
    channels of their product (``is_multiply``) or absolute difference. Differentiable in both.
    """
    _config._effective_conv_format("NCHW", "correlation", supported=("NCHW",))  # as upstream
    data1, data2 = _tensor(data1), _tensor(data2)
    if data1.ndim != 4 or data1.shape != data2.shape:
        raise ShapeError(f"correlation: data1 and data2 must be NCHW of one shape, got "
                         f"{data1.shape} and {data2.shape}")
    checked = []
    for name, v, low in (("kernel_size", kernel_size, 1), ("max_displacement", max_displacement, 0),
                         ("stride1", stride1, 1), ("stride2", stride2, 1),
                         ("pad_size", pad_size, 0)):
        # (a size from a dumpable trace's shapes fixes the channel count and the windows: its
        # value, a guard)
        if not is_int(v) or as_int(v) < low:  # (upstream: pybind's or its kernel's RuntimeError)
            raise (ArgumentError if is_int(v) else ArgumentTypeError)(
                f"correlation: {name} must be an int >= {low}, got {v!r}")
        checked.append(as_int(v))
    kernel_size, max_displacement, stride1, stride2, pad_size = checked
    if kernel_size % 2 == 0:
        raise ValueError(f"correlation: kernel_size must be odd, got {kernel_size}")
    n, c, h, w = data1.shape
    radius, grid_r = (kernel_size - 1) // 2, max_displacement // stride2
    border = max_displacement + radius
    out_h = -(-(h + 2 * pad_size - 2 * border) // stride1)
    out_w = -(-(w + 2 * pad_size - 2 * border) // stride1)
    if out_h < 1 or out_w < 1:
        raise ShapeError(f"correlation: an input of {h}x{w} with pad_size {pad_size} is too small "
                         f"for max_displacement {max_displacement} and kernel_size {kernel_size}")
    data1, data2 = (d if d.dtype.kind == "f" else _astype_real(d, np.float32, "correlation")
                    for d in (data1, data2))
    # float16 sums its products over the patch and the channels in float32, rounded once (added
    # up tap by tap in float16 it was 1.3x torch's float16 error: float16 fuzz case 52685)
    half = data1.dtype == data2.dtype == np.float16
    if half:
        data1, data2 = data1.astype("float32"), data2.astype("float32")
    widths = ((0, 0), (0, 0), (pad_size, pad_size), (pad_size, pad_size))
    p1, p2 = (pad(d, widths) if pad_size else d for d in (data1, data2))
    p1h, p1w = p1.shape[2], p1.shape[3]

    def window(t, y0, x0):
        # every stride1-th position from (y0, x0): (N, C, out_h, out_w); zeros past the edges
        ys, xs = y0 + stride1 * (out_h - 1) + 1, x0 + stride1 * (out_w - 1) + 1
        lo_y, lo_x = max(0, -y0), max(0, -x0)
        hi_y, hi_x = max(0, ys - p1h), max(0, xs - p1w)
        if lo_y or lo_x or hi_y or hi_x:  # displaced beyond the padding: read zeros there
            t = pad(t, ((0, 0), (0, 0), (lo_y, hi_y), (lo_x, hi_x)))
            y0, x0 = y0 + lo_y, x0 + lo_x
        return t[:, :, y0:y0 + stride1 * (out_h - 1) + 1:stride1,
                 x0:x0 + stride1 * (out_w - 1) + 1:stride1]

    channels = []
    for p in range(-grid_r, grid_r + 1):
        for o in range(-grid_r, grid_r + 1):
            total = 0
            for j in range(-radius, radius + 1):
                for i in range(-radius, radius + 1):
                    a = window(p1, border + j, border + i)
                    b = window(p2, border + j + p * stride2, border + i + o * stride2)
                    d = a * b if is_multiply else abs(a - b)
                    total = total + d.sum(axis=1)
            channels.append(total / (kernel_size * kernel_size * c))
    out = stack(channels, axis=1)
    return out.astype("float16") if half else out


# ----- colour conversion (NHWC images) -----
# float32 modes are linear maps (differentiable); uint8 modes use megdnn's fixed-point formulas.

_GRAY = (0.299, 0.587, 0.114)  # R, G, B
# megdnn's RGB2YUV reads the channels in B, G, R weight order and emits (Y, Cr, Cb) as coded
_YUV_FROM = np.array([[0.114, 0.587, 0.299], [0.492 * 0.886, -0.492 * 0.587, -0.492 * 0.299],
                      [-0.877 * 0.114, -0.877 * 0.587, 0.877 * 0.701]])
_FLOAT_MODES = ("RGB2GRAY", "BGR2GRAY", "RGB2YUV", "YUV2RGB", "GRAY2RGB")
_YUV420 = {  # mode -> (to rgb, planar, u before v, bt601)
    "YUV2RGB_NV21": (True, False, False, False), "YUV2BGR_NV21": (False, False, False, False),
    "YUV2RGB_NV12": (True, False, True, False), "YUV2BGR_NV12": (False, False, True, False),
    "YUV2RGB_YV12": (True, True, False, False), "YUV2BGR_YV12": (False, True, False, False),
    "YUV2RGB_YU12": (True, True, True, False), "YUV2BGR_YU12": (False, True, True, False),
    "YCrCb2RGB": (True, False, False, False), "YCrCb2BGR": (False, False, False, False),
}
_YUV420.update({"BT601_" + k: v[:3] + (True,) for k, v in list(_YUV420.items())
                if not k.startswith("YCrCb")})
_UINT8_MODES = ("RGB2GRAY", "BGR2GRAY", "RGBA2GRAY", "RGB2YUV", "YUV2RGB", "GRAY2RGB",
                "RGBA2RGB", "RGBA2BGR", "RGB2BGR", "BGR2RGB", "YUV2GRAY_NV21", "YUV2GRAY_NV12",
                "YUV2GRAY_YV12", "YUV2GRAY_YU12") + tuple(_YUV420)
_IN_CHANNELS = {"GRAY2RGB": 1, "RGBA2GRAY": 4, "RGBA2RGB": 4, "RGBA2BGR": 4}


def _descale(x, bits):
    return (x + (1 << (bits - 1))) >> bits


def _yuv420_to_rgb(xp, src, to_rgb, planar, u_first, bt601):
    """(N, 3H/2, W, 1) YUV 4:2:0 uint8 frames -> (N, H, W, 3)."""
    n, rows, w = src.shape[:3]
    h = rows * 2 // 3
    s = src[..., 0].astype(np.int64)
    y = s[:, :h]
    if planar:  # Y plane, then two (H/2, W/2) chroma planes
        flat = s[:, h:].reshape(n, -1)
        q = (h // 2) * (w // 2)
        first, second = flat[:, :q].reshape(n, h // 2, w // 2), flat[:, q:2 * q].reshape(
            n, h // 2, w // 2)
    else:  # interleaved chroma pairs
        first, second = s[:, h:, 0::2], s[:, h:, 1::2]
    u, v = (first, second) if u_first else (second, first)
    u = xp.repeat(xp.repeat(u, 2, axis=1), 2, axis=2)[:, :h, :w]
    v = xp.repeat(xp.repeat(v, 2, axis=1), 2, axis=2)[:, :h, :w]
    if bt601:  # libyuv's BT.601 fixed point
        yg, ygb, ub, ug, vg, vr = 18997, -1160, -128, 25, 52, -102
        y1 = (y * 0x0101 * yg) >> 16
        b = (-(u * ub) + y1 + ub * 128 + ygb) >> 6
        g = (-(u * ug + v * vg) + y1 + ug * 128 + vg * 128 + ygb) >> 6
        r = (-(v * vr) + y1 + vr * 128 + ygb) >> 6
    else:  # JPEG YCrCb
        r = y + ((359 * (v - 128)) >> 8)
        g = y - ((88 * (u - 128) + 183 * (v - 128)) >> 8)
        b = y + ((454 * (u - 128)) >> 8)
    out = xp.stack([r, g, b] if to_rgb else [b, g, r], axis=-1)
    return xp.clip(out, 0, 255).astype(np.uint8)


def _cvt_uint8(xp, x, mode):
    xi = x.astype(np.int64)
    if mode in ("RGB2GRAY", "BGR2GRAY", "RGBA2GRAY"):
        r, g, b = (xi[..., 2], xi[..., 1], xi[..., 0]) if mode == "BGR2GRAY" else \
            (xi[..., 0], xi[..., 1], xi[..., 2])
        return _descale(r * 4899 + g * 9617 + b * 1868, 14)[..., None].astype(np.uint8)
    if mode == "GRAY2RGB":
        return xp.repeat(x, 3, axis=-1)
    if mode in ("RGBA2RGB",):
        return x[..., :3].copy()
    if mode in ("RGBA2BGR", "RGB2BGR", "BGR2RGB"):
        return x[..., 2::-1].copy()
    if mode == "RGB2YUV":
        v0, v1, v2 = xi[..., 0], xi[..., 1], xi[..., 2]
        yy = _descale(v0 * 1868 + v1 * 9617 + v2 * 4899, 14)
        cr = _descale((v0 - yy) * 8061 + (128 << 14), 14)
        cb = _descale((v2 - yy) * 14369 + (128 << 14), 14)
        return xp.clip(xp.stack([yy, cr, cb], axis=-1), 0, 255).astype(np.uint8)
    if mode == "YUV2RGB":
        yy, cr, cb = xi[..., 0], xi[..., 1] - 128, xi[..., 2] - 128
        out = xp.stack([yy + _descale(cr * 33292, 14),
                        yy + _descale(cb * -9519 + cr * -6472, 14),
                        yy + _descale(cb * 18678, 14)], axis=-1)
        return xp.clip(out, 0, 255).astype(np.uint8)
    if mode.startswith("YUV2GRAY_"):
        return x[:, :x.shape[1] * 2 // 3].copy()
    return _yuv420_to_rgb(xp, x, *_YUV420[mode])


@_amp.not_covered  # upstream's CvtColor op: autocast leaves it alone (its matmul here too)
def cvt_color(inp, mode=""):
    """Convert NHWC images between colour formats, as upstream's modes.

    float32: "RGB2GRAY", "BGR2GRAY", "RGB2YUV", "YUV2RGB", "GRAY2RGB" (differentiable).
    uint8: those and "RGBA2RGB", "RGBA2BGR", "RGBA2GRAY", "RGB2BGR", "BGR2RGB", the YUV 4:2:0
    frames ((N, 3H/2, W, 1) input) "YUV2GRAY_*", "YUV2RGB_*"/"YUV2BGR_*" for NV21, NV12, YV12,
    YU12, "YCrCb2RGB"/"YCrCb2BGR" and the "BT601_YUV2RGB_*"/"BT601_YUV2BGR_*" ones.
    """
    inp = _tensor(inp)
    if isinstance(mode, (int, float)):  # (upstream: TypeError, its `in` test on the mode)
        raise ArgumentTypeError(f"cvt_color: mode must be a mode name such as 'RGB2GRAY', got "
                                f"{mode!r}")
    mode = str(mode) if "YCrCb" in str(mode) else str(mode).upper()
    if inp.ndim != 4:
        raise ValueError(f"cvt_color: inp must be NHWC images, got shape {inp.shape}")
    if inp.dtype.kind == "c":
        raise complex_error("cvt_color", inp.dtype)
    floating = inp.dtype.kind == "f"
    if not floating:  # (a quint8 image is no uint8 image: its values are not its integers)
        refuse_quantized("cvt_color", inp)
    modes = _FLOAT_MODES if floating else _UINT8_MODES
    if mode not in modes:
        raise ArgumentError(f"cvt_color: mode {mode!r} is not supported for {inp.dtype} images; "
                            f"supported: {list(modes)}")
    want = _IN_CHANNELS.get(mode, 1 if mode.startswith(("YUV2GRAY", "YUV2RGB_", "YUV2BGR_",
                                                        "YCrCb", "BT601")) else 3)
    if inp.shape[-1] != want:
        raise ShapeError(f"cvt_color: mode {mode} needs {want} channel(s) in the last axis, got "
                         f"shape {inp.shape}")
    if not floating:
        if inp.dtype != np.uint8:
            raise TypeError(f"cvt_color: integer images must be uint8, got {inp.dtype} (convert "
                            "with .astype('uint8') or .astype('float32'))")
        if mode in _YUV420 or mode.startswith("YUV2GRAY"):
            if inp.shape[1] % 3 or inp.shape[2] % 2:
                raise ValueError(f"cvt_color: a YUV 4:2:0 frame must have 3H/2 rows (H even) and "
                                 f"an even width, got shape {inp.shape}")
        return apply(Compute(_cvt_uint8, mode), inp)
    if mode == "GRAY2RGB":
        return concat([inp, inp, inp], axis=-1)
    if mode in ("RGB2GRAY", "BGR2GRAY"):
        weights = _GRAY if mode == "RGB2GRAY" else _GRAY[::-1]
        mat, bias = np.array([weights]), np.zeros(1)
    elif mode == "RGB2YUV":
        mat, bias = _YUV_FROM, np.array([0.0, 0.5, 0.5])
    else:  # YUV2RGB
        mat = np.array([[1, 2.032, 0], [1, -0.395, -0.581], [1, 0, 1.140]])
        bias = -mat[:, 1:] @ np.array([0.5, 0.5])
    # float16 in float32 (its coefficients too: 2.032 has no float16), rounded once
    dtype = promote_types(inp.dtype, np.dtype(np.float32))
    x = inp if inp.dtype == dtype else inp.astype(dtype)
    # (dtype given: a float64 array alone would be stored as float32)
    out = matmul(x, Tensor(mat.T, dtype=dtype, device=inp.device)) + \
        Tensor(bias, dtype=dtype, device=inp.device)
    return out if inp.dtype == dtype else out.astype(inp.dtype)


# ----- optical flow -----

def nvof(src, precision=1):
    """Upstream: optical flow of consecutive frames by NVIDIA's Optical Flow SDK (``src``: uint8
    (n, t, h, w, 4)). That SDK runs on the optical-flow unit of NVIDIA GPUs, driven from
    MegEngine's C++ core, which this fork does not have: the call checks its input as upstream
    does, then refuses with what to do instead."""
    src = _tensor(src)
    if src.ndim != 5 or src.shape[4] != 4:
        raise ArgumentError(f"nvof: src must be (n, t, h, w, 4), got shape {src.shape}")
    raise RuntimeError("megengine.functional.vision.nvof: NVIDIA's Optical Flow SDK runs inside "
                       "MegEngine's C++ core on a GPU's optical-flow unit, which this fork does "
                       "not have; compute the flow with the SDK or OpenCV's CUDA module "
                       "(NVIDIA optical flow) and pass it in as a tensor")


# Upstream's vision module also holds these functions of F at module level (F.vision.floor, ...)
from .elemwise import floor  # noqa: E402,F401
from .math import argsort  # noqa: E402,F401
from .tensor import broadcast_to, expand_dims, reshape, transpose  # noqa: E402,F401
