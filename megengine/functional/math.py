"""Reductions, statistics, sorting and linear algebra (F.sum, F.var, F.topk, F.matmul, ...)."""
import math as _pymath

import numpy as np

from ..core import amp as _amp
from ..core._trace_option import as_int, is_dim
from ..core.dispatch import FLOAT16, KERNEL_FLOATS, Op, apply, on_device
from ..core.dtype import float_value, no_quantized_form
from ..core.dtype_rules import complex_error, no_order, promote_types
from ..core.fused import fused_kernel
from ..core.ops import (BINARY, ArgumentError, ArgumentTypeError, AxisError, IndexAdd,
                        ShapeError, _norm_axes, acc_dtype, acc_sum, as_dtype, cast, finite_sum,
                        half_operands, names_an_axis, masked_gradient, masked_gradient_graph,
                        refuse_bool_product, xp_of)
from ..core.tensor import Tensor
from . import _aten
from ._args import _as_float, _not_int, _real, _size
from .elemwise import _operands, _tensor, any_nan_array, clip, exp_array, log_array, sqrt
from .tensor import Compute, _axis, _grid_index, concat, put_back, swapaxes
# cumsum's home is F.tensor, as upstream's; F.math.cumsum stays, and dumps that name
# megengine.functional.math:Cumsum still load
from .tensor import Cumsum, cumsum  # noqa: F401

__all__ = [
    "argmax", "argmin", "argsort", "cumsum", "dot", "isinf", "isnan", "logsumexp", "matinv",
    "matmul", "max", "mean", "min", "norm", "normalize", "prod", "sign", "sort", "std", "sum",
    "topk", "var",
]


# ----- element-wise checks that upstream keeps here -----

def _isnan(xp, x):
    return xp.isnan(x)


def _isinf(xp, x):
    return xp.isinf(x)


def isnan(inp):
    """Element-wise test for NaN (bool)."""
    return apply(Compute(_isnan), _tensor(inp))


def isinf(inp):
    """Element-wise test for +-infinity (bool)."""
    return apply(Compute(_isinf), _tensor(inp))


class Sign(Op):
    format_rule = "elemwise"  # how a tensor format label passes (megengine.core.format)
    # float16 in float32 (`Op.half_in_float32`): -1, 0 and 1 are exact either way, where
    # numpy's float16 sign converts one element at a time (one thread, (512, 512), with a
    # backward pass: 0.54 ms before, 0.32 after, float32 0.26)
    half_in_float32 = True

    def forward(self, x):
        if x.dtype.kind == "c":  # numpy 2's is z / |z|, numpy 1's and CuPy's sign(real part)
            raise complex_error("sign", x.dtype, "the sign of a complex number is ambiguous",
                                "use x / F.abs(x) for z / |z| (torch's sgn), or F.sign(F.real(x))")
        if x.dtype.metadata is not None:  # (-1, 0, 1 as stored integers are other values)
            raise no_quantized_form("sign", x.dtype)
        if x.dtype.kind == "b":  # (numpy has no bool sign; False and True are their signs)
            return x.copy()
        xp = xp_of(x)
        out = xp.sign(x)
        if x.dtype.kind == "f":  # NaN's sign is 0, as upstream's and torch's (numpy's is NaN)
            out = xp.nan_to_num(out, copy=out.ndim == 0, nan=0.0)  # (0-d: a numpy scalar)
        return out

    def backward(self, g):
        return None  # piecewise constant: no gradient, as upstream's (see floor)

    def grad_graph(self, inputs, outputs, grads):
        return (None,)


def sign(x):
    """Element-wise sign: -1, 0 or 1, in x's dtype (no gradient)."""
    return apply(Sign(), _tensor(x))


# ----- reductions -----

def sum(inp, axis=None, keepdims=False):
    """Sum over ``axis`` (an int, a sequence, or None for all)."""
    return _tensor(inp).sum(axis=axis, keepdims=keepdims)


def mean(inp, axis=None, keepdims=False):
    """Mean over ``axis`` (integers give float32)."""
    return _tensor(inp).mean(axis=axis, keepdims=keepdims)


def prod(inp, axis=None, keepdims=False):
    """Product over ``axis``."""
    return _tensor(inp).prod(axis=axis, keepdims=keepdims)


def max(inp, axis=None, keepdims=False):
    """Maximum over ``axis``; every element equal to the maximum gets the whole gradient
    (upstream's rule; torch shares it among ties)."""
    return _tensor(inp).max(axis=axis, keepdims=keepdims)


def min(inp, axis=None, keepdims=False):
    """Minimum over ``axis``; every element equal to the minimum gets the whole gradient
    (upstream's rule; torch shares it among ties)."""
    return _tensor(inp).min(axis=axis, keepdims=keepdims)


def _arg_reduce_fn(xp, x, fn, axes, keepdims):
    if x.dtype is FLOAT16 and half_operands(x):
        # numpy's float16 loop converts one element at a time; float32 holds every float16
        # value, in the same order (NaN first, ties to the first): the same indices. One
        # thread, (512, 512) over axis 1: 1.39 ms before, 0.062 after (float32 0.036-0.045)
        x = cast(x, np.float32)
    if axes is None:
        return xp.asarray(getattr(xp, fn)(x), dtype=np.int32)
    # several axes: reduced one after another, highest first, as upstream does
    for a in reversed(axes):
        x = getattr(xp, fn)(x, axis=a, keepdims=True).astype(np.int32)
        if not keepdims:
            x = x.squeeze(a)
    return x


class ArgAxisError(AxisError, AssertionError):
    """An ``argmax`` / ``argmin`` axis the input lacks: an AxisError as every reduction's (a
    ValueError and a RuntimeError), and also the AssertionError that upstream's argmax and argmin
    raise, so that either ``except`` catches it."""


def _arg_reduce(inp, axis, keepdims, fn):
    inp = _tensor(inp)
    if inp.dtype.kind == "c":
        raise no_order(fn, inp.dtype)
    if axis is None:
        if keepdims:
            raise ArgumentError(f"{fn}: keepdims=True needs an axis, got axis=None")
        axes = None
    elif inp.ndim == 0:  # (_norm_axes takes axis 0 of a 0-d tensor)
        raise ArgAxisError(f"{fn}: a 0-d tensor has no axis {axis}; call {fn}(x) without an axis")
    else:
        try:
            axes = _norm_axes(axis, inp.ndim, fn)
        except AxisError as e:
            raise ArgAxisError(str(e)) from None
    empty = [a for a in (range(inp.ndim) if axes is None else axes) if inp.shape[a] == 0]
    if empty:  # an empty tensor whose reduced axes are not empty has an (empty) answer
        raise ValueError(f"{fn}: cannot reduce over axis {empty[0]} of an empty tensor "
                         f"(shape {tuple(inp.shape)}): it has size 0")
    return apply(Compute(_arg_reduce_fn, fn, axes, keepdims), inp)


