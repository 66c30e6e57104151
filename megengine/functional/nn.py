"""Neural-network functions (F.nn): activations, softmax, linear, dropout, embedding; re-exports the rest.

Convolution, pooling and normalization live in conv.py, pooling.py and normalization.py, resizing in
vision.py; upstream spells them all F.nn.<name> (and F.<name>), so this module re-exports them.
"""
import math

import numpy as np

from ..core import amp as _amp
from ..core import dtype as _dtype
from ..core.dispatch import Op, apply, declare_fresh_gradient
from ..core.fused import fused_kernel, use_fused
from ..core.ops import t_unbroadcast, unbroadcast, xp_of
from ..core.tensor import Tensor, _operand, promote_types
from . import _aten
from ._args import _as_float, _axes, _out_of_range, _tensor

__all__ = [
    "adaptive_avg_pool2d", "adaptive_max_pool2d", "avg_pool2d", "batch_norm", "conv1d", "conv2d",
    "conv_transpose2d", "cross_entropy_with_softmax", "dropout", "embedding", "gelu",
    "group_norm", "hsigmoid", "hswish", "interpolate", "layer_norm", "leaky_relu", "linear",
    "logsigmoid", "logsoftmax", "max_pool2d",
    "pixel_shuffle", "prelu", "relu", "relu6", "sigmoid", "silu", "softmax", "softplus",
]



def _mask(a, like):
    """A constant array (a mask or per-element factor) as a Tensor of ``like``'s dtype, for
    grad_graph rules: piecewise-linear activations have constant slopes."""
    from ..core.tensor import Tensor

    return Tensor._wrap(xp_of(like._data).asarray(a, like.dtype), like._device)


def _float_t(t):
    return t if t.dtype.kind == "f" else t.astype("float32")


# ----- element-wise activations -----

class _Relu(Op):
    format_rule = "elemwise"  # how a tensor format label passes (megengine.core.format)
    def forward(self, x):
        # integers stay integers, as upstream; a typed zero keeps numpy on its fast loop. A
        # quantized value's zero is its zero point (quint8 stores real 0 as zero_point)
        zero = 0 if x.dtype.metadata is None else _dtype._zero_point(x.dtype)
        if type(x) is np.ndarray and x.dtype in _ATEN_FLOATS and x.dtype.metadata is None \
                and x.size and _aten.use_aten(x, "activation"):
            # ATen's vectorised relu and threshold_backward: one pass each way, where the
            # backward below makes a mask, a product and a NaN check (1M float32 values,
            # forward + backward: 1.3 ms against torch's 0.8 before); CUDA keeps its kernel
            self.ty = _aten.aten().relu(_aten.view(x))
            self.y = _aten.array(self.ty)
            return self.y
        self.y = y = xp_of(x).maximum(x, x.dtype.type(zero))
        return y

    ty = None  # ATen's relu output, when the ATen path ran

    def backward(self, g):
        # upstream's rule is a select, SWITCH_GT0(y, g) = y > 0 ? g : 0: a NaN or inf gradient
        # where y <= 0 gives 0, not NaN (as torch's threshold_backward)
        if self.ty is not None:
            tg = _aten.view(g.astype(self.y.dtype, copy=False))
            return declare_fresh_gradient(_aten.array(
                _aten.aten().threshold_backward(tg, self.ty, 0)))
        y = self.y
        if _use_relu_kernel(y, g):  # CUDA: one kernel, no boolean temporary
            return _relu_grad_kernel()(g, y)
        xp = xp_of(g)
        mask = y > 0
        # a multiply by the mask is ~15x faster than np.where on the CPU (a branch-free loop);
        # it differs from the select only where g is NaN or inf, which the min (a fast SIMD
        # reduction that NaN propagates through) finds
        with np.errstate(invalid="ignore"):  # NaN * 0 is replaced just below
            gx = xp.multiply(g, mask, dtype=g.dtype)
        if gx.dtype.kind == "f" and gx.size and xp.isnan(xp.min(gx)):
            gx = xp.where(mask, g, g.dtype.type(0))
        return gx

    def grad_graph(self, inputs, outputs, grads):
        from ..core.tensor import Tensor
        from .tensor import where  # a select, so that a NaN gradient where y <= 0 gives 0

        g = grads[0]
        return (where(Tensor._wrap(self.y > 0, g._device), g, 0),)


