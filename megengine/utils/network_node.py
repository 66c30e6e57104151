"""The nodes of a loaded program that `megengine.utils.network` shows and edits: `VarNode` (a
value; a Tensor, so that functional ops applied to it build new graph nodes) and `OpNode`
subclasses named after upstream MegEngine's operator types (``Elemwise``, ``ConvolutionForward``,
``ImmutableTensor``, ``Host2DeviceCopy``, ...).

How ops on VarNodes become nodes: while VarNodes exist, the dispatcher hands every op applied
to one of them to `_symbolic_apply` (``dispatch._symbolic_hook``). It runs the op's forward on
the inputs' *sample* values (zeros for program inputs, the real values for constants), so that
shapes, dtypes and the number of outputs are known as upstream's static shape inference knows
them, keeps a copy of the op as it was before forward ran (the same by-value op that
`megengine.jit.dump` writes), and returns new VarNodes owned by a new OpNode. Plain Tensors
meeting a VarNode become `ImmutableTensor` nodes, as upstream makes constants.

A sample value computed from a program input is not a value a program would compute, so
reading it (``var.numpy()``) raises; values of constants (and of ops on constants only) read.

The same nodes are the vars and operators of `megengine.core.tensor.megbrain_graph` (upstream's
graph layer): an operator also runs on real values there (`OpNode._execute`). `upstream_steps`
gives a traced program upstream's operator granularity (a fused linear layer as MatrixMul and
ADD) for `trace.dump`.
"""
import copy
import itertools
import json
import weakref
from collections.abc import Sequence

import numpy as np

from ..core import dispatch
from ..core import ops as _engine_ops
from ..core._trace_option import use_symbolic_shape
from ..core.tensor import Tensor
from ..device import canonical_device
from ..jit._program import (_AliasStep, _DimExpr, _freeze, _has_ref, _holds, _host, _is_array,
                            _OpStep, _Ref, _refs_in, _thaw)

__all__ = ["NetworkNode", "VarNode", "OpNode", "ReadOnlyOpNode", "Host2DeviceCopy",
           "ImmutableTensor", "str_to_mge_class", "renumber", "MatMulTransposedB",
           "upstream_steps", "GraphOperator", "graph_operator", "graph_type", "graph_params"]

_next_id = [0]  # var and opr ids (upstream's are graph-wide integers too; see renumber)
_order = itertools.count()  # creation order: all_oprs lists a program in this order
_generation = [0]  # bumped when an input shape or a constant changes: sample values go stale
_live = [0]  # VarNodes alive; the dispatcher hook is installed while there are any
_oprs = weakref.WeakSet()  # OpNodes alive: an in-place write to a var re-points their readers


def _new_id():
    i = _next_id[0]
    _next_id[0] = i + 1
    return i


def at_first_use(oprs):
    """``oprs``, a loaded program's operators in the file's order (its inputs first), with each
    input (`Host2DeviceCopy`) and constant (`ImmutableTensor`) moved to just before the first
    operator that reads it, as upstream's graph makes their operators where the traced code
    first uses them (measured: ``(c * 3) + (a * b)`` lists c, 3, MUL, a, b, MUL, ADD). Each
    gets its place as its priority, so that ``all_oprs`` keeps this order and operators made
    by later edits come after."""
    def lazy(opr):
        return opr is not None and (opr._provides_input or isinstance(opr, ImmutableTensor))

    order, placed = [], set()
    for opr in oprs:
        if lazy(opr):
            continue
        for v in opr.inputs + opr._dyn_vars:
            if lazy(v.owner) and id(v.owner) not in placed:
                placed.add(id(v.owner))
                order.append(v.owner)
        order.append(opr)
    order[:0] = [o for o in oprs if lazy(o) and id(o) not in placed]  # (outputs themselves)
    for opr in order:
        opr._priority = next(_order)
    return order


def renumber(oprs):
    """Give ``oprs`` (a loaded graph's operators in order) and their output vars the ids
    upstream's loader gives: from 0, each operator before its outputs. Nodes made afterwards
    get ids above them."""
    k = 0
    for opr in oprs:
        opr.id = k
        for v in opr.outputs:
            v.id = k + 1
            k += 1
        k += 1
    _next_id[0] = max(_next_id[0], k)


class NetworkNode:
    """Base of `VarNode` and `OpNode` (upstream's ``NodeFilter`` checks for it)."""


class VarNode(Tensor, NetworkNode):
    """One value of a program: ``owner`` is the `OpNode` that computes it, ``name`` its name.

    ``shape``/``dtype`` come from the sample computation (see the module docstring); with
    ``set_symbolic_shape(True)`` (``megengine.utils.network``) ``shape`` is a VarNode of the
    shape, as upstream.
    """

    _graph_var = True  # (`x[...] = v` is a SetItem op over x, see Tensor.__setitem__)

    def __new__(cls, owner_opr=None, *args, **kwargs):
        if isinstance(owner_opr, VarNode):  # megbrain_graph.VarNode(var): upstream wraps its
            return owner_opr  # C++ var in a Python view; here the var is its own view
        return object.__new__(cls)

    def __init__(self, owner_opr=None, name=None, device=None):
        if owner_opr is self:  # (the view of a var, see __new__)
            return
        self.owner = owner_opr
        self._name = name
        self._device = canonical_device(device)
        self.grad = None
        self._sample = None  # (generation, array)
        self.id = _new_id()
        if _live[0] == 0:
            dispatch._symbolic_hook = _symbolic_apply
        _live[0] += 1

    def __del__(self):
        try:
            _live[0] -= 1
            if _live[0] == 0:
                dispatch._symbolic_hook = None
        except (TypeError, AttributeError):  # module globals already cleared at exit
            pass

    @classmethod
    def load(cls, sym_var, owner_opr):  # upstream's constructor from a graph var
        return cls(owner_opr, sym_var.name, sym_var._device)

    @property
    def _data(self):
        s = self._sample
        if s is None or s[0] != _generation[0]:
            if self.owner is None:
                raise ValueError(f"VarNode {self.name!r} has no owner operator, so it has no "
                                 "value or shape; add it to a Network first")
            self.owner._compute_samples()
            s = self._sample
        return s[1]

    @_data.setter
    def _data(self, value):
        raise TypeError(f"VarNode {self.name!r} is a node of a program, not a tensor holding a "
                        "value: a value cannot be stored into it (x += y and x[i] = v make x "
                        "the var of a new operator); to change what readers of a var see, "
                        "use Network.replace_vars")

    @property
    def var(self):
        """Upstream's underlying graph var: the node itself here."""
        return self

    @property
    def _node(self):  # megbrain_graph's name of the underlying var: the node itself
        return self

    @property
    def op(self):
        """The operator that computes this var (megbrain_graph's name of ``owner``)."""
        return self.owner

    @property
    def users(self):
        """The operators that read this var in the `Network` it was last loaded into or edited
        in (upstream's list, read from the network here, so edits keep it current: upstream's
        ``replace_vars`` empties the replaced var's list even where an inserted operator still
        reads it); [] for a var of no network."""
        network = self.__dict__.get("_network")
        network = network() if network is not None else None
        return [] if network is None else network.get_var_receive_oprs(self)

    @property
    def graph(self):
        """The `megengine.core.tensor.megbrain_graph.Graph` this var belongs to (None for a
        var of a loaded `Network`)."""
        return None if self.owner is None else self.owner.graph

    @property
    def value(self):
        """The value when it is known without running the program (constants and what is
        computed from them only), else None, as upstream's static value inference."""
        return None if self.depends_on_input else np.array(_host(self._data))

    @var.setter
    def var(self, value):  # upstream's replace_vars assigns it; nothing to keep here
        pass

    @property
    def shape(self):
        if use_symbolic_shape():
            return dispatch.apply(_ShapeOf(), self)
        return self._data.shape

    @property
    def partial_shape(self):
        return self._data.shape

    def shapeof(self, axis):
        """The size of ``axis`` as a (1,) int32 VarNode of the program (upstream's
        ``GetVarShape(axis)``): an edit that builds on it follows the input's shape."""
        ndim = len(self._data.shape)
        if not isinstance(axis, int) or not -ndim <= axis < ndim:
            raise ValueError(f"VarNode.shapeof: axis {axis!r} is out of range for the "
                             f"{ndim} dims of {self.name!r}")
        axis %= ndim
        return dispatch.apply(_ShapeOf(), self)[axis:axis + 1]

    @property
    def name(self):
        return self._name

    @name.setter
    def name(self, value):
        self._name = value

    @property
    def depends_on_input(self):
        """True when the value is computed from a program input's values (its sample is not
        its value). A shape (`GetVarShape`) reads the input's shape only, which the network
        holds: its value is known, as in upstream's static inference."""
        seen = set()
        stack = [self]
        while stack:
            v = stack.pop()
            opr = v.owner
            if opr is None or id(opr) in seen:
                continue
            seen.add(id(opr))
            if opr._provides_input or (isinstance(opr, ReadOnlyOpNode) and opr._random):
                return True
            if isinstance(opr, GetVarShape):
                continue
            stack.extend(opr.inputs)
            stack.extend(opr._dyn_vars)
        return False

    def numpy(self):
        if self.depends_on_input:
            raise ValueError(f"VarNode {self.name!r} is computed from the program's inputs: its "
                             "value is known only when the program runs (GraphInference); a "
                             "network edit can use its shape and dtype, not its value")
        return super().numpy()

    def set_owner_opr(self, owner_opr):
        self.owner = owner_opr

    def __hash__(self):  # a node is a dict key by identity (repl_dict), as upstream
        return object.__hash__(self)

    def _inplace(self, op_result):
        """``x[idx] = v``, ``x += y`` on a VarNode: as upstream's ``VarNode._reset``, this
        Python object now stands for ``op_result``'s var, while the operators that read the
        old var keep reading it.

        Upstream's Python VarNode wraps a C++ var and operators hold the C++ var, so rebinding
        the wrapper leaves them alone. Here a node is its own var, so the old value moves to a
        fresh VarNode and the operators holding this node (as input, output or attribute
        value, the write's own operator included) are pointed at that one."""
        if type(op_result) is not VarNode or op_result is self:
            raise TypeError(f"VarNode {self.name!r}: an in-place write must produce a VarNode, "
                            f"got {type(op_result).__name__}")
        old = object.__new__(VarNode)
        old.__dict__.update(self.__dict__)
        _live[0] += 1  # `old` is a live VarNode made without __init__
        for opr in list(_oprs):
            for attr in ("inputs", "outputs", "_dyn_vars"):
                vars_ = opr.__dict__.get(attr)
                if vars_ and any(v is self for v in vars_):
                    vars_[:] = [old if v is self else v for v in vars_]
        self.__dict__.update(op_result.__dict__)
        owner = op_result.owner
        owner.outputs = [self if v is op_result else v for v in owner.outputs]
        return self

    def __repr__(self):
        try:
            what = f"shape={tuple(self.partial_shape)}, dtype={self.dtype}"
        except Exception:  # noqa: BLE001 (a half-built node still prints)
            what = "no value"
        owner = type(self.owner).__name__ if self.owner is not None else None
        return f"VarNode(name={self.name!r}, {what}, owner={owner})"