def argmax(inp, axis=None, keepdims=False):
    """Index (int32) of the maximum over ``axis``, or into the flattened tensor if None."""
    return _arg_reduce(inp, axis, keepdims, "argmax")


def argmin(inp, axis=None, keepdims=False):
    """Index (int32) of the minimum over ``axis``, or into the flattened tensor if None."""
    return _arg_reduce(inp, axis, keepdims, "argmin")


def _keep_shape(shape, axes):
    return tuple(1 if i in axes else n for i, n in enumerate(shape))


def _out_shape(shape, axes, keepdims):
    return _keep_shape(shape, axes) if keepdims else tuple(
        n for i, n in enumerate(shape) if i not in axes)


class Var(Op):
    """Population variance (divides by N) over some axes."""

    what = "var"  # (the function its errors name: Std is F.std's)

    def __init__(self, axis, keepdims):
        self.axis, self.keepdims = axis, keepdims

    def forward(self, x):
        return self._rounded(self._variance(x))

    def _variance(self, x):
        """The variance with kept axes, float16 in float32 (`_rounded` rounds it once): numpy's
        float16 mean rounds before the deviations are taken, and their squares go subnormal
        (var of [1000, 1000.5, 1001, 999.5] was 0.375 for 0.3125, as torch's kernel gives)."""
        if x.dtype.kind != "f":  # (no call on the float path)
            x = _as_float(x, self)
        self.dtype = x.dtype
        acc = acc_dtype(x.dtype)
        if acc is not None:  # (on ATen's conversion, `cast`: numpy's took most of the time)
            x = cast(x, acc)
        self.axes = axes = _norm_axes(self.axis, x.ndim, self.what)
        self.count = int(np.prod([x.shape[i] for i in axes], dtype=np.int64))
        self.in_shape = x.shape
        if self.count == 0:  # the variance of no values is NaN (as torch), without numpy's warning
            self.d = x
            return xp_of(x).full(_keep_shape(x.shape, axes), np.nan, x.dtype)
        if type(x) is not np.ndarray and axes and x.dtype in KERNEL_FLOATS \
                and _aten.use_aten(x, "reduce"):  # (no axes: ATen's dim=[] would mean all)
            # CUDA: ATen's var_mean, one pass (Welford's: the mean of equal values is exact, so
            # are their zero deviations), where the array code below launched six kernels;
            # backward is one kernel of x and the mean (`_var_grad_kernel`). A (16, 64) float32
            # var over axis 1, forward and backward on the simulated GPU: 8 kernels -> 2
            var, mean = _aten.ops.var_mean(_aten.view(x), list(axes), correction=0,
                                           keepdim=True)
            self.d, self.x, self.mean = None, x, _aten.array(mean)
            return _aten.array(var)
        d = x - x.mean(axis=axes, keepdims=True)
        # the deviations' own mean (zero in exact arithmetic) taken out: a rounded mean of equal
        # values (three float32 0.94708097 average to another float32) left them an ulp apart
        # from it, a std of 6e-8 whose gradient was +-1 where torch's (exactly 0) gives 0. In
        # place, (512, 512) float32 over axis 1, one thread: 436 us before the re-centring, 713
        # with a new array for it, 435-475 in place
        d -= d.mean(axis=axes, keepdims=True)  # (in place: d is this op's own array)
        self.d = d
        return (d * d).mean(axis=axes, keepdims=True)

    def _rounded(self, out):
        out = as_dtype(out, self.dtype)
        return out.reshape(_out_shape(self.in_shape, self.axes, self.keepdims))

    def backward(self, g):
        g = g.reshape(_keep_shape(self.in_shape, self.axes))
        if self.d is None:  # (CUDA, ATen's forward: one kernel, d = x - mean inside)
            x = self.x  # (float16 input: float32 here, its gradient rounded once)
            return as_dtype(_var_grad_kernel()(as_dtype(g, x.dtype), x, self.mean,
                                               x.dtype.type(2.0 / self.count)), self.dtype)
        # (count 0: d is empty.) float16: in float32, as forward, rounded once: numpy's float16
        # loops took 6-7x a float32 pass ((512, 512) over rows, forward and backward, one
        # thread: 2.1-3.7 ms before, 0.61 after, float32 0.35-0.53)
        gx = as_dtype(g, self.d.dtype) * (2.0 / (self.count or 1)) * self.d
        return as_dtype(gx, self.dtype)

    def grad_graph(self, inputs, outputs, grads):
        x = _float_t(inputs[0])
        g = grads[0].reshape(_keep_shape(x.shape, self.axes))
        return (g * (2.0 / (self.count or 1))
                * (x - x.mean(axis=self.axes, keepdims=True)),)


class Std(Var):
    """Population standard deviation; where it is 0 the gradient is 0 (torch's choice), not
    the NaN of sqrt's infinite slope times var's zero gradient."""

    what = "std"

    def forward(self, x):
        # (float16: the root of the float32 variance, rounded once)
        self.out = out = xp_of(x).sqrt(self._variance(x))
        return self._rounded(out)

    def backward(self, g):
        xp = xp_of(g)
        s = self.out  # (kept axes)
        g = g.reshape(s.shape)
        if self.d is None:  # (CUDA, ATen's forward: one kernel, as var's)
            x = self.x
            return as_dtype(_std_grad_kernel()(as_dtype(g, x.dtype), s, x, self.mean,
                                               x.dtype.type(2.0 / self.count)), self.dtype)
        return super().backward(xp.where(s == 0, 0, g / (2 * xp.where(s == 0, 1, s))))

    def grad_graph(self, inputs, outputs, grads):
        from .tensor import where

        s = outputs[0]
        zero = s == 0
        g = where(zero, 0, grads[0] / (2 * where(zero, 1, s)))
        return super().grad_graph(inputs, outputs, (g,))


# var's and std's gradients on CUDA, ``g * k * (x - mean)`` with ``k = 2 / count`` (std's ``g``
# first ``g / (2 * std)``, 0 where std is 0: torch's choice), the array code's steps in its
# order, with g, std and the mean broadcast along the reduced axes
_var_grad_kernel = fused_kernel("T g, T x, T m, T k", "T gx", "gx = g * k * (x - m);",
                                "megengine_var_grad")
