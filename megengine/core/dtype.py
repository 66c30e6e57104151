"""Quantized dtypes (upstream's ``megengine.core.tensor.dtype``): numpy integer dtypes that carry
their scale (and zero point) as metadata, the conversions between them and float, and the op that
casts a tensor to or from one.

A quantized dtype is ``np.dtype("int8", metadata={"mgb_dtype": {"name": "QuantizedS8", "scale":
s}})``, exactly as upstream builds it: ``qint8(s)``, ``quint8(s, zero_point)``, ``qint32(s)``,
``qint4``/``quint4``/``qint1``. A tensor of such a dtype stores the integers; the real value of an
element ``q`` is ``(q - zero_point) * scale``. numpy keeps the metadata through copies, views,
reshapes, transposes and indexing, so those need no code here; numpy's equality ignores it
(``qint8(0.5) == np.int8``), so code that compares dtypes must use :func:`is_dtype_equal`.

A tensor holds its quantized dtype's scale rounded to float32, as upstream's C++ dtypes do
(:func:`tensor_dtype`): ``x.astype(qint8(0.1)).dtype`` has scale 0.10000000149011612.

Rounding: ``Tensor.astype(qdtype)`` computes in float32 what upstream's x86 kernels compute
(:func:`quantize_array`, :func:`requantize`): ``value * (1 / scale)`` (4-bit dtypes: ``value /
scale``), halves away from zero; the numpy helpers ``convert_to_*`` use ``np.round`` (halves
to even) on ``value / scale``, as upstream's Python helpers do.
"""
import re
from collections import namedtuple
from typing import Union

import numpy as np

from .dispatch import Op, xp_of

__all__ = [
    "QuantDtypeMeta", "create_quantized_dtype", "quint8", "qint8", "qint32", "quint4", "qint4",
    "qint1", "get_scale", "get_zero_point", "is_quantize", "is_dtype_equal", "get_dtype_bit",
    "is_differentible_dtype", "convert_to_quint8", "convert_from_quint8", "convert_to_qint8",
    "convert_from_qint8", "convert_to_qint32", "convert_from_qint32", "convert_to_quint4",
    "convert_from_quint4", "convert_to_qint4", "convert_from_qint4", "convert_to_qint1",
    "convert_from_qint1", "dtype_name",
]


class QuantDtypeMeta(namedtuple("QuantDtypeMeta",
                                ["name", "cname", "np_dtype_str", "qmin", "qmax", "is_unsigned"])):
    """What a quantized dtype is: its integer range ``[qmin, qmax]``, the numpy storage type
    and upstream's C name (``cname``, the ``name`` in a quantized dtype's metadata; None for a
    meta that only drives fake quantization). Observers and fake quantizers read
    ``qmin``/``qmax`` from it; :func:`create_quantized_dtype` makes the numpy dtype.

    A custom one (e.g. ``QuantDtypeMeta("qint6", None, "int8", -32, 31)``) works for QAT.
    Copies are the object itself, so ``is`` comparisons survive ``deepcopy``.
    """

    __module__ = "megengine.core.tensor.dtype"  # its home in upstream, where pickles find it

    def __new__(cls, name: str, cname, np_dtype_str: str, qmin: int, qmax: int,
                is_unsigned: bool = None):
        if not isinstance(np_dtype_str, str):
            raise TypeError(f"QuantDtypeMeta {name!r}: np_dtype_str must be a str such as "
                            f"'int8', got {np_dtype_str!r}")
        if qmin > qmax:
            raise ValueError(f"QuantDtypeMeta {name!r}: qmin ({qmin}) exceeds qmax ({qmax})")
        if is_unsigned is None:
            is_unsigned = np_dtype_str[0] == "u"
        meta = super().__new__(cls, name, cname, np_dtype_str, qmin, qmax, is_unsigned)
        # a built-in meta is one object (FakeQuantize and PassiveObserver compare with ``is``),
        # also when a pickle (upstream's or this fork's) makes it again
        builtin = globals().get("_builtin_quant_dtypes", {}).get(name)
        return builtin if builtin == meta and type(builtin) is cls else meta

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    def __reduce__(self):
        # as upstream pickles it (a built-in meta unpickles as the built-in object: `__new__`)
        return QuantDtypeMeta, tuple(self)