class _ShapeOf(dispatch.Op):
    """The shape of the input as an int32 vector (upstream's GetVarShape)."""

    def forward(self, x):
        # on the input's device: on a GPU the shape meets CuPy operands (a reshape, a product)
        return dispatch.xp_of(x).asarray(x.shape, dtype=np.int32)

    def backward(self, g):
        return None


class MatMulTransposedB(dispatch.Op):
    """``x @ w.T`` (upstream's MatrixMul with ``transposeB``): the matmul of a linear layer as
    `trace.dump` writes it, upstream's MatrixMul + ADD instead of this engine's fused op."""

    def forward(self, x, w):
        if x.dtype != w.dtype:
            dtype = np.promote_types(x.dtype, w.dtype)
            x, w = x.astype(dtype, copy=False), w.astype(dtype, copy=False)
        self.x, self.w = x, w
        return x @ w.T

    def backward(self, g):
        needs = self.needs_input_grad
        gx = g @ self.w if needs[0] else None
        gw = (g.reshape(-1, g.shape[-1]).T @ self.x.reshape(-1, self.x.shape[-1])
              if needs[1] else None)
        return gx, gw


RemoveAxis = _engine_ops.RemoveAxis  # (files written while it lived here name it so)


def _reduce_dtype(mode, dtype):
    """The dtype of `Reduce` ``mode`` of a ``dtype`` input (see its forward)."""
    if mode == "mean" and dtype.kind not in "fc":
        return np.dtype(np.float32)
    if mode in ("sum", "prod") and dtype.kind == "b":
        return np.dtype(np.int32)
    return dtype


def _new_slots(st, n_slots, count, scopes):
    """``count`` new slots, from ``n_slots`` on, for values between the steps that stand for
    step ``st`` in upstream's form, in the module scope of ``st``'s output: (the slots, the
    new number of slots)."""
    new = list(range(n_slots, n_slots + count))
    if st.outs[0] in scopes:
        scopes.update((k, scopes[st.outs[0]]) for k in new)
    return new, n_slots + count


def _upstream_reduce(st, n_slots, scopes):
    """Reduce step ``st`` as upstream's graph writes it (array_method's ``_reduce``): one
    Reduce per axis, highest axis first, each keeping its axis, and after each an AxisAddRemove
    dropping it unless ``keepdims``; (steps, number of slots). Over every axis (``axis=None``)
    it is one Reduce there too, and stays one step."""
    from ..core.ops import Reduce as ReduceOp

    op = st.template
    (shape, dtype), = st.metas
    ndim = len(shape)
    if op.axis is None or not ndim or st.dyn or st.sym:
        return [st], n_slots
    axis = (op.axis,) if isinstance(op.axis, (int, np.integer)) else op.axis
    axes = sorted({int(a) % ndim for a in axis}, reverse=True)
    if not axes or (len(axes) == 1 and op.keepdims):  # (axis=(): no reduction, as it is)
        return [st], n_slots
    steps, src, meta = [], st.ins[0], (tuple(shape), np.dtype(dtype))
    for k, a in enumerate(axes):
        parts = [(ReduceOp(op.mode, a, True), "Reduce")]
        if not op.keepdims:
            parts.append((RemoveAxis((a,)), "RemoveAxis (reduction)"))
        for j, (part, name) in enumerate(parts):
            last = k == len(axes) - 1 and j == len(parts) - 1
            if last:
                out = st.outs[0]
            else:
                (out,), n_slots = _new_slots(st, n_slots, 1, scopes)
            steps.append(_OpStep(st.index, part, None, None, (src,), (meta,), (out,), False,
                                 name))
            shape, dtype = meta
            if j == 0:
                meta = (shape[:a] + (1,) + shape[a + 1:], _reduce_dtype(op.mode, dtype))
            else:
                meta = (shape[:a] + shape[a + 1:], dtype)
            src = out
    return steps, n_slots


def _slot_device(prog, slot, made_by):
    """The device of value ``slot`` of ``prog``: a constant's or argument's own, else that of
    the op computing it (placed ops name theirs; the others compute on their inputs' device)."""
    from ..jit.dump_names import _leaves  # (jit.dump imports this module)

    leaves = dict(zip(prog.arg_slots, _leaves(prog.in_tree)))
    while True:
        info = prog.slots[slot]
        if info.kind == "const":
            return info.device
        if slot in leaves:
            return leaves[slot].device
        st = made_by.get(slot)
        if st is None or not st.ins:  # (a value made from nothing, a random draw: the default)
            from ..device import get_default_device

            return canonical_device(get_default_device())
        device = getattr(st.template, "device", None)
        if device is not None:
            return device
        slot = st.ins[0]