_std_grad_kernel = fused_kernel(
    "T g, T s, T x, T m, T k", "T gx",
    "T h = s == (T)0 ? (T)0 : g / ((T)2 * s); gx = h * k * (x - m);", "megengine_std_grad")


def _one_if_scalar(inp, axis):
    """A 0-d tensor reduced over an axis (0 or -1) reduces as one of shape (1,), as upstream's
    reductions (``keepdims=True`` gives shape (1,)); the engine's Reduce op does the same."""
    inp = _tensor(inp)
    return inp.reshape(1) if inp.ndim == 0 and names_an_axis(axis) else inp


def var(inp, axis=None, keepdims=False):
    """Variance (divides by N, like upstream) over ``axis``."""
    return apply(Var(axis, keepdims), _one_if_scalar(inp, axis))


def std(inp, axis=None, keepdims=False):
    """Standard deviation: ``sqrt(var(inp, axis, keepdims))``."""
    return apply(Std(axis, keepdims), _one_if_scalar(inp, axis))


class LogSumExp(Op):
    autocast = "high"  # megengine.amp.autocast: float32, as upstream's exp and log

    def __init__(self, axis, keepdims):
        self.axis, self.keepdims = axis, keepdims

    def forward(self, x):
        xp = xp_of(x)
        if x.dtype.kind != "f":  # (no call on the float path)
            x = _as_float(x, self)
        self.x = x
        self.axes = axes = _norm_axes(self.axis, x.ndim, "logsumexp")
        if x.size == 0:  # log of an empty sum is -inf (torch's answer; max has no identity)
            m = xp.full(_keep_shape(x.shape, axes), -np.inf, x.dtype)
            self.out = m
            return m.reshape(_out_shape(x.shape, axes, self.keepdims))
        m = x.max(axis=axes, keepdims=True)
        m = xp.where(xp.isfinite(m), m, 0)  # all -inf (or inf) rows: no shift, no NaN from inf-inf
        # (exp_array, log_array: F.exp's and F.log's, ATen's from a size where numpy's take
        # longer; bench_ops.py --case logsumexp, (256, 1000) float32 over axis 1, megengine /
        # torch, before and after, alternated: forward 1.33-1.80x -> 1.17-1.37x, forward +
        # backward 1.03-1.17x -> 0.92-1.03x)
        self.out = out = log_array(xp, acc_sum(exp_array(xp, x - m), axes, keepdims=True)) + m
        return out.reshape(_out_shape(x.shape, axes, self.keepdims))

    def backward(self, g):
        g = g.reshape(self.out.shape)
        return g * exp_array(xp_of(g), self.x - self.out)

    def grad_graph(self, inputs, outputs, grads):
        from .elemwise import exp

        keep = self.out.shape
        return (grads[0].reshape(keep) * exp(_float_t(inputs[0]) - outputs[0].reshape(keep)),)


def logsumexp(inp, axis, keepdims=False):
    """``log(sum(exp(inp), axis))`` computed without overflow."""
    inp, op = _one_if_scalar(inp, axis), LogSumExp(axis, keepdims)
    return _amp.promoted_with_inputs(op, apply(op, inp), inp)  # (autocast: upstream's dtype)




class PNorm(Op):
    """``sum(|x| ** p) ** (1 / p)`` over some axes (p not 0 or +-inf).

    float16 numpy arrays of `_aten.HALF_MIN` values or more compute in float32, forward and
    backward, rounded once (`Op.half_in_float32`), as torch's CPU kernels: numpy's float16 loops
    convert one element at a time. One thread, forward and backward of (512, 512) over axis 1:
    2.1-2.3 ms before, 0.23 after (float32 0.18)."""
    what = "norm"  # (the public function, for errors)
    half_in_float32 = True  # (above)

    def __init__(self, p, axis, keepdims):
        self.p, self.axis, self.keepdims = p, axis, keepdims

    def forward(self, x):
        xp = xp_of(x)
        if x.dtype.kind != "f":  # (no call on the float path)
            x = _as_float(x, self)
        self.x = x
        self.axes = axes = _norm_axes(self.axis, x.ndim, "norm")
        # (no axis, axis=(): each |x|, which ATen's dim=() would take for every axis)
        if self.p == 2 and x.dtype in KERNEL_FLOATS and x.size and axes and \
                _aten.use_aten(x, "norm"):
            # ATen's vector norm: one pass, no x * x temporary; (512, 1024) float32 over axis 1
            # 73 us against numpy's 180 (whose sum over a row measured 120 us alone)
            out = _aten.array(_aten.op("linalg_vector_norm")(
                _aten.view(x), 2, None if axes is None else tuple(axes), True))
        else:
            # float16 squares and adds in float32, rounded once, as torch's norm (no overflow
            # of the squares from 256, no sum that stops growing)
            acc = acc_dtype(x.dtype)
            xf = x if acc is None else x.astype(acc)
            if self.p == 2:
                out = xp.sqrt((xf * xf).sum(axis=axes, keepdims=True))
            else:
                out = (xp.abs(xf) ** self.p).sum(axis=axes, keepdims=True) ** (1.0 / self.p)
            if acc is not None:
                out = out.astype(x.dtype)
        self.out = out
        return out.reshape(_out_shape(x.shape, axes, self.keepdims))

    def backward(self, g):
        xp = xp_of(g)
        x, out, p = self.x, self.out, self.p
        g = g.reshape(out.shape)
        # a zero norm has gradient 0 (the subgradient torch picks), not 0/0
        safe = xp.where(out == 0, 1, out)
        if p == 2:
            return xp.where(out == 0, 0, g / safe) * x
        scale = xp.where(out == 0, 0, g * safe ** (1 - p))
        return scale * xp.sign(x) * xp.abs(x) ** (p - 1)

    def grad_graph(self, inputs, outputs, grads):
        from .elemwise import abs as abs_

        x, p = _float_t(inputs[0]), self.p
        keep = self.out.shape
        xp = xp_of(self.out)
        zero = Tensor._wrap((self.out == 0).astype(x.dtype), x._device)  # a zero norm: gradient 0
        out = outputs[0].reshape(keep) + zero  # 1 where the norm is 0: no division by zero
        g = grads[0].reshape(keep) * (1 - zero)
        if p == 2:
            return (g / out * x,)
        sign = Tensor._wrap(xp.sign(self.x), x._device)
        return (g * out ** (1 - p) * sign * abs_(x) ** (p - 1),)


