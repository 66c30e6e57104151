"""Writing upstream MegEngine's binary ``.mge`` format (FlatBuffers, file identifier ``mgv2``,
``model_version`` 2: what upstream 1.13's ``trace.dump`` writes by default), so that a model
traced here runs on upstream's runtimes (its ``load_and_run``, MegEngine Lite, its Python
``GraphInference``). ``trace.dump(file, dump_format="FBS_V2")`` writes it.

The program is written at upstream's operator granularity: the operators
`megengine.utils.network` gives a dumped program (a linear layer as MatrixMul and an ADD, a
reduction per axis, ...; `megengine.utils.network_node.graph_type` / ``graph_params``), each
as the operator upstream registers for it, with its parameter table (upstream's published
schema: ``schema_v2.fbs``, ``opr_param_defs.fbs``, ``dtype.fbs``; the field positions are
those `upstream_mge` reads). Values keep the traced shapes: a reshape or an adaptive pooling
gets its target shape as a constant, as the program recorded it, and a scalar is a vector of
one item, as in upstream's graphs. What has no writer here (an operator not in `SUPPORTED`,
indexing by arrays, a dtype beyond float32/float16 and 8-32 bit integers and bool, a
quantized one, test cases) raises `DumpError` naming it, before anything is written.

The FlatBuffers buffer is laid out front to back (`_Encoder`): each table's vtable just
before it, its strings, vectors and child tables after it; offsets point forward, and every
scalar sits at a multiple of its size from the start of the file (upstream verifies the
buffer with its size prefix, so alignment counts from there).
"""
import io
import pickle
import struct

import numpy as np

from ..core._imperative_rt.ops import _ELEMWISE_MODES
from .dump_format import DumpError
from .upstream_mge import _xxh64

__all__ = ["write_upstream", "SUPPORTED"]

_MGE_VERSION = 101300  # the version upstream 1.13's files carry (its loader warns on newer)
_NO_AXIS = 7  # megdnn's OptionalAxisV1 "no axis": a reshape target without an inferred size
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

    def _pad(self, align, ahead=0):
        """Pad so that the next ``ahead`` bytes end at a multiple of ``align`` from the start."""
        self.buf += bytes(-(len(self.buf) + ahead) % align)

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


def _dtype(dtype, where):
    """Upstream's DType table of ``dtype``."""
    dtype = np.dtype(dtype)
    if dtype.metadata is not None or dtype not in _DTYPE_ENUM:
        raise DumpError(
            f"trace.dump(dump_format='FBS_V2'): {where} has dtype {dtype}, which this writer "
            f"does not write ({', '.join(str(d) for d in _DTYPE_ENUM)} are written; "
            "quantized dtypes are not yet); dump without dump_format to keep it")
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
def _pair(v):
    return (v, v) if isinstance(v, (int, np.integer)) else tuple(v)


def _elemwise(p, ins, outs):
    return {0: ("I", _ELEMWISE_MODES.index(p["mode"]))}


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