def _upstream_var(st, n_slots, scopes, device):
    """`F.var` / `F.std` step ``st`` as upstream builds them (math.py's ``var``): ``m = mean(x,
    axis, keepdims=True)`` (over every axis: a scalar), ``mean((x - m) ** 2, axis, keepdims)``,
    and for std ``** 0.5``; (steps, number of slots, {slot: (array, device)} of the exponents,
    constants of the file). The means are `upstream_steps`' Reduce chains."""
    from ..core.ops import Pow, Reduce as ReduceOp, Sub

    op, std = st.template, type(st.template).__name__ == "Std"
    (shape, dtype), = st.metas
    shape, fdt = tuple(shape), np.dtype(dtype) if np.dtype(dtype).kind == "f" else np.dtype(
        np.float32)
    axes = tuple(range(len(shape))) if op.axis is None else tuple(
        sorted(int(a) % max(len(shape), 1) for a in ((op.axis,) if isinstance(
            op.axis, (int, np.integer)) else op.axis)))
    kept = tuple(1 if i in axes else n for i, n in enumerate(shape))
    reduced = tuple(n for i, n in enumerate(shape) if i not in axes)
    m_shape = () if op.axis is None else kept
    out_shape = kept if op.keepdims else reduced
    slots, n_slots = _new_slots(st, n_slots, 6 if std else 4, scopes)
    m, d, two, sq = slots[:4]
    x_meta, scalar = (shape, np.dtype(dtype)), ((), fdt)
    consts = {two: (np.array(2, fdt), device)}
    last = st.outs[0] if not std else slots[4]
    keep = op.axis is not None  # (axis=None: the mean over every axis is a scalar)
    parts = [(ReduceOp("mean", op.axis, keep), (st.ins[0],), (x_meta,), m, "Reduce (var)"),
             (Sub(), (st.ins[0], m), (x_meta, (m_shape, fdt)), d, "Sub (var)"),
             (Pow(), (d, two), ((shape, fdt), scalar), sq, "Pow (var)"),
             (ReduceOp("mean", op.axis, op.keepdims), (sq,), ((shape, fdt),), last,
              "Reduce (var)")]
    if std:
        half = slots[5]
        consts[half] = (np.array(0.5, fdt), device)
        parts.append((Pow(), (last, half), ((out_shape, fdt), scalar), st.outs[0], "Pow (std)"))
    steps = []
    for template, ins, metas, out, name in parts:
        step = _OpStep(st.index, template, None, None, ins, metas, (out,), False, name)
        if type(template) is ReduceOp:
            found, n_slots = _upstream_reduce(step, n_slots, scopes)
            steps.extend(found)
        else:
            steps.append(step)
    return steps, n_slots, consts


def _arange_of_sizes(st, n_slots):
    """(steps, bounds, number of slots) of `F.arange` of bounds computed from shapes (`_Arange`
    step ``st``, ``F.arange(x.shape[0])``): each such bound a float32 `Sizes` value (what
    ``Tensor(x.shape[0])`` makes: the expression's value at the shapes the file runs at), for
    `_upstream_arange`; ``bounds`` are start, stop and step, a (slot, meta) pair where a step
    computes it, else the number."""
    from ..jit.shape_tensors import Sizes

    op, sym, f32 = st.template, dict(st.sym or ()), np.dtype(np.float32)
    steps, bounds = [], []
    for k in ("start", "stop", "step"):
        if k not in sym:
            bounds.append(getattr(op, k))
            continue
        size = _OpStep(st.index, Sizes(getattr(op, k), f32, op.device), None, None, (), (),
                       (n_slots,), False, "Sizes (arange)")
        size.sym = (("values", sym[k]),)
        steps.append(size)
        bounds.append((n_slots, ((), f32)))
        n_slots += 1
    return steps, bounds, n_slots


def _upstream_arange(st, bounds, n_slots, scopes):
    """`F.arange` (`_ArangeOf` or `_Arange` step ``st``, its ``bounds`` start, stop and step: a
    (slot, meta) pair of a value of the program, else a number) as upstream's arange builds it
    (functional/tensor.py): ``num = ceil((stop - start) / step)``, then ``linspace(start, start
    + step * (num - 1), num)`` (float32) and a TypeCvt to another dtype; the numbers given are
    float32 constants of the file. One step more than upstream's: the count is ``max(num, 0)``,
    so that bounds the step never reaches give an empty tensor, as upstream documents and
    eager calls give (upstream's Linspace casts a negative count to an unsigned size without a
    check, src/core/impl/graph/helper.cpp copy_tensor_value_to_shape, which C++ leaves
    undefined). (steps, number of slots, {slot: (array, device)})."""
    from ..core.ops import Add, AsType, Maximum, Mul, Sub, TrueDiv
    from ..functional.creation import _LinspaceOf
    from ..functional.elemwise import Ceil

    op, f32 = st.template, np.dtype(np.float32)
    scalar, consts, args = ((), f32), {}, []
    for v in tuple(bounds) + (1, 0):
        if type(v) is tuple:
            args.append(v)
        else:
            consts[n_slots] = (np.array(v, f32), op.device)
            args.append((n_slots, scalar))
            n_slots += 1
    (start, m_start), (stop, m_stop), (step, m_step), (one, _), (zero, _) = args
    cast = np.dtype(op.dtype) != f32
    (span, ratio, up, num, less, width, end, values), n_slots = _new_slots(st, n_slots, 8,
                                                                            scopes)
    parts = [(Sub(), (stop, start), (m_stop, m_start), span),
             (TrueDiv(), (span, step), (scalar, m_step), ratio),
             (Ceil(), (ratio,), (scalar,), up),
             (Maximum(), (up, zero), (scalar, scalar), num),
             (Sub(), (num, one), (scalar, scalar), less),
             (Mul(), (step, less), (m_step, scalar), width),
             (Add(), (start, width), (m_start, scalar), end),
             (_LinspaceOf((None, None, None), f32, op.device), (start, end, num),
              (m_start, scalar, scalar), values if cast else st.outs[0])]
    if cast:
        parts.append((AsType(op.dtype), (values,), (((None,), f32),), st.outs[0]))
    steps = [_OpStep(st.index, template, None, None, ins, metas, (out,), False,
                     f"{type(template).__name__} (arange)")
             for template, ins, metas, out in parts]
    return steps, n_slots, consts


def _reduce_chain(steps, k, read):
    """(fused Reduce op, number of steps) of the chain `_upstream_reduce` writes that starts at
    ``steps[k]``, or None: one Reduce per axis (one mode, axes falling, each keeping its axis),
    each followed by a RemoveAxis of its axis for all of them or for none, every value between
    them read only by the next step (``read``: how many times each slot is read)."""
    from ..core.ops import Reduce as ReduceOp

    def op_at(j, cls, prev):
        st = steps[j] if j < len(steps) else None
        if (type(st) is not _OpStep or type(st.template) is not cls or st.dyn
                or (prev is not None and (st.ins != prev.outs or read.get(prev.outs[0]) != 1))):
            return None
        return st

    first = op_at(k, ReduceOp, None)
    if first is None or not first.template.keepdims:
        return None
    mode = first.template.mode
    remove = op_at(k + 1, RemoveAxis, first) is not None
    unit = 2 if remove else 1
    axes, j, prev = [], k, None
    while True:
        st = op_at(j, ReduceOp, prev)
        op = st.template if st is not None else None
        if (op is None or op.mode != mode or not op.keepdims or type(op.axis) is not int
                or op.axis < 0 or (axes and op.axis >= axes[-1])):
            break
        if remove:
            rm = op_at(j + 1, RemoveAxis, st)
            if rm is None or rm.template.axis not in ((op.axis,), op.axis):  # (int: older files)
                break
            st = rm
        axes.append(op.axis)
        prev, j = st, j + unit
    if j - k < 2:
        return None
    axis = tuple(sorted(axes)) if len(axes) > 1 else axes[0]
    return ReduceOp(mode, axis, not remove), j - k


def engine_steps(steps, outputs):
    """``steps`` (a loaded file's) with `upstream_steps`' per-axis reductions run as this
    engine's one Reduce op each, as the traced program had them: the file keeps upstream's
    operators, a run does not pay a step per axis. ``outputs``: the slots read from outside
    the steps (the program's outputs)."""
    read = {}
    for st in steps:
        for s in ((st.src,) if type(st) is _AliasStep else
                  tuple(st.ins) + tuple(_refs_in(st.dyn or ()))):
            read[s] = read.get(s, 0) + 1
    for s in outputs:
        read[s] = read.get(s, 0) + 1
    out, k = [], 0
    while k < len(steps):
        found = _reduce_chain(steps, k, read)
        if found is None:
            out.append(steps[k])
            k += 1
            continue
        op, n = found
        st, last = steps[k], steps[k + n - 1]
        out.append(_OpStep(len(out), op, None, None, st.ins, None, last.outs, False, "Reduce"))
        k += n
    for i, st in enumerate(out):
        if type(st) is _OpStep:
            st.index = i
    return out