def norm(inp, ord=None, axis=None, keepdims=False):
    """Vector ``ord``-norm over ``axis`` (default ord 2; None: over all elements).

    ``ord``: any p > 0 (``sum(|x|**p) ** (1/p)``), 0 (number of non-zeros), ``inf`` (``max |x|``),
    ``-inf`` (``min |x|``).
    """
    inp = _one_if_scalar(inp, axis)
    if ord is None:
        ord = 2
    if is_dim(ord):  # (an order from a dumpable trace's sizes: its value, a guard)
        ord = as_int(ord)
    if isinstance(ord, Tensor) and ord.ndim == 0 and ord.dtype.kind in "iuf":
        ord = ord.item()  # (a 0-d Tensor, as upstream's: its number, a host read)
    if isinstance(ord, (np.integer, np.floating)):
        ord = ord.item()  # (np.int64(2) as 2: upstream 1.13 refuses it by accident, its
        # float64 power failing to convert)
    if not isinstance(ord, (int, float)):  # (upstream: RuntimeError, from float(ord))
        raise ArgumentTypeError(f"norm: ord must be a number (an int, a float or inf), got "
                                f"{type(ord).__name__}")
    if axis is not None and ord in (0, _pymath.inf, -_pymath.inf):
        _norm_axes(axis, inp.ndim, "norm")  # (its errors name norm, not the sum, max, min)
    if ord == 0:
        return sum(inp != 0, axis=axis, keepdims=keepdims)
    if ord == _pymath.inf:
        return max(abs(inp), axis=axis, keepdims=keepdims)
    if ord == -_pymath.inf:
        return min(abs(inp), axis=axis, keepdims=keepdims)
    return apply(PNorm(ord, axis, keepdims), inp)


class Normalize(Op):
    """``x / max(||x||_2, eps)`` over ``axes``, forward and backward on ATen (numpy floats and,
    with a CUDA torch, CuPy ones): the composite (norm, clip, divide) spent 160 of its 210 us
    on (512, 1024) float32 in numpy's divide by a broadcast column, which ATen does in 60.

    Backward: with c = max(n, eps) and y = x / c, dx = (g - y * sum(g * y) [n > eps]) / c
    (the sum over ``axes``; where the norm is below eps, c is a constant).

    float16 numpy arrays of `_aten.HALF_MIN` values or more compute so in float32, rounded
    once (`Op.half_in_float32`), as torch's CPU kernels compute float16: numpy's float16 loops
    convert one element at a time, and ``eps`` as a float16 was 0 (a zero row gave NaN, torch's
    0). One thread, forward and backward of (512, 512) over axis 1: 10.5-11.6 ms before, 0.46
    after (float32 0.32-0.35). (CuPy's float16 takes ATen's CUDA float16 kernels.)"""
    autocast = "high"  # megengine.amp.autocast: float32, as upstream's sqrt and division
    half_in_float32 = True  # (above)

    def __init__(self, axis, eps):
        self.axis, self.eps = axis, eps

    def forward(self, x):
        self.axes = axes = _norm_axes(self.axis, x.ndim, "normalize")
        tx = _aten.view(x)
        n = _aten.op("linalg_vector_norm")(tx, 2, axes, True)
        c = n.clamp_min(self.eps)
        y = tx.div(c)
        self.n, self.c, self.y = n, c, y
        return _aten.array(y)

    def backward(self, g):
        return _aten.fresh_gradient(self._backward(g))

    def _backward(self, g):
        """x's gradient, a torch tensor."""
        y, axes = self.y, self.axes
        tg = _aten.view(g)
        gy = tg.mul(y).sum(axes, keepdim=True)
        gy.masked_fill_(self.n <= self.eps, 0)  # there c = eps does not depend on x
        # (a new buffer nothing else sees: .grad may take it without a copy)
        return tg.sub(y.mul(gy)).div_(self.c)

    def grad_graph(self, inputs, outputs, grads):
        # the same formula in Tensor arithmetic, recorded (the mask is piecewise constant)
        x, g, axes = inputs[0], grads[0], self.axes
        c = clip(norm(x, 2, axes, keepdims=True), lower=self.eps)
        y = x / c
        outside = Tensor._wrap(_aten.array(self.n > self.eps).astype(x.dtype), x._device)
        return ((g - y * ((g * y).sum(axis=axes, keepdims=True) * outside)) / c,)


def normalize(inp, ord=None, axis=None, eps=1e-12):
    """``inp / max(norm(inp, ord, axis), eps)``: unit ``ord``-norm along ``axis`` (None: all)."""
    inp = _tensor(inp)
    x = inp._data
    two = ord is None or type(ord) in (int, float) and ord == 2
    if two and (x.dtype in KERNEL_FLOATS or x.dtype is FLOAT16 and half_operands(x)) \
            and x.size and not (type(axis) in (tuple, list) and not axis) \
            and _aten.use_aten(x, "norm"):  # (axis=(): x / |x|, which ATen's dim=() is not)
        # (_real: float() took eps "1e-3", and its words for "x" named nothing)
        return apply(Normalize(axis, _real(eps, "eps", "normalize")), inp)
    if x.dtype.kind == "c":  # (else F.norm's error would name norm)
        raise complex_error("normalize", x.dtype)
    if x.dtype.metadata is not None:  # a quantized tensor: its values (q / norm mixed dtypes)
        inp = inp.astype(np.float32)
    return inp / clip(norm(inp, ord, axis, keepdims=True), lower=eps)


# ----- sorting -----

def _sort_key(x, descending):
    """An array whose ascending order is the wanted order of ``x``."""
    if not descending:
        return x
    if x.dtype.kind not in "fi":
        x = x.astype(np.int64)  # unsigned and bool values cannot be negated in place
    return -x


def _check_sortable(inp, what):
    if inp.dtype.kind == "c":
        raise no_order(what, inp.dtype)
    if inp.ndim == 0:
        raise ValueError(f"{what}: input must have at least 1 dim, got a scalar")


def _in_order(x):
    """``x``, or for a float16 numpy array of `_aten.HALF_MIN` values or more its float32
    values, which hold every float16 value in the same order: the same indices, where numpy's
    float16 comparisons convert one element at a time (see `_PickLast.forward`)."""
    return cast(x, np.float32) if x.dtype is FLOAT16 and half_operands(x) else x


def _argsort(xp, x, descending):
    return xp.argsort(_sort_key(_in_order(x), descending), axis=-1, kind="stable") \
        .astype(np.int32)


