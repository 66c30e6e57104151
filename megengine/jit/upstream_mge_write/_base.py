"""What every writer of `megengine.jit.upstream_mge_write` builds on: the FlatBuffers encoder
(`_Encoder`), upstream's values (dtypes, comp nodes, tensors, operator type ids), the
operators written one to one (`_OPERATORS`: graph type -> upstream's operator and its
parameter table), the model being written (`_operator`, `_Graph`), `_refuse`, sizes computed
from shapes in the file (`_size`, `_target_shape`), and helpers several operator families use
(`_Steps`, `_graph_type_of`, `_float32_only`, `_user_stacklevel`)."""
import os
import struct
import sys

import numpy as np

from ...core._imperative_rt.ops import _ELEMWISE_MODES
from ..dump_format import DumpError
from ..upstream_mge import _xxh64


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


_RESHAPE = ("ReshapeV1", 1, 54)  # (upstream's Reshape: also `_Graph.reshape`)
_OPERATORS = {
    "PoolingForward": ("PoolingV1", 1, 9, _pooling),
    "AdaptivePoolingForward": ("AdaptivePoolingV1", 1, 70,
                               lambda p, ins, outs: {0: ("I", _POOL_MODES[p["mode"]])}),
    "Reshape": (*_RESHAPE, lambda p, ins, outs: {0: ("i", p["axis"])}),
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
_WITH_COMP_NODE = {"Concat"}
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
        self.data_axes = {}  # id -> the axes data decides of such a var, where known (else all)
        self.sizes = {}  # (id(an op), a size's tree, dtype, device) -> its var (`_size`)

    def data_axes_of(self, v):
        """The axes of Network var ``v`` whose sizes the data decides (none: its shape is the
        program's; all of them where a writer marked it in `dynamic` without saying which)."""
        if id(v) not in self.dynamic:
            return frozenset()
        return self.data_axes.get(id(v)) or frozenset(range(len(v.shape)))

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

    def reshape(self, k, target, name, shape, axis=_NO_AXIS):
        """Var ``k`` reshaped to ``shape`` (upstream's Reshape, registered ReshapeV1) by its
        target shape var ``target``; ``axis``: the axis whose size upstream infers at each run
        (``target`` holds a placeholder there), or `_NO_AXIS` for none."""
        return self.op(*_RESHAPE, {0: ("i", axis)}, [k, target], [(name, shape)])[0]

    def shape_of(self, k, axis, name, shape=(1,)):
        """The shape of var ``k`` as the file runs (upstream's GetVarShape, registered
        GetVarShapeV1), an int32 var named ``name`` of ``shape``: ``axis`` the one axis whose
        size it gives (a (1,) var), or `_NO_AXIS` for every axis's (an (ndim,) var); None: the
        same, its parameter table left empty (upstream's default axis is `_NO_AXIS`)."""
        params = {} if axis is None else {0: ("i", axis)}
        return self.op("GetVarShapeV1", 1, 54, params, [k], [(name, shape)])[0]

    def flatten(self, k, size, name, device):
        """Var ``k`` as one axis of ``size`` items, its size inferred where the file runs
        (upstream's Reshape of one axis left to infer)."""
        return self.reshape(k, self.shape_const([1], device, name), name, (size,), axis=0)

    def rows(self, k, shape, name, device):
        """Var ``k``, a value of ``shape``, as the rows of its last axis (upstream's TopK and
        Argsort take 2-d values only): ``k`` itself when 2-d, else reshaped with the row count
        inferred and the last size read where the file runs, so that the file follows the
        batch (the leading sizes may be another's than the traced)."""
        if len(shape) == 2:
            return k
        rows = (int(np.prod(shape[:-1], dtype=np.int64)), shape[-1])
        last = self.shape_of(k, len(shape) - 1, f"{name}:n")
        target = self.concat([self.shape_const([1], device, name), last], 0,
                             f"{name}:rows", (2,), device)
        return self.reshape(k, target, name, rows, axis=0)

    def unrows(self, ks, like, shape, last, names, device):
        """Vars ``ks`` of `rows` of var ``like`` (a value of ``shape``) back to its leading
        sizes where the file runs, with a last axis of ``last`` items (None: ``like``'s);
        ``ks`` themselves when ``like`` is 2-d. ``names``: one per var."""
        if len(shape) == 2:
            return list(ks)
        out = tuple(shape[:-1]) + (shape[-1] if last is None else last,)
        if last is None:
            target = self.shape_of(like, _NO_AXIS, f"{names[0]}:shape", (len(shape),))
        else:
            target = self.concat([self.shape_of(like, i, f"{names[0]}:size{i}")
                                  for i in range(len(shape) - 1)]
                                 + [self.shape_const([last], device, f"{names[0]}:last")], 0,
                                 f"{names[0]}:shape", (len(shape),), device)
        return [self.reshape(k, target, n, out) for k, n in zip(ks, names)]

    def cast(self, k, dtype, name, shape):
        """Var ``k`` converted to ``dtype`` (upstream's TypeCvt), named ``name``."""
        return self.op("TypeCvtV2", 1, 67, _dtype(dtype, name), [k], [(name, shape)])[0]

    def elemwise(self, mode, inputs, name, shape):
        return self.op("Elemwise", 1, 17, {0: ("I", _ELEMWISE_MODES.index(mode))}, inputs,
                       [(name, shape)])[0]

    def reduce(self, mode, x, axis, name, shape):
        return self.op("ReduceV2", 1, 23, {0: ("I", _REDUCE_MODES[mode]), 1: ("i", axis)},
                       [x], [(name, shape)])[0]

    def reduce_all(self, mode, x, name, device, target_name):
        """``mode`` over every axis of var ``x``: a (1,) value named ``name`` (upstream's Reduce
        without an axis takes its target shape as an input, named ``target_name``)."""
        return self.op("ReduceV2", 1, 23, {0: ("I", _REDUCE_MODES[mode]), 1: ("i", _EVERY_AXIS)},
                       [x, self.shape_const([1], device, target_name)], [(name, (1,))])[0]


def _model_bytes(g, outputs, more=None):
    """The encoded Model table of graph ``g`` (its operators and vars) whose outputs are the
    vars ``outputs``; ``more``: further fields ({field: value}: metadata, a count)."""
    model = {0: ("I", _MGE_VERSION), 1: ("I", 2), 2: ("tables", g.ops),
             3: ("tables", g.middle),
             4: ("tables", [{0: ("I", k), 1: ("I", k)} for k in outputs]),
             5: ("tables", [])}
    model.update(more or {})
    return _Encoder().finish(model, b"mgv2")


def _refuse(opr, what):
    raise DumpError(f"trace.dump(dump_format='FBS_V2'): operator {opr.name!r}: {what}; dump "
                    "without dump_format to keep it in this fork's format")


# --------------------------------------------------------------------------------------------
# sizes computed from shapes, in the file (a reshape's target, sizes of the program)
# --------------------------------------------------------------------------------------------
_SIZE_MODES = {"+": "ADD", "-": "SUB", "*": "MUL", "//": "FLOOR_DIV", "%": "MOD",
               "/": "TRUE_DIV", "max": "MAX", "min": "MIN"}


def _size(g, opr, tree, device, name, dtype=np.int32):
    """The var of a size computed from shapes (a `megengine.jit._program._DimExpr` tree), as
    upstream's graph computes it: GetVarShape of the value, then arithmetic on vectors of one
    item, in int32 (``dtype`` float32: a value made from sizes, ``x.shape[1] / 100``: the
    sizes converted with TypeCvt, as upstream's graph converts them). A size an op computes
    twice is written once (a Split's bounds, each the end of one part and the start of the
    next, share their terms: 776 parts wrote 8.5 MB)."""
    dtype = np.dtype(dtype)
    key = (id(opr), tree, dtype.str, device)
    if key not in g.sizes:
        g.sizes[key] = _new_size(g, opr, tree, device, name, dtype)
    return g.sizes[key]


def _new_size(g, opr, tree, device, name, dtype):
    if type(tree) is not tuple:
        return g.const(np.array([tree], dtype), device, f"{name}:{tree}")
    if tree[0] == "dim":
        var = opr._dyn_vars[tree[1]]
        k = g.shape_of(g.ids[id(var)], int(tree[2]), f"shape_of({var.name})[{tree[2]}]")
        if dtype != np.int32:
            k = g.cast(k, dtype, f"{name}:{dtype}", (1,))
        return k
    if tree[0] == "neg":
        return g.elemwise("NEGATE", [_size(g, opr, tree[1], device, name, dtype)],
                          f"{name}:neg", (1,))
    if tree[0] in ("floor", "ceil"):  # (of a float value: math.floor(h * 1.5), an
        # interpolation's scale_factor; upstream's FLOOR / CEIL in float32, then a cast)
        k = g.elemwise(tree[0].upper(), [_size(g, opr, tree[1], device, name, np.float32)],
                       f"{name}:{tree[0]}", (1,))
        if dtype != np.float32:
            k = g.cast(k, dtype, f"{name}:{tree[0]}:{dtype}", (1,))
        return k
    if tree[0] not in _SIZE_MODES or (tree[0] == "/" and dtype.kind != "f"):
        _refuse(opr, f"a size computed with {tree[0]!r} of sizes, which this writer does not "
                     "write (+, -, *, //, %, max, min, floor, ceil and, for float values, / are); "
                     "trace with symbolic_shape=False")
    a, b = (_size(g, opr, x, device, name, dtype) for x in tree[1:])
    return g.elemwise(_SIZE_MODES[tree[0]], [a, b], f"{name}:{tree[0]}", (1,))


def _size_written(tree):
    """Whether `_size` writes size expression ``tree`` (its operators all upstream's)."""
    if type(tree) is not tuple or tree[0] == "dim":
        return True
    return (tree[0] in _SIZE_MODES or tree[0] in ("neg", "floor", "ceil")) and all(
        _size_written(v) for v in tree[1:])


def _target_shape(g, opr, out, device):
    """A reshape's target shape: a constant, or, where the program computes sizes from
    shapes (traced with symbolic shapes: ``x.reshape(x.shape[0], -1)``, ``flatten``), one
    item per axis, concatenated; the axis whose size upstream infers holds a placeholder."""
    from ...jit._program import _DimExpr

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


# --------------------------------------------------------------------------------------------
# helpers several operator families use
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
        return self.g.cast(k, dst, self.name(str(np.dtype(dst))), tuple(shape))

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
        target = self.name("total")  # (named before the output, as the file numbers them)
        return self.g.reduce_all(mode, k, self.name(mode.lower()), self.device, target)

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


def _graph_type_of(opr):
    from ...utils.network_node import graph_type

    return graph_type(opr)


def _graph_params_of(opr):
    from ...utils.network_node import graph_params

    p = graph_params(opr)
    return p if isinstance(p, dict) else {}


def _float32_only(opr, what, v):
    """Refuse ``what`` (an image, rois, an output) of a dtype other than float32: what these
    writers write, and upstream 1.13 was checked to compute (its kernels compute in their
    inputs' dtype)."""
    if np.dtype(v.dtype) != np.float32:
        _refuse(opr, f"{what} of dtype {v.dtype}; float32 ones are written (upstream's "
                     "operator computes in its input's dtype)")


def _float32_values(opr, values, what):
    """Refuse ``what`` (a convolution, a batch norm) of values other than float32 (what this
    writer writes of them and upstream 1.13 was checked to compute)."""
    for v in values:
        if np.dtype(v.dtype) != np.float32 or np.dtype(v.dtype).metadata is not None:
            _refuse(opr, f"a {what} of {v.dtype} values (float32 ones are written)")


def _user_stacklevel():
    """The ``stacklevel`` of the first caller outside this package, for a warning of the
    function that calls this (trace.dump and Network.dump reach it at different depths)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))  # (megengine/)
    frame, level = sys._getframe(2), 2
    while frame is not None and frame.f_code.co_filename.startswith(root + os.sep):
        frame, level = frame.f_back, level + 1
    return level