# ReLU's backward on CUDA as one CuPy ElementwiseKernel: the array code above launches a
# comparison (a boolean temporary) and a multiply. The body is upstream's select, so a NaN or
# inf gradient where y <= 0 gives 0 on both devices. The kernel is compiled on its first use
# (CuPy is imported only then).
_RELU_GRAD = ("T g, T y", "T gx", "gx = y > (T)0 ? g : (T)0;", "megengine_relu_grad")
_relu_grad_kernel = fused_kernel(*_RELU_GRAD)  # () -> the kernel ``gx = y > 0 ? g : 0``


def _use_relu_kernel(y, g):
    """A CuPy output and gradient of one float32/float64 dtype take the fused kernel."""
    return type(g) is not np.ndarray and use_fused(y, g)


class _Activation(Op):
    """``y = f(x)`` element-wise on floats; subclasses give ``compute`` and ``grad``.

    A subclass that also gives ``aten_forward(aten, tx)`` and ``aten_backward(aten, tg, tx,
    ty)`` runs on ATen's kernels for float32/float64 (family "activation", `_aten.use_aten`):
    one vectorised pass each way, where the array code makes several passes and temporaries
    (measured with one thread, forward + backward of 1M float32 values: leaky_relu 9.1 ms
    against torch's 1.1, sigmoid 6.9 against 1.0, silu 7.2 against 1.3, hswish 5.3 against
    0.8; see benchmarks/bench_layers.py ``--case act``). ATen's backward rules are the array
    code's, kink for kink (tests/functional/test_nn.py checks both paths against torch).
    """
    format_rule = "elemwise"  # how a tensor format label passes (megengine.core.format)
    aten_forward = None
    tx = None  # ATen's view of x, when the ATen path ran

    def forward(self, x):
        self.x = x = _as_float(x)
        if self.aten_forward is not None and x.dtype in _ATEN_FLOATS and x.size \
                and _aten.use_aten(x, "activation"):
            self.tx = _aten.view(x)
            self.ty = self.aten_forward(_aten.aten(), self.tx)
            self.y = _aten.array(self.ty)
            return self.y
        self.y = self.compute(xp_of(x), x)
        return self.y

    def backward(self, g):
        if self.tx is not None:
            tg = _aten.view(g.astype(self.x.dtype, copy=False))
            return declare_fresh_gradient(_aten.array(
                self.aten_backward(_aten.aten(), tg, self.tx, self.ty)))
        return self.grad(xp_of(g), self.x, self.y, g)


def _sigmoid(xp, x):
    # exp(-|x|) never overflows; both branches keep full relative precision
    e = xp.exp(-xp.abs(x))
    d = 1 + e
    return xp.where(x >= 0, 1 / d, e / d)


def _log1p_exp_neg_abs(xp, x):
    """log(1 + exp(-|x|)): the part of softplus that cannot overflow."""
    return xp.log1p(xp.exp(-xp.abs(x)))


# Abramowitz & Stegun 7.1.26: erfc(z) = poly(t) * exp(-z^2), t = 1/(1 + p z), z >= 0; its
# absolute error is below 1.5e-7, inside float32 rounding of the results that use it.
_AS_P = 0.3275911
_AS_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def _normal_cdf(xp, x):
    """Phi(x) = (1 + erf(x / sqrt 2)) / 2, via erfc(|x| / sqrt 2): for negative x the small
    value is computed directly instead of as the difference 1 - erf. Where gelu runs on ATen
    (`_aten_gelu`) its exact erfc serves, so that gelu's second derivative (`_GeluGrad`) matches
    the first that ATen computed."""
    if _aten_gelu(x):
        phi = _aten.array(_aten.aten().erfc(_aten.view(x * x.dtype.type(-1 / math.sqrt(2)))))
        phi *= phi.dtype.type(0.5)
        return phi
    z = xp.abs(x) * x.dtype.type(1 / math.sqrt(2))
    t = 1 / (1 + _AS_P * z)
    a1, a2, a3, a4, a5 = _AS_A
    half_erfc = 0.5 * (t * (a1 + t * (a2 + t * (a3 + t * (a4 + t * a5))))) * xp.exp(-z * z)
    return xp.where(x >= 0, 1 - half_erfc, half_erfc)


class _LeakyRelu(_Activation):
    def __init__(self, negative_slope):
        self.slope = negative_slope

    def aten_forward(self, aten, tx):
        return aten.leaky_relu(tx, self.slope)

    def aten_backward(self, aten, tg, tx, ty):  # x > 0 ? g : g * slope, as grad below
        return aten.leaky_relu_backward(tg, tx, self.slope, False)

    def compute(self, xp, x):
        return xp.where(x > 0, x, x * x.dtype.type(self.slope))

    def grad(self, xp, x, y, g):
        return xp.where(x > 0, g, g * g.dtype.type(self.slope))

    def grad_graph(self, inputs, outputs, grads):
        g = grads[0]
        return (g * _mask(xp_of(self.x).where(self.x > 0, 1, self.slope), g),)


