"""Element-wise activation functions (relu, leaky_relu, relu6, sigmoid, hsigmoid, hswish, gelu,
silu, softplus, logsigmoid, prelu): their ops and public functions, upstream's `F.nn.<name>`.

`megengine.functional.nn` re-exports every name here and is the home these functions and ops
report (see the end of this file).
"""
import math

import numpy as np

from ..core import dtype as _dtype
from ..core.dispatch import FLOAT16, KERNEL_FLOATS, Op, apply
from ..core.dtype_rules import no_order
from ..core.fused import fused_kernel, use_fused_with_half
from ..core.ops import (ArgumentTypeError, BroadcastError, ShapeOnly, masked_gradient,
                        masked_gradient_graph, t_unbroadcast, unbroadcast, xp_of)
from ..core.tensor import _operand, promote_types
from . import _aten
from ._args import _renamed, _tensor
from .elemwise import _Unary, any_nan_array, log1p_array

__all__ = ["gelu", "hsigmoid", "hswish", "leaky_relu", "logsigmoid", "prelu", "relu", "relu6",
           "sigmoid", "silu", "softplus"]


def _mask(a, like):
    """A constant array (a mask or per-element factor) as a Tensor of ``like``'s dtype, for
    grad_graph rules: piecewise-linear activations have constant slopes."""
    from ..core.tensor import Tensor

    return Tensor._wrap(xp_of(like._data).asarray(a, like.dtype), like._device)


def _float_t(t):
    return t if t.dtype.kind == "f" else t.astype("float32")


# ----- element-wise activations -----

# The float dtypes ReLU and gelu take ATen's kernels for: float16 too, unlike the other
# activations (`KERNEL_FLOATS`): ReLU's select is exact in any dtype (its ATen path is the
# CPU's), and ATen's gelu computes float16 in float32 (on both devices)
_ATEN_HALF_FLOATS = frozenset(map(np.dtype, ("float16", "float32", "float64")))


class _Relu(Op):
    format_rule = "elemwise"  # how a tensor format label passes (megengine.core.format)
    def forward(self, x):
        # integers stay integers, as upstream; a typed zero keeps numpy on its fast loop. A
        # quantized value's zero is its zero point (quint8 stores real 0 as zero_point)
        zero = 0 if x.dtype.metadata is None else _dtype._zero_point(x.dtype)
        if type(x) is np.ndarray and x.dtype in _ATEN_HALF_FLOATS and x.size \
                and _aten.use_aten(x, "activation"):
            # ATen's vectorised relu and threshold_backward: one pass each way, where the
            # backward below makes a mask, a product and a NaN check (1M float32 values,
            # forward + backward: 1.3 ms against torch's 0.8 before; float16, which numpy
            # computes element by element, (64, 1024) 0.37 + 1.15 ms against 0.011 + 0.014,
            # the same values: a select is exact in any dtype); CUDA keeps its kernel
            self.ty = _aten.ops.relu(_aten.view(x))
            self.y = _aten.array(self.ty)
            return self.y
        if x.dtype.kind == "c":
            raise no_order("relu", x.dtype)
        self.y = y = xp_of(x).maximum(x, x.dtype.type(zero))
        return y

    ty = None  # ATen's relu output, when the ATen path ran

    def backward(self, g):
        # upstream's rule is a select, SWITCH_GT0(y, g) = y > 0 ? g : 0: a NaN or inf gradient
        # where y <= 0 gives 0, not NaN (as torch's threshold_backward)
        if self.ty is not None:
            tg = _aten.view(g.astype(self.y.dtype, copy=False))
            return _aten.fresh_gradient(_aten.ops.threshold_backward(tg, self.ty, 0))
        y = self.y
        if _use_relu_kernel(y, g):  # CUDA: one kernel, no boolean temporary
            return _relu_grad_kernel()(g, y)
        return masked_gradient(g, y > 0)

    def grad_graph(self, inputs, outputs, grads):
        # (a select, so that a NaN gradient where y <= 0 gives 0)
        return (masked_gradient_graph(grads[0], self.y > 0),)


# ReLU's backward on CUDA as one CuPy ElementwiseKernel: the array code above launches a
# comparison (a boolean temporary) and a multiply. The body is upstream's select, so a NaN or
# inf gradient where y <= 0 gives 0 on both devices. The kernel is compiled on its first use
# (CuPy is imported only then).
_RELU_GRAD = ("T g, T y", "T gx", "gx = y > (T)0 ? g : (T)0;", "megengine_relu_grad")
_relu_grad_kernel = fused_kernel(*_RELU_GRAD)  # () -> the kernel ``gx = y > 0 ? g : 0``


