"""The ops behind Tensor's operators and methods: elemwise arithmetic, shape, indexing, reductions.

Each op keeps its forward and backward side by side and works on raw arrays through the array
module of its inputs (numpy or CuPy), never importing a backend directly for computation.
"""
import math

import numpy as np

from . import dispatch
from ._caller import public_function
from .dispatch import FLOAT16 as _F16
from .dispatch import KERNEL_FLOATS, POOL_MIN, Op, xp_of
from .dtype import _zero_point, dtype_name, float_value, no_quantized_form, saturated, stored
from .dtype_rules import (ArgumentKindError, ArgumentTypeError, complex_error,  # noqa: F401
                          no_order)  # (ArgumentTypeError: its old home)
from .fused import fused_kernel, use_fused
from ._trace_option import as_int, dumpable, is_dim, is_int, sizes_of

__all__ = ["BINARY", "UNARY", "acc_dtype", "acc_sum", "div_count", "unbroadcast", "int_tuple",
           "normalize_index", "xp_of",
           "t_unbroadcast", "t_expand"]


CAST_MIN = 4096  # float16 <-> float32 conversions this large run on ATen (`cast`)


def cast(a, dtype):
    """``a.astype(dtype)``; float16 <-> float32 of `CAST_MIN` values or more on ATen's vectorised
    conversion (`functional._aten.half_cast`, where the measurements are), the same values
    (bools and integers to float16 too, by way of float32)."""
    if a.size >= CAST_MIN and (a.dtype is _F16 or dtype == _F16):
        if a.dtype.kind in "biu" and a.dtype.metadata is None and type(a) is np.ndarray:
            # bools and integers to float16 by way of float32, whose conversion numpy
            # vectorises: the same values (an integer float32 rounds is past float16's range,
            # where both give inf). (512, 512) bools: 1.6 ms before, 0.054 after; forward and
            # backward of (x > 0).astype(x.dtype) * x 4.0 ms before, 0.34 after (float32 0.24)
            a = a.astype(np.float32)
        out = (_aten or _load_aten()).half_cast(a, dtype)
        if out is not None:
            return out
    return a.astype(dtype)


def as_dtype(a, dtype):
    """``a`` in ``dtype``: ``a`` itself when it is, else `cast`'s new array."""
    return a if a.dtype == dtype else cast(a, dtype)


def half_operands(*arrays):
    """Whether a float16 op on ``arrays`` computes in float32, rounded once: numpy arrays, one
    of `functional._aten.HALF_MIN` values or more, where numpy's float16 loops, converting one
    element at a time, take 10-100x a float32 pass. CuPy arrays keep their own float16
    kernels. Callers test the float16 dtype first (an op opts in with `Op.half_in_float32`)."""
    for a in arrays:
        if type(a) is not np.ndarray:
            return False
    least = (_aten or _load_aten()).HALF_MIN
    for a in arrays:
        if a.size >= least:
            return True
    return False


def acc_dtype(dtype):
    """The dtype that sums of ``dtype`` add in, where it is not ``dtype`` itself: float32 for
    float16, as torch's and upstream's kernels add it (numpy adds float16 in float16, where a
    long sum along a strided axis, or a scan, stops growing at 2048); else None."""
    return np.float32 if dtype is _F16 else None


def acc_sum(a, axis=None, keepdims=False):
    """``a.sum(axis, keepdims=keepdims)``, float16 added up in float32 and rounded once."""
    if a.dtype is not _F16:  # (acc_dtype's test, inline: this runs in every backward)
        return a.sum(axis, keepdims=keepdims)
    if type(a) is not np.ndarray:  # CuPy converts as it adds: one kernel, the same float32 sums
        return a.sum(axis, keepdims=keepdims, dtype=np.float32).astype(_F16)
    # converted first (`cast`): numpy's float16 sum with dtype=float32 converts one value at a
    # time (one thread, a (394, 768) gradient over its rows: 556 us against 60)
    return cast(cast(a, np.float32).sum(axis, keepdims=keepdims), _F16)


def div_count(g, count):
    """``g / count`` (an array or a Tensor divided by a number of elements: a mean's gradient);
    float16 divides in float32 and rounds once, as torch: as a float16, a count above 65504 is
    inf, and every share of the gradient would be 0."""
    if g.dtype is _F16:
        return (g.astype(np.float32) / count).astype(_F16)
    return g / count


def unbroadcast(grad, shape):
    """Sum ``grad`` down to ``shape``: the gradient of broadcasting an input of that shape."""
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    axes = tuple(range(extra)) + tuple(
        i + extra for i, n in enumerate(shape) if n == 1 and grad.shape[i + extra] != 1
    )
    if axes:
        grad = acc_sum(grad, axes, keepdims=True)
    return grad.reshape(shape)


def _size_item(s):
    """One shape entry as an int; a one-size shape tensor of a dumpable trace gives its
    SymDim (``x.reshape(Tensor(x.shape)[0], -1)``)."""
    if hasattr(s, "_data"):
        sizes = sizes_of(s)
        if sizes is not None and sizes.size == 1:
            return sizes.ravel()[0]
    return int(s)


def all_ints(sizes):
    """Whether every item of ``sizes`` is a Python int (not a bool, a numpy int or a SymDim)."""
    for s in sizes:
        if type(s) is not int:
            return False
    return True


def int_tuple(shape, what):
    """A shape given as ints, a list/tuple or a Tensor, as a tuple of Python ints."""
    if type(shape) is tuple and all_ints(shape):  # (the usual call: already one)
        return shape
    if hasattr(shape, "_data"):
        sizes = sizes_of(shape)  # a shape tensor of a dumpable trace: its SymDims
        # (else Tensor.numpy: a trace notes this host read)
        shape = shape.numpy().tolist() if sizes is None else sizes.tolist()
    if is_int(shape):
        return (shape if is_dim(shape) else int(shape),)
    try:  # (a size from x.shape in a dumpable trace stays one: see core._trace_option)
        return tuple(s if type(s) is int or is_dim(s) else _size_item(_whole(s)) for s in shape)
    except (TypeError, ValueError):  # (also upstream's RuntimeError: pybind's "Unable to cast")
        raise ArgumentTypeError(f"{what}: a shape must be ints or a sequence of ints (a float "
                                f"only if it is a whole number), got {shape!r}") from None


def _whole(s):
    """A shape entry ``int()`` may take: a whole float (``2.0``, ``n / 2`` of an even n) is
    the int it holds, as upstream's shape conversion reads it; a fraction or a string raises
    TypeError (``int()`` would truncate 2.5 to 2 and parse "2")."""
    if isinstance(s, (float, np.floating)):
        if not float(s).is_integer():
            raise TypeError(s)
        return int(s)
    if isinstance(s, (str, bytes)):
        raise TypeError(s)
    return s


def _promote(a, b):
    a, b = a.dtype, b.dtype
    if a is b or (a == b and a.metadata is None and b.metadata is None):
        return a  # the common case, without a call into tensor.py (numpy's == ignores the
        # metadata quantized dtypes keep their scale in: promote_types compares those)
    from .tensor import promote_types

    return promote_types(a, b)


def refuse_bool_product(dtype, what):
    """Refuse a matrix product (a dot product, a contraction) whose operands are all bool
    (``dtype``: the dtype they meet in; a bool meeting an integer or a float is float32 and
    goes on). numpy would give the logical or of ands, F.dot the count; upstream's MatrixMul
    and torch's kernels refuse Bool, so a silent answer in one meaning would be a trap."""
    if dtype.kind == "b":
        raise TypeError(f"{public_function() or what}: the operands are bool, and a matrix "
                        "product of bools is not defined (as in upstream and torch); cast them "
                        "to an integer or float dtype first, such as x.astype('int32')")


def gemm_dtype(dtype, what="matmul"):
    """The dtype a matrix product of two ``dtype`` matrices computes in and gives: 8- and
    16-bit integers accumulate in int32 and give int32, as upstream's int8 MatrixMul (Int8 x
    Int8 -> Int32: [100, 100] @ [100, 100] is 20000 where int8 wraps to 32); others their own;
    bools are refused (`refuse_bool_product`, naming ``what``)."""
    refuse_bool_product(dtype, what)
    small = dtype.kind in "iu" and dtype.itemsize < 4 and dtype.metadata is None
    return np.dtype(np.int32) if small else dtype  # (quantized dtypes: their own rules)


class BroadcastError(ValueError, RuntimeError):
    """Shapes that do not broadcast. Upstream raises RuntimeError (its C++ graph's error);
    numpy code expects ValueError: this is both, so either ``except`` catches it."""


def raise_unbroadcastable(name, arrays, error):
    """Called while numpy's (CuPy's) ValueError ``error`` from op ``name`` on ``arrays`` is
    handled: a `BroadcastError` naming the public function the user called (``F.clip`` of its
    ``Minimum`` op; else the op: ``x + y``) and the shapes where they do not broadcast; else
    ``error`` again (CuPy's device errors are ValueErrors too)."""
    shapes = [a.shape for a in arrays]
    try:
        np.broadcast_shapes(*shapes)
    except ValueError:
        listed = ", ".join(map(str, shapes[:-1])) + f" and {shapes[-1]}"
        raise BroadcastError(f"{public_function() or name}: shapes {listed} do not broadcast "
                             f"({error})") from None
    raise error


class ShapeError(ValueError, RuntimeError):
    """Shapes an op cannot take (reshape to another element count, matmul's inner dims).
    Both ValueError (numpy's) and RuntimeError (upstream's C++ shape check), as BroadcastError."""


class ArgumentError(ValueError, AssertionError, RuntimeError):
    """An argument out of its range or set of values (a dropout probability, a pad mode, a
    negative size, an axis named twice, ...): a ValueError, which is what the mistake is, and
    what upstream raises for it, which depends on where it checks: AssertionError (its Python
    asserts), RuntimeError (its C++ ops' parameter checks, and pybind's "Unable to cast" for an
    unknown mode string), sometimes ValueError. A program catching any of them catches it."""


class ShapeOnly:
    """What an op keeps in place of an input array whose values its backward does not read
    (both operands of ``x + y``, the ``x`` of ``x * 0.5``): the shape its gradient takes. The
    array itself would stay alive until backward; torch's graph does not save these either."""

    __slots__ = ("shape", "dtype")

    def __init__(self, a):
        self.shape, self.dtype = a.shape, a.dtype


