"""The constant-arithmetic passes of ``optimize``: ``"FuseAddMul"`` merges adjacent additions
or multiplications by constants, ``"BackwardFoldScale"`` moves multiplications by constants
backwards into the weights of the convolutions that feed them.

Both passes see ``x + c``, ``x - c``, ``x * c``, ``c * x``, ``x / c`` and ``-x`` (methods or
``F.add``/``F.sub``/``F.mul``/``F.div``/``F.neg``) where ``c`` is a scalar constant: a Python
number, or a one-element tensor the graph computes from attributes and constants alone (such
a value is read once, here: the optimized graph no longer follows later edits of it, as
upstream, whose passes turn attributes into constants).

BackwardFoldScale gives every float tensor of a graph a factor ``g``: the optimized graph
computes ``g * (old value)`` there. Graph inputs, outputs, attributes and whatever an
unsupported step reads or makes keep ``g = 1``. Steps that commute with a scale tie their
input's and output's factors together (``relu``, pooling, reshape, ``x + y``, ...; the
max-like ones only for a positive factor); ``x + c`` becomes ``x + g * c``; a convolution
absorbs any ratio into its weight and bias. A multiplication ``y = x * c`` is removed when
``g(x) = c * g(y)`` can hold with everything else; the passes try the multiplications from
the last to the first and keep each one that stays consistent, so a graph whose scales
cannot all move (two branches of one input scaled differently) keeps the ones that cannot.
``x * 0`` stays as it is and ties nothing (zeros at any factor); a constant that is not finite
(``x * inf``, ``x + nan``) keeps its step's factors at 1.
"""
import math
from collections import defaultdict

import numpy as np

from .. import functional as F
from ..core.tensor import Tensor
from ..functional.pooling import _avg_mode
from ..module.activation import LeakyReLU, ReLU
from ..module.conv import Conv2d
from ..module.identity import Identity
from ..module.adaptive_pooling import AdaptiveAvgPool2d, AdaptiveMaxPool2d
from ..module.pooling import AvgPool2d, MaxPool2d
from .expr import CallFunction, CallMethod, Constant, GetAttr, Input, ShapeOf, is_call_module
from .node import TensorNode
from .tracer import _in_place, _write_outlives_call, _written_root

# ----- recognising steps -----

_ADD, _SUB, _MUL, _DIV = "add", "sub", "mul", "div"
_METHOD_KIND = {"__add__": _ADD, "__iadd__": _ADD, "__radd__": _ADD,
                "__sub__": _SUB, "__isub__": _SUB, "__rsub__": _SUB,
                "__mul__": _MUL, "__imul__": _MUL, "__rmul__": _MUL,
                "__truediv__": _DIV, "__itruediv__": _DIV, "__rtruediv__": _DIV}
_FUNC_KIND = {F.add: _ADD, F.sub: _SUB, F.mul: _MUL, F.div: _DIV}

# steps with f(a * x) = a * f(x) for every a (linear) or for a > 0 (max-like; an average
# pooling in mode "max" too)
_LINEAR_FUNCS = (F.reshape, F.transpose, F.flatten, F.expand_dims, F.squeeze, F.avg_pool2d,
                 F.adaptive_avg_pool2d, F.concat)
_POSITIVE_FUNCS = (F.relu, F.leaky_relu, F.max_pool2d, F.adaptive_max_pool2d, F.max, F.min)
_LINEAR_METHODS = ("reshape", "transpose", "flatten", "__getitem__")
_POSITIVE_METHODS = ("max", "min")
_SHAPE_METHODS = ("shape", "ndim", "__len__")
_LINEAR_MODULES = (AvgPool2d, AdaptiveAvgPool2d, Identity)
_POSITIVE_MODULES = (ReLU, LeakyReLU, MaxPool2d, AdaptiveMaxPool2d)


def _binary(expr):
    """(kind, a, b) of ``a <op> b`` for the four arithmetic steps, else None."""
    if isinstance(expr, CallMethod) and expr.method in _METHOD_KIND and len(expr.args) == 2 \
            and not expr.kwargs:
        a, b = expr.args
        if expr.method.startswith("__r"):
            a, b = b, a
        return _METHOD_KIND[expr.method], a, b
    if isinstance(expr, CallFunction) and expr.func in _FUNC_KIND:
        named = expr.named_args
        if set(named) == {"x", "y"}:
            return _FUNC_KIND[expr.func], named["x"], named["y"]
    return None


