"""Writing upstream MegEngine's binary ``.mge`` format (FlatBuffers, file identifier ``mgv2``,
``model_version`` 2: what upstream 1.13's ``trace.dump`` writes by default), so that a model
traced here runs on upstream's runtimes (its ``load_and_run``, MegEngine Lite, its Python
``GraphInference``). ``trace.dump(file, dump_format="FBS_V2")`` writes it.

The program is written at upstream's operator granularity: the operators
`megengine.utils.network` gives a dumped program (a linear layer as MatrixMul and an ADD, a
reduction per axis, ...; `megengine.utils.network_node.graph_type` / ``graph_params``), each
as the operator upstream registers for it, with its parameter table (upstream's published
schema: ``schema_v2.fbs``, ``opr_param_defs.fbs``, ``dtype.fbs``; the field positions are
those `upstream_mge` reads). A reshape target computed from shapes (symbolic shapes) is
computed in the file too (`_target_shape`), so the file follows the input's batch; other
target shapes are the traced constants, and a scalar is a vector of one item, as in
upstream's graphs. What has no writer here (an operator not in `SUPPORTED`,
indexing with None, a dtype beyond float32/float16 and 8-32 bit integers and bool, a 4-bit
quantized one, test cases), or what upstream's operator would compute otherwise, raises
`DumpError` naming it, before anything is written. A value whose shape the data decides
(a cond_take's, a mask's) holds no shape in the file, and only operators whose writers take
no traced shape may read it (`_SHAPE_FREE`).

The FlatBuffers buffer is laid out front to back (`_Encoder`): each table's vtable just
before it, its strings, vectors and child tables after it; offsets point forward, and every
scalar sits at a multiple of its size from the start of the file (upstream verifies the
buffer with its size prefix, so alignment counts from there).
"""
import os
import pickle
import struct
import sys
import warnings

import numpy as np

from ..core._imperative_rt.ops import _ELEMWISE_MODES
from .dump_format import DumpError
from .upstream_mge import _LAYOUTS, _OPTION_BITS, _xxh64

__all__ = ["write_upstream", "SUPPORTED"]

_MGE_VERSION = 101300  # the version upstream 1.13's files carry (its loader warns on newer)
_NO_AXIS = 7  # megdnn's OptionalAxisV1 "no axis": a reshape target without an inferred size
_MAX_NDIM = 7  # upstream's TensorShape::MAX_NDIM
_EVERY_AXIS = 2 ** 31 - 1  # megdnn's Reduce over every axis (the result: a (1,) value)


# --------------------------------------------------------------------------------------------
# FlatBuffers
# --------------------------------------------------------------------------------------------
class _Encoder:
    """A size-prefixed FlatBuffers buffer written front to back.

    A table is a dict ``{field index: (kind, value)}``; kind is a `struct` code for an inline
    scalar ("B", "?", "b", "I", "i", "Q", "d"), or "str" (str or bytes), "u8s" (bytes),
    "u32s", "i32s" (lists), "structs <fmt>" (a list of tuples), "table" (a dict), "tables" (a
    list of dicts). A union is two fields: its type ("B") and its value ("table")."""

    def __init__(self):
        self.buf = bytearray(4)  # the size prefix, set by `finish`

    def _pad(self, align):
        """Pad to a multiple of ``align`` from the start of the file."""
        self.buf += bytes(-len(self.buf) % align)

    def _point(self, slot, target):
        struct.pack_into("<I", self.buf, slot, target - slot)

    def finish(self, root, identifier):
        slot = len(self.buf)
        self.buf += bytes(4) + identifier
        self._point(slot, self._table(root))
        self._pad(8)
        struct.pack_into("<I", self.buf, 0, len(self.buf) - 4)
        return bytes(self.buf)

    def _table(self, fields):
        n = max(fields) + 1 if fields else 0
        inline = sorted(((struct.calcsize("<" + kind) if len(kind) == 1 else 4, i)
                         for i, (kind, _) in fields.items()), reverse=True)  # (widest first)
        at, end = {}, 4  # (after the offset to the vtable)
        for size, i in inline:
            end += -end % size
            at[i] = end
            end += size
        align = max([4] + [size for size, _ in inline])
        self._pad(2)
        vtable = len(self.buf)
        self.buf += struct.pack(f"<HH{n}H", 4 + 2 * n, end, *(at.get(i, 0) for i in range(n)))
        self._pad(align)
        pos = len(self.buf)
        self.buf += struct.pack("<i", pos - vtable) + bytes(end - 4)
        later = []
        for i, (kind, value) in sorted(fields.items()):
            if len(kind) == 1:
                struct.pack_into("<" + kind, self.buf, pos + at[i], value)
            else:
                later.append((pos + at[i], kind, value))
        for slot, kind, value in later:
            self._point(slot, self._child(kind, value))
        return pos

    def _child(self, kind, value):
        if kind == "table":
            return self._table(value)
        self._pad(4)
        pos = len(self.buf)
        if kind in ("str", "u8s"):
            data = value.encode() if isinstance(value, str) else bytes(value)
            self.buf += struct.pack("<I", len(data)) + data + (b"\0" if kind == "str" else b"")
        elif kind in ("u32s", "i32s"):
            self.buf += struct.pack(f"<I{len(value)}{'I' if kind == 'u32s' else 'i'}",
                                    len(value), *value)
        elif kind.startswith("structs "):
            fmt = kind.split()[1]
            self.buf += struct.pack("<I", len(value))
            for item in value:
                self.buf += struct.pack(fmt, *item)
        elif kind == "tables":
            self.buf += struct.pack("<I", len(value)) + bytes(4 * len(value))
            for k, table in enumerate(value):
                self._point(pos + 4 + 4 * k, self._table(table))
        else:  # pragma: no cover (a kind this module does not use)
            raise AssertionError(kind)
        return pos


# --------------------------------------------------------------------------------------------
# values
# --------------------------------------------------------------------------------------------
_DTYPE_ENUM = {np.dtype(k): v for k, v in (("float32", 0), ("uint8", 1), ("int8", 2),
                                           ("int16", 3), ("int32", 4), ("float16", 9),
                                           ("bool", 18))}


# upstream's quantized dtypes (DTypeEnum), by the name `megengine.core.dtype` gives them
_QUANTIZED_ENUM = {"Quantized8Asymm": 11, "QuantizedS32": 12, "QuantizedS8": 13}


def _dtype(dtype, where):
    """Upstream's DType table of ``dtype``: its DTypeEnum, and for a quantized one its
    LinearQuantizationParam (the DTypeParam union's type 1: scale, zero point)."""
    dtype = np.dtype(dtype)
    q = (dtype.metadata or {}).get("mgb_dtype")
    if q is not None and q.get("name") in _QUANTIZED_ENUM:
        param = {0: ("f", float(q["scale"]))}
        if "zero_point" in q:
            param[1] = ("B", int(q["zero_point"]))
        return {0: ("b", _QUANTIZED_ENUM[q["name"]]), 1: ("B", 1), 2: ("table", param)}
    if dtype.metadata is not None or dtype not in _DTYPE_ENUM:
        raise DumpError(
            f"trace.dump(dump_format='FBS_V2'): {where} has dtype {dtype}"
            f"{'' if q is None else ' (' + str(q.get('name')) + ')'}, which this writer does "
            f"not write ({', '.join(str(d) for d in _DTYPE_ENUM)} and the 8-bit and qint32 "
            "quantized dtypes are written); dump without dump_format to keep it")
    return {0: ("b", _DTYPE_ENUM[dtype])} if _DTYPE_ENUM[dtype] else {}


def _comp_node(device):
    """Upstream's logical comp node string ("xpux:0") of a device name ("xpux")."""
    device = str(device or "xpux")
    return {0: ("str", device if ":" in device else device + ":0")}


def _shape(shape):
    """Upstream's shape of a value of ``shape``: a scalar is a vector of one item there."""
    return [int(d) for d in shape] or [1]


def _tensor(shape, dtype, device, where, name=None, value=None):
    """A Tensor table: a constant's value, or an input's name, shape and dtype."""
    t = {1: ("u32s", _shape(shape)), 2: ("table", _comp_node(device)),
         3: ("table", _dtype(dtype, where)), 4: ("B", 1), 5: ("table", {})}  # (default format)
    if name is not None:
        t[0] = ("str", name)
    if value is not None:
        t[6] = ("u8s", np.ascontiguousarray(value).tobytes())
    return t


def _type_id(name, version):
    """Upstream's id of the operator registered as ``name`` with ``version``: the hash of the
    name with its terminating NUL for version 2, of the name without its version suffix
    ("MatrixMulV2" -> "MatrixMul") for version 1 (`upstream_mge._type_ids` reads both)."""
    if version >= 2:
        return _xxh64(name.encode() + b"\0", 20160701)
    if len(name) > 2 and name[-2] == "V" and name[-1].isdigit():
        name = name[:-2]
    return _xxh64(name.encode(), 20160701)


# --------------------------------------------------------------------------------------------
# operators: graph type -> (registered name, version, param union type, params(opr, ins, outs))
# --------------------------------------------------------------------------------------------
def _matmul(p, ins, outs):
    return {0: ("?", bool(p["transposeA"])), 1: ("?", bool(p["transposeB"]))}


def _convolution(p, ins, outs):
    return {1: ("I", p["pad_h"]), 2: ("I", p["pad_w"]), 3: ("I", p["stride_h"]),
            4: ("I", p["stride_w"]), 5: ("I", p["dilate_h"]), 6: ("I", p["dilate_w"]),
            7: ("I", {"DENSE": 0, "GROUP": 1}[p["sparse"]])}


_POOL_MODES = {"MAX": 0, "AVERAGE": 1, "AVERAGE_COUNT_EXCLUDE_PADDING": 2}


def _pooling(p, ins, outs):
    return {0: ("I", _POOL_MODES[p["mode"]]), 1: ("I", p["pad_h"]), 2: ("I", p["pad_w"]),
            3: ("I", p["stride_h"]), 4: ("I", p["stride_w"]), 5: ("I", p["window_h"]),
            6: ("I", p["window_w"])}


_REDUCE_MODES = {"SUM": 0, "SUM_SQR": 1, "PRODUCT": 2, "MIN": 3, "MAX": 4, "MEAN": 5}


def _reduce(p, ins, outs):
    return {0: ("I", _REDUCE_MODES[p["mode"]]), 1: ("i", p["axis"])}


def _axis_add_remove(p, ins, outs):
    return {0: ("structs <Ii", [(d["method"], d["axisnum"]) for d in p["desc"]])}


def _dimshuffle(p, ins, outs):
    return {0: ("i32s", list(p["pattern"])), 1: ("I", len(ins[0].shape))}


_RESIZE_MODES = {"nearest": 0, "bilinear": 1}


def _resize(p, ins, outs):
    mode = p.get("mode")
    if mode not in _RESIZE_MODES or p.get("align_corners"):
        raise DumpError(f"trace.dump(dump_format='FBS_V2'): an interpolation of mode {mode!r} "
                        f"(align_corners={p.get('align_corners')}); nearest and bilinear "
                        "without align_corners are written")
    return {0: ("I", _RESIZE_MODES[mode]), 1: ("I", 0)}  # (format NCHW: Resize's default NHWC)


_PAD_MODES = {"edge": 0, "replicate": 0, "reflect": 1, "constant": 2}


def _padding(p, ins, outs):
    width, mode = p["pad_width"], p.get("mode", "constant")
    if mode not in _PAD_MODES or len(width) > 7:
        raise DumpError(f"trace.dump(dump_format='FBS_V2'): padding of mode {mode!r} over "
                        f"{len(width)} axes; constant, reflect and edge padding of up to 7 axes "
                        "are written")
    fields = {15: ("I", _PAD_MODES[mode]), 14: ("f", float(p.get("value", 0.0)))}
    for axis, (front, back) in enumerate(width):
        fields[axis], fields[7 + axis] = ("I", int(front)), ("I", int(back))
    return fields


_OPERATORS = {
    "MatrixMul": ("MatrixMulV2", 1, 20, _matmul),
    "BatchedMatrixMul": ("BatchedMatrixMulV2", 1, 20, _matmul),
    "PoolingForward": ("PoolingV1", 1, 9, _pooling),
    "AdaptivePoolingForward": ("AdaptivePoolingV1", 1, 70,
                               lambda p, ins, outs: {0: ("I", _POOL_MODES[p["mode"]])}),
    "Reshape": ("ReshapeV1", 1, 54, lambda p, ins, outs: {0: ("i", p["axis"])}),
    "Dimshuffle": ("Dimshuffle", 1, 64, _dimshuffle),
    "AxisAddRemove": ("AxisAddRemove", 1, 65, _axis_add_remove),
    "Reduce": ("ReduceV2", 1, 23, _reduce),
    "Concat": ("Concat", 1, 2, lambda p, ins, outs: {0: ("i", p["axis"])}),
    "TypeCvt": ("TypeCvtV2", 1, 67,
                lambda p, ins, outs: _dtype(outs[0].dtype, "a TypeCvt's output")),
    # (a quantized element-wise op here: dequantized inputs, the float op, then this rounding
    # to the output's quantized dtype; upstream's TypeCvt rounds float to it likewise)
    "Requantize": ("TypeCvtV2", 1, 67,
                   lambda p, ins, outs: _dtype(outs[0].dtype, "a requantized output")),
    "SoftmaxForward": ("Softmax", 2, 90, lambda p, ins, outs: {0: ("i", p["axis"])}),
    "Identity": ("Identity", 1, 1, lambda p, ins, outs: {}),
    "Pad": ("Padding", 1, 82, _padding),
}
# (convolutions, batch norms and interpolation have writers of their own: `_EXPANSIONS`)
# the operators whose comp node upstream's dump names (their config sets one)
_WITH_COMP_NODE = {"MatrixMul", "BatchedMatrixMul", "Concat"}
# the operators upstream's graph makes with a target shape as a second input
_SHAPE_INPUT = {"Reshape", "AdaptivePoolingForward", "ResizeForward"}


def _check(opr, t, p, ins):
    """Refuse what the table above would write wrong."""
    if t in _SHAPE_INPUT and len(ins) != 1:
        _refuse(opr, f"its {t} takes its shape from other values of the program (traced with "
                     "symbolic shapes), which this writer does not write (traced with "
                     "symbolic_shape=False, the shape is a constant it writes)")


# --------------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------------
def _operator(name, version, param, inputs, outputs, tensors=(), comp_node=None, extra=(),
              output_dtype=None):
    """An Operator table: upstream's registered ``name`` and ``version``, ``param`` (its union
    type, its table) or None, the var numbers it reads and makes, and the DType table its
    output takes where upstream's operator is told one (a quantized convolution's)."""
    op = {0: ("str", name), 1: ("Q", _type_id(name, version)), 12: ("I", version)}
    if output_dtype is not None:
        op[10] = ("table", output_dtype)
    if param is not None:
        op[3], op[4] = ("B", param[0]), ("table", param[1])
    if extra:  # (more parameters: their union types, their tables)
        op[5] = ("u8s", bytes(ptype for ptype, _ in extra))
        op[6] = ("tables", [table for _, table in extra])
    if inputs:
        op[7] = ("u32s", inputs)
    op[8] = ("u32s", outputs)
    if comp_node is not None:
        op[9] = ("tables", [_comp_node(comp_node)])
    if tensors:
        op[11] = ("tables", list(tensors))
    return op


class _Graph:
    """The operators and vars of the file being written: upstream numbers the vars (its
    middle tensors) in the order the operators make them."""

    def __init__(self):
        self.ids, self.middle, self.ops = {}, [], []  # ids: id(a Network var) -> var number
        self.dynamic = set()  # ids of the Network vars whose shapes data decides (cond_take's)

    def var(self, name, shape):
        self.middle.append({0: ("str", name), 1: ("u32s", _shape(shape))})
        return len(self.middle) - 1

    def const(self, value, device, name):
        """A constant (an ImmutableTensor) of ``value``; returns its var."""
        value = np.asarray(value)
        k = self.var(name, value.shape)
        self.ops.append(_operator("ImmutableTensor", 2, None, [], [k], tensors=[
            _tensor(value.shape, value.dtype, device, f"constant {name!r}", value=value)]))
        return k

    def shape_const(self, shape, device, name):
        return self.const(np.array(shape, np.int32), device, f"{name}:shape")

    def op(self, name, version, ptype, params, inputs, outputs, comp_node=None, extra=(),
           output_dtype=None):
        """An operator of registered ``name``; ``outputs``: (name, shape) per output var.
        Returns the output vars."""
        made = [self.var(n, shape) for n, shape in outputs]
        self.ops.append(_operator(name, version, (ptype, params), inputs, made,
                                  comp_node=comp_node, extra=extra, output_dtype=output_dtype))
        return made

    def concat(self, parts, axis, name, shape, device):
        """Concat of ``parts`` (var numbers); one part is that var itself (upstream's
        Concat::make of one input gives the input: its loader then finds no Concat)."""
        if len(parts) == 1:
            return parts[0]
        return self.op("Concat", 1, 2, {0: ("i", axis)}, parts, [(name, shape)],
                       comp_node=device)[0]

    def broadcast(self, k, shape, target, name, make_shape):
        """Var ``k`` (a value of ``shape``) broadcast to ``target`` by a Broadcast to the shape
        var ``make_shape()`` makes; ``k`` itself where upstream's shapes already agree (a scalar
        is a vector of one item there): upstream's Broadcast::make gives its input then, and its
        loader asserts on the type."""
        if _shape(shape) == _shape(target):
            return k
        return self.op("Broadcast", 1, 1, {}, [k, make_shape()], [(name, target)])[0]

    def elemwise(self, mode, inputs, name, shape):
        return self.op("Elemwise", 1, 17, {0: ("I", _ELEMWISE_MODES.index(mode))}, inputs,
                       [(name, shape)])[0]

    def reduce(self, mode, x, axis, name, shape):
        return self.op("ReduceV2", 1, 23, {0: ("I", _REDUCE_MODES[mode]), 1: ("i", axis)},
                       [x], [(name, shape)])[0]