class _Binary(Op):
    """An elemwise op on two broadcast inputs; subclasses give ``compute`` and ``grads``."""
    format_rule = "elemwise"  # how a tensor format label passes (megengine.core.format)
    # How operands of one quantized dtype (core.dtype) compute; upstream runs an element-wise
    # mode on quantized operands of one scale on their stored integers, and casts the integer
    # inputs of its float modes to float32, which dequantizes. "values": a float function, on
    # the real values; "stored": the stored integers give the values' result exactly (maximum,
    # minimum keep the order); "sum": so do add and sub where the zero point is 0, saturated to
    # the dtype's range; None: refused, the stored integers' result is not the values' (q * q
    # has the scale squared), where computing on them would silently give wrong values
    quantized = None
    # The ATen op ("add", "sub", "mul") that computes it for float16 arrays (numpy's float16
    # loops are slow), and for two large float arrays of one shape on torch's pool while that
    # has several threads (`functional._aten.binary`)
    pooled = None
    # Subclasses that set `Op.half_in_float32` compute two float16 numpy operands in float32,
    # rounded once, forward and backward (numpy's float16 passes round each step of a gradient
    # of several). Maximum, minimum and division give numpy's float16 values (float32 holds the
    # 2 * 11 + 2 bits that make one rounding IEEE's float16 quotient), the others a value
    # within a float16 step of the exact one. (Add, sub and mul take ATen's float16 loops.)

    def forward(self, a, b):
        dtype = a.dtype
        if dtype is not b.dtype or dtype.metadata is not None:  # (else nothing to promote)
            dtype = _promote(a, b)
            if dtype.metadata is not None:
                return self._quantized(a, b, dtype)
            if a.dtype != dtype:
                a = a.astype(dtype)
            if b.dtype != dtype:
                b = b.astype(dtype)
        self.a, self.b = a, b
        out = None
        if self.pooled is not None and (a.size >= POOL_MIN or a.dtype is _F16):
            out = (_aten or _load_aten()).binary(self.pooled, a, b)
        if out is None:
            out = self._compute(a, b)
        reads = self.backward_reads
        if reads is not None and True in self.needs_input_grad:
            # recorded: keep only the operands backward reads (`Op.backward_reads`), else
            # their shapes (a ResNet-50's adds held 168 MB of 594 at batch 4 until backward)
            reads = reads if type(reads) is tuple else reads()
            a, b = self.a, self.b  # (those compute kept: TrueDiv's float32 copies of integers)
            kept_a = kept_b = False
            for r in reads:  # (identity: arrays have no truth value for `in`)
                if r is a:
                    kept_a = True
                if r is b:
                    kept_b = True
            if not kept_a:
                self.a = ShapeOnly(a)
            if not kept_b:
                self.b = ShapeOnly(b)
        return out

    def _compute(self, a, b):
        try:
            return self.compute(a, b)
        except ValueError as e:
            raise_unbroadcastable(type(self).__name__, (a, b), e)

    def _quantized(self, a, b, dtype):
        how = self.quantized
        if how == "values":
            return self.forward(float_value(a), float_value(b))
        if how == "stored":
            return self.forward(stored(a), stored(b)).view(dtype)
        if how == "sum" and not _zero_point(dtype):
            return saturated(self.forward(stored(a).astype(np.int64), stored(b)), dtype)
        raise no_quantized_form(_op_name(self), dtype)

    def backward(self, g):
        ga, gb = self.grads(g)
        na, nb = self.needs_input_grad
        return (unbroadcast(ga, self.a.shape) if na and ga is not None else None,
                unbroadcast(gb, self.b.shape) if nb and gb is not None else None)

    def grads(self, g):
        return None, None

    def grad_graph(self, inputs, outputs, grads):
        a, b = inputs
        ga, gb = self.grads_graph(a, b, outputs[0], grads[0])
        na, nb = self.needs_input_grad
        return (t_unbroadcast(ga, a.shape) if na and ga is not None else None,
                t_unbroadcast(gb, b.shape) if nb and gb is not None else None)

    def grads_graph(self, a, b, out, g):
        """``grads`` on Tensors, with differentiable ops (see `Op` grad_graph)."""
        return None, None


class Add(_Binary):
    holomorphic = True  # complex gradients: see Op
    quantized = "sum"
    pooled = "add"
    backward_reads = ()  # (shapes only)

    def compute(self, a, b):
        return a + b

    def grads(self, g):
        return g, g

    def grads_graph(self, a, b, out, g):
        return g, g


class Sub(_Binary):
    holomorphic = True  # complex gradients: see Op
    quantized = "sum"
    pooled = "sub"
    backward_reads = ()  # (shapes only)

    def compute(self, a, b):
        try:
            return a - b
        except TypeError:  # (numpy's or CuPy's refusal of bool - bool)
            if a.dtype.kind != "b" or b.dtype.kind != "b":
                raise
        # (a TypeError, and the RuntimeError upstream's C++ op raises)
        raise ArgumentTypeError("sub: bool tensors are not subtracted; use x ^ y "
                                "(F.logical_xor) for where they differ, or "
                                "x.astype('int32') - y.astype('int32')")

    def grads(self, g):
        return g, -g

    def grads_graph(self, a, b, out, g):
        return g, -g


def _product(a, b):
    """``a * b`` of a gradient and an operand: float16 on ATen, as `_Binary.forward`'s."""
    if a.dtype is _F16:
        out = (_aten or _load_aten()).binary("mul", a, b)
        if out is not None:
            return out
    return a * b


_HALF_ONE = np.uint16(0x3C00)  # the bits of float16 1.0


def masked_gradient(g, mask):
    """``g`` where the bool array ``mask`` holds and 0 elsewhere (broadcast together): the
    select of upstream's gradient kernels (ReLU's, maximum's and minimum's, clip's, max
    pooling's and reductions'), so that a NaN or infinite gradient where the mask is false gives
    0, not the NaN of a product by 0 (a loss scaler's overflow stays where it arose, as torch's
    and upstream's). CuPy selects (no host sync). numpy multiplies by the mask, a branch-free
    loop (float32 (512, 512) with a random mask: 89 us with the NaN check, np.where 1.2 ms), and
    selects only where the product's min shows a NaN; float16 multiplies on ATen (`_product`:
    numpy's float16 loop converts one element at a time), by a mask of float16 ones and zeros
    made from its bytes."""
    if type(g) is not np.ndarray:
        return xp_of(g).where(mask, g, g.dtype.type(0))
    mask = np.asarray(mask)
    with np.errstate(invalid="ignore"):  # (NaN * 0: replaced just below)
        if g.dtype is _F16:
            out = _product(g, (mask.view(np.uint8).astype(np.uint16) * _HALF_ONE).view(_F16))
        else:
            out = np.multiply(g, mask, dtype=g.dtype)
    if out.dtype.kind == "f" and out.size and np.isnan(out.min()):
        out = np.where(mask, g, g.dtype.type(0))
    return out


def finite_sum(a):
    """Whether array ``a`` holds no NaN or infinity, by one sum (a sum that overflows says no:
    the caller's NaN path then finds nothing to do); CuPy reads the sum back to the host."""
    with np.errstate(over="ignore", invalid="ignore"):  # (inf - inf: no numpy warning)
        total = a.sum()  # (on CuPy one kernel; math.isfinite reads the scalar back)
        return math.isfinite(abs(total) if a.dtype.kind == "c" else total)


def masked_gradient_graph(g, mask, other=0):
    """`masked_gradient` as recorded ops (the backward under an outer GradManager, ``g`` a
    Tensor, ``mask`` a bool array): the same select, whose derivative in ``g`` is the select
    again; ``other`` (0, or a Tensor: PReLU's ``g * w``) where ``mask`` is False."""
    from ..functional.tensor import where  # functional sits above core: load on use

    return where(_const(mask, g), g, other)


class Mul(_Binary):
    holomorphic = True  # complex gradients: see Op
    pooled = "mul"

    def compute(self, a, b):
        return a * b

    def grads(self, g):
        # only the gradients asked for: `x * 0.5` must not build g * x for the constant
        na, nb = self.needs_input_grad
        return _product(g, self.b) if na else None, _product(g, self.a) if nb else None

    def backward_reads(self):
        # as torch's mul: `y = x * w` with only w's gradient asked for reads x alone, so a
        # write into w's (pinned) memory after it changes no gradient
        na, nb = self.needs_input_grad
        return (self.b,) * na + (self.a,) * nb

    def grads_graph(self, a, b, out, g):
        return g * b, g * a


class TrueDiv(_Binary):
    autocast = "high"  # megengine.amp.autocast: float32 (upstream's rule)
    holomorphic = True  # complex gradients: see Op
    quantized = "values"
    # float16 in float32, rounded once (outside autocast, which divides float32): numpy's
    # float16 passes left the divisor's gradient up to 1.9 float16 steps off. One thread,
    # forward and backward of (512, 512): x / 3 3.1 ms before, 0.28 after (float32 0.24);
    # x / (x * x + 1) 7.1 before, 1.1 after (float32 0.5-0.7)
    # Backward keeps the float16 operands, not their float32 copies (`_keep_half_operands`).
    half_in_float32 = True

    def compute(self, a, b):
        if a.dtype.kind != "f" and a.dtype.kind != "c":
            self.a = a = a.astype(np.float32)
            self.b = b = b.astype(np.float32)
        if self.half_dtypes is not None:
            _keep_half_operands(self)
        return a / b

    def grads(self, g):
        # only the gradients asked for: `x / T` with a constant T must not compute -g*x/T**2
        # (a wasted array, and NaN warnings where x is infinite and g is 0, as after a mask)
        na, nb = self.needs_input_grad
        if self.half_dtypes is not None:
            return self._half_grads(g, na, nb)
        ga = g / self.b
        return ga if na else None, -ga * self.a / self.b if nb else None

    def _half_grads(self, g, na, nb):
        """`grads` after a float16 forward, which kept the float16 operands
        (`_keep_half_operands`): the same operations in float32, in the same order (the same
        bits), written into the fresh float32 copies of the operands where the shapes allow,
        so that backward allocates no more buffers than it did on float32 copies kept."""
        b = cast(self.b, np.float32)
        if not nb:
            return np.divide(g, b, out=b) if b.shape == g.shape else g / b, None
        ga = g / b
        gb = np.negative(ga)
        gb *= cast(self.a, np.float32)  # (gb has the output's shape: a broadcasts into it)
        gb /= b
        return ga if na else None, gb

    def backward_reads(self):
        return (self.b, self.a) if self.needs_input_grad[1] else (self.b,)  # (w /= 2: the 2)

    def grads_graph(self, a, b, out, g):
        ga = g / b
        return ga, -ga * a / b


class FloorDiv(_Binary):
    """``x // y``. Floats: the quotient as divided, rounded down (``floor(x / y)``), as
    upstream documents ("rounds the result of dividing") and its kernel computes: ``1.0 //
    0.1`` is 10 (the quotient rounds to 10.0) and ``inf // 2`` is inf, where numpy's and
    torch's floor division, which round the exact quotient down, give 9 and NaN (measured with
    upstream 1.13 by tests/fuzz/upstream_calls.py). float16 divides in float32, rounded
    once. Integers: Python's ``//``, as both."""
    backward_reads = ()  # (no gradient)
    half_in_float32 = True

    def compute(self, a, b):
        kind = a.dtype.kind
        if kind == "c":  # (numpy's error names ufuncs and casting rules)
            raise complex_error("floor_div", a.dtype)
        if kind == "f":
            q = a / b
            return xp_of(a).floor(q, out=q) if q.ndim else xp_of(a).floor(q)  # (0-d: a scalar)
        return a // b

    def grads(self, g):
        return None, None  # piecewise constant: zero almost everywhere, like upstream

    def grads_graph(self, a, b, out, g):
        return None, None


