"""Level-1 graph optimization of a recorded program (``trace(opt_level=1)`` and up): upstream's
arithmetic rewrites, each a short list of replacement steps for one op step.

Upstream's graph compiler documents ``graph_opt_level`` as 0: none; 1: "inplace arith
transformations during graph construction"; 2 (the default): level 1 plus global optimization
before compiling; 3: also JIT fusion. Its level-1 rules (MegBrain's inplace basic-arith
optimizer) are the ones here:

================================  ==========================================
``a - a``                         ``0``
``a / a``, ``a // a``             ``1``
``a + 0``, ``a * 1``, ``a ** 1``  ``a``
``a * 0``                         ``0``
``a ** 0``, ``exp(0)``            ``1``
``log(exp(a))``                   ``a``
``log(exp(a) * b)``               ``a + log(b)`` (``/``: ``-``; either side)
``log(1 + x)``                    ``log1p(x)``
``log(exp(x) + exp(y))``          ``logaddexp(x, y)`` (no overflow)
``exp(x) - 1``                    ``expm1(x)``
``x // 1``                        ``floor(x)`` (floats), ``x`` (integers)
================================  ==========================================

A result keeps the shape and dtype the op had (broadcast and cast like the op), and is always
a new array. ``0``, ``1`` and ``a`` mean those values even where ``a`` is inf or NaN (``x / x``
is 1 at 0), as upstream. A constant is a value the program holds fixed: a tensor made in the
function from Python data, or an external captured by ``capture_as_const``; a live Parameter
equal to 0 is not one. A pattern reaches back to an op only across op steps: no event (an
optimizer step, a backward) between, so every value it reads is the one the op read. This
engine has no level-2 passes or JIT, so levels 2 and 3 do what level 1 does.

Where the rewrites apply (`plan` puts them on ``step.rewrite``): a ``without_host`` replay and
`trace.dump` run `optimized`, the program with each rewritten step replaced and the elemwise
steps nothing uses any more dropped; a checked call (``symbolic=False``/``True``) checks the op
the Python code applies, then computes the replacement instead of it; the recording call
computes it too under ``symbolic=True`` (upstream's symbolic first call runs the compiled
graph) and ``without_host=True`` (its replays then give what the recording gave), while
``symbolic=False`` records eagerly, as upstream's first call does. Constants made from Python
data are only known once the recording call has returned, so a recording call applies only
the rules without constants or with captured ones; the others are planned after it, except
for steps before a value the call read to the host (`plan_program`).
"""
import copy

import numpy as np

from ..core import dispatch
from ..core.dispatch import Op, xp_of
from ..core.ops import (Add, FloorDiv, Mul, Pow, Sub, TrueDiv, t_unbroadcast, unbroadcast)
from ..functional.elemwise import Exp, Expm1, Floor, Log, Log1p, LogAddExp
from ._program import _EventStep, _OpStep, _host

__all__ = ["Fill", "BroadcastAs", "RULES", "plan", "plan_program", "run_rewrite", "optimized",
           "is_identity_step"]


class Fill(Op):
    """A constant of the shape and dtype of the value it replaces (``a / a`` -> 1), made on the
    device of its input; the input only places it (no gradient flows: the value is constant)."""

    def __init__(self, shape, dtype, value):
        self.shape, self.dtype, self.value = tuple(shape), np.dtype(dtype), value

    def forward(self, like):
        return xp_of(like).full(self.shape, self.value, self.dtype)

    def backward(self, g):
        return (None,)

    def grad_graph(self, inputs, outputs, grads):
        return (None,)

    def __repr__(self):
        return f"Fill({self.value!r}, shape={self.shape}, dtype={self.dtype})"


class BroadcastAs(Op):
    """``x`` broadcast to ``shape`` and cast to ``dtype`` as a new array: the value ``a + 0``
    has (its own storage, so writing into the result never writes into ``a``)."""

    def __init__(self, shape, dtype):
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)

    def forward(self, x):
        self.in_shape = x.shape
        return xp_of(x).broadcast_to(x, self.shape).astype(self.dtype)  # (astype copies)

    def backward(self, g):
        return unbroadcast(g, self.in_shape)  # (dispatch casts it to the input's dtype)

    def grad_graph(self, inputs, outputs, grads):
        return (t_unbroadcast(grads[0], inputs[0]._data.shape),)

    def __repr__(self):
        return f"BroadcastAs(shape={self.shape}, dtype={self.dtype})"