def _use_relu_kernel(y, g):
    """A CuPy output and gradient of one float dtype take the fused kernel: float16 too (a
    select is exact in any dtype), whose array code below reads a NaN check back to the host
    (a sync per ReLU of an autocast step) and launches four kernels."""
    return use_fused_with_half(y, g)


class _Activation(_Unary):
    """``y = f(x)`` element-wise on floats (`_Unary`) with a faster path on ATen's kernels.

    A subclass that also gives ``aten_forward(aten, tx)`` and ``aten_backward(aten, tg, tx,
    ty)`` (``aten``: `_aten.ops`, torch's bindings) runs on ATen's kernels for float32/float64
    (family "activation", `_aten.use_aten`):
    one vectorised pass each way, where the array code makes several passes and temporaries
    (measured with one thread, forward + backward of 1M float32 values: leaky_relu 9.1 ms
    against torch's 1.1, sigmoid 6.9 against 1.0, silu 7.2 against 1.3, hswish 5.3 against
    0.8; see benchmarks/bench_layers.py ``--case act``). ATen's backward rules are the array
    code's, kink for kink (tests/functional/test_nn.py checks both paths against torch).
    CUDA float16 (autocast's activations) takes ATen's float16 kernels too, which compute in
    float32 and round once, as the CPU computes float16 (`Op.half_in_float32`): CuPy's float16
    array code rounded every step and launched a kernel per step (sigmoid's forward and
    backward: 16 kernels, against 2).
    """
    holomorphic = False  # (the few that compute complex input say so)
    aten_forward = None
    tx = None  # ATen's view of x, when the ATen path ran
    backward_reads = ("x", "tx")  # what the gradient reads (see `Op`), as torch's saves
    # f'(x), where the array code's forward of a recorded call computed it (silu, gelu), so
    # that backward reads it alone (g * f'(x)), neither x nor a part of f (see `_Silu`)
    derivative = None
    # whether ATen's CUDA kernels compute float64 in float64 (hardsigmoid's and hardswish's
    # take 1/6 as the float32 1.0f / 6.0f: 3e-8 off; the array code serves there)
    aten_cuda_float64 = True

    def _forward(self, x):
        self.x = x
        if self.aten_forward is not None and x.size \
                and (x.dtype in KERNEL_FLOATS or x.dtype is FLOAT16 and type(x) is not np.ndarray)\
                and (self.aten_cuda_float64 or type(x) is np.ndarray or x.dtype != np.float64) \
                and _aten.use_aten(x, "activation"):
            self.tx = _aten.view(x)
            self.ty = self.aten_forward(_aten.ops, self.tx)
            y = self.y = _aten.array(self.ty)
        else:
            y = self.y = self.compute(xp_of(x), x)
        if True in self.needs_input_grad:  # recorded: the other one only as its shape
            if "x" not in self.backward_reads or self.derivative is not None:
                self.x = ShapeOnly(x)  # (its dtype is the gradient's; sigmoid reads y)
                if self.tx is not None:  # (what tells the ATen path)
                    self.tx = self.x
            if "y" not in self.backward_reads:  # (gelu, silu, ...: their gradients read x)
                self.y = ShapeOnly(y)
                self.ty = None
        return y

    def _backward(self, g):
        if self.tx is not None:
            tg = _aten.view(g.astype(self.x.dtype, copy=False))
            return _aten.fresh_gradient(self.aten_backward(_aten.ops, tg, self.tx, self.ty))
        return self.grad(xp_of(g), self.x, self.y, g)


def _sigmoid(xp, x):
    if x.dtype.kind == "c":  # (no order to pick a branch by: the formula, as torch computes it)
        return 1 / (1 + xp.exp(-x))
    # exp(-|x|) never overflows; both branches keep full relative precision
    e = xp.exp(-xp.abs(x))
    d = 1 + e
    return xp.where(x >= 0, 1 / d, e / d)


