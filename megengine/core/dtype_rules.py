"""Upstream's dtype rules for tensors: the engine array a value becomes (`_as_array`, behind
`megengine.core.tensor.as_array`) and the result dtype of a binary op (`promote_types`)."""
import numpy as np

from .. import device as _device_mod
from . import dtype
from ._caller import argument_prefix

_refuse_on_gpu = dtype.refuse_on_gpu  # (`_as_array`'s argument named dtype hides the module)

# Upstream stores float64 as float32 and 64-bit integers as int32 unless a dtype is asked for.
_NARROW = {np.dtype(np.float64): np.dtype(np.float32), np.dtype(np.int64): np.dtype(np.int32),
           np.dtype(np.uint64): np.dtype(np.int32),
           np.dtype(np.complex128): np.dtype(np.complex64)}  # upstream's complex is complex64
_SUPPORTED_KINDS = "biufc"


class ArgumentTypeError(TypeError, ValueError, RuntimeError):
    """An argument of a type the function cannot take (a list for ``groups``, a string for
    ``eps``, a string or None for a tensor): a TypeError, which is what the mistake is; a
    ValueError, which ``int("x")`` raises, and upstream's one_hot and elementwise functions; a
    RuntimeError, which is what upstream raises where pybind converts it for its C++ op ("Unable
    to cast Python instance") and for a tensor of strings. Caught as any of them."""


class ArgumentKindError(TypeError, AssertionError):
    """An argument of a kind the function does not take where upstream asserts it (a module
    that is no Module, a mode that is no QuantMode, a file that is no file): a TypeError, which
    is what the mistake is, and upstream's AssertionError."""


class DTypeNameError(ValueError, TypeError, RuntimeError):
    """A dtype numpy cannot read (``astype('Float32')``). Upstream's ``astype`` raises
    ValueError for it, numpy a TypeError, upstream's F.zeros, F.ones and F.eye a RuntimeError
    (pybind's "Unable to cast"): this one is caught as any of them."""


def _check_dtype(dtype, what):
    try:
        dtype = np.dtype(dtype)
    except TypeError as e:
        raise DTypeNameError(
            f"{what}: {dtype!r} is not a dtype ({e}); use a dtype name such as 'float32', "
            "'int32' or 'bool', or a numpy type such as np.float32"
        ) from None
    if dtype.kind not in _SUPPORTED_KINDS:
        raise TypeError(
            f"{what}: dtype {dtype} is not supported; use a bool, integer or float dtype "
            "(e.g. 'float32', 'int32')"
        )
    return dtype


def complex_error(what, dtype, problem="it takes real numbers",
                  advice="take F.real / F.imag / F.abs of it first"):
    """The TypeError of an op that refuses a complex tensor (of ``dtype``): one that needs an
    order (max, sort, relu, ``<``), rounding, or a cast that would drop the imaginary part, or a
    float function. Upstream's complex tensors take only a few ops and refuse these too."""
    return TypeError(f"{what}: {problem}, got a complex tensor ({dtype}); {advice}")


def no_order(what, dtype):
    """`complex_error` for an op that compares values."""
    return complex_error(what, dtype, "complex numbers have no order",
                         "compare F.abs(x) or F.real(x) instead")


def is_complex_data(value):
    """Whether ``value`` is complex data that says so: a Python complex, or anything with a
    complex numpy dtype (an array, a numpy scalar, a Tensor). (A list is not looked into.)"""
    return type(value) is complex or getattr(getattr(value, "dtype", None), "kind", None) == "c"


def _torch_data(t):
    """A torch tensor given as a tensor's data: one that requires grad is refused (megengine
    would hold a copy and lose its gradient); a CPU one is numpy's view of it, an array like any
    other from here on (copied as asked, or moved to the device): torch's __array__ takes no
    ``copy`` keyword, so numpy 2 warns (a DeprecationWarning, an error under ``-W error``) when
    asked for a copy through it. A CUDA one is left to the device's array module."""
    if getattr(t, "requires_grad", False):
        # (torch refuses numpy() of it, pointing to detach(), which would lose its gradient)
        raise TypeError(
            "cannot make a megengine tensor from a torch tensor that requires grad: megengine "
            "would hold a copy of its value, and its gradient would be lost. To train through "
            "the torch code that made it, return it as one more output of the PyTorchModule "
            "that runs that code (output_cnt); to use its value alone, pass tensor.detach()")
    if getattr(getattr(t, "device", None), "type", None) != "cpu":
        return t
    try:
        return np.asarray(t)
    except TypeError as e:  # (a dtype numpy lacks: bfloat16)
        raise TypeError(f"cannot make a tensor from {type(t).__name__}: {e}") from None


