"""Tensor's Python operators (``+``, ``**``, ``==``, ``-x``, numpy's ufuncs on tensors) as engine
ops, with upstream's promotion of Python-scalar operands; installed on `Tensor` when
`megengine.core.tensor` loads (it imports this file after defining the class)."""
import numpy as np

from .. import device as _device_mod
from . import dispatch
from . import dtype as _qd
from ._caller import public_argument
from .dtype_rules import ArgumentTypeError, numpy_scalar_is_weak
from . import ops as _ops
from ._trace_option import is_sym
from .tensor import Tensor

# numpy ufunc -> this engine's op name (`_ops.BINARY` / `_ops.UNARY`), for __array_ufunc__
_UFUNC_OPS = {
    np.add: "add", np.subtract: "sub", np.multiply: "mul", np.true_divide: "truediv",
    np.floor_divide: "floordiv", np.remainder: "mod", np.power: "pow", np.matmul: "matmul",
    np.bitwise_and: "and", np.bitwise_or: "or", np.bitwise_xor: "xor",
    np.left_shift: "lshift", np.right_shift: "rshift", np.equal: "eq", np.not_equal: "ne",
    np.less: "lt", np.less_equal: "le", np.greater: "gt", np.greater_equal: "ge",
    np.maximum: "maximum", np.minimum: "minimum",
    np.negative: "neg", np.absolute: "abs", np.invert: "invert",
}


def _operand(value, like):
    """Turn the other side of an operator into a tensor with upstream's promotion rules.

    Python scalars are weak: they take the tensor's dtype, except that a float meeting an
    integer tensor gives float32, an int meeting a bool tensor gives int32, and a complex
    meeting a real tensor gives its complex counterpart (complex64, complex128 for float64), as
    torch's weak scalars do; an int out of an integer dtype's range takes the smallest integer
    dtype that holds both (uint8 and -2: int16, as upstream's numpy 1 promotion).
    """
    if isinstance(value, Tensor):
        return value
    if value is None:  # Tensor(None) is an empty tensor: x + None would quietly give one
        raise _none_operand()
    if type(value) in (bool, int, float, complex):
        dtype = like.dtype
        if dtype.metadata is not None and _qd.is_quantize(dtype):
            raise _quantized_scalar(value, dtype)
        dtype = _scalar_dtype(type(value), dtype)
        if dtype.kind in "iu" and type(value) is int:
            lo, hi = _int_range(dtype)
            if not lo <= value <= hi:
                dtype = _wider_int(value, dtype)
        xp = _device_mod.get_array_module(like._device)
        if xp is np:
            return Tensor._wrap(xp.asarray(value, dtype=dtype), like._device)
        if dispatch._switcher is not None:  # CuPy allocates on the current GPU: make it the
            with dispatch.on_device(like._device):  # tensor's
                return Tensor._wrap(_gpu_scalar(xp, value, dtype, like._device), like._device)
        return Tensor._wrap(_gpu_scalar(xp, value, dtype, like._device), like._device)
    if is_sym(value):  # a size of a dumpable trace (x / x.shape[0]): an int, made by an op so
        # that a dumped program computes it at the shapes it runs at (core._trace_option)
        dtype = _scalar_dtype(type(value.value), like.dtype)  # (h / 2: typed as a float is)
        return dispatch.apply(_ops.Full((), value, dtype, like._device))
    if isinstance(value, np.generic) and value.dtype.kind in "biufc" and \
            like.dtype.metadata is not None and _qd.is_quantize(like.dtype):
        raise _quantized_scalar(value.item(), like.dtype)  # a numpy number: as a Python one
    if isinstance(value, (np.generic, np.ndarray)) and \
            numpy_scalar_is_weak(like.dtype, value.dtype):
        # (two tensors of those dtypes give float32: float16 + int16, int8 + bool); a numpy
        # array likewise, as upstream's: float16_x + np.array([1, 2]) is float16, int32_x + a
        # bool mask int32
        return Tensor(value, dtype=like.dtype, device=like._device)
    if isinstance(value, np.integer) and value.dtype.itemsize == 8 and \
            value != value.astype(np.int32):
        # Tensor() stores a 64-bit int as int32, as upstream's does; one int32 cannot hold keeps
        # its dtype instead of wrapping (x + np.int64(2 ** 40) added 0; upstream refuses it)
        return Tensor(value, dtype=value.dtype, device=like._device)
    return Tensor(value, device=like._device)


