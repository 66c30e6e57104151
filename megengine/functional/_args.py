"""Argument helpers shared by the F.nn op files: tensors, int pairs, float inputs, axes, index ranges."""
import numpy as np

from ..core._caller import public_argument
from ..core._trace_option import as_int, is_dim, is_int
from ..core.dtype import float_value
from ..core.dtype_rules import complex_error, promote_types
from ..core.ops import ArgumentTypeError, AxisError, _size_item
from ..core.tensor import Tensor


def _tensor(x):
    """``x`` as a Tensor: Tensors pass through, numbers, lists and arrays become one. None
    raises, as upstream's functions do (``Tensor(None)`` is an empty tensor, which would have
    flowed on silently: ``F.relu(None)`` an empty result, ``F.sum(None)`` 0), naming the
    function called and the argument (``relu: x is None``; a string says so in `Tensor`)."""
    if isinstance(x, Tensor):
        return x
    if x is None:
        func, arg = public_argument(None)
        raise ArgumentTypeError(
            f"{func + ': ' if func else ''}{arg or 'an input tensor'} is None; pass a Tensor "
            "(or a number, list or array); a function that returned None by mistake is the "
            "usual cause")
    return Tensor(x)


def _bias_widened(dtype, bias):
    """The dtype a float product (linear, convolution) computes in: ``dtype``, or what it
    promotes to with the bias (float16 input and weight with a float32, integer or bool bias
    give float32, as float16 meeting another dtype does), as upstream's product-then-add gives."""
    if bias is not None and bias.dtype != dtype and dtype.kind == "f" and \
            bias.dtype.kind in "fiub":
        return promote_types(dtype, bias.dtype)
    return dtype


def _size(value):
    """A size or count argument (``k``, ``repeats``, a section, an output size) as a Python int,
    or as the int `SymDim` it holds while a dumpable trace records: a size from ``x.shape``, or
    a one-element size tensor, which is what a TracedModule's graph computes from ``x.shape``
    (``GetVarShape(x)[0] // 2``). The op then carries the expression, so a dumped program
    computes it at the shapes it runs at; ``int()`` of either would be a guard. Other Tensors
    are read (a noted host read), as ``int()`` reads them."""
    return value if is_dim(value) else _size_item(value)


def _not_int(value):
    """Whether ``value`` is a string or a float with a fraction, which ``int()`` takes (parsing
    "2", truncating 2.5 to 2) and upstream refuses for an int argument: a string in its own
    words, a float by pybind ("Unable to cast") or by the sizes it makes. (A whole float, 2.0,
    is taken as the int it holds.)"""
    return isinstance(value, (str, bytes)) or \
        isinstance(value, (float, np.floating)) and not float(value).is_integer()


def _int(value, name, what, follows=True):
    """An int argument (a count, a factor, an offset) as a Python int, as `_size` makes it where
    the op ``follows`` a size from ``x.shape`` (it stays an expression in a dumpable trace), else
    as ``int()`` makes it (which guards such a size: the op is built from its value); what
    ``int()`` refuses (a list, None) or would misread (`_not_int`) raises, naming ``what`` and
    ``name``, where ``int()``'s own words named neither."""
    if type(value) is int:
        return value
    try:
        if _not_int(value):
            raise TypeError
        return _size(value) if follows else int(value)
    except (TypeError, ValueError):
        raise ArgumentTypeError(f"{what}: {name} must be an int, got {value!r}") from None


def _int_pair(value, name, what):
    """An int or a pair of ints as a (h, w) tuple of Python ints (`_not_int` values raise)."""
    if isinstance(value, Tensor):
        value = value.numpy().tolist()
    if is_int(value) or isinstance(value, (float, np.floating)) and not _not_int(value):
        # (a size of a dumpable trace, F.max_pool2d(x, x.shape[2] // 4): its value, a guard;
        # a whole float, F.max_pool2d(x, 2.0): the int it holds, as upstream's int() reads it)
        return int(value), int(value)
    try:
        h, w = value
        if type(h) is int and type(w) is int:  # (the usual pair: no further test)
            return h, w
        if _not_int(h) or _not_int(w):
            raise TypeError
        return int(h), int(w)
    except (TypeError, ValueError):
        raise ArgumentTypeError(f"{what}: {name} must be an int or a pair of ints, got "
                                f"{value!r}") from None


def _real(value, name, what):
    """A real-number argument (``eps``) as a Python float; a string (also one that reads as a
    number), a sequence or None raises, naming ``what`` and ``name``."""
    if type(value) is float:  # the usual call (batch norm's momentum, every call), at once
        return value
    if not isinstance(value, (str, bytes)):
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    raise ArgumentTypeError(f"{what}: {name} must be a number, got {value!r}")


def _as_float(x, what="this function"):
    """Integer input of a float function is computed in float32, as upstream does; complex input
    raises (a cast would drop its imaginary part), naming ``what``: a name, or the op, whose
    ``what`` attribute is the public function it serves (else its class name says it). An op
    that is ``holomorphic`` (sigmoid, silu: see `Op`) takes complex input as it is. A quantized
    input gives its real values (upstream's float32 cast dequantizes)."""
    if x.dtype.kind == "f":
        return x
    if x.dtype.kind == "c":
        if getattr(what, "holomorphic", False):
            return x
        if not isinstance(what, str):
            what = getattr(what, "what", None) or type(what).__name__.lstrip("_").lower()
        raise complex_error(what, x.dtype)
    return x.astype(np.float32) if isinstance(x, Tensor) else float_value(x)


def _astype_real(t, dtype, what):
    """Tensor ``t`` cast to the real ``dtype`` for the function ``what``; a complex ``t``
    raises, naming ``what`` (the cast would drop its imaginary part)."""
    if t.dtype.kind == "c":
        raise complex_error(what, t.dtype)
    return t.astype(dtype)


# signed integer dtype -> the unsigned one of its width (unsigned dtypes map to themselves)
_UNSIGNED = {np.dtype(f"int{b}"): np.dtype(f"uint{b}") for b in (8, 16, 32, 64)}
_UNSIGNED.update({u: u for u in list(_UNSIGNED.values())})


def _out_of_range(indices, n):
    """Whether any of the integer array ``indices`` lies outside [0, n), in one reduction: seen
    as unsigned, negatives wrap to huge values, so a single max checks both ends (on a GPU that
    is one kernel and one device-to-host sync; the comparison is the host's, on the maximum
    read back, not a second kernel)."""
    if not indices.size:
        return False
    unsigned = _UNSIGNED.get(indices.dtype)
    if unsigned is None:  # not a fixed-width integer: compare both ends
        return bool(indices.min() < 0 or indices.max() >= n)
    return int(indices.view(unsigned).max()) >= n


def _renamed(func, name, value, old_name, old_value):
    """The argument given as ``name`` or as its older name ``old_name`` (exactly one of them)."""
    if (value is None) == (old_value is None):
        raise TypeError(f"{func}() missing argument {name!r} (also accepted as {old_name!r})"
                        if value is None else
                        f"{func}() got {name!r} and its older name {old_name!r}; pass one")
    return old_value if value is None else value
