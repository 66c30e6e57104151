"""Reading upstream MegEngine's binary ``.mge`` graph files (what upstream 1.13's ``trace.dump``
writes: FlatBuffers, file identifier ``mgv2``, ``model_version`` 2 or 1, optionally after the
test cases' header of ``input_data``; and its older format, the default of releases before
1.13 and 1.13's ``dump_format="FBS"``: ``MGBC``, the values, FlatBuffers of schema ``mgb1``)
as a program of this fork.

`read_upstream` decodes the file with a small FlatBuffers reader (`_Table`: root offset,
vtables, scalars, strings, vectors, union members), then runs upstream's operators, one entry
of `_OPERATORS` each, as this fork's functional calls inside a `trace`, and dumps that trace
in memory (`dump.in_memory`, no archive written and read back): the result is the
(graph.json, arrays) pair of a file of this fork, so every loader
(`megengine.jit.dump.load`, `Network.load`, ``load_graph``, ``comp_graph_tools``,
``load_network_and_run``, ``megenginelite``) reads upstream's files through `read_file`.

Shapes computed inside upstream's graph (``GetVarShape`` -> ``Subtensor`` -> ``Concat`` ->
``Reshape``, as ``trace(symbolic=True)`` dumps them) are computed here on the traced sizes, so
the program runs at other input sizes (another batch) as upstream's does.

Quantized networks (upstream's ``quantize_qat`` + ``quantize``, then ``trace.dump``) run on this
fork's quantized kernels (`megengine.functional.quantized`, the quantized dtypes of
`megengine.core.dtype`): a value's dtype (qint8, quint8, qint32) takes the scale and zero
point of its ``LinearQuantizationParam``, and an operator's output dtype, the scale its
result is requantized to, is the ``output_dtype`` the file gives it (ConvBias,
ElemwiseMultiType's quantized modes, ConvolutionBackwardData).

What a file holds that this reader does not provide (an operator type, a parameter value such
as a layout other than NCHW and the channel-blocked NCHW4 / NCHW44 / NCHW44_DOT / NCHW88 of
upstream's deployment dumps, a 4-bit quantized dtype) raises `UpstreamFormatError` at load time,
naming the operator and what to do; nothing is guessed.

The layout of the tables (field order, enum values, defaults) follows upstream's published
FlatBuffers schema (``schema_v2.fbs``, ``schema.fbs`` for ``mgb1``, whose operators hold the
same param tables, ``opr_param_defs.fbs``, ``dtype.fbs``); operator type
ids are upstream's ``XXHash64`` (seed 20160701) of the registered name (`_type_ids`).
"""
import io
import math
import operator
import pickle
import struct

import numpy as np

from ..core._imperative_rt.ops import NO_AXIS as _NO_AXIS  # (OptionalAxisV1's "no axis")
from ..core._trace_option import SymDim, is_int, sym_max
from .dump_format import LoadError

__all__ = ["UpstreamFormatError", "is_upstream", "read_upstream"]


class UpstreamFormatError(LoadError):
    """An upstream ``.mge`` file this fork cannot read (its format, an operator, a value): a
    ValueError, and a RuntimeError as upstream's loader raises for a file it cannot read."""


_WHAT_TO_DO = ("re-dump the model with upstream MegEngine 1.13's trace.dump defaults "
               "(dump_format=None, model_version=2), or trace and dump it with this fork")


# upstream's formats this reader recognizes but does not read -> what wrote them
_OTHER_FORMATS = {
    "mgb1": "upstream's older FlatBuffers schema without the header and the values that "
            "files of dump_format='FBS' hold (which start with MGBC and are read)",
}


def is_upstream(data):
    """The upstream format ``data`` (a file's first bytes) is in ("mgv2", "mgb1", "MGBC"), or
    None."""
    if data[:8] == b"mgbtest0":  # (the model follows its test cases' count)
        return is_upstream(data[12:])
    if data[8:12] == b"mgv2" or data[4:8] == b"mgv2":
        return "mgv2"
    if data[4:8] == b"mgb1":  # (FlatBuffers' file identifier, after the root offset)
        return "mgb1"
    if data[:4] == b"MGBC":
        return "MGBC"
    return None


