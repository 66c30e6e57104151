"""Element-wise math functions (F.add, F.exp, F.clip, ...): thin wrappers over elemwise ops."""
import math

import numpy as np

from ..core import amp as _amp
from ..core._caller import public_argument, public_function
from ..core._trace_option import is_sym
from ..core.dispatch import FLOAT16, KERNEL_FLOATS, Op, _array, apply
from ..core.dtype import float_value, no_quantized_form
from ..core.fused import fused_kernel, use_fused_with_half
from ..core.dtype_rules import (_NARROW, complex_error, no_order, numpy_scalar_is_weak,
                                promote_types)
from ..core.ops import (BINARY, UNARY, ArgumentError, ArgumentTypeError, BroadcastError,
                        ShapeOnly, _Binary, cast, half_operands, masked_gradient,
                        masked_gradient_graph, raise_unbroadcastable, t_unbroadcast,
                        unbroadcast, xp_of)
from ..core.operators import QuantizedNumberError, _int_range, _quantized_scalar, _wider_int
from ..core.tensor import Tensor, _float_pow_operands, _operand
from . import _aten
from ._args import _as_float, _tensor  # (_tensor: also imported from here by the functional files)

__all__ = [
    "abs", "acos", "acosh", "add", "asin", "asinh", "atan", "atan2", "atanh", "ceil", "clip",
    "cos", "cosh", "div", "equal", "exp", "expm1", "floor", "floor_div", "greater",
    "greater_equal", "left_shift", "less", "less_equal", "log", "log1p", "logaddexp",
    "logical_and", "logical_not", "logical_or", "logical_xor", "maximum", "minimum", "mod", "mul",
    "neg", "not_equal", "pow", "right_shift", "round", "sin", "sinh", "sqrt", "square", "sub",
    "tan", "tanh", "trunc",
]


def _operands(x, y, values=False):
    """Two operands as Tensors; a Python scalar next to a tensor takes the operators' rules.
    ``values``: for a float function (div, pow, atan2), a quantized tensor next to a Python
    number gives its real values (a number next to a quantized tensor otherwise raises)."""
    try:
        if isinstance(x, Tensor):
            return x, _operand(y, x)
        if isinstance(y, Tensor):
            return _operand(x, y), y
        x = _tensor(x)  # (None raises: Tensor(None) is empty, F.maximum(None, 0.0) was empty)
        return x, _operand(y, x)
    except QuantizedNumberError:
        if not values:
            raise
        return _operands(*[t.astype(np.float32) if isinstance(t, Tensor) else t for t in (x, y)])


# ----- binary functions: the ops behind Tensor's operators -----

def _binary_fn(key, name, doc):
    op_cls = BINARY[key]

    values = getattr(op_cls, "quantized", None) == "values"  # a float function (see _Binary)

    def fn(x, y):
        x, y = _operands(x, y, values)
        return apply(op_cls(), x, y)

    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = doc
    return fn


add = _binary_fn("add", "add", "Element-wise ``x + y`` with broadcasting.")
sub = _binary_fn("sub", "sub", "Element-wise ``x - y`` with broadcasting.")
mul = _binary_fn("mul", "mul", "Element-wise ``x * y`` with broadcasting.")
div = _binary_fn("truediv", "div", "Element-wise true division ``x / y`` (integers give float32).")
floor_div = _binary_fn("floordiv", "floor_div", "Element-wise floor division ``x // y``.")
mod = _binary_fn("mod", "mod", "Element-wise remainder ``x % y`` (sign of the divisor, as Python).")


def pow(x, y):
    """Element-wise power ``x ** y``; integer operands give float32, as upstream."""
    x, y = _float_pow_operands(*_operands(x, y, values=True))
    return apply(BINARY["pow"](), x, y)


maximum = _binary_fn("maximum", "maximum", "Element-wise maximum of ``x`` and ``y`` (where they are "
                     "equal, ``x`` gets the gradient, as upstream).")
minimum = _binary_fn("minimum", "minimum", "Element-wise minimum of ``x`` and ``y`` (where they are "
                     "equal, ``x`` gets the gradient, as upstream).")
left_shift = _binary_fn("lshift", "left_shift", "Element-wise ``x << y`` on integers.")
right_shift = _binary_fn("rshift", "right_shift", "Element-wise arithmetic ``x >> y`` on integers.")
equal = _binary_fn("eq", "equal", "Element-wise ``x == y`` (bool).")
not_equal = _binary_fn("ne", "not_equal", "Element-wise ``x != y`` (bool).")
less = _binary_fn("lt", "less", "Element-wise ``x < y`` (bool).")
less_equal = _binary_fn("le", "less_equal", "Element-wise ``x <= y`` (bool).")
greater = _binary_fn("gt", "greater", "Element-wise ``x > y`` (bool).")
greater_equal = _binary_fn("ge", "greater_equal", "Element-wise ``x >= y`` (bool).")


def _float_operands(op, a, b):
    # atan2/logaddexp are float functions: integer operands compute in float32
    if a.dtype.kind != "f":
        if a.dtype.kind == "c":  # (casting would drop the imaginary part)
            raise complex_error(type(op).__name__.lower(), a.dtype)
        op.a = a = float_value(a)
        op.b = b = float_value(b)
    return a, b


class Atan2(_Binary):
    autocast = "high"  # megengine.amp.autocast: float32 (upstream's rule)
    quantized = "values"

    def compute(self, y, x):
        y, x = _float_operands(self, y, x)
        return xp_of(y).arctan2(y, x)

    def grads(self, g):
        y, x = self.a, self.b
        r = g / (x * x + y * y)
        return r * x, -r * y

    def grads_graph(self, y, x, out, g):
        r = g / (x * x + y * y)
        return r * x, -r * y


class LogAddExp(_Binary):
    autocast = "high"  # megengine.amp.autocast: float32 (upstream's rule)
    quantized = "values"

    def compute(self, a, b):
        a, b = _float_operands(self, a, b)
        self.out = xp_of(a).logaddexp(a, b)
        return self.out

    def grads(self, g):
        xp = xp_of(g)
        return g * xp.exp(self.a - self.out), g * xp.exp(self.b - self.out)

    def grads_graph(self, a, b, out, g):
        return g * exp(a - out), g * exp(b - out)


def atan2(y, x):
    """Element-wise angle of the point ``(x, y)``: arctan(y / x) in the right quadrant."""
    y, x = _operands(y, x, values=True)
    return apply(Atan2(), y, x)


def logaddexp(x, y):
    """Element-wise ``log(exp(x) + exp(y))``, computed without overflow."""
    x, y = _operands(x, y, values=True)
    return apply(LogAddExp(), x, y)