# Operators of this fork's program that upstream's graph computes with several operators: each
# writes them as upstream's functional code builds them (megengine/functional/nn.py and
# tensor.py of 1.13), and gives the Network's output var the last one's number.
def _leaky_relu(g, opr, ins, outs, p, device, slope=None):
    """``maximum(x, 0) + slope * minimum(x, 0)`` (upstream's leaky_relu and prelu)."""
    x, y = g.ids[id(ins[0])], outs[0]
    shape, name = tuple(y.shape), y.name
    zero = g.const(np.zeros(1, y.dtype), device, f"{name}:zero")
    if slope is None:
        slope = g.const(np.array([p["slope"]], y.dtype), device, f"{name}:slope")
    high = g.elemwise("MAX", [x, zero], f"{name}:max", shape)
    low = g.elemwise("MIN", [x, zero], f"{name}:min", shape)
    scaled = g.elemwise("MUL", [slope, low], f"{name}:scaled", shape)
    g.ids[id(y)] = g.elemwise("ADD", [high, scaled], name, shape)


def _prelu(g, opr, ins, outs, p, device):
    w, x = ins[1], ins[0]
    slope = g.ids[id(w)]
    if w.shape and int(np.prod(w.shape)) > 1 and len(x.shape) > 2:  # (one per channel: axis 1)
        view = (1, int(np.prod(w.shape))) + (1,) * (len(x.shape) - 2)
        slope = g.op("ReshapeV1", 1, 54, {0: ("i", _NO_AXIS)},
                     [slope, g.shape_const(view, device, f"{outs[0].name}:w")],
                     [(f"{outs[0].name}:w", view)])[0]
    _leaky_relu(g, opr, ins, outs, p, device, slope=slope)


def _log_softmax(g, opr, ins, outs, p, device):
    """``x - (log(sum(exp(x - m))) + m)`` with ``m`` the maximum along the axis (upstream's
    logsoftmax: ``inp - logsumexp(inp, axis, keepdims=True)``)."""
    x, y = g.ids[id(ins[0])], outs[0]
    axes = p.get("axes")
    if not isinstance(axes, (tuple, list)) or len(axes) != 1:
        _refuse(opr, f"a log_softmax over axes {axes!r}; one axis is written")
    shape, name = tuple(y.shape), y.name
    axis = int(axes[0]) % len(shape)
    kept = shape[:axis] + (1,) + shape[axis + 1:]
    peak = g.reduce("MAX", x, axis, f"{name}:max", kept)
    shifted = g.elemwise("SUB", [x, peak], f"{name}:shifted", shape)
    total = g.reduce("SUM", g.elemwise("EXP", [shifted], f"{name}:exp", shape), axis,
                     f"{name}:sum", kept)
    lse = g.elemwise("ADD", [g.elemwise("LOG", [total], f"{name}:log", kept), peak],
                     f"{name}:logsumexp", kept)
    g.ids[id(y)] = g.elemwise("SUB", [x, lse], name, shape)


def _stack(g, opr, ins, outs, p, device):
    """Each input with a new axis (AxisAddRemove), then one Concat (upstream's stack)."""
    y = outs[0]
    axis = int(p["axis"]) % len(y.shape)
    part = tuple(y.shape[:axis]) + (1,) + tuple(y.shape[axis + 1:])
    parts = [g.op("AxisAddRemove", 1, 65, {0: ("structs <Ii", [(0, axis)])}, [g.ids[id(v)]],
                  [(f"{y.name}:part{k}", part)])[0] for k, v in enumerate(ins)]
    g.ids[id(y)] = g.concat(parts, axis, y.name, y.shape, device)


def _split(g, opr, ins, outs, p, device):
    """Upstream's Split: the input, then the size of each part, as inputs."""
    bounds = list(p["bounds"])
    sizes = [g.const(np.array([hi - lo], np.int32), device, f"{opr.name}:size{k}")
             for k, (lo, hi) in enumerate(zip(bounds, bounds[1:]))]
    made = g.op("Split", 1, 2, {0: ("i", int(p["axis"]))}, [g.ids[id(ins[0])]] + sizes,
                [(v.name, v.shape) for v in outs])
    for v, k in zip(outs, made):
        g.ids[id(v)] = k


_NONLINEAR = {"identity": 0, "relu": 1, "sigmoid": 2, "h_swish": 3}


def _conv_bias(g, opr, ins, outs, p, device):
    """A quantized convolution (`megengine.functional.quantized`'s, what ``quantize`` makes of
    Conv2d, ConvBn2d, ConvBnRelu2d): upstream's ConvBiasForward, its nonlinearity a parameter
    and its output's quantized dtype the operator's output dtype."""
    transposed, stride, padding, dilation, out_pad, groups = p["geometry"]
    y = outs[0]
    if p.get("mode") not in _NONLINEAR or len(stride) != 2 or transposed and (
            p["mode"] != "identity" or len(ins) != 2 or any(out_pad)):
        what = "transposed convolution" if transposed else "convolution"
        _refuse(opr, f"a quantized {what} of nonlinearity {p.get('mode')!r} over "
                     f"{len(stride)} axes with {len(ins) - 2} bias inputs; 2-d ones of "
                     "identity, relu, sigmoid and h_swish are written, transposed ones of "
                     "identity without bias and output padding")
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    if transposed:  # (upstream's ConvolutionBackwardData: the weight, then the data)
        params = {1: ("I", ph), 2: ("I", pw), 3: ("I", sh), 4: ("I", sw), 5: ("I", dh),
                  6: ("I", dw), 7: ("I", int(groups != 1))}
        g.ids[id(y)] = g.op("ConvolutionBackwardData", 2, 3, params,
                            [g.ids[id(ins[1])], g.ids[id(ins[0])]], [(y.name, y.shape)],
                            extra=[(55, {})], output_dtype=_dtype(y.dtype, f"{y.name}"))[0]
        return
    params = {0: ("I", _NONLINEAR[p["mode"]]), 2: ("I", int(groups != 1)), 4: ("I", ph),
              5: ("I", pw), 6: ("I", sh), 7: ("I", sw), 8: ("I", dh), 9: ("I", dw)}
    g.ids[id(y)] = g.op("ConvBiasForward", 2, 6, params, [g.ids[id(v)] for v in ins],
                        [(y.name, y.shape)], extra=[(55, {})],
                        output_dtype=_dtype(y.dtype, f"{y.name}"))[0]


# comparisons upstream's Elemwise has the other way round: ``a > b`` is ``LT(b, a)``
_SWAPPED = {"GT": "LT", "GEQ": "LEQ"}


def _elemwise(g, opr, ins, outs, p, device):
    """An Elemwise of upstream's modes (`_ELEMWISE_MODES`), ``>`` and ``>=`` with their
    operands swapped, as upstream's operators build them."""
    mode, inputs = p["mode"], [g.ids[id(v)] for v in ins]
    if mode in _SWAPPED:
        mode, inputs = _SWAPPED[mode], inputs[::-1]
    if mode == "ATAN":  # (upstream's F.atan: ATAN2 of x and 1)
        mode = "ATAN2"
        inputs.append(g.const(np.ones(1, outs[0].dtype), device, f"{outs[0].name}:one"))
    if mode == "CLIP" and len(ins) == 1:  # (F.clip's numbers: upstream's CLIP of three
        return _clip(g, opr, ins, outs, p, device)  # inputs, or MAX / MIN of one bound)
    if mode == "TRUNC":  # (this fork's F.trunc: sign(x) * floor(|x|); integers as they are)
        y = outs[0]
        if np.dtype(y.dtype).kind != "f":
            g.ids[id(y)] = inputs[0]
            return
        sign = g.elemwise("SIGN", inputs, f"{y.name}:sign", y.shape)
        low = g.elemwise("FLOOR", [g.elemwise("ABS", inputs, f"{y.name}:abs", y.shape)],
                         f"{y.name}:floor", y.shape)
        g.ids[id(y)] = g.elemwise("MUL", [sign, low], y.name, y.shape)
        return
    if mode not in _ELEMWISE_MODES:
        _refuse(opr, f"an element-wise mode {mode} upstream's Elemwise does not have")
    y = outs[0]
    if np.dtype(y.dtype) == np.bool_ and any(np.dtype(v.dtype) != np.bool_ for v in ins):
        # a comparison: upstream's Elemwise gives 0/1 in its operands' dtype, and its files
        # hold a TypeCvt to bool after it
        made = g.elemwise(mode, inputs, f"{y.name}:{ins[0].dtype}", y.shape)
        g.ids[id(y)] = g.op("TypeCvtV2", 1, 67, _dtype(np.bool_, y.name), [made],
                            [(y.name, y.shape)])[0]
        return
    g.ids[id(y)] = g.elemwise(mode, inputs, y.name, y.shape)


def _clip(g, opr, ins, outs, p, device):
    """``clip(x, lower, upper)`` of number bounds, as upstream's F.clip builds it: Elemwise
    CLIP of x and both bounds, or MAX with the lower / MIN with the upper one alone; the
    bounds in the output's dtype (float16: rounded to it first, as here)."""
    op, y = opr._op, outs[0]
    x = g.ids[id(ins[0])]
    if _dtype(ins[0].dtype, "") != _dtype(y.dtype, ""):
        x = g.op("TypeCvtV2", 1, 67, _dtype(y.dtype, y.name), [x],
                 [(f"{y.name}:{y.dtype}", ins[0].shape)])[0]
    bounds = [(g.const(np.array([b], y.dtype), device, f"{y.name}:{what}"), mode)
              for b, what, mode in ((op.lower, "lower", "MAX"), (op.upper, "upper", "MIN"))
              if b is not None]
    if len(bounds) == 2:
        g.ids[id(y)] = g.elemwise("CLIP", [x] + [k for k, _ in bounds], y.name, y.shape)
    else:
        (k, mode), = bounds
        g.ids[id(y)] = g.elemwise(mode, [x, k], y.name, y.shape)


def _where(g, opr, ins, outs, p, device):
    """``where(mask, x, y)`` as upstream's builds it: the mask cast to the values' dtype,
    ``SWITCH_GT0(m, x) + SWITCH_GT0(1 - m, y)`` (a value not chosen is never read: inf and NaN
    stay where they are not chosen)."""
    y = outs[0]
    mask, a, b = (g.ids[id(v)] for v in ins)
    shape = tuple(ins[0].shape)
    m = g.op("TypeCvtV2", 1, 67, _dtype(y.dtype, y.name), [mask],
             [(f"{y.name}:mask", shape)])[0]
    one = g.const(np.ones(1, y.dtype), device, f"{y.name}:one")
    rest = g.elemwise("SUB", [one, m], f"{y.name}:other", shape)
    g.ids[id(y)] = g.elemwise(
        "ADD", [g.elemwise("SWITCH_GT0", [m, a], f"{y.name}:x", y.shape),
                g.elemwise("SWITCH_GT0", [rest, b], f"{y.name}:y", y.shape)], y.name, y.shape)


def _broadcast_as(g, opr, ins, outs, p, device):
    """This fork's ``a + 0`` of another shape or dtype: Broadcast, then TypeCvt."""
    x, y = ins[0], outs[0]
    cast = _dtype(x.dtype, "") != _dtype(y.dtype, "")
    k = g.broadcast(g.ids[id(x)], x.shape, y.shape, f"{y.name}:shape" if cast else y.name,
                    lambda: _target_shape(g, opr, y, device))
    if cast:
        k = g.op("TypeCvtV2", 1, 67, _dtype(y.dtype, y.name), [k], [(y.name, y.shape)])[0]
    g.ids[id(y)] = k


def _topk(g, opr, ins, outs, p, device):
    """Upstream's TopK (the k smallest; ``descending``: of the negated input, the values
    negated back, as upstream's topk builds it): its k as an input, values and indices out."""
    op = opr._op
    if op.kth_only:
        return _topk_kth(g, opr, ins, outs, p, device)
    x, (values, indices) = g.ids[id(ins[0])], outs
    if op.descending:
        x = g.elemwise("NEGATE", [x], f"{values.name}:negated", ins[0].shape)
    k = g.const(np.array([op.k], np.int32), device, f"{opr.name}:k")
    v, i = g.op("TopK", 1, 44, {0: ("I", 1 if op.no_sort else 2)}, [x, k],
                [(f"{values.name}:top" if op.descending else values.name, values.shape),
                 (indices.name, indices.shape)])
    if op.descending:
        v = g.elemwise("NEGATE", [v], values.name, values.shape)
    g.ids[id(values)], g.ids[id(indices)] = v, i


def _compute(g, opr, ins, outs, p, device):
    """This fork's ops computed by a function (``Compute``): argmax and argmin, as upstream's
    Argmax / Argmin per axis (keeping it, highest axis first), each followed by an
    AxisAddRemove dropping it unless ``keepdims``."""
    op, y = opr._op, outs[0]
    writer = _COMPUTED.get(getattr(op.fn, "__name__", ""))
    if writer is not None:
        return writer(g, opr, ins, outs, p, device)
    if getattr(op.fn, "__name__", "") != "_arg_reduce_fn":
        _refuse(opr, f"it computes {getattr(op.fn, '__name__', op.fn)!r}, which has no writer")
    kind, axes, keepdims = op.args
    if axes is None:  # (over every axis: of the flattened value)
        return _arg_reduce_flat(g, opr, ins, outs, p, device)
    x, shape = g.ids[id(ins[0])], list(ins[0].shape)
    name = "Argmax" if kind == "argmax" else "Argmin"
    for k, a in enumerate(sorted((int(a) % len(shape) for a in axes), reverse=True)):
        shape[a] = 1
        x = g.op(name, 1, 2, {0: ("i", a)}, [x], [(f"{y.name}:{k}", tuple(shape))])[0]
        if not keepdims:
            del shape[a]
            x = g.op("AxisAddRemove", 1, 65, {0: ("structs <Ii", [(1, a)])}, [x],
                     [(f"{y.name}:{k}:dropped", tuple(shape))])[0]
    g.ids[id(y)] = x


def _linspace(g, opr, ins, outs, p, device):
    """Upstream's Linspace of start, stop and count (inputs of one item each: the program's
    values, or its constants and a count computed from shapes), float32, then cast."""
    from ..jit._program import _DimExpr

    y = outs[0]
    if ins:
        inputs = [g.ids[id(v)] for v in ins]
    else:  # (numbers, or sizes computed from shapes: a count in int32, bounds in float32)
        dyn = dict(opr._dyn or ())
        inputs = []
        for k, dtype in (("start", np.float32), ("stop", np.float32), ("num", np.int32)):
            v = dyn.get(k, getattr(opr._op, k, None))
            inputs.append(_size(g, opr, v.tree, device, f"{y.name}:{k}", dtype)
                          if type(v) is _DimExpr else
                          g.const(np.array([v], dtype), device, f"{y.name}:{k}"))
    f32 = np.dtype(np.float32)
    made = g.op("Linspace", 1, 29, {} if p.get("endpoint", True) else {0: ("?", False)}, inputs,
                [(y.name if y.dtype == f32 else f"{y.name}:float32", y.shape)],
                comp_node=device)[0]
    if np.dtype(y.dtype) != f32:
        made = g.op("TypeCvtV2", 1, 67, _dtype(y.dtype, f"{y.name}"), [made],
                    [(y.name, y.shape)])[0]
    g.ids[id(y)] = made


def _roll(g, opr, ins, outs, p, device):
    """``roll`` as upstream builds it: per shifted axis, a Split into the parts before and
    after the cut and a Concat of them swapped; over every axis (``axis=None``), of the
    flattened value, reshaped back."""
    x, y = g.ids[id(ins[0])], outs[0]
    shape = tuple(ins[0].shape)
    shifts, axes = p["shift"], p["axis"]
    flat = axes is None
    if flat:
        size = int(np.prod(shape))
        x = g.op("ReshapeV1", 1, 54, {0: ("i", _NO_AXIS)},
                 [x, g.shape_const([size], device, f"{y.name}:flat")],
                 [(f"{y.name}:flat", (size,))])[0]
        now, shifts, axes = (size,), (shifts,), (0,)
    else:
        now = shape
        if isinstance(shifts, (int, np.integer)):
            shifts, axes = (shifts,), (axes,)
    for k, (shift, axis) in enumerate(zip(shifts, axes)):
        axis = int(axis) % len(now)
        size = now[axis]
        cut = size - int(shift) % size if size else 0
        if cut in (0, size):  # (a whole turn: nothing moves)
            continue
        part = lambda n: now[:axis] + (n,) + now[axis + 1:]  # noqa: E731
        sizes = [g.const(np.array([n], np.int32), device, f"{y.name}:size{k}{j}")
                 for j, n in enumerate((cut, size - cut))]
        a, b = g.op("Split", 1, 2, {0: ("i", axis)}, [x] + sizes,
                    [(f"{y.name}:head{k}", part(cut)), (f"{y.name}:tail{k}", part(size - cut))])
        x = g.concat([b, a], axis, f"{y.name}:{k}", now, device)
    if flat:
        x = g.op("ReshapeV1", 1, 54, {0: ("i", _NO_AXIS)},
                 [x, g.shape_const(_shape(shape), device, y.name)], [(y.name, shape)])[0]
    g.ids[id(y)] = x