def _builtin_quant_dtype(name):  # (what pickles of earlier versions of this fork call)
    return _builtin_quant_dtypes[name]


# Upstream's built-in quantized dtypes (the names qconfigs and observers accept as strings).
_builtin_quant_dtypes = {
    "quint8": QuantDtypeMeta("quint8", "Quantized8Asymm", "uint8", 0, 255),
    "qint8": QuantDtypeMeta("qint8", "QuantizedS8", "int8", -128, 127),
    "qint8_narrow": QuantDtypeMeta("qint8_narrow", "QuantizedS8", "int8", -127, 127),
    "quint4": QuantDtypeMeta("quint4", "Quantized4Asymm", "uint8", 0, 15),
    "qint4": QuantDtypeMeta("qint4", "QuantizedS4", "int8", -8, 7),
    "qint1": QuantDtypeMeta("qint1", "QuantizedS1", "int8", 0, 1),
    "qint32": QuantDtypeMeta("qint32", "QuantizedS32", "int32", -(2 ** 31), 2 ** 31 - 1),
    "quint2": QuantDtypeMeta("quint2", None, "uint8", 0, 3),
    "qint2": QuantDtypeMeta("qint2", None, "int8", -2, 1),
}

# cname -> the meta a quantized dtype's metadata names (its full integer range)
_meta_by_cname = {m.cname: m for k, m in _builtin_quant_dtypes.items()
                  if m.cname is not None and not k.endswith("_narrow")}


def create_quantized_dtype(dtype_meta: QuantDtypeMeta, scale: float, zp: Union[int, None]):
    """The numpy dtype upstream gives a quantized tensor: ``np_dtype_str`` with the scale (and,
    for unsigned dtypes, the zero point) in its ``metadata["mgb_dtype"]``. Signed dtypes are
    symmetric and refuse a zero point, unsigned ones need an integer one in range."""
    if dtype_meta.cname is None:
        raise ValueError(f"dtype {dtype_meta.name} has no cname: it cannot describe a "
                         "quantized tensor, only drive fake quantization")
    if scale is None:
        raise ValueError(f"{dtype_meta.name}: scale is None; a quantized dtype needs a scale "
                         "(run the observer, or give the scale)")
    info = {"name": dtype_meta.cname, "scale": float(scale)}
    if dtype_meta.is_unsigned:
        if zp is None or int(zp) != zp:
            raise ValueError(f"{dtype_meta.name}: zero_point should be an integer, got {zp!r}")
        if not dtype_meta.qmin <= int(zp) <= dtype_meta.qmax:
            raise ValueError(f"zero_point should be within [{dtype_meta.qmin}, "
                             f"{dtype_meta.qmax}] for {dtype_meta.name}, got {zp}")
        info["zero_point"] = int(zp)
    elif zp is not None:
        raise ValueError(f"'{dtype_meta.name}' only supports symmetric quantization, "
                         f"zero_point should be None, but actually got '{zp}'")
    return np.dtype(dtype_meta.np_dtype_str, metadata={"mgb_dtype": info})


def quint8(scale, zero_point):
    """Unsigned 8-bit quantized dtype: real value ``scale * (q - zero_point)``."""
    return create_quantized_dtype(_builtin_quant_dtypes["quint8"], scale, zero_point)


def qint8(scale):
    """Signed 8-bit quantized dtype: real value ``scale * q``."""
    return create_quantized_dtype(_builtin_quant_dtypes["qint8"], scale, None)


def qint32(scale):
    """Signed 32-bit quantized dtype (accumulators, biases): real value ``scale * q``."""
    return create_quantized_dtype(_builtin_quant_dtypes["qint32"], scale, None)


def quint4(scale, zero_point):
    """Unsigned 4-bit quantized dtype (stored in uint8, values 0..15)."""
    return create_quantized_dtype(_builtin_quant_dtypes["quint4"], scale, zero_point)


def qint4(scale):
    """Signed 4-bit quantized dtype (stored in int8, values -8..7)."""
    return create_quantized_dtype(_builtin_quant_dtypes["qint4"], scale, None)


def qint1(scale):
    """1-bit quantized dtype (stored in int8, values 0..1)."""
    return create_quantized_dtype(_builtin_quant_dtypes["qint1"], scale, None)