class _Consts:
    """Which nodes of a graph hold values known without its tensor inputs, and those values
    (evaluated once, on demand). ``written`` (`written_values`): the tensors that steps write
    in place, which are no constants: the graph changes them on every call."""

    def __init__(self, graph, written=None):
        self.graph = graph
        self.const = set()
        self._values = {}
        for expr in graph._exprs:
            if isinstance(expr, Input) or isinstance(expr, CallMethod) and _in_place(expr.method):
                continue
            if isinstance(expr, (GetAttr, Constant)):
                if written and id(self.value(expr.outputs[0])) in written:
                    continue
            elif not all(n in self.const or not isinstance(n, TensorNode) for n in expr.inputs):
                continue
            self.const.update(n for n in expr.outputs if isinstance(n, TensorNode))

    def scalar(self, operand):
        """The float a scalar operand is (a number or a one-element constant node), else
        None."""
        if isinstance(operand, bool):
            return None
        if isinstance(operand, (int, float, np.floating, np.integer)):
            return float(operand)
        if isinstance(operand, TensorNode) and operand in self.const:
            value = self.value(operand)
            if isinstance(value, Tensor) and value.size == 1:
                return float(value.numpy().reshape(-1)[0])
        return None

    def value(self, node):
        if node not in self._values:
            env = {self.graph.inputs[0]: self.graph.inputs[0].owner}
            deps = set(map(id, self.graph.get_dep_exprs([node])))
            for expr in self.graph._exprs:  # in graph order
                if id(expr) not in deps or isinstance(expr, Input):
                    continue
                for n, v in zip(expr.outputs, expr.interpret(*[env[i] for i in expr.inputs])):
                    env[n] = v
            self._values[node] = env[node]
        return self._values[node]


def written_values(graphs):
    """{id: tensor} of the attributes and captured tensors that steps of ``graphs`` write in
    place (``self.w += 1``, ``self.w[...] = v``, ``self.w.set_value(v)``), in any of them: a
    value read from one changes from call to call (a caller's graph may read what a callee's
    writes), so the passes must not read it once as a constant."""
    found = {}
    for graph in graphs:
        consts = None
        for expr in graph._exprs:
            if not (isinstance(expr, CallMethod) and _in_place(expr.method) and expr.inputs):
                continue
            root = _written_root(expr.inputs[0])  # (what was read, before earlier writes)
            if isinstance(root.expr, (GetAttr, Constant)):
                consts = consts or _Consts(graph)
                value = consts.value(root)
                found[id(value)] = value  # (held: the id stays this tensor's)
    return found


def _is_float_node(node):
    if not isinstance(node, TensorNode) or node.dtype is None:
        return False
    try:
        return np.issubdtype(np.dtype(node.dtype), np.floating)
    except TypeError:  # a quantized dtype: no scale may pass through it
        return False


def _affine(expr, consts):
    """("add" | "mul", x, c) when ``expr`` computes ``x + c`` or ``x * c`` of a float tensor
    ``x`` and a scalar constant ``c`` (``x - c``, ``x / c`` and ``-x`` included), else None."""
    out = expr.outputs[0] if len(expr.outputs) == 1 else None
    if not _is_float_node(out):
        return None
    if isinstance(expr, CallMethod) and expr.method == "__neg__" or \
            isinstance(expr, CallFunction) and expr.func is F.neg:
        x = expr.inputs[-1]
        return ("mul", x, -1.0) if _same_tensor(x, out) else None
    found = _binary(expr)
    if found is None or isinstance(expr, CallMethod) and _in_place(expr.method) \
            and not _rewritable_write(expr, consts.graph):
        return None
    kind, a, b = found
    ca, cb = consts.scalar(a), consts.scalar(b)
    if cb is not None and ca is None:
        x, c = a, cb
    elif ca is not None and cb is None and kind in (_ADD, _MUL):
        x, c = b, ca
    else:
        return None  # c - x, c / x, two constants or two tensors
    if not _same_tensor(x, out) or x in consts.const:
        return None
    if kind == _SUB:
        return "add", x, -c
    if kind == _DIV:
        return ("mul", x, 1.0 / c) if c != 0 else None
    return ("add" if kind == _ADD else "mul"), x, c