def _none_at(value):
    """Where a list or tuple holds None, the words saying so: numpy's own message (an
    "inhomogeneous shape", an object dtype) hides it. Programs get there by passing a module's
    ``(output, state)`` result, its state None, where the output was meant."""
    if type(value) in (list, tuple):
        for i, v in enumerate(value):
            if v is None:
                return f"its element {i} is None"
    return ""


def _is_text(value):
    """Whether ``value`` is a string, bytes, or a list or array of them (numbers as text, which
    a tensor of a given dtype parses, as upstream's)."""
    if isinstance(value, (str, bytes)):
        return True
    if isinstance(value, (list, tuple)):
        return bool(value) and all(_is_text(v) for v in value)
    return isinstance(value, np.ndarray) and value.dtype.kind in "US"


def _as_array(value, dtype, device, copy):
    if type(value).__module__.startswith("torch"):
        value = _torch_data(value)
    xp = _device_mod.get_array_module(device)
    if xp is not np:  # a GPU: quantized dtypes stay on the host (their scale is numpy metadata)
        _refuse_on_gpu(np.dtype(dtype) if dtype is not None else getattr(value, "dtype", None),
                       device, f"a tensor on {device}")
    if dtype is not None:
        dtype = _check_dtype(dtype, "tensor")
        if dtype.kind not in "cb" and type(value) in (list, tuple):
            # its values as numpy reads them, to see complex ones (numpy raises its own
            # TypeError for Python complex values, warns and drops numpy complex scalars' and
            # Tensors' imaginary parts)
            value = np.asarray(value)
        if dtype.kind not in "cb" and is_complex_data(value):  # (numpy would only warn)
            raise complex_error("tensor", getattr(value, "dtype", "complex128"),
                                f"storing it as {dtype} would drop the imaginary part",
                                "take F.real / F.imag / F.abs of it first, or ask for "
                                "dtype='complex64'")
        try:
            if dtype.kind == "b" and _is_text(value):  # numpy reads any non-empty string as
                value = np.asarray(value).astype(np.int64)  # True; upstream's int() ("0": False)
            arr = xp.array(value, dtype=dtype, copy=copy) if copy else \
                xp.asarray(value, dtype=dtype)
        except ValueError as e:  # text that is no number ("abc"): numpy's words named nothing
            if not _is_text(value):
                raise
            raise ArgumentTypeError(f"{argument_prefix(value)}cannot make a tensor of dtype "
                                    f"{dtype} from {value!r}: {e}; give numbers") from None
        except OverflowError:
            # numpy 2 refuses Python ints outside an integer dtype's range; upstream wraps them
            # (its guide: Tensor([127, 128, 129], dtype="int8") is [127, -128, -127])
            arr = xp.array(value, dtype=np.int64).astype(dtype)
        if dtype.metadata is not None and arr.dtype.metadata != dtype.metadata:
            # a quantized dtype (its scale is metadata): the values are the stored integers, and
            # numpy keeps an input's own int8 dtype (and its scale) when only metadata differs
            _refuse_other_scale(arr.dtype, dtype)
            arr = arr.view(dtype)
        return _with_tensor_scale(arr)
    # Python data (a list, a tuple, text) is read by numpy on every device (CuPy reads it
    # through numpy too), so its checks and error words are the CPU's; then it moves to the
    # device (CuPy's own words for text or a None name neither)
    host = xp is not np and (type(value) in (list, tuple, str, bytes) or isinstance(
        value, np.ndarray) and value.dtype.kind in "OUSV")
    try:
        arr = np.asarray(value) if host else \
            xp.array(value, copy=copy) if copy else xp.asarray(value)
    except (ValueError, TypeError) as e:
        none = _none_at(value)
        raise ArgumentTypeError(f"{argument_prefix(value)}cannot make a tensor from "
                                f"{type(value).__name__}{f' ({none})' if none else ''}: {e}") \
            from None
    narrow = _NARROW.get(arr.dtype)
    if narrow is not None:
        arr = arr.astype(narrow)
    elif arr.dtype.kind not in _SUPPORTED_KINDS:
        none = _none_at(value)
        raise ArgumentTypeError(
            f"{argument_prefix(value)}cannot make a tensor from data of dtype {arr.dtype} "
            f"({type(value).__name__}"
            f"{'; ' + none if none else ''}); "
            "give numbers, nested lists of numbers or a numeric array"
        )
    if host:
        arr = xp.asarray(arr)
    return _with_tensor_scale(arr)


