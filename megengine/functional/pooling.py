"""Pooling (F.nn.max_pool2d/avg_pool2d and the adaptive ones) on ATen's kernels, forward and backward.

The ops keep upstream's semantics (stride defaults to the window, max padding is the dtype's
lowest value (a window of padding alone gives it, as upstream's kernel: -3.4e38 for float32),
the two average modes, upstream's adaptive window rule) and run ``aten.max_pool2d_with_indices`` /
``aten.avg_pool2d`` and their backward kernels on zero-copy views of the engine's arrays. Two
measured choices on the CPU: max pooling of non-overlapping windows is faster as numpy slices
(see `_Pool2d._disjoint_max`), of overlapping ones on ATen's channels-last kernel
(`_Pool2d._max_channels_last`).
"""
import numpy as np

from ..core import _config
from ..core._trace_option import is_dim
from ..core.dispatch import FLOAT16, KERNEL_FLOATS, Op, apply, xp_of
from ..core.fused import fused_kernel
from ..core.dtype_rules import no_order
from ..core.ops import ArgumentError, ShapeError, cast, finite_sum
from ..core.tensor import Tensor
from . import _aten
from ._args import _as_float, _int_pair, _size, _tensor
from .elemwise import any_nan_array

__all__ = ["adaptive_avg_pool2d", "adaptive_max_pool2d", "avg_pool2d", "max_pool2d"]


def _lowest(dtype):
    """The lowest value of a float or integer dtype as a Python number (max pooling's
    padding; numpy's iinfo gives a Python int, finfo a numpy scalar)."""
    return np.finfo(dtype).min.item() if dtype.kind == "f" else int(np.iinfo(dtype).min)