def _info(dtype):
    md = getattr(dtype, "metadata", None)
    return md.get("mgb_dtype") if md else None


def is_quantize(dtype) -> bool:
    """Whether ``dtype`` is a quantized dtype (carries a scale in its metadata)."""
    info = _info(np.dtype(dtype)) if dtype is not None else None
    return info is not None and info.get("name") in _meta_by_cname


def quant_meta(dtype) -> QuantDtypeMeta:
    """The built-in QuantDtypeMeta a quantized numpy dtype belongs to (None if not quantized)."""
    info = _info(dtype)
    return None if info is None else _meta_by_cname.get(info.get("name"))


class NotQuantizedError(ValueError, RuntimeError):
    """``get_scale`` / ``get_zero_point`` of a dtype without that parameter (a RuntimeError
    too, which upstream's raise)."""


def get_scale(dtype) -> float:
    """The scale of a quantized dtype; an error names the dtype when it has none."""
    info = _info(np.dtype(dtype))
    if info is None or "scale" not in info:
        raise NotQuantizedError(f"get_scale: dtype {dtype} is not a quantized dtype (make one "
                                "with megengine.core.tensor.dtype.qint8(scale) and "
                                "x.astype(it))")
    return info["scale"]


def get_zero_point(dtype) -> int:
    """The zero point of an asymmetric (unsigned) quantized dtype; an error for others."""
    info = _info(np.dtype(dtype))
    if info is None or "zero_point" not in info:
        raise NotQuantizedError(f"get_zero_point: dtype {dtype} has no zero point (only quint8 "
                                "and quint4 dtypes are asymmetric)")
    return info["zero_point"]


def _zero_point(dtype):
    return _info(dtype).get("zero_point", 0)


def is_dtype_equal(dt0, dt1) -> bool:
    """Equality that sees the quantization parameters (numpy's ``==`` ignores them)."""
    dt0, dt1 = np.dtype(dt0), np.dtype(dt1)
    return dt0 == dt1 and _info(dt0) == _info(dt1)


def get_dtype_bit(dtype_name: str) -> int:
    """Bits of a dtype named like ``"int8"``/``"qint4"`` (``"bool"`` is 1)."""
    if dtype_name == "bool":
        return 1
    numbers = re.findall(r"\d+", dtype_name)
    if len(numbers) != 1:
        raise ValueError(f"get_dtype_bit: cannot tell the bits of {dtype_name!r}")
    return int(numbers[0])


def is_differentible_dtype(dtype) -> bool:
    """Whether gradients flow through a tensor of ``dtype`` (float16/float32)."""
    return dtype == np.float32 or dtype == np.float16


def dtype_name(dtype) -> str:
    """``"qint8(0.5)"``, ``"quint8(0.1, 128)"``, or numpy's name for a plain dtype."""
    meta = quant_meta(dtype)
    if meta is None:
        return str(dtype)
    info = _info(dtype)
    if meta.is_unsigned:
        return f"{meta.name}({info['scale']:g}, {info['zero_point']})"
    return f"{meta.name}({info['scale']:g})"


# ----- numpy helpers (upstream's convert_to_* / convert_from_*: np.round, halves to even) -----

def _check_kind(dtype, meta, what):
    if quant_meta(dtype) is not meta:
        raise ValueError(f"{what}: dtype should be a {meta.name} dtype "
                         f"(megengine.core.tensor.dtype.{meta.name}(...)), got {dtype_name(dtype)}")


def _convert_to(arr, dtype, meta, what):
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"{what}: arr should be a numpy ndarray, got {type(arr).__name__}")
    dtype = np.dtype(dtype)
    _check_kind(dtype, meta, what)
    info = _info(dtype)
    q = np.round(arr / info["scale"]) + info.get("zero_point", 0)
    if q.dtype.kind == "f":  # clip in float64: float32 has no 2**31 - 1 (it would wrap qint32)
        q = q.astype(np.float64)
    return q.clip(meta.qmin, meta.qmax).astype(dtype)


def _convert_from(arr, meta, what):
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"{what}: arr should be a numpy ndarray, got {type(arr).__name__}")
    _check_kind(arr.dtype, meta, what)
    info = _info(arr.dtype)
    return (arr.astype(np.float32) - info.get("zero_point", 0)) * info["scale"]