_OPERATORS = {
    "Elemwise": ("Elemwise", 1, 17, _elemwise),
    "MatrixMul": ("MatrixMulV2", 1, 20, _matmul),
    "BatchedMatrixMul": ("BatchedMatrixMulV2", 1, 20, _matmul),
    "ConvolutionForward": ("Convolution", 2, 3, _convolution),
    "PoolingForward": ("PoolingV1", 1, 9, _pooling),
    "AdaptivePoolingForward": ("AdaptivePoolingV1", 1, 70,
                               lambda p, ins, outs: {0: ("I", _POOL_MODES[p["mode"]])}),
    "Reshape": ("ReshapeV1", 1, 54, lambda p, ins, outs: {0: ("i", _NO_AXIS)}),
    "Dimshuffle": ("Dimshuffle", 1, 64, _dimshuffle),
    "AxisAddRemove": ("AxisAddRemove", 1, 65, _axis_add_remove),
    "Reduce": ("ReduceV2", 1, 23, _reduce),
    "Concat": ("Concat", 1, 2, lambda p, ins, outs: {0: ("i", p["axis"])}),
    "TypeCvt": ("TypeCvtV2", 1, 67,
                lambda p, ins, outs: _dtype(outs[0].dtype, "a TypeCvt's output")),
    "SoftmaxForward": ("Softmax", 2, 90, lambda p, ins, outs: {0: ("i", p["axis"])}),
    "Subtensor": ("Subtensor", 1, 66,
                  lambda p, ins, outs: {0: ("structs <b????", [
                      (d["axis"], d["begin"], d["end"], d["step"], d["idx"]) for d in p])}),
    "BatchNormForward": ("BatchNormV1", 1, 11,
                         lambda p, ins, outs: {0: ("I", 2), 1: ("I", 1),
                                               2: ("d", float(p["epsilon"]))}),
}
# the operators whose comp node upstream's dump names (their config sets one)
_WITH_COMP_NODE = {"MatrixMul", "BatchedMatrixMul", "Concat"}
# the operators upstream's graph makes with a target shape as a second input
_SHAPE_INPUT = {"Reshape", "AdaptivePoolingForward"}
# what `trace.dump(dump_format="FBS_V2")` writes, by upstream's graph type (documentation)
SUPPORTED = ("Host2DeviceCopy", "ImmutableTensor") + tuple(sorted(_OPERATORS))


def _check(opr, t, p, ins):
    """Refuse what the table above would write wrong."""
    where = f"operator {opr.name!r} ({t})"
    if t == "ConvolutionForward" and (p.get("format", "NCHW") != "NCHW"
                                       or p.get("mode") != "CROSS_CORRELATION"):
        raise DumpError(f"trace.dump(dump_format='FBS_V2'): {where} has format "
                        f"{p.get('format')} / mode {p.get('mode')}; NCHW cross-correlation "
                        "is written")
    if t in _SHAPE_INPUT and len(ins) != 1:
        raise DumpError(f"trace.dump(dump_format='FBS_V2'): {where} takes its shape from "
                        "other values of the program (traced with symbolic shapes), which "
                        "this writer does not write; trace with symbolic_shape=False")