class _Logical(Op):
    format_rule = "elemwise"  # how a tensor format label passes (megengine.core.format)
    fn = None

    def forward(self, a, b=None):
        xp = xp_of(a)
        if a.dtype.metadata is not None or (b is not None and b.dtype.metadata is not None):
            # (the truth of a stored integer is not its value's where there is a zero point)
            raise no_quantized_form(self.fn, a.dtype if a.dtype.metadata is not None else b.dtype)
        if b is None:
            return getattr(xp, self.fn)(a)
        try:
            return getattr(xp, self.fn)(a, b)
        except ValueError as e:
            raise_unbroadcastable(type(self).__name__, (a, b), e)

    def backward(self, g):
        return (None,) * len(self.needs_input_grad)


# (module-level classes: a dumped program names its ops' classes, and a loader imports them)
class LogicalAnd(_Logical):
    fn = "logical_and"


class LogicalOr(_Logical):
    fn = "logical_or"


class LogicalXor(_Logical):
    fn = "logical_xor"


class LogicalNot(_Logical):
    fn = "logical_not"


def _logical(op_cls, doc, unary=False):
    if unary:
        def f(x):
            return apply(op_cls(), _tensor(x))
    else:
        def f(x, y):
            return apply(op_cls(), *_operands(x, y))

    f.__name__ = f.__qualname__ = op_cls.fn
    f.__doc__ = doc
    return f


logical_and = _logical(LogicalAnd, "Element-wise logical AND (bool).")
logical_or = _logical(LogicalOr, "Element-wise logical OR (bool).")
logical_xor = _logical(LogicalXor, "Element-wise logical XOR (bool).")
logical_not = _logical(LogicalNot, "Element-wise logical NOT (bool).", unary=True)


# ----- unary functions -----

class _Unary(Op):
    """``y = f(x)`` element-wise; subclasses give ``compute(xp, x)`` and ``grad(xp, x, y, g)``.

    Float functions (``to_float``) compute integer inputs in float32, as upstream does, and
    complex inputs in complex: each grad rule is ``g * f'(x)`` of a complex-differentiable
    ``f`` (``holomorphic``, see `Op`), which gives the complex gradients too.

    float16 on the CPU (numpy arrays of ``_aten.HALF_MIN`` values or more) computes in float32,
    forward and backward, each result rounded to float16 once (`Op.half_in_float32`), as
    torch's CPU kernels compute float16: numpy's float16 loops convert one element at a time,
    and a function of several passes rounded after each. Measured with one thread, forward and
    backward of (512, 512): sigmoid 23.4 ms against 0.35 in float32, tanh 10.6 against 0.26,
    leaky_relu 19.6 against 0.21, silu 37.6 against 0.35.
    """
    format_rule = "elemwise"  # how a tensor format label passes (megengine.core.format)

    to_float = True
    holomorphic = True
    backward_reads = ("x",)  # what ``grad`` reads of x and y (see `Op`), as torch's saves
    half_in_float32 = True  # (above)

    def forward(self, x):
        return self._forward(self.input(x))

    def _forward(self, x):
        """``f(x)`` in ``x``'s dtype, keeping what backward reads."""
        self.x = x
        y = self.compute(xp_of(x), x)
        if isinstance(y, np.generic):  # numpy's ufuncs give 0-d input a scalar: kept as an
            y = _array(y)  # array, as the op's output and gradients
        self.y = y
        if True in self.needs_input_grad:  # recorded: the other one only as its shape
            if "x" not in self.backward_reads:  # (exp, tanh, sqrt: x need not stay alive)
                self.x = ShapeOnly(x)
            if "y" not in self.backward_reads:
                self.y = ShapeOnly(y)
        return y

    def input(self, x):
        """``x`` as this function computes it: a float function (``to_float``) computes integers
        in float32 and a quantized input's real values (`_as_float`); complex input raises
        unless the function is ``holomorphic`` (a float cast would drop the imaginary part)."""
        if self.to_float:
            return _as_float(x, self)
        if x.dtype.kind == "c" and not self.holomorphic:  # (rounding)
            raise complex_error(type(self).__name__.lower(), x.dtype)
        if x.dtype.metadata is not None:  # square, floor, round of the stored integers
            raise no_quantized_form(type(self).__name__.lower(), x.dtype)
        return x

    def backward(self, g):
        return self._backward(g)

    # CUDA: ``grad`` in one kernel (`_unary`'s ``grad_body``), where its array code launches a
    # kernel per operation (tanh's ``g * (1 - y * y)``: three)
    grad_kernel = None

    def _backward(self, g):
        """The input's gradient in the dtype `_forward` computed in."""
        kernel = self.grad_kernel
        if kernel is not None:
            operand = self.y if self.backward_reads == ("y",) else self.x
            if use_fused_with_half(operand, g):
                # (float16 too: computed in float32 and rounded once, as torch's CUDA kernels
                # and the CPU's float16 (`Op.half_in_float32`); the float16 array code rounded
                # after each operation)
                return kernel()(g, operand)
        return self.grad(xp_of(g), self.x, self.y, g)

    def grad_graph(self, inputs, outputs, grads):
        # the grad rules above use only x, y, g and xp functions: given Tensors and the
        # namespace of differentiable functions below, the same rule records its own graph
        x = inputs[0] if inputs[0].dtype.kind == "f" else inputs[0].astype(np.float32)
        return (self.grad(_TENSOR_MATH, x, outputs[0], grads[0]),)


def _unary(name, compute, grad, to_float=True, holomorphic=True, reads=("x",), grad_body=None):
    """A `_Unary` class; ``grad_body``: ``grad`` as the C++ body of a CUDA kernel of ``g`` and
    the operand it reads (``reads``), giving ``gx``, with the array code's operations in its
    order (tests/functional/test_elemwise.py compiles each body against the array code)."""
    attrs = {"compute": staticmethod(compute), "grad": staticmethod(grad), "to_float": to_float,
             "holomorphic": holomorphic, "backward_reads": reads,
             "autocast": "high" if name in _AUTOCAST_HIGH else None}
    if grad_body is not None:
        attrs["grad_kernel"] = staticmethod(fused_kernel(
            f"T g, T {reads[0]}", "T gx", grad_body, f"megengine_{name.lower()}_grad"))
    return type(name, (_Unary,), attrs)


# the functions upstream's autocast computes in its high precision dtype (float32; its atan is
# atan2(x, 1)): every other unary function keeps its input's dtype under autocast (tanh, floor,
# abs, ...)
_AUTOCAST_HIGH = {"Exp", "Expm1", "Log", "Log1p", "Sqrt", "Sin", "Cos", "Tan", "Asin", "Acos",
                  "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh"}