def argsort(inp, descending=False):
    """Indices (int32) that sort each row (the last axis) of ``inp``."""
    inp = _tensor(inp)
    _check_sortable(inp, "argsort")
    return apply(Compute(_argsort, bool(descending)), inp)


class _PickLast(Op):
    """Base of sort/topk: outputs ``(x picked at idx along the last axis, idx as int32)``;
    subclasses give ``indices(xp, x)``. Each row's indices are distinct."""

    def forward(self, x):
        xp = xp_of(x)
        idx = self.indices(xp, _in_order(x))  # (float16: the order of its float32 values)
        self.in_shape = x.shape
        self.grid = _grid_index(xp, idx, idx.ndim - 1)
        return x[self.grid], idx.astype(np.int32)

    picked = None  # the indices, where a forward leaves the grid to be made by backward

    def _grid(self):
        if self.grid is None:
            self.grid = _grid_index(xp_of(self.picked), self.picked, self.picked.ndim - 1)
        return self.grid

    def backward(self, g, _):
        return put_back(xp_of(g), self.in_shape, g.dtype, self._grid(), g, True)

    def grad_graph(self, inputs, outputs, grads):
        g = grads[0]
        return (apply(IndexAdd(self._grid(), self.in_shape, g.dtype), g),)


class Sort(_PickLast):
    def __init__(self, descending):
        self.descending = descending

    def indices(self, xp, x):
        return xp.argsort(_sort_key(x, self.descending), axis=-1, kind="stable")


def sort(inp, descending=False, axis=-1):
    """Sort along ``axis`` (default the last), stably; returns ``(values, indices)`` with int32
    indices along that axis."""
    inp = _tensor(inp)
    _check_sortable(inp, "sort")
    if inp.ndim == 0:
        raise ValueError("sort: cannot sort a 0-d tensor; reshape it to (1,) first")
    if isinstance(axis, Tensor):  # upstream takes its scalar parameters as 0-d tensors too
        axis = int(axis.item())
    if isinstance(descending, Tensor):
        descending = bool(descending.item())
    axis = _axis(axis, inp.ndim, "sort")
    last = inp.ndim - 1
    if axis == last:
        return apply(Sort(bool(descending)), inp)
    # the op sorts rows: move the axis last and back (swapaxes is its own inverse)
    values, indices = apply(Sort(bool(descending)), swapaxes(inp, axis, last))
    return swapaxes(values, axis, last), swapaxes(indices, axis, last)


# Short rows on the CPU are ordered by one stable sort of the whole row (`TopK.short`): its
# fixed cost is lower than ATen's topk call with the views, the NaN and tie test and the cast
# around it. One thread, 2 shared cores, TopK's forward alone, k = 5, us per call, ATen against
# the sort: (8, 10) 13.0 against 7.7, (64, 10) 16.8-17.0 against 13.2-13.6, (128, 8) 33-38
# against 20-28, (32, 32) 28-32 against 26-27; even or lost from (256, 10) 29-30 against 30,
# (64, 32) 31-38 against 30-37, (16, 64) 30-34 against 41-45, (4, 256) 29-31 against 46-48,
# (1, 1000) 25-26 against 43-45 (a single row of 256, 26 against 17, is left to ATen too).
_SHORT_ROW = 32
_SHORT_SIZE = 1024


class TopK(_PickLast):
    def __init__(self, k, descending, kth_only, no_sort):
        self.k, self.descending, self.kth_only, self.no_sort = k, descending, kth_only, no_sort

    tied = count = None  # kth_only: the elements equal to the k-th value, and how many
    short = False  # forward found short rows of a numpy array: one stable sort each (`indices`)

    def forward(self, x):
        if self.kth_only:
            return self._forward_kth(x)
        # (set on every call: a traced program may run this op object again on other shapes)
        self.short = (type(x) is np.ndarray and x.size <= _SHORT_SIZE
                      and x.shape[-1] <= _SHORT_ROW and not _aten.is_forced("topk"))
        if self.short:  # (see _SHORT_ROW)
            return super().forward(x)  # the array code, whose `indices` sorts each row once
        # (floats: the array code's descending key, -x, is exact for them)
        if (x.dtype in KERNEL_FLOATS and x.size
                and _aten.use_aten(x, "topk")):
            return self._forward_aten(xp_of(x), x)
        if x.dtype is FLOAT16 and half_operands(x) and _aten.use_aten(x, "topk"):
            # float16: ATen's topk of its float32 values (the same order), the values rounded
            # back exactly. numpy's argpartition took 3.2 ms on (512, 512) for k = 5, in either
            # dtype, where ATen's topk takes 0.7 ms (one thread)
            values, idx = self._forward_aten(xp_of(x), cast(x, np.float32))
            return cast(values, FLOAT16), idx
        return super().forward(x)

    def indices(self, xp, x):
        k, n = self.k, x.shape[-1]
        key = _sort_key(x, self.descending)
        if self.short:  # one stable sort: equal keys in index order, NaN last
            return key.argsort(axis=-1, kind="stable")[..., :k]
        if k < n:
            # partial selection: O(n) per row instead of a full sort
            idx = xp.argpartition(key, k - 1, axis=-1)[..., :k]
        else:
            idx = xp.broadcast_to(xp.arange(n), key.shape)
        if self.kth_only:  # the k-th is the last of the k smallest keys
            return xp.take_along_axis(idx, xp.take_along_axis(key, idx, -1).argmax(-1)[..., None],
                                      -1)
        if not self.no_sort:
            if k < n:  # equal values in index order: argpartition leaves them in its own
                idx = xp.sort(idx, axis=-1)
            order = xp.take_along_axis(key, idx, -1).argsort(axis=-1, kind="stable")
            idx = xp.take_along_axis(idx, order, -1)
        return idx

    def _forward_kth(self, x):
        """The k-th value of each row, whose gradient every element of the row equal to it
        shares equally, as upstream's (1.13 measured: a row with five elements tied at the
        k-th value gives each a fifth; so does torch's ``amax`` for its maximum), although
        the index returned is one of them."""
        values, idx = super().forward(x)
        if self.needs_input_grad[0]:
            tied = x == values
            tied[self.grid] = True  # (a NaN k-th value equals nothing: it keeps its gradient)
            self.tied = tied
            self.count = tied.sum(axis=-1, keepdims=True, dtype=x.dtype)
        return values, idx

    def backward(self, g, _):
        if self.kth_only:  # (divided first, as upstream: 7 / 3 rounds once)
            return masked_gradient(g / self.count, self.tied)
        return super().backward(g, _)

    def grad_graph(self, inputs, outputs, grads):
        if self.kth_only:
            shared = grads[0] / Tensor._wrap(self.count, grads[0]._device)
            return (masked_gradient_graph(shared, self.tied),)
        return super().grad_graph(inputs, outputs, grads)

    def _forward_aten(self, xp, x):
        """The k smallest keys by ATen's topk: numpy's argpartition took 3.0 ms on (256, 1000)
        float32 for k = 5 where ATen's topk takes 0.47 ms (one thread); its values are the
        output, with no gather of x at the indices.

        ATen is asked for the *smallest* keys (descending order is the key -x ascending), so
        a NaN, which ATen ranks above every number, is picked last as on the array code. On
        the CPU a descending call first asks for the largest of x itself, sparing the negated
        copy of the input and of the values (k = 5 of (256, 1000), one thread, 2 shared
        cores, paired against torch over four runs: forward 1.26-1.47x -> 1.06-1.15x,
        forward + backward 1.14-1.32x -> 1.01-1.26x, three of the four runs at or below
        1.13x; (64, 10) unchanged, its fixed costs dominate); a NaN in a row is among its
        largest, so a NaN among the values sends the call to the key -x.
        Among equal values ATen's order is its own: where a row of the sorted result has
        equal neighbours, the rows are re-sorted by (key, index), the array code's order.
        (Which of several equal values at the k-th place make it into the top k is
        unspecified on both paths, as with upstream's kernel.)"""
        sort = not self.no_sort
        tie_test = sort and self.k > 1  # (a sorted result may hold equal neighbours)
        values = None
        if self.descending and xp is np:  # (on a GPU the NaN test would wait for the kernel)
            values, idx = _aten.ops.topk(_aten.view(_contiguous(xp, x)), self.k, -1, True, sort)
            values, idx = _aten.array(values), _aten.array(idx)
            if tie_test and _strictly_ordered(values, True):
                tie_test = False  # neither a NaN nor equal neighbours: one test for both
            elif any_nan_array(values):
                values = None  # a NaN picked first: the key's order instead
        if values is None:
            key = -x if self.descending else x
            values, idx = _aten.ops.topk(_aten.view(_contiguous(xp, key)), self.k, -1, False,
                                         sort)
            values, idx = _aten.array(values), _aten.array(idx)
            if self.descending:  # back from the key: -(-x) is x exactly
                values = xp.negative(values, out=values)
        if tie_test and _has_equal_neighbours(xp, values):
            # by index, then stably by key (two argsorts: CuPy's lexsort has no axis)
            by_index = xp.argsort(idx, axis=-1)
            idx, values = (xp.take_along_axis(a, by_index, -1) for a in (idx, values))
            by_key = xp.argsort(-values if self.descending else values, axis=-1, kind="stable")
            idx, values = (xp.take_along_axis(a, by_key, -1) for a in (idx, values))
        self.in_shape, self.grid, self.picked = x.shape, None, idx  # the grid: if backward runs
        return values, idx.astype(np.int32)