# --------------------------------------------------------------------------------------------
# Planning: which steps are rewritten, and into what
# --------------------------------------------------------------------------------------------
class _Producer:
    __slots__ = ("cls", "ins", "metas")

    def __init__(self, step):
        self.cls, self.ins, self.metas = type(step.template), step.ins, step.metas


class _Builder:
    """The replacement of op step ``k`` (type ``cls`` on slots ``ins`` of ``metas``): what the
    rules ask about the program, and the steps they emit."""

    def __init__(self, prog, k, op, ins, metas):
        self.prog, self.k, self.op, self.ins, self.metas = prog, k, op, ins, metas
        self.emitted = []  # [template, ins, metas]; an input ("tmp", i) is emitted step i's output
        self._out_meta = None

    @property
    def out_meta(self):
        """(shape, dtype) of the op's output (worked out when a rule applies)."""
        if self._out_meta is None:
            self._out_meta = _out_meta(self.op, self.metas)
            if self._out_meta is None:
                raise _GiveUp
        return self._out_meta

    def scalar(self, s):
        """The value of slot ``s`` when it is a one-element constant, else None."""
        info = self.prog.slots[s]
        c = info.const
        if info.kind != "const" or c is None or c.size != 1 or c.dtype.metadata is not None \
                or info.fed:  # (a value of each call: see `_program._Slot`)
            return None
        return _host(c).reshape(()).item()

    def producer(self, s):
        """The recorded op that made slot ``s``, when the value it read is still what its
        inputs hold at step ``k`` (no event between) and it was not rewritten itself."""
        info = self.prog.slots[s]
        if info.kind != "op" or info.step is None:
            return None
        steps = self.prog.steps
        p = steps[info.step]
        if type(p) is not _OpStep or p.multi or p.rewrite is not None or p.metas is None:
            return None
        for i in range(info.step + 1, min(self.k, len(steps))):
            if type(steps[i]) is _EventStep:
                return None
        return _Producer(p)

    def emit(self, op, ins, metas):
        meta = _out_meta(op, metas)
        if meta is None:
            raise _GiveUp
        self.emitted.append([op, list(ins), list(metas)])
        return ("tmp", len(self.emitted) - 1), meta

    def fill(self, value):
        shape, dtype = self.out_meta
        return self.emit(Fill(shape, dtype, value), [self.ins[0]], [self.metas[0]])

    def same(self, s, meta):
        """The value of slot ``s`` as the result (broadcast and cast to the op's output)."""
        return self.emit(BroadcastAs(*self.out_meta), [s], [meta])

    def log_of(self, s, meta):
        p = self.producer(s)
        if p is not None and p.cls is Exp:
            return p.ins[0], p.metas[0]  # log(exp(a)) -> a
        return self.emit(Log(), [s], [meta])


def is_identity_step(step):
    """True for a `BroadcastAs` step whose input already has its shape and dtype (a rewrite
    whose result is its input unchanged: `dump` writes that input's var instead)."""
    op = step.template
    return (type(op) is BroadcastAs and step.metas is not None and len(step.metas) == 1
            and not step.multi and tuple(step.metas[0][0]) == op.shape
            and np.dtype(step.metas[0][1]) == op.dtype)


class _GiveUp(Exception):
    """A replacement cannot be built (an output dtype that cannot be worked out)."""


def _rule_sub(b):
    (a, c), (ma, mc) = b.ins, b.metas
    if a == c:
        return b.fill(0)
    p = b.producer(a)
    if p is not None and p.cls is Exp and b.scalar(c) == 1:
        return b.emit(Expm1(), [p.ins[0]], [p.metas[0]])
    return None


def _rule_div(b):
    return b.fill(1) if b.ins[0] == b.ins[1] else None


def _rule_floordiv(b):
    (a, c), (ma, mc) = b.ins, b.metas
    if a == c:
        return b.fill(1)
    if b.scalar(c) == 1:
        return b.emit(Floor(), [a], [ma]) if ma[1].kind == "f" else b.same(a, ma)
    return None


def _rule_add(b):
    (a, c), (ma, mc) = b.ins, b.metas
    if b.scalar(c) == 0:
        return b.same(a, ma)
    if b.scalar(a) == 0:
        return b.same(c, mc)
    return None


def _rule_mul(b):
    (a, c), (ma, mc) = b.ins, b.metas
    if b.scalar(c) == 1:
        return b.same(a, ma)
    if b.scalar(a) == 1:
        return b.same(c, mc)
    if b.scalar(c) == 0 or b.scalar(a) == 0:
        return b.fill(0)
    return None


def _rule_pow(b):
    (a, c), (ma, mc) = b.ins, b.metas
    k = b.scalar(c)
    if k == 0:
        return b.fill(1)
    if k == 1:
        return b.same(a, ma)
    return None