def _no_grad(xp, x, y, g):
    # piecewise constant: no gradient (None, as upstream's), not zeros, so that an optimizer's
    # weight decay and momentum skip a parameter reached only through it, as upstream's do
    return None


def _keep_ints(f):
    # rounding an integer is the identity; numpy would hand some of them back as floats
    return lambda xp, x: x.copy() if x.dtype.kind in "iub" else f(xp, x)


def _round_half_away(xp, x):
    # upstream rounds halves away from zero (C's round), not to even like numpy/torch
    t = xp.trunc(x)
    return xp.where(xp.abs(x - t) >= 0.5, t + xp.sign(x), t)


def _on_aten(name, family, min_values):
    """The array function ``xp.<name>`` of one engine array, taking ATen's kernel instead for
    float32/float64 numpy arrays from ``min_values[dtype]`` values (while ``family`` runs on
    ATen: `_aten.use_aten`), into a numpy-allocated output."""
    def compute(xp, x):
        if type(x) is np.ndarray and x.dtype in KERNEL_FLOATS \
                and x.size >= min_values[x.dtype] and _aten.use_aten(x, family):
            out = np.empty(x.shape, x.dtype)
            _aten.op(name)(_aten.view(x), out=_aten.view(out))
            return out
        return getattr(xp, name)(x)

    compute.__name__ = compute.__qualname__ = f"{name}_array"
    compute.__doc__ = f"``{name}`` of engine array ``x``, on ATen where that pays."
    return compute


# numpy's float32 exp and log take longer than ATen's vectorised ones from a few 10K values
# (float64 from a few thousand): from `EXP_LOG_ATEN_MIN` values float32/float64 numpy arrays
# take ATen's ("exp_log", `_aten.use_aten`). Measured with one thread, CPU time of the calling
# thread (the machine shared), numpy against ATen, output allocated by numpy either way:
# float32 4096 values 7.1 us against 8.1 (exp) and 8.6 against 11.2 (log), 16384 24.6 against
# 23.6 and 33.8 against 36.7, 65536 92 against 85 and 143 against 107, 262144 560 against 386
# and 632 against 411, 1M 3.3 ms against 1.3 and 3.8 against 1.7; float64 1024 6.4 against
# 6.3 and 5.7 against 7.3, 4096 28 against 23 and 41 against 22, 65536 464 against 180 and
# 355 against 303. The values are torch's: within an ulp or so of numpy's (the backward,
# ``g * y`` and ``g / x``, stays numpy's). CuPy arrays keep CuPy's kernels. bench_ops.py
# ``--case exp --case log --size medium`` ((512, 1024) float32), megengine / torch, before and
# after, alternated twice (the machine shared): exp forward 1.66-1.97x -> 1.03-1.04x, forward +
# backward 1.41-1.71x -> 0.87-0.98x; log (once) 1.7-4.4x -> 1.04x and 1.56x -> 0.96x.
EXP_LOG_ATEN_MIN = {np.dtype(np.float32): 65536, np.dtype(np.float64): 4096}
exp_array = _on_aten("exp", "exp_log", EXP_LOG_ATEN_MIN)
log_array = _on_aten("log", "exp_log", EXP_LOG_ATEN_MIN)

Exp = _unary("Exp", exp_array, lambda xp, x, y, g: g * y, reads=("y",))
Expm1 = _unary("Expm1", lambda xp, x: xp.expm1(x), lambda xp, x, y, g: g * (y + 1),
               reads=("y",))
Log = _unary("Log", log_array, lambda xp, x, y, g: g / x)
# numpy's float32 log1p is not vectorised (float64's takes 2.6x ATen's time at 64K values):
# from `LOG1P_ATEN_MIN` values float32/float64 numpy arrays take ATen's ("log1p",
# `_aten.use_aten`), into a numpy-allocated output. Measured with one thread, numpy against
# ATen: float32 1024 values 9.4 us against 4.8, 8192 81 against 17, 64K 849 against 124, 512K
# 8-30 ms against 1.0-1.6; float64 1024 8.3 against 7.7, 64K 857 against 333. (tanh is
# slower on ATen in float32: it stays numpy's.) Both are within an ulp or so of the exact
# value; ATen's are torch's.
LOG1P_ATEN_MIN = 1024
def any_nan_array(a):
    """Whether a numpy array of one or more values holds a NaN: its min, a fast reduction NaN
    propagates through; float16's on ATen, as numpy's float16 min converts one element at a
    time ((512, 512): 1.8 ms against 0.05; a float16 gelu's forward and backward took 2.8-3.1
    ms for float32's 0.7-0.9, now 0.95). The ufunc's own reduce, not ``np.min``: its Python
    wrapper and ``np.isnan`` of the numpy scalar cost more than the pass itself (64K values,
    one thread, 2 shared cores: 22 us a call against 9; (2, 4, 8, 8): 15 against 3.6)."""
    if a.dtype is FLOAT16 and _aten.use_aten(a, "half"):
        return bool(_aten.view(a).amin().isnan())
    return math.isnan(np.minimum.reduce(a, axis=None))


log1p_array = _on_aten("log1p", "log1p", dict.fromkeys(KERNEL_FLOATS, LOG1P_ATEN_MIN))

Log1p = _unary("Log1p", log1p_array, lambda xp, x, y, g: g / (x + 1),
               grad_body="gx = g / (x + (T)1)")
Sqrt = _unary("Sqrt", lambda xp, x: xp.sqrt(x), lambda xp, x, y, g: g / (2 * y),
              reads=("y",), grad_body="gx = g / ((T)2 * y)")
Square = _unary("Square", lambda xp, x: x * x, lambda xp, x, y, g: 2 * g * x, to_float=False,
                grad_body="gx = (T)2 * g * x")
Sin = _unary("Sin", lambda xp, x: xp.sin(x), lambda xp, x, y, g: g * xp.cos(x),
             grad_body="gx = g * cos(x)")
Cos = _unary("Cos", lambda xp, x: xp.cos(x), lambda xp, x, y, g: -g * xp.sin(x),
             grad_body="gx = -g * sin(x)")
Tan = _unary("Tan", lambda xp, x: xp.tan(x), lambda xp, x, y, g: g * (1 + y * y),
             reads=("y",), grad_body="gx = g * ((T)1 + y * y)")
Asin = _unary("Asin", lambda xp, x: xp.arcsin(x), lambda xp, x, y, g: g / xp.sqrt(1 - x * x),
              grad_body="gx = g / sqrt((T)1 - x * x)")
Acos = _unary("Acos", lambda xp, x: xp.arccos(x), lambda xp, x, y, g: -g / xp.sqrt(1 - x * x),
              grad_body="gx = -g / sqrt((T)1 - x * x)")
Atan = _unary("Atan", lambda xp, x: xp.arctan(x), lambda xp, x, y, g: g / (1 + x * x),
              grad_body="gx = g / ((T)1 + x * x)")