class _Pool2d(Op):
    """Max or average pooling of an NCHW input.

    ATen pads implicitly only up to half the window; upstream allows any padding, so a wider
    padding is made explicit (``constant_pad_nd``: the lowest value for max, 0 for average) and
    the kernel runs unpadded; "average_count_exclude_padding" then rescales each window by
    kh * kw / (its real elements).

    Max pooling's gradient: windows that do not overlap (kernel <= stride) give theirs whole to
    every element equal to their maximum, as upstream's kernel does (torch gives it to the
    first maximum alone); overlapping windows give it to the first maximum, ATen's scatter by
    index: upstream's rule there needs a pass per kernel tap, about 15x ATen's backward
    (ResNet-18's 3x3 stride 2 pooling at batch 8: ~105 ms against 6.5 on one thread).
    """
    format_rule = "keep"  # how a tensor format label passes (megengine.core.format)

    def __init__(self, mode, kernel, stride, padding, what):
        self.mode, self.kernel, self.stride, self.padding, self.what = \
            mode, kernel, stride, padding, what
        self.slices = None  # the kernel taps, when disjoint max windows run as numpy slices
        self.tiled = None  # (x, y) when the backward is `_tiled_max_backward`'s one kernel

    # float16 on the CPU pools in float32, each result rounded to float16 once (the maxima and
    # their gradients are exact either way; averages add in float32, as torch's): ATen's
    # float16 CPU kernels and numpy's float16 loops took ~10x float32 (one thread, 2x2 max
    # pooling of (16, 32, 32, 32), forward and backward: 59 ms against 6.3)
    half_in_float32 = True

    def computes_half(self, arrays):
        """Any float16 numpy input (`half_in_float32`), however small, as this op has pooled
        float16 since it first did so in float32 (the values stay)."""
        return type(arrays[0]) is np.ndarray

    def forward(self, x):
        if x.dtype.metadata is not None:  # a quantized tensor (megengine.core.tensor.dtype)
            return self._quantized(x)
        what = self.what
        if x.ndim != 4:
            raise ShapeError(f"{what}: expected a 4-d input (N, C, H, W), got shape {x.shape}")
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        if min(kh, kw, sh, sw) < 1 or min(ph, pw) < 0:
            raise ArgumentError(f"{what}: kernel_size {self.kernel} and stride {self.stride} "
                                f"must be positive and padding {self.padding} non-negative")
        n, c, h, w = x.shape
        oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        if oh < 1 or ow < 1:
            raise ShapeError(f"{what}: input of shape {x.shape} is smaller than the window "
                             f"{self.kernel} (padding {self.padding})")
        aten = _aten.aten()
        is_max = self.mode == "max"
        if not is_max:
            x = _as_float(x, self)
        elif x.dtype.kind == "c":
            raise no_order(what, x.dtype)
        elif x.dtype.kind == "b":  # (ATen has no bool max pooling; uint8 has the same order)
            return self.forward(x.view(np.uint8)).view(np.bool_)
        self.x_dtype = x.dtype
        tx = _aten.view(x)
        self.explicit = 2 * ph > kh or 2 * pw > kw
        pad = self.padding
        if self.explicit:
            fill = _lowest(x.dtype) if is_max else 0.0
            tx = aten.constant_pad_nd(tx, [pw, pw, ph, ph], fill)
            pad = (0, 0)
        self.tx, self.pad = tx, pad
        if is_max:
            # windows that do not overlap give their gradient to every tied maximum, as
            # upstream's kernel does; overlapping ones to the first maximum (see the class)
            self.tied = kh <= sh and kw <= sw
            if self.tied and not (ph or pw) and type(x) is np.ndarray and not (
                    x.dtype.kind == "f" and any_nan_array(x)):
                return self._disjoint_max(x, oh, ow)
            if type(x) is np.ndarray and x.dtype in KERNEL_FLOATS:
                y = self._max_channels_last(tx)
            elif type(x) is not np.ndarray and x.dtype.kind in "iu":
                # ATen's CUDA max pooling has no integer kernels ("not implemented for
                # 'Int'"; bools come here as uint8): the maximum over the kernel taps, exact
                self.indices = None  # (integers take no gradient)
                y = self._max_over_taps(tx, oh, ow)
            else:
                ty, indices = aten.max_pool2d_with_indices(tx, self.kernel, self.stride, pad,
                                                           (1, 1), False)
                self.indices = None if self.tied else indices
                y = _aten.array(ty)
            if self.tied:  # (backward compares the input with the maxima)
                self.ty = _aten.view(y)
                if _use_tiled_kernel(x, self.kernel, self.stride, self.padding):
                    self.tiled = (x, y)
            return y
        include = self.mode == "average"
        y = _aten.op("avg_pool2d")(tx, self.kernel, self.stride, pad, False,
                                   include or self.explicit, None)
        self.scale = None
        if self.explicit and not include:  # ATen divided by kh*kw: divide by the real count
            top, left = np.arange(oh) * sh - ph, np.arange(ow) * sw - pw
            rows = np.minimum(top + kh, h) - np.maximum(top, 0)
            cols = np.minimum(left + kw, w) - np.maximum(left, 0)
            count = rows[:, None] * cols[None, :]
            if (count <= 0).any():
                raise ValueError(f"{what}: padding {self.padding} leaves windows with no input "
                                 f"element to average (input shape {x.shape}, window "
                                 f"{self.kernel}, stride {self.stride})")
            self.scale = tx.new_tensor((kh * kw) / count)
            y = y.mul_(self.scale)
        return _aten.array(y)

    def _max_over_taps(self, tx, oh, ow):
        """Max pooling as the elementwise maximum of one strided slice of the padded plane per
        kernel tap (any dtype torch's maximum takes; the GPU's integers)."""
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.pad
        if ph or pw:  # ATen's implicit padding: the lowest value
            tx = _aten.aten().constant_pad_nd(tx, [pw, pw, ph, ph], _lowest(self.x_dtype))
        torch, y = _aten.torch_module(), None
        for i in range(kh):
            for j in range(kw):
                tap = tx[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]
                y = tap.clone(memory_format=torch.contiguous_format) if y is None \
                    else torch.maximum(y, tap, out=y)
        return _aten.array(y)

    def _max_channels_last(self, tx):
        """Overlapping max windows on the CPU: ATen's channels-last kernel on a channels-last
        copy of the input, the result copied back to NCHW.

        ATen's NCHW max pooling walks one window at a time; its channels-last kernel reduces
        whole rows of channels with SIMD. Measured with one thread, 3x3 stride 2 padding 1,
        forward including both copies: (1, 24, 112, 112) 0.45 ms against 2.3 (ShuffleNetV2's
        pooling); (8, 64, 112, 112) 11 ms against 49 (ResNet-18's); (32, 128, 7, 7) 0.24
        against 1.8. The indices are the same flat offsets either way, so backward stays on the
        NCHW kernel (faster there: 0.07 ms against 0.39 for the first shape) with the indices
        made contiguous. Without a gradient to compute no indices are made.
        """
        tcl = tx.contiguous(memory_format=_aten.torch_module().channels_last)
        if self.tied or not any(getattr(self, "needs_input_grad", (True,))):
            self.indices = None
            y = _aten.op("max_pool2d")(tcl, self.kernel, self.stride, self.pad, (1, 1), False)
            return _aten.array(y.contiguous())
        y, indices = _aten.op("max_pool2d_with_indices")(tcl, self.kernel, self.stride,
                                                         self.pad, (1, 1), False)
        self.indices = indices.contiguous()
        return _aten.array(y.contiguous())

    def _quantized(self, x):
        """Pooling of quantized integers (inference): max, or the average of the stored
        integers rounded half away from zero (upstream's integer pooling), in the input's dtype.
        Padding holds the real value 0, the zero point; an asymmetric dtype's average is
        rounded as stored (126.5 -> 127 with zero point 128), not as its distance to the zero
        point, as upstream 1.13 measured."""
        from ..core import dtype as qdtype

        meta = qdtype.quant_meta(x.dtype)
        if meta is None:
            return self.forward(x.view(np.dtype(x.dtype.str)))
        zp = x.dtype.metadata["mgb_dtype"].get("zero_point", 0)
        y = self.forward(x.astype(np.float32) - np.float32(zp)) + np.float32(zp)
        q = qdtype.round_half_away(xp_of(y), y)
        return q.clip(meta.qmin, meta.qmax).astype(x.dtype)

    def _disjoint_max(self, x, oh, ow):
        """Max pooling of windows that do not overlap (kernel <= stride, no padding), on the
        CPU: one strided slice per kernel tap, no window copies.

        Measured with one thread: ATen's NCHW max pooling is not vectorised along a row; on the
        benchmark CNN's (64, 8, 28, 28) 2x2 pooling its forward + backward take ~2.7 ms, these
        slices ~0.8 ms. Overlapping windows (ResNet's 3x3 stride 2) stay on ATen, whose backward
        scatters by index where slices would need a pass per tap.
        """
        (kh, kw), (sh, sw) = self.kernel, self.stride
        self.slices = [(slice(i, i + sh * (oh - 1) + 1, sh), slice(j, j + sw * (ow - 1) + 1, sw))
                       for i in range(kh) for j in range(kw)]
        out = x[(Ellipsis,) + self.slices[0]].copy()
        for si, sj in self.slices[1:]:
            np.maximum(out, x[:, :, si, sj], out=out)
        self.x, self.out = x, out
        return out

    def _disjoint_hits(self):
        """(row slice, column slice, mask) per kernel tap: the mask marks the windows whose
        gradient goes to that tap, those where it holds the maximum (every tied one, as
        upstream routes ties)."""
        x, out = self.x, self.out
        for si, sj in self.slices:
            yield si, sj, x[:, :, si, sj] == out

    def _disjoint_max_backward(self, g):
        """Each input element is in at most one window: the gradient is a masked copy of g into
        the maxima of each window."""
        (kh, kw), (sh, sw) = self.kernel, self.stride
        x, out = self.x, self.out
        oh, ow = out.shape[2:]
        tiled = (kh, kw) == (sh, sw) and x.shape[2:] == (oh * sh, ow * sw)
        gx = (np.empty if tiled else np.zeros)(x.shape, g.dtype)
        # a product by the mask, unless g holds a NaN or an infinity, which the other taps of
        # its window must not receive as NaN * 0: a select then (`core.ops.masked_gradient`)
        finite = finite_sum(g)
        for si, sj, hit in self._disjoint_hits():
            if finite:
                np.multiply(g, hit, out=gx[:, :, si, sj])
            else:
                gx[:, :, si, sj] = np.where(hit, g, g.dtype.type(0))
        return gx

    def _tied_hits(self):
        """(row slice, column slice, mask) per kernel tap of windows that do not overlap,
        where the numpy slices do not run (padding, a GPU, NaN), on the padded plane as torch
        tensors: the mask marks the windows whose maximum that tap holds (every tied one)."""
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.pad
        tx, ty = self.tx, self.ty
        if ph or pw:  # ATen's implicit padding: the lowest value (cut off from the gradient)
            tx = _aten.aten().constant_pad_nd(tx, [pw, pw, ph, ph], _lowest(self.x_dtype))
        oh, ow = ty.shape[2:]
        # a NaN maximum (ATen's forward propagates NaN) is matched by the window's NaNs
        nan = ty.isnan() if ty.is_floating_point() and bool(ty.isnan().any()) else None
        for i in range(kh):
            for j in range(kw):
                si, sj = slice(i, i + sh * (oh - 1) + 1, sh), slice(j, j + sw * (ow - 1) + 1, sw)
                tap = tx[:, :, si, sj]
                yield si, sj, (tap == ty) if nan is None else (tap == ty) | (tap.isnan() & nan)

    def _tied_max_backward(self, tg):
        """Each window's gradient added to every element equal to its maximum, one strided
        pass per kernel tap (padding, explicit or implicit, is cut off after)."""
        (ph, pw) = self.pad
        n, c, h, w = self.tx.shape
        gx = tg.new_zeros((n, c, h + 2 * ph, w + 2 * pw))
        for si, sj, hit in self._tied_hits():
            gx[:, :, si, sj] += tg.where(hit, 0.0)  # (a select: a NaN g reaches no other tap)
        return gx[:, :, ph:ph + h, pw:pw + w].contiguous()

    def _tiled_max_backward(self, g):
        """CUDA, windows side by side (kernel == stride, no padding: 2x2 stride 2 pooling):
        `_tied_max_backward`'s gradient in one kernel and no host sync, over the (N, C, OH, kh,
        OW, kw) view of the part of the input the windows cover, with the maxima and g
        broadcast along the taps, NaN maxima matched by the window's NaNs (`_tied_hits`); the
        rows and columns past the last window (an odd plane) get zeros."""
        x, y = self.tiled
        (kh, kw), (n, c, oh, ow) = self.kernel, y.shape
        xp, h, w = xp_of(x), oh * kh, ow * kw  # (the rows and columns the windows cover)
        at_taps = (slice(None), slice(None), slice(None), None, slice(None), None)
        covered = xp.empty((n, c, h, w), x.dtype)  # (every element is in one window)
        _tied_grad_kernel()(xp.ascontiguousarray(x[:, :, :h, :w]).reshape(n, c, oh, kh, ow, kw),
                            y[at_taps], g.astype(x.dtype, copy=False)[at_taps],
                            covered.reshape(n, c, oh, kh, ow, kw))
        if (h, w) == x.shape[2:]:
            return covered
        # a plane the windows do not tile: its last rows or columns are in no window
        gx = xp.zeros(x.shape, x.dtype)
        gx[:, :, :h, :w] = covered
        return gx

    def _gather_at_max(self, gg):
        """The adjoint of max pooling's backward (a scatter of g to each window's maxima):
        ``gg`` (the input's shape) read at those maxima (summed over tied ones), in the
        output's shape."""
        if self.half_dtypes is not None:  # (a float16 pooling: in float32, as its backward)
            return cast(self._gathered_at_max(cast(gg, np.float32)), FLOAT16)
        return self._gathered_at_max(gg)

    def _gathered_at_max(self, gg):
        if self.slices is not None:
            out = np.zeros(self.out.shape, gg.dtype)
            for si, sj, hit in self._disjoint_hits():
                out += gg[:, :, si, sj] * hit
            return out
        tg = _aten.view(gg)
        if self.explicit:  # the taps count in the padded plane; padding takes no gradient
            (ph, pw) = self.padding
            tg = _aten.aten().constant_pad_nd(tg, [pw, pw, ph, ph], 0.0)
        if self.tied:
            (ph, pw) = self.pad
            if ph or pw:
                tg = _aten.aten().constant_pad_nd(tg, [pw, pw, ph, ph], 0.0)
            picked = tg.new_zeros(self.ty.shape)
            for si, sj, hit in self._tied_hits():
                picked += tg[:, :, si, sj] * hit
            return _aten.fresh_gradient(picked)
        idx = self.indices
        picked = tg.flatten(2).gather(2, idx.flatten(2)).view(idx.shape)
        return _aten.fresh_gradient(picked.contiguous())

    def backward(self, g):
        if self.mode == "max" and self.slices is not None:
            return self._disjoint_max_backward(g)
        if self.mode == "max" and self.tiled is not None:
            return self._tiled_max_backward(g)
        aten = _aten.aten()
        tg = _aten.view(g)
        if self.mode == "max" and self.tied:
            gx = self._tied_max_backward(tg)
        elif self.mode == "max":
            gx = aten.max_pool2d_with_indices_backward(tg, self.tx, self.kernel, self.stride,
                                                       self.pad, (1, 1), False, self.indices)
        else:
            if self.scale is not None:
                tg = tg * self.scale
            gx = aten.avg_pool2d_backward(tg, self.tx, self.kernel, self.stride, self.pad, False,
                                          self.mode == "average" or self.explicit, None)
        if self.explicit:
            (ph, pw) = self.padding
            gx = gx[:, :, ph:gx.shape[2] - ph, pw:gx.shape[3] - pw]
        # a buffer ATen's backward allocated: the gradient's alone, so that a GradManager hands
        # it to an attached input's .grad without a copy
        return _aten.fresh_gradient(gx)

    def backward_reads(self):
        # average pooling's gradient reads the input's shape alone; max pooling's the indices of
        # the maxima (windows that do not overlap: the input and the maxima, compared)
        if self.mode != "max":
            return ()
        if self.slices is not None:
            return (self.x, self.out)
        return (self.tx, self.ty) if self.tied else (self.indices,)  # (tiled: views of them)

    def grad_graph(self, inputs, outputs, grads):
        """The pooling's gradient as a recorded op, so that it can be differentiated again
        (WGAN-GP's gradient penalty through a discriminator's pooling)."""
        if self.mode == "max":
            return (apply(_MaxPoolGrad(self), grads[0]),)
        return (apply(_AvgPoolGrad(self), grads[0]),)

    def same(self):
        """A fresh op with this one's window, stride, padding and mode."""
        return _Pool2d(self.mode, self.kernel, self.stride, self.padding, self.what)