def _rewritable_write(expr, graph):
    """Whether the in-place step ``expr`` (``h += c``) may become ``h + c``, which leaves ``h``
    as it was: ``h`` is a value this graph computed (after any earlier writes) that no other
    step reads and the graph does not return. A graph input, an attribute or a captured tensor
    written so is seen by the caller or the next call."""
    target = expr.inputs[0]
    return (not _write_outlives_call(target) and len(target.users) == 1
            and target not in graph.outputs)


def _same_tensor(x, out):
    """``x`` is a float tensor node of ``out``'s shape and dtype (so ``out`` may be
    replaced by an expression of ``x``)."""
    return _is_float_node(x) and tuple(x.shape or ()) == tuple(out.shape or ()) \
        and np.dtype(x.dtype) == np.dtype(out.dtype)


def _written(node):
    """Whether a step writes into ``node``'s tensor in place (``y[0] = v``, ``y += 1``) or hands
    it to a traced module, whose graph may. Such a node must keep a tensor of its own: were
    ``y = x * 1.0`` replaced by ``x``, the write into ``y`` would change ``x`` (the caller's
    input, when ``x`` is the graph's)."""
    for e in node.users:
        if isinstance(e, CallMethod) and (_in_place(e.method) and e.inputs[0] is node
                                          or e.graph is not None):
            return True
    return False


def _may_alias(x, out):
    """Whether ``out`` may be replaced by ``x`` itself (one tensor for both from then on)."""
    return not (_written(x) or _written(out))


def _rewrite_affine(graph, expr, x, kind, c):
    """Replace ``expr`` by ``x + c`` / ``x * c`` (by ``x`` itself when that is the identity and
    neither is written in place, `_may_alias`), keeping its output's name."""
    out = expr.outputs[0]
    name = out.name
    if ((kind == "add" and c == 0) or (kind == "mul" and c == 1)) and _may_alias(x, out):
        graph.replace_node({out: x})
        return
    with graph.insert_exprs(expr):
        new = x + c if kind == "add" else x * c
    graph.replace_node({out: new})
    graph.compile()
    new.name = name


# ----- FuseAddMul -----


def fuse_add_mul(graph, written=None):
    """Merge ``(x + a) + b`` into ``x + (a + b)`` and ``(x * a) * b`` into ``x * (a * b)``
    (an identity result disappears) wherever the middle value has no other reader.
    ``written``: `written_values` of the module's graphs."""
    changed = True
    while changed:
        changed = False
        consts = _Consts(graph, written)
        for expr in graph._exprs:
            second = _affine(expr, consts)
            if second is None:
                continue
            kind, mid, c2 = second
            if len(mid.users) != 1 or mid in graph.outputs or mid.expr not in graph._exprs:
                continue
            first = _affine(mid.expr, consts)
            if first is None or first[0] != kind:
                continue
            c = first[2] + c2 if kind == "add" else first[2] * c2
            _rewrite_affine(graph, expr, first[1], kind, c)
            graph.compile()
            changed = True
            break


# ----- BackwardFoldScale -----


def _conv_parts(expr, consts):
    """(input node, weight, bias, kind) of a convolution whose weight and bias are known
    (a Conv2d module call or F.conv2d on constants), else None."""
    if is_call_module(expr) and type(expr.inputs[0].owner) is Conv2d \
            and len(expr.args) == 2 and not expr.kwargs:
        conv = expr.inputs[0].owner
        return expr.args[1], conv.weight, conv.bias, "module"
    if isinstance(expr, CallFunction) and expr.func is F.conv2d:
        named = expr.named_args
        w, b = named.get("weight"), named.get("bias")
        if isinstance(w, TensorNode) and w in consts.const and \
                (b is None or isinstance(b, TensorNode) and b in consts.const):
            return named.get("inp"), consts.value(w), \
                (consts.value(b) if b is not None else None), "function"
    return None