class _Relu6(_Activation):
    def aten_forward(self, aten, tx):
        return aten.hardtanh(tx, 0.0, 6.0)

    def aten_backward(self, aten, tg, tx, ty):  # g where 0 < x < 6, else 0, as grad below
        return aten.hardtanh_backward(tg, tx, 0.0, 6.0)

    def compute(self, xp, x):
        return xp.clip(x, 0, 6)

    def grad(self, xp, x, y, g):
        return g * ((x > 0) & (x < 6))

    def grad_graph(self, inputs, outputs, grads):
        return (grads[0] * _mask((self.x > 0) & (self.x < 6), grads[0]),)


class _Sigmoid(_Activation):
    def aten_forward(self, aten, tx):
        return aten.sigmoid(tx)

    def aten_backward(self, aten, tg, tx, ty):  # g * y * (1 - y)
        return aten.sigmoid_backward(tg, ty)

    def compute(self, xp, x):
        return _sigmoid(xp, x)

    def grad(self, xp, x, y, g):
        return g * y * (1 - y)

    def grad_graph(self, inputs, outputs, grads):
        y = outputs[0]
        return (grads[0] * y * (1 - y),)


class _HSigmoid(_Activation):
    def aten_forward(self, aten, tx):
        return aten.hardsigmoid(tx)

    def aten_backward(self, aten, tg, tx, ty):  # g / 6 where -3 < x < 3, else 0
        return aten.hardsigmoid_backward(tg, tx)

    def compute(self, xp, x):
        return xp.clip(x + 3, 0, 6) / 6

    def grad(self, xp, x, y, g):
        return g * ((x > -3) & (x < 3)) / 6

    def grad_graph(self, inputs, outputs, grads):
        return (grads[0] * _mask((self.x > -3) & (self.x < 3), grads[0]) / 6,)


class _HSwish(_Activation):
    def aten_forward(self, aten, tx):
        return aten.hardswish(tx)

    def aten_backward(self, aten, tg, tx, ty):  # 0 below -3, (2x + 3) / 6 up to 3, then 1
        return aten.hardswish_backward(tg, tx)

    def compute(self, xp, x):
        return x * xp.clip(x + 3, 0, 6) / 6

    def grad(self, xp, x, y, g):
        return g * xp.where(x < -3, 0, xp.where(x > 3, 1, (2 * x + 3) / 6))

    def grad_graph(self, inputs, outputs, grads):
        x = _float_t(inputs[0])
        mid = _mask((self.x >= -3) & (self.x <= 3), x)
        return (grads[0] * (mid * (2 * x + 3) / 6 + _mask(self.x > 3, x)),)


# dtypes ATen's gelu kernels take on both devices (computed in float32 for float16)
_ATEN_GELU_DTYPES = frozenset(map(np.dtype, ("float16", "float32", "float64")))
# dtypes for which ATen's softmax was measured on the CPU
_ATEN_FLOATS = frozenset(map(np.dtype, ("float32", "float64")))


def _aten_gelu(x):
    """Whether gelu of ``x`` runs on ATen's exact-erf kernels (`_aten.use_aten`): on the CPU they
    are ~20x faster than the array code's polynomial; on CUDA one fused kernel."""
    return x.dtype in _ATEN_GELU_DTYPES and _aten.use_aten(x, "gelu")


class _Gelu(_Activation):
    """gelu, exact: ATen's ``gelu(approximate='none')`` and ``gelu_backward`` (`_aten_gelu`), else
    array code with a polynomial erf (Abramowitz & Stegun 7.1.26: Phi's absolute error is below
    1.5e-7, so the relative error grows where gelu is small, ~0.5 % near x = -4)."""

    tx = None  # ATen's view of x, when the ATen path ran

    def forward(self, x):
        x = _as_float(x)
        if _aten_gelu(x):
            self.x, self.tx = x, _aten.view(x)
            return _aten.array(_aten.aten().gelu(self.tx))
        return super().forward(x)

    def backward(self, g):
        if self.tx is not None:
            tg = _aten.view(g.astype(self.x.dtype, copy=False))
            return declare_fresh_gradient(_aten.array(_aten.aten().gelu_backward(tg, self.tx)))
        return super().backward(g)

    def compute(self, xp, x):
        self.cdf = _normal_cdf(xp, x)
        return x * self.cdf

    def grad(self, xp, x, y, g):
        pdf = xp.exp(-0.5 * x * x) * x.dtype.type(1 / math.sqrt(2 * math.pi))
        return g * (self.cdf + x * pdf)

    def grad_graph(self, inputs, outputs, grads):
        return (apply(_GeluGrad(), _float_t(inputs[0]), grads[0]),)