# A Python scalar operand on a GPU (``x * 2``, ``1 - p``, ``x / 255``): a 0-d array on the
# device, whose making is a kernel launch (CuPy fills it), where torch passes the number to the
# op's kernel. A small step on a GPU is bound by the host's work per launch (docs/gpu.rst), so
# each (device, stream, dtype, value) is made once and reused. Safe to share: the operand's
# tensor is made to be one op's input (the operators, F's elementwise functions, where, the
# losses, a value written by ``x[i] = 2.0``), and those ops compute new arrays from their
# inputs: none writes an input or hands one back as its result (``x[...] = 2.0`` copies it
# into x). Keyed by the current stream too: the fill is ordered before any later use on that
# stream. Values by their exact bits (``0.0`` and ``-0.0`` differ, NaN is one key); bounded,
# as a learning rate that changes every step would otherwise add one each step.
_GPU_SCALARS = {}
_GPU_SCALARS_MAX = 1024


def _gpu_scalar(xp, value, dtype, device):
    """A 0-d CuPy array of ``value`` in ``dtype`` on the current GPU (``device``), made once
    per stream (see above): to be read, never written."""
    kind = type(value)
    bits = value.hex() if kind is float else \
        (value.real.hex(), value.imag.hex()) if kind is complex else value
    key = (device, xp.cuda.get_current_stream().ptr, dtype, kind, bits)
    array = _GPU_SCALARS.get(key)
    if array is None:
        if len(_GPU_SCALARS) >= _GPU_SCALARS_MAX:
            _GPU_SCALARS.clear()
        array = _GPU_SCALARS[key] = xp.asarray(value, dtype=dtype)
    return array


def _none_operand():
    """Upstream's TypeError for a None operand (``x + None``), its words kept; where a public
    function got the None (``F.add(x, None)``, ``F.nn.l1_loss(x, None)``) it and the argument
    are named first. (An `ArgumentTypeError`, so also upstream's type where a function's
    conversion of None refuses it: ValueError, RuntimeError.)"""
    func, arg = public_argument(None)
    return ArgumentTypeError(f"{func + ': ' if func else ''}the operand "
                             f"{arg + ' ' if arg else ''}is None and is not supported.")


_INT_RANGE = {}  # integer dtype -> (min, max)


def _int_range(dtype):
    """``(min, max)`` of an integer dtype as Python ints (np.iinfo costs ~0.7 us a call: it is
    asked once per dtype)."""
    lo_hi = _INT_RANGE.get(dtype)
    if lo_hi is None:
        info = np.iinfo(dtype)
        lo_hi = _INT_RANGE[dtype] = (int(info.min), int(info.max))
    return lo_hi


class QuantizedNumberError(TypeError):
    """A Python number next to a quantized tensor (see `_operand`); a float function (``/``,
    ``**``, atan2) catches it and computes on the tensor's values instead."""


def _quantized_scalar(value, dtype):
    """A Python number is a value; a quantized tensor holds integers at a scale, which the
    number would be taken for (``q > 1`` compared the integers with 1)."""
    name = _qd.dtype_name(dtype)
    return QuantizedNumberError(
        f"a Python number ({value!r}) meets a quantized tensor ({name}): the number is a value "
        f"and the tensor holds integers at a scale. Compute on the values, x.astype('float32'), "
        f"or quantize the number to the tensor's dtype first, Tensor({value!r}).astype(x.dtype)")


def _wider_int(value, dtype):
    """The integer dtype that holds ``dtype`` and the Python int ``value`` it cannot (numpy 1's
    value-based rule, which upstream's promotion follows: uint8 < -2 compares in int16)."""
    # (a positive value next to a signed dtype asks for a signed one: -value - 1 has its size)
    signed = value < 0 or dtype.kind == "i"
    if -2 ** 63 <= (-value - 1 if value > 0 and signed else value) < 2 ** 64:
        wide = np.result_type(dtype, np.min_scalar_type(-value - 1 if value > 0 and signed
                                                        else value))
        if wide.kind in "iu":
            return wide
    raise OverflowError(f"the Python integer {value} does not fit an integer dtype with "
                        f"{dtype}; give the {dtype} tensor's operand as a float")