def _refuse_other_scale(data_dtype, asked):
    """Integers of quantized ``data_dtype`` are not relabelled with another scale (upstream 1.13
    raises too): ``tensor(q.numpy(), dtype=qint8(s))`` takes ``q``'s integers only where their
    scale is ``s`` (as float32, as tensors hold it)."""
    if data_dtype.metadata is None or not dtype.is_quantize(data_dtype) or \
            not dtype.is_quantize(asked) or \
            dtype.tensor_dtype(data_dtype).metadata == dtype.tensor_dtype(asked).metadata:
        return
    raise TypeError(f"tensor: the data is {dtype.dtype_name(data_dtype)}, another quantized "
                    f"dtype than the {dtype.dtype_name(asked)} asked for; convert the values "
                    "with tensor(data).astype(dtype), or pass the stored integers as a plain "
                    "integer array")


def _with_tensor_scale(arr):
    """``arr`` with a quantized dtype's scale rounded to float32, as a tensor holds it
    (`dtype.tensor_dtype`)."""
    if arr.dtype.metadata is None or not dtype.is_quantize(arr.dtype):
        return arr
    return arr.view(dtype.tensor_dtype(arr.dtype))


_PROMOTE_CACHE = {}
_FLOAT32 = np.dtype(np.float32)


def promote_types(a, b):
    """Result dtype of a binary op, as upstream: floats win over ints; the wider float wins;
    float16 meeting another dtype counts as float32, and bools meeting integers give float32
    (upstream's ``dtype_promotion``: ``int8 + float16`` and ``bool + int32`` are float32).
    A complex dtype wins over floats and ints (float32 and complex64 give complex64, float64
    and complex64 complex128), as numpy and torch; casting it to the float would drop the
    imaginary part."""
    key = (a, b)
    r = _PROMOTE_CACHE.get(key)
    if (a.metadata is not None or b.metadata is not None) and _quantized_pair(a, b):
        return a  # one quantized dtype on both sides (numpy's == ignores the metadata)
    if r is None and a != b and np.float16 in (a, b) and "c" not in (a.kind, b.kind):
        r = _PROMOTE_CACHE[key] = promote_types(*(_FLOAT32 if d == np.float16 else d
                                                 for d in (a, b)))
    if r is None:
        if "b" in (a.kind, b.kind) and {a.kind, b.kind} <= {"b", "i", "u"} and a != b:
            r = _FLOAT32  # a bool and an integer: neither holds the other's values
        elif a.kind in "fc" and b.kind not in "fc":
            r = a
        elif b.kind in "fc" and a.kind not in "fc":
            r = b
        else:
            r = np.promote_types(a, b)
            if r == np.float64 and np.float64 not in (a, b):
                r = np.dtype(np.float32)
        _PROMOTE_CACHE[key] = r
    return r


def numpy_scalar_is_weak(dtype, scalar_dtype):
    """Whether a numpy scalar of ``scalar_dtype`` next to a tensor of ``dtype`` takes the
    tensor's dtype, as upstream's (a numpy int or bool next to a float tensor, a numpy bool next
    to an integer one: float16 + np.int16(2) is float16, int8 + np.bool_(True) int8); other
    numpy scalars are typed operands (`promote_types` with their dtype)."""
    return (dtype.kind == "f" and scalar_dtype.kind in "biu") or \
        (dtype.kind in "iu" and scalar_dtype.kind == "b")


def _quantized_pair(a, b):
    """True for two equal quantized dtypes; an error for a quantized dtype meeting another
    dtype (or the same kind with another scale); False when neither is quantized."""
    if not (dtype.is_quantize(a) or dtype.is_quantize(b)):
        return False
    if dtype.is_dtype_equal(a, b):
        return True
    q, other = (a, b) if dtype.is_quantize(a) else (b, a)
    raise TypeError(
        f"an op mixes a quantized tensor ({dtype.dtype_name(q)}) with a tensor of dtype "
        f"{dtype.dtype_name(other)}; quantized tensors take part only in quantized ops "
        "(megengine.functional.quantized, the modules of megengine.module.quantized) and in "
        "ops with tensors of the same quantized dtype: convert first, x.astype('float32') to "
        "dequantize or x.astype(qdtype) to quantize")