class _GeluGrad(Op):
    """``g * gelu'(x)`` as an op, so that gelu has a second derivative:
    gelu'(x) = Phi(x) + x phi(x), gelu''(x) = phi(x) (2 - x^2)."""

    def forward(self, x, g):
        xp = xp_of(x)
        self.x, self.g = x, g
        self.pdf = xp.exp(-0.5 * x * x) * x.dtype.type(1 / math.sqrt(2 * math.pi))
        self.d1 = _normal_cdf(xp, x) + x * self.pdf
        return g * self.d1

    def backward(self, gg):
        gx = gg * self.g * self.pdf * (2 - self.x * self.x) if self.needs_input_grad[0] else None
        gg_ = gg * self.d1 if self.needs_input_grad[1] else None
        return (unbroadcast(gx, self.x.shape) if gx is not None else None,
                unbroadcast(gg_, self.g.shape) if gg_ is not None else None)


class _Silu(_Activation):
    def aten_forward(self, aten, tx):
        return aten.silu(tx)

    def aten_backward(self, aten, tg, tx, ty):
        return aten.silu_backward(tg, tx)

    def compute(self, xp, x):
        self.s = _sigmoid(xp, x)
        return x * self.s

    def grad(self, xp, x, y, g):
        s = self.s
        return g * (s * (1 + x * (1 - s)))

    def grad_graph(self, inputs, outputs, grads):
        x = _float_t(inputs[0])
        s = sigmoid(x)
        return (grads[0] * (s * (1 + x * (1 - s))),)


class _Softplus(_Activation):
    # ATen's softplus is x itself above x = 20 (threshold), where the formula below adds
    # log1p(exp(-x)) < 2.1e-9: below float32's resolution there, ~1e-10 relative in float64
    def aten_forward(self, aten, tx):
        return aten.softplus(tx, 1, 20)

    def aten_backward(self, aten, tg, tx, ty):  # g * sigmoid(x) (g above the threshold)
        return aten.softplus_backward(tg, tx, 1, 20)

    def compute(self, xp, x):
        return _log1p_exp_neg_abs(xp, x) + xp.maximum(x, 0)

    def grad(self, xp, x, y, g):
        return g * _sigmoid(xp, x)

    def grad_graph(self, inputs, outputs, grads):
        return (grads[0] * sigmoid(_float_t(inputs[0])),)


class _LogSigmoid(_Activation):
    def compute(self, xp, x):
        return xp.minimum(x, 0) - _log1p_exp_neg_abs(xp, x)

    def grad(self, xp, x, y, g):
        return g * _sigmoid(xp, -x)

    def grad_graph(self, inputs, outputs, grads):
        return (grads[0] * sigmoid(-_float_t(inputs[0])),)


class _PRelu(Op):
    format_rule = "elemwise"  # how a tensor format label passes (megengine.core.format)
    def forward(self, x, w):
        dtype = promote_types(x.dtype, w.dtype)
        x, w = x.astype(dtype, copy=False), w.astype(dtype, copy=False)
        self.x, self.w = x, w
        try:
            return xp_of(x).where(x > 0, x, x * w)
        except ValueError:
            raise ValueError(f"prelu: weight of shape {w.shape} does not broadcast to the input "
                             f"of shape {x.shape}") from None

    def backward(self, g):
        xp = xp_of(g)
        pos = self.x > 0
        # x may have been broadcast against w (upstream's rule): reduce back to x's shape
        gx = unbroadcast(xp.where(pos, g, g * self.w), self.x.shape) \
            if self.needs_input_grad[0] else None
        gw = unbroadcast(xp.where(pos, 0, g * self.x), self.w.shape) \
            if self.needs_input_grad[1] else None
        return gx, gw

    def grad_graph(self, inputs, outputs, grads):
        g = grads[0]
        x, w = inputs
        pos = _mask(self.x > 0, g)
        gx = t_unbroadcast(g * pos + g * w * (1 - pos), self.x.shape) \
            if self.needs_input_grad[0] else None
        gw = t_unbroadcast(g * x * (1 - pos), self.w.shape) if self.needs_input_grad[1] else None
        return gx, gw