def _use_tiled_kernel(x, kernel, stride, padding):
    """Whether max pooling of CUDA array ``x`` takes `_Pool2d._tiled_max_backward`: float32 or
    float64, C-contiguous, windows of the stride's size side by side, no padding (a plane that
    is no multiple of the window: the rows and columns past the last window get no gradient;
    the ATen path read a NaN test back to the host there)."""
    return (type(x) is not np.ndarray and x.dtype in KERNEL_FLOATS and x.flags.c_contiguous
            and tuple(kernel) == tuple(stride) and not any(padding))


# Max pooling's backward on CUDA for windows that tile the input (`_Pool2d._tiled_max_backward`):
# each element gets its window's gradient where it equals the maximum, every tied one as
# upstream's kernel gives it, a NaN where the maximum is NaN; the ATen path it replaces is a
# comparison, a cast and an addcmul per kernel tap, a NaN test with a host sync, and a copy.
_TIED_GRAD = ("T x, T y, T g", "T gx", "gx = (x == y || (x != x && y != y)) ? g : (T)0;",
              "megengine_max_pool_tied_grad")
_tied_grad_kernel = fused_kernel(*_TIED_GRAD)  # () -> the kernel


class _AvgPoolGrad(Op):
    """The gradient of an average pooling, as an op: ``gx = A^T g``.

    Average pooling is a linear map A of its input, so its gradient is linear in ``g`` and does
    not depend on ``x``; this op's own gradient is the adjoint of A^T, the pooling A itself.
    Recording it lets a gradient penalty (WGAN-GP: the norm of d D(x)/dx, differentiated again)
    pass through a discriminator's average pooling.
    """

    def __init__(self, pool):
        self.pool = pool

    def forward(self, g):
        return self.pool.backward(g)

    def backward(self, gg):
        return self.pool.same().forward(gg)

    def grad_graph(self, inputs, outputs, grads):
        return (apply(self.pool.same(), grads[0]),)