Sinh = _unary("Sinh", lambda xp, x: xp.sinh(x), lambda xp, x, y, g: g * xp.cosh(x),
              grad_body="gx = g * cosh(x)")
Cosh = _unary("Cosh", lambda xp, x: xp.cosh(x), lambda xp, x, y, g: g * xp.sinh(x),
              grad_body="gx = g * sinh(x)")
Tanh = _unary("Tanh", lambda xp, x: xp.tanh(x), lambda xp, x, y, g: g * (1 - y * y),
              reads=("y",), grad_body="gx = g * ((T)1 - y * y)")
Asinh = _unary("Asinh", lambda xp, x: xp.arcsinh(x), lambda xp, x, y, g: g / xp.sqrt(x * x + 1),
               grad_body="gx = g / sqrt(x * x + (T)1)")
# sqrt(x - 1) * sqrt(x + 1), not sqrt(x * x - 1): equal for real x, but only the former is
# acosh's derivative on the complex plane (the latter's branch cut flips its sign off the axis)
Acosh = _unary("Acosh", lambda xp, x: xp.arccosh(x),
               lambda xp, x, y, g: g / (xp.sqrt(x - 1) * xp.sqrt(x + 1)),
               grad_body="gx = g / (sqrt(x - (T)1) * sqrt(x + (T)1))")
Atanh = _unary("Atanh", lambda xp, x: xp.arctanh(x), lambda xp, x, y, g: g / (1 - x * x),
               grad_body="gx = g / ((T)1 - x * x)")
Floor = _unary("Floor", _keep_ints(lambda xp, x: xp.floor(x)), _no_grad, to_float=False,
               holomorphic=False, reads=())
Ceil = _unary("Ceil", _keep_ints(lambda xp, x: xp.ceil(x)), _no_grad, to_float=False,
              holomorphic=False, reads=())
Trunc = _unary("Trunc", _keep_ints(lambda xp, x: xp.trunc(x)), _no_grad, to_float=False,
               holomorphic=False, reads=())
Round = _unary("Round", _keep_ints(_round_half_away), _no_grad, to_float=False,
               holomorphic=False, reads=())


def _unary_fn(op_cls, name, doc):
    def fn(x):
        return apply(op_cls(), _tensor(x))

    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = doc
    return fn


neg = _unary_fn(UNARY["neg"], "neg", "Element-wise ``-x``.")
abs = _unary_fn(UNARY["abs"], "abs", "Element-wise absolute value (gradient sign(x), 0 at 0).")
exp = _unary_fn(Exp, "exp", "Element-wise ``e ** x``.")
expm1 = _unary_fn(Expm1, "expm1", "Element-wise ``exp(x) - 1``, accurate near 0.")
log = _unary_fn(Log, "log", "Element-wise natural logarithm.")
log1p = _unary_fn(Log1p, "log1p", "Element-wise ``log(1 + x)``, accurate near 0.")
sqrt = _unary_fn(Sqrt, "sqrt", "Element-wise square root.")
square = _unary_fn(Square, "square", "Element-wise ``x * x``.")
sin = _unary_fn(Sin, "sin", "Element-wise sine.")
cos = _unary_fn(Cos, "cos", "Element-wise cosine.")
tan = _unary_fn(Tan, "tan", "Element-wise tangent.")
asin = _unary_fn(Asin, "asin", "Element-wise inverse sine.")
acos = _unary_fn(Acos, "acos", "Element-wise inverse cosine.")
atan = _unary_fn(Atan, "atan", "Element-wise inverse tangent.")
sinh = _unary_fn(Sinh, "sinh", "Element-wise hyperbolic sine.")
cosh = _unary_fn(Cosh, "cosh", "Element-wise hyperbolic cosine.")
tanh = _unary_fn(Tanh, "tanh", "Element-wise hyperbolic tangent.")
asinh = _unary_fn(Asinh, "asinh", "Element-wise inverse hyperbolic sine.")
acosh = _unary_fn(Acosh, "acosh", "Element-wise inverse hyperbolic cosine.")
atanh = _unary_fn(Atanh, "atanh", "Element-wise inverse hyperbolic tangent.")
floor = _unary_fn(Floor, "floor", "Element-wise floor (no gradient).")
ceil = _unary_fn(Ceil, "ceil", "Element-wise ceiling (no gradient).")
trunc = _unary_fn(Trunc, "trunc", "Element-wise rounding toward zero (no gradient).")
round = _unary_fn(Round, "round", "Element-wise rounding, halves away from zero (no gradient).")


try:  # the ufunc under np.clip's Python wrapper (numpy >= 2; numpy 1.x keeps it in np.core)
    from numpy._core.umath import clip as _clip_ufunc
except ImportError:  # pragma: no cover (numpy 1.x)
    from numpy.core.umath import clip as _clip_ufunc


def _clip_keeping_nan(xp, x, lower, upper):
    """``xp.clip`` of float ``x`` by numbers, NaN kept as numpy and torch keep it: CuPy's clip
    kernel tests ``lower > upper`` first and gives ``upper`` there, NaN included (and ignores a
    NaN bound), so those bounds take ``minimum(maximum(x, lower), upper)`` on CuPy."""
    if type(x) is not np.ndarray and x.dtype.kind == "f" and not lower <= upper:
        return xp.minimum(xp.maximum(x, lower), upper)
    return xp.clip(x, lower, upper)