def _layer_norm(g, opr, ins, outs, p, device):
    """Upstream's LayerNorm operator: the normalized output, then the mean and 1 / std."""
    if p.get("family") != "layer_norm" or p.get("has_weight") != p.get("has_bias"):
        _refuse(opr, "a normalization other than layer_norm with both or neither of weight "
                     "and bias")
    x, y = ins[0], outs[0]
    size = int(p["view"][-1])
    nd, n = 0, 1  # the fewest trailing axes holding `size` values (one axis at least; trailing
    while (nd == 0 or n < size) and nd < len(x.shape):  # axes of 1 normalize alike either way)
        nd += 1
        n *= int(x.shape[-nd])
    if n != size:
        _refuse(opr, f"a layer_norm over {size} values that are no trailing axes of {x.shape}")
    lead = tuple(x.shape[:len(x.shape) - nd]) or (1,)
    affine = bool(p["has_weight"])
    made = g.op("LayerNorm", 1, 85, {0: ("?", affine), 1: ("f", float(p["eps"])), 2: ("Q", nd),
                                     3: ("Q", size)},
                [g.ids[id(v)] for v in ins[:3 if affine else 1]],
                [(y.name, y.shape), (f"{y.name}:mean", lead), (f"{y.name}:rstd", lead)])
    g.ids[id(y)] = made[0]


_SIZE_MODES = {"+": "ADD", "-": "SUB", "*": "MUL", "//": "FLOOR_DIV", "%": "MOD",
               "/": "TRUE_DIV", "max": "MAX", "min": "MIN"}


def _size(g, opr, tree, device, name, dtype=np.int32):
    """The var of a size computed from shapes (a `megengine.jit._program._DimExpr` tree), as
    upstream's graph computes it: GetVarShape of the value, then arithmetic on vectors of one
    item, in int32 (``dtype`` float32: a value made from sizes, ``x.shape[1] / 100``: the
    sizes converted with TypeCvt, as upstream's graph converts them)."""
    dtype = np.dtype(dtype)
    if type(tree) is not tuple:
        return g.const(np.array([tree], dtype), device, f"{name}:{tree}")
    if tree[0] == "dim":
        var = opr._dyn_vars[tree[1]]
        k = g.op("GetVarShapeV1", 1, 54, {0: ("i", int(tree[2]))}, [g.ids[id(var)]],
                 [(f"shape_of({var.name})[{tree[2]}]", (1,))])[0]
        if dtype != np.int32:
            k = g.op("TypeCvtV2", 1, 67, _dtype(dtype, "a size"), [k],
                     [(f"{name}:{dtype}", (1,))])[0]
        return k
    if tree[0] == "neg":
        return g.elemwise("NEGATE", [_size(g, opr, tree[1], device, name, dtype)],
                          f"{name}:neg", (1,))
    if tree[0] not in _SIZE_MODES or (tree[0] == "/" and dtype.kind != "f"):
        _refuse(opr, f"a size computed with {tree[0]!r} of sizes, which this writer does not "
                     "write (+, -, *, //, %, max, min and, for float values, / are); trace with "
                     "symbolic_shape=False")
    a, b = (_size(g, opr, x, device, name, dtype) for x in tree[1:])
    return g.elemwise(_SIZE_MODES[tree[0]], [a, b], f"{name}:{tree[0]}", (1,))


def _target_shape(g, opr, out, device):
    """A reshape's target shape: a constant, or, where the program computes sizes from
    shapes (traced with symbolic shapes: ``x.reshape(x.shape[0], -1)``, ``flatten``), one
    item per axis, concatenated; the axis whose size upstream infers holds a placeholder."""
    from ..jit._program import _DimExpr

    frozen = dict(opr._dyn or ()).get("shape")
    if frozen is None and _inferred_axis(opr) is not None:  # (x.reshape(-1, 4): upstream's
        return g.shape_const([1 if v == -1 else v for v in opr._op.shape], device,  # Reshape
                             opr.name)  # infers that axis at each run, so the file follows it)
    if frozen is None or frozen == (tuple, ()):  # (a scalar: a vector of one item there)
        return g.shape_const(_shape(out.shape), device, opr.name)
    kind, items = frozen
    if kind not in (tuple, list) or any(type(x) not in (int, _DimExpr) for x in items):
        _refuse(opr, f"its target shape {items!r} is not written; trace with "
                     "symbolic_shape=False")
    parts = [_size(g, opr, x.tree if type(x) is _DimExpr else (1 if x == -1 else x), device,
                   f"{opr.name}:shape{k}") for k, x in enumerate(items)]
    return g.concat(parts, 0, f"{opr.name}:shape", (len(parts),), device)


def _inferred_axis(opr):
    """The axis a reshape's constant target leaves to be inferred (its -1), or None."""
    target = getattr(opr._op, "shape", None)
    if type(target) is tuple and target.count(-1) == 1 and all(
            type(v) is int for v in target):
        return target.index(-1)
    return None


def _bound(g, opr, v, device, name):
    """The var of an index value: a constant, or a size computed from shapes."""
    from ..jit._program import _DimExpr

    if type(v) is _DimExpr:
        return _size(g, opr, v.tree, device, name)
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return g.const(np.array([v], np.int32), device, name)
    if _is_index_array(v):  # (of no axes: an int; a scalar is a vector of one item upstream)
        return _index_var(g, opr, v, device, name)[0]
    _refuse(opr, f"it indexes with {v!r}; ints, slices, sizes computed from shapes, integer "
                 "index arrays and masks are written (None is not)")


def _subtensor(g, opr, ins, outs, p, device):
    """``x[...]`` of ints and slices (their bounds constants, or sizes computed from shapes):
    upstream's Subtensor, items (axis, has begin, has end, has step, is an index), the values
    as inputs in that order; ``x[...] = v`` (SetSubtensor) and ``x[...] += v`` (IncrSubtensor)
    take ``v`` as their second input."""
    if type(opr._op).__name__ in ("_IndexOp", "IndexAdd"):  # (upstream's descriptors)
        _index_descriptor(g, opr, ins, outs, device)
        return
    frozen = dict(opr._dyn or ()).get("index")
    index = opr.params.get("index") if frozen is None else frozen
    if type(index) is tuple and index and index[0] is tuple:  # (`_freeze`'s form of a tuple)
        index = index[1]
    index = index if isinstance(index, tuple) else (index,)
    ndim = len(ins[0].shape)
    if any(e is Ellipsis for e in index):
        k = index.index(Ellipsis)
        index = index[:k] + (slice(None),) * (ndim - len(index) + 1) + index[k + 1:]
    index = tuple(slice(*e[1:]) if type(e) is tuple and e and e[0] is slice else e  # (frozen
                  for e in index)  # slices: their form in op state)
    if any(_is_index_array(e) and _index_shape(opr, e) for e in index):  # (0-d: ints)
        _indexing(g, opr, ins, outs, index, device)
        return
    items, values = [], []
    for axis, e in enumerate(index):
        if type(e) is slice:
            if e == slice(None):
                continue
            parts = [(e.start, "begin"), (e.stop, "end"), (e.step, "step")]
            items.append((axis,) + tuple(v is not None for v, _ in parts) + (False,))
            values += [v for v, _ in parts if v is not None]
        else:
            items.append((axis, False, False, False, True))
            values.append(e)
    name = _WRITES.get(type(opr).__name__, ("Subtensor",))[0]
    inputs = [g.ids[id(ins[0])]]
    if name != "Subtensor":
        inputs.append(_part_value(g, opr, ins[1], _region_shape(opr, ins[0].shape, index),
                                  device))
    inputs += [_bound(g, opr, v, device, f"{opr.name}:index{k}") for k, v in enumerate(values)]
    y = outs[0]
    g.ids[id(y)] = g.op(name, 1, 66, {0: ("structs <b????", items)}, inputs,
                        [(y.name, y.shape)])[0]


def _part_value(g, opr, value, region, device):
    """The var of the value written into a part of shape ``region``: upstream's writes take
    one of the part's shape exactly, so a number or a row is broadcast first, as upstream's
    ``__setitem__`` does."""
    return g.broadcast(g.ids[id(value)], value.shape, region, f"{opr.name}:value",
                       lambda: g.shape_const(region, device, f"{opr.name}:value"))


def _is_index_array(e):
    from ..jit._program import _ArrayValue, _Ref

    return type(e) in (_Ref, _ArrayValue) or isinstance(e, np.ndarray)


# the Network's operator of an index write or an index add (its class named by the index's
# kind) -> upstream's operators for an index of ints and slices, and for an index array
_WRITES = {k: v for keys, v in (
    (("SetSubtensor", "IndexingSetMultiAxisVec"), ("SetSubtensor", "IndexingSetMultiAxisVec")),
    (("IncrSubtensor", "IndexingIncrMultiAxisVec"),
     ("IncrSubtensor", "IndexingIncrMultiAxisVec"))) for k in keys}


def _index_shape(opr, e):
    """The shape of index array ``e`` (a constant, or a value of the program)."""
    from ..jit._program import _ArrayValue, _Ref

    if type(e) is _Ref:
        return tuple(opr._dyn_vars[e.slot].shape)
    return np.shape(e.array if type(e) is _ArrayValue else e)


def _index_var(g, opr, e, device, name, size=None):
    """(the int32 var, the shape or None where the data decides it) of index array ``e``: a
    value of the program (cast to int32 when it is of another integer dtype), or a constant
    (its negative entries made positive against ``size``, the indexed axis's, as numpy reads
    them)."""
    from ..jit._program import _ArrayValue, _Ref

    if type(e) is _Ref:  # (a value of the program)
        var = opr._dyn_vars[e.slot]
        dtype = np.dtype(var.dtype)
        if dtype.kind not in "iu" or dtype.metadata is not None:
            _refuse(opr, f"it indexes by a {dtype} value (a mask); integer index arrays are "
                         "written")
        k = g.ids[id(var)]
        if dtype != np.int32:
            k = g.op("TypeCvtV2", 1, 67, _dtype(np.int32, name), [k],
                     [(f"{name}:int32", var.shape)])[0]
        return k, None if id(var) in g.dynamic else tuple(var.shape)  # (None: data decides)
    a = np.asarray(e.array if type(e) is _ArrayValue else e)
    if a.dtype.kind not in "iu":
        _refuse(opr, f"it indexes by a {a.dtype} array of shape {a.shape} (a mask); integer "
                     "index arrays are written")
    if size:
        a = a % size
    return g.const(a.astype(np.int32), device, name), a.shape


class _Made:
    """An index array this writer computes (a mask's places): its var; its shape is the
    data's."""

    __slots__ = ("k",)

    def __init__(self, k):
        self.k = k


def _unshaped(g, made):
    """The vars ``made``, their shapes left out of the file (the data decides them)."""
    for k in made:
        del g.middle[k][1]
    return made


def _index_value(opr, e):
    """Index array ``e``: the Network var of a value of the program, or the constant."""
    from ..jit._program import _ArrayValue, _Ref

    if type(e) is _Ref:
        return opr._dyn_vars[e.slot]
    return np.asarray(e.array if type(e) is _ArrayValue else e)


def _unmask(g, opr, ins, outs, index, device):
    """``index`` with each bool mask as the int index arrays of its True places (numpy's
    reading of a mask): a constant's computed here, a 1-d value's by upstream's CondTake of the
    mask (its places), as upstream's indexing writes them. A mask of every axis alone
    (``x[x > 0]``) is written as upstream's CondTake of ``x``, as upstream writes it; None is
    returned then."""
    from ..jit._program import _Ref

    if not any(_is_index_array(e) and np.dtype(_index_value(opr, e).dtype) == np.bool_
               for e in index):
        return index
    out, x, y = [], ins[0], outs[0]
    for e in index:
        v = _index_value(opr, e) if _is_index_array(e) else None
        if v is None or np.dtype(v.dtype) != np.bool_:
            out.append(e)
        elif type(e) is not _Ref:  # (a constant: its places, one array per axis it covers)
            out += [a.astype(np.int32) for a in np.nonzero(v)]
        elif (len(v.shape) == len(x.shape) and type(opr).__name__ == "IndexingMultiAxisVec"
              and all(type(f) is slice and f == slice(None) for f in index if f is not e)):
            made = _unshaped(g, g.op("CondTake", 1, 25, {1: ("f", 1.0)},
                                     [g.ids[id(x)], g.ids[id(v)]],
                                     [(y.name, ()), (f"{y.name}:places", ())]))
            g.ids[id(y)] = made[0]
            g.dynamic.add(id(y))
            return None
        elif len(v.shape) == 1:
            k = g.ids[id(v)]
            out.append(_Made(_unshaped(g, g.op(
                "CondTake", 1, 25, {1: ("f", 1.0)}, [k, k],
                [(f"{v.name}:true", ()), (f"{v.name}:places", ())]))[1]))
        else:
            _refuse(opr, f"it indexes a value of {len(x.shape)} axes by a mask of "
                         f"{len(v.shape)} axes computed by the program; such a mask of one axis, "
                         "or of every axis alone read from, is written (a constant mask of any "
                         "axes too)")
    if len(out) > len(x.shape):  # (an Ellipsis was widened for the mask as one axis)
        _refuse(opr, "it indexes by a mask of several axes beside an Ellipsis")
    return tuple(out)


def _indexing(g, opr, ins, outs, index, device):
    """``x[idx]`` (or its write, its add) with integer index arrays (constants, or values of
    the program; of any number of axes, several broadcast together) beside ints, slices and
    whole axes: upstream's IndexingMultiAxisVec (IndexingSetMultiAxisVec,
    IndexingIncrMultiAxisVec), as upstream's own indexing writes it: an item per axis indexed,
    the highest axis first, each with its inputs (a slice's bounds, as Subtensor's; an int as
    an index array of one item). Upstream's operator broadcasts the arrays and places their
    axes as numpy does, ints counted among them (where the arrays and ints are not side by
    side, in front): checked on upstream 1.13 for every mix of 1-d, 2-d and broadcast arrays,
    ints, slices and whole axes over four axes."""
    for e in index:  # (None adds an axis: refused before the axes are counted)
        if e is None or isinstance(e, bool):
            _bound(g, opr, e, device, opr.name)
    index = _unmask(g, opr, ins, outs, index, device)
    if index is None:  # (written)
        return
    items, inputs, dynamic = [], [], False
    shape = tuple(ins[0].shape)
    sizes = id(ins[0]) not in g.dynamic  # (else the traced sizes are not those of a run)
    one = sum(type(e) is not slice or e != slice(None) for e in index) == 1
    for axis in range(len(index) - 1, -1, -1):
        e, name = index[axis], f"{opr.name}:index{'' if one else axis}"
        if type(e) is slice:
            if e == slice(None):
                continue
            parts = [e.start, e.stop, e.step]
            items.append((axis,) + tuple(v is not None for v in parts) + (False,))
            inputs += [_bound(g, opr, v, device, f"{name}:{k}")
                       for k, v in enumerate(parts) if v is not None]
            continue
        if type(e) is _Made:
            inputs.append(e.k)
            dynamic = True
        elif not _is_index_array(e):  # (an int, or a size computed from shapes)
            inputs.append(_bound(g, opr, e, device, name))
        else:
            k, ishape = _index_var(g, opr, e, device, name, shape[axis] if sizes else None)
            if ishape is not None and 0 in ishape:
                _refuse(opr, f"it indexes by an empty index array (of shape {ishape})")
            inputs.append(k)
            dynamic = dynamic or ishape is None
        items.append((axis, False, False, False, True))
    name = _WRITES.get(type(opr).__name__, (None, "IndexingMultiAxisVec"))[1]
    params = {0: ("structs <b????", items)}
    data = [g.ids[id(ins[0])]]
    y = outs[0]
    if name != "IndexingMultiAxisVec" and dynamic:  # (the part's shape is the data's: the
        # value broadcast to it where the file runs, as upstream's indexing writes it)
        part = g.op("IndexingMultiAxisVec", 1, 66, params, data + inputs,
                    [(f"{y.name}:part", ())])
        size = g.op("GetVarShapeV1", 1, 54, {}, _unshaped(g, part), [(f"{y.name}:part:shape",
                                                                   ())])
        data += _unshaped(g, g.op("Broadcast", 1, 1, {}, [g.ids[id(ins[1])]] + _unshaped(
            g, size), [(f"{y.name}:value", ())]))
    elif name != "IndexingMultiAxisVec":
        data.append(_part_value(g, opr, ins[1], _region_shape(opr, shape, index), device))
    made = g.op(name, 1, 66, params, data + inputs, [(y.name, y.shape)])
    if dynamic and name == "IndexingMultiAxisVec":
        g.dynamic.add(id(y))
        _unshaped(g, made)
    g.ids[id(y)] = made[0]


def _index_descriptor(g, opr, ins, outs, device):
    """Upstream's indexing descriptors applied as they are (`megengine.core.ops.builtin`'s
    Subtensor, IndexingMultiAxisVec and their Set / Incr forms): the same operator, its items
    (axes made non-negative), its inputs (the index inputs in int32)."""
    op, x, y = opr._op, ins[0], outs[0]
    if type(op).__name__ != "_IndexOp" or op.kind not in ("subtensor", "vec"):
        _refuse(opr, f"{op!r} is not written (upstream's Subtensor and IndexingMultiAxisVec "
                     "descriptors and their Set / Incr forms are)")
    ndim, data = len(x.shape), 1 if op.mode == "get" else 2
    index = ins[data:]
    is_idx = [k == 3 for item in op.items for k, flag in enumerate(item[1:]) if flag]
    if op.kind == "vec" and any(not v.shape for v, idx in zip(index, is_idx) if idx):
        _refuse(opr, "an IndexingMultiAxisVec index of 0 axes (this fork reads it as an int, "
                     "upstream's operator as an index array of one item) is not written")
    items = [(int(item[0]) % ndim,) + tuple(bool(f) for f in item[1:]) for item in op.items]
    inputs = [g.ids[id(v)] for v in ins[:data]]
    inputs += [_as_int32(g, v, f"{y.name}:index{k}") for k, v in enumerate(index)]
    g.ids[id(y)] = g.op(type(opr).__name__, 1, 66, {0: ("structs <b????", items)}, inputs,
                        [(y.name, y.shape)])[0]