def _conv_out_shape(op, x_shape, w_shape):
    """The output shape of convolution ``op`` (a `_Convolution`, or its transpose) of an input
    of ``x_shape`` with a weight of ``w_shape`` (grouped weights have one more axis)."""
    nd, g = op.nd, op.groups
    grouped = len(w_shape) == nd + 3
    k = w_shape[-nd:]
    if op.transposed:
        c = w_shape[0] * w_shape[2] if grouped else w_shape[1] * g
        size = [(x_shape[2 + i] - 1) * op.stride[i] - 2 * op.padding[i]
                + op.dilation[i] * (k[i] - 1) + op.output_padding[i] + 1 for i in range(nd)]
    else:
        c = w_shape[0] * w_shape[1] if grouped else w_shape[0]
        size = [(x_shape[2 + i] + 2 * op.padding[i] - op.dilation[i] * (k[i] - 1) - 1)
                // op.stride[i] + 1 for i in range(nd)]
    return (x_shape[0], c, *size)


# upstream's graph replaces an operator computing a constant of fewer elements by an
# ImmutableTensor as it is inserted (GraphOptimizer::replace_const_var)
_MAX_CONST_FOLDING_SIZE = 1024


def _folded_cast(prog, st):
    """(value, device) of step ``st`` when it is a quantizing or dequantizing cast of a
    constant small enough for upstream's graph to fold (a quantized layer's bias cast to
    qint32 at each call is an ImmutableTensor there); else None. Other operators on constants
    stay operators here."""
    if not _is_op(st, "QuantizedCast", "megengine.core.dtype") or st.dyn or st.sym:
        return None
    info = prog.slots[st.ins[0]]
    if info.kind != "const" or info.const.size >= _MAX_CONST_FOLDING_SIZE:
        return None
    return copy.copy(st.template).forward(info.const), info.device


def _is_op(st, cls_name, module):
    return (type(st) is _OpStep and type(st.template).__name__ == cls_name
            and type(st.template).__module__ == module and bool(st.metas))


def upstream_steps(prog):
    """(steps, number of slots, {slot: module scope}, {slot: (array, device)} of constants
    the steps add) of ``prog`` as upstream's graph has them:
    this engine's fused linear layer (``x @ W.T + b``, one op) becomes upstream's MatrixMul
    (with W transposed) and bias ADD, and a convolution with a bias (one op here) upstream's
    Convolution and bias ADD: two steps through a new slot, the same computation. A reduction
    over several axes or without ``keepdims`` (one op here) becomes upstream's Reduce per axis
    and AxisAddRemove (see `_upstream_reduce`), `F.var` / `F.std` upstream's means, SUB and POW
    (`_upstream_var`), `F.arange` of Tensors or of sizes from shapes upstream's Linspace of
    computed bounds (`_upstream_arange`). A quantizing cast of a constant (a quantized layer's
    qint32 bias) is its value, as upstream's graph folds it (`_folded_cast`)."""
    from ..core.ops import Add

    scopes = dict(getattr(prog, "op_scopes", {}))
    n_slots = len(prog.slots)
    steps, consts, made_by = [], {}, {}
    for st in prog.steps:
        if type(st) is _OpStep:
            made_by.update((o, st) for o in st.outs)
        folded = _folded_cast(prog, st)
        if folded is not None:
            consts[st.outs[0]] = folded
            continue
        if _is_op(st, "Reduce", "megengine.core.ops"):
            found, n_slots = _upstream_reduce(st, n_slots, scopes)
            steps.extend(found)
            continue
        if ((_is_op(st, "Var", "megengine.functional.math")
             or _is_op(st, "Std", "megengine.functional.math")) and not st.dyn and not st.sym):
            found, n_slots, new = _upstream_var(st, n_slots, scopes,
                                                _slot_device(prog, st.ins[0], made_by))
            steps.extend(found)
            consts.update(new)
            continue
        if _is_op(st, "_ArangeOf", "megengine.functional.tensor"):
            given = iter(zip(st.ins, st.metas))
            bounds = [next(given) if v is None else v for v in st.template.args]
            found, n_slots, new = _upstream_arange(st, bounds, n_slots, scopes)
            steps.extend(found)
            consts.update(new)
            continue
        if (type(st) is _OpStep and type(st.template).__name__ == "_Arange"
                and type(st.template).__module__ == "megengine.functional.tensor"):
            sizes, bounds, n_slots = _arange_of_sizes(st, n_slots)
            found, n_slots, new = _upstream_arange(st, bounds, n_slots, scopes)
            steps.extend(sizes + found)
            consts.update(new)
            continue
        if _is_op(st, "_Convolution", "megengine.functional.conv") and len(st.ins) == 3:
            (mid,), n_slots = _new_slots(st, n_slots, 1, scopes)
            (x_shape, x_dtype), (w_shape, w_dtype) = st.metas[:2]
            y_meta = (_conv_out_shape(st.template, x_shape, w_shape),
                      np.promote_types(x_dtype, w_dtype))
            conv = _OpStep(st.index, st.template, st.key, st.dyn, st.ins[:2], st.metas[:2],
                           (mid,), False, st.name)
            conv.sym = st.sym
            steps.append(conv)
            steps.append(_OpStep(st.index, Add(), None, None, (mid, st.ins[2]),
                                 (y_meta, st.metas[2]), st.outs, False, "Add (convolution bias)"))
            continue
        if (not _is_op(st, "_Linear", "megengine.functional.nn")
                or (len(st.ins) == 3 and len(st.metas[2][0]) != 1)):
            steps.append(st)
            continue
        (x_shape, x_dtype), (w_shape, w_dtype) = st.metas[:2]
        if len(st.ins) == 2:
            steps.append(_OpStep(st.index, MatMulTransposedB(), None, None, st.ins, st.metas,
                                 st.outs, False, "MatMulTransposedB (linear)"))
            continue
        (mid,), n_slots = _new_slots(st, n_slots, 1, scopes)
        y_meta = (tuple(x_shape[:-1]) + (w_shape[0],), np.promote_types(x_dtype, w_dtype))
        steps.append(_OpStep(st.index, MatMulTransposedB(), None, None, st.ins[:2],
                             st.metas[:2], (mid,), False, "MatMulTransposedB (linear)"))
        steps.append(_OpStep(st.index, Add(), None, None, (mid, st.ins[2]),
                             (y_meta, st.metas[2]), st.outs, False, "Add (linear bias)"))
    return steps, n_slots, scopes, consts


class OpNode(NetworkNode):
    """One operator of a program. ``type``: upstream's operator type name; ``params``: its
    parameters as upstream names them where the op has an upstream counterpart (e.g. ``{"mode":
    "ADD"}`` for an Elemwise), else this engine's op parameters; ``inputs``/``outputs``: VarNodes.
    """

    type = None
    opdef = None
    _graph = None  # the megbrain_graph.Graph of a node made through one
    _provides_input = False  # its value comes from outside the program (an input)

    def __init__(self, name=None):
        self.inputs = []
        self.outputs = []
        self.params = {}
        self.name = name
        self.id = _new_id()
        self._priority = next(_order)
        self._op = None  # the engine op, as before forward ran (see megengine.jit.dump)
        self._dyn = None  # attributes of _op that refer to other values: frozen with _Refs
        self._dyn_vars = []  # ... the VarNodes those _Refs (their slot k) stand for
        self._opr = self  # upstream's underlying operator: the node itself here
        _oprs.add(self)

    @property
    def priority(self):
        """Upstream's ``(priority, id)``: the key that orders operators where their dependencies
        leave a choice (``all_oprs``, ``dump``). Here the first item is the order the operator
        has among those of its network (the id after `set_priority_to_id`), where upstream's
        is 0 unless set."""
        return (self._priority, self.id)

    @property
    def _random(self):
        return False

    @property
    def _node(self):  # megbrain_graph's name of the underlying operator: the node itself
        return self

    @property
    def graph(self):
        return self._graph

    def add_inp_var(self, x):
        self.inputs.append(x)

    def add_out_var(self, x):
        self.outputs.append(x)

    def _compute_samples(self):
        """Set the sample value of every output (see the module docstring)."""
        with np.errstate(all="ignore"):  # zeros through log/div: samples, not values
            out = self._execute([v._data for v in self.inputs],
                                [v._data for v in self._dyn_vars])
        for v, o in zip(self.outputs, out):
            v._sample = (_generation[0], o)

    def _execute(self, in_arrays, dyn_arrays):
        """The output arrays of this operator's op on input arrays ``in_arrays`` (and
        ``dyn_arrays``, the values its op's state refers to), run through the dispatcher."""
        op = copy.copy(self._op)
        values = {k: Tensor._wrap(a, v._device)
                  for k, (a, v) in enumerate(zip(dyn_arrays, self._dyn_vars))}
        for attr, frozen in self._dyn or ():
            setattr(op, attr, _thaw(frozen, values))
        ins = [Tensor._wrap(a, v._device) for a, v in zip(in_arrays, self.inputs)]
        hook, dispatch._symbolic_hook = dispatch._symbolic_hook, None
        try:
            out = dispatch.apply(op, *ins)
        finally:
            dispatch._symbolic_hook = hook
        out = out if isinstance(out, tuple) else (out,)
        if len(out) != len(self.outputs):
            raise ValueError(f"{self!r}: its op gives {len(out)} outputs for "
                             f"{len(self.outputs)} output VarNodes")
        return [o._data for o in out]

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r}, type={self.type!r})"