def _data_inputs(expr):
    """(tensor inputs a scale passes through, True when only a positive one may) of a step
    that commutes with scaling, else None."""
    if isinstance(expr, CallFunction):
        if expr.func in _LINEAR_FUNCS or expr.func in _POSITIVE_FUNCS:
            first = next(iter(expr.named_args.values()), None)
            nodes = list(first) if isinstance(first, (list, tuple)) else [first]
            pools_max = expr.func is F.avg_pool2d and \
                _avg_mode(expr.named_args.get("mode", "average"), "avg_pool2d") == "max"
            return nodes, expr.func in _POSITIVE_FUNCS or pools_max
    elif is_call_module(expr):
        owner = expr.inputs[0].owner
        if type(owner) in _LINEAR_MODULES + _POSITIVE_MODULES and len(expr.args) == 2:
            pools_max = type(owner) is AvgPool2d and _avg_mode(owner.mode, "AvgPool2d") == "max"
            return [expr.args[1]], type(owner) in _POSITIVE_MODULES or pools_max
    elif isinstance(expr, CallMethod):
        if expr.method in _LINEAR_METHODS or expr.method in _POSITIVE_METHODS:
            return [expr.args[0]], expr.method in _POSITIVE_METHODS
    found = _binary(expr)
    if found is not None and found[0] in (_ADD, _SUB):
        return [found[1], found[2]], False
    return None


class _Plan:
    """The factors' constraints of one graph: ``edges`` tie two nodes' factors by a ratio,
    ``fixed`` nodes keep factor 1, ``positive`` nodes need a positive one."""

    def __init__(self):
        self.edges = defaultdict(list)  # node -> [(other, r)]: g(other) = r * g(node)
        self.fixed, self.positive = set(), set()

    def tie(self, a, b, ratio=1.0):
        self.edges[a].append((b, ratio))
        self.edges[b].append((a, 1.0 / ratio))

    def solve(self, extra=()):
        """{node: factor} satisfying every constraint (plus ``extra`` ties), or None."""
        edges = self.edges
        if extra:
            edges = defaultdict(list, {k: list(v) for k, v in edges.items()})
            for a, b, r in extra:
                edges[a].append((b, r))
                edges[b].append((a, 1.0 / r))
        factor = {}
        # components with a fixed node first, so their factors start from 1
        starts = list(self.fixed) + [n for n in edges if n not in self.fixed]
        for start in starts:
            if start in factor:
                continue
            comp, factor[start], stack = [start], 1.0, [start]
            while stack:
                n = stack.pop()
                for m, r in edges.get(n, ()):
                    want = factor[n] * r
                    if m in factor:
                        if not math.isclose(factor[m], want, rel_tol=1e-12):
                            return None
                        continue
                    factor[m] = want
                    comp.append(m)
                    stack.append(m)
            if any(n in self.fixed for n in comp):
                if any(not math.isclose(factor[n], 1.0, rel_tol=1e-12)
                       for n in comp if n in self.fixed):
                    return None
            else:
                # a free component may take either sign: pick the one its max-like steps need
                signs = {factor[n] > 0 for n in comp if n in self.positive}
                if signs == {False}:
                    for n in comp:
                        factor[n] = -factor[n]
            if any(factor[n] <= 0 for n in comp if n in self.positive):
                return None
        return factor