# --------------------------------------------------------------------------------------------
# FlatBuffers
# --------------------------------------------------------------------------------------------
class _Table:
    """A FlatBuffers table at ``pos`` of ``buf``; fields are read by their index in the schema
    (a union field takes two indices: its type, then its value)."""

    def __init__(self, buf, pos):
        self.buf, self.pos = buf, pos
        vtable = pos - self._unpack("<i", pos)
        size = self._unpack("<H", vtable)
        self.offsets = [self._unpack("<H", vtable + 4 + 2 * i) for i in range((size - 4) // 2)]

    def _unpack(self, fmt, pos):
        if not 0 <= pos <= len(self.buf) - struct.calcsize(fmt):
            raise UpstreamFormatError("load: the upstream .mge file is truncated or corrupt "
                                      f"(a reference to byte {pos} of {len(self.buf)})")
        return struct.unpack_from(fmt, self.buf, pos)[0]

    def _field(self, i):
        return self.offsets[i] if i < len(self.offsets) else 0

    def scalar(self, i, fmt, default=0):
        o = self._field(i)
        return self._unpack("<" + fmt, self.pos + o) if o else default

    def _target(self, i):
        o = self._field(i)
        if not o:
            return None
        p = self.pos + o
        return p + self._unpack("<I", p)

    def table(self, i):
        p = self._target(i)
        return None if p is None else _Table(self.buf, p)

    def bytes(self, i):
        p = self._target(i)
        if p is None:
            return None
        n = self._unpack("<I", p)
        self._unpack("B", p + 3 + n) if n else None  # (bounds check)
        return bytes(self.buf[p + 4:p + 4 + n])

    def string(self, i):
        b = self.bytes(i)
        return None if b is None else b.decode("utf-8", "replace")

    def _refs(self, i):
        """The positions a vector of tables or strings refers to."""
        p = self._target(i)
        if p is None:
            return []
        n = self._unpack("<I", p)
        return [q + self._unpack("<I", q) for q in range(p + 4, p + 4 + 4 * n, 4)]

    def tables(self, i):
        return [_Table(self.buf, q) for q in self._refs(i)]

    def strings(self, i):
        return [bytes(self.buf[q + 4:q + 4 + self._unpack("<I", q)]).decode("utf-8", "replace")
                for q in self._refs(i)]

    def scalars(self, i, fmt):
        p = self._target(i)
        if p is None:
            return []
        n = self._unpack("<I", p)
        self._unpack(fmt, p + 4 + (n - 1) * struct.calcsize(fmt)) if n else None
        return list(struct.unpack_from(f"<{n}{fmt}", self.buf, p + 4))

    def structs(self, i, fmt):
        """A vector of fixed-size structs (``fmt``, e.g. ``"<Ii"``), each as a tuple."""
        p = self._target(i)
        if p is None:
            return []
        n, size = self._unpack("<I", p), struct.calcsize(fmt)
        self._unpack("B", p + 4 + n * size - 1) if n else None  # (bounds check)
        return list(struct.iter_unpack(fmt, self.buf[p + 4:p + 4 + n * size]))


# --------------------------------------------------------------------------------------------
# operator type ids
# --------------------------------------------------------------------------------------------
_M64 = (1 << 64) - 1
_P1, _P2, _P3 = 11400714785074694791, 14029467366897019727, 1609587929392839161
_P4, _P5 = 9650029242287828579, 2870177450012600261


def _rotl(x, r):
    return ((x << r) | (x >> (64 - r))) & _M64


def _round(acc, v):
    return _rotl((acc + v * _P2) & _M64, 31) * _P1 & _M64


def _xxh64(data, seed):
    """XXH64 of ``data`` (bytes), as upstream's compile-time ``XXHash64CT``."""
    n, p = len(data), 0
    word = lambda k, size: int.from_bytes(data[k:k + size], "little")
    if n >= 32:
        v = [(seed + _P1 + _P2) & _M64, (seed + _P2) & _M64, seed, (seed - _P1) & _M64]
        while p + 32 <= n:
            v = [_round(v[k], word(p + 8 * k, 8)) for k in range(4)]
            p += 32
        h = (_rotl(v[0], 1) + _rotl(v[1], 7) + _rotl(v[2], 12) + _rotl(v[3], 18)) & _M64
        for x in v:
            h = ((h ^ _round(0, x)) * _P1 + _P4) & _M64
    else:
        h = (seed + _P5) & _M64
    h = (h + n) & _M64
    while p + 8 <= n:
        h = (_rotl(h ^ _round(0, word(p, 8)), 27) * _P1 + _P4) & _M64
        p += 8
    if p + 4 <= n:
        h = (_rotl(h ^ (word(p, 4) * _P1 & _M64), 23) * _P2 + _P3) & _M64
        p += 4
    for b in data[p:]:
        h = (_rotl(h ^ (b * _P5 & _M64), 11) * _P1) & _M64
    h ^= h >> 33
    h = h * _P2 & _M64
    h ^= h >> 29
    h = h * _P3 & _M64
    h ^= h >> 32
    return h or 1


def _type_ids(name):
    """The ids upstream writes for the operator registered as ``name`` ("ReshapeV1"): the hash
    of the name without its version suffix (operators of serialization version 1) and of the
    name with its terminating NUL (version 2)."""
    bare = name[:-2] if len(name) > 2 and name[-2] == "V" and name[-1].isdigit() else name
    return {_xxh64(bare.encode(), 20160701): name,
            _xxh64(name.encode() + b"\0", 20160701): name}


# --------------------------------------------------------------------------------------------
# dtypes, tensors, values
# --------------------------------------------------------------------------------------------
_DTYPES = {0: "float32", 1: "uint8", 2: "int8", 3: "int16", 4: "int32", 9: "float16", 18: "bool"}
_DTYPE_NAMES = ("Float32 Uint8 Int8 Int16 Int32 IntB1 IntB2 IntB4 Byte Float16 UintB4 "
                "Quantized8Asymm QuantizedS32 QuantizedS8 Quantized4Asymm QuantizedS4 "
                "QuantizedS16 BFloat16 Bool").split()
# quantized dtypes (DTypeEnum -> this fork's dtype of a scale, and a zero point where asymmetric)
_QUANTIZED = {11: "quint8", 12: "qint32", 13: "qint8"}


def _dtype(table, where):
    """The dtype of upstream's DType table (None: float32); a quantized one carries the scale
    (and zero point) of its LinearQuantizationParam."""
    kind = 0 if table is None else table.scalar(0, "b")
    if kind in _QUANTIZED:
        from ..core import dtype as qd

        param = table.table(2)  # (the DTypeParam union: its type is field 1)
        if param is None or table.scalar(1, "B") != 1:
            raise UpstreamFormatError(f"load: {where} has dtype {_DTYPE_NAMES[kind]} without "
                                      "its scale; the file is corrupt")
        scale = param.scalar(0, "f")
        if kind == 11:
            return qd.quint8(scale, param.scalar(1, "B"))
        return getattr(qd, _QUANTIZED[kind])(scale)
    if kind not in _DTYPES:
        name = _DTYPE_NAMES[kind] if 0 <= kind < len(_DTYPE_NAMES) else f"#{kind}"
        raise UpstreamFormatError(
            f"load: {where} has dtype {name}, which this reader does not provide (float32, "
            "float16, int8/16/32, uint8, bool and the quantized qint8, quint8 and qint32 are "
            "read; 4-bit quantized values are packed two to a byte, which it does not unpack); "
            "quantize with 8-bit dtypes, or dump the float network and quantize it with "
            "megengine.quantization in this fork")
    return np.dtype(_DTYPES[kind])


class _Op:
    """One operator of the file: its type name, name, param table, inputs, outputs, tensors
    (and their values: ``values``, bytes each)."""

    def __init__(self, t, k):
        self.index = k
        self.type_id = t.scalar(1, "Q")
        self.type = t.string(0) or _KNOWN_IDS.get(self.type_id)
        self.name = t.string(2)
        self.param = t.table(4)
        self.inputs = t.scalars(7, "I")
        self.outputs = t.scalars(8, "I")
        self.output_dtype = t.table(10)
        self.tensors = t.tables(11)
        self.values = [x.bytes(6) for x in self.tensors]

    @classmethod
    def v1(cls, t, k):
        """An operator of the older schema (``mgb1``): no type name, no output ids (its
        outputs take the next ids, `_nr_outputs` of them), values out of band (set by the
        caller), output names with the operator."""
        op = cls.__new__(cls)
        op.index = k
        op.type_id = t.scalar(0, "Q")
        op.type = _KNOWN_IDS.get(op.type_id)
        op.name = t.string(12)
        op.param = t.table(2)
        op.inputs = t.scalars(3, "I")
        op.output_dtype = t.table(6)
        op.tensors = t.tables(7)
        op.output_names = t.strings(5)
        return op

    def where(self):
        name = f" {self.name!r}" if self.name else ""
        return f"operator #{self.index} ({self.type or hex(self.type_id)}{name})"

    def dtype(self):
        """The dtype the file gives the operator's output (a quantized one with its scale), or
        None where it gives none."""
        return None if self.output_dtype is None else _dtype(self.output_dtype, self.where())

    def p(self, i, fmt, default=0):
        return default if self.param is None else self.param.scalar(i, fmt, default)

    def refuse(self, what):
        raise UpstreamFormatError(f"load: {self.where()}: {what} is not provided by this "
                                  f"reader; {_WHAT_TO_DO}")

    def require(self, i, fmt, allowed, what, default=0):
        """Param field ``i`` (``default`` when absent, the schema's default), which must be one
        of ``allowed``."""
        v = self.p(i, fmt, default)
        if v not in allowed:
            self.refuse(f"{what} {v}")
        return v


def _host_tensor(t, data, where):
    shape = tuple(t.scalars(1, "I"))
    dtype = _dtype(t.table(3), where)
    if data is None or len(data) != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
        raise UpstreamFormatError(f"load: {where}: its value holds "
                                  f"{None if data is None else len(data)} bytes, not those of "
                                  f"a {dtype} array of shape {shape}; the file is corrupt")
    return np.frombuffer(data, dtype).reshape(shape).copy()


class _Shape(tuple):
    """A vector computed from shapes (``GetVarShape`` and arithmetic on it): its items are the
    traced sizes, kept as they are so that the trace records where they came from (a numpy
    array of them would read their values)."""


def _is_host(v):
    return isinstance(v, (np.ndarray, _Shape))


def _items(v):
    """A host vector's items (constants as Python numbers)."""
    return tuple(v) if type(v) is _Shape else tuple(v.reshape(-1).tolist())


# --------------------------------------------------------------------------------------------
# operators: each runs as this fork's functional code on Tensors; values computed from shapes
# stay on the host (`_Shape`, holding the traced sizes) so that the trace records sizes
# --------------------------------------------------------------------------------------------
def _F():
    from .. import functional as F
    return F


def _ints(v, op, what):
    """A host value (a shape or a constant) as a tuple of sizes; traced sizes stay `SymDim`s."""
    if not _is_host(v):
        op.refuse(f"a {what} computed from tensor values (not from shapes or constants)")
    return _items(v)


def _param_pair(op, h, w, default):
    """Two integer params of ``op`` (fields ``h`` and ``w``) as an (h, w) pair."""
    return (op.p(h, "I", default), op.p(w, "I", default))


# upstream's tensor layouts by their number in its param enum Convolution.Format, which ConvBias,
# Pooling, AdaptivePooling and Resize share (its legacy ConvolutionV0.Format numbers the first
# nine alike); this reader computes NCHW and the channel-blocked layouts below
_LAYOUTS = ("NCHW", "NHWC", "NHWCD4", "NCHW4", "NCHW8", "NCHW32", "NCHW88", "NCHW44",
            "NCHW44_DOT", "NCHW4_NCHW32", "NCHW32_NCHW4", "NCHW4_NCHW", "NHWC_NCHW",
            "NHWC_NCHW4_IC_SMALL", "NCHW_NCHW4_IC_SMALL", "CHWN4", "NCHW64", "NCHW4_NHWC")
# the channel-blocked layouts of upstream's deployment dumps (enable_nchw44 for ARM,
# enable_nchw44_dot for ARMv8.2 int8, enable_nchw88 for x86 AVX, enable_nchw4 for CUDA int8):
# a value (N, C, H, W) is held as (N, C/k, H, W, k); number -> k
_BLOCKED = {3: 4, 6: 8, 7: 4, 8: 4}
_NCHW4, _DOT = 3, 8


def _nchw(op, field, default=0, layouts=_LAYOUTS, read=None):
    """Refuse a layout (param field ``field``) other than the first of ``layouts``, by name."""
    v = op.p(field, "I", default)
    if v != 0:
        name = layouts[v] if v < len(layouts) else "unknown"
        op.refuse(f"the {name} layout (format {v}; {read or f'only {layouts[0]} is'} read)")


def _layout(op, field, default=0):
    """The layout number in param field ``field``: NCHW's (0) or a channel-blocked one; others
    refused by name."""
    v = op.p(field, "I", default)
    if v not in _BLOCKED:
        _nchw(op, field, default, read="NCHW, NCHW4, NCHW44, NCHW44_DOT and NCHW88 are")
        return 0
    return v


def _relayout(v, perm, shape):
    """``v`` transposed by ``perm``, then reshaped to ``shape``: a constant of the file on the
    host (named as upstream names it), a Tensor by this fork's functional code."""
    if type(v) is _Constant:
        out = np.ascontiguousarray(v.view(np.ndarray).transpose(perm)).reshape(shape)
        out = out.view(_Constant)
        out.name = v.name
        return out
    F = _F()
    return F.reshape(F.transpose(_tensor(v, None), perm), shape)


def _unblocked(x, layout):
    """A value of a blocked layout, (N, C/k, H, W, k), as NCHW (as it is for NCHW)."""
    k = _BLOCKED.get(layout, 1)
    if k == 1:
        return x
    if x.ndim != 5 or x.shape[4] != k:
        raise ValueError(f"a value of shape {tuple(x.shape)} in a channel-blocked layout, "
                         f"(N, C/{k}, H, W, {k})")
    if _is_host(x):
        n, c, h, w, _ = x.shape
        return _relayout(x, (0, 1, 4, 2, 3), (n, c * k, h, w))
    F = _F()  # (flatten: the batch and image sizes may be traced ones)
    return F.flatten(F.transpose(x, (0, 1, 4, 2, 3)), 1, 2)


def _blocked(y, layout):
    """An NCHW result in a blocked layout (as it is for NCHW)."""
    k = _BLOCKED.get(layout, 1)
    if k == 1:
        return y
    n, _, h, w = y.shape
    F = _F()
    return F.transpose(F.reshape(y, (n, -1, k, h, w)), (0, 1, 3, 4, 2))


def _nchw_conv(op, x, w, layout, group):
    """A convolution's input and filter (Tensors) in NCHW's layout, the filter (O, I, FH, FW)
    or, of a ``group`` convolution, (G, O, I, FH, FW), from those of ``layout``, whose filters
    upstream holds as commented below (k: the channel block; ki, ko: input and output
    channels inside one)."""
    if layout == 0:
        return x, _tensor(w, op)
    k, s, dot = _BLOCKED[layout], tuple(w.shape), layout == _DOT
    perm = None
    if layout == _NCHW4:
        if not group and len(s) == 5:  # (O, I/4, FH, FW, 4)
            perm, shape = (0, 1, 4, 2, 3), (s[0], s[1] * k, s[2], s[3])
        elif group and len(s) == 6:  # (G, O, I/4, FH, FW, 4)
            perm, shape = (0, 1, 2, 5, 3, 4), (s[0], s[1], s[2] * k, s[3], s[4])
    elif not group and len(s) == 5:  # a network's first: (O/k, FH, FW, I, ko), its input NCHW
        return x, _tensor(_relayout(w, (0, 4, 3, 1, 2), (s[0] * k, s[3], s[1], s[2])), op)
    elif not group and len(s) == 6:  # (O/k, I/k, FH, FW, ki, ko); NCHW44_DOT: ko, ki
        perm = (0, 4, 1, 5, 2, 3) if dot else (0, 5, 1, 4, 2, 3)
        shape = (s[0] * k, s[1] * k, s[2], s[3])
    elif group and len(s) == 6 and s[1:3] == (1, 1):  # channel-wise: (G/k, 1, 1, FH, FW, k)
        perm, shape = (0, 5, 1, 2, 3, 4), (s[0] * k, 1, 1, s[3], s[4])
    elif group and len(s) == 7:  # (G, O/k, I/k, FH, FW, ki, ko); NCHW44_DOT: ko, ki
        perm = (0, 1, 5, 2, 6, 3, 4) if dot else (0, 1, 6, 2, 5, 3, 4)
        shape = (s[0], s[1] * k, s[2] * k, s[3], s[4])
    if perm is None:
        op.refuse(f"a {'group ' if group else ''}filter of shape {s} in the "
                  f"{_LAYOUTS[layout]} layout")
    return _unblocked(x, layout), _tensor(_relayout(w, perm, shape), op)


# upstream's RelayoutFormat.Mode by number
_RELAYOUT_MODES = (
    "NHWC_NHWCD4", "NHWCD4_NHWC", "NHWC_NHWCD4I", "NCHW_NHWCD4", "NCHW_NHWCD4I", "NHWCD4I_NCHW",
    "NHWCD4_NCHW", "INTER_WEIGHT_DENSE", "INTER_WEIGHT_DENSEI", "INTER_WEIGHT_GROUP",
    "INTER_WEIGHT_GROUPI", "INTER_WEIGHT_CHAN", "INTER_WEIGHT_CHANI", "INTER_WEIGHT_DENSEI_DOT",
    "INTER_WEIGHT_GROUPI_DOT", "NCHW4_CHWN4", "CHWN4_NCHW4", "NCHW_NCHW88_CONV_DENSE_WEIGHT",
    "NCHW_NCHW88_CONV_CHAN_WEIGHT", "NCHW_NCHW88_CONV_GROUP_WEIGHT", "NCHW_NCHW88", "NCHW88_NCHW",
    "NCHW_NCHW4", "NCHW_NCHW4_WEIGHT", "NCHW_NCHW64", "NCHW64_NCHW", "NCHW_NHWC", "NHWCD4I_NHWC")
_NCHW_NCHW4 = 22


def _op_relayout_format(op, x):
    """RelayoutFormatV1 as enable_nchw4 dumps hold it before a network's first convolution:
    mode NCHW_NCHW4, the channels padded with zeros to a multiple of 4, then blocked."""
    mode = op.p(0, "I")
    if mode != _NCHW_NCHW4:
        name = _RELAYOUT_MODES[mode] if mode < len(_RELAYOUT_MODES) else "unknown"
        op.refuse(f"RelayoutFormat mode {name} ({mode}; only NCHW_NCHW4 is read)")
    if x.ndim != 4:
        raise ValueError(f"an NCHW value of shape {tuple(x.shape)}")
    pad = -int(x.shape[1]) % 4
    if pad:
        x = _F().nn.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0)))
    return _blocked(x, _NCHW4)