def _region_shape(opr, shape, index):
    """The traced shape of ``x[index]`` (sizes computed from shapes evaluated at the traced
    shapes), as upstream's graph holds it (a scalar: a vector of one item)."""
    from ..core._trace_option import evaluate
    from ..jit._program import _DimExpr

    def value(v):
        if _is_index_array(v):  # (its values do not decide the shape: zeros of its shape)
            return np.zeros(_index_shape(opr, v), np.intp)
        return evaluate(v.tree, lambda k, axis: opr._dyn_vars[k].shape[axis]) \
            if type(v) is _DimExpr else v

    index = tuple(slice(*(value(v) for v in (e.start, e.stop, e.step))) if type(e) is slice
                  else value(e) for e in index)
    return tuple(_shape(np.broadcast_to(np.empty((), np.int8), tuple(shape))[index].shape))


def _sizes(g, opr, ins, outs, p, device):
    """A vector of sizes computed from shapes (``Tensor(x.shape)`` arithmetic): int32."""
    from ..jit._program import _DimExpr

    frozen = dict(opr._dyn or ()).get("values")
    y = outs[0]
    if np.dtype(y.dtype) not in (np.dtype(np.int32), np.dtype(np.float32)) or frozen is None:
        _refuse(opr, f"sizes of dtype {y.dtype}; int32 and float32 sizes computed from shapes "
                     "are written")
    items = frozen[1] if type(frozen) is tuple and frozen and frozen[0] in (tuple, list) \
        else (frozen,)
    parts = [_size(g, opr, x.tree if type(x) is _DimExpr else x, device, f"{y.name}:{k}",
                   y.dtype) for k, x in enumerate(items)]
    g.ids[id(y)] = g.concat(parts, 0, y.name, y.shape, device)


def _broadcast(g, opr, ins, outs, p, device):
    """``broadcast_to`` (its target shape a constant, or the var of its second input); with
    no input, ``full``/``zeros``: its value (a constant, or a size computed from shapes) broadcast
    to its shape, as upstream's Fill builds it."""
    from ..jit._program import _DimExpr

    y = outs[0]
    if ins:
        g.ids[id(y)] = g.broadcast(g.ids[id(ins[0])], ins[0].shape, y.shape, y.name, lambda: (
            g.ids[id(ins[1])] if len(ins) > 1 else g.shape_const(y.shape, device, opr.name)))
        return
    value = dict(opr._dyn or ()).get("value", getattr(opr._op, "value", None))
    if type(value) is _DimExpr:
        if np.dtype(y.dtype) not in (np.dtype(np.int32), np.dtype(np.float32)):
            _refuse(opr, f"a {y.dtype} value computed from sizes; int32 and float32 ones are "
                         "written")
        value = _size(g, opr, value.tree, device, f"{y.name}:value", y.dtype)
    elif isinstance(value, (int, float, np.number, bool)):
        value = g.const(np.array([value], y.dtype), device, f"{y.name}:value")
    else:
        _refuse(opr, f"its value {value!r} is not written")
    g.ids[id(y)] = g.broadcast(value, (1,), y.shape, y.name,
                               lambda: _target_shape(g, opr, y, device))


def _fill(g, opr, ins, outs, p, device):
    """A tensor of one value in a shape computed from shapes (``zeros_like`` under symbolic
    shapes): the value broadcast to it, as upstream's Fill builds it."""
    y = outs[0]
    value = g.const(np.array([opr._op.value], y.dtype), device, f"{y.name}:value")
    g.ids[id(y)] = g.broadcast(value, (1,), y.shape, y.name,
                               lambda: _target_shape(g, opr, y, device))


# --------------------------------------------------------------------------------------------
# gather, scatter, one_hot, embedding, cond_take, cumsum, sort, diag, matinv
# --------------------------------------------------------------------------------------------
def _as_int32(g, v, name):
    """The var of the program's integer value ``v`` in int32 (upstream's index dtype)."""
    k = g.ids[id(v)]
    if np.dtype(v.dtype) != np.int32:
        k = g.op("TypeCvtV2", 1, 67, _dtype(np.int32, name), [k],
                 [(f"{name}:int32", v.shape)])[0]
    return k


def _along_axis(g, index, axis, device, name):
    """The items and inputs of upstream's IndexingMultiAxisVec that pick, for each position of
    ``index`` (a value of the program), the place ``index`` names along ``axis``: the index on
    ``axis`` and, on each other axis, an arange of the index's size there, shaped to broadcast
    against it (upstream's gather makes those with Linspace, flattened, and reshapes the result
    back; its operator broadcasts them as they are: checked on upstream 1.13)."""
    shape = tuple(index.shape)
    items, inputs = [], []
    for d in range(len(shape) - 1, -1, -1):
        items.append((d, False, False, False, True))
        if d == axis:
            inputs.append(_as_int32(g, index, f"{name}:index"))
        else:
            inputs.append(_grid(g, index, d, device, f"{name}:grid{d}"))
    return {0: ("structs <b????", items)}, inputs


def _grid(g, v, d, device, name):
    """``arange(v.shape[d])`` shaped to broadcast along axis ``d`` of ``v`` (int32), computed
    from ``v``'s shape when the file runs (upstream's Linspace of the size, cast, reshaped with
    that axis inferred), so the file follows the batch as upstream's gather does."""
    shape, f32 = tuple(v.shape), np.dtype(np.float32)
    n = g.op("GetVarShapeV1", 1, 54, {0: ("i", d)}, [g.ids[id(v)]],
             [(f"shape_of({v.name})[{d}]", (1,))])[0]
    last = g.elemwise("SUB", [g.op("TypeCvtV2", 1, 67, _dtype(f32, name), [n],
                                   [(f"{name}:n", (1,))])[0],
                              g.const(np.ones(1, f32), device, f"{name}:1")],
                      f"{name}:last", (1,))
    k = g.op("Linspace", 1, 29, {}, [g.const(np.zeros(1, f32), device, f"{name}:0"), last, n],
             [(f"{name}:float32", (shape[d],))], comp_node=device)[0]
    k = g.op("TypeCvtV2", 1, 67, _dtype(np.int32, name), [k], [(f"{name}:int32", (shape[d],))])[0]
    if len(shape) == 1:
        return k
    target = [shape[d] if j == d else 1 for j in range(len(shape))]
    return g.op("ReshapeV1", 1, 54, {0: ("i", d)},
                [k, g.shape_const([1] * len(shape), device, name)], [(name, tuple(target))])[0]


def _take_along_axis(g, opr, ins, outs, p, device):
    """``gather(x, axis, index)``: IndexingMultiAxisVec (`_along_axis`);
    ``indexing_one_hot`` (an index without ``axis``): upstream's IndexingOneHot, whose output
    keeps the axis (of 1), then an AxisAddRemove removing it, as upstream's writes it."""
    x, index, y = ins[0], ins[1], outs[0]
    axis = int(opr._op.axis)
    if not opr._op.dropped:
        params, inputs = _along_axis(g, index, axis, device, y.name)
        g.ids[id(y)] = g.op("IndexingMultiAxisVec", 1, 66, params, [g.ids[id(x)]] + inputs,
                            [(y.name, y.shape)])[0]
        return
    if not y.shape:
        _refuse(opr, "an indexing_one_hot of a 1-d value (a 0-d result) is not written")
    kept = tuple(y.shape[:axis]) + (1,) + tuple(y.shape[axis:])
    k = g.op("IndexingOneHot", 1, 2, {0: ("i", axis)},
             [g.ids[id(x)], _as_int32(g, index, y.name)], [(f"{y.name}:kept", kept)])[0]
    g.ids[id(y)] = g.op("AxisAddRemove", 1, 65, {0: ("structs <Ii", [(1, axis)])}, [k],
                        [(y.name, y.shape)])[0]


def _scatter(g, opr, ins, outs, p, device):
    """``scatter(x, axis, index, source)``: upstream's IndexingSetMultiAxisVec of ``source``
    at the places `_along_axis` names (where several sources hit one place, which one wins is
    unspecified here and upstream alike)."""
    x, index, source = ins
    y = outs[0]
    params, inputs = _along_axis(g, index, int(opr._op.axis), device, y.name)
    g.ids[id(y)] = g.op("IndexingSetMultiAxisVec", 1, 66, params,
                        [g.ids[id(x)], g.ids[id(source)]] + inputs, [(y.name, y.shape)])[0]


def _embedding(g, opr, ins, outs, p, device):
    """``embedding(index, weight)``: upstream's IndexingMultiAxisVec of the weight's rows
    (upstream's embedding flattens the index and reshapes the rows back; its operator takes the
    index's axes as they are)."""
    index, weight = ins
    y = outs[0]
    if not index.shape:
        _refuse(opr, "an embedding of a 0-d index is not written (index with a vector)")
    g.ids[id(y)] = g.op("IndexingMultiAxisVec", 1, 66,
                        {0: ("structs <b????", [(0, False, False, False, True)])},
                        [g.ids[id(weight)], _as_int32(g, index, y.name)],
                        [(y.name, y.shape)])[0]


def _one_hot(g, opr, ins, outs, p, device):
    """``one_hot(x, n)``: upstream's IndexingSetOneHot of ones (x's shape and an axis of 1)
    into zeros of the output's shape along the new last axis, as upstream's one_hot builds
    it."""
    x, y = ins[0], outs[0]
    (classes,) = opr._op.args
    if not isinstance(classes, (int, np.integer)) or np.dtype(y.dtype) != np.int32 \
            or not x.shape:
        _refuse(opr, f"a one_hot of a {x.dtype} value of shape {tuple(x.shape)} into "
                     f"{classes!r} classes; int32 values of 1 or more axes into a number of "
                     "classes are written")
    dtype = np.dtype(y.dtype)

    def filled(value, shape, name, last):
        # (x's shape, read when the file runs, and ``last`` along the new axis: the file
        # follows x's batch)
        k = g.const(np.array([value], dtype), device, f"{y.name}:{name}")

        def target():
            sizes = g.op("GetVarShapeV1", 1, 54, {0: ("i", _NO_AXIS)}, [g.ids[id(x)]],
                         [(f"shape_of({x.name})", (len(x.shape),))])[0]
            return g.concat([sizes, g.shape_const([last], device, f"{y.name}:{name}s")], 0,
                            f"{y.name}:{name}s:shape", (len(shape),), device)

        return g.broadcast(k, (1,), shape, f"{y.name}:{name}s", target)

    ones_shape = tuple(x.shape) + (1,)
    zeros = filled(0, tuple(y.shape), "zero", int(classes))
    ones = filled(1, ones_shape, "one", 1)
    g.ids[id(y)] = g.op("IndexingSetOneHot", 1, 2, {0: ("i", len(x.shape))},
                        [zeros, _as_int32(g, x, y.name), ones], [(y.name, y.shape)])[0]


def _cond_take(g, opr, ins, outs, p, device):
    """``cond_take(mask, x)``: upstream's CondTake of x where the (bool) mask equals 1 (mode
    EQ, value 1, as upstream's cond_take writes it); its outputs' shapes are decided by the
    data, so the file gives them none, and what reads them must not need them (see
    `_SHAPE_FREE`)."""
    mask, x = ins
    made = g.op("CondTake", 1, 25, {1: ("f", 1.0)}, [g.ids[id(x)], g.ids[id(mask)]],
                [(v.name, ()) for v in outs])
    for v, k in zip(outs, made):
        del g.middle[k][1]
        g.ids[id(v)] = k
        g.dynamic.add(id(v))


# the graph types that may read a value whose shape data decides (a cond_take's): their
# writers take no shape from the traced one (which is not the shape at run time)
_SHAPE_FREE = {"Elemwise", "TypeCvt", "Reduce", "Subtensor", "IndexingMultiAxisVec", "Concat",
               "AxisAddRemove", "Identity"}


def _cumsum(g, opr, ins, outs, p, device):
    """``cumsum(x, axis)``: upstream's Cumsum (inclusive, forward); bools counted in int32, as
    this fork's cumsum counts them. Float16 is refused: upstream sums it in float16, and summed
    in float32 its sums would be rounded by upstream's TypeCvt, which rounds a tie away from
    zero where this fork (numpy) rounds it to even (measured on upstream 1.13: 59 of 3,200
    sums of float16 values one float16 step apart)."""
    x, y = ins[0], outs[0]
    dtype = np.dtype(x.dtype)
    if not x.shape or dtype == np.float16:
        _refuse(opr, f"a cumsum of a {dtype} value of shape {tuple(x.shape)} is not written "
                     "(values of 1 or more axes, not float16, are: cast to float32 first)")
    work = np.dtype(np.int32) if dtype == np.bool_ else dtype
    k = g.ids[id(x)]
    if work != dtype:
        k = g.op("TypeCvtV2", 1, 67, _dtype(work, y.name), [k], [(f"{y.name}:{work}", x.shape)])[0]
    k = g.op("CumsumV1", 1, 24, {0: ("i", int(p["axis"]) % len(x.shape)), 1: ("?", False)},
             [k], [(y.name if work == y.dtype else f"{y.name}:{work}", y.shape)])[0]
    if work != np.dtype(y.dtype):
        k = g.op("TypeCvtV2", 1, 67, _dtype(y.dtype, y.name), [k], [(y.name, y.shape)])[0]
    g.ids[id(y)] = k


def _argsort(g, opr, x, descending, names, device):
    """(values, indices) of upstream's Argsort along the last axis of the program's value
    ``x``: rows of a 2-d value (another value reshaped to them and back); ``descending``: the
    ascending order of the negated values, the values negated back (upstream's descending
    order of equal values is not the stable one this fork's is; its ascending one is)."""
    dtype, shape = np.dtype(x.dtype), tuple(x.shape)
    if dtype == np.bool_ or dtype.metadata is not None or descending and dtype.kind == "u":
        _refuse(opr, f"a{' descending' if descending else 'n ascending'} sort of {dtype} values "
                     "is not written (numbers are, unsigned ones ascending)")
    rows = (int(np.prod(shape[:-1], dtype=np.int64)), shape[-1])
    k = g.ids[id(x)]
    if shape != rows:
        k = g.op("ReshapeV1", 1, 54, {0: ("i", _NO_AXIS)},
                 [k, g.shape_const(rows, device, f"{names[0]}:rows")],
                 [(f"{names[0]}:rows", rows)])[0]
    if descending:
        k = g.elemwise("NEGATE", [k], f"{names[0]}:negated", rows)
    made = list(g.op("Argsort", 1, 26, {}, [k], [(f"{n}:sorted", rows) for n in names]))
    if descending:
        made[0] = g.elemwise("NEGATE", [made[0]], f"{names[0]}:values", rows)
    if shape != rows:
        made = [g.op("ReshapeV1", 1, 54, {0: ("i", _NO_AXIS)},
                     [k, g.shape_const(shape, device, n)], [(n, shape)])[0]
                for k, n in zip(made, names)]
    return made


def _sort(g, opr, ins, outs, p, device):
    """``sort(x, descending)``: `_argsort`'s values and indices."""
    made = _argsort(g, opr, ins[0], bool(p["descending"]), [v.name for v in outs], device)
    for v, k in zip(outs, made):
        g.ids[id(v)] = k


def _argsort_compute(g, opr, ins, outs, p, device):
    """``argsort(x, descending)``: `_argsort`'s indices."""
    y = outs[0]
    g.ids[id(y)] = _argsort(g, opr, ins[0], bool(opr._op.args[0]),
                            [f"{y.name}:values", y.name], device)[1]


def _no_quantized(opr, ins, what):
    if any(np.dtype(v.dtype).metadata is not None for v in ins):
        _refuse(opr, f"a {what} of a quantized value is not written")


def _diag(g, opr, ins, outs, p, device):
    """``diag(x, k)``: upstream's Diag."""
    _no_quantized(opr, ins, "diag")
    y = outs[0]
    g.ids[id(y)] = g.op("Diag", 1, 91, {0: ("i", int(p["k"]))}, [g.ids[id(ins[0])]],
                        [(y.name, y.shape)])[0]


def _matinv(g, opr, ins, outs, p, device):
    """``matinv(x)``: upstream's MatrixInverse."""
    _no_quantized(opr, ins, "matinv")
    y = outs[0]
    g.ids[id(y)] = g.op("MatrixInverse", 1, 1, {}, [g.ids[id(ins[0])]], [(y.name, y.shape)])[0]


# --------------------------------------------------------------------------------------------
# vision: warps, remap, ROI pooling, NMS, 3-d convolution, sliding windows, interpolation
# --------------------------------------------------------------------------------------------
# megdnn's WarpPerspective / WarpAffine / Remap modes (`upstream_mge._WARP_BORDER`)
_WARP_BORDERS = {"replicate": 0, "reflect": 1, "reflect_101": 2, "wrap": 3, "constant": 4}
_WARP_INTERPS = {"nearest": 0, "linear": 1}


def _perspective_points(g, opr, ins, outs, p, device):
    """The source points of a warp (this fork's PerspectivePoints): not written; the Sample
    reading them writes upstream's WarpPerspective or WarpAffine of their matrices
    (`_sample`). (Only a Sample reads them: warp_perspective and warp_affine make both.)"""
    g.ids[id(outs[0])] = None


def _float32_only(opr, what, v):
    """Refuse ``what`` (an image, rois, an output) of a dtype other than float32: what these
    writers write, and upstream 1.13 was checked to compute (its kernels compute in their
    inputs' dtype)."""
    if np.dtype(v.dtype) != np.float32:
        _refuse(opr, f"{what} of dtype {v.dtype}; float32 ones are written (upstream's "
                     "operator computes in its input's dtype)")


