"""Writers of this fork's basic operators that upstream computes with several operators:
leaky_relu, prelu, log_softmax, stack, split, element-wise modes (comparisons, atan, trunc,
clip), where, broadcasts and fills, topk (kth_only too), argmax / argmin (`_compute`, which
hands other Compute functions to `_COMPUTED`), linspace, roll, layer_norm (upstream's
LayerNorm) and vectors of sizes computed from shapes."""
import numpy as np

from ...core._imperative_rt.ops import _ELEMWISE_MODES
from ._base import _NO_AXIS, _dtype, _refuse, _size, _Steps, _target_shape


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
        slope = g.reshape(slope, g.shape_const(view, device, f"{outs[0].name}:w"),
                          f"{outs[0].name}:w", view)
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
    """Upstream's Split: the input, then the size of each part, as inputs; a part's size
    computed where the file runs where the program computed its bounds from shapes (the last
    part of sections, every part of a count: F.split's bounds follow the input's size), so
    the file follows the batch, as upstream's own split does."""
    from ...jit._program import _DimExpr

    frozen = dict(opr._dyn or ()).get("bounds")
    bounds = list(p["bounds"] if frozen is None else frozen[1])
    sizes = []
    for k, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
        name = f"{opr.name}:size{k}"
        if type(lo) is _DimExpr or type(hi) is _DimExpr:
            sizes.append(_size(g, opr, ("-", getattr(hi, "tree", hi), getattr(lo, "tree", lo)),
                               device, name))
        else:
            sizes.append(g.const(np.array([hi - lo], np.int32), device, name))
    made = g.op("Split", 1, 2, {0: ("i", int(p["axis"]))}, [g.ids[id(ins[0])]] + sizes,
                [(v.name, v.shape) for v in outs])
    for v, k in zip(outs, made):
        g.ids[id(v)] = k


# comparisons upstream's Elemwise has the other way round: ``a > b`` is ``LT(b, a)``
_SWAPPED = {"GT": "LT", "GEQ": "LEQ"}


def _elemwise(g, opr, ins, outs, p, device):
    """An Elemwise of upstream's modes (`_ELEMWISE_MODES`), ``>`` and ``>=`` with their
    operands swapped, as upstream's operators build them."""
    mode, inputs = p["mode"], [g.ids[id(v)] for v in ins]
    if mode in _SWAPPED:
        mode, inputs = _SWAPPED[mode], inputs[::-1]
    if mode == "MOD" and np.dtype(outs[0].dtype).kind == "f":
        return _float_mod(g, inputs, outs[0], device)
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
        g.ids[id(y)] = g.cast(made, np.bool_, y.name, y.shape)
        return
    g.ids[id(y)] = g.elemwise(mode, inputs, y.name, y.shape)


def _float_mod(g, inputs, y, device):
    """Float ``x % d`` with Python's sign rule (this fork's, upstream's documented one): upstream's
    MOD kernel computes C's fmod in its files (the sign of x: measured, 12 of 20 values of a
    dump of ``x % 0.7``), so the file adds ``d`` where the fmod and ``d`` have opposite signs,
    as numpy computes it; a kernel that gave Python's rule already would be left as it is."""
    name, shape = y.name, y.shape
    r = g.elemwise("MOD", inputs, f"{name}:fmod", shape)
    signs = g.elemwise("MUL", [g.elemwise("SIGN", [r], f"{name}:sign", shape),
                               g.elemwise("SIGN", [inputs[1]], f"{name}:divisor_sign", shape)],
                       f"{name}:signs", shape)
    zero = g.const(np.zeros(1, y.dtype), device, f"{name}:zero")
    # (a select, signs < 0 ? d : 0: a product by a 0/1 would make an inf divisor NaN)
    shift = g.elemwise("COND_LT_MOV", [signs, zero, inputs[1]], f"{name}:shift", shape)
    g.ids[id(y)] = g.elemwise("ADD", [r, shift], name, shape)


def _clip(g, opr, ins, outs, p, device):
    """``clip(x, lower, upper)`` of number bounds, as upstream's F.clip builds it: Elemwise
    CLIP of x and both bounds, or MAX with the lower / MIN with the upper one alone; the
    bounds in the output's dtype (float16: rounded to it first, as here)."""
    op, y = opr._op, outs[0]
    x = g.ids[id(ins[0])]
    if _dtype(ins[0].dtype, "") != _dtype(y.dtype, ""):
        x = g.cast(x, y.dtype, f"{y.name}:{y.dtype}", ins[0].shape)
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
    m = g.cast(mask, y.dtype, f"{y.name}:mask", shape)
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
        k = g.cast(k, y.dtype, y.name, y.shape)
    g.ids[id(y)] = k


def _topk(g, opr, ins, outs, p, device):
    """Upstream's TopK (the k smallest; ``descending``: of the negated input, the values
    negated back, as upstream's topk builds it): its k as an input, values and indices out."""
    op = opr._op
    if op.kth_only:
        return _topk_kth(g, opr, ins, outs, p, device)
    x, (values, indices) = g.ids[id(ins[0])], outs
    shape = tuple(int(d) for d in ins[0].shape)
    if not shape:
        _refuse(opr, "a topk of a 0-d value")
    two_d = len(shape) == 2  # (else of its rows, and back: `_Graph.rows`)
    rows = g.rows(x, shape, f"{values.name}:rows", device)
    vshape = ishape = (int(np.prod(shape[:-1], dtype=np.int64)), op.k)
    if two_d:
        vshape, ishape = values.shape, indices.shape
    if op.descending:
        rows = g.elemwise("NEGATE", [rows], f"{values.name}:negated",
                          shape if two_d else (vshape[0], shape[-1]))
    k = g.const(np.array([op.k], np.int32), device, f"{opr.name}:k")
    names = (values.name, indices.name) if two_d else (f"{values.name}:top2d",
                                                        f"{indices.name}:top2d")
    v, i = g.op("TopK", 1, 44, {0: ("I", 1 if op.no_sort else 2)}, [rows, k],
                [(f"{values.name}:top" if op.descending else names[0], vshape),
                 (names[1], ishape)])
    if op.descending:
        v = g.elemwise("NEGATE", [v], names[0], vshape)
    v, i = g.unrows((v, i), x, shape, op.k, (values.name, indices.name), device)
    g.ids[id(values)], g.ids[id(indices)] = v, i