class ReadOnlyOpNode(OpNode):
    """An operator of this engine without an upstream counterpart of the same granularity:
    ``type`` is the engine op's class name; it can be filtered, rewired and dumped, and
    ``params`` shows its parameters."""

    @property
    def _random(self):
        return type(self._op).__name__ in ("_Draw", "_Multinomial", "_Shuffled")


def _input_shape(shape):
    """A program input's shape as a tuple of Python ints (a shape of strings is refused: also
    upstream's RuntimeError, pybind's "Unable to cast")."""
    return tuple(int(d) for d in _engine_ops.int_tuple(shape, "make_input_node"))


class Host2DeviceCopy(OpNode):
    """A program input (upstream's data provider): ``shape``, ``dtype``, ``name``, ``device``.
    Changing ``shape`` (``Network.reset_batch_size``) changes what the program is run with."""

    type = "Host2DeviceCopy"
    _provides_input = True

    def __init__(self, shape=None, dtype=None, name=None, device=None):
        super().__init__(name)
        self._shape = _input_shape(shape) if shape is not None else None
        self._dtype = np.dtype(dtype) if dtype is not None else np.dtype(np.float32)
        self.device = canonical_device(device)
        self.outputs = [VarNode(self, name, self.device)]

    @property
    def shape(self):
        return self._shape

    @shape.setter
    def shape(self, value):
        self._shape = _input_shape(value)
        _generation[0] += 1

    @property
    def dtype(self):
        return self._dtype

    @dtype.setter
    def dtype(self, value):
        self._dtype = np.dtype(value)
        _generation[0] += 1

    def _compute_samples(self):
        if self._shape is None:
            raise ValueError(f"input {self.name!r} has no shape; give make_input_node a shape")
        self.outputs[0]._sample = (_generation[0],
                                   _zeros_on(self.device, self._shape, self._dtype))

    def _execute(self, in_arrays, dyn_arrays):
        raise ValueError(f"input {self.name!r} (a Host2DeviceCopy) has no value in a compiled "
                         "megbrain_graph.Graph: feed inputs through megbrain_graph.InputNode "
                         "(set_value) or input_callback, or run a dumped program with "
                         "GraphInference")


def _zeros_on(device, shape, dtype):
    """Zeros where ``device`` keeps its arrays: an input's sample on a GPU is a CuPy array, since
    ops on it meet the program's constants there (CuPy refuses numpy operands)."""
    a = np.zeros(shape, dtype)
    if device.startswith("gpu"):
        from ..core.ops import move_array

        a = move_array(a, device)
    return a


class ImmutableTensor(OpNode):
    """A constant of the program (a captured parameter, a number): ``numpy()``, ``set_value``,
    ``shape``, ``dtype``, ``device``."""

    type = "ImmutableTensor"

    def __init__(self, data=None, name=None, device=None, graph=None):
        super().__init__(name)
        self._value = None
        self.device = canonical_device(device)
        self.outputs = [VarNode(self, name, self.device)]
        if data is not None:
            self.set_value(data, device)

    @property
    def shape(self):
        return self._value.shape

    @property
    def dtype(self):
        return self._value.dtype

    def numpy(self):
        return np.array(_host(self._value))

    def set_value(self, data, device=None):
        """Replace the value; Python numbers and float64/int64 arrays take upstream's dtypes
        (float32, int32), as ``Tensor()`` does."""
        if isinstance(data, Tensor):
            data = data.numpy()
        # upstream accepts any Sequence (a shape list such as [1, -1, 3]) besides numbers and
        # arrays; a str is a Sequence too but never a value
        if (not isinstance(data, (int, float, bool, np.ndarray, np.generic, Sequence))
                or isinstance(data, (str, bytes))):
            raise TypeError(f"set_value: expected a number, a sequence of numbers or a numpy "
                            f"array, got {type(data).__name__}")
        data = np.array(data)
        if data.dtype == np.float64:
            data = data.astype(np.float32)
        elif data.dtype == np.int64:
            data = data.astype(np.int32)
        if device is not None:
            self.device = canonical_device(device)
            self.outputs[0]._device = self.device
        from ..core.ops import move_array
        self._value = move_array(data, self.device) if self.device.startswith("gpu") else data
        _generation[0] += 1

    def _compute_samples(self):
        self.outputs[0]._sample = (_generation[0], self._value)

    def _execute(self, in_arrays, dyn_arrays):
        return [self._value]


# --------------------------------------------------------------------------------------------
# upstream's operator types
# --------------------------------------------------------------------------------------------
def _opr_type(name, type_name):
    """An OpNode class for upstream's operator type ``type_name``."""
    __all__.append(name)
    return type(name, (OpNode,), {"type": type_name, "__module__": __name__,
                                  "__qualname__": name,
                                  "__doc__": f"Upstream's ``{type_name}`` operator."})


Elemwise = _opr_type("Elemwise", "Elemwise")
ElemwiseMultiType = _opr_type("ElemwiseMultiType", "ElemwiseMultiType")
Reduce = _opr_type("Reduce", "Reduce")
AxisAddRemove = _opr_type("AxisAddRemove", "AxisAddRemove")
TypeCvt = _opr_type("TypeCvt", "TypeCvt")
MatrixInverse = _opr_type("MatrixInverse", "MatrixInverse")
MatrixMul = _opr_type("MatrixMul", "MatrixMul")
BatchedMatrixMul = _opr_type("BatchedMatrixMul", "BatchedMatmul")
Dot = _opr_type("Dot", "Dot")
SVD = _opr_type("SVD", "SVD")
ConvolutionForward = _opr_type("ConvolutionForward", "Convolution")
ConvolutionBackwardData = _opr_type("ConvolutionBackwardData", "ConvTranspose")
Convolution3DForward = _opr_type("Convolution3DForward", "Convolution3D")
DeformableConvForward = _opr_type("DeformableConvForward", "DeformableConv")
GroupLocalForward = _opr_type("GroupLocalForward", "GroupLocal")
PoolingForward = _opr_type("PoolingForward", "Pooling")
AdaptivePoolingForward = _opr_type("AdaptivePoolingForward", "AdaptivePooling")
ROIPoolingForward = _opr_type("ROIPoolingForward", "ROIPooling")
DeformablePSROIPoolingForward = _opr_type("DeformablePSROIPoolingForward", "DeformablePSROIPooling")
ConvBiasForward = _opr_type("ConvBiasForward", "ConvBias")
BatchNormForward = _opr_type("BatchNormForward", "BatchNorm")
ROIAlignForward = _opr_type("ROIAlignForward", "ROIAlign")
ResizeForward = _opr_type("ResizeForward", "Resize")
IndexingOneHot = _opr_type("IndexingOneHot", "IndexingOneHot")
Copy = _opr_type("Copy", "Copy")
ArgsortForward = _opr_type("ArgsortForward", "Argsort")
CondTake = _opr_type("CondTake", "CondTake")
TopK = _opr_type("TopK", "TopK")
Concat = _opr_type("Concat", "Concat")
Broadcast = _opr_type("Broadcast", "Broadcast")
Identity = _opr_type("Identity", "Identity")
Dimshuffle = _opr_type("Dimshuffle", "Dimshuffle")
Reshape = _opr_type("Reshape", "Reshape")
Subtensor = _opr_type("Subtensor", "Subtensor")
SetSubtensor = _opr_type("SetSubtensor", "SetSubtensor")
IncrSubtensor = _opr_type("IncrSubtensor", "IncrSubtensor")
IndexingMultiAxisVec = _opr_type("IndexingMultiAxisVec", "IndexingMultiAxisVec")
IndexingSetMultiAxisVec = _opr_type("IndexingSetMultiAxisVec", "IndexingSetMultiAxisVec")
IndexingIncrMultiAxisVec = _opr_type("IndexingIncrMultiAxisVec", "IndexingIncrMultiAxisVec")
MeshIndexing = _opr_type("MeshIndexing", "MeshIndexing")
SetMeshIndexing = _opr_type("SetMeshIndexing", "SetMeshIndexing")
IncrMeshIndexing = _opr_type("IncrMeshIndexing", "IncrMeshIndexing")
BatchedMeshIndexing = _opr_type("BatchedMeshIndexing", "BatchedMeshIndexing")
BatchedSetMeshIndexing = _opr_type("BatchedSetMeshIndexing", "BatchedSetMeshIndexing")
BatchedIncrMeshIndexing = _opr_type("BatchedIncrMeshIndexing", "BatchedIncrMeshIndexing")
GetVarShape = _opr_type("GetVarShape", "GetVarShape")
Linspace = _opr_type("Linspace", "Linspace")
UniformRNG = _opr_type("UniformRNG", "UniformRNG")
GaussianRNG = _opr_type("GaussianRNG", "GaussianRNG")