# --------------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------------
def write_upstream(net, metadata=None):
    """The bytes of upstream's ``.mge`` file of `megengine.utils.network.Network` ``net``;
    ``metadata``: upstream's metadata dict (``user_info``, ``graph_modified``,
    ``optimize_options``), or None for none."""
    from ..utils.network_node import _subtensor_items, graph_params, graph_type

    ids, middle, ops = {}, [], []

    def new_var(name, shape):
        middle.append({0: ("str", name), 1: ("u32s", _shape(shape))})
        return len(middle) - 1

    def add_const(value, device, name):
        k = new_var(name, value.shape)
        ops.append(_operator("ImmutableTensor", 2, None, [], [k], tensors=[
            _tensor(value.shape, value.dtype, device, f"constant {name!r}", value=value)]))
        return k

    for opr in net.all_oprs:
        t = graph_type(opr)
        outs = list(opr.outputs)
        device = getattr(outs[0], "device", None) if outs else None
        device = getattr(device, "logical_name", device)
        if t == "Host2DeviceCopy":
            v = outs[0]
            ids[id(v)] = k = new_var(v.name, v.shape)
            ops.append(_operator("Host2DeviceCopy", 2, (63, {}), [], [k], tensors=[
                _tensor(v.shape, v.dtype, device, f"input {v.name!r}", name=v.name)]))
            continue
        if t == "ImmutableTensor":
            v = outs[0]
            ids[id(v)] = add_const(np.asarray(opr.numpy()), device, v.name)
            continue
        if t not in _OPERATORS:
            raise DumpError(
                f"trace.dump(dump_format='FBS_V2'): operator {opr.name!r} ({t}) has no writer "
                f"for upstream's format here (written: {', '.join(SUPPORTED)}); dump without "
                "dump_format to keep it in this fork's format")
        ins = list(opr.inputs)
        p, values = graph_params(opr), ()
        if t == "Subtensor":  # ints and slices: upstream's items, their values as inputs
            found = _subtensor_items(opr.params.get("index"), len(ins[0].shape))
            if found is None:
                raise DumpError(
                    f"trace.dump(dump_format='FBS_V2'): operator {opr.name!r} indexes with "
                    f"{opr.params.get('index')!r}; indices of ints and slices are written "
                    "(index arrays, None and masks are not yet)")
            p, values = found
        _check(opr, t, p, ins)
        missing = [v.name for v in ins if id(v) not in ids]
        if missing:  # pragma: no cover (Network lists operators in dependency order)
            raise DumpError(f"trace.dump(dump_format='FBS_V2'): {opr.name!r} reads {missing} "
                            "before they are computed")
        inputs = [ids[id(v)] for v in ins]
        inputs += [add_const(np.array([v], np.int32), device, f"{opr.name}:index{k}")
                   for k, v in enumerate(values)]
        if t == "Reduce" and p["axis"] == _EVERY_AXIS:  # (upstream's: a target shape input)
            inputs.append(add_const(np.array([1], np.int32), device, f"{opr.name}:shape"))
        if t == "Reshape":
            inputs.append(add_const(np.array(outs[0].shape, np.int32), device,
                                    f"{opr.name}:shape"))
        elif t == "AdaptivePoolingForward":
            inputs.append(add_const(np.array(outs[0].shape[2:], np.int32), device,
                                    f"{opr.name}:shape"))
        name, version, ptype, params = _OPERATORS[t]
        outputs = []
        if t == "BatchNormForward":  # (upstream's four: the statistics, a reserve, then y)
            outputs = [new_var(f"{opr.name}:{part}", shape) for part, shape in
                       (("mean", ins[3].shape), ("variance", ins[4].shape), ("reserve", (0,)))]
        for v in outs:
            ids[id(v)] = k = new_var(v.name, v.shape)
            outputs.append(k)
        extra = [(55, {})] if t == "ConvolutionForward" else []  # (an ExecutionPolicy: defaults)
        ops.append(_operator(name, version, (ptype, params(p, ins, outs)), inputs, outputs,
                             comp_node=device if t in _WITH_COMP_NODE else None, extra=extra))
    model = {0: ("I", _MGE_VERSION), 1: ("I", 2), 2: ("tables", ops), 3: ("tables", middle),
             4: ("tables", [{0: ("I", ids[id(v)]), 1: ("I", ids[id(v)])}
                            for v in net.output_vars]),
             5: ("tables", [])}
    if metadata is not None:
        model[7] = ("table", {
            0: ("?", True), 1: ("?", bool(metadata.get("graph_modified", False))),
            2: ("Q", int(metadata.get("optimize_options", 0))),
            3: ("str", pickle.dumps(metadata.get("user_info"), protocol=4))})
    return _Encoder().finish(model, b"mgv2")


def _operator(name, version, param, inputs, outputs, tensors=(), comp_node=None, extra=()):
    op = {0: ("str", name), 1: ("Q", _type_id(name, version)), 12: ("I", version)}
    if param is not None:
        op[3], op[4] = ("B", param[0]), ("table", param[1])
    if extra:
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


def dump_upstream(graph, w, file):
    """Write the program of ``graph`` and ``w`` (`megengine.jit.dump.program_json`) to
    ``file`` in upstream's format; returns the bytes."""
    from ..utils.network import Network
    from .dump import write_file

    buf = io.BytesIO(write_file(graph, w, None))
    net = Network.load(buf)
    meta = net.metadata
    if meta is not None:
        meta = dict(meta)
        meta.setdefault("optimize_options", 0)
    data = write_upstream(net, meta)
    if file is None:
        return data
    if isinstance(file, (str, bytes)) or hasattr(file, "__fspath__"):
        with open(file, "wb") as f:
            f.write(data)
    else:
        file.write(data)
    return data