def _log1p_exp_neg_abs(xp, x):
    """log(1 + exp(-|x|)): the part of softplus that cannot overflow."""
    return log1p_array(xp, xp.exp(-xp.abs(x)))


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
    what = "leaky_relu"  # (the public function, for errors)

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
    def forward(self, x):
        if x.dtype.kind in "iu" and x.dtype.metadata is None:
            # integers stay integers, as upstream's relu6 (and relu here): a clip in their dtype
            self.x = x
            self.y = xp_of(x).clip(x, x.dtype.type(0), x.dtype.type(6))
            return self.y
        return super().forward(x)

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
    holomorphic = True  # complex input computes, as torch (and tanh); see `_as_float`
    backward_reads = ("y", "ty")  # (not x: `_Activation._forward` keeps its shape)

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
    autocast = "high"  # megengine.amp.autocast: float32 (upstream's rule)
    aten_cuda_float64 = False  # (see `_Activation`)

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
    aten_cuda_float64 = False  # (see `_Activation`)

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


def _aten_gelu(x):
    """Whether gelu of ``x`` runs on ATen's exact-erf kernels (`_aten.use_aten`): on the CPU they
    are ~20x faster than the array code's polynomial; on CUDA one fused kernel."""
    return x.dtype in _ATEN_HALF_FLOATS and _aten.use_aten(x, "gelu")


# gelu's limits at +-inf on CUDA in one kernel (`_Gelu.forward`): the array code's two wheres
# over isinf(x) and x > 0, fused.
_gelu_limits_kernel = fused_kernel("T x, T y", "T out",
                                   "out = isinf(x) ? (x > (T)0 ? x : (T)(-0.0)) : y;",
                                   "megengine_gelu_limits")


class _Gelu(_Activation):
    """gelu, exact: ATen's ``gelu(approximate='none')`` and ``gelu_backward`` (`_aten_gelu`), else
    array code with a polynomial erf (Abramowitz & Stegun 7.1.26: Phi's absolute error is below
    1.5e-7, so the relative error grows where gelu is small, ~0.5 % near x = -4)."""

    tx = None  # ATen's view of x, when the ATen path ran
    # ATen's gelu computes float16 in float32 itself (`_aten_gelu`); where it does not serve,
    # the array code's does (`_Unary.forward`, whose wrapper takes float16 to float32)
    half_in_float32 = False

    def forward(self, x):
        x = self.input(x)
        if _aten_gelu(x):
            self.x, self.tx = x, _aten.view(x)
            y = _aten.array(_aten.ops.gelu(self.tx))
        else:
            y = super().forward(x)
        xp = xp_of(y)
        # gelu's limits are inf at +inf (upstream 1.13's value) and -0 at -inf, where x * Phi(x)
        # is inf * 0 (and ATen's float32 kernel gives NaN at +inf too, as torch's gelu). Only
        # there (and where x is NaN) is y NaN, which the min (a fast reduction NaN propagates
        # through) finds on the host; on a GPU asking would wait for it, so the fix-up always
        # runs there, as one kernel (the array code's is four). Finite inputs keep their results.
        if use_fused_with_half(x, y):  # (float16 too: a select, exact in any dtype)
            return _gelu_limits_kernel()(x, y)
        if xp is not np or (y.size and any_nan_array(y)):
            y = xp.where(xp.isinf(x), xp.where(x > 0, x, x.dtype.type(-0.0)), y)
        return y

    def backward(self, g):
        if self.tx is not None:
            tg = _aten.view(g.astype(self.x.dtype, copy=False))
            return _aten.fresh_gradient(_aten.ops.gelu_backward(tg, self.tx))
        return super().backward(g)

    def compute(self, xp, x):
        cdf = _normal_cdf(xp, x)
        # recorded: gelu'(x) now, x and Phi(x) not kept (see `_Silu`)
        self.derivative = (_gelu_derivative(xp, x, cdf) if True in self.needs_input_grad
                           else None)  # (None: an op called again keeps no earlier one)
        return x * cdf

    def grad(self, xp, x, y, g):
        d = self.derivative
        return g * (_gelu_derivative(xp, x, _normal_cdf(xp, x)) if d is None else d)

    def grad_graph(self, inputs, outputs, grads):
        return (apply(_GeluGrad(), _float_t(inputs[0]), grads[0]),)