# engine op class name -> upstream Elemwise mode
_ELEMWISE = {
    "Add": "ADD", "Sub": "SUB", "Mul": "MUL", "TrueDiv": "TRUE_DIV", "FloorDiv": "FLOOR_DIV",
    "Mod": "MOD", "Pow": "POW", "Maximum": "MAX", "Minimum": "MIN", "And": "AND", "Or": "OR",
    "Xor": "XOR", "LShift": "SHL", "RShift": "SHR", "Equal": "EQ", "NotEqual": "NEQ",
    "Less": "LT", "LessEqual": "LEQ", "Greater": "GT", "GreaterEqual": "GEQ", "Neg": "NEGATE",
    "Abs": "ABS", "Invert": "NOT", "Exp": "EXP", "Expm1": "EXPM1", "Log": "LOG",
    "Log1p": "LOG1P", "Sqrt": "SQRT", "Square": "SQUARE", "Sin": "SIN", "Cos": "COS",
    "Tan": "TAN", "Asin": "ASIN", "Acos": "ACOS", "Atan": "ATAN", "Sinh": "SINH",
    "Cosh": "COSH", "Tanh": "TANH", "Asinh": "ASINH", "Acosh": "ACOSH", "Atanh": "ATANH",
    "Atan2": "ATAN2", "Ceil": "CEIL", "Floor": "FLOOR", "Round": "ROUND", "Trunc": "TRUNC",
    "Erf": "ERF", "Erfc": "ERFC", "Erfinv": "ERFINV", "Erfcinv": "ERFCINV",
    "LogAddExp": "LOG_SUM_EXP", "LogicalAnd": "AND", "LogicalOr": "OR", "LogicalXor": "XOR",
    "LogicalNot": "NOT", "Sign": "SIGN", "Clip": "CLIP", "_Relu": "RELU", "_Relu6": "RELU6",
    "_Sigmoid": "SIGMOID", "_HSigmoid": "HSIGMOID", "_HSwish": "H_SWISH", "_Gelu": "GELU",
    "_Silu": "SILU", "_Softplus": "SOFTPLUS", "_LogSigmoid": "LOGSIGMOID",
    "ClipByTensors": "CLIP"}  # (upstream's three-input CLIP: float16 F.clip, Tensor bounds)
_REDUCE = {"sum": "SUM", "mean": "MEAN", "prod": "PRODUCT", "max": "MAX", "min": "MIN"}


def _has_array(v):
    if _is_array(v) or isinstance(v, Tensor):
        return True
    if isinstance(v, (tuple, list)):
        return any(_has_array(x) for x in v)
    return False


def classify(op, in_shapes, dyn_names=()):
    """(OpNode subclass, params) for engine op ``op`` with inputs of ``in_shapes``;
    ``dyn_names``: its attributes that hold other values of the program (a tensor index)."""
    name = type(op).__name__
    d = op.__dict__
    if name in _ELEMWISE:
        return Elemwise, {"mode": _ELEMWISE[name]}
    if name == "Reduce":
        return Reduce, {"mode": _REDUCE.get(d.get("mode"), str(d.get("mode")).upper()),
                        "axis": d.get("axis")}
    if name in ("AsType", "QuantizedCast"):
        return TypeCvt, {"dtype": d.get("dtype")}
    if name in ("AddAxis", "RemoveAxis"):  # upstream's network_node shows the axes only
        return AxisAddRemove, {"axis": list(RemoveAxis._axes(op) if name == "RemoveAxis"
                                            else d["axis"])}
    if name == "MatMulTransposedB":
        return MatrixMul, {"transposeA": False, "transposeB": True}
    if name == "_QuantizedMatmul":  # (the transposes are its parameters, as upstream's)
        cls = MatrixMul if max(len(s) for s in in_shapes) <= 2 else BatchedMatrixMul
        return cls, {"transposeA": d["transpose_a"], "transposeB": d["transpose_b"]}
    if name == "MatMul":
        nd = [len(s) for s in in_shapes]
        if nd == [1, 1]:
            return Dot, {}
        return (MatrixMul if max(nd) <= 2 else BatchedMatrixMul), {}
    if name == "_Convolution":
        if d.get("transposed"):
            cls = ConvolutionBackwardData
        else:
            cls = Convolution3DForward if d.get("nd") == 3 else ConvolutionForward
        params = {k: d[k] for k in ("stride", "padding", "dilation", "groups") if k in d}
        params["sparse"] = "GROUP" if d.get("groups", 1) != 1 else "DENSE"
        return cls, params
    simple = {"MatInv": MatrixInverse, "SVD": SVD, "_DeformableConv2d": DeformableConvForward,
              "_LocalConv2d": GroupLocalForward, "_ROIPooling": ROIPoolingForward,
              "_DeformablePSROIPooling": DeformablePSROIPoolingForward,
              "_QuantizedConv": ConvBiasForward, "_BatchNorm": BatchNormForward,
              "_ROIAlign": ROIAlignForward, "_Resize": ResizeForward, "Copy": Copy,
              "Identity": Identity,
              "CondTake": CondTake, "TopK": TopK, "Concat": Concat, "BroadcastTo": Broadcast,
              "Transpose": Dimshuffle, "Sort": ArgsortForward,
              "_ShapeOf": GetVarShape,
              "_BroadcastBy": Broadcast}  # (the target shape as a second input, as upstream's)
    if name in simple:
        cls = simple[name]
        params = {k: v for k, v in d.items() if not _is_array(v)}
        if cls is Dimshuffle:  # (axes None: reversed, as x.T; upstream's pattern is explicit)
            axes = d.get("axes")
            if axes is None and in_shapes:
                axes = tuple(range(len(in_shapes[0]) - 1, -1, -1))
            params = {"pattern": axes}
        return cls, params
    if name in ("Reshape", "ReshapeBy"):  # upstream's params: the -1's position (its
        # unspec_axis; megdnn's OptionalAxisV1, 7 for none), taken from the target shape
        axis = d.get("axis") if name == "ReshapeBy" else \
            _engine_ops.unspec_axis(d.get("shape"))
        return Reshape, {"axis": _NO_AXIS if axis is None else axis}
    if name == "Full":  # F.zeros / F.full / F.zeros_like of sizes from shapes: upstream's
        # Fill and FillLike, a constant broadcast to the shape (its inputs: `_fill_inputs`)
        return Broadcast, {}
    if name in ("_Linspace", "_LinspaceOf"):  # (start, stop and num: inputs upstream)
        return Linspace, {"endpoint": True, "comp_node": d.get("device")}
    if name == "_Pool2d":
        params = {"mode": str(d.get("mode")).upper(), "kernel": d.get("kernel"),
                  "stride": d.get("stride"), "padding": d.get("padding")}
        if str(d.get("what")).startswith("adaptive"):
            # upstream's F.adaptive_*_pool2d is its AdaptivePooling operator (params: mode,
            # format); the windows are kept too (tools count FLOPs from them)
            return AdaptivePoolingForward, dict(params, format="NCHW")
        return PoolingForward, params
    if name in ("GetItem", "SetItem", "IndexAdd"):
        adv = "index" in dyn_names or _has_array(d.get("index"))
        cls = {("GetItem", False): Subtensor, ("GetItem", True): IndexingMultiAxisVec,
               ("SetItem", False): SetSubtensor, ("SetItem", True): IndexingSetMultiAxisVec,
               ("IndexAdd", False): IncrSubtensor,
               ("IndexAdd", True): IndexingIncrMultiAxisVec}[name, adv]
        return cls, {"index": d.get("index")}
    if name == "_VarShape":  # builtin.GetVarShape
        return GetVarShape, {"axis": d.get("axis")}
    if name == "_IndexOp":  # upstream's indexing descriptors (megengine.core.ops.builtin)
        from ..core._imperative_rt.indexing_ops import _NAMES

        return globals()[_NAMES[d["kind"], d["mode"]]], {"items": d.get("items")}
    if name == "_Draw":
        cls = GaussianRNG if d.get("method") == "normal" else UniformRNG
        return cls, {"method": d.get("method"), "args": d.get("args")}
    params = {k: v for k, v in d.items() if not _is_array(v) and not k.startswith("_")}
    node_cls = _read_only(name.lstrip("_") or name)
    return node_cls, params


_READ_ONLY = {}