def _compute(g, opr, ins, outs, p, device):
    """This fork's ops computed by a function (``Compute``): argmax and argmin, as upstream's
    Argmax / Argmin per axis (keeping it, highest axis first), each followed by an
    AxisAddRemove dropping it unless ``keepdims``."""
    from . import _COMPUTED

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
    from ...jit._program import _DimExpr

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
        made = g.cast(made, y.dtype, y.name, y.shape)
    g.ids[id(y)] = made


def _roll(g, opr, ins, outs, p, device):
    """``roll`` as upstream builds it: per shifted axis, a Split into the parts before and
    after the cut and a Concat of them swapped, the cut computed where the file runs from the
    axis's size (``n - shift mod n``, int32 ``MOD`` rounding to the floor, as Python's), so
    the file follows the batch; over every axis (``axis=None``), of the flattened value (its
    size inferred), reshaped back to the input's shape."""
    x, y = g.ids[id(ins[0])], outs[0]
    shape = tuple(ins[0].shape)
    shifts, axes = p["shift"], p["axis"]
    flat = axes is None
    if flat:
        size = int(np.prod(shape))
        x = g.flatten(x, size, f"{y.name}:flat", device)
        now, shifts, axes = (size,), (shifts,), (0,)
    else:
        now = shape
        if isinstance(shifts, (int, np.integer)):
            shifts, axes = (shifts,), (axes,)
    for k, (shift, axis) in enumerate(zip(shifts, axes)):
        axis, shift = int(axis) % len(now), int(shift)
        if shift == 0:  # (at every size: nothing moves)
            continue
        size = now[axis]
        if not size:  # (the cut would be a remainder of a division by the traced 0)
            _refuse(opr, f"a roll along an axis of size 0 (shape {shape})")
        n = g.shape_of(x, axis, f"{y.name}:n{k}")
        turn = g.elemwise("MOD", [g.const(np.array([shift], np.int32), device,
                                          f"{y.name}:shift{k}"), n], f"{y.name}:turn{k}", (1,))
        cut = g.elemwise("SUB", [n, turn], f"{y.name}:cut{k}", (1,))
        part = lambda m: now[:axis] + (m,) + now[axis + 1:]  # noqa: E731
        at = size - shift % size  # (the traced sizes, for the vars' shapes)
        a, b = g.op("Split", 1, 2, {0: ("i", axis)}, [x, cut, turn],
                    [(f"{y.name}:head{k}", part(at)), (f"{y.name}:tail{k}", part(size - at))])
        x = g.concat([b, a], axis, f"{y.name}:{k}", now, device)
    if flat:
        x = g.reshape(x, g.shape_of(g.ids[id(ins[0])], _NO_AXIS, f"{y.name}:shape",
                                    (len(shape),)), y.name, shape)
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


def _sizes(g, opr, ins, outs, p, device):
    """A vector of sizes computed from shapes (``Tensor(x.shape)`` arithmetic): int32."""
    from ...jit._program import _DimExpr

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
    from ...jit._program import _DimExpr

    y = outs[0]
    if ins:
        def target():  # (a target computed from shapes is computed in the file: it follows)
            if len(ins) > 1:
                return g.ids[id(ins[1])]
            if _computed_target(opr):
                return _target_shape(g, opr, y, device)
            return g.shape_const(y.shape, device, opr.name)

        g.ids[id(y)] = g.broadcast(g.ids[id(ins[0])], ins[0].shape, y.shape, y.name, target)
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


def _computed_target(opr):
    """Whether a broadcast's target shape, given as sizes, is computed from shapes (written as
    `_target_shape` computes it where the file runs); a target holding -1 is the traced one."""
    frozen = dict(opr._dyn or ()).get("shape")
    return frozen is not None and not any(type(v) is int and v == -1 for v in frozen[1])


def _fill(g, opr, ins, outs, p, device):
    """A tensor of one value in a shape computed from shapes (``zeros_like`` under symbolic
    shapes): the value broadcast to it, as upstream's Fill builds it."""
    y = outs[0]
    value = g.const(np.array([opr._op.value], y.dtype), device, f"{y.name}:value")
    g.ids[id(y)] = g.broadcast(value, (1,), y.shape, y.name,
                               lambda: _target_shape(g, opr, y, device))


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
        k = g.reshape(k, g.shape_const([1], device, s.name("flat")), s.name("flat"), (size,),
                      axis=0)
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
        flat = g.rows(flat, shape, s.name("rows"), device)
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
    made = (col, where)
    if len(shape) != 2:
        made = g.unrows(made, g.ids[id(x)], shape, 1, [s.name("shape"), s.name("shape")],
                        device)
    for v, var in zip((values, indices), made):
        g.middle[var][0] = ("str", v.name)
        g.ids[id(v)] = var