class Clip(Op):
    """``x`` limited to ``[lower, upper]``; gradient passes where x is inside (ends included)."""
    format_rule = "elemwise"  # how a tensor format label passes (megengine.core.format)
    # numpy's float16 loops convert one element at a time: float16 in float32 (`Op`), the same
    # values with the bounds rounded to float16 first (`forward`). One thread, forward and
    # backward of (512, 512): F.clip(x, -1, 1) 8.9-10.5 ms before, 0.33 after (float32 0.2)
    half_in_float32 = True

    def __init__(self, lower, upper):
        self.lower, self.upper = lower, upper

    def forward(self, x):
        half = self.half_dtypes is not None  # float16 x, here in float32
        if half:  # the bounds as numpy's float16 clip takes Python numbers: rounded to float16
            # first (so x == float16(0.1) is inside [0.1, 1])
            self.lower, self.upper = (None if b is None else float(np.float16(b))
                                      for b in (self.lower, self.upper))
            out = self._clip(x, True)
            if 0 in (self.lower, self.upper):  # a signed zero equal to a zero bound stays x, as
                # numpy's float16 loops keep it; numpy 2.0's float32 np.clip gives the bound's
                # zero (2.1's on, x's)
                out = xp_of(x).where((out == 0) & (x == 0), x, out)
            return out
        return self._clip(x, False)

    def _clip(self, x, half):
        if type(x) is np.ndarray and x.dtype.kind == "f" and self.lower is not None \
                and self.upper is not None and not self.needs_input_grad[0]:
            # inference on a float numpy array: the clip ufunc itself. np.clip's Python wrapper
            # only adds the integer out-of-range bound handling (not needed for floats) and
            # costs ~2 us a call, 3x the ufunc on a small map (a ReLU6 per layer at batch 1)
            return _clip_ufunc(x, self.lower, self.upper)
        if x.dtype.kind == "c":
            raise no_order("clip", x.dtype)
        xp = xp_of(x)
        if self.needs_input_grad[0]:
            inside = True
            if self.lower is not None:
                inside = x >= self.lower
            if self.upper is not None:
                inside = inside & (x <= self.upper)
            self.inside = inside
        if half:  # one clip pass, infinite bounds for None: float32 maximum and minimum take
            # the CPU instruction's choice of two signed zeros (`forward` mends clip's)
            return _clip_keeping_nan(xp, x, -np.inf if self.lower is None else self.lower,
                                     np.inf if self.upper is None else self.upper)
        if self.lower is None:
            return xp.minimum(x, self.upper)
        if self.upper is None:
            return xp.maximum(x, self.lower)
        # lower > upper gives upper everywhere, like min(max(x, lower), upper). One clip pass:
        # numpy's is 2-7x faster than maximum then minimum (float32 (8, 144, 56, 56): 0.6 ms
        # against 2.7), with the same NaN propagation
        return _clip_keeping_nan(xp, x, self.lower, self.upper)

    def backward(self, g):
        return masked_gradient(g, self.inside)

    def grad_graph(self, inputs, outputs, grads):
        return (masked_gradient_graph(grads[0], self.inside),)


class ClipByTensors(Op):
    """``x`` limited to ``[lower, upper]``, three broadcast float16 operands (`_all_float16`):
    one op for what ``minimum(maximum(x, lower), upper)`` computes (upstream's three-input
    Elemwise CLIP), with that composition's values and gradients: x takes the gradient where
    ``lower <= x <= upper`` (ends included), ``lower`` where x is below it, ``upper`` where
    the result is ``upper`` (x above it, or ``lower > upper``); of ``lower == upper`` above x,
    ``lower`` (maximum's tie), where torch's clamp gives neither.

    float16 numpy arrays: the result is ATen's clamp of the float16 operands (a selection:
    exact, torch's bits), the masks of the gradients are found on float32 copies (numpy's
    float16 comparisons convert one element at a time), and the gradients are float16
    selections (`core.ops.masked_gradient`): exact, as in float32. One thread, (512, 512)
    bounds, forward and backward of all three, before (two ops, each converting its operands
    and its result) and after: 1.6-2.2 ms and 0.8-1.0 (float32 0.7-0.8); forward alone
    0.26-0.38 and 0.09 (float32 0.08-0.09).
    """
    format_rule = "elemwise"  # how a tensor format label passes (megengine.core.format)
    backward_reads = ()  # (the masks forward made)

    def forward(self, x, lower, upper):
        if not x.shape == lower.shape == upper.shape:
            try:
                np.broadcast_shapes(x.shape, lower.shape, upper.shape)
            except ValueError:
                raise BroadcastError(f"clip: shapes {x.shape} (x), {lower.shape} (lower) and "
                                     f"{upper.shape} (upper) do not broadcast") from None
        out = _clamp_on_aten(x, lower, upper)
        if any(self.needs_input_grad):
            self.shapes = x.shape, lower.shape, upper.shape
            if out is not None:  # (float16)
                x, lower, upper = (cast(a, np.float32) for a in (x, lower, upper))
            self.first = x >= lower  # where x passes maximum(x, lower), ties included
            self.kept = (x <= upper) & (lower <= upper)  # where that passes minimum(., upper)
        if out is None:
            xp = xp_of(x)
            out = xp.minimum(xp.maximum(x, lower), upper)
        return out

    def backward(self, g):
        (xs, ls, us), (nx, nl, nu) = self.shapes, self.needs_input_grad
        passed = masked_gradient(g, self.kept) if nx or nl else None
        return (unbroadcast(masked_gradient(passed, self.first), xs) if nx else None,
                unbroadcast(masked_gradient(passed, ~self.first), ls) if nl else None,
                unbroadcast(masked_gradient(g, ~self.kept), us) if nu else None)

    def grad_graph(self, inputs, outputs, grads):
        (xs, ls, us), (nx, nl, nu) = self.shapes, self.needs_input_grad
        g, first, kept = grads[0], self.first, self.kept
        passed = masked_gradient_graph(g, kept)
        return (t_unbroadcast(masked_gradient_graph(passed, first), xs) if nx else None,
                t_unbroadcast(masked_gradient_graph(passed, ~first), ls) if nl else None,
                t_unbroadcast(masked_gradient_graph(g, ~kept), us) if nu else None)


def _clamp_on_aten(x, lower, upper):
    """ATen's clamp of float16 numpy arrays (broadcast) from `_aten.HALF_MIN` values, into a
    numpy array; else None (numpy's float16 clip converts one element at a time: (512, 512)
    bounds, one thread, 4.0 ms against 0.08)."""
    if x.dtype is not FLOAT16 or not half_operands(x, lower, upper) \
            or not _aten.use_aten(x, "half"):
        return None
    out = np.empty(np.broadcast_shapes(x.shape, lower.shape, upper.shape), x.dtype)
    _aten.op("clamp")(_aten.view(x), _aten.view(lower), _aten.view(upper), out=_aten.view(out))
    return out


def _all_float16(x, lower, upper):
    """Whether Tensors ``x``, ``lower`` and ``upper`` are all float16 (`ClipByTensors`' case:
    float32 and float64 keep maximum then minimum, which the fused op did not beat: one thread,
    (512, 512) bounds, forward and backward 0.7-0.8 ms against 0.85-1.0)."""
    return x.dtype is FLOAT16 and lower.dtype is FLOAT16 and upper.dtype is FLOAT16


_PLAIN_BOUND = frozenset({int, float})  # bounds of these exact types need no conversion


_ARRAY_BOUND = (Tensor, np.ndarray, list, tuple)  # bounds that are operands (clip's tensor path)