def _scalar_dtype(kind, dtype):
    """The dtype a Python scalar of type ``kind`` takes next to a tensor of ``dtype``."""
    if kind is float and dtype.kind not in "fc":
        return np.dtype(np.float32)
    if kind is int and dtype.kind == "b":
        return np.dtype(np.int32)
    if kind is complex and dtype.kind != "c":
        return np.dtype(np.complex128 if dtype == np.float64 else np.complex64)
    return dtype


def _float_pow_operands(a, b):
    """Upstream computes a power of integer (or bool) tensors in float32: ``Tensor([1, 2]) ** 2``
    is ``[1., 4.]`` (F.pow's and F.nn.square_loss's documented examples); float operands keep
    their dtype (float16 under autocast)."""
    if a.dtype.kind == "f" and b.dtype.kind == "f":  # the usual call: nothing to cast
        return a, b
    return tuple(t.astype(np.float32) if t.dtype.kind in "iub" else t for t in (a, b))


def _binary(op_name, reflected=False):
    op_cls = _ops.BINARY[op_name]
    values = getattr(op_cls, "quantized", None) == "values"  # a float function (see _Binary)

    def method(self, value):  # (upstream's parameter name: expr.named_args, set_arg)
        other = value
        if not isinstance(other, Tensor):  # (two tensors, the usual call: nothing to convert)
            if op_name == "pow" and type(other) in (bool, int) and self.dtype.kind in "iub":
                other = float(other)  # a float constant, not a cast op: the trace sees `x ** 1`
            try:
                other = _operand(other, self)
            except QuantizedNumberError:
                self, other = _values_of(self, other, values)
        a, b = (other, self) if reflected else (self, other)
        if op_name == "pow":
            a, b = _float_pow_operands(a, b)
        return dispatch.apply(op_cls(), a, b)

    if op_name == "matmul":  # (upstream names this operand ``other``)
        binary = method

        def method(self, other):
            return binary(self, other)

    method.__name__ = f"__{'r' if reflected else ''}{op_name}__"
    return method


def _values_of(tensor, number, values):
    """Called while a `QuantizedNumberError` is handled: for a float function (``values``),
    ``tensor``'s values and the Python ``number`` as their operand (q / 2, q ** 2, q /= 2: as
    q / q computes); else that error again."""
    if not values:
        raise  # (the QuantizedNumberError being handled)
    tensor = tensor.astype(np.float32)
    return tensor, _operand(number, tensor)


def _augmented(op_name):
    op_cls = _ops.BINARY[op_name]
    values = getattr(op_cls, "quantized", None) == "values"  # a float function (see _Binary)

    def method(self, value):
        other = value
        if op_name == "pow" and type(other) in (bool, int) and self.dtype.kind in "iub":
            other = float(other)
        try:
            a, b = self, _operand(other, self)
        except QuantizedNumberError:
            a, b = _values_of(self, other, values)
        if op_name == "pow":
            a, b = _float_pow_operands(a, b)
        return self._inplace(dispatch.apply(op_cls(), a, b))

    method.__name__ = f"__i{op_name}__"
    return method


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul",
              "and", "or", "xor", "lshift", "rshift"):
    setattr(Tensor, f"__{_name}__", _binary(_name))
    setattr(Tensor, f"__r{_name}__", _binary(_name, reflected=True))
    setattr(Tensor, f"__i{_name}__", _augmented(_name))
for _name in ("eq", "ne", "lt", "le", "gt", "ge"):
    setattr(Tensor, f"__{_name}__", _binary(_name))


def _unary(op_name):
    op_cls = _ops.UNARY[op_name]

    def method(self):
        return dispatch.apply(op_cls(), self)

    method.__name__ = f"__{op_name}__"
    return method


for _name in ("neg", "abs", "invert"):
    setattr(Tensor, f"__{_name}__", _unary(_name))
Tensor.__pos__ = lambda self: self