def _contiguous(xp, a):
    """``a``, or a C-contiguous copy of it (for a kernel that takes a view of it)."""
    return a if a.flags.c_contiguous else xp.ascontiguousarray(a)


def _strictly_ordered(values, descending):
    """Whether every row of numpy array ``values`` (sorted along its last axis, two or more
    values a row) strictly decreases (``descending``) or increases, so that it holds neither
    equal neighbours nor a NaN (which compares false). One comparison over the flattened array,
    the pairs that straddle two rows set true, one count: (64, 5) 3.7 us against 5.9 for
    `any_nan_array` and `_has_equal_neighbours` (one thread, 2 shared cores); False only
    sends the caller to those exact tests."""
    if not values.flags.c_contiguous:
        return False
    flat, k = values.reshape(-1), values.shape[-1]
    ok = np.less(flat[1:], flat[:-1]) if descending else np.less(flat[:-1], flat[1:])
    ok[k - 1::k] = True  # (a row's last against the next row's first)
    return np.count_nonzero(ok) == ok.size


def _has_equal_neighbours(xp, values):
    """Whether a row of ``values`` (sorted along the last axis) holds equal neighbours. On the
    CPU first over the flattened array, one comparison and one count (~1 us against ~2.5 for
    the per-row slices on (64, 5)): its only extra pairs, a row's last against the next row's
    first, can only claim a tie, which the per-row check then confirms or refutes."""
    if type(values) is np.ndarray and values.flags.c_contiguous:
        flat = values.reshape(-1)
        if not np.count_nonzero(flat[1:] == flat[:-1]):
            return False
    return bool((values[..., 1:] == values[..., :-1]).any())


class TopKZeroError(ValueError, RuntimeError):
    """``topk`` asked for no element (k == 0). A ValueError is what the mistake is; upstream's
    kernel refuses it with a RuntimeError (its C++ check): this is both, so either ``except``
    catches it."""


def topk(inp, k, descending=False, kth_only=False, no_sort=False):
    """The ``k`` smallest (``descending``: largest) elements of each row and their int32 indices.

    ``kth_only``: just the k-th element of each row (and its index). ``no_sort``: the k elements
    may come in any order (faster). A ``k`` larger than the row length takes the whole row, as
    upstream's kernel does (detection programs ask for a fixed top-n of each feature level, and
    small levels have fewer candidates). ``k`` may be a 0-d tensor; a negative ``k`` flips the
    direction (``topk(x, -3)`` is the 3 largest), because upstream hands ``-k`` to its kernel for
    ``descending`` and programs rely on it (the detection models' ``sample_labels``).
    """
    inp = _tensor(inp)
    _check_sortable(inp, "topk")
    # (a k from x.shape in a dumpable trace, or a TracedModule's size tensor, stays an
    # expression, TopK's parameter; its sign and its comparison with the row length are guards)
    try:
        if type(k) is not int and _not_int(k):  # (int() would parse "2", truncate 2.5)
            raise TypeError
        k, n = k if type(k) is int else _size(k), inp.shape[-1]  # (an int is its own size)
    except TypeError:  # (int()'s own message names no argument; upstream's TypeError too)
        raise ArgumentTypeError(f"topk: k must be an int or a one-element integer tensor, got "
                                f"{k!r}") from None
    if k == 0:
        raise TopKZeroError("topk: k must not be 0")
    if k < 0:
        k, descending = -k, not descending
    k = k if k <= n else n  # (min is this module's reduction)
    values, indices = apply(TopK(k, bool(descending), bool(kth_only), bool(no_sort)), inp)
    if kth_only:
        return values[..., 0], indices[..., 0]
    return values, indices