def _converters(name):
    meta = _builtin_quant_dtypes[name]

    def to(arr: np.ndarray, q: np.dtype):
        return _convert_to(arr, q, meta, f"convert_to_{name}")

    def back(arr: np.ndarray):
        return _convert_from(arr, meta, f"convert_from_{name}")

    to.__name__, back.__name__ = f"convert_to_{name}", f"convert_from_{name}"
    to.__doc__ = f"Quantize a float numpy array to a {name} one (``q`` gives the scale)."
    back.__doc__ = f"Dequantize a {name} numpy array to float32."
    return to, back


convert_to_quint8, convert_from_quint8 = _converters("quint8")
convert_to_qint8, convert_from_qint8 = _converters("qint8")
convert_to_qint32, convert_from_qint32 = _converters("qint32")
convert_to_quint4, convert_from_quint4 = _converters("quint4")
convert_to_qint4, convert_from_qint4 = _converters("qint4")
convert_to_qint1, convert_from_qint1 = _converters("qint1")


# ----- arrays: what the kernels share -----

def round_half_away(xp, x):
    """C's ``round`` (halves away from zero), what upstream's quantizing kernels use."""
    t = xp.trunc(x)
    return xp.where(xp.abs(x - t) >= 0.5, t + xp.sign(x), t)


_HOST_ONLY = ("quantized tensors are supported on CPU devices only here (the scale lives in the "
              "numpy dtype's metadata); run the quantized network on 'cpu0' (tensor.to('cpu0'), "
              "or load it with map_location='cpu0')")


def require_host(a, what):
    """Quantized arrays are numpy arrays: their scale is the numpy dtype's metadata, which this
    fork has not verified CuPy to keep. A CUDA array gets an error naming the fix."""
    if type(a) is not np.ndarray and not isinstance(a, np.generic):  # (numpy arithmetic on
        raise TypeError(f"{what}: {_HOST_ONLY}")  # a 0-d array gives a numpy scalar)


def refuse_on_gpu(dtype, device, what):
    """Refuse to put an array of quantized ``dtype`` on GPU ``device`` (a canonical name): CuPy
    might keep the integers and drop the scale, and the tensor would then pass for plain int8."""
    if device[0] == "g" and getattr(dtype, "metadata", None) is not None and is_quantize(dtype):
        raise TypeError(f"{what}: {_HOST_ONLY}")


def dequantize_array(a):
    """float32 real values of a quantized array: ``(q - zero_point) * scale``, in float32."""
    require_host(a, "dequantize")
    info = _info(a.dtype)
    zp = info.get("zero_point", 0)
    f = a.astype(np.float32)
    if zp:  # (in place: arithmetic on a 0-d array gives a numpy scalar, which the kernels
        f -= np.float32(zp)  # that take an array, ATen's through the bridge, refuse)
    f *= np.float32(info["scale"])
    return f


def float_value(a):
    """Integer array ``a`` as float32 for a function that computes in float: a quantized array's
    real values, any other integers as they are. (Upstream casts the integer inputs of its float
    modes, true division, exp, log, pow, sigmoid, ..., and of ``mean``, to float32, and that cast
    of a quantized tensor dequantizes: ``F.exp(q)`` is the exp of ``q``'s values.)"""
    if a.dtype.metadata is not None and is_quantize(a.dtype):
        return dequantize_array(a)
    return a.astype(np.float32)


def stored(a):
    """A quantized array's stored integers as a plain integer array (a view)."""
    return a.view(np.dtype(a.dtype.str))


def saturated(acc, dtype):
    """Integer array ``acc`` (stored integers of ``dtype``'s scale, computed wider) clipped to
    ``dtype``'s range, as ``dtype``."""
    meta = quant_meta(dtype)
    xp = xp_of(acc)
    return _typed(xp, xp.clip(acc, meta.qmin, meta.qmax), dtype)


def no_quantized_form(what, dtype):
    """The TypeError for a quantized input of an op whose result on the stored integers is not
    the values' result (``q * q`` has the scale squared): say how to compute on the values or
    stay quantized."""
    return TypeError(
        f"{what}: the input is quantized ({dtype_name(dtype)}) and {what} has no quantized form "
        "(computing on the stored integers would not give the values' result). Compute on the "
        "values, x.astype('float32'), and quantize the result with .astype(qdtype) if needed; "
        "or use the quantized element-wise module, megengine.module.quantized.Elemwise "
        "(F.elemwise._elemwise_multi_type: QADD, QMUL, QFUSE_ADD_RELU, ...)")