def _gelu_derivative(xp, x, cdf):
    """gelu'(x) = Phi(x) + x phi(x), from ``cdf`` = Phi(x)."""
    pdf = xp.exp(-0.5 * x * x) * x.dtype.type(1 / math.sqrt(2 * math.pi))
    return cdf + x * pdf


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
    holomorphic = True  # complex input computes, as torch (and tanh); see `_as_float`
    def aten_forward(self, aten, tx):
        return aten.silu(tx)

    def aten_backward(self, aten, tg, tx, ty):
        return aten.silu_backward(tg, tx)

    # The array code's forward of a recorded call computes silu'(x) = s (1 + x (1 - s)), s =
    # sigmoid(x), and backward reads it alone: one array kept, as torch keeps x alone, where
    # keeping x and s took two; the same passes in all (four in forward, one in backward,
    # where backward made five) and the same values. Recomputing s from x in backward, as
    # torch's fused kernel does, costs numpy its six passes again. Measured with one thread,
    # forward and backward of 1M float32 values on the array code (ATen avoided): x and s
    # kept, 8 MiB, backward 2.8 ms; x alone with s recomputed, 4 MiB, 12.1 ms (gelu, x and
    # Phi(x): 8 MiB, 4.4 ms; 4 MiB, 17.1 ms); the derivative alone, 4 MiB, the step as fast as
    # with x and s (bench_layers.py --case act, silu_arrays / gelu_arrays, two runs each of
    # x and s kept and of this: silu 4.41-4.61x torch and 4.41-4.72x at 1M values, 2.55-2.59x
    # and 2.57-2.59x at 64K; gelu 5.05-5.30x and 4.98-5.07x, 2.40-2.69x and 2.62-2.94x).
    def compute(self, xp, x):
        s = _sigmoid(xp, x)
        self.derivative = (s * (1 + x * (1 - s)) if True in self.needs_input_grad  # recorded
                           else None)  # (None: an op called again keeps no earlier one)
        return x * s

    def grad(self, xp, x, y, g):
        d = self.derivative
        if d is None:  # (not recorded at forward)
            s = _sigmoid(xp, x)
            d = s * (1 + x * (1 - s))
        return g * d

    def grad_graph(self, inputs, outputs, grads):
        x = _float_t(inputs[0])
        s = sigmoid(x)
        return (grads[0] * (s * (1 + x * (1 - s))),)


class _Softplus(_Activation):
    autocast = "high"  # megengine.amp.autocast: float32 (upstream's rule)
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
    """ATen's log_sigmoid forward and backward (family "activation"): one pass each way where
    the array code makes five (numpy's exp, log1p and where). bench_ops.py ``--case
    logsigmoid``, megengine / torch, (512, 1024) float32: forward 1.9-2.3x on the array code
    (with ATen's log1p) against 1.03-1.04x, forward + backward 2.7-3.3x against 1.01-1.02x."""
    autocast = "high"  # megengine.amp.autocast: float32 (upstream's rule)
    buffer = None  # ATen's forward's second output, which its backward reads (recorded calls)

    def aten_forward(self, aten, tx):
        y, buffer = aten.log_sigmoid_forward(tx)
        if True in self.needs_input_grad:
            self.buffer = buffer
        return y

    def aten_backward(self, aten, tg, tx, ty):
        return aten.log_sigmoid_backward(tg, tx, self.buffer)

    def compute(self, xp, x):
        return xp.minimum(x, 0) - _log1p_exp_neg_abs(xp, x)

    def grad(self, xp, x, y, g):
        return g * _sigmoid(xp, -x)

    def grad_graph(self, inputs, outputs, grads):
        return (grads[0] * sigmoid(-_float_t(inputs[0])),)