# ----- linear algebra -----

def matmul(inp1, inp2, transpose_a=False, transpose_b=False, compute_mode="default",
           format="default"):
    """Matrix product with numpy's rules: 1-D operands are vectors, batch dims broadcast.

    ``transpose_a``/``transpose_b`` transpose the last two dims of the operand first.
    """
    a, b = _operands(inp1, inp2)  # (under megengine.amp.autocast MatMul computes in float16)
    if a._data.dtype.metadata is not None or b._data.dtype.metadata is not None:
        from .quantized import _matmul  # quantized operands: the exact qint32 accumulator

        return _matmul(a, b, transpose_a, transpose_b, compute_mode)
    if a.ndim == 1 and b.ndim == 1:
        if a.shape != b.shape:  # (dot's own error would name dot)
            raise ShapeError(f"matmul: vectors must have one length, got shapes {a.shape} and "
                             f"{b.shape}")
        return dot(a, b)
    if transpose_a and a.ndim >= 2:
        a = swapaxes(a, -1, -2)
    if transpose_b and b.ndim >= 2:
        b = swapaxes(b, -1, -2)
    return apply(BINARY["matmul"](), a, b)


def dot(inp1, inp2):
    """Dot product of two vectors (1-D or scalars; a scalar is broadcast)."""
    a, b = _operands(inp1, inp2)
    if a.ndim > 1 or b.ndim > 1:
        raise ArgumentError(  # (upstream asserts)
            f"dot: inputs must be 1-D or scalars, got shapes {a.shape} and {b.shape}")
    if a.ndim == 1 and b.ndim == 1 and a.shape != b.shape:
        raise ValueError(f"dot: vectors must have one length, got shapes {a.shape} and {b.shape}")
    # mul + sum rather than the core MatMul: its backward fails for two 1-D operands; float16
    # multiplies and adds in float32, rounded once, as torch's
    dtype = promote_types(np.dtype(a.dtype), np.dtype(b.dtype))
    refuse_bool_product(dtype, "dot")  # (mul + sum would count the pairs of Trues)
    acc = acc_dtype(dtype)
    if acc is None:
        return (a * b).sum()
    return (a.astype(acc) * b.astype(acc)).sum().astype(dtype)


def _no_float16(x, what):
    """Refuse a float16 ``x`` for the linear algebra of ``what`` (numpy's and CuPy's have no
    float16 kernels, nor has torch's on the CPU), before numpy's own error."""
    if x.dtype == np.float16:
        raise TypeError(f"{what}: float16 matrices are not supported (no float16 linear-algebra "
                        "kernel, as in torch on the CPU); convert with x.astype('float32')")


class MatInv(Op):
    holomorphic = True  # complex gradients (core/dispatch.py): d inv(A) = -inv(A) dA inv(A)
    #: set while megengine.jit.upstream_mge records a file's program on zero inputs, where the
    #: matrices a file computes from its inputs are singular: one then gives its pseudo-inverse
    #: (values recorded are not kept; a run of the program raises as upstream)
    singular_ok = False

    def forward(self, x):
        _no_float16(x, "matinv")
        if x.ndim < 2 or x.shape[-1] != x.shape[-2]:
            raise ShapeError(f"matinv: input must be square matrices (..., n, n), got {x.shape}")
        xp = xp_of(x)
        if x.dtype.kind not in "fc":  # integers in float32 (numpy's inv gave float64), a
            x = float_value(x)  # quantized tensor's values
        try:
            inv = xp.linalg.inv(x)
        except np.linalg.LinAlgError:  # numpy's: a zero pivot in the LU factorization
            if not MatInv.singular_ok:
                raise _singular(x) from None
            inv = xp.linalg.pinv(x)
        # CuPy does not raise (a zero pivot leaves inf / nan): one reduction and a sync to see
        # it, as upstream's CUDA kernel checks cuBLAS's pivots after each call
        if xp is not np and x.size and not bool(xp.isfinite(inv).all()) \
                and bool(xp.isfinite(x).all()):
            if not MatInv.singular_ok:
                raise _singular(x)
            inv = xp.linalg.pinv(x)
        self.inv = inv
        return inv

    def backward(self, g):
        xp = xp_of(g)
        inv_t = xp.swapaxes(self.inv, -1, -2)
        return -(inv_t @ g @ inv_t)

    def grad_graph(self, inputs, outputs, grads):
        inv_t = swapaxes(outputs[0], -1, -2)
        return (-(inv_t @ grads[0] @ inv_t),)


def _singular(x):
    """The error of `MatInv` on a singular matrix: upstream raises there too (its CPU kernel
    "pivot value too small", its CUDA one "the U is exactly singular")."""
    host = x.get() if hasattr(x, "get") else x  # (the error path: which matrix, on the host)
    n = x.shape[-1]
    where = "the matrix is"
    for i, m in enumerate(host.reshape(-1, n, n)):
        # (a matrix holding NaN or inf is not the singular one: its rank would take an SVD
        # of them, which LAPACK refuses, or never returns: `_not_finite`)
        if x.ndim > 2 and np.isfinite(m).all() and np.linalg.matrix_rank(m) < n:
            where = f"{_batch_matrix(i, x.shape)} is"
            break
    return RuntimeError(f"matinv: {where} singular (a zero pivot in its LU factorization), so "
                        "it has no inverse; check the input (F.svd gives its singular values)")


def matinv(inp):
    """Inverse of a square matrix, or of each one in a batch ``(..., n, n)``; a singular one
    raises RuntimeError, as upstream."""
    return apply(MatInv(), _tensor(inp))


def _float_t(t):
    """``t`` as a float Tensor (integer inputs compute in float32, as the forwards do)."""
    return t if t.dtype.kind == "f" else t.astype("float32")


# ----- vector products -----

def cross(a, b, axisa=-1, axisb=-1, axisc=-1, axis=None):
    """Cross product of 3-vectors along ``axisa`` of ``a`` and ``axisb`` of ``b`` (numpy's
    arguments; ``axis`` sets all three); the other dims broadcast, the result's vectors lie along
    ``axisc``. Differentiable in both inputs."""
    a, b = _operands(a, b)
    if axis is not None:
        axisa = axisb = axisc = axis
    for t, ax, name in ((a, axisa, "a"), (b, axisb, "b")):
        if t.ndim == 0 or t.shape[_axis(ax, t.ndim, "cross")] != 3:
            raise ValueError(f"cross: {name} must have size 3 along axis {ax}, got shape "
                             f"{t.shape}")
    a, b = _move_axis(a, axisa, -1), _move_axis(b, axisb, -1)
    # components as size-1 slices joined by concat: a 1-d vector's a[..., 0] would be 0-d, which
    # F.stack counts as shape (1,) (upstream's rule), giving (3, 1) for two (3,) vectors
    a0, a1, a2 = a[..., 0:1], a[..., 1:2], a[..., 2:3]
    b0, b1, b2 = b[..., 0:1], b[..., 1:2], b[..., 2:3]
    out = concat([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0], axis=-1)
    return _move_axis(out, -1, axisc)


