"""Writers of indexing and ordering: ``x[...]`` reads, writes and adds (Subtensor and its Set
/ Incr forms; IndexingMultiAxisVec for integer index arrays and masks; upstream's own index
descriptors), gather (``gather``, ``indexing_one_hot``), scatter, one_hot, embedding,
cond_take (and `_SHAPE_FREE`, what may read its data-shaped values), cumsum, sort /
argsort, diag, matinv and svd."""
import numpy as np

from ._base import _NO_AXIS, _refuse, _shape, _size


def _bound(g, opr, v, device, name):
    """The var of an index value: a constant, or a size computed from shapes."""
    from ...jit._program import _DimExpr

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
    bounds = [_bound(g, opr, v, device, f"{opr.name}:index{k}") for k, v in enumerate(values)]
    inputs = [g.ids[id(ins[0])]]
    if name != "Subtensor":
        region = _region_shape(opr, ins[0].shape, index)
        inputs.append(_part_value(g, opr, ins[1], region, lambda: g.op(
            "Subtensor", 1, 66, {0: ("structs <b????", items)}, inputs[:1] + bounds,
            [(f"{opr.name}:part", region)])[0]))
    inputs += bounds
    y = outs[0]
    g.ids[id(y)] = g.op(name, 1, 66, {0: ("structs <b????", items)}, inputs,
                        [(y.name, y.shape)])[0]


def _part_value(g, opr, value, region, part):
    """The var of the value written into a part of shape ``region``: upstream's writes take
    one of the part's shape exactly, so a number or a row is broadcast first, as upstream's
    ``__setitem__`` does, to the part's shape where the file runs (GetVarShape of ``part()``,
    the part read), so that the file follows the batch."""
    return g.broadcast(g.ids[id(value)], value.shape, region, f"{opr.name}:value",
                       lambda: g.shape_of(part(), _NO_AXIS, f"{opr.name}:value:shape",
                                          (max(len(region), 1),)))


def _is_index_array(e):
    from ...jit._program import _ArrayValue, _Ref

    return type(e) in (_Ref, _ArrayValue) or isinstance(e, np.ndarray)


# the Network's operator of an index write or an index add (its class named by the index's
# kind) -> upstream's operators for an index of ints and slices, and for an index array
_WRITES = {k: v for keys, v in (
    (("SetSubtensor", "IndexingSetMultiAxisVec"), ("SetSubtensor", "IndexingSetMultiAxisVec")),
    (("IncrSubtensor", "IndexingIncrMultiAxisVec"),
     ("IncrSubtensor", "IndexingIncrMultiAxisVec"))) for k in keys}


def _index_shape(opr, e):
    """The shape of index array ``e`` (a constant, or a value of the program)."""
    from ...jit._program import _ArrayValue, _Ref

    if type(e) is _Ref:
        return tuple(opr._dyn_vars[e.slot].shape)
    return np.shape(e.array if type(e) is _ArrayValue else e)


def _index_var(g, opr, e, device, name, size=None):
    """(the int32 var, the shape or None where the data decides it) of index array ``e``: a
    value of the program (cast to int32 when it is of another integer dtype), or a constant
    (its negative entries made positive against ``size``, the indexed axis's, as numpy reads
    them)."""
    from ...jit._program import _ArrayValue, _Ref

    if type(e) is _Ref:  # (a value of the program)
        var = opr._dyn_vars[e.slot]
        dtype = np.dtype(var.dtype)
        if dtype.kind not in "iu" or dtype.metadata is not None:
            _refuse(opr, f"it indexes by a {dtype} value (a mask); integer index arrays are "
                         "written")
        k = g.ids[id(var)]
        if dtype != np.int32:
            k = g.cast(k, np.int32, f"{name}:int32", var.shape)
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
    from ...jit._program import _ArrayValue, _Ref

    if type(e) is _Ref:
        return opr._dyn_vars[e.slot]
    return np.asarray(e.array if type(e) is _ArrayValue else e)