def refuse_quantized(what, *tensors):
    """Raise `no_quantized_form` for the first quantized one of ``tensors`` (arrays or Tensors):
    for a function that has no quantized form, a product such as einsum or a convolution."""
    for t in tensors:
        if t.dtype.metadata is not None and is_quantize(t.dtype):
            raise no_quantized_form(what, t.dtype)


# the quantized kinds whose conversions upstream 1.13's x86 kernels vectorize (TypeCvt, the
# requantization of ConvBias and ElemwiseMultiType): float -> quantized multiplies by the
# reciprocal of the scale; its 4-bit (and 1-bit) kinds divide by the scale (both measured)
_VECTORIZED = ("QuantizedS8", "Quantized8Asymm", "QuantizedS32")


def tensor_dtype(dtype):
    """``dtype`` as a tensor holds it: a quantized dtype's scale rounded to float32, as upstream's
    C++ dtypes store it (``x.astype(qint8(0.1)).dtype`` has scale 0.10000000149011612, while
    ``qint8(0.1)`` itself keeps 0.1)."""
    info = _info(dtype)
    if info is None or "scale" not in info:  # (not quantized: as it is)
        return dtype
    scale32 = float(np.float32(info["scale"]))
    if scale32 == info["scale"]:
        return dtype
    return np.dtype(dtype.str, metadata={"mgb_dtype": dict(info, scale=scale32)})


def vector_part(xp, shape, block, rows=1):
    """Which elements of an array of ``shape`` upstream's x86 kernels handle with vector code
    (a boolean array): the array (C order) is ``rows`` equal rows, and in each row the whole
    blocks of ``block`` elements from its start are vector code, the elements after the last
    whole block scalar code (measured)."""
    size = int(np.prod(shape))
    width = size // rows if rows else 0
    cols = xp.arange(width) < width - width % block
    return xp.broadcast_to(cols, (rows, width)).reshape(shape)


def round_as_kernel(v, block, rows=1):
    """Float32 array ``v`` rounded half away from zero as upstream's x86 kernels round it: the
    vector code (`vector_part`) as ``trunc(v +- 0.5)`` in float32, which also takes 0.49999997
    up to 1 and an odd integer between 2**23 and 2**24 up by one; the scalar code as C's
    ``round`` (measured)."""
    xp = xp_of(v)
    v = xp.asarray(v)
    vector = xp.trunc(v + xp.copysign(np.float32(0.5), v))
    return xp.where(vector_part(xp, v.shape, block, rows), vector, round_half_away(xp, v))


def _quantized(xp, q, dtype):
    """Rounded values ``q`` (float) plus ``dtype``'s zero point, saturated to its range, as a
    tensor's array of ``dtype`` (`tensor_dtype`). NaN becomes the lowest integer (upstream 1.13
    measured: -128 for qint8, 0 for quint8, -2**31 for qint32)."""
    meta = quant_meta(dtype)
    zp = _info(dtype).get("zero_point", 0)
    if zp:
        q = q + zp
    if meta.qmax > 2 ** 24:
        # (qint32: float32 rounds its bound 2**31 - 1 up to 2**31, which the cast wraps to
        # -2**31, as upstream's kernel does with any value past the top; float64 holds the
        # bounds exactly, so a value beyond them saturates)
        q = q.astype(np.float64)
    q = xp.where(xp.isnan(q), meta.qmin, xp.clip(q, meta.qmin, meta.qmax))
    return _typed(xp, q, tensor_dtype(dtype))