def _move_axis(x, src, dst):
    """``x`` with axis ``src`` moved to position ``dst``, the others keeping their order."""
    src, dst = _axis(src, x.ndim, "cross"), _axis(dst, x.ndim, "cross")
    if src == dst:
        return x
    order = [i for i in range(x.ndim) if i != src]
    order.insert(dst, src)
    return x.transpose(order)


__all__ += ["cross"]


# ----- singular value decomposition -----

class SVD(Op):
    """``x = U @ diag(S) @ Vh`` for (..., M, N) matrices; backward by the standard real SVD
    rule (distinct singular values assumed, as in every framework)."""

    def __init__(self, full_matrices, compute_uv):
        self.full_matrices, self.compute_uv = full_matrices, compute_uv

    def forward(self, x):
        _no_float16(x, "svd")
        xp = xp_of(x)
        if x.ndim < 2:
            raise ShapeError(f"svd: input must be (..., M, N) matrices, got shape {x.shape}")
        x = _as_float(x, "svd")
        if x.size and not finite_sum(x):  # (on a GPU: one sum read back, beside the solver's)
            raise _not_finite(x)
        self.m, self.n = x.shape[-2:]
        full = self.full_matrices and self.compute_uv
        u, s, vh = xp.linalg.svd(x, full_matrices=full)
        k = s.shape[-1]
        # the gradient needs the reduced factors: the leading columns/rows of the full ones
        self.saved = (u[..., :k], s, vh[..., :k, :])
        return (u, s, vh) if self.compute_uv else s

    def backward(self, *grads):
        u, s, vh = self.saved
        xp = xp_of(s)
        k = s.shape[-1]
        if self.compute_uv:
            gu, gs, gvh = grads
            if self.full_matrices and self.m != self.n:
                if xp.any(gu[..., k:] != 0) or xp.any(gvh[..., k:, :] != 0):
                    raise RuntimeError(
                        "svd: the extra singular vectors of full_matrices=True are not unique, so "
                        "no gradient flows through them; use full_matrices=False")
                gu, gvh = gu[..., :k], gvh[..., :k, :]
        else:
            gu, gs, gvh = None, grads[0], None
        v = xp.swapaxes(vh, -1, -2)
        inner = gs[..., None, :] * xp.eye(k, dtype=s.dtype)
        inv_s = 1 / s
        gx = 0
        if gu is not None:
            s2 = s * s
            e = s2[..., None, :] - s2[..., :, None]
            e = e + xp.eye(k, dtype=s.dtype)  # the skew parts below have zero diagonals
            gv = xp.swapaxes(gvh, -1, -2)
            utgu = xp.swapaxes(u, -1, -2) @ gu
            vtgv = xp.swapaxes(v, -1, -2) @ gv
            j = (utgu - xp.swapaxes(utgu, -1, -2)) / e
            kk = (vtgv - xp.swapaxes(vtgv, -1, -2)) / e
            inner = inner + j * s[..., None, :] + s[..., :, None] * kk
            if self.m > k:  # the part of gU outside U's columns
                gx = gx + ((gu - u @ utgu) * inv_s[..., None, :]) @ vh
            if self.n > k:
                gx = gx + (u * inv_s[..., None, :]) @ xp.swapaxes(gv - v @ vtgv, -1, -2)
        return (u @ inner @ vh + gx).astype(s.dtype)


def _batch_matrix(i, shape):
    """How an error names matrix ``i`` (flat) of a batch of ``shape`` (..., M, N)."""
    index = tuple(int(j) for j in np.unravel_index(i, shape[:-2]))
    return f"matrix {index[0] if len(index) == 1 else index} of the batch"


def _not_finite(x):
    """The error of `SVD` on NaN or infinity, raised before LAPACK sees them: its SVD does not
    converge on NaN and may never return on an infinity (numpy's of a (1, 3, 4) matrix holding
    one inf looped for good). A ``numpy.linalg.LinAlgError`` (a ``ValueError``), as numpy
    raised for NaN."""
    host = x.get() if hasattr(x, "get") else x  # (the error path: which matrix, on the host)
    m, n = x.shape[-2:]
    bad = int(np.flatnonzero(~np.isfinite(host.reshape(-1, m * n)).all(axis=1))[0])
    where = "the matrix holds" if x.ndim == 2 else f"{_batch_matrix(bad, x.shape)} holds"
    return np.linalg.LinAlgError(
        f"svd: {where} NaN or infinity, which has no singular value decomposition; find "
        "them with F.isnan / F.isinf (a diverged value upstream of the call)")


def svd(inp, full_matrices=False, compute_uv=True):
    """Singular value decomposition of (..., M, N) matrices: ``(U, S, Vh)`` with
    ``inp = U @ diag(S) @ Vh``, S descending; only S when ``compute_uv`` is False.
    ``full_matrices``: U is (..., M, M) and Vh (..., N, N) instead of K = min(M, N) columns/rows.
    Differentiable (through the reduced factors)."""
    return apply(SVD(bool(full_matrices), bool(compute_uv)), _tensor(inp))


__all__ += ["svd"]


def _check_non_finite(inps, scale=1.0):
    """Upstream's amp helper: multiply each tensor of ``inps`` by ``scale`` in place and return
    an int32 Tensor of shape (1,) holding 1 when any value is inf or NaN, else 0."""
    found = False
    for t in inps:
        xp = xp_of(t._data)
        with on_device(t._device):  # CuPy's kernels run on the current GPU
            found = found or not bool(xp.isfinite(t._data).all())
            if scale != 1.0:
                t._reset(Tensor._wrap((t._data * scale).astype(t.dtype, copy=False),
                                      t._device))
    dev = inps[0]._device if inps else None
    return Tensor(np.array([int(found)], np.int32), device=dev)


# Upstream's math module also holds these functions of F at module level (F.math.squeeze, ...)
from .tensor import broadcast_to, expand_dims, squeeze  # noqa: E402,F401