class _MaxPoolGrad(Op):
    """The gradient of a max pooling, as an op: ``g`` scattered to each window's chosen
    maximum.

    The choice is fixed by the forward input, so the map is linear in ``g`` and its derivative
    in ``x`` is zero almost everywhere (as torch's double backward of max pooling). Its own
    gradient is the adjoint, reading the incoming gradient at those maxima (`_MaxPoolGather`).
    """

    def __init__(self, pool):
        self.pool = pool

    def forward(self, g):
        return self.pool.backward(g)

    def backward(self, gg):
        return self.pool._gather_at_max(gg)

    def grad_graph(self, inputs, outputs, grads):
        return (apply(_MaxPoolGather(self.pool), grads[0]),)


class _MaxPoolGather(Op):
    """The adjoint of `_MaxPoolGrad`: the input-shaped ``gg`` read at each window's chosen
    maximum (the derivatives of third and higher order alternate between the two)."""

    def __init__(self, pool):
        self.pool = pool

    def forward(self, gg):
        return self.pool._gather_at_max(gg)

    def backward(self, g):
        return self.pool.backward(g)

    def grad_graph(self, inputs, outputs, grads):
        return (apply(_MaxPoolGrad(self.pool), grads[0]),)


def max_pool2d(inp, kernel_size, stride=None, padding=0):
    """2-d max pooling of NCHW ``inp``; ``stride`` defaults to ``kernel_size``; the padding takes
    the dtype's lowest value."""
    _config._effective_conv_format("NCHW", "max_pool2d", supported=("NCHW",))
    kernel = _int_pair(kernel_size, "kernel_size", "max_pool2d")
    stride = kernel if stride is None else _int_pair(stride, "stride", "max_pool2d")
    return apply(_Pool2d("max", kernel, stride, _int_pair(padding, "padding", "max_pool2d"),
                         "max_pool2d"), _tensor(inp))