def _conv_args(op, w, pad, sparse):
    """(stride, padding, dilation, groups) of a 2-d convolution whose param has pad_h, pad_w,
    stride_h, stride_w, dilate_h, dilate_w from field ``pad`` on and its sparse mode (a group
    filter's first dim is the groups) in field ``sparse``."""
    groups = w.shape[0] if op.require(sparse, "I", (0, 1), "sparse mode") else 1
    return (_param_pair(op, pad + 2, pad + 3, 1), _param_pair(op, pad, pad + 1, 0),
            _param_pair(op, pad + 4, pad + 5, 1), groups)


def _op_convolution(op, x, w):
    op.require(0, "I", (0,), "convolution mode")
    layout = _layout(op, 8)
    x, w = _nchw_conv(op, x, w, layout, op.p(7, "I") == 1)
    return _blocked(_F().conv2d(x, w, None, *_conv_args(op, w, 1, 7)), layout)


# ConvBias's nonlinearities by upstream's names (F.quantized's; F's without the "_")
_NONLINEAR = {0: "identity", 1: "relu", 2: "sigmoid", 3: "h_swish"}


def _op_conv_bias(op, x, w, b, *z):
    nonline = op.require(0, "I", tuple(_NONLINEAR), "nonlinearity")
    op.require(1, "I", (0,), "convolution mode")
    layout = _layout(op, 3)
    x, w = _nchw_conv(op, x, w, layout, op.p(2, "I") == 1)
    b = _tensor(_unblocked(b, layout), op)
    z = tuple(_tensor(_unblocked(v, layout), op) for v in z)
    F, args, quantized = _F(), _conv_args(op, w, 4, 2), _quantized(x)
    if quantized and not z:  # the integer kernel, requantized to the dtype the file gives
        y = F.quantized.conv_bias_activation(x, w, b, op.dtype(), *args, _NONLINEAR[nonline])
        return _blocked(y, layout)
    if quantized:  # a fused residual (enable_fuse_conv_bias_with_z), as upstream's reference
        # kernel adds it: the accumulator's value plus z's in float32, activated, quantized
        y = (F.quantized.conv_bias_activation(x, w, b, None, *args).astype("float32") +
             z[0].astype("float32"))
    else:
        y = F.conv2d(x, w, None, *args) + b
        y = y + z[0] if z else y
    if nonline:
        y = getattr(F, _NONLINEAR[nonline].replace("_", ""))(y)
    return _blocked(y.astype(op.dtype()) if quantized else y, layout)


def _op_batch_conv_bias(op, x, w, b):
    """``F.quantized.batch_conv_bias_activation``: a weight (N, out, in, kh, kw) per sample
    (param: nonlinearity, mode, pad, stride and dilation from field 2, sparse, format)."""
    nonline = op.require(0, "I", tuple(_NONLINEAR), "nonlinearity")
    op.require(1, "I", (0,), "convolution mode")
    _nchw(op, 9)
    stride, padding, dilation, _ = _conv_args(op, w, 2, 8)
    op.require(8, "I", (0,), "sparse mode")
    return _F().quantized.batch_conv_bias_activation(x, w, b, op.dtype(), stride, padding,
                                                     dilation, 1, _NONLINEAR[nonline])


def _quantized(x):
    from ..core.dtype import is_quantize
    return not _is_host(x) and is_quantize(x.dtype)


def _op_pooling(op, x):
    mode = op.require(0, "I", (0, 1, 2), "pooling mode")
    layout = _layout(op, 7)
    F, x = _F(), _unblocked(x, layout)
    window, stride = _param_pair(op, 5, 6, 2), _param_pair(op, 3, 4, 2)
    padding = _param_pair(op, 1, 2, 0)
    if mode == 0:
        return _blocked(F.max_pool2d(x, window, stride, padding), layout)
    return _blocked(F.avg_pool2d(x, window, stride, padding, "average" if mode == 1 else
                                 "average_count_exclude_padding"), layout)


def _op_adaptive_pooling(op, x, shape):
    mode = op.require(0, "I", (0, 1, 2), "pooling mode")
    layout = _layout(op, 1)
    oshp = _ints(shape, op, "output size")
    F, x = _F(), _unblocked(x, layout)
    return _blocked(F.adaptive_max_pool2d(x, oshp) if mode == 0 else
                    F.adaptive_avg_pool2d(x, oshp), layout)


def _op_matmul(op, a, b):
    op.require(3, "I", (0,), "format")
    return _F().matmul(a, b, bool(op.p(0, "B")), bool(op.p(1, "B")))


def _op_reshape(op, x, shape):
    target = list(_ints(shape, op, "target shape"))
    axis = op.p(0, "i", _NO_AXIS)
    if axis != _NO_AXIS:
        target[axis] = -1  # the size upstream infers (its entry in the shape is a placeholder)
    return _F().reshape(x, tuple(target))