class _PRelu(Op):
    format_rule = "elemwise"  # how a tensor format label passes (megengine.core.format)
    # numpy's float16 loops convert one element at a time: float16 in float32 (`Op`), x * w
    # rounded once (numpy's float16 values), the gradients too (w's summed in float32 from the
    # exact products). One thread, forward and backward of (512, 512) with a weight per column:
    # 7.6-9.9 ms before, 3.1 after (float32 2.2-3.0)
    half_in_float32 = True

    def forward(self, x, w):
        dtype = promote_types(x.dtype, w.dtype)
        if dtype.kind == "c":
            raise no_order("prelu", dtype)
        if dtype.metadata is not None:  # one quantized dtype: w * x of the values, in float32
            x, w, dtype = _dtype.float_value(x), _dtype.float_value(w), np.dtype(np.float32)
        x, w = x.astype(dtype, copy=False), w.astype(dtype, copy=False)
        self.x, self.w = x, w
        try:
            if _use_prelu_kernels(x, w):  # CUDA: one kernel (the array code launches three)
                return _prelu_kernel()(x, w)
            return xp_of(x).where(x > 0, x, x * w)
        except ValueError:
            raise BroadcastError(f"prelu: weight of shape {w.shape} does not broadcast to the "
                                 f"input of shape {x.shape}") from None

    def backward(self, g):
        xp = xp_of(g)
        needs = self.needs_input_grad
        if _use_prelu_kernels(self.x, self.w, g):
            # CUDA: both gradients' elements in one kernel (the array code launches six), then
            # the slope's sum over what it was broadcast along
            gx, gw = _prelu_grad_kernel()(g, self.x, self.w)
        else:
            pos = self.x > 0
            gx = xp.where(pos, g, g * self.w) if needs[0] else None
            # (the slope's: a select of x < 0, as upstream's: x = 0 or NaN adds nothing, not a
            # NaN or infinite g times 0)
            gw = xp.where(self.x < 0, g * self.x, 0) if needs[1] else None
        # x may have been broadcast against w (upstream's rule): reduce back to x's shape
        return (unbroadcast(gx, self.x.shape) if needs[0] else None,
                unbroadcast(gw, self.w.shape) if needs[1] else None)

    def grad_graph(self, inputs, outputs, grads):
        g = grads[0]
        x, w = inputs
        # a select, as the backward's: a NaN or inf g stays where x > 0 (0 * inf was NaN)
        gx = t_unbroadcast(masked_gradient_graph(g, self.x > 0, g * w), self.x.shape) \
            if self.needs_input_grad[0] else None
        gw = t_unbroadcast(masked_gradient_graph(g * x, self.x < 0), self.w.shape) \
            if self.needs_input_grad[1] else None
        return gx, gw


def relu(x):
    """Element-wise ``max(x, 0)``."""
    return apply(_Relu(), _tensor(x))


def leaky_relu(inp, negative_slope=0.01):
    """Element-wise ``x`` where positive, else ``negative_slope * x``."""
    try:
        slope = float(negative_slope)
    except (TypeError, ValueError):  # (upstream: RuntimeError, wrapping float()'s error)
        raise ArgumentTypeError(f"leaky_relu: negative_slope must be a number, got "
                                f"{negative_slope!r}") from None
    return apply(_LeakyRelu(slope), _tensor(inp))


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


def _use_prelu_kernels(*arrays):
    """CuPy arrays of one float dtype take PReLU's kernels, float16 too (autocast's: a select
    and a product rounded once, as the array code's float16 product)."""
    return use_fused_with_half(*arrays)


# PReLU's array code, its selections and products as written there
# (the products cast back to T: CuPy's half multiplies in float)
_prelu_kernel = fused_kernel("T x, T w", "T y", "y = x > (T)0 ? x : (T)(x * w)",
                             "megengine_prelu")
_prelu_grad_kernel = fused_kernel("T g, T x, T w", "T gx, T gw",
                                  "bool pos = x > (T)0; gx = pos ? g : (T)(g * w); "
                                  "gw = x < (T)0 ? (T)(g * x) : (T)0", "megengine_prelu_grad")


def prelu(x=None, y=None, **older_names):
    """Element-wise ``x`` where positive, else ``y * x`` (``y``, the slope, broadcasts).

    ``x`` and ``y`` are upstream 1.13's names; ``inp`` and ``weight``, those of earlier upstream
    releases, are accepted as keywords too. They arrive through ``**older_names`` rather than as
    keyword-only parameters so that a traced module records ``prelu(x, w)`` as upstream's does,
    without ``inp=None, weight=None``.
    """
    inp, weight = older_names.pop("inp", None), older_names.pop("weight", None)
    if older_names:
        raise TypeError(f"prelu() got an unexpected keyword argument {next(iter(older_names))!r}")
    x = _renamed("prelu", "x", x, "inp", inp)
    y = _renamed("prelu", "y", y, "weight", weight)
    x = _tensor(x)
    return apply(_PRelu(), x, _operand(y, x))


# Upstream's home for these is `megengine.functional.nn` (which re-exports them), and they keep
# reporting it: traced modules print `nn.<name>`, and dumped programs name ops by module path
# ("megengine.functional.nn:_Relu"), as they did before this file was split off from that one,
# so files dumped before and after the split read the same.
for _value in list(globals().values()):
    if getattr(_value, "__module__", None) == __name__:
        _value.__module__ = "megengine.functional.nn"
del _value