_AVG_MODES = ("average_count_exclude_padding", "average", "max")


def _avg_mode(mode, what):
    """``avg_pool2d``'s ``mode`` (a name in any case, or upstream's enum) as one of
    `_AVG_MODES`; another raises `ArgumentError` naming ``what``."""
    m = str(getattr(mode, "name", mode)).lower()
    if m not in _AVG_MODES:
        raise ArgumentError(f"{what}: mode must be one of {_AVG_MODES}, got {mode!r}")
    return m


def avg_pool2d(inp, kernel_size, stride=None, padding=0, mode="average_count_exclude_padding"):
    """2-d average pooling of NCHW ``inp``; ``stride`` defaults to ``kernel_size``.

    ``mode`` "average_count_exclude_padding" (default) divides by the real elements in each
    window; "average" divides by kh*kw, counting the zero padding; "max" is ``max_pool2d``, as
    upstream's mode (earlier versions of this fork refused it).
    """
    m = _avg_mode(mode, "avg_pool2d")
    _config._effective_conv_format("NCHW", "avg_pool2d", supported=("NCHW",))
    kernel = _int_pair(kernel_size, "kernel_size", "avg_pool2d")
    stride = kernel if stride is None else _int_pair(stride, "stride", "avg_pool2d")
    return apply(_Pool2d(m, kernel, stride, _int_pair(padding, "padding", "avg_pool2d"),
                         "avg_pool2d"), _tensor(inp))