def relu(x):
    """Element-wise ``max(x, 0)``."""
    return apply(_Relu(), _tensor(x))


def leaky_relu(inp, negative_slope=0.01):
    """Element-wise ``x`` where positive, else ``negative_slope * x``."""
    return apply(_LeakyRelu(float(negative_slope)), _tensor(inp))


def relu6(x):
    """Element-wise ``min(max(x, 0), 6)``."""
    return apply(_Relu6(), _tensor(x))


def sigmoid(x):
    """Element-wise ``1 / (1 + exp(-x))``, without overflow."""
    return apply(_Sigmoid(), _tensor(x))


def hsigmoid(x):
    """Element-wise ``relu6(x + 3) / 6``."""
    return apply(_HSigmoid(), _tensor(x))


def hswish(x):
    """Element-wise ``x * relu6(x + 3) / 6``."""
    return apply(_HSwish(), _tensor(x))


def gelu(x):
    """Element-wise ``x * Phi(x)``, Phi the standard normal CDF (the exact, erf form)."""
    return apply(_Gelu(), _tensor(x))


def silu(x):
    """Element-wise ``x * sigmoid(x)``."""
    return apply(_Silu(), _tensor(x))


def softplus(inp):
    """Element-wise ``log(1 + exp(x))``, computed as ``log1p(exp(-|x|)) + relu(x)``."""
    return apply(_Softplus(), _tensor(inp))


def logsigmoid(inp):
    """Element-wise ``log(sigmoid(x)) = -softplus(-x)``."""
    return apply(_LogSigmoid(), _tensor(inp))


def prelu(inp, weight):
    """Element-wise ``x`` where positive, else ``weight * x`` (``weight`` broadcasts)."""
    inp = _tensor(inp)
    return apply(_PRelu(), inp, _operand(weight, inp))


# ----- softmax family -----

def _shift(x, axes):
    """The max along ``axes`` that softmax subtracts; an empty input has no max (numpy refuses)
    and no output either, so any array of the right shape serves."""
    return x.max(axes, keepdims=True) if x.size else x.sum(axes, keepdims=True)


def _aten_softmax(x, axes):
    """Whether softmax / log_softmax of ``x`` along ``axes`` takes ATen's kernels: over one axis,
    on CUDA always; on the CPU over the last axis of rows of 32 or more and 4096 values or more,
    where ATen was measured faster than numpy (see `_aten`; over short rows it is slower)."""
    if len(axes) != 1 or not x.ndim:
        return False
    axis = axes[0]
    return _aten.use_aten(x, "softmax", cpu_worth=axis == x.ndim - 1 and x.shape[axis] >= 32
                          and x.size >= 4096 and x.dtype in _ATEN_FLOATS)


class _Softmax(Op):
    """Softmax along ``axes``. Over one axis on CUDA, and over long rows on the CPU: ATen's
    kernels (`_aten_softmax`); else array code (numpy on the CPU, the faster for short rows)."""
    format_rule = "keep"  # how a tensor format label passes (megengine.core.format)

    def __init__(self, axes):
        self.axes = axes
        self.ty = None  # ATen's output, when the ATen path ran

    def forward(self, x):
        x = _as_float(x)
        if _aten_softmax(x, self.axes):
            self.ty = _aten.aten()._softmax(_aten.view(x), self.axes[0], False)
            self.y = _aten.array(self.ty)
            return self.y
        e = xp_of(x).exp(x - _shift(x, self.axes))
        e /= e.sum(self.axes, keepdims=True)
        self.y = e
        return e

    def backward(self, g):
        if self.ty is not None:
            ty = self.ty
            return declare_fresh_gradient(_aten.array(_aten.aten()._softmax_backward_data(
                _aten.view(g.astype(self.y.dtype, copy=False)), ty, self.axes[0], ty.dtype)))
        y = self.y
        return y * (g - (g * y).sum(self.axes, keepdims=True))

    def grad_graph(self, inputs, outputs, grads):
        y, g = outputs[0], grads[0]
        return (y * (g - (g * y).sum(self.axes, keepdims=True)),)