def clip(x, lower=None, upper=None):
    """Limit each element of ``x`` to ``[lower, upper]``; either bound may be None (not both).

    Bounds are numbers, Tensors, numpy arrays or lists (broadcast to ``x``: a bound per
    element); a float bound on an integer tensor gives a float32 result,
    and a numpy scalar bound (``np.int16(3)``) promotes ``x`` as ``x + bound`` does.
    """
    if lower is None and upper is None:
        # (public_function: the error names F.clamp, 0.x's name, where the user called that)
        raise ArgumentError(f"{public_function() or 'clip'}: at least one of lower and upper "
                            "must be given, got both None")
    x = _tensor(x)
    if type(lower) in _PLAIN_BOUND and type(upper) in _PLAIN_BOUND and x._data.dtype.kind == "f":
        # the common call, F.clip(x, 0, 6) on a float tensor: the checks below would all pass
        return apply(Clip(lower, upper), x)
    if isinstance(lower, Tensor) and isinstance(upper, Tensor) and \
            _all_float16(x, lower, upper):
        return apply(ClipByTensors(), x, lower, upper)
    if isinstance(lower, _ARRAY_BOUND) or isinstance(upper, _ARRAY_BOUND) or is_sym(lower) or \
            is_sym(upper):  # (a bound from a dumpable trace's sizes: an operand, carried; a
        # numpy array or a list: an operand as in F.maximum(x, b), bounds per element, as
        # upstream's F.clip(x, np.array([1, 2, 3]), 4))
        out = x if lower is None else maximum(x, lower)
        return out if upper is None else minimum(out, upper)
    if x.dtype.metadata is not None:  # a quantized tensor: the bounds are values
        raise _quantized_scalar(lower if lower is not None else upper, x.dtype)
    bounds = []
    for b in (lower, upper):
        if b is not None and not isinstance(b, (int, float, np.number, np.bool_)):
            func, arg = public_argument(b)  # (F.normalize's eps is its lower)
            raise ArgumentTypeError(  # (upstream's RuntimeError too)
                f"{func or 'clip'}: {arg or 'a bound'} must be a number or a Tensor (or a "
                f"numpy array or list of numbers), got {type(b).__name__}")
        if isinstance(b, np.generic):
            # a numpy scalar is a typed operand, as in x + b (upstream's promotion): x takes
            # the dtype of x with Tensor(b)'s (which narrows float64 and int64 to 32 bits)
            if not numpy_scalar_is_weak(x.dtype, b.dtype):
                x = x.astype(promote_types(x.dtype, _NARROW.get(b.dtype, b.dtype)))
            b = b.item()
        bounds.append(b)  # (Python scalars are weak: the result keeps x's dtype)
    lower, upper = bounds
    if x.dtype.kind != "f" and any(isinstance(b, float) for b in bounds):
        x = x.astype(np.float32)
    elif x.dtype.kind == "b" and any(type(b) is int for b in bounds):
        x = x.astype(np.float32)  # upstream's promotion of a bool tensor and a Python int
    if x.dtype.kind in "iu":
        # an int bound past x's range on the side it limits limits nothing (as numpy's clip of
        # two bounds); one past the other side moves every value out of the range: x widens to
        # hold it, as upstream's promotion of x + bound does
        lo, hi = _int_range(x.dtype)
        beyond = lower if lower is not None and lower > hi else \
            upper if upper is not None and upper < lo else None
        if beyond is not None:
            x = x.astype(_wider_int(beyond, x.dtype))
            lo, hi = _int_range(x.dtype)
        lower = lo if lower is not None and lower < lo else lower
        upper = hi if upper is not None and upper > hi else upper
    return apply(Clip(lower, upper), x)


class _TENSOR_MATH:
    """The xp functions the `_Unary` grad rules use, as differentiable Tensor functions."""

    sin = staticmethod(sin)
    cos = staticmethod(cos)
    sqrt = staticmethod(sqrt)
    sinh = staticmethod(sinh)
    cosh = staticmethod(cosh)
    exp = staticmethod(exp)

    @staticmethod
    def zeros_like(t):
        return t * 0  # a zero gradient that stays in the graph (its own gradient is zero too)


# ----- error functions (upstream's ERF, ERFC, ERFINV, ERFCINV elemwise modes) -----
# numpy has no erf, so it is computed here on xp arrays in float64: Numerical Recipes' Chebyshev
# fit for erfc (fractional error < 1.2e-7 everywhere, so the tail keeps its relative precision)
# and the Taylor series near 0, where 1 - erfc would lose erf's relative precision.

_TWO_OVER_SQRT_PI = 2 / np.sqrt(np.pi)
_ERFC_COEFS = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806, 0.27886807,
               -1.13520398, 1.48851587, -0.82215223, 0.17087277)


def _erfc_nonneg(xp, z):
    t = 1 / (1 + 0.5 * z)
    poly = 0.0
    for c in reversed(_ERFC_COEFS[1:]):
        poly = c + t * poly
    return t * xp.exp(-z * z + _ERFC_COEFS[0] + t * poly)


def _erf_series(z, terms=12):
    # sum_n (-1)^n z^(2n+1) / (n! (2n+1)); 12 terms reach 1e-16 for |z| <= 0.5, 45 for |z| <= 2
    z2, term, total = z * z, z, z
    for n in range(1, terms):
        term = term * (-z2) / n
        total = total + term / (2 * n + 1)
    return _TWO_OVER_SQRT_PI * total


def _erfc_fraction(xp, a):
    """erfc(a) for a >= 2 to float64's precision: Laplace's continued fraction
    exp(-a^2) / sqrt(pi) / (a + (1/2) / (a + 1 / (a + (3/2) / ...))), 60 levels deep."""
    f = a
    for k in range(60, 0, -1):
        f = a + (k / 2) / f
    return xp.exp(-a * a) / np.sqrt(np.pi) / f


def _erf_parts(xp, x, precise):
    """(inner, near, tail, x): where |x| < a cut, erf(x) by the series (``near``), beyond it
    erfc(|x|) (``tail``), x in float64. Float32 inputs: a cut at 0.5, 12 terms and the Chebyshev
    erfc beyond (fractional error 1.2e-7); ``precise`` (float64 inputs): a cut at 2, 45 terms and
    the continued fraction beyond (about 1e-15 for erf, 3e-13 for erfc)."""
    cut, terms, erfc = (2.0, 45, _erfc_fraction) if precise else (0.5, 12, _erfc_nonneg)
    x = x.astype(np.float64)
    a = xp.abs(x)
    return a < cut, _erf_series(xp.clip(x, -cut, cut), terms), erfc(xp, xp.maximum(a, cut)), x


def _erf64(xp, x, precise=None):
    precise = x.dtype == np.float64 if precise is None else precise
    inner, near, tail, x = _erf_parts(xp, x, precise)
    return xp.where(inner, near, xp.sign(x) * (1 - tail))


def _erfc64(xp, x):
    inner, near, tail, x = _erf_parts(xp, x, x.dtype == np.float64)
    return xp.where(inner, 1 - near, xp.where(x > 0, tail, 2 - tail))