def _size_pair(oshp, what):
    """``oshp`` as (OH, OW); sizes read from ``x.shape`` in a dumpable trace, and a
    TracedModule's size tensors, stay expressions (`megengine.core._trace_option`), so that the
    windows follow the input's size."""
    def held(s):  # (a size that may hold an expression)
        return is_dim(s) or (isinstance(s, Tensor) and s.ndim == 0)

    if held(oshp):
        oshp = _size(oshp)
        return oshp, oshp
    if isinstance(oshp, (tuple, list)) and len(oshp) == 2 and any(map(held, oshp)):
        return tuple(_size(s) if held(s) else _int_pair(s, "oshp", what)[0] for s in oshp)
    return _int_pair(oshp, "oshp", what)


def _adaptive(inp, oshp, mode, what):
    _config._effective_conv_format("NCHW", what, supported=("NCHW",))
    inp = _tensor(inp)
    if inp.ndim != 4:
        raise ShapeError(f"{what}: expected a 4-d input (N, C, H, W), got shape {inp.shape}")
    oh, ow = _size_pair(oshp, what)
    h, w = inp.shape[2:]
    if not (1 <= oh <= h and 1 <= ow <= w):
        raise ArgumentError(f"{what}: output size {(oh, ow)} must be between 1 and the input's "
                            f"spatial size {(h, w)}")
    # upstream's rule: stride = in // out, window = in - (out - 1) * stride, no padding
    sh, sw = h // oh, w // ow
    kernel = (h - (oh - 1) * sh, w - (ow - 1) * sw)
    return apply(_Pool2d(mode, kernel, (sh, sw), (0, 0), what), inp)


def adaptive_max_pool2d(inp, oshp):
    """Max pooling to output size ``oshp`` (int or (OH, OW)), windows chosen as upstream."""
    return _adaptive(inp, oshp, "max", "adaptive_max_pool2d")


def adaptive_avg_pool2d(inp, oshp):
    """Average pooling to output size ``oshp`` (int or (OH, OW)), windows chosen as upstream."""
    return _adaptive(inp, oshp, "average", "adaptive_avg_pool2d")