def _rule_exp(b):
    return b.fill(1) if b.scalar(b.ins[0]) == 0 else None


def _rule_log(b):
    p = b.producer(b.ins[0])
    if p is None:
        return None
    if p.cls in (Mul, TrueDiv) and any(
            (q := b.producer(s)) is not None and q.cls is Exp for s in p.ins):
        v0 = b.log_of(p.ins[0], p.metas[0])
        v1 = b.log_of(p.ins[1], p.metas[1])
        metas = [v0[1], v1[1]]
        return b.emit(Add() if p.cls is Mul else Sub(), [v0[0], v1[0]], metas)
    if p.cls is Exp:
        return b.same(p.ins[0], p.metas[0])
    if p.cls is Add:
        (i0, i1), (m0, m1) = p.ins, p.metas
        if b.scalar(i0) != 1:
            i0, i1, m0, m1 = i1, i0, m1, m0
        if b.scalar(i0) == 1:
            return b.emit(Log1p(), [i1], [m1])
        q0, q1 = b.producer(p.ins[0]), b.producer(p.ins[1])
        if q0 is not None and q1 is not None and q0.cls is Exp and q1.cls is Exp:
            return b.emit(LogAddExp(), [q0.ins[0], q1.ins[0]], [q0.metas[0], q1.metas[0]])
    return None


RULES = {Sub: _rule_sub, TrueDiv: _rule_div, FloorDiv: _rule_floordiv, Add: _rule_add,
          Mul: _rule_mul, Pow: _rule_pow, Exp: _rule_exp, Log: _rule_log}


def _out_meta(op, metas):
    """(shape, dtype) of elemwise ``op`` on inputs of ``metas``: the broadcast shape, and the
    dtype its forward gives on one-element arrays of those dtypes (its own promotion rules)."""
    if any(m[1].metadata is not None for m in metas):
        return None  # quantized dtypes: leave them to the op
    try:
        shape = np.broadcast_shapes(*(m[0] for m in metas))
        with np.errstate(all="ignore"):
            out = copy.copy(op).forward(*[np.ones((), m[1]) for m in metas])
    except Exception:  # noqa: BLE001 - a dtype the op refuses: no rewrite
        return None
    return shape, np.asarray(out).dtype


def plan(prog, k, op, ins, metas, out_slot):
    """The replacement steps of op ``op`` (the k-th step of ``prog``) on slots ``ins`` whose
    output is ``out_slot``, or None when no rule applies. New slots for the intermediate
    values are added to ``prog``."""
    rule = RULES.get(type(op))
    if rule is None or metas is None or len(ins) != len(metas):
        return None
    if not prog.dyn_sizes and not prog.symbolic_shape and any(s in prog.dyn_slots for s in ins):
        # a value whose shape data decides, in a program of fixed sizes: the replacement's
        # broadcast shapes would be the traced ones (see `_Program.dyn_slots`)
        return None
    b = _Builder(prog, k, op, ins, metas)
    try:
        result = rule(b)
        if result is None:
            return None
        ref, meta = result
        if meta != b.out_meta or type(ref) is not tuple or ref[1] != len(b.emitted) - 1:
            b.same(ref, meta)  # the op's shape and dtype (log(exp(a)) of an int a is a float)
    except _GiveUp:
        return None
    # give the emitted values slots: the last one is the op's output
    slots = []
    steps = []
    name = f"{type(op).__name__} rewritten"
    for i, (template, e_ins, e_metas) in enumerate(b.emitted):
        if i == len(b.emitted) - 1:
            s = out_slot
        else:
            s = prog.new_slot("op", f"a value of the rewrite of op #{k} ({type(op).__name__})")
        slots.append(s)
        real = tuple(slots[x[1]] if type(x) is tuple else x for x in e_ins)
        step = _OpStep(k, template, None, None, real, tuple(e_metas), (s,), False,
                       f"{template!r} ({name})")
        if type(template) in (Fill, BroadcastAs) and (prog.symbolic_shape or (
                prog.dyn_sizes and any(s in prog.dyn_slots for s in ins))):
            # a dumped program (or a replay where data decides a shape: `_Program.dyn_slots`)
            # computes the op's broadcast shape at the shapes it runs at
            step.sym = (("shape", _broadcast_shape_expr(prog, ins, metas)),)
        steps.append(step)
    return tuple(steps)