def _unmask(g, opr, ins, outs, index, device):
    """``index`` with each bool mask as the int index arrays of its True places (numpy's
    reading of a mask): a constant's computed here, a 1-d value's by upstream's CondTake of the
    mask (its places), as upstream's indexing writes them. A mask of every axis alone
    (``x[x > 0]``) is written as upstream's CondTake of ``x``, as upstream writes it; None is
    returned then."""
    from ...jit._program import _Ref

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
        elif (len(v.shape) == len(x.shape) and type(opr).__name__ in _WRITES
              and all(type(f) is slice and f == slice(None) for f in index if f is not e)):
            _masked_write(g, opr, ins, outs, v, device)
            return None
        else:
            _refuse(opr, f"it indexes a value of {len(x.shape)} axes by a mask of "
                         f"{len(v.shape)} axes computed by the program; such a mask of one axis, "
                         "or of every axis alone read from, is written (a constant mask of any "
                         "axes too)")
    if len(out) > len(x.shape):  # (an Ellipsis was widened for the mask as one axis)
        _refuse(opr, "it indexes by a mask of several axes beside an Ellipsis")
    return tuple(out)


def _to_unshaped_part(g, k, params, inputs, name):
    """Var ``k`` broadcast to the shape that the part ``inputs`` index (IndexingMultiAxisVec
    of ``params``) has where the file runs, which the data decides: vars without a shape."""
    part = _unshaped(g, g.op("IndexingMultiAxisVec", 1, 66, params, inputs,
                             [(f"{name}:part", ())]))[0]
    size = _unshaped(g, [g.shape_of(part, None, f"{name}:part:shape", ())])[0]
    return _unshaped(g, g.op("Broadcast", 1, 1, {}, [k, size], [(f"{name}:value", ())]))[0]


def _masked_write(g, opr, ins, outs, mask, device):
    """``y[mask] = value`` (or ``+=``) of a mask of every axis the program computes, as upstream
    writes it: the value and the mask flattened (their size inferred), the places of the
    mask's True items (CondTake), the write into them (a number broadcast to the part's shape
    where the file runs, or one value per place), reshaped back to the input's shape."""
    x, value, y = ins[0], ins[1], outs[0]
    size = int(np.prod(x.shape, dtype=np.int64))
    data = g.flatten(g.ids[id(x)], size, f"{y.name}:flat", device)
    where = g.flatten(g.ids[id(mask)], size, f"{y.name}:mask", device)
    places = _unshaped(g, g.op("CondTake", 1, 25, {1: ("f", 1.0)}, [where, where],
                               [(f"{y.name}:true", ()), (f"{y.name}:places", ())]))[1]
    params = {0: ("structs <b????", [(0, False, False, False, True)])}
    k = g.ids[id(value)]
    if int(np.prod(value.shape, dtype=np.int64)) == 1:  # (a number: to the part's shape)
        k = _to_unshaped_part(g, k, params, [data, places], y.name)
    elif len(value.shape) != 1:
        _refuse(opr, f"it writes a value of shape {tuple(value.shape)} through a mask of every "
                     "axis; a number or one value per True place is written")
    made = g.op(_WRITES[type(opr).__name__][1], 1, 66, params, [data, k, places],
                [(f"{y.name}:written", (size,))])[0]
    g.ids[id(y)] = g.reshape(made, g.shape_of(g.ids[id(x)], _NO_AXIS, f"{y.name}:shape",
                                              (max(len(x.shape), 1),)), y.name, y.shape)


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
        data.append(_to_unshaped_part(g, g.ids[id(ins[1])], params, data + inputs, y.name))
    elif name != "IndexingMultiAxisVec":
        region = _region_shape(opr, shape, index)
        data.append(_part_value(g, opr, ins[1], region, lambda: g.op(
            "IndexingMultiAxisVec", 1, 66, params, data + inputs,
            [(f"{y.name}:part", region)])[0]))
    made = g.op(name, 1, 66, params, data + inputs, [(y.name, y.shape)])
    if dynamic and name == "IndexingMultiAxisVec":
        g.dynamic.add(id(y))
        arrays = [axis for axis, e in enumerate(index) if type(e) is not slice]
        if id(ins[0]) not in g.dynamic and len(arrays) == 1 and len(y.shape) == len(shape):
            g.data_axes[id(y)] = frozenset(arrays)  # (x[:, mask]: the mask's axis alone)
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
    from ...core._trace_option import evaluate
    from ...jit._program import _DimExpr

    def value(v):
        if _is_index_array(v):  # (its values do not decide the shape: zeros of its shape)
            return np.zeros(_index_shape(opr, v), np.intp)
        return evaluate(v.tree, lambda k, axis: opr._dyn_vars[k].shape[axis]) \
            if type(v) is _DimExpr else v

    index = tuple(slice(*(value(v) for v in (e.start, e.stop, e.step))) if type(e) is slice
                  else value(e) for e in index)
    return tuple(_shape(np.broadcast_to(np.empty((), np.int8), tuple(shape))[index].shape))