def _read_only(type_name):
    cls = _READ_ONLY.get(type_name)
    if cls is None:
        cls = _READ_ONLY[type_name] = type(type_name, (ReadOnlyOpNode,),
                                           {"type": type_name, "__module__": __name__})
    return cls


def str_to_mge_class(classname):
    """The OpNode class of upstream's operator type ``classname`` (`ReadOnlyOpNode` if none)."""
    for cls in list(globals().values()):
        if isinstance(cls, type) and issubclass(cls, OpNode) and cls.type == classname:
            return cls
    return ReadOnlyOpNode


# --------------------------------------------------------------------------------------------
# upstream's C++ graph level: what `megengine.utils.comp_graph_tools` and tools that read dumped
# models (mgeconvert) see of an operator
# --------------------------------------------------------------------------------------------
_INT_MAX = 2 ** 31 - 1
_NO_AXIS = 7  # megdnn's OptionalAxisV1 "no axis" (MAX_NDIM)
# engine operators that upstream's graph has under another C++ type name than our node's type
_GRAPH_TYPES = {"Softmax": "SoftmaxForward", "BatchedMatmul": "BatchedMatrixMul"}


def graph_type(opr):
    """Upstream's C++ type name of operator ``opr`` (what ``OperatorNode.type`` gives at its
    graph level, e.g. ``"ConvolutionForward"``), where ``opr.type`` is the name at its
    `megengine.utils.network` level (``"Convolution"``). Upstream names its network_node classes
    after the C++ types, so that is the class name here too; an engine operator without an
    upstream class keeps its own type name."""
    cls = type(opr)
    if cls is ConvolutionBackwardData and getattr(getattr(opr, "_op", None), "nd", 2) == 3:
        return "Convolution3DBackwardData"  # (upstream's conv_transpose3d)
    if cls.__module__ == __name__ and not issubclass(cls, ReadOnlyOpNode) and cls is not OpNode:
        return cls.__name__
    return _GRAPH_TYPES.get(opr.type, opr.type)