def _erfinv64(xp, x, precise=None):
    """Giles' single-precision erfinv polynomial, then two Newton steps on erf in float64 (the
    float64-precise erf for a float64 input, or where ``precise``)."""
    precise = x.dtype == np.float64 if precise is None else precise
    x = x.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = -xp.log((1 - x) * (1 + x))
        wc = w - 2.5
        central = 2.81022636e-08
        for c in (3.43273939e-07, -3.5233877e-06, -4.39150654e-06, 0.00021858087,
                  -0.00125372503, -0.00417768164, 0.246640727, 1.50140941):
            central = c + central * wc
        wt = xp.sqrt(w) - 3
        tail = -0.000200214257
        for c in (0.000100950558, 0.00134934322, -0.00367342844, 0.00573950773,
                  -0.0076224613, 0.00943887047, 1.00167406, 2.83297682):
            tail = c + tail * wt
        y = xp.where(w < 5, central, tail) * x
        finite = xp.abs(x) < 1
        ys = xp.where(finite, y, 0)
        for _ in range(2):
            ys = ys - (_erf64(xp, ys, precise) - x) / (_TWO_OVER_SQRT_PI * xp.exp(-ys * ys))
        ys = xp.where(finite, ys, 0)
        # erfinv(+-1) = +-inf; outside [-1, 1] it is NaN
        edge = xp.where(xp.abs(x) == 1, xp.sign(x) * np.inf, np.nan)
    return xp.where(finite, ys, edge)


def _cast_like(f):
    return lambda xp, x: f(xp, x).astype(x.dtype)


Erf = _unary("Erf", _cast_like(_erf64),
             lambda xp, x, y, g: g * _TWO_OVER_SQRT_PI * xp.exp(-x * x), holomorphic=False)
Erfc = _unary("Erfc", _cast_like(_erfc64),
              lambda xp, x, y, g: -g * _TWO_OVER_SQRT_PI * xp.exp(-x * x),
              holomorphic=False)
Erfinv = _unary("Erfinv", _cast_like(_erfinv64),
                lambda xp, x, y, g: g * (np.sqrt(np.pi) / 2) * xp.exp(y * y),
                holomorphic=False, reads=("y",))
Erfcinv = _unary("Erfcinv", _cast_like(lambda xp, x: _erfinv64(
    xp, 1 - x.astype(np.float64), x.dtype == np.float64)),
                 lambda xp, x, y, g: -g * (np.sqrt(np.pi) / 2) * xp.exp(y * y),
                 holomorphic=False, reads=("y",))

erf = _unary_fn(Erf, "erf", "Element-wise error function ``2/sqrt(pi) * int_0^x exp(-t^2) dt``.")
erfc = _unary_fn(Erfc, "erfc", "Element-wise complementary error function ``1 - erf(x)``.")
erfinv = _unary_fn(Erfinv, "erfinv", "Element-wise inverse error function (+-inf at +-1).")
erfcinv = _unary_fn(Erfcinv, "erfcinv", "Element-wise inverse of erfc, on (0, 2).")
__all__ += ["erf", "erfc", "erfinv", "erfcinv"]


# ----- Elemwise: upstream's elemwise op named by its mode -----

class _Mode(str):
    """``Elemwise.Mode``: its members are instances that compare equal to their names, as
    upstream's do."""

    __slots__ = ()

    def __repr__(self):
        return f"Elemwise.Mode.{str(self)}"


def _nn(name):
    def call(*args):
        from . import nn  # nn imports this module: resolved at call time

        return getattr(nn, name)(*args)
    return call


def _select(cond, value):
    """``value`` where ``cond``, else 0 (upstream's SWITCH_GT0 / COND_*_MOV: a select, so that
    an inf or NaN value where the condition fails gives 0, not the NaN of a product by 0)."""
    from .indexing import where  # (indexing imports this module: resolved at call time)

    return where(cond, _tensor(value), 0)


def _math(name):
    def call(*args):
        from . import math  # math imports this module: resolved at call time

        return getattr(math, name)(*args)
    return call


def _fuse_add(then):
    return lambda x, y: then(add(x, y))


def _in_input_dtype(compare):
    """A comparison mode of upstream's Elemwise op: 0 / 1 in its inputs' (promoted) dtype,
    as upstream's op and ``M.Elemwise("lt")`` give (``F.less`` and ``x < y`` give bool)."""
    def call(x, y):
        from ..core.tensor_utils import convert_inputs

        x, y = convert_inputs(x if isinstance(y, Tensor) else _tensor(x), y)
        return compare(x, y).astype(x.dtype)
    return call


# mode -> the function that computes it (each one differentiable through its ops)
_MODES = {
    "RELU": _nn("relu"), "ABS": abs, "ACOS": acos, "ASIN": asin, "ATAN2": atan2, "CEIL": ceil,
    "COS": cos, "EXP": exp, "EXPM1": expm1, "FLOOR": floor, "LOG": log, "LOG1P": log1p,
    "NEGATE": neg, "SIGMOID": _nn("sigmoid"), "SIN": sin, "TANH": tanh, "ADD": add,
    "FLOOR_DIV": floor_div, "MAX": maximum, "MIN": minimum, "MOD": mod, "MUL": mul, "POW": pow,
    "SUB": sub, "TRUE_DIV": div, "LOG_SUM_EXP": logaddexp, "LT": _in_input_dtype(less),
    "LEQ": _in_input_dtype(less_equal), "EQ": _in_input_dtype(equal),
    "NEQ": _in_input_dtype(not_equal), "CLIP": clip, "PRELU": _nn("prelu"), "SHL": left_shift,
    "SHR": right_shift, "ROUND": round,
    "ERF": erf, "ERFINV": erfinv, "ERFC": erfc, "ERFCINV": erfcinv, "H_SWISH": _nn("hswish"),
    "NOT": logical_not, "AND": logical_and, "OR": logical_or, "XOR": logical_xor,
    "SILU": _nn("silu"), "GELU": _nn("gelu"), "SINH": sinh, "COSH": cosh, "ASINH": asinh,
    "ACOSH": acosh, "ATANH": atanh, "TAN": tan, "SQRT": sqrt, "SQUARE": square,
    "SOFTPLUS": _nn("softplus"), "RELU6": _nn("relu6"), "HSIGMOID": _nn("hsigmoid"),
    "LOGSIGMOID": _nn("logsigmoid"),
    "FUSE_ADD_RELU": _fuse_add(_nn("relu")), "FUSE_ADD_SIGMOID": _fuse_add(_nn("sigmoid")),
    "FUSE_ADD_TANH": _fuse_add(tanh), "FUSE_ADD_H_SWISH": _fuse_add(_nn("hswish")),
    "FUSE_MUL_ADD3": lambda x, y, z: add(mul(x, y), z),
    "FUSE_MUL_ADD4": lambda a, b, c, d: add(mul(a, b), mul(c, d)),
    # (selects, as upstream's kernels: 0 where the condition fails, an inf or NaN value too)
    "SWITCH_GT0": lambda x, g: _select(greater(x, 0), g),
    "COND_LEQ_MOV": lambda a, b, c: _select(less_equal(a, b), c),
    "COND_LT_MOV": lambda a, b, c: _select(less(a, b), c),
    "SIGN": _math("sign"), "ISNAN": _math("isnan"), "ISINF": _math("isinf"),
    # upstream's kernel is this rational approximation of tanh, not tanh itself (one mode, which
    # autocast leaves in its input's dtype: its division is not cast)
    "FAST_TANH": _amp.not_covered(
        lambda x: div(mul(x, add(27, mul(x, x))), add(27, mul(9, mul(x, x))))),
    # gradient modes: (forward input or output, incoming gradient) -> input gradient
    "ABS_GRAD": lambda x, g: mul(_math("sign")(x), g),
    "SIGMOID_GRAD": lambda y, g: mul(mul(y, sub(1, y)), g),
    "TANH_GRAD": lambda y, g: mul(sub(1, mul(y, y)), g),
}