def _op_broadcast(op, x, shape):
    target = _ints(shape, op, "target shape")
    if (_is_host(x) and len(target) == 1 and type(target[0]) is int and
            (type(x) is _Shape or x.ndim <= 1)):  # (a vector of sizes: upstream's optimizer
        # broadcasts a constant so for shape arithmetic; kept on the host)
        if type(x) is not _Shape:
            return np.broadcast_to(x, target).copy()
        if len(x) not in (1, target[0]):
            raise ValueError(f"{len(x)} sizes broadcast to {target[0]}")
        return _Shape(_items(x) * (target[0] // len(x)))
    return _F().broadcast_to(_tensor(x, op), target)


def _broadcast_size(a, b):
    """The size two broadcast sizes give. A traced size (`SymDim`) is not compared (that would
    fix the program to its value): two of them give upstream's broadcast expression."""
    if type(b) is int:
        return a if b == 1 else b
    if type(a) is int:
        return b if a == 1 else a
    return SymDim(b.value if a.value == 1 else a.value, ("bcast", a.tree, b.tree), a.src,
                  a.nonneg and b.nonneg)


def _op_get_var_shape(op, *xs):
    shape = ()
    for x in xs:  # several inputs: the shape they broadcast to
        s = (len(x),) if type(x) is _Shape else tuple(x.shape)
        n = max(len(shape), len(s))
        shape, s = (1,) * (n - len(shape)) + shape, (1,) * (n - len(s)) + s
        shape = tuple(_broadcast_size(a, b) for a, b in zip(shape, s))
    axis = op.p(0, "i", _NO_AXIS)
    return _Shape(shape if axis == _NO_AXIS else shape[axis:axis + 1])


def _op_dimshuffle(op, x):
    pattern = op.param.scalars(0, "i") if op.param is not None else []
    return _F().transpose(x, tuple("x" if p == -1 else p for p in pattern))


def _op_axis_add_remove(op, x):
    from ..core import ops as _ops
    from ..core.dispatch import apply

    items = _structs(op, 0, "<Ii")  # (method: 0 add, 1 remove; axis)
    for method, axis in items:
        if method not in (0, 1):
            op.refuse(f"axis method {method}")
        if type(x) is _Shape:
            continue  # (shape vectors are flat: upstream's scalars are vectors of one item)
        if _is_host(x):
            x = np.expand_dims(x, axis) if method == 0 else np.squeeze(x, axis)
        else:  # (the engine's op checks the size itself; F.squeeze would add a guard to runs)
            x = apply((_ops.AddAxis if method == 0 else _ops.RemoveAxis)((axis,)), x)
    return x


def _structs(op, field, fmt):
    """The vector of fixed-size structs in param field ``field``, each as a tuple."""
    return [] if op.param is None else op.param.structs(field, fmt)


def _op_concat(op, *xs):
    axis = op.p(0, "i", 0)
    if any(type(x) is _Shape for x in xs) and all(_is_host(x) for x in xs):
        return _Shape(sum((_items(x) for x in xs), ()))
    if all(_is_host(x) for x in xs):
        return np.concatenate(xs, axis)
    return _F().concat([_tensor(x, op) for x in xs], axis)


def _index(op, args, vector):
    """The index tuple of upstream's index description (items (axis, has begin, has end, has
    step, has idx), their values the inputs ``args`` in that order); ``vector``: idx inputs
    are index arrays (IndexingMultiAxisVec), else single positions (Subtensor)."""
    args, index = list(args), {}
    for axis, begin, end, step, idx in _structs(op, 0, "<b????"):
        take = lambda has: _scalar(args.pop(0), op) if has else None
        if idx and vector:
            index[axis] = _tensor(args.pop(0), op)
        elif idx:  # (a position given as a tensor of one item: a 0-d index removes the axis)
            index[axis] = take(True)
            if not is_int(index[axis]) and not _is_host(index[axis]):  # (a size from a shape,
                index[axis] = index[axis].reshape(())  # SymDim, is an int here: kept)
        else:
            index[axis] = slice(take(begin), take(end), take(step))
    if args:
        op.refuse(f"{len(args)} index inputs more than its index description uses")
    return tuple(index.get(a, slice(None)) for a in range(max(index, default=-1) + 1))


def _op_indexing(op, x, *args):
    return _tensor(x, op)[_index(op, args, True)]


def _op_subtensor(op, x, *args):
    full = _index(op, args, False)
    if any(type(e) is slice and any(_is_data(b) for b in (e.start, e.stop, e.step))
           for e in full):
        return _data_slice(op, x, full)
    if type(x) is _Shape:  # a size taken from a shape stays a vector (upstream's scalars are
        if len(full) != 1:  # vectors of one item)
            op.refuse("indexing a shape with more than one axis")
        return _Shape(x[full[0]] if type(full[0]) is slice else (x[full[0]],))
    return x[full]


def _is_data(v):
    """Whether an index value is a value of the program (a Tensor), not a number or size."""
    return v is not None and not _is_host(v) and not is_int(v)


def _data_slice(op, x, index):
    """``x[:n]`` of a 1-d ``x`` with ``n`` a value of the program (upstream's nms takes the
    first ``count`` of NMSKeep's positions so): the items before ``n`` (counted from the end
    where negative), a size that follows the data."""
    (e,) = index if len(index) == 1 else (None,)
    if e is None or e.start is not None or e.step is not None or _tensor(x, op).ndim != 1:
        op.refuse("a slice bound computed by the program, other than the end of a 1-d slice")
    F = _F()
    x, end = _tensor(x, op), e.stop.reshape(-1)
    end = F.where(end < 0, end + x.shape[0], end)
    return F.cond_take(F.arange(x.shape[0], dtype=end.dtype) < end, x)[0]


def _scalar(v, op):
    if _is_host(v):
        items = _items(v)
        if len(items) != 1:
            op.refuse(f"an index of {len(items)} values")
        return items[0]
    return v  # a tensor index: indexing with a tensor


_REDUCE = {0: "sum", 1: "sum_sqr", 2: "prod", 3: "min", 4: "max", 5: "mean"}
# an axis param's "none given" (INT_MAX): Reduce reduces to the target shape of its second
# input, Cumsum runs along the last axis
_NO_AXIS_GIVEN = 2147483647


def _op_reduce(op, x, *target):
    mode = op.require(0, "I", tuple(_REDUCE), "reduce mode")
    # data_type 3: float16 in and out, computed in float32 (the reductions of dumps with
    # enable_io16xc32, measured); the default computes in the input's dtype
    wide = op.require(2, "I", (0, 3), "reduce data_type") == 3
    if wide:
        y = _op_reduce_default(op, mode, _tensor(x, op).astype("float32"), target)
        return y.astype("float16")
    return _op_reduce_default(op, mode, x, target)


def _op_reduce_default(op, mode, x, target):
    axis = op.p(1, "i", _NO_AXIS_GIVEN)
    if type(x) is _Shape and axis in (0, -1) and _REDUCE[mode] in ("sum", "prod"):
        total = 0 if mode == 0 else 1  # a size computed from a shape (flatten's product)
        for v in x:
            total = total + v if mode == 0 else total * v
        return _Shape((total,))
    x = _tensor(x, op)
    F = _F()
    if mode == 1:
        x = x * x
    fn = getattr(F, {"sum_sqr": "sum"}.get(_REDUCE[mode], _REDUCE[mode]))
    if axis == _NO_AXIS_GIVEN:
        shape = _ints(target[0], op, "target shape") if target else op.refuse("a missing shape")
        if len(shape) != x.ndim and all(type(t) is int and t == 1 for t in shape):
            return fn(x).reshape(shape)  # everything, to (1,): upstream's scalar
        if len(shape) != x.ndim:
            op.refuse(f"reducing a {x.ndim}-d input to the target shape {shape}")
        axes = tuple(i for i, t in enumerate(shape) if type(t) is int and t == 1 and
                     not (type(x.shape[i]) is int and x.shape[i] == 1))
        return fn(x, axis=axes, keepdims=True) if axes else x
    return fn(x, axis=axis, keepdims=True)


def _op_typecvt(op, x):
    dtype = _dtype(op.param, op.where())
    if type(x) is _Shape:  # sizes stay sizes (as floats for scale arithmetic: h * 2.0)
        if dtype.kind == "f":
            return _Shape(v * 1.0 for v in x)
        is_int = lambda v: type(v) is int or type(v) is SymDim and type(v.value) is int
        return _Shape(v if is_int(v) else math.trunc(v) for v in x)
    from ..core.dtype import dequantize_array, is_quantize
    if _is_host(x) and is_quantize(x.dtype) and not is_quantize(dtype):
        # a quantized constant (a bias): upstream's TypeCvt dequantizes it, as this fork's
        # astype does a tensor's (a file's constant, a _Constant, as the ndarray it is)
        x = dequantize_array(x.view(np.ndarray))
    return x.astype(dtype)


def _op_powc(op, x):
    return x ** op.p(0, "f", 0.0)


def _op_softmax(op, x):
    return _F().softmax(x, axis=op.p(0, "i", -1))


def _op_layer_norm(op, x, *wb):
    """(output, mean, 1 / std) over the last ``normalized_dim`` axes, as upstream's three
    outputs."""
    affine = bool(op.p(0, "B", 1))
    nd, eps = op.p(2, "Q", 1), op.p(1, "f", 1e-5)
    F = _F()
    y = F.layer_norm(x, tuple(x.shape[x.ndim - nd:]), affine, *(wb if affine else ()), eps=eps)
    axes = tuple(range(x.ndim - nd, x.ndim))
    mean = F.mean(x, axis=axes, keepdims=True)
    rstd = 1 / F.sqrt(F.mean((x - mean) ** 2, axis=axes) + eps)
    return y, F.squeeze(mean, axes), rstd


def _op_general_norm(op, x, *wb):
    """GeneralNorm (M.GeneralNorm / F.nn.general_norm): params affine, eps, the normalised
    axes [axis_start, axis_end); outputs the normalised value, the mean and 1 / std (which
    only its backward reads: not computed here)."""
    affine = bool(op.p(0, "B", 1))
    start, end = op.p(2, "I", 0), op.p(3, "I", None)
    if end is None or not start < end <= x.ndim:
        op.refuse(f"GeneralNorm over axes [{start}, {end}) of a {x.ndim}-d value")
    y = _F().nn.general_norm(x, tuple(range(start, end)), affine, *(wb if affine else ()),
                             eps=op.p(1, "f", 1e-5))
    return y, _NotComputed(), _NotComputed()


def _op_multi_head_attn(op, q, k, v, weight_bias, *mask):
    """MultiHeadAttn (M.MultiHeadAttention in eval mode): params the head count, the embedding,
    key and value sizes, the four projections' sizes and whether each has a bias, the softmax
    scale (1 / sqrt(the head's size) here), whether the attention weights are an output, and
    an additive float mask (0 / -inf, (L, S) or (N * heads, L, S)) as a fifth input; outputs
    the attention, its weights (where asked for) and two spaces only its backward reads (not
    computed here). Learned from upstream 1.13's own dumps of M.MultiHeadAttention and
    F.nn.multi_head_attention (with masks, weights, biases or not, other key / value sizes)."""
    heads, embed = op.p(0, "I", 0), op.p(1, "I", 0)
    qp, kp, vp, oproj = (op.p(i, "I", 0) for i in range(4, 8))
    biases = [bool(op.p(i, "B", 0)) for i in range(8, 12)]
    unknown = [i for i in (13, 16, 18) if op.p(i, "B", 0)]
    masked = (op.p(14, "B", 0), op.p(15, "B", 0))
    if unknown or len(mask) > 1 or masked != ((3, 1) if mask else (0, 0)) or not heads \
            or not qp or qp % heads:
        op.refuse(f"MultiHeadAttn with params #{unknown}, mask kind {masked} and "
                  f"{len(mask)} mask inputs, {heads} heads of a projection of {qp}")
    scale = op.p(12, "f", 1.0)
    if abs(scale * math.sqrt(qp // heads) - 1) > 1e-6:
        op.refuse(f"MultiHeadAttn with a softmax scale of {scale} (1 / sqrt({qp // heads}) "
                  "is computed)")
    need = bool(op.p(17, "B", 0))
    out, weights = _F().nn.multi_head_attention(
        q, k, v, embed, heads, 0.0, 0.0, weight_bias, qp, kp, vp, oproj, *biases,
        attn_mask=mask[0] if mask else None, need_weights=need, training=False)
    return out, weights if need else _NotComputed(), _NotComputed(), _NotComputed()


def _op_split(op, x, *sizes):
    axis = op.p(0, "i", 0)
    sizes = [_scalar(s, op) for s in sizes]
    return tuple(_F().split(x, _split_cuts(sizes[:-1]), axis))


def _split_cuts(sizes):
    """The cuts of a Split: the sums of its parts' sizes. Sizes traced as ``hi_k - lo_k``
    where each ``lo_k`` is the ``hi`` before it (this fork's writer writes them so: bounds that
    follow the input) give the cuts ``hi_k - lo_0``, not sums: the sums of a split into
    hundreds of parts nest hundreds deep, past Python's recursion limit where the program
    reads them (fuzz program 23185: ``F.split(h, h.shape[1], axis=1)``, 776 parts)."""
    trees = [getattr(s, "tree", None) for s in sizes]
    if sizes and all(type(t) is tuple and t[0] == "-" for t in trees) and all(
            b[2] == a[1] for a, b in zip(trees, trees[1:])):
        cuts, value = [], 0
        for s, t in zip(sizes, trees):
            value += s.value
            cuts.append(SymDim(value, ("-", t[1], trees[0][2]), s.src, True))
        return cuts
    cuts, total = [], 0
    for s in sizes:
        total = total + s
        cuts.append(total)
    return cuts


def _op_dot(op, a, b):
    return _F().dot(a, b)


def _op_linspace(op, start, stop, num):
    n = _scalar(num, op)
    # (F.arange's count is a float32 constant, or a float computed from sizes: an int size
    # again by truncation, as upstream's TypeCvt to int32 makes it, not a guarded int())
    n = math.trunc(n) if type(getattr(n, "value", n)) is float else n
    return _F().linspace(_scalar(start, op) if _is_host(start) else start,
                         _scalar(stop, op) if _is_host(stop) else stop,
                         n if bool(op.p(0, "B", 1)) else n + 1)[:n]


_PAD_MODES = {0: "edge", 1: "reflect", 2: "constant"}


def _op_padding(op, x):
    mode = op.p(15, "I", 2)
    if mode not in _PAD_MODES:
        op.refuse(f"padding mode {mode}")
    width = tuple((op.p(i, "I"), op.p(7 + i, "I")) for i in range(x.ndim))
    return _F().nn.pad(x, width, _PAD_MODES[mode], op.p(14, "f", 0.0))


def _op_cumsum(op, x):
    F = _F()
    axis = op.p(0, "i", _NO_AXIS_GIVEN)
    axis = x.ndim - 1 if axis == _NO_AXIS_GIVEN else axis
    exclusive, reverse = bool(op.p(1, "B", 1)), bool(op.p(2, "B", 0))
    y = F.flip(x, axis) if reverse else x
    y = F.cumsum(y, axis)
    if exclusive:
        y = y - (F.flip(x, axis) if reverse else x)
    return F.flip(y, axis) if reverse else y


def _op_topk(op, x, k):
    mode = op.require(0, "I", (0, 1, 2), "TopK mode")
    out = _F().topk(x, _scalar(k, op), kth_only=mode == 0, no_sort=mode == 1)
    return out[0] if mode == 0 else tuple(out)


def _op_argsort(op, x):
    out = _F().sort(x, descending=bool(op.require(0, "I", (0, 1), "order")))
    return tuple(out)


def _op_conv_backward_data(op, w, x, *like):
    op.require(0, "I", (0,), "convolution mode")
    _nchw(op, 8)
    stride, padding, dilation, groups = _conv_args(op, w, 1, 7)
    F = _F()
    extra = _output_padding(x, w, like, stride, padding, dilation)
    if _quantized(x):  # (requantized to the dtype the file gives)
        return F.quantized.conv_transpose2d(x, w, None, op.dtype(), stride, padding, extra,
                                            dilation, groups)
    return F.conv_transpose2d(x, w, None, stride, padding, extra, dilation, groups)


def _output_padding(x, w, like, stride, padding, dilation):
    """The output padding of a transposed convolution given a third input (upstream's: a
    value of the output's shape): its sizes beyond the ones the geometry gives; 0 without."""
    if not like:
        return 0
    nd = len(stride)
    return tuple(int(like[0].shape[2 + i]) - ((int(x.shape[2 + i]) - 1) * stride[i]
                 - 2 * padding[i] + dilation[i] * (int(w.shape[w.ndim - nd + i]) - 1) + 1)
                 for i in range(nd))


def _op_batch_norm(op, x, scale, bias, mean, var):
    """Inference-mode BatchNorm (a dump without optimize_for_inference keeps it): the normalized
    output is the last of upstream's outputs; the others are the statistics it used and an
    empty reserve."""
    op.require(1, "I", (1,), "BatchNorm forward mode (only INFERENCE is read)")
    op.require(0, "I", (2,), "BatchNorm param_dim (only DIM_1C11 is read)")
    F = _F()
    y = F.batch_norm(x, mean, var, scale, bias, training=False, eps=op.p(2, "d", 1e-4))
    extra = (mean, var, F.zeros((0,), dtype=x.dtype))
    return extra[:len(op.outputs) - 1] + (y,)


_RESIZE_MODES = {0: "nearest", 1: "bilinear", 3: "bicubic"}  # (megdnn's NEAREST, LINEAR, CUBIC)


def _op_resize(op, x, size):
    mode = op.require(0, "I", tuple(_RESIZE_MODES), "interpolation mode", default=1)
    layout = _layout(op, 1, default=1)  # (Resize's default is NHWC)
    y = _F().vision.interpolate(_unblocked(x, layout), _ints(size, op, "output size"),
                                mode=_RESIZE_MODES[mode],
                                align_corners=False if mode == 1 else None)
    return _blocked(y, layout)


def _op_one_hot(op, x, index):
    return _F().indexing_one_hot(x, index, op.p(0, "i", 0), keepdims=True)


def _op_set_one_hot(op, x, index, value):
    from ..core._imperative_rt.core2 import apply
    from ..core._imperative_rt.ops import IndexingSetOneHot
    return apply(IndexingSetOneHot(axis=op.p(0, "i", 0)), x, index, value)[0]


def _op_set_indexing(op, x, value, *args):
    y = _F().copy(x)
    y[_index(op, args, True)] = _tensor(value, op)
    return y


def _op_incr_indexing(op, x, value, *args):
    """IndexingIncrMultiAxisVec: ``value`` added at the places of ``x`` the index arrays name,
    a place named twice added to twice (upstream's operator; numpy's ``add.at``)."""
    from ..core._imperative_rt.core2 import apply
    from ..core._imperative_rt.ops import IndexingIncrMultiAxisVec

    items = [tuple(item) for item in _structs(op, 0, "<b????")]
    return apply(IndexingIncrMultiAxisVec(items=items), _tensor(x, op), _tensor(value, op),
                 *(_tensor(a, op) for a in args))[0]


# megdnn's WarpPerspective interpolation and border modes this engine samples with
_WARP_INTERP = {0: "nearest", 1: "linear"}
_WARP_BORDER = {0: "replicate", 1: "reflect", 2: "reflect_101", 3: "wrap", 4: "constant"}


def _op_warp_perspective(op, x, mat, *rest):
    """WarpPerspectiveV2: (image, matrices, [mat_idx], output size); params imode, bmode,
    format (NCHW or NHWC), border_val."""
    imode = op.require(0, "I", tuple(_WARP_INTERP), "interpolation mode", default=1)
    bmode = op.require(1, "I", tuple(_WARP_BORDER), "border mode")
    layout = op.require(2, "I", (0, 1), "layout")
    if len(rest) not in (1, 2):
        op.refuse(f"{2 + len(rest)} inputs")
    mat_idx = _tensor(rest[0], op) if len(rest) == 2 else None
    return _F().vision.warp_perspective(
        x, _tensor(mat, op), _ints(rest[-1], op, "output size"), mat_idx=mat_idx,
        border_mode=_WARP_BORDER[bmode], border_val=op.p(3, "f", 0.0),
        format=("NCHW", "NHWC")[layout], interp_mode=_WARP_INTERP[imode])


def _op_warp_affine(op, x, mat, out_shape):
    """WarpAffineV2: (image, matrices, output size); params imode, border_mode, border_val,
    format (NHWC by default, or NCHW)."""
    imode = op.require(0, "I", tuple(_WARP_INTERP), "interpolation mode", default=1)
    bmode = op.require(1, "I", tuple(_WARP_BORDER), "border mode")
    layout = op.require(3, "I", (0, 1), "layout", default=1)
    return _F().vision.warp_affine(
        x, _tensor(mat, op), _ints(out_shape, op, "output size"),
        border_mode=_WARP_BORDER[bmode], border_val=op.p(2, "f", 0.0),
        format=("NCHW", "NHWC")[layout], interp_mode=_WARP_INTERP[imode])


def _op_remap(op, x, map_xy):
    """RemapV1: params imode, border_type, format (NCHW here), scalar."""
    imode = op.require(0, "I", tuple(_WARP_INTERP), "interpolation mode", default=1)
    bmode = op.require(1, "I", tuple(_WARP_BORDER), "border mode")
    _nchw(op, 2, default=1)
    return _F().vision.remap(x, _tensor(map_xy, op), border_mode=_WARP_BORDER[bmode],
                             scalar=op.p(3, "f", 0.0), interp_mode=_WARP_INTERP[imode])


def _op_lrn(op, x):
    """LRN: params n, k, alpha, beta."""
    return _F().nn.local_response_norm(x, op.p(0, "I", 5), op.p(1, "f", 2.0),
                                       op.p(2, "f", 1e-4), op.p(3, "f", 0.75))


def _op_images2neibs(op, x):
    """Images2Neibs (F.sliding_window): params pad, stride, dilate, window (h, w each)."""
    return _F().sliding_window(x, _param_pair(op, 6, 7, 3), _param_pair(op, 0, 1, 0),
                               _param_pair(op, 2, 3, 1), _param_pair(op, 4, 5, 1))


def _op_sliding_window_transpose(op, x):
    """SlidingWindowTranspose (F.sliding_window_transpose): params output size, pad, stride,
    dilate, window (h, w each)."""
    return _F().sliding_window_transpose(
        x, _param_pair(op, 0, 1, 0), _param_pair(op, 8, 9, 3), _param_pair(op, 2, 3, 0),
        _param_pair(op, 4, 5, 1), _param_pair(op, 6, 7, 1))


def _op_correlation(op, a, b):
    """CorrelationForward: params format, kernel_size, max_displacement, stride1, stride2,
    pad_size, is_multiply."""
    _nchw(op, 0)
    return _F().vision.correlation(
        a, b, kernel_size=op.p(1, "I", 1), max_displacement=op.p(2, "I", 1),
        stride1=op.p(3, "I", 1), stride2=op.p(4, "I", 1), pad_size=op.p(5, "I", 0),
        is_multiply=bool(op.p(6, "B", 1)))


def _op_resize3d(op, x, size):
    """Resize3D (trilinear interpolation): params imode, format (NCDHW here), align_corners."""
    op.require(0, "I", (1,), "interpolation mode", default=1)
    op.require(1, "I", (0,), "layout (only NCDHW is read)", default=1)
    return _F().vision.interpolate(x, _ints(size, op, "output size"), mode="trilinear",
                                   align_corners=bool(op.p(2, "B", 0)))


# upstream's CvtColor modes, by their numbers in its files (learned from its own dumps of
# F.vision.cvt_color in each mode)
_CVT_COLOR_MODES = (
    "RGB2GRAY", "RGB2YUV", "YUV2RGB", "GRAY2RGB", "RGBA2RGB", "RGBA2BGR", "RGBA2GRAY",
    "RGB2BGR", "BGR2GRAY", "BGR2RGB", "YUV2GRAY_NV21", "YUV2RGB_NV21", "YUV2BGR_NV21",
    "YUV2GRAY_NV12", "YUV2RGB_NV12", "YUV2BGR_NV12", "YUV2GRAY_YV12", "YUV2RGB_YV12",
    "YUV2BGR_YV12", "YUV2GRAY_YU12", "YUV2RGB_YU12", "YUV2BGR_YU12", "YCrCb2RGB", "YCrCb2BGR",
    "BT601_YUV2RGB_NV21", "BT601_YUV2BGR_NV21", "BT601_YUV2RGB_NV12", "BT601_YUV2BGR_NV12",
    "BT601_YUV2RGB_YV12", "BT601_YUV2BGR_YV12", "BT601_YUV2RGB_YU12", "BT601_YUV2BGR_YU12")


def _op_cvt_color(op, x):
    """CvtColor: param mode (`_CVT_COLOR_MODES`); NHWC images, as F.vision.cvt_color takes."""
    mode = op.p(0, "I", 0)
    if mode >= len(_CVT_COLOR_MODES):
        op.refuse(f"CvtColor mode {mode}")
    return _F().vision.cvt_color(x, _CVT_COLOR_MODES[mode])


def _op_svd(op, x):
    """SVD: params full_matrices, compute_uv; outputs U, S, Vh (U and Vh empty without
    compute_uv: not computed here)."""
    full, uv = bool(op.p(0, "B", 0)), bool(op.p(1, "B", 1))
    out = _F().svd(x, full_matrices=full, compute_uv=uv)
    if uv:
        return tuple(out)
    s = out[1] if isinstance(out, (tuple, list)) else out
    return (_NotComputed(), s, _NotComputed()) if len(op.outputs) == 3 else s


class _NotComputed:
    """An output this reader does not compute (the argmax indices of ROIAlign and ROIPooling,
    which only their backward reads; the empty U and Vh of an SVD without compute_uv): an
    operator reading it is refused."""


def _op_roi_align(op, x, rois):
    """ROIAlignV1: params mode, format, spatial_scale, offset (0.5: aligned), pooled and
    sample sizes; its second output (argmax indices) is not computed."""
    mode = op.require(0, "I", (0, 1), "pooling mode")
    _nchw(op, 1)
    offset = op.p(3, "f", 0.0)
    if offset not in (0.0, 0.5):
        op.refuse(f"the sample offset {offset}")
    y = _F().vision.roi_align(
        x, _tensor(rois, op), (op.p(4, "I", 1), op.p(5, "I", 1)),
        mode=("max", "average")[mode], spatial_scale=op.p(2, "f", 1.0),
        sample_points=(op.p(6, "I", 2), op.p(7, "I", 2)), aligned=offset == 0.5)
    return (y, _NotComputed()) if len(op.outputs) == 2 else y


def _op_roi_pooling(op, x, rois, shape):
    """ROIPooling: params mode, scale; (image, rois, output size); its second output (argmax
    indices) is not computed."""
    mode = op.require(0, "I", (0, 1), "pooling mode")
    size = _ints(shape, op, "output size")
    y = _F().vision.roi_pooling(x, _tensor(rois, op), size[-2:], mode=("max", "average")[mode],
                                scale=op.p(1, "f", 1.0))
    return (y, _NotComputed()) if len(op.outputs) == 2 else y


def _nms_keep_padded(xp, boxes, iou_thresh, max_output):
    """Upstream's NMSKeep of (B, N, 4) boxes sorted by descending score: per batch, the kept
    positions (greedy, as `F.vision.nms`), padded to ``max_output`` with the last of them,
    (B, max_output) int32, and their count (B,) int32."""
    from ..functional.vision import _nms_keep_rows

    host = boxes.get() if hasattr(boxes, "get") else np.asarray(boxes)
    b, n = host.shape[:2]
    indices, counts = np.zeros((b, max_output), np.int32), np.zeros(b, np.int32)
    for k in range(b):
        keep = _nms_keep_rows(host[k], np.arange(n), iou_thresh, max_output)
        counts[k] = len(keep)
        if len(keep):
            indices[k, :len(keep)], indices[k, len(keep):] = keep, keep[-1]
    return xp.asarray(indices), xp.asarray(counts)


def _op_nms_keep(op, boxes):
    """NMSKeep (its name in files: NMSKeepMGB): params iou_thresh, max_output; the kept
    positions of boxes sorted by score (padded), and their count."""
    from ..core.dispatch import apply
    from ..functional.indexing import Compute

    limit = op.p(1, "I", 0)
    if boxes.ndim != 3 or boxes.shape[2] != 4 or limit < 1:
        op.refuse(f"boxes of shape {tuple(boxes.shape)} with max_output {limit}")
    return tuple(apply(Compute(_nms_keep_padded, op.p(0, "f", 0.0), limit), boxes))


def _op_set_subtensor(op, x, value, *args):
    """``y[1:n] = v`` of single positions and slices (upstream's SetSubtensor: a new tensor)."""
    y = _F().copy(x)
    y[_index(op, args, False)] = value
    return y


def _op_incr_subtensor(op, x, value, *args):
    """IncrSubtensor: ``value`` added to the positions and slices of a copy of ``x``."""
    y = _F().copy(x)
    index = _index(op, args, False)
    y[index] = y[index] + value
    return y


_COND_TAKE = {0: lambda d, v, e: abs(d - v) < e, 1: lambda d, v, e: abs(d - v) >= e,
              2: operator.lt, 3: operator.le, 4: operator.gt, 5: operator.ge}


def _op_cond_take(op, data, mask):
    mode = op.require(0, "I", tuple(_COND_TAKE), "CondTake mode")
    val, eps = op.p(1, "f", 0.0), op.p(2, "f", 1e-6)
    fn = _COND_TAKE[mode]
    cond = fn(mask, val, eps) if mode < 2 else fn(mask, val)
    return tuple(_F().cond_take(cond, data))


def _op_convolution3d(op, x, w):
    op.require(0, "I", (0,), "convolution mode")
    _nchw(op, 12, layouts=("NCDHW", "NDHWC"))
    sparse = op.require(10, "I", (0, 1), "sparse mode")
    triple = lambda first, default: tuple(op.p(first + i, "I", default) for i in range(3))
    return _F().conv3d(x, w, None, triple(4, 1), triple(1, 0), triple(7, 1),
                       w.shape[0] if sparse else 1)


def _op_conv3d_backward_data(op, w, x, *like):
    """Convolution3DBackwardData (upstream's conv_transpose3d): the weight, the data and, with
    output padding, a value of the output's shape."""
    op.require(0, "I", (0,), "convolution mode")
    _nchw(op, 12, layouts=("NCDHW", "NDHWC"))
    sparse = op.require(10, "I", (0, 1), "sparse mode")
    triple = lambda first, default: tuple(op.p(first + i, "I", default) for i in range(3))
    stride, padding, dilation = triple(4, 1), triple(1, 0), triple(7, 1)
    return _F().conv_transpose3d(x, w, None, stride, padding,
                                 _output_padding(x, w, like, stride, padding, dilation),
                                 dilation, w.shape[0] if sparse else 1)


def _op_deformable_conv(op, x, w, offset, mask):
    op.require(0, "I", (0,), "convolution mode")
    _nchw(op, 8)
    stride, padding, dilation, groups = _conv_args(op, w, 1, 7)
    return _F().deformable_conv2d(x, w, offset, mask, None, stride, padding, dilation, groups)


def _op_group_local(op, x, w):
    """GroupLocalV2: a weight (groups, OH, OW, C/groups, KH, KW, O/groups) always."""
    op.require(0, "I", (0,), "convolution mode")
    _nchw(op, 8)
    stride, padding, dilation, _ = _conv_args(op, w, 1, 7)
    return _F().local_conv2d(x, w, None, stride, padding, dilation)


_RNN_MODES = {1: "relu", 2: "tanh"}  # (megdnn's NonlineMode; IDENTITY, 0, is not read)


def _rnn_weights(op, w, gates, inputs, hidden, layers, directions, bias):
    """Upstream's flattened RNN / LSTM weight (gates * hidden, n) as this fork's w_ih, w_hh,
    b_ih, b_hh per layer and direction, layer-major: in it they lie one after the other, each
    row-major (biases only with ``bias``; zeros for them otherwise). A constant is cut here
    (constants again); a computed weight by slices of the program."""
    from ..core.tensor import Tensor

    rows = gates * hidden
    shapes = []
    for layer in range(layers):
        size = inputs if layer == 0 else directions * hidden
        for d in range(directions):
            shapes += [((rows, size), f"cells.{layer}.{d}.weight_ih"),
                       ((rows, hidden), f"cells.{layer}.{d}.weight_hh")]
            if bias:
                shapes += [((rows,), f"cells.{layer}.{d}.bias_ih"),
                           ((rows,), f"cells.{layer}.{d}.bias_hh")]
    need = sum(int(np.prod(shape)) for shape, _ in shapes)
    host = _is_host(w)
    size = int(np.prod(np.shape(w) if host else w.shape))
    if size != need:
        op.refuse(f"a flattened weight of {size} values for {layers} layers of "
                  f"{directions} direction(s), input {inputs}, hidden {hidden} (they take "
                  f"{need})")
    flat = np.asarray(w, np.float32).reshape(-1) if host else _tensor(w, op).reshape(-1)
    parts, at = {}, 0
    for shape, name in shapes:
        n = int(np.prod(shape))
        part = flat[at:at + n].reshape(shape)
        parts[name] = Tensor(part, name=f"{op.name or op.type}:{name}") if host else part
        at += n
    zero = Tensor(np.zeros(rows, np.float32)) if not bias else None
    out = []
    for layer in range(layers):
        for d in range(directions):
            key = f"cells.{layer}.{d}."
            out += [parts[key + "weight_ih"], parts[key + "weight_hh"]]
            out += [parts[key + "bias_ih"], parts[key + "bias_hh"]] if bias else [zero, zero]
    return out


def _rnn_stack_args(op, x, w, gates, dropout_field):
    """(layers, bidirectional, weights) of an LSTMForward / RNNForward; what this fork's
    stack does not compute (a projection, dropout between layers in training) is refused."""
    layers, bidirectional = op.p(0, "I", 1), bool(op.p(1, "B", 0))
    bias, hidden = bool(op.p(2, "B", 1)), op.p(3, "I", 128)
    if op.p(dropout_field, "f", 0.0) and layers > 1 and op.p(6, "I", 0) == 0:
        op.refuse("dropout between layers in training mode")
    if x.ndim != 3:
        op.refuse(f"an input of {x.ndim} axes (a recurrent network reads (T, N, I))")
    return layers, bidirectional, _rnn_weights(op, w, gates, x.shape[2], hidden, layers,
                                               2 if bidirectional else 1, bias)


def _op_lstm(op, x, hx, cx, w):
    """LSTMForward: params num_layers, bidirectional, bias, hidden_size, proj_size, dropout,
    fwd_mode; (x (T, N, I), h0, c0, the flattened weight); y, h_n, c_n and a reserve for the
    backward (not computed)."""
    from ..functional.rnn import rnn_stack

    if op.p(4, "I", 0):
        op.refuse(f"an LSTM of projection size {op.p(4, 'I', 0)}")
    layers, bidirectional, weights = _rnn_stack_args(op, x, w, 4, 5)
    y, h, c = rnn_stack("lstm", x, (hx, cx), weights, layers, bidirectional)
    return y, h, c, _NotComputed()


def _op_rnn(op, x, hx, w):
    """RNNForward: params num_layers, bidirectional, bias, hidden_size, dropout, nonlineMode
    (relu, tanh), fwd_mode; (x, h0, the flattened weight); y, h_n and a reserve (not
    computed)."""
    from ..functional.rnn import rnn_stack

    mode = _RNN_MODES[op.require(5, "I", tuple(_RNN_MODES), "RNN nonlinearity")]
    layers, bidirectional, weights = _rnn_stack_args(op, x, w, 1, 4)
    y, h = rnn_stack(mode, x, hx, weights, layers, bidirectional)
    return y, h, _NotComputed()


def _op_lstm_cell(op, x, w_ih, b_ih, h, w_hh, b_hh, c):
    """LSTMCellForward: (x, w_ih, b_ih, h, w_hh, b_hh, c); h', c' and the gates (not
    computed)."""
    from ..functional.rnn import rnn_layer

    _, h1, c1 = rnn_layer("lstm", x, h, c, w_ih, w_hh, b_ih, b_hh)
    return h1, c1, _NotComputed()


def _op_rnn_cell(op, x, w_ih, b_ih, h, w_hh, b_hh):
    """RNNCellForward: param nonlineMode (relu, tanh); (x, w_ih, b_ih, h, w_hh, b_hh); h'."""
    from ..functional.rnn import rnn_layer

    mode = _RNN_MODES[op.require(0, "I", tuple(_RNN_MODES), "RNN cell nonlinearity")]
    return rnn_layer(mode, x, h, None, w_ih, w_hh, b_ih, b_hh)[1]


def _op_arg(fn):
    def run(op, x):
        return getattr(_F(), fn)(x, axis=op.p(0, "i", 0), keepdims=True)
    return run


def _op_elemwise(op, *xs):
    from ..core._imperative_rt.core2 import apply
    from ..core._imperative_rt.ops import _ELEMWISE_MODES, Elemwise

    code = op.p(0, "I", 0)
    mode = _ELEMWISE_MODES[code] if code < len(_ELEMWISE_MODES) else op.refuse(
        f"Elemwise mode #{code}")
    if len(xs) == 1 and type(xs[0]) is _Shape and mode in _HOST_UNARY:
        return _Shape(_HOST_UNARY[mode](v) for v in xs[0])
    if any(type(x) is _Shape for x in xs) and all(type(x) is _Shape or _is_host(x) and x.ndim <= 1
                                                  for x in xs):
        if mode not in _HOST_ELEMWISE:
            op.refuse(f"Elemwise mode {mode} on shapes")
        items = [_items(x) for x in xs]  # arithmetic on shapes (vectors, or one item each)
        n = max(map(len, items))
        items = [i * n if len(i) == 1 else i for i in items]
        return _Shape(_HOST_ELEMWISE[mode](*args) for args in zip(*items))
    return apply(Elemwise(mode), *[_tensor(x, op) for x in xs])[0]


# ElemwiseMultiType's modes (upstream 1.13's values): with a bool result (its files of mgv2
# hold Elemwise and TypeCvt instead, those of mgb1 this operator), and the quantized ones, 6-53
# and 57 in the order of this engine's list of them (QADD, QFUSE_ADD_RELU, ..., QCOND_LT_MOV)
_MULTI_TYPE_MODES = {58: "equal", 59: "not_equal", 60: "less", 61: "less_equal", 62: "isnan",
                     63: "isinf"}


def _quantized_modes():
    from ..core._imperative_rt.ops import _MULTITYPE_Q
    return dict(zip([*range(6, 54), 57], _MULTITYPE_Q))


def _op_elemwise_multi_type(op, *xs):
    code = op.p(0, "I", 0)
    quantized = _quantized_modes()
    if code in quantized:  # (computed on the values, quantized to the dtype the file gives)
        return _F().quantized._elemwise_multi_type(*xs, mode=quantized[code], dtype=op.dtype())
    op.require(0, "I", tuple(_MULTI_TYPE_MODES), "ElemwiseMultiType mode")
    return getattr(_F(), _MULTI_TYPE_MODES[code])(*xs)


_HOST_UNARY = {"FLOOR": math.floor, "CEIL": math.ceil, "NEGATE": operator.neg}
_HOST_ELEMWISE = {"ADD": lambda a, b: a + b, "SUB": lambda a, b: a - b, "MOD": lambda a, b: a % b,
                  "MUL": lambda a, b: a * b, "FLOOR_DIV": lambda a, b: a // b,
                  "TRUE_DIV": lambda a, b: a / b,
                  # (sizes of a traced shape: their expression, not a guarded comparison)
                  "MAX": sym_max, "MIN": lambda a, b: sym_max(a, b, "min"),
                  # (upstream's optimizer fuses shape arithmetic too: a Network.load + dump)
                  "FUSE_MUL_ADD3": lambda a, b, c: a * b + c,
                  "FUSE_MUL_ADD4": lambda a, b, c, d: a * b + c * d}


# upstream's registered operator name -> the function computing its outputs from its inputs
_OPERATORS = {
    # (ConvolutionV2: Convolution's name in files of model_version=1; ConvBiasForwardV4 and
    # ConvolutionBackwardDataV2: the names of ConvBiasForward and ConvolutionBackwardData in
    # files of mgb1, which name operators by type id only)
    "Convolution": _op_convolution, "ConvolutionV2": _op_convolution,
    "ConvBiasForward": _op_conv_bias, "ConvBiasForwardV4": _op_conv_bias,
    "BatchConvBiasForward": _op_batch_conv_bias,  # (V1: its name in files of mgb1)
    "BatchConvBiasForwardV1": _op_batch_conv_bias,
    "PoolingV1": _op_pooling, "AdaptivePoolingV1": _op_adaptive_pooling,
    "MatrixMulV2": _op_matmul, "BatchedMatrixMulV2": _op_matmul, "ReshapeV1": _op_reshape,
    "Broadcast": _op_broadcast, "GetVarShapeV1": _op_get_var_shape,
    "Dimshuffle": _op_dimshuffle, "AxisAddRemove": _op_axis_add_remove, "Concat": _op_concat,
    "Subtensor": _op_subtensor, "ReduceV2": _op_reduce, "TypeCvtV2": _op_typecvt,
    "PowC": _op_powc, "Softmax": _op_softmax, "LayerNorm": _op_layer_norm, "Split": _op_split,
    "GeneralNorm": _op_general_norm, "MultiHeadAttn": _op_multi_head_attn,
    "Argmax": _op_arg("argmax"), "Argmin": _op_arg("argmin"), "Elemwise": _op_elemwise,
    "ElemwiseMultiType": _op_elemwise_multi_type,
    "IndexingMultiAxisVec": _op_indexing, "Dot": _op_dot, "Linspace": _op_linspace,
    "Padding": _op_padding, "CumsumV1": _op_cumsum, "TopK": _op_topk, "Argsort": _op_argsort,
    "ConvolutionBackwardData": _op_conv_backward_data,
    "ConvolutionBackwardDataV2": _op_conv_backward_data, "BatchNormV1": _op_batch_norm,
    "ResizeV2": _op_resize, "IndexingOneHot": _op_one_hot,
    "RelayoutFormatV1": _op_relayout_format,
    "IndexingSetOneHot": _op_set_one_hot,
    "IndexingSetMultiAxisVec": _op_set_indexing, "CondTake": _op_cond_take,
    "IndexingIncrMultiAxisVec": _op_incr_indexing,
    "SetSubtensor": _op_set_subtensor, "IncrSubtensor": _op_incr_subtensor,
    "WarpPerspectiveV2": _op_warp_perspective, "MatrixInverse": lambda op, x: _F().matinv(x),
    "WarpAffineV2": _op_warp_affine, "RemapV1": _op_remap, "ROIAlignV1": _op_roi_align,
    "ROIPooling": _op_roi_pooling, "LRN": _op_lrn, "Images2Neibs": _op_images2neibs,
    "Diag": lambda op, x: _F().diag(x, op.p(0, "i", 0)), "CorrelationForward": _op_correlation,
    "Resize3D": _op_resize3d, "SVD": _op_svd, "CvtColor": _op_cvt_color,
    "SlidingWindowTranspose": _op_sliding_window_transpose,
    "Convolution3D": _op_convolution3d, "Identity": lambda op, x: x,
    "NMSKeepMGB": _op_nms_keep, "Convolution3DBackwardData": _op_conv3d_backward_data,
    "DeformableConvForward": _op_deformable_conv, "GroupLocalV2": _op_group_local,
    "LSTMForward": _op_lstm, "RNNForward": _op_rnn, "LSTMCellForward": _op_lstm_cell,
    "RNNCellForward": _op_rnn_cell,
}
# how many leading inputs are data (Tensors); the rest are shapes or sizes, kept as host values.
# None: the operator takes host values too (arithmetic on shapes)
_DATA_INPUTS = {"Convolution": 1, "ConvolutionV2": 1, "ConvBiasForward": 1,
                "ConvBiasForwardV4": 1,  # (constant filters and biases: relaid on the host)
                "TypeCvtV2": None, "Identity": None, "ResizeV2": 1, "IndexingSetMultiAxisVec": 2,
                "IndexingIncrMultiAxisVec": 2,
                "SetSubtensor": 2, "IncrSubtensor": 2, "WarpPerspectiveV2": 1,
                "WarpAffineV2": 1, "ROIPooling": 2, "Resize3D": 1,
                "ReshapeV1": 1, "Broadcast": 0, "AdaptivePoolingV1": 1, "ReduceV2": 0,
                "Split": 1, "TopK": 1, "Linspace": None, "IndexingMultiAxisVec": None,
                "GetVarShapeV1": None, "Concat": None, "Subtensor": None,
                "AxisAddRemove": None, "Elemwise": None,
                "LSTMForward": 3, "RNNForward": 2}  # (a constant weight: cut on the host)
_SOURCES = ("Host2DeviceCopy", "ImmutableTensor", "MultipleDeviceTensorHolder")
_KNOWN_IDS = {}
for _name in list(_OPERATORS) + list(_SOURCES) + [
        # beyond the table: AssertEqual (test cases' checks) and operators refused by name
        # (files of mgb1 hold type ids only)
        "SharedDeviceTensor", "VolatileSharedDeviceTensor", "Fill", "Dropout",
        "BatchNormForward", "WarpPerspective", "Resize", "ResizeV1", "ConvBias", "TypeCvt",
        "Reduce", "Pooling", "AdaptivePooling", "MatrixMul", "BatchedMatrixMul", "Reshape",
        "GetVarShape", "Copy", "AssertEqual",
        "RelayoutFormat", "Deconvolution", "LocalShare", "SplitV1", "ConcatV1", "Eye",
        "Cumsum", "NMSKeep", "ROIAlign", "Remap"]:
    _KNOWN_IDS.update(_type_ids(_name))


class _Constant(np.ndarray):
    """A constant of the file (an ImmutableTensor's value): a host array until an operator
    needs it as a Tensor (shape arithmetic reads it on the host), then one Tensor named as
    upstream names it."""

    name = tensor = None


def _tensor(v, op):
    """A Tensor for an operator's input (a host value becomes a constant)."""
    if not _is_host(v):
        return v
    from ..core.tensor import Tensor
    if type(v) is _Constant:
        if v.tensor is None:
            v.tensor = Tensor(v.view(np.ndarray), dtype=v.dtype, name=v.name)
        return v.tensor
    if type(v) is _Shape:
        # sizes used as data (a head size scaling attention, a mean over the batch): a Tensor
        # of the traced sizes follows the shapes a run has; float32 after upstream's TypeCvt
        # to a float (``x.shape[1] * 0.5``), as upstream's graph computes it
        floats = any(type(getattr(x, "value", x)) is float for x in v)
        return Tensor(list(v), dtype=np.float32 if floats else np.int32)
    return Tensor(v, dtype=v.dtype)


# --------------------------------------------------------------------------------------------
# the file
# --------------------------------------------------------------------------------------------
def _model(data):
    """(the Model table at the start of ``data``, the bytes it takes)."""
    if len(data) < 12:
        raise UpstreamFormatError(f"load: the upstream .mge file is truncated ({len(data)} "
                                  "bytes)")
    if data[8:12] == b"mgv2":  # (upstream writes the size of the buffer first)
        size = struct.unpack_from("<I", data, 0)[0]
        buf = data[4:4 + size]
        if len(buf) < size:
            raise UpstreamFormatError(f"load: the upstream .mge file is truncated: it says "
                                      f"{size} bytes follow, {len(buf)} do")
        end = 4 + size
    else:
        buf, end = data, len(data)
    return _Table(buf, struct.unpack_from("<I", buf, 0)[0]), end


def _testcases(data, count):
    """The values of ``count`` test cases (upstream's ``dump(input_data=...)``: after the model,
    a graph of constants each, the inputs and the expected outputs sorted by name)."""
    cases = []
    for k in range(count):
        model, end = _model(data)
        consts = {}
        for op in (_Op(t, i) for i, t in enumerate(model.tables(2))):
            for t, v, out in zip(op.tensors, op.values, op.outputs):
                consts[out] = _host_tensor(t, v, f"test case {k}, {op.where()}")
        cases.append([consts[v.scalar(0, "I")] for v in model.tables(4)])
        data = data[end:]
    return cases


# Metadata.optimize_options: flags in the low bits, the layout transform from bit 32 (values of
# upstream 1.13's files)
_OPTION_BITS = {0: "enable_io16xc32", 1: "enable_ioc16", 2: "enable_fuse_conv_bias_nonlinearity",
                3: "enable_fuse_conv_bias_with_z", 5: "enable_fuse_preprocess",
                6: "enable_fuse_grain"}
_LAYOUT_OPTIONS = {1: "enable_nchw4", 2: "enable_hwcd4", 3: "enable_nchw88", 4: "enable_nchw44",
                   5: "enable_nchw44_dot", 6: "enable_nchw32", 7: "enable_chwn4"}


# what upstream's pickled user_info may name: numpy arrays, dtypes and scalars (no code from a
# file; anything else is given as the pickle's bytes, as upstream gives bytes that it cannot
# unpickle)
_USER_INFO_CLASSES = {("numpy.core.multiarray", "_reconstruct"),
                      ("numpy.core.multiarray", "scalar"), ("numpy", "ndarray"),
                      ("numpy", "dtype"), ("collections", "OrderedDict")}


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _USER_INFO_CLASSES:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"user_info names {module}.{name}")


def _metadata(md, info=3, opts=2):
    """Upstream's Metadata table ``md`` as upstream's ``Network.metadata`` dict (None: no
    metadata); its user_info and optimize_options are fields ``info`` and ``opts``."""
    if md is None or not md.scalar(0, "?", False):
        return None
    raw = md.bytes(info)
    try:
        user_info = _PlainUnpickler(io.BytesIO(raw)).load() if raw else None
    except Exception:  # (this fork's files hold no bytes: an array of them)
        user_info = np.frombuffer(raw, np.uint8).copy()
    options = md.scalar(opts, "Q", 0)
    meta = {"user_info": user_info, "graph_modified": bool(md.scalar(1, "?", False)),
            "optimized_for_inference": bool(options)}
    if options >> 32 in _LAYOUT_OPTIONS:
        meta[_LAYOUT_OPTIONS[options >> 32]] = True
    meta.update({name: True for bit, name in _OPTION_BITS.items() if options >> bit & 1})
    return meta


# how many vars the operators of more than one output compute (upstream 1.13 measured)
_NR_OUTPUTS = {"Argsort": 2, "CondTake": 2, "LayerNorm": 3, "GeneralNorm": 3, "BatchNormV1": 4,
               "MultiHeadAttn": 4,
               "TopK": lambda op: 1 if op.p(0, "I") == 0 else 2,  # (mode KTH_ONLY: one)
               "Split": lambda op: len(op.inputs) - 1,  # (the data, then a size each)
               "MultipleDeviceTensorHolder": lambda op: len(op.tensors),
               "LSTMForward": 4, "RNNForward": 3, "LSTMCellForward": 3}


def _nr_outputs(op):
    """How many vars an operator of an ``mgb1`` file computes (that schema numbers the vars
    in order, without ids)."""
    if op.output_names:
        return len(op.output_names)
    n = _NR_OUTPUTS.get(op.type, 1)
    return n if type(n) is int else n(op)


def _read_v1(data):
    """What `_read_v2` gives (no aliases) for an ``MGBC`` file: a header (the magic,
    reserved bytes, the size of the values), the values of the operators' tensors in order,
    then the size-prefixed FlatBuffers graph of the older schema (``mgb1``). Upstream 1.13
    writes 8 more reserved bytes before the size of the values than older releases did."""
    for at in (16, 8):
        begin = at + 8
        size_at = begin + struct.unpack_from("<Q", data, at)[0] if len(data) >= begin else -1
        if 0 <= size_at <= len(data) - 12 and data[size_at + 8:size_at + 12] == b"mgb1":
            break
    else:
        raise UpstreamFormatError("load: the upstream .mge file (MGBC) is truncated or "
                                  "corrupt: no graph where its header says")
    size = struct.unpack_from("<I", data, size_at)[0]
    buf = data[size_at + 4:size_at + 4 + size]
    if len(buf) < size:
        raise UpstreamFormatError(f"load: the upstream .mge file is truncated: it says {size} "
                                  f"bytes follow, {len(buf)} do")
    graph = _Table(buf, struct.unpack_from("<I", buf, 0)[0])
    ops, names, at = [], [], begin
    for k, t in enumerate(graph.tables(3)):
        op = _Op.v1(t, k)
        op.values = []
        for x in op.tensors:
            n, skip = x.scalar(4, "I"), x.scalar(5, "I")
            if at + n > size_at:  # (the size counts the bytes skipped)
                raise UpstreamFormatError("load: the upstream .mge file is truncated or "
                                          f"corrupt ({op.where()}: its value is past the "
                                          "values)")
            op.values.append(data[at + skip:at + n] if n else None)
            at += n
        op.outputs = list(range(len(names), len(names) + _nr_outputs(op)))
        names += op.output_names or [None] * len(op.outputs)
        ops.append(op)
    outputs = [var for var, _ in graph.structs(4, "<II")]  # (OutputVar: compact_id, original_id)
    return ops, names, outputs, {}, _metadata(graph.table(5), info=2, opts=3), size_at + 4 + size


def _read_v2(data):
    """(operators, var names, output vars, output aliases, metadata, the bytes it takes) of
    the model of schema ``mgv2`` at the start of ``data``."""
    model, end = _model(data)
    version = model.scalar(1, "I")
    if version not in (1, 2):  # (1: operators of serialization version 1 only)
        raise UpstreamFormatError(f"load: upstream model_version {version} is not read "
                                  f"(model_version 1 and 2 are); {_WHAT_TO_DO}")
    return ([_Op(t, k) for k, t in enumerate(model.tables(2))],
            [t.string(0) for t in model.tables(3)],
            [v.scalar(0, "I") for v in model.tables(4)],
            {v.scalar(0, "I"): v.string(1) for v in model.tables(5)},
            _metadata(model.table(7)), end)


def read_upstream(data):
    """(graph.json dict, arrays) of this fork's format for the upstream file bytes ``data``."""
    kind = is_upstream(data)
    if kind not in ("mgv2", "MGBC"):
        raise UpstreamFormatError(
            f"load: this is an upstream MegEngine graph file in the {kind!r} format "
            f"({_OTHER_FORMATS[kind]}), which this fork does not read; {_WHAT_TO_DO}")
    try:
        count = 0
        if data[:8] == b"mgbtest0":
            count, data = struct.unpack_from("<I", data, 8)[0], data[12:]
        ops, names, outputs, aliases, meta, end = (_read_v1 if kind == "MGBC" else _read_v2)(data)
        cases = _testcases(data[end:], count)  # (of schema mgv2 after either)
    except (struct.error, IndexError, UnicodeDecodeError) as e:
        raise UpstreamFormatError(f"load: the upstream .mge file is truncated or corrupt "
                                  f"({e})") from e
    for op in ops:
        if op.type not in _OPERATORS and op.type not in _SOURCES and op.type != "AssertEqual":
            what = f"operator type {op.type}" if op.type else (
                f"an operator of unknown type id {op.type_id:#x}")
            raise UpstreamFormatError(
                f"load: {op.where()}: {what} is not provided by this reader (it reads "
                f"{', '.join(sorted(_OPERATORS))}); {_WHAT_TO_DO}")
    return _translate(ops, names, outputs, aliases, meta, cases)


def _testcases_json(cases, feeds, names, asserts, specs, out_names, outputs, arrays):
    """graph.json's ``testcases`` (see `megengine.jit.dump`) of upstream's test cases, their
    arrays added to ``arrays``."""
    order = sorted(_input_spec(op, names)[0] for op in feeds)  # (upstream's order of values)
    out_of = {a.inputs[0]: out_names[outputs.index(a.inputs[1])] for a in asserts
              if a.inputs[1] in outputs}
    expect_name = {_input_spec(op, names)[0]: out_of.get(op.outputs[0]) for op in feeds}

    def add(array):
        arrays[len(arrays)] = array
        return len(arrays) - 1

    json_cases = []
    for values in cases:
        if len(values) != len(order):
            raise UpstreamFormatError(f"load: a test case holds {len(values)} values for the "
                                      f"{len(order)} inputs {order}; the file is corrupt")
        named = dict(zip(order, values))
        json_cases.append({
            "inputs": {n: add(named[n]) for n, _, _ in specs},
            "outputs": {expect_name[n]: add(v) for n, v in named.items()
                        if expect_name.get(n) is not None}})
    check = asserts[0] if asserts else None
    return {"cases": json_cases, "no_assert": check is None,
            "maxerr": check.p(0, "f", 1e-4) if check else 1e-4,
            "silent": not (check and check.p(1, "B", 0))}


def _input_spec(op, names):
    t = op.tensors[0] if op.tensors else op.refuse("an input without its tensor description")
    return (t.string(0) or names[op.outputs[0]], tuple(t.scalars(1, "I")),
            _dtype(t.table(3), op.where()))


def _holds_quantized(ops, consts):
    """Whether the file's values or operators' results (ConvBias's, a TypeCvt's) are of a
    quantized dtype."""
    from ..core.dtype import is_quantize

    return (any(is_quantize(v.dtype) for v, _ in consts.values()) or
            any(is_quantize(op.dtype()) for op in ops if op.output_dtype is not None) or
            any(is_quantize(_dtype(op.param, op.where())) for op in ops
                if op.type == "TypeCvtV2"))


def _translate(ops, names, outputs, aliases, meta, cases):
    from ..core.tensor import Tensor
    from ..device import get_default_device, set_default_device
    from .dump import in_memory, program_json
    from .tracing import trace

    # a file with test cases checks its outputs with AssertEqual(expected input, output): the
    # program computes the outputs; the expected values go to the test cases
    asserts = [op for op in ops if op.type == "AssertEqual"]
    expected = {op.inputs[0]: op for op in asserts}
    outputs = [next((a.inputs[1] for a in asserts if a.outputs[0] == i), i) for i in outputs]
    feeds = [op for op in ops if op.type == "Host2DeviceCopy"]
    inputs = [op for op in feeds if op.outputs[0] not in expected]
    for a in asserts:  # (a file of mgb1 names the check, not the value it checks: that is
        # its expected value's name without the ":expect" upstream's dump adds)
        expect = next((_input_spec(op, names)[0] for op in feeds
                       if op.outputs[0] == a.inputs[0]), "")
        if names[a.inputs[1]] is None and expect.endswith(":expect"):
            names[a.inputs[1]] = expect[:-len(":expect")]
    made = set()
    for op in ops:  # (ids out of order or range: a corrupt file)
        missing = [i for i in op.inputs if i not in made]
        if missing:
            raise UpstreamFormatError(f"load: {op.where()} reads var #{missing[0]}, which no "
                                      "operator before it computes; the file is corrupt")
        made.update(op.outputs)
    if any(i not in made for i in outputs) or not made <= set(range(len(names))):
        raise UpstreamFormatError("load: the file's outputs or vars name vars it does not "
                                  "hold; the file is corrupt")
    needed, live = set(outputs), []  # the operators the outputs need (not the checks' error)
    for op in reversed(ops):
        if needed.intersection(op.outputs) and op.type not in _SOURCES:
            needed.update(op.inputs)
            live.append(op)
    live.reverse()
    specs = [_input_spec(op, names) for op in inputs]
    consts = {}
    for op in ops:
        if op.type in ("ImmutableTensor", "MultipleDeviceTensorHolder"):
            if len(op.tensors) != len(op.outputs):
                op.refuse(f"{len(op.tensors)} values for {len(op.outputs)} outputs")
            for t, v, k in zip(op.tensors, op.values, op.outputs):
                consts[k] = (_host_tensor(t, v, op.where()), names[k] or t.string(0) or op.name)

    def program(*args):
        values = dict(zip((op.outputs[0] for op in inputs), args))
        for k, (value, name) in consts.items():
            values[k] = value.view(_Constant)
            values[k].name = name
        for op in live:
            ins = [values[i] for i in op.inputs]
            if any(type(v) is _NotComputed for v in ins):
                op.refuse("reading an output this reader does not compute (the argmax indices "
                          "of ROIAlign or ROIPooling, U or Vh of an SVD without compute_uv)")
            n = _DATA_INPUTS.get(op.type, len(ins))
            if n is not None:
                ins = [_tensor(v, op) for v in ins[:n]] + ins[n:]
            try:
                out = _OPERATORS[op.type](op, *ins)
            except UpstreamFormatError:
                raise
            except NotImplementedError as e:  # (a mode the engine does not provide)
                op.refuse(f"what it computes ({e})")
            except Exception as e:  # (shapes or values that do not fit its inputs)
                raise UpstreamFormatError(
                    f"load: {op.where()} cannot be computed from its inputs "
                    f"({type(e).__name__}: {e}); the file is corrupt, or uses it in a way "
                    f"this reader does not provide") from e
            out = out if type(out) is tuple else (out,)
            # upstream's graph has no 0-d values: its scalars are vectors of one item
            out = tuple(o.reshape(1) if not _is_host(o) and type(o) is not _NotComputed
                        and o.ndim == 0 else o for o in out)
            if len(out) != len(op.outputs):
                op.refuse(f"{len(op.outputs)} outputs (it computes {len(out)})")
            values.update(zip(op.outputs, out))
        for i in outputs:
            if type(values[i]) is _NotComputed:
                raise UpstreamFormatError(
                    f"load: the output {names[i]!r} is an output this reader does not "
                    f"compute (the argmax indices of ROIAlign or ROIPooling, U or Vh of an SVD "
                    f"without compute_uv, which only their backward reads): dump the model "
                    f"without it")
        return [_tensor(values[i], ops[0]) for i in outputs]

    out_names = [aliases.get(i) or names[i] for i in outputs]
    default = get_default_device()
    if _holds_quantized(ops, consts):  # quantized tensors live on CPU devices only: the
        set_default_device("cpu0")  # program runs on cpu0, recorded so (on a CUDA machine too)
    try:
        f = trace(program, symbolic=True, capture_as_const=True)
        from ..functional.math import MatInv  # (a MatrixInverse of zero inputs is singular)

        MatInv.singular_ok = True
        try:
            f(*[Tensor(np.zeros(shape, dtype), dtype=dtype) for _, shape, dtype in specs])
        finally:
            MatInv.singular_ok = False
        # what f.dump would write, handed over as read back (no archive to compress and read)
        graph, arrays = in_memory(*program_json(
            f._dumped_program(), arg_names=[n for n, _, _ in specs], output_names=out_names,
            enable_metadata=meta is not None, user_info=meta and meta["user_info"],
            _function=program))
    finally:
        set_default_device(default)
    if cases:
        graph["testcases"] = _testcases_json(cases, feeds, names, asserts, specs, out_names,
                                             outputs, arrays)
    if meta is not None:  # (the user_info is the dump's; the flags are the file's)
        from .dump_format import _Writer
        options = {k: v for k, v in meta.items() if k.startswith("enable_")}
        graph["metadata"].update(graph_modified=meta["graph_modified"],
                                 optimized_for_inference=meta["optimized_for_inference"],
                                 optimize_options=_Writer().value(options, "options"))
    return graph, arrays