class Mod(_Binary):
    def compute(self, a, b):
        if a.dtype.kind == "c":
            raise complex_error("mod", a.dtype)
        return a % b

    def grads(self, g):
        # only the gradients asked for: `w % x` with a constant x reads neither operand
        return g, -g * xp_of(g).floor(self.a / self.b) if self.needs_input_grad[1] else None

    def backward_reads(self):
        return (self.a, self.b) if self.needs_input_grad[1] else ()  # (as torch's remainder)

    def grads_graph(self, a, b, out, g):
        return g, -g * (a // b)  # floor division: piecewise constant, no gradient of its own


# numpy's float power of a whole array by one exponent, where a ufunc gives the same bits:
# ``x ** 2`` in numpy's general power loop takes 3-4x the time of ``square`` (1.4-2x torch's
# ``x ** 2``), ``x ** 0.5`` 20x ``sqrt``. (``x ** 3`` has no such twin: ``x * x * x``, torch's,
# rounds differently in ~1 value in 4.)
_SAME_AS_POW = {2.0: np.square, 0.5: np.sqrt, -1.0: np.reciprocal}
# Other exponents of a float32/float64 numpy array from _ATEN_POW_MIN values: ATen's pow, whose
# bits are torch's (``x ** 3`` is torch's ``x * x * x``; numpy's general loop differs by 1 ulp
# in ~1 value in 4). One thread: 4096 values ** 3 11 us against numpy's 246 (numpy's loop is
# slow for integer exponents, 31.9 ms against 0.22 on 512K values: a tanh GELU's ``x ** 3``),
# ** 1.5 17 us against 36; 1024 values ** 3 35 us against 63.
_ATEN_POW_MIN = 1024


def _keep_half_operands(op):
    """Let ``op``, a binary op computing float16 in float32 (`Op.half_in_float32`), keep its
    float16 operands (`Op.half_inputs`) for backward instead of their float32 copies (twice the
    memory, held from forward to backward by each division or power of a float16 network).
    Backward converts them again, the same values bit for bit, and writes its products into
    those fresh copies, so that it allocates no more buffers than before. Measured with one
    thread, base (float32 copies kept) against this, in alternating processes on 2 shared
    cores: three layers of ``h = h @ w; h = h / (h ** 2 + 1) ** 1.5 / 2`` on (2048, 128)
    float16 activations hold 19.6 MiB in their recorded ops against 6.1, 1250-1320 page
    faults a step against 530-800, 28-62 ms a step against 26-48; a lone (512, 512) ``x / y``,
    forward and backward: 1504 faults and 5.0-13.2 ms a step against 992 and 5.7-8.0 with both
    gradients, 992 faults and 5.9-15.8 ms against none and 0.35-1.8 with x's alone; ``x ** y``
    2144 faults, 17.5-32.3 ms against 1248, 10.5-22.2 (held: the arrays the recorded ops
    keep, by ``nbytes``; faults: ``getrusage``'s minor faults). Which buffers page-fault is
    glibc's choice (it gives the top of its heap back past a threshold that follows the
    largest block freed): an earlier form of this change, which made three more fresh buffers
    in backward, measured a lone ``x / y`` slower (0.7-0.9 ms a step against 3)."""
    op.a, op.b = op.half_inputs


# The same on the GPU, where the exponent is a 0-d CuPy array whose value the host does not
# see without waiting for the device: one kernel picks per element what numpy's fast exponents
# give (CuPy's power is CUDA's pow: pow(-0.0, 0.5) is +0 and pow(-inf, 0.5) +inf where sqrt
# gives -0.0 and NaN, and pow(x, 2) may differ from x * x in the last bit)
_POW_KERNEL = fused_kernel(
    "T x, T e", "T y",
    "y = e == (T)2 ? x * x : e == (T)0.5 ? sqrt(x) : e == (T)-1 ? (T)1 / x : pow(x, e)",
    "megengine_pow")


def _power(a, b):
    """``a ** b`` of arrays, ``b`` 0-d where it is one exponent (see above)."""
    if use_fused(a, b) and b.ndim == 0:  # (CuPy arrays, one exponent)
        return _POW_KERNEL()(a, b)
    if (type(b) is np.ndarray or isinstance(b, np.generic)) and b.ndim == 0 \
            and a.dtype.char in "fd":  # (b - 1 of a 0-d array is a numpy scalar)
        same = _SAME_AS_POW.get(float(b))  # (float16: numpy's sqrt and pow differ)
        if same is not None:
            return same(a)
        if type(a) is np.ndarray and a.size >= _ATEN_POW_MIN:
            if _aten is None:
                _load_aten()
            if _aten.use_aten(a, "pow"):
                return _aten.array(_aten.op("pow")(_aten.view(a), float(b)))
    return a ** b


class Pow(_Binary):
    autocast = "high"  # megengine.amp.autocast: float32 (upstream's rule)
    quantized = "values"
    # float16 in float32, rounded once (outside autocast, which takes powers in float32):
    # numpy's float16 passes left x ** 3's gradient up to 3.3 float16 steps off. One thread,
    # forward and backward of (512, 512), before and after: x ** 2 7.5 and 0.56 ms, x ** 3
    # 11.6 and 0.61, x ** 1.5 8.3 and 1.1, x ** 0.5 8.4 and 0.5 (float32 0.2-1.1)
    # Backward keeps the float16 operands (`_keep_half_operands`), and the float32 power
    # only where the exponent's gradient is wanted (that gradient reads it).
    half_in_float32 = True

    def compute(self, a, b):
        if a.dtype.kind in "iu" and (b < 0).any():
            self.a = a = a.astype(np.float32)
            self.b = b = b.astype(np.float32)
        out = _power(a, b)
        if self.half_dtypes is None:
            self.out = out
        else:
            _keep_half_operands(self)
            self.out = out if any(self.needs_input_grad[1:]) else None
        return out

    def grads(self, g):
        xp = xp_of(g)
        a, b = self.a, self.b
        half = self.half_dtypes is not None
        if half:  # float16 operands kept (`_keep_half_operands`): float32 copies, ours
            a, b = cast(a, np.float32), cast(b, np.float32)
        ga = gb = None
        if self.needs_input_grad[0]:  # (b * a ** 1 is exactly 2 * a: no power to take)
            if type(b) is np.ndarray and b.ndim == 0 and b == 2:
                if half:  # (the second product into the first's buffer, the output's shape)
                    ga = g * b
                    ga *= a
                else:
                    ga = g * b * a
            elif half:  # the products below, in the power's fresh buffer (the output's shape)
                ga = _power(a, b - 1)
                np.multiply(b, ga, out=ga)
                np.multiply(g, ga, out=ga)
            else:
                ga = g * (b * _power(a, b - 1))  # (torch's order: its bits)
        if self.needs_input_grad[1]:
            # out * log(a), as torch's and upstream's: NaN for a negative base (a ** b has no
            # real derivative in b there), 0 where a == 0 and b >= 0 (torch's choice)
            zero = (a == 0) & (b >= 0)
            with np.errstate(divide="ignore", invalid="ignore"):
                gb = xp.where(zero, 0, g * (self.out * xp.log(xp.where(zero, 1, a))))
        return ga, gb

    def backward_complex(self, g):
        # torch's: g * conj(b * a ** (b - 1)) and g * conj(out * log(a)), the latter 0 where
        # a == 0 (the real rule's a > 0 means nothing for complex numbers)
        xp, a, b = xp_of(g), self.a, self.b
        na, nb = self.needs_input_grad
        ga = unbroadcast(g * (b * a ** (b - 1)).conj(), a.shape) if na else None
        gb = None
        if nb:
            nonzero = a != 0
            d = xp.where(nonzero, self.out * xp.log(xp.where(nonzero, a, 1)), 0)
            gb = unbroadcast(g * d.conj(), b.shape)
        return ga, gb

    def grads_graph(self, a, b, out, g):
        ga = gb = None
        if self.needs_input_grad[0]:
            ga = g * b * a ** (b - 1)
        if self.needs_input_grad[1]:
            from ..functional.elemwise import log  # functional sits above core: load on use

            zero = _const((self.a == 0) & (self.b >= 0), a).astype(out.dtype)
            gb = g * out * log(a + zero) * (1 - zero)  # as grads: 0 where a == 0 and b >= 0
        return ga, gb


# Ties in max/min follow upstream MegEngine, not torch: the first operand takes the whole
# gradient where the operands are equal (so F.clip with Tensor bounds passes the gradient at
# the bounds, and maximum(x, x) has gradient 1), and a reduction gives every element equal to
# the result the whole gradient (torch shares it out instead).

def _half_extreme(op, out, a, b, chooses_first):
    """``out``, the maximum or minimum of float16 ``a`` and ``b`` computed in float32
    (`Op.half_in_float32`), with numpy's float16 choice of two zeros (`_zero_ties_first`).
    For backward ``op`` keeps the float16 operands (`Op.half_inputs`) and, where a gradient is
    wanted, the mask of the first operand's, instead of the float32 copies: kept until
    backward, those grew the heap past what glibc trims at, so that every step page-faulted its
    fresh buffers anew (one thread, F.maximum(x, y) of (512, 512) forward and backward: 992
    faults and ~5 ms a step with the copies, none and 0.45 ms without; F.clip with Tensor
    bounds, two of these, 3.2 ms with them, 1.7-1.9 without)."""
    if any(op.needs_input_grad):
        op.first = chooses_first(a, b)
    op.a, op.b = op.half_inputs
    return _zero_ties_first(out, a, b)


def _zero_ties_first(out, a, b):
    """``out`` (a maximum or minimum of float16 values ``a`` and ``b`` computed in float32)
    with numpy's float16 choice where the operands are zeros of two signs: the first. numpy's
    float16 loops take the first of two equal operands, its float32 loops whichever the CPU's
    instruction does; equal values are otherwise the same bits, and NaNs propagate either way."""
    if (out == 0).any():  # (two zeros give a zero: one pass over the result, mostly all)
        zeros = (a == 0) & (b == 0)
        np.copyto(out, np.broadcast_to(a, out.shape), where=zeros)
    return out


class Maximum(_Binary):
    quantized = "stored"
    # float16 in float32 (`Op.half_in_float32`): numpy's float16 values, the gradients'
    # g * mask too. One thread, forward and backward of (512, 512) (a noisy machine):
    # F.minimum(x, x / 2) 10.9-15.7 ms before, 3.1-3.8 after; F.maximum(x, 0.0) 11.4-16.0
    # before, 0.5-2.7 after (float32 0.3-0.5; numpy's float16 comparison and product loops)
    half_in_float32 = True
    first = None  # float16 computed in float32: where the first operand takes the gradient

    def compute(self, a, b):
        if a.dtype.kind == "c":  # (numpy would order them by real part, then imaginary)
            raise no_order("maximum", a.dtype)
        if self.half_dtypes is not None:
            return _half_extreme(self, np.maximum(a, b), a, b, np.greater_equal)
        return xp_of(a).maximum(a, b)

    def grads(self, g):
        # the first operand on ties, the second where it is strictly larger: where a NaN
        # meets a number neither takes the gradient (the result is neither), as upstream's
        first = self.a >= self.b if self.first is None else self.first
        na, nb = self.needs_input_grad  # (F.clip's bound: a constant, no gradient to build)
        return (masked_gradient(g, first) if na else None,
                masked_gradient(g, self.b > self.a) if nb else None)

    def grads_graph(self, a, b, out, g):
        first = self.a >= self.b if self.first is None else self.first
        return masked_gradient_graph(g, first), masked_gradient_graph(g, self.b > self.a)


class Minimum(_Binary):
    quantized = "stored"
    half_in_float32 = True  # (as Maximum's)
    first = None

    def compute(self, a, b):
        if a.dtype.kind == "c":
            raise no_order("minimum", a.dtype)
        if self.half_dtypes is not None:
            return _half_extreme(self, np.minimum(a, b), a, b, np.less_equal)
        return xp_of(a).minimum(a, b)

    def grads(self, g):  # (ties and NaN as Maximum's)
        first = self.a <= self.b if self.first is None else self.first
        na, nb = self.needs_input_grad  # (F.clip's bound: a constant, no gradient to build)
        return (masked_gradient(g, first) if na else None,
                masked_gradient(g, self.b < self.a) if nb else None)

    def grads_graph(self, a, b, out, g):
        first = self.a <= self.b if self.first is None else self.first
        return masked_gradient_graph(g, first), masked_gradient_graph(g, self.b < self.a)


class MatMul(Op):
    """numpy.matmul semantics: 1-D operands are promoted, batch dims broadcast."""
    autocast = "low"  # `a @ b` under megengine.amp.autocast: float16, as F.matmul
    holomorphic = True  # complex gradients: see Op

    def forward(self, a, b):
        dtype = _promote(a, b)
        if dtype.metadata is not None:  # `q @ q`: numpy would multiply the stored integers
            raise TypeError(f"matmul: the operands are quantized ({dtype_name(dtype)}); use "
                            "F.matmul(a, b), which accumulates their integers exactly (qint32), "
                            "as upstream's MatrixMul, or compute on the values "
                            "(a.astype('float32') @ b.astype('float32'))")
        if a.ndim > 1 or b.ndim > 1:  # (two vectors: a dot product, which keeps int8 upstream)
            dtype = gemm_dtype(dtype)
        else:
            refuse_bool_product(dtype, "matmul")
        a, b = a.astype(dtype, copy=False), b.astype(dtype, copy=False)
        if a.ndim == 0 or b.ndim == 0:
            # (an ArgumentError: upstream asserts)
            raise ArgumentError("matmul: operands must be at least 1-D; use * for scalars")
        if a.shape[-1] != b.shape[-2 if b.ndim > 1 else 0]:
            raise ShapeError(  # (naming 0.x's F.matrix_mul where the user called that)
                f"{public_function() or 'matmul'}: shapes {a.shape} and {b.shape} do not match: "
                "the last dim of the first must equal the second-to-last dim of the second"
            )
        self.a, self.b, self.a_shape = a, b, None
        if a.ndim > 2 and b.ndim == 2:
            # (..., n, k) @ (k, m) as one (rows, k) @ (k, m) gemm, forward and backward: numpy's
            # matmul runs one gemm per leading index, and the weight's gradient became a batch of
            # products summed afterwards (benchmarks/bench_transformer.py's attention
            # projections). A non-contiguous ``a`` is copied once here; backward reuses the copy.
            self.a = a.reshape(math.prod(a.shape[:-1]), a.shape[-1])
            self.a_shape = a.shape
            return matmul(self.a, b).reshape(a.shape[:-1] + b.shape[1:])
        try:
            return matmul(a, b)
        except ValueError:  # (numpy's words, "remapped shapes", named neither op nor dims)
            if a.ndim > 2 and b.ndim > 2:
                raise ShapeError(
                    f"matmul: shapes {a.shape} and {b.shape} do not match: their batch dims "
                    f"{a.shape[:-2]} and {b.shape[:-2]} do not broadcast") from None
            raise

    def backward(self, g):
        xp = xp_of(g)
        a, b = self.a, self.b
        if self.a_shape is not None:  # forward's one 2-d gemm
            g = g.reshape(a.shape[0], b.shape[1])
            ga = grad_matmul(g, b.T).reshape(self.a_shape) if self.needs_input_grad[0] else None
            gb = grad_matmul(a.T, g) if self.needs_input_grad[1] else None
            return ga, gb
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        # put back the dims numpy.matmul dropped for 1-D operands: g is then (..., n, m)
        if a.ndim == 1:
            g = g[..., None, :] if b.ndim > 1 else g[..., None]
        if b.ndim == 1:
            g = g[..., None]
        ga = gb = None
        if self.needs_input_grad[0]:
            ga = unbroadcast(grad_matmul(g, xp.swapaxes(b2, -1, -2)), a2.shape).reshape(a.shape)
        if self.needs_input_grad[1]:
            gb = unbroadcast(grad_matmul(xp.swapaxes(a2, -1, -2), g), b2.shape).reshape(b.shape)
        return ga, gb

    def backward_reads(self):
        # as torch's mm: a's gradient reads b, b's reads a (`x @ w` with only w's gradient
        # asked for reads x alone)
        na, nb = self.needs_input_grad
        return (self.b,) * na + (self.a,) * nb

    def grad_graph(self, inputs, outputs, grads):
        a, b = inputs
        g = grads[0]
        a2 = a.reshape((1,) + a.shape) if a.ndim == 1 else a
        b2 = b.reshape(b.shape + (1,)) if b.ndim == 1 else b
        if a.ndim == 1:
            g = g.reshape(g.shape[:-1] + (1, g.shape[-1])) if b.ndim > 1 else g.reshape(g.shape + (1,))
        if b.ndim == 1:
            g = g.reshape(g.shape + (1,))
        ga = gb = None
        if self.needs_input_grad[0]:
            ga = t_unbroadcast(g @ _swap_last(b2), a2.shape).reshape(a.shape)
        if self.needs_input_grad[1]:
            gb = t_unbroadcast(_swap_last(a2) @ g, b2.shape).reshape(b.shape)
        return ga, gb


class _NoGradBinary(_Binary):
    fn = None

    def forward(self, a, b):
        # bit operations are defined on integers (and/or/xor also on bools, a shift on an
        # integer with a bool); say so, naming the operands' own dtypes, instead of numpy's
        # "ufunc ... could not be safely coerced" (the op fuzzer's shift of floats)
        shift = self.fn.endswith("shift")
        if a.dtype.kind not in "iub" or b.dtype.kind not in "iub" or (
                shift and a.dtype.kind == b.dtype.kind == "b"):
            what = "integers" if shift else "integers or bools"
            raise TypeError(f"{self.fn}: operands must be {what}, got {a.dtype} and {b.dtype}; "
                            f"cast them with .astype('int32') first")
        if a.dtype != b.dtype and a.dtype.metadata is None and b.dtype.metadata is None:
            # a bool and an integer meet in the integer (upstream refuses mixed operands here;
            # its float32 for arithmetic on them would refuse them with a misleading dtype)
            dtype = np.promote_types(a.dtype, b.dtype)
            a, b = a.astype(dtype, copy=False), b.astype(dtype, copy=False)
        return super().forward(a, b)

    def compute(self, a, b):
        return getattr(xp_of(a), self.fn)(a, b)


def _no_grad_binary(name, fn):
    return type(name, (_NoGradBinary,), {"fn": fn})


class _Compare(Op):
    format_rule = "elemwise"  # how a tensor format label passes (megengine.core.format)
    fn = None

    def forward(self, a, b):
        dtype = _promote(a, b)
        if dtype.kind == "c" and self.fn != "equal" and self.fn != "not_equal":
            raise no_order(self.fn, dtype)  # (== and != keep their meaning)
        if dtype is _F16 and a.dtype is b.dtype and half_operands(a, b):
            # numpy's float16 comparisons convert one element at a time; float32 holds every
            # float16 value: the same answers. One thread, (512, 512): x > 0 1.19 ms before,
            # 0.045 after, x == y 0.44 and 0.073 (float32 0.021 and 0.030)
            a, b, dtype = cast(a, np.float32), cast(b, np.float32), np.dtype(np.float32)
        try:
            return getattr(xp_of(a), self.fn)(a.astype(dtype, copy=False),
                                              b.astype(dtype, copy=False))
        except ValueError as e:
            raise_unbroadcastable(type(self).__name__, (a, b), e)

    def backward(self, g):
        return None, None


def _compare(name, fn):
    return type(name, (_Compare,), {"fn": fn})


BINARY = {
    "add": Add, "sub": Sub, "mul": Mul, "truediv": TrueDiv, "floordiv": FloorDiv,
    "mod": Mod, "pow": Pow, "matmul": MatMul, "maximum": Maximum, "minimum": Minimum,
    "and": _no_grad_binary("And", "bitwise_and"), "or": _no_grad_binary("Or", "bitwise_or"),
    "xor": _no_grad_binary("Xor", "bitwise_xor"),
    "lshift": _no_grad_binary("LShift", "left_shift"),
    "rshift": _no_grad_binary("RShift", "right_shift"),
    "eq": _compare("Equal", "equal"), "ne": _compare("NotEqual", "not_equal"),
    "lt": _compare("Less", "less"), "le": _compare("LessEqual", "less_equal"),
    "gt": _compare("Greater", "greater"), "ge": _compare("GreaterEqual", "greater_equal"),
}


def _op_name(op):
    return type(op).__name__.lower()


def _quantized_sign_op(op, x):
    """Neg or Abs of a quantized tensor: on the stored integers where the zero point is 0,
    saturated (-(-128) is 127 in qint8); with a zero point, refused."""
    if _zero_point(x.dtype):
        raise no_quantized_form(_op_name(op), x.dtype)
    return saturated(op.forward(stored(x).astype(np.int64)), x.dtype)


class Neg(Op):
    format_rule = "elemwise"  # how a tensor format label passes (megengine.core.format)
    holomorphic = True  # complex gradients: see Op
    def forward(self, x):
        if x.dtype.metadata is not None:
            return _quantized_sign_op(self, x)
        try:
            return -x
        except TypeError:  # (numpy's or CuPy's refusal of a bool negative)
            if x.dtype.kind != "b":
                raise
        raise ArgumentTypeError("neg: a bool tensor has no negative; use ~x (F.logical_not) "
                                "to invert it, or x.astype('int32') for -1 and 0")

    def backward(self, g):
        return -g

    def grad_graph(self, inputs, outputs, grads):
        return (-grads[0],)


class Abs(Op):
    format_rule = "elemwise"  # how a tensor format label passes (megengine.core.format)
    def forward(self, x):
        if x.dtype.metadata is not None:
            return _quantized_sign_op(self, x)
        self.x = x
        return abs(x)

    def backward(self, g):
        if g.dtype is _F16 and half_operands(g):
            # numpy's float16 sign and product convert one element at a time: in float32, the
            # same values (g, -g or a signed 0). One thread, forward and backward of (512, 512):
            # 2.0-2.2 ms before, 0.34 after (float32 0.24)
            return cast(cast(g, np.float32) * np.sign(cast(self.x, np.float32)), _F16)
        return g * xp_of(g).sign(self.x)

    def backward_complex(self, g):
        # d|z| is z / |z| (0 at 0), torch's sgn(z); spelled out: CuPy's sign of a complex
        # number is numpy 1.x's (the sign of its real part), not numpy 2's z / |z|
        xp, z = xp_of(g), self.x
        size = abs(z)
        return g * xp.where(size == 0, 0, z / xp.where(size == 0, 1, size))

    def grad_graph(self, inputs, outputs, grads):
        return (grads[0] * _const(xp_of(self.x).sign(self.x), grads[0]),)


class Invert(Op):
    format_rule = "elemwise"  # how a tensor format label passes (megengine.core.format)
    def forward(self, x):
        if x.dtype.metadata is not None:  # (bits of the stored integers mean no value)
            raise no_quantized_form("invert", x.dtype)
        return ~x

    def backward(self, g):
        return None


UNARY = {"neg": Neg, "abs": Abs, "invert": Invert}


class AsType(Op):
    format_rule = "keep"  # how a tensor format label passes (megengine.core.format)
    def __init__(self, dtype):
        self.dtype = dtype

    def forward(self, x):
        self.in_dtype = x.dtype
        if x.dtype.kind == "c" and self.dtype.kind not in "cb":  # (numpy would only warn)
            raise complex_error("astype", x.dtype, f"casting it to {self.dtype} would drop "
                                "the imaginary part", "take F.real(x) or F.abs(x) first")
        return cast(x, self.dtype)

    def backward(self, g):
        # an integer input wants a gradient only while an integer tensor is attached (see
        # dispatch._apply_wide, which stops one coming back from a float result)
        return cast(g, self.in_dtype) if self.in_dtype.kind == "f" or \
            self.needs_input_grad[0] else None

    def backward_complex(self, g):
        # to complex: a real input gets the real part (dispatch's _ComplexGrad takes it; taken
        # here before the cast, which numpy would warn about); complex to complex: the cast
        if self.in_dtype.kind != "c" and g.dtype.kind == "c":
            g = g.real
        return self.backward(g)

    def grad_graph(self, inputs, outputs, grads):
        if self.in_dtype.kind != "f":
            return (None,)
        return (dispatch.apply(AsType(self.in_dtype), grads[0]),)


class Copy(Op):
    """Move to another device (or copy on the same one)."""
    format_rule = "keep"  # how a tensor format label passes (megengine.core.format)
    holomorphic = True  # complex gradients: see Op

    def __init__(self, device):
        self.device = self.out_device = device

    def forward(self, x):
        # backward sends the gradient back to the exact device (index included) it came from
        self.src = f"gpu{x.device.id}" if type(x).__module__.startswith("cupy") else "cpu0"
        return move_array(x, self.device)

    def backward(self, g):
        return move_array(g, self.src)

    def grad_graph(self, inputs, outputs, grads):
        return (dispatch.apply(Copy(inputs[0]._device), grads[0]),)


class Identity(Op):
    """A copy on the input's own device, the gradient passing through: ``F.copy(x)`` without a
    device and ``M.Identity``, upstream's Identity operator (its Copy names a device)."""
    format_rule = "keep"
    holomorphic = True  # complex gradients: see Op

    def forward(self, x):
        return x.copy()

    def backward(self, g):
        return g

    def grad_graph(self, inputs, outputs, grads):
        return grads


class LinearMap(Op):
    """A linear map given with its adjoint (functions on arrays), as an op: its gradient is the
    adjoint, whose gradient is the map again (derivatives of higher order alternate between
    the two). The gradient of a sampling (a warp, roi_align) for fixed points is one, so a
    gradient penalty can differentiate it again."""

    def __init__(self, fn, adjoint):
        self.fn, self.adjoint = fn, adjoint

    def forward(self, x):
        return self.fn(x)

    def backward(self, g):
        return self.adjoint(g)

    def grad_graph(self, inputs, outputs, grads):
        return (dispatch.apply(LinearMap(self.adjoint, self.fn), grads[0]),)


class Full(Op):
    """``value`` in a new array of ``shape`` on ``device`` (no inputs): what F.zeros, F.full,
    F.zeros_like and a size used as a tensor operand (``x / x.shape[0]``) make while a dumpable
    trace records sizes from shapes, so that a dumped program makes it at the shapes it runs
    at (see `megengine.jit.shape_guards`); otherwise those make a constant directly."""

    def __init__(self, shape, value, dtype, device):
        self.shape, self.value, self.dtype, self.device = shape, value, dtype, device

    def forward(self):
        from ..device import array_module_on  # (device sits below core; loaded on use)

        with dispatch.on_device(self.device):
            return array_module_on(self.device).full(self.shape, self.value, self.dtype)

    def backward(self, *gs):
        return ()


def move_array(a, device):
    """Copy ``a`` onto ``device`` (a canonical device name)."""
    on_gpu = type(a).__module__.startswith("cupy")
    if device.startswith("gpu"):
        if a.dtype.metadata is not None:  # quantized arrays stay on the host (see core/dtype)
            from .dtype import refuse_on_gpu

            refuse_on_gpu(a.dtype, device, f"moving a tensor to {device}")
        import cupy

        with cupy.cuda.Device(int(device[3:] or 0)):
            return cupy.array(a, copy=True)
    return a.get() if on_gpu else a.copy()


class Reshape(Op):
    format_rule = "reshape"  # how a tensor format label passes (megengine.core.format)
    holomorphic = True  # complex gradients: see Op
    def __init__(self, shape):
        self.shape = shape

    def forward(self, x):
        self.in_shape = x.shape
        if self.shape and min(self.shape) < 0:  # (a -1 to infer; numpy 2 reads any negative
            # size as one, and its error for two of them names neither)
            if min(self.shape) < -1 or sum(s == -1 for s in self.shape) > 1:
                raise ShapeError(f"reshape: target shape {tuple(self.shape)} may hold at most "
                                 "one -1 and no other negative sizes")
        try:
            return x.reshape(self.shape)
        except ValueError:
            raise ShapeError(
                f"reshape: cannot reshape a tensor of shape {x.shape} ({x.size} elements) "
                f"into {self.shape}"
            ) from None

    def backward(self, g):
        if g.size >= POOL_MIN and not g.flags.c_contiguous:  # (a transpose's gradient): a
            out = (_aten or _load_aten()).pooled_reshape(g, self.in_shape)  # view, or a copy
            if out is not None:
                return out
        return g.reshape(self.in_shape)

    def grad_graph(self, inputs, outputs, grads):
        return (dispatch.apply(Reshape(self.in_shape), grads[0]),)


class _AxisAddRemove(Op):
    """Size-1 dims added or removed at the positions ``axis``, one after another (upstream's
    AxisAddRemove operator): a reshape to `out_shape` of the input's shape. No sizes in its
    parameters, so a dumped program runs it at any input shape."""
    format_rule = "reshape"  # how a tensor format label passes (megengine.core.format)
    holomorphic = True  # complex gradients: see Op

    def __init__(self, axis):
        self.axis = tuple(axis)

    def forward(self, x):
        self.in_shape = x.shape
        return x.reshape(self.out_shape(x.shape))

    def backward(self, g):
        return g.reshape(self.in_shape)


class AddAxis(_AxisAddRemove):
    """Insert size-1 dims at the positions ``axis`` (of the result; ascending from
    ``F.expand_dims``), upstream's AddAxis."""

    def out_shape(self, shape):
        out = list(shape)
        for a in self.axis:  # (a negative position counts from the end of the result)
            n = len(out) + 1
            if not -n <= a < n:
                raise ShapeError(f"expand_dims: cannot add axis {a} to shape {tuple(out)} "
                                 f"(adding {self.axis} one after another to {tuple(shape)}): "
                                 f"a new axis is at a position in [{-n}, {n})")
            out.insert(a % n, 1)
        return tuple(out)

    def grad_graph(self, inputs, outputs, grads):
        return (dispatch.apply(RemoveAxis([a - i for i, a in enumerate(self.axis)]), grads[0]),)


class RemoveAxis(_AxisAddRemove):
    """Remove the size-1 dims ``axis``, each position counted after the removals before it
    (``F.squeeze(x, (1, 3))`` removes 1, then 2), as upstream's RemoveAxis; also what
    `trace.dump` writes after a reduction without ``keepdims``."""

    def _axes(self):  # (an int: a file written when this op removed one axis, in utils)
        return (self.axis,) if isinstance(self.axis, (int, np.integer)) else self.axis

    def out_shape(self, shape):
        axes, out = self._axes(), list(shape)
        for a in axes:
            if not -len(out) <= a < len(out) or out[a] != 1:
                raise ShapeError(f"squeeze: cannot remove axis {a} of shape {tuple(out)} "
                                 f"(removing {axes} one after another from {tuple(shape)}): "
                                 "only an existing axis of size 1 can be removed")
            del out[a]
        return tuple(out)

    def grad_graph(self, inputs, outputs, grads):
        dims = list(range(len(self.in_shape)))
        removed = [dims.pop(a) for a in self._axes()]  # (their positions in the input)
        return (dispatch.apply(AddAxis(sorted(removed)), grads[0]),)


def shape_values(shape, what):
    """The target shape that array ``shape`` (a shape Tensor's, read when an op runs) holds, as
    a tuple of ints: integers, or floats that are whole numbers (upstream reads a computed float
    shape as ints)."""
    values = shape.tolist()
    values = values if isinstance(values, list) else [values]
    if shape.dtype.kind not in "iuf" or shape.ndim > 1 or any(v != int(v) for v in values):
        raise TypeError(f"{what}: a shape Tensor must be a 1-D array of integers, got shape "
                        f"{shape.shape} and dtype {shape.dtype}: {values}")
    return tuple(int(v) for v in values)


def by_shape_tensor(shape):
    """Whether an op should take ``shape`` as an input, read when it runs (`ReshapeBy`): a
    Tensor, not made from traced shapes (its sizes are expressions then), while a dumpable
    trace records (see `_trace_option.dumpable`)."""
    return hasattr(shape, "_data") and dumpable() and sizes_of(shape) is None


def computed_sizes(shape):
    """Whether shape sequence ``shape`` holds a Tensor that is not sizes from shapes (``(n,
    -1)`` with ``n`` computed by the program) while a dumpable trace records: such a shape is
    made a shape Tensor by ops (`megengine.functional.tensor`), an input of the op, instead of
    sizes read to the host."""
    return (type(shape) in (tuple, list) and dumpable()
            and any(hasattr(s, "_data") and sizes_of(s) is None for s in shape))


def unspec_axis(shape):
    """The position of the -1 in target shape ``shape`` (a sequence, whose entries may be
    Tensors, or a shape Tensor), or None: upstream's Reshape notes it in its graph's params
    (``unspec_axis``), taken from the shape's value when the op is made, as upstream takes it.
    Only graph tools read it: the op reshapes to the shape it is given when it runs."""
    if hasattr(shape, "_data"):
        shape = shape._data.reshape(-1).tolist()
    if not isinstance(shape, (list, tuple)):
        return None
    for i, s in enumerate(shape):
        if hasattr(s, "_data") and s._data.size == 1:  # (its value, not a noted host read)
            s = s._data.reshape(()).tolist()
        if isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s == -1:
            return i
    return None


class ReshapeBy(Op):
    """`Reshape` to the shape that its second input holds, read when the op runs: upstream's
    Reshape operator takes the target shape as an input, and so does a dumped program here
    (`by_shape_tensor`), which then follows the shape it is given. ``axis``: the -1's position
    when the op was made (`unspec_axis`), for graph tools."""
    format_rule = "reshape"  # how a tensor format label passes (megengine.core.format)
    holomorphic = True  # complex gradients: see Op
    data_shaped = True  # the output's shape is the second input's value

    def __init__(self, axis=None):
        self.axis = axis

    def forward(self, x, shape):
        self.in_shape = x.shape
        return Reshape(shape_values(shape, "reshape")).forward(x)

    def backward(self, g):
        return g.reshape(self.in_shape), None

    def grad_graph(self, inputs, outputs, grads):
        return dispatch.apply(Reshape(self.in_shape), grads[0]), None


class Transpose(Op):
    format_rule = "transpose"  # how a tensor format label passes (megengine.core.format)
    holomorphic = True  # complex gradients: see Op
    def __init__(self, axes):
        self.axes = axes

    def forward(self, x):
        try:  # (the array checks the axes: ours only words its refusal)
            return x.transpose(self.axes)
        except ValueError:  # (numpy's AxisError, an axis out of range, is one too)
            pass
        except TypeError:  # (an axis that is no int: upstream's RuntimeError, pybind's cast)
            raise ArgumentTypeError(f"transpose: axes must be ints (a permutation of the "
                                    f"{x.ndim} dims), got {self.axes}") from None
        raise ShapeError(f"transpose: axes {self.axes} are not a permutation of the {x.ndim} "
                         f"dims of a tensor of shape {x.shape}")

    def backward(self, g):
        if self.axes is None:
            return g.transpose()
        return g.transpose(np.argsort([a % g.ndim for a in self.axes]))

    def grad_graph(self, inputs, outputs, grads):
        g = grads[0]
        inverse = None if self.axes is None else \
            tuple(int(i) for i in np.argsort([a % g.ndim for a in self.axes]))
        return (dispatch.apply(Transpose(inverse), g),)


def normalize_index(index):
    """An index with Tensors turned into arrays, ready for array indexing. (A 1-d bool mask
    stays a mask: the op reads it as upstream does when it runs, see `_bool_masks_as_positions`,
    so that a trace sees the mask's value, not positions made from it once.)"""
    if not isinstance(index, tuple):
        index = (index,)
    if _plain_index(index):  # ints and slices of ints, the usual index: nothing to turn
        return index
    out = []
    for i in index:
        if isinstance(i, (float, complex, str, bytes, np.floating, np.complexfloating)):
            # (refused here, not by the array module: CuPy raises TypeError where numpy raises
            # IndexError)
            raise IndexingError(f"only integers, slices, ellipsis (...), None and integer or "
                                f"bool arrays are valid indices, got {i!r} "
                                f"({type(i).__name__}); convert it with int()")
        if hasattr(i, "_data"):
            i = i._data
            if i.dtype.kind == "f":
                raise IndexingError(f"tensor indices must be integer or bool, not {i.dtype}; "
                                    "convert it with .astype('int32')")
        elif isinstance(i, list):
            i = np.asarray(i)
            if i.size == 0 and i.dtype.kind == "f":
                i = i.astype(np.intp)  # `x[[]]` selects nothing (numpy reads [] as float)
        elif type(i) is slice and any(hasattr(b, "_data") for b in (i.start, i.stop, i.step)):
            # `x[1:n]` with a Tensor bound: its value is read here, where a trace sees the read
            # (a new value re-traces, dump refuses), not later inside the op as a stale constant
            i = slice(*(_slice_bound(b) for b in (i.start, i.stop, i.step)))
        out.append(i)
    return tuple(out)


def _slice_bound(b):
    """A slice bound as an int, or the `SymDim` a size tensor holds while a dumpable trace
    records (``n - 1`` of a traced module's shape tensor), which the slice then carries as
    ``x[: x.shape[0] - 1]`` carries it, instead of a guard on its value."""
    if not hasattr(b, "_data"):
        return b
    sizes = sizes_of(b)
    if sizes is not None and sizes.ndim == 0 and is_dim(sizes[()]):
        return sizes[()]
    return b.__index__()


_PLAIN_ITEMS = frozenset({int, type(None), type(Ellipsis)})  # index items kept as they are
_PLAIN_BOUNDS = frozenset({int, type(None)})  # slice bounds kept as they are


def _plain_index(index):
    """Whether the index tuple holds only ints, None, Ellipsis and slices of ints or None:
    nothing for `normalize_index` to turn, no mask (tested by type, ~0.1 us for two items,
    where the general loops' attribute probes cost ~1 us)."""
    for i in index:
        t = type(i)
        if t not in _PLAIN_ITEMS and (t is not slice or type(i.start) not in _PLAIN_BOUNDS
                                      or type(i.stop) not in _PLAIN_BOUNDS
                                      or type(i.step) not in _PLAIN_BOUNDS):
            return False
    return True


def _bool_masks_as_positions(index, shape):
    """Upstream reads a 1-d bool index as the positions of its True entries (its CondTake),
    without numpy's check that the mask is as long as its axis; a program can rely on that
    (ASR-Transformer's ``kl[..., pad_mask] = 0``). A mask of the axis' length means the same in
    both readings, so only a mismatched one is turned into positions; a position past the
    axis still raises."""
    if type(index) is tuple and _plain_index(index):
        return index
    if not any(getattr(i, "dtype", None) is not None and i.dtype == np.bool_ and i.ndim == 1
               for i in index):
        return index
    used = sum(0 if i is None or i is Ellipsis else
               (i.ndim if getattr(i, "dtype", None) is not None and i.dtype == np.bool_ else 1)
               for i in index)
    out, axis = [], 0
    for i in index:
        if i is None:
            out.append(i)
            continue
        if i is Ellipsis:
            axis += max(len(shape) - used, 0)
            out.append(i)
            continue
        is_mask = getattr(i, "dtype", None) is not None and i.dtype == np.bool_
        if is_mask and i.ndim == 1 and axis < len(shape) and i.shape[0] != shape[axis]:
            n = shape[axis]
            # (outside an op: CuPy's kernels below run on the current GPU, so make it the mask's)
            with dispatch.on_device(None if type(i) is np.ndarray else f"gpu{i.device.id}"):
                if i.shape[0] > n and bool(i[n:].any()):  # checked here: CuPy wraps such a
                    past = n + int(i[n:].argmax())  # position around instead of raising
                    raise IndexingError(
                        f"index {past} is out of bounds for axis {axis} with size {n}")
                i = i.nonzero()[0]
        out.append(i)
        axis += i.ndim if is_mask and i.dtype == np.bool_ else 1
    return tuple(out)


def _is_basic(index):
    return all(
        i is None or i is Ellipsis or isinstance(i, (slice, int, np.integer)) for i in index
    )


class GetItem(Op):
    format_rule = "subtensor"  # how a tensor format label passes (megengine.core.format)
    holomorphic = True  # complex gradients: see Op
    def __init__(self, index):
        self.index = index

    @property
    def data_shaped(self):  # a boolean mask: as many elements as it has True values
        index = self.index if type(self.index) is tuple else (self.index,)
        return any(getattr(i, "dtype", None) == np.bool_ and getattr(i, "ndim", 0) for i in index)

    def forward(self, x):
        self.in_shape, self.in_dtype = x.shape, x.dtype
        self.index = _bool_masks_as_positions(self.index, x.shape)  # (this call's; backward's)
        try:
            return x[self.index]
        except IndexError as e:
            raise IndexingError(f"indexing a tensor of shape {x.shape}: {e}") from None
        except TypeError as e:  # (numpy's for a float slice bound, x[0.0:1])
            raise TypeError(f"indexing a tensor of shape {x.shape}: {e}") from None

    def backward(self, g):
        return IndexAdd(self.index, self.in_shape, self.in_dtype).forward(g)

    def grad_graph(self, inputs, outputs, grads):
        return (dispatch.apply(IndexAdd(self.index, self.in_shape, self.in_dtype), grads[0]),)


def add_at(out, index, g):
    """``out[index] += g`` into fresh zeros ``out`` (a gradient) with repeated positions summed
    (``xp.add.at``, or ATen's index_add_ where it serves: `_index_add_on_aten`, below); a
    complex ``out`` by its real and imaginary parts, since CuPy's add.at takes no complex
    numbers."""
    if _index_add_on_aten(out, index, g):
        return
    xp = xp_of(out)
    if out.dtype.kind == "c" and xp is not np:
        xp.add.at(out.real, index, g.real)
        xp.add.at(out.imag, index, g.imag)
    else:
        xp.add.at(out, index, g)


# The gradient of x[idx] (one integer array along an axis, the axes before it whole: x[idx],
# x[:, idx]) of float32/float64 numpy arrays from _ATEN_INDEX_ADD_MIN values of g
# takes ATen's index_add_ (family "index_add"). Both add each index's slice in the index's order,
# so every element sums in the same order: numpy's values bit for bit (repeated indices too, at
# 1 and 2 threads). np.add.at adds element by element; ATen adds whole slices with vectorised
# loops. Measured with one thread, numpy against ATen (best of 30): zeros (4096, 1024) and 4096
# indices 38.7-46.9 ms against 3.1-3.2; (10000, 256) and 512 indices 1.24 ms against 0.17;
# 1024 values 11-12 us against 7; 512 values a tie (7 us).
# float16 takes ATen's index_put_ with accumulate=True instead, torch's own gradient of x[idx]:
# it adds element by element in the index's order, each sum rounded to float16 (its float16
# accumulation never runs in parallel), as numpy's float16 add.at: the same bits, and torch's
# gradient's. (index_add_ sums float16 rows along axis 0 in float32 and rounds once: other
# values.) One thread, add.at against index_put_: (4096, 1024) and 4096 indices 205-227 ms
# against 14-22; (10000, 256) and 512 indices 7.5 ms against 0.4-0.6; (64, 1024) and 512
# indices along axis 1 0.76 ms against 0.16; (50000,) and 8192 indices 0.08 against 0.05.
_ATEN_INDEX_ADD_MIN = 1024


def _index_add_on_aten(out, index, g):
    """``out[index] += g`` (``out``: fresh zeros) by ATen's index_add_ (float16: index_put_)
    where the index is one integer array after whole axes, in a large float numpy gradient
    (see above); False where numpy's or CuPy's add.at is to do it (`add_at`)."""
    dtype = out.dtype
    if type(out) is not np.ndarray or dtype not in KERNEL_FLOATS and dtype is not _F16 \
            or g.dtype != dtype or g.size < _ATEN_INDEX_ADD_MIN or type(index) is not tuple \
            or not index:
        return False
    axis = len(index) - 1
    idx = index[axis]
    if type(idx) is not np.ndarray or idx.dtype.kind not in "iu" or any(
            type(i) is not slice or i != slice(None) for i in index[:axis]):
        return False
    if _aten is None:
        _load_aten()
    if not _aten.use_aten(out, "index_add"):
        return False
    positions = idx.astype(np.int64).reshape(-1)  # (a copy: negative positions are made
    positions[positions < 0] += out.shape[axis]  # positive in it, as torch takes them)
    rows = g.reshape(out.shape[:axis] + positions.shape + out.shape[axis + 1:])
    try:
        if dtype is _F16:
            target, values = _aten.view(out), _aten.view(rows)
            if axis:  # (x[idx], the common case, needs no move: two torch calls, ~3 us)
                target, values = target.movedim(axis, 0), values.movedim(axis, 0)
            target.index_put_((_aten.view(positions),), values, accumulate=True)
        else:
            _aten.view(out).index_add_(axis, _aten.view(positions), _aten.view(rows))
    except (IndexError, RuntimeError):  # a position out of bounds: add_at raises numpy's error
        out[...] = 0
        return False
    return True


class IndexAdd(Op):
    """The gradient of ``x[index]``: zeros of x's shape with ``g`` added at ``index``."""
    holomorphic = True  # complex gradients: see Op

    def __init__(self, index, shape, dtype):
        self.index, self.shape, self.dtype = index, shape, dtype

    def forward(self, g):
        xp = xp_of(g)
        out = xp.zeros(self.shape, self.dtype)
        if _is_basic(self.index):
            out[self.index] = g
        else:
            add_at(out, self.index, g)
        return out

    def backward(self, gg):
        return gg[self.index]

    def grad_graph(self, inputs, outputs, grads):
        return (dispatch.apply(GetItem(self.index), grads[0]),)


class SetItem(Op):
    """``x[index] = v`` as a new value: the result is x with the indexed part replaced."""
    format_rule = "subtensor"  # how a tensor format label passes (megengine.core.format)
    holomorphic = True  # complex gradients: see Op

    def __init__(self, index):
        self.index = index

    def forward(self, x, v):
        if v.dtype.kind == "c" and x.dtype.kind != "c":  # (numpy would only warn)
            raise complex_error("x[index] = v", v.dtype, f"storing it in a {x.dtype} tensor "
                                "would drop the imaginary part", "take F.real / F.imag / "
                                "F.abs of it first, or make x complex (x.astype('complex64'))")
        out = x.copy()
        self.index = _bool_masks_as_positions(self.index, x.shape)  # (this call's; backward's)
        try:
            try:
                out[self.index] = v
            except ValueError:
                if v.size != 1 or not v.ndim:
                    raise
                # one value of shape (1,) (or (1, 1), ...) into a single element: numpy 2
                # refuses, upstream broadcasts it to the element (and torch takes it)
                out[self.index] = v.reshape(())
        except (IndexError, ValueError, TypeError) as e:  # (TypeError: numpy's, complex v)
            # (a value that does not broadcast to the place: upstream's RuntimeError too)
            raise (IndexingError if isinstance(e, IndexError) else
                   BroadcastError if isinstance(e, ValueError) else type(e))(
                f"setting a tensor of shape {x.shape} at an index with a value of shape "
                f"{v.shape}: {e}"
            ) from None
        self.v_shape = v.shape
        return out

    def backward(self, g):
        gx = gv = None
        if self.needs_input_grad[0]:
            gx = g.copy()
            gx[self.index] = 0
        if self.needs_input_grad[1]:
            gv = unbroadcast(g[self.index], self.v_shape) if g[self.index].ndim >= len(self.v_shape) \
                else g[self.index].reshape(self.v_shape)
        return gx, gv

    def grad_graph(self, inputs, outputs, grads):
        g = grads[0]
        gx = gv = None
        if self.needs_input_grad[0]:
            gx = dispatch.apply(SetItem(self.index), g, _const(xp_of(g._data).zeros((), g.dtype), g))
        if self.needs_input_grad[1]:
            part = dispatch.apply(GetItem(self.index), g)
            gv = t_unbroadcast(part, self.v_shape) if part.ndim >= len(self.v_shape) \
                else part.reshape(self.v_shape)
        return gx, gv


class IndexingError(IndexError, RuntimeError):
    """An index a tensor cannot take (out of range, a float, a string): an IndexError, as
    numpy's and torch's, and a RuntimeError, what upstream 1.13 raises there (pybind's "Unable
    to cast" for a float or a string, its kernel's assertion or a later AsyncError for an index
    out of range), so code written for either catches it."""


class AxisError(ValueError, RuntimeError, AssertionError):
    """An axis out of range. A ValueError as numpy's AxisError; also a RuntimeError, which is
    what upstream raises (its C++ shape check) and its users catch, and an AssertionError,
    which its Python functions raise where they assert the axis (argmax, repeat)."""


def names_an_axis(axis):
    """Whether ``axis`` names at least one axis (None and ``()`` name none)."""
    return is_int(axis) or is_dim(axis) or bool(axis)


def axis_of_array(axis):
    """An axis given as an integer Tensor or numpy array, as the int (0-d) or tuple of ints
    (1-d) it holds, as upstream reads ``F.sum(x, axis=Tensor([0, 1]))`` and
    ``F.softmax(x, axis=Tensor(1))``; anything else as it is (a float or bool array stays an
    array, which the axis checks refuse)."""
    if isinstance(axis, np.ndarray) or hasattr(axis, "_data") and hasattr(axis, "numpy"):
        if axis.dtype.kind in "iu" and axis.ndim <= 1 and axis.dtype.metadata is None:
            values = axis if isinstance(axis, np.ndarray) else axis.numpy()
            return int(values) if values.ndim == 0 else tuple(int(v) for v in values)
    return axis


def _norm_axes(axis, ndim, what, dims=None):
    """``axis`` (None: every axis; an int or a sequence of ints) as a sorted tuple of
    non-negative axes below ``ndim``: out of range raises `AxisError`, an axis named twice
    `ArgumentError`, a value that is no int TypeError. Axis 0 of a 0-d tensor is taken
    (upstream reduces a 0-d tensor as one of shape (1,)). The errors name the public function
    the user called (``F.normalize``, not the ``F.norm`` it computes with), else ``what``;
    ``dims`` says how many dims the tensor has where that is not ``ndim``."""
    if axis is None:
        return tuple(range(ndim))
    # one int in range, the common case: 0.3 us, where the general path below takes 3 (a
    # sixth of a (64, 10) softmax call)
    if type(axis) is int and -ndim <= axis < ndim:
        return (axis % ndim,)
    axis = axis_of_array(axis)
    try:
        axes = (axis,) if is_int(axis) or is_dim(axis) else tuple(axis)
    except TypeError:  # (not iterable)
        axes = None
    if axes is None or not all(is_int(a) or is_dim(a) for a in axes):
        raise ArgumentTypeError(f"{public_function() or what}: axis must be an int or a "
                                f"sequence of ints, got {axis!r}")
    out = []
    for a in axes:
        a = as_int(a) if is_dim(a) else a  # (an axis from a dumpable trace's sizes: a guard)
        if not -ndim <= a < max(ndim, 1):
            raise AxisError(f"{public_function() or what}: axis {a} is out of range for a tensor "
                            f"with {dims or f'{ndim} dims'}")
        out.append(int(a) % max(ndim, 1))
    if len(set(out)) != len(out):
        raise ArgumentError(f"{public_function() or what}: axis {axis} names the same dim twice")
    return tuple(sorted(out))


_ORDERED = frozenset({"max", "min"})
# what ndarray.sum, .prod, .max and .min call, behind ~1 us of Python (numpy's _methods)
_NP_REDUCE = {"sum": np.add.reduce, "prod": np.multiply.reduce, "max": np.maximum.reduce,
              "min": np.minimum.reduce}


def _reduce_kept(x, mode, axes):
    """``x`` reduced over ``axes`` by ``mode``, the axes kept (size 1): numpy's ufunc itself for
    a numpy array (the same call its method makes), else the array's method (CuPy; a mean)."""
    reduce = _NP_REDUCE.get(mode) if type(x) is np.ndarray else None
    if reduce is not None:
        return reduce(x, axes, None, None, True)
    if mode == "mean" and x.size == 0 and type(x) is np.ndarray:
        with np.errstate(invalid="ignore"):  # NaN (0 / 0) without numpy's two warnings
            return x.sum(axis=axes, keepdims=True) / x.dtype.type(0)
    return getattr(x, mode)(axis=axes, keepdims=True)


def _reduced(x, mode, axes):
    """``x`` reduced over ``axes`` (normalized, the empty axes refused) by ``mode``, keepdims:
    large float32/float64 ones on ATen (`_aten_reduce`), else the array's own reductions."""
    out = _aten_reduce(x, mode, axes) if type(x) is np.ndarray else None
    if out is not None:
        return out
    if not x.ndim:
        return getattr(x, mode)(keepdims=True)
    if mode == "mean" and x.dtype in KERNEL_FLOATS and x.size and type(x) is np.ndarray:
        # numpy's mean is this sum and division behind ~2 us of Python (_methods._mean); CuPy's
        # is one kernel (the same sum, divided in it), where these are two launches
        out = _reduce_kept(x, "sum", axes)
        out /= math.prod(x.shape[a] for a in axes)
        return out
    if x.dtype is _F16 and (mode == "sum" or mode == "prod"):
        # (CuPy's) float16 adds and multiplies in float32, rounded once (see acc_sum; a mean
        # already adds float16 in float32)
        return getattr(x, mode)(axis=axes, keepdims=True, dtype=np.float32).astype(x.dtype)
    return _reduce_kept(x, mode, axes)


class Reduce(Op):
    """sum / mean / prod / max / min over some axes."""

    def __init__(self, mode, axis=None, keepdims=False):
        self.mode, self.axis, self.keepdims = mode, axis, keepdims

    @property
    def holomorphic(self):  # complex gradients (see Op); complex numbers have no max or min
        return self.mode in ("sum", "mean", "prod")

    def forward(self, x):
        mode = self.mode
        if x.dtype.metadata is not None and mode not in _ORDERED:  # a quantized tensor
            return self._quantized(x)
        self.x = x
        axis, ndim = self.axis, x.ndim
        if type(axis) is int and -ndim <= axis < ndim:  # the usual call, without _norm_axes
            axes = (axis % ndim,)
        elif not ndim and names_an_axis(axis):
            # upstream reduces a 0-d tensor over axis 0 or -1 as one of shape (1,), so keepdims
            # gives shape (1,) (below)
            _norm_axes(axis, 1, mode, "0 dims (a 0-d tensor takes axis 0 or -1)")
            axes = ()
        else:
            axes = _norm_axes(axis, ndim, mode)
        self.axes = axes
        if mode in _ORDERED:
            if x.dtype.kind == "c":
                raise no_order(mode, x.dtype)
            empty = [a for a in (axes if ndim else ()) if x.shape[a] == 0] if not x.size else ()
            kept = [n for a, n in enumerate(x.shape) if a not in axes]
            if empty and all(kept):
                # only an empty reduced axis with values to give is undefined; (0, 3) over
                # axis 1 gives shape (0,), and so does (0, 0) over axis 0, as upstream's (an
                # answer of no values; torch refuses it) (named: F.norm of order -inf or inf
                # computes with min or max)
                raise ShapeError(f"{public_function() or mode}: cannot reduce over axis "
                                 f"{empty[0]} of an empty tensor (shape {tuple(x.shape)}): the "
                                 f"{mode} of no elements is undefined")
        if not x.size and mode in _ORDERED and ndim:  # (numpy's min / max refuse even an
            out = xp_of(x).empty(tuple(1 if a in axes else n  # answer of no values: that
                                       for a, n in enumerate(x.shape)), x.dtype)  # answer)
        elif x.dtype is _F16 and ndim and type(x) is np.ndarray:
            # float16 on the CPU reduces in float32, rounded once: numpy's float16 loops convert
            # one value at a time (one thread, (512, 512) over rows: max 67 ms against 0.19 in
            # float32); the same values for max and min, and sums added in float32 as before
            out = cast(_reduced(cast(x, np.float32), mode, axes), _F16)
        else:
            out = _reduced(x, mode, axes)
        if mode == "mean" and x.dtype.kind not in "fc":
            out = out.astype(np.float32)
        elif mode in ("sum", "prod") and x.dtype.kind in "iub" and out.dtype != x.dtype:
            # integers keep their dtype and wrap, as upstream documents (128 int8 ones sum to
            # int8 -128); bools count as int32
            out = out.astype(np.int32 if x.dtype.kind == "b" else x.dtype)
        self.out_keep = out
        if (mode == "sum" or mode == "mean") and True in self.needs_input_grad:
            self.x = ShapeOnly(x)  # (their backward reads the shape only: see _Binary)
        if self.keepdims:
            return out if ndim or not names_an_axis(axis) else out.reshape((1,))
        if len(axes) == 1 and ndim:
            return out.squeeze(axes[0])
        if len(axes) == ndim:  # (all of them, x.sum(): a scalar)
            return out.reshape(())
        return out.reshape(tuple(n for i, n in enumerate(x.shape) if i not in axes))

    def _quantized(self, x):
        """mean of the values (upstream's mean casts to float32, which dequantizes); sum of the
        values at the input's scale and zero point, ``sum(q - zp) + zp``, saturated to the
        dtype's range (upstream's Reduce keeps a quantized dtype: quint8(0.5, 10) values 1, 2, 3
        sum to 6.0, stored 22); a product's scale is not the input's: refused."""
        if self.mode == "mean":
            return self.forward(float_value(x))
        if self.mode == "sum":
            zp = _zero_point(x.dtype)
            return saturated(self.forward(stored(x).astype(np.int64) - zp) + zp, x.dtype)
        raise no_quantized_form(self.mode, x.dtype)

    def backward(self, g):
        xp = xp_of(g)
        x, axes = self.x, self.axes
        keep_shape = tuple(1 if i in axes else n for i, n in enumerate(x.shape))
        g = g.reshape(keep_shape)
        if self.mode == "sum":
            return xp.broadcast_to(g, x.shape)
        if self.mode == "mean":
            count = int(np.prod([x.shape[i] for i in axes], dtype=np.int64)) if axes else 1
            return xp.broadcast_to(div_count(g, count), x.shape)
        if self.mode in ("max", "min"):  # every tied element gets all of g (upstream's rule)
            if g.dtype is _F16 and type(g) is np.ndarray:  # (numpy's float16 loop: see forward)
                # the ties found in float32 too, the same answers (numpy's float16 comparison:
                # F.max(x, 1) of (512, 512) forward and backward 0.7-1.0 ms before, 0.3 after;
                # float32 0.2-0.3)
                tied = cast(x, np.float32) == cast(self.out_keep, np.float32) \
                    if half_operands(x) else x == self.out_keep
                return cast(masked_gradient(cast(g, np.float32), tied), _F16)
            return masked_gradient(g, x == self.out_keep)
        return g * _exclusive_prod(x, axes)

    def backward_reads(self):
        # sum and mean read only x's shape; max, min and prod its values (and the result)
        return () if self.mode == "sum" or self.mode == "mean" else (self.x, self.out_keep)

    def grad_graph(self, inputs, outputs, grads):
        x, axes = self.x, self.axes
        keep_shape = tuple(1 if i in axes else n for i, n in enumerate(x.shape))
        g = grads[0].reshape(keep_shape)
        if self.mode == "sum":
            return (t_expand(g, x.shape),)
        if self.mode == "mean":
            count = int(np.prod([x.shape[i] for i in axes], dtype=np.int64)) if axes else 1
            return (t_expand(div_count(g, count), x.shape),)
        if self.mode in ("max", "min"):
            return (masked_gradient_graph(t_expand(g, x.shape), x == self.out_keep),)
        if not (x != 0).all():
            return (g * _exclusive_prod_graph(inputs[0], axes),)
        return (g * outputs[0].reshape(keep_shape) / inputs[0],)


# Reductions of float32/float64 numpy arrays run on ATen's kernels (through zero-copy views,
# `functional._aten`, family "reduce") from _ATEN_REDUCE_MIN elements on. ATen's are vectorised
# along the reduced axis where numpy reduces a row of a C-ordered array pairwise but scalar:
# measured with one thread, sum over axis 1 of (256, 1000) float32 15 us against 44, of
# (512, 1024) 31 against 89, (16, 64, 64) over axes (0, 2) 10 against 29, amax 24 against 31.
# A call has a fixed cost of ~3 us, so below the threshold numpy stays: (64, 64) is a tie
# (2.9 against 3.0 us for sum), (128, 128) already 3.6 against 5.7, hence 8192 between them
# (max and min: see _ATEN_ROWS_MIN).
# Not on ATen: prod (torch reduces one dim at a time), integers and bools (upstream's wrapping
# dtype rules are numpy's here), float16, 0-d inputs, axis=() (no reduction), and max / min
# over every axis (numpy's contiguous max is faster: 26 us against 35 on 512 x 1024). NaN
# propagates on both paths; mean is ATen's sum divided by the count, as numpy computes it.
# CuPy arrays keep CuPy's reductions (the caller passes numpy arrays only).
# numpy's max / min over the last axis pay ~40 ns per output row on top (its sum does not):
# (64, 10) over axis 1 3.9 us against ATen's 3.3, (256, 4) 10.6 against 3.5, but (32, 16)
# 2.7 against 3.3; so from _ATEN_ROWS_MIN output rows they take ATen at any size.
_ATEN_REDUCE_MIN = 8192
_ATEN_ROWS_MIN = 64
_aten = None  # megengine.functional._aten, imported at the first large reduction
_aten_kernels = {}  # Reduce's mode -> ATen's function (torch's binding), filled with _aten


def _aten_reduce(x, mode, axes):
    """``x`` (a numpy array) reduced over ``axes`` with keepdims on ATen, or None where numpy
    does it (see above)."""
    if mode == "prod" or x.dtype not in KERNEL_FLOATS or not axes:
        return None
    if mode == "max" or mode == "min":
        if len(axes) == x.ndim:
            return None
        if x.size < _ATEN_REDUCE_MIN and (
                axes[-1] != x.ndim - 1 or x.size < _ATEN_ROWS_MIN * (
                    x.shape[axes[0]] if len(axes) == 1 else math.prod(x.shape[a] for a in axes))):
            return None
    elif x.size < _ATEN_REDUCE_MIN:
        return None
    if _aten is None:
        _load_aten()
    if not _aten.use_aten(x, "reduce"):  # torch missing, or a test avoids the family
        return None
    fn = _aten_kernels.get(mode) or _aten_kernel(mode)
    out = _aten.array(fn(_aten.view(x), axes, True))
    if mode == "mean":
        out /= math.prod(x.shape[a] for a in axes)  # (a fresh result: divided in place)
    return out


# Matrix products of float32/float64 numpy arrays run on ATen (torch's BLAS, in torch's intra-op
# pool) from the size at which numpy's BLAS would start threads of its own: OpenBLAS, which
# numpy's wheels carry, threads a gemm above m * n * k = 4 * 65536 and a gemv from 2304 * 4
# matrix elements (its interface/gemm.c and gemv.c). Its threads are a second pool beside
# torch's, sized to every core whatever torch.set_num_threads / MGE_NUM_THREADS say, and its
# idle workers spin for ~0.1 s after each product on the cores ATen's next kernels run on.
# ShuffleNetV2's training step at batch 8 on two threads (two cores), its FC layer's three
# products on OpenBLAS: 431 ms, 303 ms with OpenBLAS's workers made to sleep at once
# (OPENBLAS_THREAD_TIMEOUT=4), torch 266 ms; benchmarks/bench_threads.py: 1.71x torch's step
# with them on OpenBLAS, 1.27x on ATen (1.13x at one thread). Below the sizes numpy stays:
# its products run on the calling thread there, at ~1 us per call against ATen's ~4. With one
# thread MKL's and OpenBLAS's gemms are within ~15% of each other at these sizes, either way.
_GEMM_THREADED = 4 * 65536
_GEMV_THREADED = 4 * 2304
_matmul = None  # ATen's matmul (torch's binding), looked up with _aten


def matmul(a, b, out=None):
    """``a @ b`` (numpy.matmul) of arrays of one dtype, on ATen where numpy's BLAS would run
    each product on threads of its own (above); ``a.dot(b)`` for 1-D / 2-D operands otherwise
    (equal there, with less dispatch: ~5 us less per call right after torch's convolutions,
    benchmarks/profile_hybrid_step.py), but for an inner dimension of 1: there numpy's dot runs
    BLAS's gemv, which skips a column whose factor is 0, so a NaN or inf times 0 gave 0, not
    NaN (``[[nan], [1]] @ [[0]]`` was ``[[0], [0]]``; numpy's matmul multiplies every pair, as
    upstream's and torch's products). ``out``: a C-contiguous array of the result's shape and
    dtype to write to, which is returned.

    float16 operands are multiplied as float32 and the product rounded to float16 once: the
    values numpy's own float16 product gives (it adds in float32 too, up to the adding order),
    but numpy has no float16 gemm, and its loop took 40-80x a float32 product (a DeiT-tiny step
    under ``amp.autocast``: 53 s with it, 4.5 s without, 2.8 s with the casts on ATen too,
    0.6-1.5 s in float32)."""
    if a.dtype is _F16 and b.dtype is _F16 and type(a) is np.ndarray:
        r = matmul(cast(a, np.float32), cast(b, np.float32))
        if out is None:
            return cast(r, _F16)
        np.copyto(out, r, casting="same_kind")
        return out
    if type(a) is np.ndarray and a.dtype is b.dtype and a.dtype in KERNEL_FLOATS \
            and a.ndim and b.ndim:
        m = a.shape[-2] if a.ndim > 1 else 1
        k = a.shape[-1]
        n = b.shape[-1] if b.ndim > 1 else 1
        size = m * n * k
        if (size > _GEMM_THREADED if m > 1 and n > 1 else size >= _GEMV_THREADED) \
                and k == b.shape[-2 if b.ndim > 1 else 0] \
                and (a.ndim < 3 or b.ndim < 3 or a.shape[:-2] == b.shape[:-2]):
            if _aten is None:
                _load_aten()
            if _aten.use_aten(a, "gemm"):
                global _matmul
                if _matmul is None:
                    _matmul = _aten.op("matmul")
                if out is None:
                    return _aten.array(_matmul(_aten.view(a), _aten.view(b)))
                _matmul(_aten.view(a), _aten.view(b), out=_aten.view(out))
                return out
    if out is not None:
        return xp_of(a).matmul(a, b, out=out)
    return a.dot(b) if a.ndim < 3 and b.ndim < 3 and a.shape[-1] != 1 else a @ b


def grad_matmul(a, b):
    """`matmul` for a backward: its result is a new buffer, declared so
    (`dispatch.declare_fresh_gradient`), so that a GradManager hands an ATen product (a view of
    torch's memory) to ``.grad`` without a copy, as numpy's own."""
    return dispatch.declare_fresh_gradient(matmul(a, b))


def _load_aten():
    """`megengine.functional._aten`, imported on first use (functional sits above core)."""
    global _aten
    from ..functional import _aten as module

    _aten = module
    return module


def _aten_kernel(mode):
    """ATen's function for Reduce's ``mode`` (torch's binding), looked up once. Mean is ATen's
    sum divided by the count (numpy's formula; torch.mean costs ~2 us more per call)."""
    fn = _aten_kernels[mode] = _aten.op({"max": "amax", "min": "amin"}.get(mode, "sum"))
    return fn


def _exclusive_prod_graph(x, axes):
    """_exclusive_prod as recorded ops (for a prod's gradient over zeros, where out / x is
    undefined): each group of K elements is repeated K times with one element set to 1, then
    multiplied out. K * K memory, spent only on this path."""
    if not axes:
        return _const(xp_of(x._data).ones(x.shape, x.dtype), x)
    rest = [i for i in range(x.ndim) if i not in axes]
    perm = tuple(rest + list(axes))
    moved = dispatch.apply(Transpose(perm), x)
    lead = tuple(moved.shape[:len(rest)])
    k = int(np.prod(moved.shape[len(rest):], dtype=np.int64))
    eye = xp_of(x._data).eye(k, dtype=x.dtype)
    rep = moved.reshape(lead + (1, k)) * _const(1 - eye, x) + _const(eye, x)
    ex = dispatch.apply(Reduce("prod", len(lead) + 1), rep)
    return dispatch.apply(Transpose(tuple(int(i) for i in np.argsort(perm))),
                          ex.reshape(moved.shape))


def _exclusive_prod(x, axes):
    """For each element, the product of the other elements in its reduction group (no division)."""
    xp = xp_of(x)
    if not axes:
        return xp.ones_like(x)
    if x.size == 0:  # nothing to differentiate (and -1 in the reshape below is ambiguous)
        return xp.zeros_like(x)
    rest = [i for i in range(x.ndim) if i not in axes]
    perm = rest + list(axes)
    moved = x.transpose(perm)
    flat = moved.reshape(moved.shape[:len(rest)] + (-1,))
    ones = xp.ones(flat.shape[:-1] + (1,), x.dtype)
    left = xp.cumprod(xp.concatenate([ones, flat[..., :-1]], axis=-1), axis=-1)
    right = xp.flip(xp.cumprod(xp.concatenate([ones, xp.flip(flat, -1)[..., :-1]], axis=-1), axis=-1), -1)
    return (left * right).reshape(moved.shape).transpose(np.argsort(perm))


# ----- Tensor-level helpers for grad_graph (differentiable, so a backward can be recorded) -----

def _const(a, like):
    """The array ``a`` as an untracked Tensor on ``like``'s device."""
    return dispatch.Tensor._wrap(xp_of(like._data).asarray(a), like._device)


def _swap_last(t):
    axes = tuple(range(t.ndim - 2)) + (t.ndim - 1, t.ndim - 2)
    return dispatch.apply(Transpose(axes), t)


def t_unbroadcast(g, shape):
    """`unbroadcast` on Tensors: ``g`` summed down to ``shape`` with recorded ops."""
    if g.shape == shape:
        return g
    extra = g.ndim - len(shape)
    axes = tuple(range(extra)) + tuple(
        i + extra for i, n in enumerate(shape) if n == 1 and g.shape[i + extra] != 1
    )
    if axes:
        g = dispatch.apply(Reduce("sum", axes, keepdims=True), g)
    return dispatch.apply(Reshape(shape), g)


def t_expand(g, shape):
    """``g`` broadcast to ``shape`` with a recorded op (adding zeros: its gradient sums back)."""
    if g.shape == shape:
        return g
    return g + _const(xp_of(g._data).zeros(shape, g.dtype), g)