class _LogSoftmax(Op):
    """``x - logsumexp(x)`` along ``axes``; ATen's kernels where softmax takes them
    (`_aten_softmax`)."""
    format_rule = "keep"  # how a tensor format label passes (megengine.core.format)

    def __init__(self, axes):
        self.axes = axes
        self.ty = None  # ATen's output, when the ATen path ran

    def forward(self, x):
        x = _as_float(x)
        if _aten_softmax(x, self.axes):
            self.ty = _aten.aten()._log_softmax(_aten.view(x), self.axes[0], False)
            self.y = _aten.array(self.ty)
            return self.y
        xp = xp_of(x)
        shifted = x - _shift(x, self.axes)
        if not x.size:  # no output (and the log of an empty sum would warn)
            self.y = shifted
            return shifted
        self.y = shifted - xp.log(xp.exp(shifted).sum(self.axes, keepdims=True))
        return self.y

    def backward(self, g):
        if self.ty is not None:
            ty = self.ty
            return declare_fresh_gradient(_aten.array(_aten.aten()._log_softmax_backward_data(
                _aten.view(g.astype(self.y.dtype, copy=False)), ty, self.axes[0], ty.dtype)))
        return g - xp_of(g).exp(self.y) * g.sum(self.axes, keepdims=True)

    def grad_graph(self, inputs, outputs, grads):
        from .elemwise import exp

        g = grads[0]
        return (g - exp(outputs[0]) * g.sum(self.axes, keepdims=True),)


def _get_softmax_axis(ndim):
    # upstream's default: axis 0 for 0-, 1- and 3-d input (C, H, W), else axis 1
    return 0 if ndim in (0, 1, 3) else 1


def softmax(inp, axis=None):
    """``exp(x) / sum(exp(x))`` along ``axis`` (default: 0 for 0/1/3-d input, else 1)."""
    inp = _tensor(inp)
    if axis is None:
        axis = _get_softmax_axis(inp.ndim)
    return apply(_Softmax(_axes(axis, inp.ndim, "softmax")), inp)


def logsoftmax(inp, axis):
    """``log(softmax(x))`` along ``axis``, computed as ``x - logsumexp(x)``."""
    inp = _tensor(inp)
    return apply(_LogSoftmax(_axes(axis, inp.ndim, "logsoftmax")), inp)


# ----- linear -----

class _Linear(Op):
    """``x @ W.T + b`` as one op: one matmul forward, at most two back."""

    def forward(self, x, w, b=None):
        if w.ndim != 2 or x.ndim < 1 or x.shape[-1] != w.shape[1]:
            raise ValueError(
                f"linear: input of shape {x.shape} does not match weight of shape {w.shape}; "
                "expected input (..., in_features) and weight (out_features, in_features)"
            )
        if x.dtype != w.dtype:
            dtype = promote_types(x.dtype, w.dtype)
            x, w = x.astype(dtype, copy=False), w.astype(dtype, copy=False)
        out_shape = None
        if x.ndim > 2:
            # (..., in) as one (rows, in) matrix: one gemm instead of numpy matmul's gemm per
            # leading index (16 x (64, 256) @ (256, 768) took 5.65 ms, one (1024, 256) gemm
            # 4.15). Rows spelled out: -1 is ambiguous for a size-0 input with in == 0. A
            # non-contiguous x is copied here once, and backward reuses that copy.
            out_shape = x.shape[:-1] + (w.shape[0],)
            x = x.reshape(math.prod(x.shape[:-1]), x.shape[-1])
        self.x, self.w, self.out_shape = x, w, out_shape
        # ndarray.dot is matmul for a 2-d (or 1-d) input, with less dispatch: ~5 us less per
        # call right after torch's convolutions (benchmarks/profile_hybrid_step.py)
        y = x.dot(w.T)
        if b is not None:
            if b.size != w.shape[0]:
                raise ValueError(f"linear: bias of shape {b.shape} does not match "
                                 f"{w.shape[0]} out_features")
            self.b_shape = b.shape
            # upstream's linear is a matmul, then + bias: the bias's gradient is ready first,
            # so its callbacks run before the weight's (as torch's addmm hands them out too)
            self.grad_order = (2, 0, 1)
            y += b if b.ndim == 1 else b.reshape(-1)
        return y if out_shape is None else y.reshape(out_shape)

    def backward(self, g):
        needs = self.needs_input_grad
        x, w = self.x, self.w
        if self.out_shape is not None:  # N-d: the (rows, out) matrix forward's gemm made
            g = g.reshape(x.shape[0], w.shape[0])
        # dot, as in forward: with g and x 2-d (or 1-d) each gradient is one gemm (gemv)
        gx = g.dot(w) if needs[0] else None
        if gx is not None and self.out_shape is not None:
            gx = gx.reshape(self.out_shape[:-1] + (w.shape[1],))
        gw = (g.T.dot(x) if g.ndim == 2 else xp_of(g).outer(g, x)) if needs[1] else None
        if len(needs) == 2:
            return gx, gw
        gb = (g.sum(0) if g.ndim == 2 else g).reshape(self.b_shape) if needs[2] else None
        return gx, gw, gb

    def grad_graph(self, inputs, outputs, grads):
        needs = self.needs_input_grad
        x, w = inputs[0], inputs[1]
        g = grads[0]
        gx = g @ w if needs[0] else None
        g2 = g.reshape(-1, g.shape[-1])
        gw = g2.transpose(1, 0) @ x.reshape(-1, x.shape[-1]) if needs[1] else None
        if len(needs) == 2:
            return gx, gw
        gb = g2.sum(0).reshape(self.b_shape) if needs[2] else None
        return gx, gw, gb