# --------------------------------------------------------------------------------------------
# gather, scatter, one_hot, embedding, cond_take, cumsum, sort, diag, matinv
# --------------------------------------------------------------------------------------------
def _as_int32(g, v, name):
    """The var of the program's integer value ``v`` in int32 (upstream's index dtype)."""
    k = g.ids[id(v)]
    if np.dtype(v.dtype) != np.int32:
        k = g.cast(k, np.int32, f"{name}:int32", v.shape)
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
    n = g.shape_of(g.ids[id(v)], d, f"shape_of({v.name})[{d}]")
    last = g.elemwise("SUB", [g.cast(n, f32, f"{name}:n", (1,)),
                              g.const(np.ones(1, f32), device, f"{name}:1")],
                      f"{name}:last", (1,))
    k = g.op("Linspace", 1, 29, {}, [g.const(np.zeros(1, f32), device, f"{name}:0"), last, n],
             [(f"{name}:float32", (shape[d],))], comp_node=device)[0]
    k = g.cast(k, np.int32, f"{name}:int32", (shape[d],))
    if len(shape) == 1:
        return k
    target = [shape[d] if j == d else 1 for j in range(len(shape))]
    return g.reshape(k, g.shape_const([1] * len(shape), device, name), name, tuple(target),
                     axis=d)


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
    it; a number of classes computed from shapes (``h.shape[-1]``) is computed where the file
    runs."""
    from ...jit._program import _DimExpr

    x, y = ins[0], outs[0]
    frozen = dict(opr._dyn or ()).get("args")  # (type, items) where a size is an expression
    (classes,) = frozen[1] if frozen is not None else opr._op.args
    sized = type(classes) is _DimExpr
    if not (sized or isinstance(classes, (int, np.integer))) or np.dtype(y.dtype) != np.int32 \
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
            sizes = g.shape_of(g.ids[id(x)], _NO_AXIS, f"shape_of({x.name})", (len(x.shape),))
            tail = (_size(g, opr, last.tree, device, f"{y.name}:{name}s")
                    if type(last) is _DimExpr else g.shape_const([last], device,
                                                                  f"{y.name}:{name}s"))
            return g.concat([sizes, tail], 0, f"{y.name}:{name}s:shape", (len(shape),), device)

        return g.broadcast(k, (1,), shape, f"{y.name}:{name}s", target)

    ones_shape = tuple(x.shape) + (1,)
    zeros = filled(0, tuple(y.shape), "zero", classes if sized else int(classes))
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


def _non_zero(g, opr, ins, outs, p, device):
    """``non_zero(x)`` (and one-argument ``where``: this fork's, upstream 1.13 has neither):
    the (n, ndim) int32 coordinates of x's non-zero items, as upstream's operators give them:
    the flat places of x's non-zero items (CondTake of x != 0, flattened, its size inferred),
    each axis's coordinate the place divided by the sizes after that axis, modulo that axis's
    size (sizes read where the file runs), side by side; n is decided by the data."""
    x, y = ins[0], outs[0]
    shape, dtype = tuple(x.shape), np.dtype(x.dtype)
    if not shape or dtype.metadata is not None:
        _refuse(opr, f"a non_zero of a {'quantized' if shape else '0-d'} value; non_zero of "
                     "values of one or more axes is written")
    k, name = g.ids[id(x)], y.name
    size = int(np.prod(shape, dtype=np.int64))
    flat = k if len(shape) == 1 else g.flatten(k, size, f"{name}:flat", device)
    true = 1.0  # (what CondTake keeps: a bool mask's True)
    if dtype != np.bool_:  # (x == 0 as 1 / 0 in x's dtype, whose 0s CondTake keeps exactly:
        # upstream's Elemwise has no NEQ kernel)
        flat = g.elemwise("EQ", [flat, g.const(np.zeros(1, dtype), device, f"{name}:zero")],
                          f"{name}:zeros", (size,))
        true = 0.0
    places = _unshaped(g, g.op("CondTake", 1, 25, {1: ("f", true)}, [flat, flat],
                               [(f"{name}:true", ()), (f"{name}:places", ())]))[1]
    columns, after = [], None  # (the product of the sizes after the axis)
    for d in range(len(shape) - 1, -1, -1):
        c = places if after is None else _unshaped(g, [g.elemwise(
            "FLOOR_DIV", [places, after], f"{name}:over{d}", ())])[0]
        if d:  # (the first axis's coordinate is below its size: no modulo, no size read)
            n = g.shape_of(k, d, f"{name}:size{d}")
            c = _unshaped(g, [g.elemwise("MOD", [c, n], f"{name}:at{d}", ())])[0]
            after = n if after is None else g.elemwise("MUL", [after, n], f"{name}:after{d}",
                                                        (1,))
        columns.insert(0, _unshaped(g, g.op("AxisAddRemove", 1, 65, {0: ("structs <Ii",
                                                                           [(0, 1)])},
                                            [c], [(f"{name}:column{d}", ())]))[0])
    made = columns[0] if len(columns) == 1 else _unshaped(g, [g.concat(
        columns, 1, f"{name}:coordinates", (), device)])[0]
    g.middle[made][0] = ("str", name)
    g.ids[id(y)] = made
    g.dynamic.add(id(y))


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
        k = g.cast(k, work, f"{y.name}:{work}", x.shape)
    k = g.op("CumsumV1", 1, 24, {0: ("i", int(p["axis"]) % len(x.shape)), 1: ("?", False)},
             [k], [(y.name if work == y.dtype else f"{y.name}:{work}", y.shape)])[0]
    if work != np.dtype(y.dtype):
        k = g.cast(k, y.dtype, y.name, y.shape)
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
    k = g.rows(g.ids[id(x)], shape, f"{names[0]}:rows", device)
    if descending:
        k = g.elemwise("NEGATE", [k], f"{names[0]}:negated", rows)
    made = list(g.op("Argsort", 1, 26, {}, [k], [(f"{n}:sorted", rows) for n in names]))
    if descending:
        made[0] = g.elemwise("NEGATE", [made[0]], f"{names[0]}:values", rows)
    return g.unrows(made, g.ids[id(x)], shape, None, names, device)


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


def _svd(g, opr, ins, outs, p, device):
    """``svd(x)``: upstream's SVD (U, S and Vh, or S alone without ``compute_uv``), which
    computes float32 only (this fork's casts integers to float32 first: so does the file) and
    the reduced factors only. Singular vectors are upstream's kernel's, whose signs may
    differ from this fork's (docs/compatibility.rst)."""
    _no_quantized(opr, ins, "svd")
    op, x = opr._op, ins[0]
    dtype = np.dtype(x.dtype)
    if dtype.kind not in "iu" and dtype != np.float32:
        _refuse(opr, f"an svd of {dtype} values (upstream's SVD computes float32 only)")
    if op.full_matrices and op.compute_uv:
        _refuse(opr, "an svd with full_matrices=True (upstream's SVD kernel computes the "
                     "reduced factors only: its own F.svd fails so); use full_matrices=False")
    k = g.ids[id(x)]
    if dtype != np.float32:
        k = g.cast(k, np.float32, f"{outs[0].name}:float32", x.shape)
    made = g.op("SVD", 1, 22, {0: ("?", False), 1: ("?", op.compute_uv)}, [k],
                [(v.name, v.shape) for v in outs])  # (full_matrices: S alone is the same)
    for v, m in zip(outs, made):
        g.ids[id(v)] = m


def _matinv(g, opr, ins, outs, p, device):
    """``matinv(x)``: upstream's MatrixInverse."""
    _no_quantized(opr, ins, "matinv")
    y = outs[0]
    g.ids[id(y)] = g.op("MatrixInverse", 1, 1, {}, [g.ids[id(ins[0])]], [(y.name, y.shape)])[0]