def _grouped_weight(g, w, groups, rank, device, name):
    """The var of weight ``w`` as upstream's grouped operators take it: this fork's
    (O, I/G, k...) of ``rank`` axes reshaped to (G, O/G, I/G, k...); ``w`` itself otherwise."""
    weight = g.ids[id(w)]
    if groups > 1 and len(w.shape) == rank:
        o = int(w.shape[0])
        shape = (groups, o // groups) + tuple(int(d) for d in w.shape[1:])
        weight = g.op("ReshapeV1", 1, 54, {0: ("i", _NO_AXIS)},
                      [weight, g.shape_const(shape, device, name)], [(name, shape)])[0]
    return weight


def _sample(g, opr, ins, outs, p, device):
    """remap (upstream's RemapV1), warp_perspective (WarpPerspectiveV2: image, matrices, the
    optional mat_idx, the output size) and warp_affine (WarpAffineV2), NCHW: this fork's
    Sample of the points its PerspectivePoints computes from the matrices. Where this fork's
    CPU sampled on OpenCV's grid (NHWC float32 images of few channels: upstream's CPU kernel
    for them), the image is written NHWC, as the function was called, between transposes."""
    img, points, y = ins[0], ins[1], outs[0]
    mode, border = p.get("interp"), p.get("border")
    if mode not in _WARP_INTERPS or border not in _WARP_BORDERS:
        _refuse(opr, f"a sampling of interpolation {mode!r}, border {border!r}")  # (unreachable)
    _float32_only(opr, "an image", img)
    _float32_only(opr, "an output", y)
    owner = getattr(points, "owner", None)
    warp = owner is not None and _graph_type_of(owner) == "PerspectivePoints"
    if p.get("order") == "remap" and not warp:
        if len(ins) != 2:
            _refuse(opr, "a remap of chosen images")
        _float32_only(opr, "a remap's map_xy", points)
        params = {0: ("I", _WARP_INTERPS[mode]), 1: ("I", _WARP_BORDERS[border]),
                  2: ("I", 0), 3: ("f", float(p.get("border_val", 0.0)))}
        g.ids[id(y)] = g.op("RemapV1", 1, 68, params, [g.ids[id(img)], g.ids[id(points)]],
                            [(y.name, y.shape)])[0]
        return
    if not warp or p.get("order") not in ("warp", "table"):
        _refuse(opr, "a sampling at points other than a warp's or a remap's")
    mat = owner.inputs[0]
    pp = _graph_params_of(owner)
    _float32_only(opr, "a warp's matrices", mat)
    affine = int(mat.shape[1]) == 2
    cv = pp.get("cv_grid") is not None
    if cv != (p.get("order") == "table") or (cv and pp.get("cv_grid") != mode):
        _refuse(opr, "a warp whose points and sampling disagree on OpenCV's grid")
    if mode == "nearest" and not cv:
        _refuse(opr, "a warp of nearest interpolation sampled NCHW (upstream's NCHW "
                     "WarpPerspective and WarpAffine interpolate linearly only: its kernels "
                     "assert it); linear ones, and nearest ones of the NHWC images upstream's "
                     "CPU samples on OpenCV's grid (1-3 channels, float32), are written")
    if affine and len(ins) != 2:
        _refuse(opr, "a warp_affine of chosen images (mat_idx)")
    size = (int(pp["out_h"]), int(pp["out_w"]))
    x = g.ids[id(img)]
    n, c = int(y.shape[0]), int(y.shape[1])
    if cv:  # (upstream's CPU kernel samples NHWC images of few channels on OpenCV's grid)
        x = g.op("Dimshuffle", 1, 64, {0: ("i32s", [0, 2, 3, 1]), 1: ("I", 4)}, [x],
                 [(f"{y.name}:nhwc", tuple(img.shape[i] for i in (0, 2, 3, 1)))])[0]
    inputs = [x, g.ids[id(mat)]]
    if len(ins) == 3:  # mat_idx: the image of each matrix
        idx = ins[2]
        if np.dtype(idx.dtype) != np.int32:
            _refuse(opr, f"a mat_idx of dtype {idx.dtype}; int32 is written")
        inputs.append(g.ids[id(idx)])
    inputs.append(g.shape_const(size, device, opr.name))
    layout = 1 if cv else 0
    interp, bmode = _WARP_INTERPS[mode], _WARP_BORDERS[border]
    value = float(p.get("border_val", 0.0))
    if affine:
        name, ptype, params = "WarpAffineV2", 38, {0: ("I", interp), 1: ("I", bmode),
                                                    2: ("f", value), 3: ("I", layout)}
    else:
        name, ptype, params = "WarpPerspectiveV2", 13, {0: ("I", interp), 1: ("I", bmode),
                                                         2: ("I", layout), 3: ("f", value)}
    shape = (n,) + size + (c,) if cv else tuple(y.shape)
    made = g.op(name, 1, ptype, params, inputs, [(f"{y.name}:nhwc" if cv else y.name, shape)])[0]
    if cv:
        made = g.op("Dimshuffle", 1, 64, {0: ("i32s", [0, 3, 1, 2]), 1: ("I", 4)}, [made],
                    [(y.name, y.shape)])[0]
    g.ids[id(y)] = made


def _graph_type_of(opr):
    from ..utils.network_node import graph_type

    return graph_type(opr)


def _graph_params_of(opr):
    from ..utils.network_node import graph_params

    p = graph_params(opr)
    return p if isinstance(p, dict) else {}


_ROI_MODES = {"max": 0, "average": 1}


def _roi_align(g, opr, ins, outs, p, device):
    """Upstream's ROIAlignV1 (NCHW): the features, then the argmax indices its backward
    reads (int32, not part of this fork's result: a var no one reads)."""
    x, rois, y = ins[0], ins[1], outs[0]
    for what, v in (("an image", x), ("rois", rois), ("an output", y)):
        _float32_only(opr, what, v)
    (ph, pw), (sh, sw) = p["pooled"], p["samples"]
    params = {0: ("I", _ROI_MODES[p["mode"]]), 1: ("I", 0), 2: ("f", float(p["scale"])),
              3: ("f", float(p["offset"])), 4: ("I", int(ph)), 5: ("I", int(pw)),
              6: ("I", int(sh)), 7: ("I", int(sw))}
    g.ids[id(y)] = g.op("ROIAlignV1", 1, 48, params, [g.ids[id(x)], g.ids[id(rois)]],
                        [(y.name, y.shape), (f"{y.name}:argmax", y.shape)])[0]


def _roi_pooling(g, opr, ins, outs, p, device):
    """Upstream's ROIPooling: (features, rois, the output size), the features, then the
    argmax indices its backward reads (not part of this fork's result)."""
    x, rois, y = ins[0], ins[1], outs[0]
    for what, v in (("an image", x), ("rois", rois), ("an output", y)):
        _float32_only(opr, what, v)
    size = g.shape_const([int(v) for v in p["pooled"]], device, opr.name)
    params = {0: ("I", _ROI_MODES[p["mode"]]), 1: ("f", float(p["scale"]))}
    g.ids[id(y)] = g.op("ROIPooling", 1, 12, params, [g.ids[id(x)], g.ids[id(rois)], size],
                        [(y.name, y.shape), (f"{y.name}:argmax", y.shape)])[0]


def _convolution3d(g, opr, ins, outs, p, device):
    """Upstream's Convolution3D (NCDHW cross-correlation; a grouped one's weight (G, O/G,
    I/G, KD, KH, KW), reshaped to that from this fork's (O, I/G, KD, KH, KW))."""
    x, w, y = ins[0], ins[1], outs[0]
    for what, v in (("an input", x), ("a weight", w), ("an output", y)):
        _float32_only(opr, what, v)
    groups = int(opr.params.get("groups", 1))
    weight = _grouped_weight(g, w, groups, 5, device, f"{y.name}:w")
    (sd, sh, sw), (pd, ph, pw), (dd, dh, dw) = (tuple(int(p[f"{k}_{a}"]) for a in "dhw")
                                                for k in ("stride", "pad", "dilate"))
    params = {0: ("I", 0), 1: ("I", pd), 2: ("I", ph), 3: ("I", pw), 4: ("I", sd),
              5: ("I", sh), 6: ("I", sw), 7: ("I", dd), 8: ("I", dh), 9: ("I", dw),
              10: ("I", int(groups > 1)), 12: ("I", 0)}
    g.ids[id(y)] = g.op("Convolution3D", 2, 41, params, [g.ids[id(x)], weight],
                        [(y.name, y.shape)], extra=[(55, {})])[0]


def _im2col(g, opr, ins, outs, p, device):
    """``sliding_window``: upstream's Images2Neibs ((N, C, OH, OW, KH, KW) windows)."""
    x, y = ins[0], outs[0]
    if p.get("what") != "sliding_window" or len(y.shape) != 6:
        _refuse(opr, f"windows of {p.get('what')!r} of shape {tuple(y.shape)}; "
                     "sliding_window's (N, C, OH, OW, KH, KW) are written")
    _float32_only(opr, "an input", x)
    (ph, pw), (sh, sw), (dh, dw), (kh, kw) = (tuple(int(v) for v in p[k])
                                              for k in ("p", "s", "d", "k"))
    params = {0: ("I", ph), 1: ("I", pw), 2: ("I", sh), 3: ("I", sw), 4: ("I", dh),
              5: ("I", dw), 6: ("I", kh), 7: ("I", kw)}
    g.ids[id(y)] = g.op("Images2Neibs", 1, 8, params, [g.ids[id(x)]], [(y.name, y.shape)])[0]


def _interpolate(g, opr, ins, outs, p, device):
    """``interpolate``: nearest and bilinear (corners not aligned) as upstream's ResizeV2 of
    the output size, as before; the other modes as upstream's interpolate computes them:
    bicubic: ResizeV2 of cubic interpolation; linear (N, C, L): of the input with a width of
    1 (AxisAddRemove), removed after; align_corners (bilinear, linear): WarpPerspectiveV2 by
    the matrix scaling each axis by (in - 1) / (out - 1) (0 for an output of 1: this fork's
    corner; upstream's own divides by 0 there), broadcast to the batch; trilinear: Resize3D
    (NCDHW, align_corners as given)."""
    _check(opr, "ResizeForward", p, ins)
    x, y = ins[0], outs[0]
    mode, aligned = p.get("mode"), bool(p.get("align_corners"))
    if mode in _RESIZE_MODES and not aligned and len(x.shape) == 4:  # (as `_OPERATORS` has it)
        g.ids[id(y)] = g.op("ResizeV2", 1, 40, _resize(p, ins, outs),
                            [g.ids[id(x)], g.shape_const(y.shape[2:], device, opr.name)],
                            [(y.name, y.shape)])[0]
        return
    if mode not in ("bicubic", "linear", "bilinear", "trilinear"):  # pragma: no cover
        _resize(p, ins, outs)  # (refuses by name)
    for what, v in (("an image", x), ("an output", y)):
        if np.dtype(v.dtype) != np.float32:
            _refuse(opr, f"an interpolation of mode {mode!r} of {what} of dtype {v.dtype}; "
                         "float32 ones are written (nearest and bilinear of others too)")
    sizes = tuple(int(v) for v in y.shape[2:])
    k = g.ids[id(x)]
    if mode == "trilinear":
        g.ids[id(y)] = g.op("Resize3D", 1, 96, {0: ("I", 1), 1: ("I", 0), 2: ("?", aligned)},
                            [k, g.shape_const(sizes, device, opr.name)],
                            [(y.name, y.shape)])[0]
        return
    shape = tuple(int(v) for v in x.shape)
    if mode == "linear":  # (N, C, L) as (N, C, L, 1)
        shape, sizes = shape + (1,), sizes + (1,)
        k = g.op("AxisAddRemove", 1, 65, {0: ("structs <Ii", [(0, 3)])}, [k],
                 [(f"{y.name}:2d", shape)])[0]
    out = shape[:2] + sizes
    name = f"{y.name}:2d" if mode == "linear" else y.name
    if not aligned:
        k = g.op("ResizeV2", 1, 40, {0: ("I", 3 if mode == "bicubic" else 1), 1: ("I", 0)},
                 [k, g.shape_const(sizes, device, opr.name)], [(name, out)])[0]
    else:
        (ih, iw), (oh, ow) = shape[2:], sizes
        scale = [np.float32((n - 1.0) / (m - 1.0)) if m > 1 else np.float32(0)
                 for n, m in ((iw, ow), (ih, oh))]
        mat = g.const(np.array([[[scale[0], 0, 0], [0, scale[1], 0], [0, 0, 1]]], np.float32),
                      device, f"{y.name}:mat")

        def batch_shape():
            n = g.op("GetVarShapeV1", 1, 54, {0: ("i", 0)}, [g.ids[id(x)]],
                     [(f"shape_of({x.name})[0]", (1,))])[0]
            return g.concat([n, g.shape_const([3, 3], device, f"{y.name}:mat")], 0,
                            f"{y.name}:mat:shape", (3,), device)

        mat = g.broadcast(mat, (1, 3, 3), (shape[0], 3, 3), f"{y.name}:mats", batch_shape)
        k = g.op("WarpPerspectiveV2", 1, 13, {0: ("I", 1), 1: ("I", 0), 2: ("I", 0),
                                              3: ("f", 0.0)},
                 [k, mat, g.shape_const(sizes, device, opr.name)], [(name, out)])[0]
    if mode == "linear":
        k = g.op("AxisAddRemove", 1, 65, {0: ("structs <Ii", [(1, 3)])}, [k],
                 [(y.name, y.shape)])[0]
    g.ids[id(y)] = k


def _traced_args(opr):
    """A Compute's arguments, a size computed from shapes (nms' default max_output, the
    number of boxes) at its traced value (the file holds the traced shapes there)."""
    from ..core._trace_option import evaluate
    from ..jit._program import _DimExpr

    frozen = dict(opr._dyn or ()).get("args")
    if frozen is None:
        return opr._op.args
    return tuple(evaluate(v.tree, lambda k, axis: opr._dyn_vars[k].shape[axis])
                 if type(v) is _DimExpr else v for v in frozen[1])


def _nms(g, opr, ins, outs, p, device):
    """``nms`` as upstream's builds it: the boxes sorted by descending score (an Argsort of
    the negated scores, ascending: stable on upstream's CPU as this fork's order of equal
    scores, where its descending one takes the last of them first), NMSKeep of them (kept
    positions padded to max_output, and their count), the first count of the positions
    (a size that follows the data), mapped back to the boxes' indices."""
    boxes, scores, y = ins[0], ins[1], outs[0]
    for what, v in (("boxes", boxes), ("scores", scores)):
        _float32_only(opr, what, v)
    iou, limit = _traced_args(opr)
    frozen = dict(opr._dyn or ()).get("args")
    if frozen is not None and type(frozen[1][1]).__name__ == "_DimExpr":
        warnings.warn(
            f"trace.dump(dump_format='FBS_V2'): nms without max_output keeps up to the number "
            f"of boxes, which follows the input here; upstream's NMSKeep takes a fixed "
            f"max_output, so the file keeps at most {int(limit)} (the traced number) at any "
            "input: give nms a max_output", stacklevel=_user_stacklevel())
    n = int(boxes.shape[0])
    if n == 0:
        _refuse(opr, "nms of no boxes")
    name = y.name
    # (the reshapes infer the count of boxes, axis 1: the file follows it, as upstream's)
    row = g.op("ReshapeV1", 1, 54, {0: ("i", 1)},
               [g.elemwise("NEGATE", [g.ids[id(scores)]], f"{name}:negated", (n,)),
                g.shape_const((1, 1), device, f"{name}:row")], [(f"{name}:row", (1, n))])[0]
    order = g.op("Argsort", 1, 26, {0: ("I", 0)}, [row],
                 [(f"{name}:sorted", (1, n)), (f"{name}:order", (1, n))])[1]
    zero = g.const(np.zeros(1, np.int32), device, f"{name}:0")
    first = {0: ("structs <b????", [(0, False, False, False, True)])}
    order = g.op("Subtensor", 1, 66, first, [order, zero], [(f"{name}:order0", (n,))])[0]
    sorted_boxes = g.op("IndexingMultiAxisVec", 1, 66, first, [g.ids[id(boxes)], order],
                        [(f"{name}:boxes", (n, 4))])[0]
    sorted_boxes = g.op("ReshapeV1", 1, 54, {0: ("i", 1)},
                        [sorted_boxes, g.shape_const((1, 1, 4), device, f"{name}:boxes")],
                        [(f"{name}:boxes3", (1, n, 4))])[0]
    keep, count = g.op("NMSKeepMGB", 1, 69, {0: ("f", float(iou)), 1: ("I", int(limit))},
                       [sorted_boxes], [(f"{name}:keep", (1, int(limit))),
                                        (f"{name}:count", (1,))])
    keep = g.op("Subtensor", 1, 66, first, [keep, zero], [(f"{name}:keep0", (int(limit),))])[0]
    count = g.op("Subtensor", 1, 66, first, [count, zero], [(f"{name}:count0", (1,))])[0]
    kept = g.op("Subtensor", 1, 66, {0: ("structs <b????", [(0, False, True, False, False)])},
                [keep, count], [(f"{name}:kept", y.shape)])[0]
    made = g.op("IndexingMultiAxisVec", 1, 66, first, [order, kept], [(name, y.shape)])[0]
    for k in (kept, made):  # (sizes that follow the data: no shape, as upstream's own files)
        g.middle[k][1] = ("u32s", [])
    g.ids[id(y)] = made
    g.dynamic.add(id(y))  # (what reads it must take no traced shape: `_SHAPE_FREE`)



_VISION = {"PerspectivePoints": _perspective_points, "Sample": _sample,
           "ROIAlignForward": _roi_align, "ROIPoolingForward": _roi_pooling,
           "Convolution3DForward": _convolution3d, "Im2Col": _im2col,
           "ResizeForward": _interpolate}
# normalizations, norms, log-sum-exp, losses and element-wise checks: this fork's fused ops
# written as the reductions and element-wise operators upstream's functional code builds them
# from (its own dumps of F.normalize, F.norm, F.logsumexp, F.loss.* hold those, not one
# operator). Each computes in float32 where the fork's op does (integers, float16: cast in
# and back) and gives its last var the fork's output name.
# --------------------------------------------------------------------------------------------
class _Steps:
    """Helpers for one expansion: constants, element-wise steps, per-axis reductions (axes
    kept), casts; `finish` gives the Network's output var the last var's number and name."""

    def __init__(self, g, opr, device, y):
        self.g, self.opr, self.device, self.y = g, opr, device, y
        self.start = len(g.middle)  # (vars numbered from here are this expansion's)
        self.n = 0

    def name(self, what):
        self.n += 1
        return f"{self.y.name}:{what}{self.n}"

    def const(self, value, dtype=np.float32):
        return self.g.const(np.array([value], dtype), self.device, self.name("const"))

    def ew(self, mode, inputs, shape):
        return self.g.elemwise(mode, inputs, self.name(mode.lower()), tuple(shape))

    def cast(self, k, shape, src, dst):
        """Var ``k`` (of dtype ``src``) in dtype ``dst``."""
        if _dtype(src, "") == _dtype(dst, ""):
            return k
        return self.g.op("TypeCvtV2", 1, 67, _dtype(dst, self.y.name), [k],
                         [(self.name(str(np.dtype(dst))), tuple(shape))])[0]

    def reduce(self, mode, k, shape, axes):
        """``mode`` over each of ``axes`` in turn, keeping them (SUM_SQR: squares, then sums);
        returns (var, kept shape)."""
        shape = list(shape)
        for a in sorted(axes):
            shape[a] = 1
            k = self.g.reduce(mode, k, a, self.name(mode.lower()), tuple(shape))
            mode = "SUM" if mode == "SUM_SQR" else mode
        return k, tuple(shape)

    def reduce_all(self, mode, k, shape):
        """``mode`` over every axis: a (1,) value (upstream's Reduce without an axis, its
        target shape an input); a value of one item is itself."""
        if _shape(shape) == [1]:
            return k
        return self.g.op("ReduceV2", 1, 23, {0: ("I", _REDUCE_MODES[mode]),
                                             1: ("i", _EVERY_AXIS)},
                         [k, self.g.shape_const([1], self.device, self.name("total"))],
                         [(self.name(mode.lower()), (1,))])[0]

    def drop(self, k, shape, axes):
        """Var ``k`` of ``shape`` without ``axes`` (each of size 1): one AxisAddRemove, highest
        axis first; all axes dropped leaves axis 0 (upstream's scalar: a vector of one item)."""
        axes = sorted(axes, reverse=True)
        if len(axes) == len(shape):
            axes = axes[:-1]
        if not axes:
            return k
        left = tuple(d for a, d in enumerate(shape) if a not in axes)
        return self.g.op("AxisAddRemove", 1, 65, {0: ("structs <Ii", [(1, a) for a in axes])},
                         [k], [(self.name("dropped"), left)])[0]

    def finish(self, k, dtype=None):
        """The output var: ``k`` (cast from ``dtype`` to the output's dtype), named as the
        output where this expansion made it."""
        y, g = self.y, self.g
        if dtype is not None:
            k = self.cast(k, y.shape, dtype, y.dtype)
        if k >= self.start:
            g.middle[k][0] = ("str", y.name)
            g.middle[k][1] = ("u32s", _shape(y.shape))
        g.ids[id(y)] = k


_F32 = np.dtype(np.float32)


def _float_var(s, v):
    """The var of program value ``v`` in float32 (integers and float16 cast)."""
    return s.cast(s.g.ids[id(v)], v.shape, v.dtype, _F32)


def _axes_of(opr, axis, ndim, what):
    from ..core.ops import _norm_axes

    axes = _norm_axes(axis, ndim, what)
    if not axes or not ndim:
        _refuse(opr, f"a {what} of a {ndim}-d value over axes {axis!r}; one or more axes of a "
                     "value of one or more axes are written")
    return axes


def _normalization(g, opr, ins, outs, p, device):
    """"Normalize": F.normalize (upstream's reductions), group_norm / instance_norm (their
    expansion), layer_norm (upstream's LayerNorm)."""
    if type(opr._op).__name__ == "Normalize":  # (F.normalize's op, functional/math.py)
        return _unit_norm(g, opr, ins, outs, p, device)
    if p.get("family") != "layer_norm":
        return _group_norm(g, opr, ins, outs, p, device)
    if p.get("has_weight") != p.get("has_bias"):
        return _layer_norm_one_param(g, opr, ins, outs, p, device)
    return _layer_norm(g, opr, ins, outs, p, device)


class _StandIn:
    """A Network var's stand-in for a constant the writer adds (its shape and dtype)."""

    def __init__(self, shape, dtype):
        self.shape, self.dtype = shape, dtype


def _layer_norm_one_param(g, opr, ins, outs, p, device):
    """A layer_norm with a weight and no bias, or a bias and no weight: upstream's LayerNorm
    takes both (its F.nn.layer_norm asserts so), so the missing one is a constant of zeros
    (bias) or ones (weight): ``* 1`` and ``+ 0`` change no value."""
    x, param = ins[0], ins[1]
    missing = "bias" if p["has_weight"] else "weight"
    fill = np.zeros if p["has_weight"] else np.ones
    stand_in = _StandIn(param.shape, param.dtype)
    g.ids[id(stand_in)] = g.const(fill(tuple(param.shape), param.dtype), device,
                                  f"{outs[0].name}:{missing}")
    pair = [param, stand_in] if p["has_weight"] else [stand_in, param]
    _layer_norm(g, opr, [x] + pair, outs, dict(p, has_weight=True, has_bias=True), device)


def _group_norm(g, opr, ins, outs, p, device):
    """group_norm / instance_norm of an (N, C, ...) value: its view (N, groups, -1), the mean
    and the biased variance over its last axis (Reduce MEAN of x and of (x - mean) ** 2, two
    passes as here), ``(x - mean) / sqrt(var + eps)``, the value's shape again, then ``*
    weight + bias`` per channel. Upstream 1.13 has GroupNorm and InstanceNorm operators, but
    its own dump expands these into such steps (and with weight and bias fails: "bad input
    shape for polyadic operator: {4}, {2,4,3,3}"), so they are written as an expansion; under
    symbolic shapes the view and the shape back follow the input's."""
    from ..jit._program import _DimExpr

    x, y = ins[0], outs[0]
    shape = tuple(int(d) for d in x.shape)
    view = tuple(p.get("view") or ())
    if (len(shape) < 2 or len(view) != 3 or not all(shape) or len(ins) > 3
            or tuple(int(d) for d in p.get("affine_shape") or ()) != (1, shape[1], 1)
            or shape[1] % int(view[1])):
        _refuse(opr, f"a normalization of view {view} of a value of shape {shape}; layer_norm, "
                     "and group_norm / instance_norm of non-empty (N, C, ...) values are written")
    s = _Steps(g, opr, device, y)
    groups = int(view[1])
    grouped = (shape[0], groups, int(np.prod(shape)) // (shape[0] * groups))
    k = _float_var(s, x)
    dyn = dict(opr._dyn or ()).get("view")
    if dyn is None or all(type(d) is not _DimExpr for d in dyn[1]):
        target, unspec = g.shape_const(grouped, device, s.name("view")), _NO_AXIS
        back = g.shape_const(_shape(shape), device, s.name("shape"))
    else:  # (N, and C for instance_norm, from the input's shape; its shape back: GetVarShape,
        items = dyn[1]  # as upstream's own expansion reshapes back)
        unspec = next(a for a, d in enumerate(items) if type(d) is not _DimExpr and d == -1)
        parts = [_size(g, opr, d.tree if type(d) is _DimExpr else (1 if d == -1 else d), device,
                       s.name("view")) for d in items]
        target = g.concat(parts, 0, s.name("view"), (3,), device)
        back = g.op("GetVarShapeV1", 1, 54, {0: ("i", _NO_AXIS)}, [g.ids[id(x)]],
                    [(s.name("shape"), (len(shape),))])[0]
    k = g.op("ReshapeV1", 1, 54, {0: ("i", unspec)}, [k, target],
             [(s.name("grouped"), grouped)])[0]
    mean, kept = s.reduce("MEAN", k, grouped, [2])
    d = s.ew("SUB", [k, mean], grouped)
    var, _ = s.reduce("MEAN", s.ew("MUL", [d, d], grouped), grouped, [2])
    std = s.ew("SQRT", [s.ew("ADD", [var, s.const(float(p["eps"]))], kept)], kept)
    k = s.ew("TRUE_DIV", [d, std], grouped)
    k = g.op("ReshapeV1", 1, 54, {0: ("i", _NO_AXIS)}, [k, back],
             [(s.name("normalized"), shape)])[0]
    per_channel = (1, shape[1]) + (1,) * (len(shape) - 2)
    for v, mode in zip(ins[1:], ("MUL", "ADD") if p.get("has_weight") else ("ADD",)):
        w = g.op("ReshapeV1", 1, 54, {0: ("i", _NO_AXIS)},
                 [s.cast(g.ids[id(v)], v.shape, v.dtype, _F32),
                  g.shape_const(per_channel, device, s.name("channels"))],
                 [(s.name("channels"), per_channel)])[0]
        k = s.ew(mode, [k, w], shape)
    s.finish(k, _F32)


def _unit_norm(g, opr, ins, outs, p, device):
    """F.normalize: ``x / max(sqrt(sum(x * x)), eps)`` over its axes (upstream's: ABS, Reduce
    SUM_SQR, POW 0.5, MAX with eps, TRUE_DIV; here SQRT, correctly rounded)."""
    x, y = ins[0], outs[0]
    axes = _axes_of(opr, opr._op.axis, len(x.shape), "normalize")
    s = _Steps(g, opr, device, y)
    k = _float_var(s, x)
    total, kept = s.reduce("SUM_SQR", k, x.shape, axes)
    c = s.ew("MAX", [s.ew("SQRT", [total], kept), s.const(float(opr._op.eps))], kept)
    s.finish(s.ew("TRUE_DIV", [k, c], x.shape), _F32)


def _p_norm(g, opr, ins, outs, p, device):
    """F.norm of order p (0 and +-inf are reductions of their own): ``sqrt(sum(x * x))`` for
    2 (Reduce SUM_SQR), else ``sum(|x| ** p) ** (1 / p)``, the axes dropped unless
    ``keepdims`` (upstream's norm: ABS, POW, Reduce, AxisAddRemove, POW)."""
    op, x, y = opr._op, ins[0], outs[0]
    axes = _axes_of(opr, op.axis, len(x.shape), "norm")
    s = _Steps(g, opr, device, y)
    k = _float_var(s, x)
    if op.p == 2:
        total, kept = s.reduce("SUM_SQR", k, x.shape, axes)
        k = s.ew("SQRT", [total], kept)
    else:
        k = s.ew("ABS", [k], x.shape)
        if op.p != 1:
            k = s.ew("POW", [k, s.const(float(op.p))], x.shape)
        total, kept = s.reduce("SUM", k, x.shape, axes)
        k = total if op.p == 1 else s.ew("POW", [total, s.const(1.0 / op.p)], kept)
    s.finish(k if op.keepdims else s.drop(k, kept, axes), _F32)


def _log_sum_exp(g, opr, ins, outs, p, device):
    """F.logsumexp: ``log(sum(exp(x - m))) + m``, m the maximum over the axes clamped to
    float32's finite range (here: 0 where it is infinite; either way a row of -inf gives -inf
    and one holding +inf gives inf, where upstream's own logsumexp subtracts an infinite
    maximum and gives NaN; a finite m is the same)."""
    op, x, y = opr._op, ins[0], outs[0]
    axes = _axes_of(opr, op.axis, len(x.shape), "logsumexp")
    if not all(x.shape):
        _refuse(opr, "a logsumexp of an empty value")
    s = _Steps(g, opr, device, y)
    k = _float_var(s, x)
    m, kept = s.reduce("MAX", k, x.shape, axes)
    big = float(np.finfo(np.float32).max)
    m = s.ew("MIN", [s.ew("MAX", [m, s.const(-big)], kept), s.const(big)], kept)
    total, _ = s.reduce("SUM", s.ew("EXP", [s.ew("SUB", [k, m], x.shape)], x.shape), x.shape,
                        axes)
    k = s.ew("ADD", [s.ew("LOG", [total], kept), m], kept)
    s.finish(k if op.keepdims else s.drop(k, kept, axes), _F32)


def _reduced_loss(s, k, shape, reduction, dtype):
    """A loss of ``shape`` (var ``k`` of ``dtype``) reduced as asked: "mean" (of integers: in
    float32) and "sum" over every axis, "none" as it is. Returns (var, dtype)."""
    if reduction == "none":
        return k, dtype
    if reduction == "mean" and np.dtype(dtype).kind != "f":
        k, dtype = s.cast(k, shape, dtype, _F32), _F32
    return s.reduce_all("MEAN" if reduction == "mean" else "SUM", k, shape), dtype


def _pair_loss(g, opr, ins, outs, p, device):
    """l1_loss, square_loss, smooth_l1_loss and binary_cross_entropy: the element-wise loss of
    the (broadcast) operands, as upstream's loss functions compute it, then its reduction.
    The operands are promoted to one dtype; integers compute in float32 (l1's: in theirs),
    float16 in float32 rounded once, as here."""
    op, y = opr._op, outs[0]
    kind = type(op).__name__
    pred, label = ins
    dtype = np.promote_types(pred.dtype, label.dtype)
    if pred.dtype.metadata is not None or label.dtype.metadata is not None or dtype.kind == "b":
        _refuse(opr, f"a {op.what} of {pred.dtype} and {label.dtype} operands; numbers are "
                     "written")
    compute = dtype if kind == "_L1" and dtype.kind in "iu" else _F32
    s = _Steps(g, opr, device, y)
    a, b = (s.cast(g.ids[id(v)], v.shape, v.dtype, compute) for v in ins)
    shape = tuple(np.broadcast_shapes(tuple(pred.shape), tuple(label.shape)))

    def ew(mode, *xs):
        return s.ew(mode, list(xs), shape)

    if kind == "_L1":
        k = ew("ABS", ew("SUB", a, b))
    elif kind == "_Square":
        d = ew("SUB", a, b)
        k = ew("MUL", d, d)
    elif kind == "_SmoothL1":  # |d| - m + m * m * (0.5 / beta), m = min(|d|, beta)
        k = ew("ABS", ew("SUB", a, b))
        if op.beta:
            m = ew("MIN", k, s.const(float(op.beta)))
            k = ew("ADD", ew("SUB", k, m), ew("MUL", ew("MUL", m, m), s.const(0.5 / op.beta)))
    elif kind == "_BinaryCrossEntropy" and op.with_logits:
        # max(x, 0) - x * y + log1p(exp(-|x|))
        k = ew("ADD", ew("SUB", ew("MAX", a, s.const(0.0)), ew("MUL", a, b)),
               ew("LOG1P", ew("EXP", ew("NEGATE", ew("ABS", a)))))
    elif kind == "_BinaryCrossEntropy":  # -(y * log(p) + (1 - y) * log(1 - p))
        one = s.const(1.0)
        k = ew("NEGATE", ew("ADD", ew("MUL", b, ew("LOG", a)),
                            ew("MUL", ew("SUB", one, b), ew("LOG", ew("SUB", one, a)))))
    else:  # pragma: no cover (a graph type of that name from another op)
        _refuse(opr, f"its op {kind} has no writer")
    k, dtype = _reduced_loss(s, k, shape, op.reduction, compute)
    s.finish(k, dtype)


def _cross_entropy(g, opr, ins, outs, p, device):
    """F.loss.cross_entropy as upstream's builds it: the log-sum-exp over the class axis
    (Reduce MAX, EXP, Reduce SUM, LOG) less the logit at each label (IndexingOneHot, the
    class axis kept), with label smoothing ``(1 - a) * loss + a * (lse - mean logit)``;
    without logits ``-(1 - a) * log(p[label]) - a / C * sum(log(p))``; then the reduction."""
    op, (pred, label), y = opr._op, ins, outs[0]
    shape, ax = tuple(int(d) for d in pred.shape), int(op.axis)
    if np.dtype(label.dtype).kind not in "iu" or not all(shape):
        _refuse(opr, f"a cross_entropy of {label.dtype} labels over a value of shape {shape}; "
                     "integer labels of non-empty values are written")
    s = _Steps(g, opr, device, y)
    x = _float_var(s, pred)
    idx = s.cast(g.ids[id(label)], label.shape, label.dtype, np.int32)
    kept = shape[:ax] + (1,) + shape[ax + 1:]
    picked = g.op("IndexingOneHot", 1, 2, {0: ("i", ax)}, [x, idx],
                  [(s.name("picked"), kept)])[0]
    ls, classes = float(op.ls), shape[ax]
    if op.with_logits:
        m, _ = s.reduce("MAX", x, shape, [ax])
        total, _ = s.reduce("SUM", s.ew("EXP", [s.ew("SUB", [x, m], shape)], shape), shape,
                            [ax])
        lse = s.ew("ADD", [m, s.ew("LOG", [total], kept)], kept)
        k = s.ew("SUB", [lse, picked], kept)
        if ls:
            mean = s.ew("TRUE_DIV", [s.reduce("SUM", x, shape, [ax])[0],
                                     s.const(float(classes))], kept)
            k = s.ew("ADD", [s.ew("MUL", [s.const(1 - ls), k], kept),
                             s.ew("MUL", [s.const(ls), s.ew("SUB", [lse, mean], kept)], kept)],
                     kept)
    else:
        k = s.ew("MUL", [s.const(-(1 - ls)), s.ew("LOG", [picked], kept)], kept)
        if ls:
            logs, _ = s.reduce("SUM", s.ew("LOG", [x], shape), shape, [ax])
            k = s.ew("SUB", [k, s.ew("MUL", [s.const(ls / classes), logs], kept)], kept)
    if op.reduction == "none":
        k = s.drop(k, kept, [ax])
    else:
        k, _ = _reduced_loss(s, k, kept, op.reduction, _F32)
    s.finish(k, _F32)


def _compute_check(g, opr, ins, outs, p, device):
    """F.isnan: ``NOT(x == x)``; F.isinf: ``|x| == inf``; each compared in x's dtype and cast
    to bool (upstream's graph holds a comparison's 0/1 so, as its own dumps of these); an
    integer is neither: ``NOT(x == x)``, false. (Upstream's own dump of F.isinf writes
    ``x == inf``, which misses -inf.)"""
    fn_name, x, y = opr._op.fn.__name__, ins[0], outs[0]
    if np.dtype(x.dtype).kind not in "iuf":
        _refuse(opr, f"{fn_name[1:]} of a {x.dtype} value; numbers are written")
    s = _Steps(g, opr, device, y)
    k, shape = g.ids[id(x)], tuple(x.shape)
    if fn_name == "_isinf" and np.dtype(x.dtype).kind == "f":
        inf = s.const(np.inf, x.dtype)
        s.finish(s.cast(s.ew("EQ", [s.ew("ABS", [k], shape), inf], shape), shape, x.dtype,
                        np.bool_))
        return
    same = s.cast(s.ew("EQ", [k, k], shape), shape, x.dtype, np.bool_)
    s.finish(s.ew("NOT", [same], shape))


def _arg_reduce_flat(g, opr, ins, outs, p, device):
    """argmax / argmin over every axis: of the flattened value (a ReshapeV1 to one axis, its
    size inferred, as upstream's own dump of F.argmax(x)), one Argmax / Argmin over axis 0: a
    (1,) value, upstream's scalar."""
    kind = opr._op.args[0]
    x, y = ins[0], outs[0]
    if not all(x.shape):
        _refuse(opr, f"{kind} of an empty value")
    s = _Steps(g, opr, device, y)
    size = int(np.prod(x.shape))
    k = g.ids[id(x)]
    if len(x.shape) > 1:
        k = g.op("ReshapeV1", 1, 54, {0: ("i", 0)},
                 [k, g.shape_const([1], device, s.name("flat"))], [(s.name("flat"), (size,))])[0]
    name = "Argmax" if kind == "argmax" else "Argmin"
    s.finish(g.op(name, 1, 2, {0: ("i", 0)}, [k], [(s.name(kind), (1,))])[0])


def _topk_kth(g, opr, ins, outs, p, device):
    """topk(kth_only=True): upstream's TopK of mode KTH_ONLY (one output: each row's k-th
    smallest; of the negated input for ``descending``, negated back) over the input's rows as
    (rows, n); this fork's op gives it with a last axis of 1, and the index of the first
    element of its row equal to it (upstream's topk finds its index so: Argmax of ``x ==
    value``; the fork's index is one of the tied ones: the same where none tie)."""
    op = opr._op
    x, (values, indices) = ins[0], outs
    shape = tuple(int(d) for d in x.shape)
    if not shape or not all(shape):
        _refuse(opr, f"a topk(kth_only=True) of a value of shape {shape}")
    s = _Steps(g, opr, device, values)
    rows, n = int(np.prod(shape[:-1])), shape[-1]
    flat = g.ids[id(x)]
    if len(shape) != 2:
        flat = g.op("ReshapeV1", 1, 54, {0: ("i", _NO_AXIS)},
                    [flat, g.shape_const((rows, n), device, s.name("rows"))],
                    [(s.name("rows"), (rows, n))])[0]
    k = s.ew("NEGATE", [flat], (rows, n)) if op.descending else flat
    kth = g.op("TopK", 1, 44, {}, [k, g.const(np.array([op.k], np.int32), device,
                                                     s.name("k"))],
               [(s.name("kth"), (rows,))])[0]
    if op.descending:
        kth = s.ew("NEGATE", [kth], (rows,))
    col = g.op("AxisAddRemove", 1, 65, {0: ("structs <Ii", [(0, 1)])}, [kth],
               [(s.name("column"), (rows, 1))])[0]
    where = g.op("Argmax", 1, 2, {0: ("i", 1)}, [s.ew("EQ", [flat, col], (rows, n))],
                 [(s.name("argmax"), (rows, 1))])[0]
    out_shape = shape[:-1] + (1,)
    for v, var in ((values, col), (indices, where)):
        if len(shape) != 2:
            var = g.op("ReshapeV1", 1, 54, {0: ("i", _NO_AXIS)},
                       [var, g.shape_const(out_shape, device, s.name("shape"))],
                       [(s.name("shape"), out_shape)])[0]
        g.middle[var][0] = ("str", v.name)
        g.ids[id(v)] = var


_EXPANSIONS = {
    "LeakyRelu": _leaky_relu, "PRelu": _prelu, "LogSoftmax": _log_softmax, "Stack": _stack,
    "Split": _split, "Normalize": _normalization, "Subtensor": _subtensor, "Sizes": _sizes,
    "Fill": _fill, "Broadcast": _broadcast, "SetSubtensor": _subtensor,
    "IncrSubtensor": _subtensor, "Roll": _roll, "Linspace": _linspace,
    "ConvBiasForward": _conv_bias, "TopK": _topk, "Compute": _compute, "Elemwise": _elemwise,
    "Where": _where, "BroadcastAs": _broadcast_as, "IndexingSetMultiAxisVec": _subtensor,
    "IndexingIncrMultiAxisVec": _subtensor,
    "IndexingMultiAxisVec": _subtensor}  # (a slice bound computed from shapes; index arrays
# are refused by `_bound`)
_EXPANSIONS.update(_VISION)
# this fork's Compute functions written by a writer of their own (`_compute` writes argmax
# and argmin)
_COMPUTED = {"_nms_keep": _nms, "_isinf": _compute_check, "_isnan": _compute_check}
_EXPANSIONS.update({  # (the fork's fused ops of the section above)
    "PNorm": _p_norm, "LogSumExp": _log_sum_exp, "CrossEntropy": _cross_entropy,
    "L1": _pair_loss, "Square": _pair_loss, "SmoothL1": _pair_loss,
    "BinaryCrossEntropy": _pair_loss})
_COMPUTED.update({"_one_hot": _one_hot, "_argsort": _argsort_compute})
_EXPANSIONS.update({  # (gather, scatter, one_hot, embedding, cond_take, cumsum, sorting, ...)
    "TakeAlongAxis": _take_along_axis, "Scatter": _scatter, "Embedding": _embedding,
    "CondTake": _cond_take, "Cumsum": _cumsum, "ArgsortForward": _sort, "Diag": _diag,
    "MatrixInverse": _matinv})
# --------------------------------------------------------------------------------------------
# convolutions of every rank, batch norm of any input, deformable and local convolutions
# --------------------------------------------------------------------------------------------
def _add_axes(g, k, shape, axes, name):
    """Var ``k`` (of ``shape``) with axes of 1 added at ``axes`` (AxisAddRemove); returns
    (var, shape)."""
    shape = tuple(shape)
    for a in axes:
        shape = shape[:a] + (1,) + shape[a:]
    return g.op("AxisAddRemove", 1, 65, {0: ("structs <Ii", [(0, a) for a in axes])}, [k],
                [(name, shape)])[0], shape


def _float32_values(opr, values, what):
    """Refuse ``what`` (a convolution, a batch norm) of values other than float32 (what this
    writer writes of them and upstream 1.13 was checked to compute)."""
    for v in values:
        if np.dtype(v.dtype) != np.float32 or np.dtype(v.dtype).metadata is not None:
            _refuse(opr, f"a {what} of {v.dtype} values (float32 ones are written)")


def _convolution_any(g, opr, ins, outs, p, device):
    """A convolution (ConvolutionForward) or transposed one (ConvolutionBackwardData,
    Convolution3DBackwardData) of any rank, as upstream's F.conv1d, conv2d,
    conv_transpose2d and conv_transpose3d build them: a 1-d one as a 2-d Convolution of the
    input and the weight with an axis of 1 added last, that axis then removed (upstream's
    conv1d); a transposed one takes the weight, then the data, and, with output padding,
    a third input of the output's shape (a zero broadcast to it: its batch the input's, as
    upstream's Alloc of that shape)."""
    t = _graph_type_of(opr)
    x, w, y = ins[0], ins[1], outs[0]
    op = opr._op
    nd, transposed = int(op.nd), t != "ConvolutionForward"
    if nd == 1 and transposed or nd not in (1, 2, 3) or len(ins) != 2:
        _refuse(opr, f"a {'transposed ' if transposed else ''}{nd}-d convolution of "
                     f"{len(ins)} inputs; 1-d, 2-d and 3-d convolutions and 2-d and 3-d "
                     "transposed ones are written")
    if nd == 3:
        _float32_values(opr, (x, w, y), "3-d transposed convolution")
    data, weight = g.ids[id(x)], g.ids[id(w)]
    if nd == 1:  # (upstream's conv1d: (N, C, L, 1) by a (..., K, 1) weight)
        data, _ = _add_axes(g, data, x.shape, [3], f"{y.name}:input4d")
        weight, _ = _add_axes(g, weight, w.shape, [len(w.shape)], f"{y.name}:weight4d")
    inputs = [weight, data] if transposed else [data, weight]
    if transposed and any(int(v) for v in op.output_padding):
        batch = g.op("GetVarShapeV1", 1, 54, {0: ("i", 0)}, [data],
                     [(f"{y.name}:batch", (1,))])[0]
        rest = g.shape_const([int(d) for d in y.shape[1:]], device, f"{y.name}:size")
        shape = g.concat([batch, rest], 0, f"{y.name}:shape", (len(y.shape),), device)
        zero = g.const(np.zeros(1, y.dtype), device, f"{y.name}:zero")
        inputs.append(g.op("Broadcast", 1, 1, {}, [zero, shape],
                           [(f"{y.name}:like", y.shape)])[0])
    if nd == 3:
        params = {0: ("I", 0), 1: ("I", p["pad_d"]), 2: ("I", p["pad_h"]),
                  3: ("I", p["pad_w"]), 4: ("I", p["stride_d"]), 5: ("I", p["stride_h"]),
                  6: ("I", p["stride_w"]), 7: ("I", p["dilate_d"]), 8: ("I", p["dilate_h"]),
                  9: ("I", p["dilate_w"]), 10: ("I", int(p["sparse"] == "GROUP")),
                  12: ("I", 0)}
        name, ptype = "Convolution3DBackwardData", 41
    else:
        params, ptype = _convolution(p, ins, outs), 3
        name = "ConvolutionBackwardData" if transposed else "Convolution"
    shape = tuple(y.shape) + ((1,) if nd == 1 else ())
    made = g.op(name, 2, ptype, params, inputs,
                [(f"{y.name}:4d" if nd == 1 else y.name, shape)], extra=[(55, {})])[0]
    if nd == 1:
        made = g.op("AxisAddRemove", 1, 65, {0: ("structs <Ii", [(1, 3)])}, [made],
                    [(y.name, y.shape)])[0]
    g.ids[id(y)] = made


def _batch_norm(g, opr, ins, outs, p, device):
    """Upstream's BatchNormV1 (inference, statistics of shape (1, C, 1, 1)): the input,
    scale, bias, mean and variance. A batch norm without weight or bias (F.batch_norm's
    default) takes ones or zeros for them, as upstream's F.batch_norm fills them in; an input
    of other than 4 axes ((N, C), (N, C, L), (N, C, D, H, W)) is normalized as (N, C, rest, 1)
    and reshaped back (upstream's BatchNorm1d adds axes likewise)."""
    q = opr.params
    x, y = ins[0], outs[0]
    if q.get("training") or not q.get("has_stats") or len(x.shape) < 2:
        _refuse(opr, "a batch norm in training mode, without running statistics or of an "
                     "input of fewer than 2 axes; inference with running statistics is written")
    _float32_values(opr, list(ins) + [y], "batch norm")
    n, c = int(x.shape[0]), int(x.shape[1])
    stats = (1, c, 1, 1)
    given = iter(ins[1:])
    parts = [next(given) if q.get(k) else k for k in ("has_weight", "has_bias")]
    parts += [next(given), next(given)]
    inputs = []
    for k, v in enumerate(parts):
        if isinstance(v, str):  # (a weight of ones, a bias of zeros)
            inputs.append(g.const(np.full(stats, 1.0 if k == 0 else 0.0, np.float32), device,
                                  f"{opr.name}:{'weight' if k == 0 else 'bias'}"))
            continue
        k_v = g.ids[id(v)]
        if tuple(v.shape) != stats:
            k_v = g.op("ReshapeV1", 1, 54, {0: ("i", _NO_AXIS)},
                       [k_v, g.shape_const(stats, device, f"{opr.name}:param{k}")],
                       [(f"{opr.name}:param{k}", stats)])[0]
        inputs.append(k_v)
    data, shape = g.ids[id(x)], tuple(x.shape)
    if len(shape) != 4:
        shape = (n, c, int(np.prod(shape[2:], dtype=np.int64)), 1)
        data = g.op("ReshapeV1", 1, 54, {0: ("i", _NO_AXIS)},
                    [data, g.shape_const(shape, device, f"{y.name}:4d")],
                    [(f"{y.name}:input4d", shape)])[0]
    made = g.op("BatchNormV1", 1, 11, {0: ("I", 2), 1: ("I", 1), 2: ("d", float(p["epsilon"]))},
                [data] + inputs,
                [(f"{opr.name}:mean", stats), (f"{opr.name}:variance", stats),
                 (f"{opr.name}:reserve", (0,)),
                 (y.name if shape == tuple(x.shape) else f"{y.name}:4d", shape)])[3]
    if shape != tuple(x.shape):
        made = g.op("ReshapeV1", 1, 54, {0: ("i", _NO_AXIS)},
                    [made, g.shape_const(_shape(y.shape), device, y.name)],
                    [(y.name, y.shape)])[0]
    g.ids[id(y)] = made


def _deformable_conv(g, opr, ins, outs, p, device):
    """Upstream's DeformableConvForward: the input, weight ((G, O/G, C/G, KH, KW) where
    grouped), offsets and mask, a Convolution parameter."""
    x, w, offset, mask = ins
    y = outs[0]
    _float32_values(opr, list(ins) + [y], "deformable convolution")
    groups = int(opr.params.get("groups", 1))
    weight = _grouped_weight(g, w, groups, 4, device, f"{y.name}:w")
    g.ids[id(y)] = g.op("DeformableConvForward", 2, 3, _convolution(p, ins, outs),
                        [g.ids[id(x)], weight, g.ids[id(offset)], g.ids[id(mask)]],
                        [(y.name, y.shape)], extra=[(55, {})])[0]


def _group_local(g, opr, ins, outs, p, device):
    """Upstream's GroupLocalV2: the input and the weight (groups, OH, OW, C/groups, KH, KW,
    O/groups); this fork's (OH, OW, C, KH, KW, O) one gets its group axis of 1 first."""
    x, w = ins
    y = outs[0]
    _float32_values(opr, list(ins) + [y], "local convolution")
    weight = g.ids[id(w)]
    if len(w.shape) == 6:
        weight, _ = _add_axes(g, weight, w.shape, [0], f"{y.name}:w")
    g.ids[id(y)] = g.op("GroupLocalV2", 1, 3, _convolution(dict(p, sparse="DENSE"), ins, outs),
                        [g.ids[id(x)], weight], [(y.name, y.shape)])[0]


_EXPANSIONS.update({
    "ConvolutionForward": _convolution_any, "ConvolutionBackwardData": _convolution_any,
    "Convolution3DBackwardData": _convolution_any, "BatchNormForward": _batch_norm,
    "DeformableConvForward": _deformable_conv, "GroupLocalForward": _group_local})


# --------------------------------------------------------------------------------------------
# recurrent networks: M.LSTM / M.RNN (this fork's RecurrentStack) as upstream's LSTMForward /
# RNNForward, M.LSTMCell / M.RNNCell (RecurrentLayer of one step) as LSTMCellForward /
# RNNCellForward, as upstream 1.13's own dumps of those modules hold them (its CPU runtime
# runs them from a file, at any sequence length and batch: checked)
# --------------------------------------------------------------------------------------------
_RNN_NONLINEAR = {"relu": 1, "tanh": 2}  # (megdnn's RNN NonlineMode: IDENTITY 0, RELU, TANH)


def _stack_parts(opr):
    """(states, weights) among a RecurrentStack's inputs: h0 (and c0) unless it makes zero
    states, then w_ih, w_hh, b_ih, b_hh per layer and direction, layer-major."""
    p = opr.params
    ns = 0 if p.get("zero_states") else (2 if p.get("mode") == "lstm" else 1)
    ins = list(opr.inputs)
    return ins[1:1 + ns], ins[1 + ns:]


def _constant_of(v):
    """The value of Network var ``v`` where a constant (an ImmutableTensor) makes it, else
    None."""
    owner = getattr(v, "owner", None)
    if owner is None or _graph_type_of(owner) != "ImmutableTensor":
        return None
    return np.asarray(owner.numpy())


def _stack_bias(weights):
    """Whether the stack's biases are written: not where every one is a constant of zeros
    (what M.LSTM / M.RNN of bias=False give the op), written then as upstream writes such a
    module, bias=False, its flattened weight without them."""
    biases = [v for k, v in enumerate(weights) if k % 4 >= 2]
    values = [_constant_of(v) for v in biases]
    return not all(a is not None and not a.any() for a in values)


def _folded_constants(net):
    """ids of the constant vars read only as weights of recurrent stacks whose weights are all
    constants: their values go into the stack's flattened weight (`_recurrent_stack`), so they
    are not written on their own (upstream's own files hold the flattened weight alone)."""
    readers = {}
    for opr in net.all_oprs:
        for k, v in enumerate(opr.inputs):
            readers.setdefault(id(v), []).append((opr, k))
    outputs = {id(v) for v in net.output_vars}
    folded = set()
    for opr in net.all_oprs:
        if _graph_type_of(opr) != "RecurrentStack":
            continue
        states, weights = _stack_parts(opr)
        if any(_constant_of(v) is None for v in weights):
            continue
        first = 1 + len(states)
        for v in weights:
            if id(v) not in outputs and all(_graph_type_of(o) == "RecurrentStack" and k >= first
                                            and all(_constant_of(w) is not None
                                                    for w in _stack_parts(o)[1])
                                            for o, k in readers[id(v)]):
                folded.add(id(v))
    return folded


def _flat_weight(g, opr, weights, bias, device):
    """Upstream's flattened weight of a stack, (gates * hidden, n): per layer and direction
    w_ih, w_hh and (``bias``) b_ih, b_hh, each row-major, one after the other (the layout
    upstream's RNN / LSTM read it in: measured, upstream's modules given weights this way
    compute this fork's values). Constants: one constant, as upstream's files hold it;
    otherwise each flattened (Reshape), one Concat, reshaped."""
    parts = [v for k, v in enumerate(weights) if bias or k % 4 < 2]
    rows = int(weights[0].shape[0])
    size = sum(int(np.prod(v.shape)) for v in parts)
    shape = (rows, size // rows)
    name = f"{opr.name}:flatten_weights"
    values = [_constant_of(v) for v in parts]
    if all(a is not None for a in values):
        return g.const(np.concatenate([a.astype(np.float32).reshape(-1) for a in values])
                       .reshape(shape), device, name)
    flat = [g.ids[id(v)] if len(v.shape) == 1 else g.op(  # (a bias: as it is)
        "ReshapeV1", 1, 54, {0: ("i", _NO_AXIS)},
        [g.ids[id(v)], g.shape_const([int(np.prod(v.shape))], device, f"{name}{k}")],
        [(f"{name}{k}", (int(np.prod(v.shape)),))])[0] for k, v in enumerate(parts)]
    k = g.concat(flat, 0, f"{name}:flat", (size,), device)
    return g.op("ReshapeV1", 1, 54, {0: ("i", _NO_AXIS)},
                [k, g.shape_const(shape, device, name)], [(name, shape)])[0]


def _zero_states(g, opr, x, batch_axis, states_shape, device):
    """The zero initial states of a stack, (layers * directions, N, H), N the batch of
    ``x`` at each run: a zero broadcast to a shape of the input's batch, as upstream's
    init_hidden (its Fill) builds them."""
    name = f"{opr.name}:zeros"
    zero = g.const(np.zeros(1, np.float32), device, f"{name}:value")

    def shape():
        batch = g.op("GetVarShapeV1", 1, 54, {0: ("i", batch_axis)}, [g.ids[id(x)]],
                     [(f"shape_of({x.name})[{batch_axis}]", (1,))])[0]
        return g.concat([g.shape_const([states_shape[0]], device, f"{name}:layers"), batch,
                         g.shape_const([states_shape[2]], device, f"{name}:hidden")], 0,
                        f"{name}:shape", (3,), device)

    return g.broadcast(zero, (1,), states_shape, name, shape)


def _recurrent_stack(g, opr, ins, outs, p, device):
    """M.LSTM / M.RNN (inference: the fork's op runs no dropout): upstream's LSTMForward (x,
    h0, c0, the flattened weight; out y, h_n, c_n and a reserve for its backward) or
    RNNForward (x, h0, the weight; out y, h_n, reserve), of (T, N, I) input: a batch-first
    input is transposed there and back (Dimshuffle), as upstream's module does; zero states
    are made from the input's batch (`_zero_states`). The file follows the input's sequence
    length and batch (upstream's operator infers its shapes at each run)."""
    mode, layers, directions = p["mode"], int(p["num_layers"]), int(p["directions"])
    lstm = mode == "lstm"
    if not lstm and mode not in _RNN_NONLINEAR:  # pragma: no cover (the fork has no other)
        _refuse(opr, f"a recurrent network of mode {mode!r}")
    _float32_values(opr, list(ins) + list(outs), "recurrent network")
    states, weights = _stack_parts(opr)
    x, y = ins[0], outs[0]
    hidden = int(weights[1].shape[1])
    t_axis, b_axis = (1, 0) if p.get("batch_first") else (0, 1)
    steps, batch = int(x.shape[t_axis]), int(x.shape[b_axis])
    data = g.ids[id(x)]
    if p.get("batch_first"):
        data = g.op("Dimshuffle", 1, 64, {0: ("i32s", [1, 0, 2]), 1: ("I", 3)}, [data],
                    [(f"{y.name}:x", (steps, batch, int(x.shape[2])))])[0]
    state_shape = (layers * directions, batch, hidden)
    if states:
        hx = [g.ids[id(v)] for v in states]
    else:
        hx = [_zero_states(g, opr, x, b_axis, state_shape, device)] * (2 if lstm else 1)
    bias = _stack_bias(weights)
    w = _flat_weight(g, opr, weights, bias, device)
    params = {0: ("I", layers), 1: ("?", directions == 2), 2: ("?", bias), 3: ("I", hidden)}
    if lstm:
        name, ptype = "LSTMForward", 89
        params.update({4: ("I", 0), 5: ("f", 0.0), 6: ("I", 1)})  # (no projection; INFERENCE)
    else:
        name, ptype = "RNNForward", 88
        params.update({4: ("f", 0.0), 5: ("I", _RNN_NONLINEAR[mode]), 6: ("I", 1)})
    seq = (steps, batch, directions * hidden)
    finals = [(v.name, tuple(v.shape)) for v in outs[1:]]
    reserve = layers * directions * steps * batch * hidden * (8 if lstm else 4)  # (as
    made = g.op(name, 1, ptype, params, [data] + hx + [w],  # upstream's files give its size)
                [(f"{y.name}:seq" if p.get("batch_first") else y.name, seq)] + finals
                + [(f"{opr.name}:reserve", (reserve,))])
    out = made[0]
    if p.get("batch_first"):
        out = g.op("Dimshuffle", 1, 64, {0: ("i32s", [1, 0, 2]), 1: ("I", 3)}, [out],
                   [(y.name, tuple(y.shape))])[0]
    g.ids[id(y)] = out
    for v, k in zip(outs[1:], made[1:]):
        g.ids[id(v)] = k


def _recurrent_cell(g, opr, ins, outs, p, device):
    """M.LSTMCell / M.RNNCell (the fork's RecurrentLayer of one step, x (N, I)): upstream's
    LSTMCellForward (x, w_ih, b_ih, h, w_hh, b_hh, c; out h', c' and the gates) and
    RNNCellForward (x, w_ih, b_ih, h, w_hh, b_hh; out h', its nonlinearity a parameter). A
    layer over a whole sequence (`rnn_layer` of (T, N, I): what M.LSTM / M.RNN run in training
    with dropout between layers) is refused: upstream has no operator of one direction of one
    layer (its LSTMForward runs the backward direction only beside the forward one)."""
    mode = p["mode"]
    x = ins[0]
    if len(x.shape) != 2:
        _refuse(opr, f"a recurrent layer over a whole sequence (rnn_layer of a {len(x.shape)}-d "
                     "input: M.LSTM / M.RNN in training with dropout between layers) is not "
                     "written; upstream writes such a network as one LSTMForward / RNNForward: "
                     "dump it in eval mode (M.LSTMCell / M.RNNCell are written too)")
    _float32_values(opr, list(ins) + list(outs), "recurrent cell")
    lstm = mode == "lstm"
    if lstm:
        _, h, c, w_ih, w_hh, b_ih, b_hh = ins
    else:
        (_, h, w_ih, w_hh, b_ih, b_hh), c = ins, None
    inputs = [g.ids[id(v)] for v in (x, w_ih, b_ih, h, w_hh, b_hh)]
    y = outs[0]
    hidden = int(w_hh.shape[1])
    if lstm:
        made = g.op("LSTMCellForward", 1, 1, {}, inputs + [g.ids[id(c)]],
                    [(y.name, tuple(y.shape)), (outs[2].name, tuple(outs[2].shape)),
                     (f"{opr.name}:gates", (int(x.shape[0]), 4 * hidden))])
        g.ids[id(y)] = g.ids[id(outs[1])] = made[0]  # (y: h' of the one step)
        g.ids[id(outs[2])] = made[1]
        return
    if mode not in _RNN_NONLINEAR:  # pragma: no cover (the fork has no other)
        _refuse(opr, f"a recurrent cell of mode {mode!r}")
    made = g.op("RNNCellForward", 1, 87, {0: ("I", _RNN_NONLINEAR[mode])}, inputs,
                [(y.name, tuple(y.shape))])[0]
    g.ids[id(y)] = g.ids[id(outs[1])] = made


_EXPANSIONS.update({"RecurrentStack": _recurrent_stack, "RecurrentLayer": _recurrent_cell})
# operators refused with their reason (graph type -> why)
_REFUSED = {}
# what `trace.dump(dump_format="FBS_V2")` writes, by the graph type `megengine.utils.network`
# gives each operator
SUPPORTED = ("Host2DeviceCopy", "ImmutableTensor") + tuple(sorted({*_OPERATORS, *_EXPANSIONS}))


def _refuse(opr, what):
    raise DumpError(f"trace.dump(dump_format='FBS_V2'): operator {opr.name!r}: {what}; dump "
                    "without dump_format to keep it in this fork's format")


def write_upstream(net, metadata=None):
    """The bytes of upstream's ``.mge`` file of `megengine.utils.network.Network` ``net``;
    ``metadata``: upstream's metadata dict (``user_info``, ``graph_modified``,
    ``optimize_options``), or None for none."""
    from ..utils.network_node import graph_params, graph_type

    g = _Graph()
    ids = g.ids
    folded = _folded_constants(net)  # (constants written inside a recurrent stack's weight)
    for opr in net.all_oprs:
        t = graph_type(opr)
        outs = list(opr.outputs)
        device = getattr(outs[0], "device", None) if outs else None
        device = getattr(device, "logical_name", device)
        if t == "Host2DeviceCopy":
            v = outs[0]
            ids[id(v)] = k = g.var(v.name, v.shape)
            g.ops.append(_operator("Host2DeviceCopy", 2, (63, {}), [], [k], tensors=[
                _tensor(v.shape, v.dtype, device, f"input {v.name!r}", name=v.name)]))
            continue
        if t == "ImmutableTensor":
            v = outs[0]
            if id(v) not in folded:
                ids[id(v)] = g.const(opr.numpy(), device, v.name)
            continue
        if t in _REFUSED:
            _refuse(opr, _REFUSED[t])
        if t not in _OPERATORS and t not in _EXPANSIONS:
            raise DumpError(
                f"trace.dump(dump_format='FBS_V2'): operator {opr.name!r} ({t}) has no writer "
                f"for upstream's format here (written: {', '.join(SUPPORTED)}); dump without "
                "dump_format to keep it in this fork's format")
        ins = list(opr.inputs)
        missing = [v.name for v in ins if id(v) not in ids and id(v) not in folded]
        if missing:  # pragma: no cover (Network lists operators in dependency order)
            raise DumpError(f"trace.dump(dump_format='FBS_V2'): {opr.name!r} reads {missing} "
                            "before they are computed")
        try:  # (the Network knows a var's dtype and shape from a zero-valued sample)
            outs[0].dtype
        except Exception as e:  # noqa: BLE001 (what the op raises on samples: no dump bug)
            _refuse(opr, f"it fails on the zero-valued samples the Network computes shapes "
                         f"with ({type(e).__name__}: {e}), as an index into a value whose "
                         "shape the data decides (a cond_take's, empty there) does")
        for v in outs:  # (dtypes the writer has no code for are refused before any use)
            _dtype(v.dtype, f"operator {opr.name!r}'s output")
            if len(v.shape) > _MAX_NDIM:
                _refuse(opr, f"its output has {len(v.shape)} axes, more than upstream's graphs "
                             f"hold ({_MAX_NDIM}; F.tile of a 4-d value makes 8 here)")
        p = graph_params(opr)
        if g.dynamic and any(id(v) in g.dynamic for v in ins):  # (a cond_take's result)
            write = t in ("IndexingSetMultiAxisVec", "IndexingIncrMultiAxisVec")
            if t not in _SHAPE_FREE and not (write and id(ins[0]) not in g.dynamic):
                _refuse(opr, f"its {t} reads a value whose shape the data decides (a "
                             "cond_take's), and its writer here takes the traced shape; "
                             "element-wise operators, casts, reductions, indexing, writes "
                             "through index arrays and concat of such values are written")
            if not write and (t != "Reduce" or p["axis"] != _EVERY_AXIS
                              and len(ins[0].shape) > 1):  # (a sum of all: one item)
                g.dynamic.update(id(v) for v in outs)
        if t in _EXPANSIONS:
            _EXPANSIONS[t](g, opr, ins, outs, p if isinstance(p, dict) else {}, device)
            continue
        _check(opr, t, p, ins)
        if (t == "Concat" and len(ins) == 1) or (  # (see `_Graph.concat`; a cast to the same
                t in ("TypeCvt", "Requantize")  # dtype, scale included: upstream's
                and _dtype(ins[0].dtype, "") == _dtype(outs[0].dtype, "")):  # TypeCvt::make
            ids[id(outs[0])] = ids[id(ins[0])]  # gives its input then too)
            continue
        inputs = [ids[id(v)] for v in ins]
        if t == "Reduce" and p["axis"] == _EVERY_AXIS:  # (upstream's: a target shape input)
            inputs.append(g.shape_const([1], device, opr.name))
        elif t == "Reshape":
            inputs.append(_target_shape(g, opr, outs[0], device))
            p = dict(p, axis=p["axis"] if opr._dyn or _inferred_axis(opr) is not None
                     else _NO_AXIS)
        elif t == "AdaptivePoolingForward":
            inputs.append(g.shape_const(outs[0].shape[2:], device, opr.name))
        name, version, ptype, params = _OPERATORS[t]
        made = g.op(name, version, ptype, params(p, ins, outs), inputs,
                    [(v.name, v.shape) for v in outs],
                    comp_node=device if t in _WITH_COMP_NODE else None)
        for v, k in zip(outs, made):
            ids[id(v)] = k
    model = {0: ("I", _MGE_VERSION), 1: ("I", 2), 2: ("tables", g.ops),
             3: ("tables", g.middle),
             4: ("tables", [{0: ("I", ids[id(v)]), 1: ("I", ids[id(v)])}
                            for v in net.output_vars]),
             5: ("tables", [])}
    if metadata is not None:
        model[7] = ("table", {
            0: ("?", True), 1: ("?", bool(metadata.get("graph_modified", False))),
            2: ("Q", int(metadata.get("optimize_options", 0))),
            3: ("str", pickle.dumps(metadata.get("user_info"), protocol=4))})
    return _Encoder().finish(model, b"mgv2")


def _user_stacklevel():
    """The ``stacklevel`` of the first caller outside this package, for a warning of the
    function that calls this (trace.dump and Network.dump reach it at different depths)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # (megengine/)
    frame, level = sys._getframe(2), 2
    while frame is not None and frame.f_code.co_filename.startswith(root + os.sep):
        frame, level = frame.f_back, level + 1
    return level


def upstream_bytes(graph, w):
    """Upstream's ``.mge`` file of the program of ``graph`` and ``w``
    (`megengine.jit.dump.program_json`), as bytes."""
    from ..utils.network import Network
    from .dump import in_memory

    # sizes the traced code turned into Python values (int(), float(), an index, text): this
    # fork's loaders check them (ShapeGuardError at other shapes), upstream's format cannot.
    # (Comparisons, e.g. the library's own checks of a layer's input, decide a branch the way
    # upstream's own dumps decide it, at trace time: not named)
    guards = [g for g in graph.get("shape_guards") or () if not g["kind"].startswith("a comp")]
    if guards:
        uses = "; ".join(f"{g['kind']} of a size at {g['where']} (traced {g['value']})"
                         for g in guards[:3])
        warnings.warn(
            f"trace.dump(dump_format='FBS_V2'): the traced code used sizes of its inputs as "
            f"Python values ({uses}{'; ...' if len(guards) > 3 else ''}), which the program "
            "holds as constants. This fork's format checks them when it runs (ShapeGuardError "
            "at other shapes); upstream's format has no such check, so upstream's runtime "
            "computes with the traced values at any input shape: run the file at the traced "
            "input shapes, or compute the value with ops (x.reshape(x.shape[0], -1), "
            "F.linspace(0, 1, n) * x.shape[1]) before tracing", stacklevel=_user_stacklevel())
    from ..functional.math import MatInv

    # (the Network's shapes come from zero samples, of which a matinv's matrices are singular)
    MatInv.singular_ok = True
    try:
        net = Network._of_program(*in_memory(graph, w))  # (no archive written and read back)
        meta = net.metadata
        if meta is not None:  # (the optimizer's options as upstream's bits: `upstream_mge` reads
            meta = dict(meta)  # them back into these names)
            bits = sum(1 << bit for bit, name in _OPTION_BITS.items() if meta.get(name))
            bits |= sum(layout << 32 for layout, name in _LAYOUTS.items() if meta.get(name))
            meta["optimize_options"] = bits
        return write_upstream(net, meta)
    finally:
        MatInv.singular_ok = False