def linear(inp, weight, bias=None, compute_mode="default"):
    """``inp @ weight.T + bias``; ``weight`` is (out_features, in_features)."""
    inputs = (inp if isinstance(inp, Tensor) else Tensor(inp),
              weight if isinstance(weight, Tensor) else Tensor(weight))
    if bias is not None:
        inputs += (bias if isinstance(bias, Tensor) else Tensor(bias),)
    if inputs[0]._data.dtype.metadata is not None:  # quantized: the exact qint32 accumulator
        from .quantized import _linear

        return _linear(*inputs)
    if _amp._enabled:  # megengine.amp.autocast: float16 compute
        inputs = _amp.cast_for_compute(*inputs)
    return apply(_Linear(), *inputs)


# ----- dropout, embedding -----

class _Dropout(Op):
    format_rule = "keep"  # how a tensor format label passes (megengine.core.format)
    def __init__(self, drop_prob):
        self.p = drop_prob

    def forward(self, x):
        xp = xp_of(x)
        scale = x.dtype.type(1 / (1 - self.p))
        if _use_dropout_kernel(x):  # CUDA: one draw in x's dtype, mask and product in one kernel
            u = _uniform(xp, x.shape, x.dtype)
            y, self.mask = _dropout_kernel()(x, u, x.dtype.type(self.p), scale)
            return y
        # numpy's global RNG (CuPy's on a GPU), which megengine.random.seed() also seeds
        keep = xp.random.random_sample(x.shape) >= self.p
        # where(), not keep * scale: a scale beyond the dtype's range (float16 at p > 1 - 2**-16)
        # is inf, and 0 * inf would make the dropped elements NaN instead of 0
        self.mask = xp.where(keep, scale, x.dtype.type(0))
        return x * self.mask

    def backward(self, g):
        return g * self.mask

    def grad_graph(self, inputs, outputs, grads):
        return (grads[0] * _mask(self.mask, grads[0]),)


# Dropout's forward on CUDA: the array code launches a comparison, a cast, a scaling and a product
# (and draws float64 numbers); the kernel makes the mask and the output in one pass over a draw
# in the input's dtype. The kept fraction is the same rule, ``u >= p``.
_dropout_kernel = fused_kernel("T x, T u, T p, T scale", "T y, T mask",
                               "mask = u >= p ? scale : (T)0; y = x * mask;", "megengine_dropout")


def _use_dropout_kernel(x):
    return type(x) is not np.ndarray and use_fused(x, x)


def _uniform(xp, shape, dtype):
    """Uniform draws in [0, 1) of ``dtype``: CuPy draws float32 directly, numpy's legacy
    generator (the one megengine.random.seed seeds) only float64."""
    if xp is np:
        return np.random.random_sample(shape).astype(dtype)
    return xp.random.random_sample(shape, dtype=dtype)


def dropout(inp, drop_prob, training=True):
    """Zero each element with probability ``drop_prob`` and scale the rest by 1/(1 - p).

    With ``training`` False (or p == 0) the input is returned as is.
    """
    if not 0 <= drop_prob < 1:
        raise ValueError(f"dropout: drop_prob must be in [0, 1), got {drop_prob}")
    inp = _tensor(inp)
    if not training or drop_prob == 0:
        return inp
    if inp.dtype.kind != "f":
        raise TypeError(f"dropout: expected a float tensor, got dtype {inp.dtype}")
    return apply(_Dropout(float(drop_prob)), inp)


