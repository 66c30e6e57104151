"""Writers of this fork's fused normalizations, norms and losses, and of element-wise checks:
Normalize (F.normalize, group_norm / instance_norm, layer_norm with one of weight and bias;
both or neither: `_basic._layer_norm`), F.norm, F.logsumexp, l1 / square / smooth_l1 /
binary cross entropy losses, cross_entropy, isinf and isnan."""
import numpy as np

from ._base import _NO_AXIS, _refuse, _shape, _size, _Steps
from ._basic import _layer_norm


# normalizations, norms, log-sum-exp, losses and element-wise checks: this fork's fused ops
# written as the reductions and element-wise operators upstream's functional code builds them
# from (its own dumps of F.normalize, F.norm, F.logsumexp, F.loss.* hold those, not one
# operator). Each computes in float32 where the fork's op does (integers, float16: cast in
# and back) and gives its last var the fork's output name.
# --------------------------------------------------------------------------------------------
_F32 = np.dtype(np.float32)


def _float_var(s, v):
    """The var of program value ``v`` in float32 (integers and float16 cast)."""
    return s.cast(s.g.ids[id(v)], v.shape, v.dtype, _F32)


def _axes_of(opr, axis, ndim, what):
    from ...core.ops import _norm_axes

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
    from ...jit._program import _DimExpr

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
        back = g.shape_of(g.ids[id(x)], _NO_AXIS, s.name("shape"), (len(shape),))
    k = g.reshape(k, target, s.name("grouped"), grouped, axis=unspec)
    mean, kept = s.reduce("MEAN", k, grouped, [2])
    d = s.ew("SUB", [k, mean], grouped)
    var, _ = s.reduce("MEAN", s.ew("MUL", [d, d], grouped), grouped, [2])
    std = s.ew("SQRT", [s.ew("ADD", [var, s.const(float(p["eps"]))], kept)], kept)
    k = s.ew("TRUE_DIV", [d, std], grouped)
    k = g.reshape(k, back, s.name("normalized"), shape)
    per_channel = (1, shape[1]) + (1,) * (len(shape) - 2)
    for v, mode in zip(ins[1:], ("MUL", "ADD") if p.get("has_weight") else ("ADD",)):
        w = g.reshape(s.cast(g.ids[id(v)], v.shape, v.dtype, _F32),
                      g.shape_const(per_channel, device, s.name("channels")),
                      s.name("channels"), per_channel)
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