def _hw(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _subtensor_items(index, ndim):
    """Upstream's Subtensor items ({axis, begin, end, step, idx}: which index values are
    inputs) and the index values, in input order, for an index of ints and slices; None for
    another index (an array, None, ...), which upstream writes as other operators."""
    index = index if isinstance(index, tuple) else (index,)
    if any(i is Ellipsis for i in index):
        k = index.index(Ellipsis)
        index = index[:k] + (slice(None),) * (ndim - len(index) + 1) + index[k + 1:]
    items, values = [], []
    for axis, i in enumerate(index):
        if isinstance(i, (int, np.integer)) and not isinstance(i, bool):
            items.append({"axis": axis, "begin": 0, "end": 0, "step": 0, "idx": 1})
            values.append(int(i))
        elif isinstance(i, slice):
            if i == slice(None):
                continue
            parts = [(i.start, "begin"), (i.stop, "end"), (i.step, "step")]
            if not all(v is None or isinstance(v, (int, np.integer)) for v, _ in parts):
                return None
            items.append(dict({k: int(v is not None) for v, k in parts}, axis=axis, idx=0))
            values.extend(int(v) for v, _ in parts if v is not None)
        else:
            return None
    return items, values


_CONVOLUTIONS = ("ConvolutionForward", "ConvolutionBackwardData", "Convolution3DForward",
                 "Convolution3DBackwardData", "DeformableConvForward", "GroupLocalForward")


def _convolution_params(t, p):
    """`graph_params` of a convolution of any rank: a 1-d one as upstream's graph computes it
    (a 2-d convolution of the input with an axis of 1 added last: stride, padding and dilation
    of 1, 0 and 1 on that axis), a 2-d one in megdnn's ``_h`` / ``_w`` fields, a 3-d one (the
    Convolution3D parameter of upstream's Convolution3D and Convolution3DBackwardData) in
    ``_d`` / ``_h`` / ``_w`` fields."""
    n = 3 if t.startswith("Convolution3D") else 2  # (the rank of a number given for all)
    stride, padding, dilation = (tuple(int(v) for v in (
        p[k] if isinstance(p[k], (tuple, list)) else (p[k],) * n)) for k in (
        "stride", "padding", "dilation"))
    if len(stride) == 1:
        stride, padding, dilation = stride + (1,), padding + (0,), dilation + (1,)
    out = {"mode": "CROSS_CORRELATION"}
    axes = "dhw" if len(stride) == 3 else "hw"
    for name, values in (("pad", padding), ("stride", stride), ("dilate", dilation)):
        out.update({f"{name}_{a}": v for a, v in zip(axes, values)})
    out["sparse"] = p.get("sparse", "GROUP" if p.get("groups", 1) != 1 else "DENSE")
    if len(stride) == 3:
        out.update(format="NCDHW", data_type="FLOAT")
    else:
        out.update(format="NCHW", compute_mode="DEFAULT")
    return out


def graph_params(opr):
    """The parameters of operator ``opr`` as upstream's C++ graph level has them (a dict of
    its JSON: megdnn's parameter names, enum values as upper-case strings): ``{"stride_h": 1,
    "pad_h": 0, ..., "sparse": "DENSE", "format": "NCHW"}`` for a convolution where ``params``
    (`megengine.utils.network`'s level) says ``{"stride": (1, 1), ...}``."""
    t, p = graph_type(opr), opr.params
    if t in _CONVOLUTIONS:
        return _convolution_params(t, p)
    if t == "PoolingForward":
        (wh, ww), (sh, sw), (ph, pw) = _hw(p["kernel"]), _hw(p["stride"]), _hw(p["padding"])
        return {"mode": p["mode"], "pad_h": ph, "pad_w": pw, "stride_h": sh, "stride_w": sw,
                "window_h": wh, "window_w": ww, "format": "NCHW"}
    if t == "AdaptivePoolingForward":
        return {"mode": p["mode"], "format": "NCHW"}
    if t == "BatchNormForward":
        return {"param_dim": "DIM_1C11", "fwd_mode": "TRAINING" if p.get("training") else
                "INFERENCE", "epsilon": p.get("eps", 1e-5)}
    if t in ("MatrixMul", "BatchedMatrixMul"):
        return {"transposeA": bool(p.get("transposeA", False)),
                "transposeB": bool(p.get("transposeB", False)), "compute_mode": "DEFAULT",
                "format": "DEFAULT"}
    if t == "Reduce":  # (over every axis: megdnn's "no axis", INT_MAX, and a shape input)
        axis = _INT_MAX if p["axis"] is None else p["axis"]
        return {"mode": p["mode"], "data_type": "DEFAULT", "axis": axis}
    if t == "AxisAddRemove":  # megdnn's AxisDesc: method 0 adds an axis, 1 removes one
        method = 0 if type(opr._op).__name__ == "AddAxis" else 1
        desc = [{"method": method, "axisnum": a} for a in p["axis"]]
        return {"nr_desc": len(desc), "desc": desc}
    if t == "Dimshuffle":
        pattern = list(p["pattern"])
        return {"pattern": pattern, "ndim": len(pattern)}
    if t == "SoftmaxForward":
        axes = p.get("axes")
        return {"axis": axes[0] if isinstance(axes, (tuple, list)) and len(axes) == 1 else axes}
    if t == "Reshape":
        return {"axis": p["axis"]}
    if t in ("Host2DeviceCopy", "ImmutableTensor", "TypeCvt", "GetVarShape", "Broadcast",
             "Identity", "Copy"):
        return {}
    if t == "Linspace":
        return {"endpoint": True}
    if t == "Subtensor":
        found = _subtensor_items(p.get("index"), len(opr.inputs[0].partial_shape))
        if found is not None:
            return found[0]
    return dict(p)


def _json_value(v):
    """What json.dumps writes for a parameter value that JSON has no type for."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (slice, type(Ellipsis))):
        return repr(v)
    return str(v)


class GraphOperator:
    """Operator ``opr`` (an `OpNode`) as upstream's C++ graph level shows it
    (``megengine.core._imperative_rt.OperatorNode``, what `megengine.utils.comp_graph_tools`
    returns): ``type`` is upstream's C++ type name (`graph_type`), ``params`` a JSON string of
    `graph_params`, ``inputs`` upstream's input vars (a Subtensor's index values and the target
    shape of a reduction over every axis are constant inputs there); ``name``, ``id``,
    ``outputs``, ``graph`` are the node's. ``opr`` is the node. Get one with `graph_operator`
    (one view per node)."""

    __slots__ = ("opr", "_inputs")

    def __init__(self, opr):
        self.opr = opr
        self._inputs = None

    type = property(lambda self: graph_type(self.opr))
    params = property(lambda self: json.dumps(graph_params(self.opr), default=_json_value))
    name = property(lambda self: self.opr.name)
    id = property(lambda self: self.opr.id)
    outputs = property(lambda self: self.opr.outputs)
    graph = property(lambda self: self.opr.graph)

    @property
    def inputs(self):
        if self._inputs is None:
            ins = list(self.opr.inputs)
            if self.type == "Subtensor":
                found = _subtensor_items(self.opr.params.get("index"),
                                         len(ins[0].partial_shape))
                if found is not None:
                    ins += [ImmutableTensor(np.array([v], np.int32), f"{self.name}:idx{k}",
                                            ins[0]._device).outputs[0]
                            for k, v in enumerate(found[1])]
            elif self.type == "Linspace":
                ins = _linspace_inputs(self.opr, ins)
            elif self.type == "Broadcast" and not ins:
                ins = _fill_inputs(self.opr)
            elif self.type == "AdaptivePoolingForward":
                # upstream's second input: the output size (OH, OW)
                oshp = np.array(self.opr.outputs[0].shape[2:], np.int32)
                ins.append(ImmutableTensor(oshp, f"{self.name}:shape", ins[0]._device)
                           .outputs[0])
            elif self.type == "Reduce" and self.opr.params.get("axis") is None:
                # upstream reduces over every axis to a target shape (1,), its second input
                ins.append(ImmutableTensor(np.array([1], np.int32), f"{self.name}:shape",
                                           ins[0]._device).outputs[0])
            self._inputs = ins
        return self._inputs

    def __eq__(self, other):
        return isinstance(other, GraphOperator) and other.opr is self.opr

    def __hash__(self):
        return hash(id(self.opr))

    def __repr__(self):
        return f"GraphOperator(name={self.name!r}, type={self.type!r})"


def _linspace_inputs(opr, ins):
    """Upstream's three Linspace inputs (start, stop, num) of `OpNode` ``opr`` with inputs
    ``ins``: the engine op's numbers (a count computed from shapes at the vars' shapes now) are
    constant inputs there."""
    op = _sizes_filled_in(opr._op, opr._dyn, opr._dyn_vars)
    args = op.args if hasattr(op, "args") else (op.start, op.stop, op.num)
    given, out = iter(ins), []
    for v, what, dtype in zip(args, ("start", "stop", "num"), (np.float32, np.float32, np.int32)):
        out.append(next(given) if v is None else ImmutableTensor(
            np.array([v], dtype), f"{opr.name}:{what}", op.device).outputs[0])
    return out


def _fill_inputs(opr):
    """Upstream's two Broadcast inputs (the value, the target shape) of `OpNode` ``opr`` whose
    engine op is a `megengine.core.ops.Full` (sizes from shapes, at the vars' shapes now), as
    its Fill and FillLike write them: a scalar constant of the output's dtype (as `F.full` of a
    shape Tensor makes it) and an int32 shape constant."""
    op = _sizes_filled_in(opr._op, opr._dyn, opr._dyn_vars)
    return [ImmutableTensor(np.array(op.value, op.dtype), f"{opr.name}:value",
                            op.device).outputs[0],
            ImmutableTensor(np.array(op.shape, np.int32).reshape(-1), f"{opr.name}:shape",
                            op.device).outputs[0]]


def graph_operator(opr):
    """The `GraphOperator` of `OpNode` ``opr`` (the same one each time, kept on the node); a
    view is returned as it is."""
    if isinstance(opr, GraphOperator):
        return opr
    view = opr.__dict__.get("_graph_view")
    if view is None:
        view = opr._graph_view = GraphOperator(opr)
    return view


class _ShapeOnly:
    """What `_thaw` reads of a value for a size computed from shapes: its shape."""

    __slots__ = ("_data",)

    def __init__(self, shape):
        self._data = np.broadcast_to(np.zeros((), np.int8), shape)  # (no memory of that shape)


def _sizes_filled_in(op, dyn, dyn_vars):
    """``op`` with its sizes computed from shapes (a file dumped with symbolic shapes, e.g. an
    adaptive pooling's window) at the shapes its vars have now, so that ``params`` show values
    as upstream's do; ``op`` itself where it has none."""
    sized = [(k, f) for k, f in dyn or () if _holds(f, _DimExpr) and not _holds(f, _Ref)]
    if not sized:
        return op
    try:
        values = [_ShapeOnly(tuple(v.partial_shape)) for v in dyn_vars]
        view = copy.copy(op)
        for k, f in sized:
            setattr(view, k, _thaw(f, values))
    except Exception:  # noqa: BLE001 (a var of unknown shape: the params show None)
        return op
    return view


def make_opnode(op, dyn, inputs, dyn_vars, n_outputs, device, name=None, var_names=None):
    """An OpNode for engine op ``op`` (before forward) over VarNodes ``inputs`` and ``n_outputs``
    new output VarNodes."""
    shapes = []
    for v in inputs:
        try:
            shapes.append(tuple(v.partial_shape))
        except Exception:  # noqa: BLE001 (unknown shape: classified without it)
            shapes.append(())
    cls, params = classify(_sizes_filled_in(op, dyn, dyn_vars), shapes,
                           [k for k, _ in dyn or ()])
    node = cls.__new__(cls)
    OpNode.__init__(node, name)
    node.params = params
    node._op, node._dyn, node._dyn_vars = op, dyn, list(dyn_vars)
    node.inputs = list(inputs)
    node._graph = next((v.graph for v in itertools.chain(inputs, dyn_vars)
                        if v.graph is not None), None)
    names = var_names or [None] * n_outputs
    node.outputs = [VarNode(node, names[i], device) for i in range(n_outputs)]
    if node.name is None:
        node.name = params["mode"] if cls is Elemwise else (cls.type or type(op).__name__)
    for i, v in enumerate(node.outputs):
        if v._name is None:
            v._name = node.name if n_outputs == 1 else f"{node.name}:{i}"
    return node


# --------------------------------------------------------------------------------------------
# the dispatcher hook: ops applied to VarNodes build nodes
# --------------------------------------------------------------------------------------------
def _check_one_device(op, nodes):
    """Refuse an operator over vars of two devices, as upstream's graph does (megbrain infers an
    operator's device from its inputs and asserts they share one): no copy is made on its own,
    so the program shows every move between devices as a Copy operator."""
    first = nodes[0] if nodes else None
    for v in nodes[1:]:
        if v._device != first._device:
            raise ValueError(
                f"{type(op).__name__.lstrip('_')}: its inputs are vars on two devices "
                f"({first.name!r} on {first._device}, {v.name!r} on {v._device}); as in "
                "upstream's graph, an operator's inputs share one device and are not copied "
                "between devices on their own. Make the constant or input on the other's device "
                "(make_const(..., device=...), make_h2d(..., device=...)) or copy the var with "
                "var.to(device) (a Copy operator in the program)")


def _symbolic_apply(op, inputs):
    for t in inputs:
        if type(t) is VarNode:
            break
    else:
        return NotImplemented
    nodes = []
    for t in inputs:
        if type(t) is VarNode:
            nodes.append(t)
        else:  # a Tensor (a Python number the operator made into one): a constant node
            nodes.append(ImmutableTensor(_host(t._data).copy(), None, t._device).outputs[0])
    _check_one_device(op, nodes)
    ins = [Tensor._wrap(v._data, v._device) for v in nodes]
    # attributes holding the data of a VarNode (x[idx_var] puts idx's array into the op)
    by_array = {}
    for v in nodes:
        s = v._sample
        if s is not None:
            by_array[id(s[1])] = v
    dyn_vars = []

    def array_slot(a):
        v = by_array.get(id(a))
        if v is None:
            return None
        dyn_vars.append(v)
        return len(dyn_vars) - 1

    dyn = []
    for k, v in op.__dict__.items():
        if k == "needs_input_grad":
            continue
        f = _freeze(v, array_slot)
        if _has_ref(f):
            dyn.append((k, f))
    template = copy.copy(op)
    hook, dispatch._symbolic_hook = dispatch._symbolic_hook, None
    try:
        with np.errstate(all="ignore"):
            out = dispatch.apply(op, *ins)
    finally:
        dispatch._symbolic_hook = hook
    multi = isinstance(out, tuple)
    outs = out if multi else (out,)
    device = outs[0]._device if outs else nodes[0]._device
    node = make_opnode(template, tuple(dyn) or None, nodes, dyn_vars, len(outs), device)
    for v, o in zip(node.outputs, outs):
        v._sample = (_generation[0], o._data)
    return tuple(node.outputs) if multi else node.outputs[0]