def quantize_array(x, dtype, by_division=False, block=8, rows=1):
    """Float (or integer) array ``x`` quantized to ``dtype`` in float32 as upstream's kernels
    compute it: ``round(x * (1 / scale))`` for 8- and 32-bit dtypes, rounded in blocks of
    ``block`` in each of ``rows`` rows (`round_as_kernel`; upstream's TypeCvt from float32:
    blocks of 8 over the whole array); ``round(x / scale)``, halves away from zero, for 4-bit
    ones and with ``by_division`` (upstream's generic element-wise kernels); plus the zero
    point, saturated (`_quantized`)."""
    require_host(x, f"quantize to {dtype_name(dtype)}")
    xp = xp_of(x)
    if x.dtype != np.float32:
        x = x.astype(np.float32)
    scale = np.float32(_info(dtype)["scale"])
    if by_division or quant_meta(dtype).cname not in _VECTORIZED:
        return _quantized(xp, round_half_away(xp, x / scale), dtype)
    return _quantized(xp, round_as_kernel(x * (np.float32(1) / scale), block, rows), dtype)


def requantize(a, dtype):
    """Quantized array ``a`` converted to quantized ``dtype`` as upstream 1.13's TypeCvt
    (measured): between 8- and 32-bit dtypes, the integers (zero point removed) times one
    float32 ratio of the scales, rounded in blocks of 32 (an 8-bit source) or 8 (qint32); the
    ratio is ``src / dst``, or ``src * (1 / dst)`` where quint8 is the source, or the target
    of a qint8 source. From or to a 4-bit dtype, the float32 value divided by the target's
    scale, rounded half away from zero."""
    src, dst = quant_meta(a.dtype).cname, quant_meta(dtype).cname
    if src not in _VECTORIZED or dst not in _VECTORIZED:
        return quantize_array(dequantize_array(a), dtype, by_division=True)
    info = _info(a.dtype)
    sa, sb = np.float32(info["scale"]), np.float32(_info(dtype)["scale"])
    if src == "Quantized8Asymm" or (src == "QuantizedS8" and dst == "Quantized8Asymm"):
        ratio = sa * (np.float32(1) / sb)
    else:
        ratio = sa / sb
    ints = stored(a).astype(np.float32)
    if info.get("zero_point", 0):
        ints -= np.float32(info["zero_point"])
    block = 8 if src == "QuantizedS32" else 32
    return _quantized(xp_of(a), round_as_kernel(ints * ratio, block), dtype)


def _typed(xp, a, dtype):
    """``a.astype(dtype)`` as an array: arithmetic on a 0-d array gives a numpy scalar, whose
    astype drops the metadata a quantized dtype keeps its scale in."""
    return xp.asarray(a).astype(dtype)


def requantize_array(acc, acc_scale, dtype, relu=False):
    """Integer accumulator ``acc`` (real value ``acc * acc_scale``) as ``dtype``: a qint32
    target of the same scale (or None) keeps the integers exactly; a float one gets the real
    values; another quantized one, what upstream's TypeCvt from qint32 gives (`requantize`)."""
    xp = xp_of(acc)
    if relu:
        acc = xp.maximum(acc, 0)
    if dtype is None:
        return _typed(xp, acc, tensor_dtype(qint32(acc_scale)))
    dtype = np.dtype(dtype)
    meta = quant_meta(dtype)
    if meta is None:  # a float output: the real values
        return (acc.astype(np.float32) * np.float32(acc_scale)).astype(dtype)
    if meta.cname == "QuantizedS32" and np.float32(_info(dtype)["scale"]) == acc_scale:
        return _typed(xp, xp.clip(acc, meta.qmin, meta.qmax), tensor_dtype(dtype))
    meta32 = _builtin_quant_dtypes["qint32"]
    acc32 = _typed(xp, xp.clip(acc, meta32.qmin, meta32.qmax), qint32(acc_scale))
    return requantize(acc32, dtype)


class QuantizedCast(Op):
    """``Tensor.astype`` where either side is quantized: float -> quantized rounds and
    saturates (`quantize_array`), quantized -> float dequantizes, quantized -> quantized
    scales the integers as upstream's TypeCvt (`requantize`). No gradient flows through it:
    quantized tensors are for inference (upstream's quantized modules refuse training)."""

    def __init__(self, dtype):
        self.dtype = dtype

    def forward(self, x):
        src, dst = quant_meta(x.dtype), quant_meta(self.dtype)
        if dst is None:
            # (an array, also from a 0-d x: numpy's scalar would pass for the quantized input's
            # own type in dispatch's _array)
            return np.asarray(dequantize_array(x)).astype(self.dtype, copy=False)
        if src is not None:
            return requantize(x, self.dtype)
        return quantize_array(x, self.dtype)

    def backward(self, g):
        return None