def backward_fold_scale(graph, written=None):
    """Move multiplications by scalar constants into the convolutions before them (see the
    module docstring); returns how many multiplications went. ``written``: `written_values`
    of the module's graphs."""
    consts = _Consts(graph, written)
    plan = _Plan()
    muls, adds, convs = [], [], []
    for expr in graph._exprs:
        if isinstance(expr, (Input, GetAttr, Constant)):
            continue
        outs = [n for n in expr.outputs if isinstance(n, TensorNode)]
        if outs and all(n in consts.const for n in outs):
            continue
        affine = _affine(expr, consts)
        if affine is not None and affine[0] == "mul" and affine[2] == 0:
            continue  # x * 0 is zeros whatever x's factor: no tie, and the step stays
        if affine is not None and math.isfinite(affine[2]):
            # (x * inf, x + nan: no factor passes them, an inf's sign would turn with a
            # negative one; they fall to the steps below, which keep theirs at 1)
            kind, x, c = affine
            (muls if kind == "mul" else adds).append((expr, x, c))
            if kind == "add":
                plan.tie(x, expr.outputs[0])
            continue
        if isinstance(expr, ShapeOf) or isinstance(expr, CallMethod) \
                and expr.method in _SHAPE_METHODS:
            continue  # reads only the shape, which a scale leaves alone
        conv = _conv_parts(expr, consts)
        if conv is not None and _is_float_node(conv[0]) and len(expr.outputs) == 1:
            convs.append((expr,) + conv)
            continue
        passing = _data_inputs(expr) if len(expr.outputs) == 1 else None
        out = expr.outputs[0] if expr.outputs else None
        if passing is not None and _is_float_node(out) and all(
                _is_float_node(n) and n not in consts.const for n in passing[0]):
            for n in passing[0]:
                plan.tie(out, n)
            if passing[1]:
                plan.positive.add(out)
            plan.fixed.update(n for n in expr.inputs
                              if isinstance(n, TensorNode) and n not in passing[0])
            continue
        plan.fixed.update(n for n in list(expr.inputs) + list(expr.outputs)
                          if isinstance(n, TensorNode))
    plan.fixed.update(n for n in graph.outputs if isinstance(n, TensorNode))
    plan.fixed.update(n for n in graph.inputs if isinstance(n, TensorNode))

    factor = plan.solve()
    if factor is None:  # cannot happen without multiplications: ties alone are all ratio 1
        return 0
    removed = []
    for expr, x, c in reversed(muls):  # backwards: the last scale travels farthest
        if not _may_alias(x, expr.outputs[0]):
            continue  # (a removed step's output becomes x)
        trial = plan.solve([(m_out, m_x, m_c) for m_out, m_x, m_c in removed]
                           + [(expr.outputs[0], x, c)])
        if trial is not None:
            removed.append((expr.outputs[0], x, c))
            factor = trial
    if not removed:
        return 0
    g = lambda n: factor.get(n, 1.0)  # noqa: E731  (nodes in no constraint keep 1)
    # decide every change before making any: a rewrite replaces nodes other steps read,
    # so the steps are found again through their input's position
    actions = []
    for expr, x, c in muls:
        out = expr.outputs[0]
        if any(r[0] is out for r in removed):
            actions.append((expr, _position(expr, x), "mul", None))
        elif not math.isclose(c * g(out) / g(x), c, rel_tol=1e-9):
            actions.append((expr, _position(expr, x), "mul", c * g(out) / g(x)))
    for expr, x, c in adds:
        if not math.isclose(g(expr.outputs[0]), 1.0, rel_tol=1e-9):
            actions.append((expr, _position(expr, x), "add", c * g(expr.outputs[0])))
    for expr, x, weight, bias, kind in convs:
        s, t = g(expr.outputs[0]), g(x)
        if math.isclose(s, 1.0, rel_tol=1e-9) and math.isclose(t, 1.0, rel_tol=1e-9):
            continue
        _scale_conv(graph, expr, kind, weight * (s / t), None if bias is None else bias * s)
    for expr, pos, kind, c in actions:
        if not any(e is expr for e in graph._exprs):
            continue  # dead: a rewrite's compile() dropped it (`v = relu(v - 0.5)`, v unread)
        x = expr.inputs[pos]
        if c is None:
            graph.replace_node({expr.outputs[0]: x})
        else:
            _rewrite_affine(graph, expr, x, kind, c)
    graph.compile()
    return len(removed)


def _position(expr, node):
    return next(i for i, n in enumerate(expr.inputs) if n is node)


def _scale_conv(graph, expr, kind, weight, bias):
    from ._passes import replace_conv_module, set_tensor_arg

    if kind == "module":
        replace_conv_module(graph, expr, weight, bias)
    else:
        set_tensor_arg(graph, expr, "weight", weight)
        if bias is not None:
            set_tensor_arg(graph, expr, "bias", bias)