class _Embedding(Op):
    def __init__(self, padding_idx):
        self.padding_idx = padding_idx

    def forward(self, idx, w):
        if idx.dtype.kind not in "iu":
            raise TypeError(f"embedding: indices must be integers, got dtype {idx.dtype}")
        if w.ndim != 2:
            raise ValueError(f"embedding: weight must be 2-d (num_embeddings, dim), "
                             f"got shape {w.shape}")
        if _out_of_range(idx, w.shape[0]):
            raise ValueError(f"embedding: indices must be in [0, {w.shape[0]}), got values in "
                             f"[{int(idx.min())}, {int(idx.max())}]")
        self.idx, self.w_shape = idx, w.shape
        return w[idx]

    def backward(self, g):
        if not self.needs_input_grad[1]:
            return None, None
        xp = xp_of(g)
        gw = xp.zeros(self.w_shape, g.dtype)
        # repeated indices accumulate
        xp.add.at(gw, self.idx.reshape(-1), g.reshape(-1, self.w_shape[1]))
        if self.padding_idx is not None:
            gw[self.padding_idx] = 0
        return None, gw

    def grad_graph(self, inputs, outputs, grads):
        if not self.needs_input_grad[1]:
            return None, None
        from ..core.ops import IndexAdd

        g = grads[0].reshape(-1, self.w_shape[1])
        gw = apply(IndexAdd((self.idx.reshape(-1),), self.w_shape, g.dtype), g)
        if self.padding_idx is not None:
            keep = xp_of(self.idx).ones((self.w_shape[0], 1), g.dtype)
            keep[self.padding_idx] = 0
            gw = gw * _mask(keep, g)
        return None, gw


def embedding(inp, weight, padding_idx=None, max_norm=None, norm_type=None):
    """Rows of ``weight`` (num_embeddings, dim) picked by the integer indices ``inp``.

    ``padding_idx``: that row gets no gradient. ``max_norm``/``norm_type`` are not supported
    (upstream does not support them either).
    """
    if max_norm is not None or norm_type is not None:
        raise ValueError("embedding: max_norm and norm_type are not supported; pass None")
    weight = _tensor(weight)
    if padding_idx is not None:
        padding_idx = int(padding_idx)
        if not -weight.shape[0] <= padding_idx < weight.shape[0]:
            raise ValueError(f"embedding: padding_idx {padding_idx} is out of range for "
                             f"{weight.shape[0]} embeddings")
    return apply(_Embedding(padding_idx), _tensor(inp), weight)


def pixel_shuffle(inp, upscale_factor):
    """Rearrange (..., C*r*r, H, W) into (..., C, H*r, W*r), ``r`` = ``upscale_factor``."""
    inp = _tensor(inp)
    r = int(upscale_factor)
    if r < 1 or inp.ndim < 3 or inp.shape[-3] % (r * r):
        raise ValueError(f"pixel_shuffle: input of shape {inp.shape} needs >= 3 dims and "
                         f"channels (dim -3) divisible by upscale_factor**2 = {r * r}")
    *lead, c, h, w = inp.shape
    x = inp.reshape(-1, c // (r * r), r, r, h, w).transpose(0, 1, 4, 2, 5, 3)
    return x.reshape(tuple(lead) + (c // (r * r), h * r, w * r))


from .attention import *  # noqa: E402,F401,F403
from .conv import *  # noqa: E402,F401,F403
from .normalization import *  # noqa: E402,F401,F403
from .pooling import *  # noqa: E402,F401,F403
from .vision import interpolate  # noqa: E402,F401
from .vision import (  # noqa: E402,F401  (upstream also spells the vision ops F.nn.<name>)
    correlation, cvt_color, nms, remap, roi_align, roi_pooling, warp_affine, warp_perspective,
    deformable_psroi_pooling,
)
from . import attention as _attention, conv as _conv, normalization as _norm, pooling as _pool  # noqa: E402,E501
# every public name of the split-out files is F.nn.<name> and F.<name> (conv3d, sliding_window, ...)
__all__ += [n for m in (_attention, _conv, _norm, _pool) for n in m.__all__ if n not in __all__]

# ----- names that live elsewhere but upstream also spells F.nn.<name> -----

from .elemwise import tanh  # noqa: E402,F401
from .math import logsumexp, normalize  # noqa: E402,F401
from .tensor import indexing_one_hot, one_hot, pad  # noqa: E402,F401
from .loss import *  # noqa: E402,F401,F403  (F.nn.cross_entropy, F.nn.l1_loss, ...)
from .loss import cross_entropy_with_softmax  # noqa: E402,F401  (0.x: F.cross_entropy_with_softmax)