for _name in _MODES:  # Elemwise.Mode.ADD is Mode("ADD"): isinstance works and == its name
    setattr(_Mode, _name, _Mode(_name))


class Elemwise:
    """Upstream's element-wise op, named by ``mode`` (an ``Elemwise.Mode`` member or its name).

    ``Elemwise(mode="ADD")(x, y)`` computes ``F.add(x, y)``; two instances with one mode compare
    equal. Every mode runs through the same differentiable ops as the F functions.
    """

    Mode = _Mode

    def __init__(self, mode):
        name = str(mode).upper()
        if name not in _MODES:
            raise ValueError(f"Elemwise: unknown mode {mode!r}; supported modes are "
                             f"{sorted(_MODES)}")
        self.mode = getattr(Elemwise.Mode, name)

    def __eq__(self, other):
        return isinstance(other, Elemwise) and other.mode == self.mode

    def __hash__(self):
        return hash(("Elemwise", str(self.mode)))

    def __repr__(self):
        return f"Elemwise(mode={str(self.mode)!r})"

    def __call__(self, *inputs):
        return _MODES[self.mode](*inputs)


def _elwise(*args, mode):
    """Apply the elemwise ``mode`` to ``args`` (upstream's helper of the same name)."""
    return Elemwise(mode)(*args)


def _elemwise_multi_type(*args, mode, dtype=None):
    """Upstream's quantized element-wise op ("QADD", ... on quantized tensors); it lives in
    `megengine.functional.quantized` (imported here on use: that module imports this one)."""
    from .quantized import _elemwise_multi_type as quantized_elemwise

    return quantized_elemwise(*args, mode=mode, dtype=dtype)


# ----- complex numbers (upstream's F.complex, F.polar, F.real, F.imag) -----
# Gradients pass through complex values in PyTorch's convention (see core/dispatch.py,
# `_ComplexGrad`): for a real loss L and z = x + iy, dL/dz is dL/dx + i dL/dy.
# Upstream lists them in functional/tensor.py, whose __all__ exports them from here.

class _MakeComplex(Op):
    def forward(self, re, im):
        dtype = np.complex128 if np.float64 in (re.dtype, im.dtype) else np.complex64
        try:
            shape = np.broadcast_shapes(re.shape, im.shape)
        except ValueError as e:  # (numpy's words name neither the op nor the parts)
            raise_unbroadcastable("complex", (re, im), e)
        out = xp_of(re).empty(shape, dtype)
        out.real, out.imag = re, im
        self.shapes = re.shape, im.shape
        return out

    def backward_complex(self, g):
        # z = re + i im: dL/dre is the real part of dL/dz, dL/dim its imaginary part
        (na, nb), (sa, sb) = self.needs_input_grad, self.shapes
        return (unbroadcast(g.real, sa) if na else None,
                unbroadcast(g.imag, sb) if nb else None)


class _Part(Op):
    def __init__(self, part):
        self.part = part

    def forward(self, z):
        if z.dtype.kind != "c":  # (upstream: RuntimeError, "no fallback implementation")
            raise ArgumentTypeError(f"{self.part}: input must be complex, got dtype {z.dtype}")
        self.dtype = z.dtype
        return getattr(z, self.part).copy()

    def backward_complex(self, g):
        # real(z) = x has dL/dz = g (+ 0i); imag(z) = y has dL/dz = 0 + i g
        out = xp_of(g).zeros(g.shape, self.dtype)
        setattr(out, self.part, g)
        return out


def _float_operand(x, what):
    x = _tensor(x)
    if x.dtype.kind == "c":  # (a float cast would drop the imaginary part)
        raise TypeError(f"{what}: the parts must be real (float) tensors, got dtype {x.dtype}")
    if x.dtype.kind != "f":
        x = x.astype(np.float32)
    return x


def complex(real, imag):
    """A complex tensor (complex64 from float32 parts, complex128 when a part is float64) with
    the given real and imaginary parts; integer parts are taken as float32, complex ones raise.

    Gradients flow through it, in PyTorch's convention: ``real`` gets the real part and
    ``imag`` the imaginary part of the complex gradient (see `polar`).
    """
    re, im = _operands(_float_operand(real, "complex"), _float_operand(imag, "complex"))
    return apply(_MakeComplex(), re, im)


def polar(abs, angle):
    """The complex tensor ``abs * (cos(angle) + 1j * sin(angle))``.

    Gradients flow to ``abs`` and ``angle`` as in ``torch.polar`` (where ``abs >= 0``, torch's
    domain; below it these are the derivatives of the formula above): for a real loss ``L`` of the
    result, a complex gradient ``dL/dz = dL/dx + i dL/dy`` flows back through the ops that made
    ``z`` (the compatibility page's "Complex numbers" lists the ops that pass it; the others
    raise when a gradient has to pass through them).
    """
    magnitude, angle = _float_operand(abs, "polar"), _float_operand(angle, "polar")
    return complex(magnitude * cos(angle), magnitude * sin(angle))


def real(complex):
    """The real part of a complex tensor (float); its gradient flows back as a real complex
    gradient."""
    return apply(_Part("real"), _tensor(complex))


def imag(complex):
    """The imaginary part of a complex tensor (float); its gradient ``g`` flows back as
    ``1j * g``."""
    return apply(_Part("imag"), _tensor(complex))


# Upstream's elemwise module also holds these activations at module level (F.elemwise.relu, ...)
from .activation import hsigmoid, hswish, relu, relu6, sigmoid  # noqa: E402,F401