def _broadcast_shape_expr(prog, ins, metas):
    """The broadcast shape of values ``ins`` (with traced ``metas``) in `_program._freeze` form,
    each size an expression of their shapes (see `megengine.jit.shape_guards`).

    The rules' `_Builder.same` results are a value with a scalar constant (``a * 1``) or of a
    unary chain (``log(exp(a))``): their broadcast shape is the value's own at any shape, so a
    result that is its input unchanged when traced is so at every shape (`is_identity_step`)."""
    from ._program import _DimExpr

    nd = max(len(m[0]) for m in metas)
    sizes = []
    for j in range(nd):
        terms = []
        for s, (shape, _) in zip(ins, metas):
            ax = j - (nd - len(shape))
            if ax < 0:
                continue
            computed = prog.slots[s].kind in ("arg", "op", "alias", "event")
            term = ("dim", s, ax) if computed else shape[ax]
            if term not in terms and term != 1:  # (a size-1 constant never sets the size)
                terms.append(term)
        tree = terms[0] if terms else 1
        for term in terms[1:]:
            tree = ("bcast", tree, term)
        sizes.append(_DimExpr(tree))
    return (tuple, tuple(sizes))


def plan_program(prog):
    """Plan the rewrites of the op steps that have none yet, now that the recording call has
    returned and its constants are known. Not of a step before a value the call read to the
    host: the recording computed that value without the rewrite, and a replay checks that it
    reads the same again (see "Host reads" in `tracing`)."""
    steps = prog.steps
    start = max((pos for pos, _, _ in prog.guards), default=0)
    for k in range(start, len(steps)):
        step = steps[k]
        if type(step) is _OpStep and step.rewrite is None and not step.multi \
                and type(step.template) in RULES:
            step.rewrite = plan(prog, k, step.template, step.ins, step.metas, step.outs[0])


def run_rewrite(steps, get, put):
    """Run replacement ``steps`` through ``dispatch.apply`` (the caller has turned the trace
    hook off): ``get(slot)`` gives an input tensor, ``put(slot, tensor)`` takes each result.
    Returns the last result (the rewritten op's output)."""
    out = None
    for step in steps:
        out = dispatch.apply(copy.copy(step.template), *[get(s) for s in step.ins])
        put(step.outs[0], out)
    return out


# --------------------------------------------------------------------------------------------
# The optimized program (replays, dump)
# --------------------------------------------------------------------------------------------
# ops with no effect but their output: dropped from the optimized program once nothing uses it
_PURE = frozenset(RULES) | {Expm1, Floor, Log1p, LogAddExp, Fill, BroadcastAs}


def optimized(prog):
    """A copy of compiled ``prog`` whose rewritten steps are replaced by their replacement
    steps, without the elemwise steps whose values nothing uses any more; compiled. None when
    nothing was rewritten."""
    if not any(type(s) is _OpStep and s.rewrite is not None for s in prog.steps):
        return None
    from ._program import _DimExpr, _refs_in, _slots_used

    steps = []  # (index of the recorded step it comes from, step)
    for k, step in enumerate(prog.steps):
        if type(step) is _OpStep and step.rewrite is not None:
            steps.extend((k, copy.copy(s)) for s in step.rewrite)
        else:
            steps.append((k, copy.copy(step)))
    # (and the values whose shapes a replay checks: see `_Program._dyn_checks`)
    used = set(_refs_in(prog.out)) | {s for _, s, _ in prog.guards} | set(prog.dyn_read)
    for tree, _, _, _ in prog.shape_guards:  # (sizes a dumped program checks: see shape_guards)
        used.update(_refs_in(_DimExpr(tree)))
    kept = []
    for k, step in reversed(steps):
        if (type(step) is _OpStep and type(step.template) in _PURE
                and not any(s in used for s in step.outs)):
            continue  # its value was only read by a step that a rewrite replaced
        kept.append((k, step))
        # (a result that is its input unchanged: dump writes no operator, so the values its
        # shape expression reads need not be made; it is its input at any shape, see plan)
        used.update(step.ins if type(step) is _OpStep and step.sym and is_identity_step(step)
                    else _slots_used(step))
    kept.reverse()
    # a host read checked after the first ``pos`` recorded steps: after the steps kept of them
    before = [0] * (len(prog.steps) + 1)
    for k, _ in kept:
        before[k + 1] += 1
    for k in range(len(prog.steps)):
        before[k + 1] += before[k]
    opt = copy.copy(prog)
    opt.steps = [step for _, step in kept]
    opt.guards = [(before[pos], s, value) for pos, s, value in prog.guards]
    opt.n_ops = sum(1 for s in opt.steps if type(s) is _OpStep)
    opt.optimized = None
    opt.compile()
    return opt

