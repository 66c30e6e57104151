"""The data of a trace: value snapshots that compare, argument trees, and the recorded program
(its slots and steps) that `record` builds, `replay` runs and `dump` writes out."""
import weakref
from operator import itemgetter as _itemgetter

import numpy as np

from ..autodiff.function import _FunctionOp
from ..core._trace_option import SymDim, evaluate
from ..core.tensor import Tensor

# a checked call lets go of values of at least this many bytes past their last use (see
# `check._Checker._free`); smaller ones are kept to the end of the call, which costs less
FREE_BYTES = 16384

# slot kinds computed inside the call; arguments, externals, constants and .grad come from
# outside (upstream calls them external nodes, and its mismatch reasons say which was expected)
_COMPUTED = frozenset({"op", "alias", "event"})
# the values a call owns: those it computes and its arguments. A write that gives such a
# tensor a new array (``x.set_value(v)`` of an argument) leaves it in its slot, which a
# replay's event writes the same way; other tensors from outside are read where used
_OF_THE_CALL = _COMPUTED | {"arg"}


class TraceError(RuntimeError):
    """A function cannot be traced, or a traced function cannot run as asked."""


class TraceMismatchError(TraceError):
    """A call of a traced function does not match what its first call recorded.

    ``str(error)`` is upstream's short form, ``"trace error because <reason>"`` (upstream's tests
    compare it); ``error.detail`` says which op, input and value differ, and is attached as a
    note, so tracebacks show it.
    """

    def __init__(self, detail, reason="operator mismatch"):
        super().__init__(f"trace error because {reason}")
        self.reason, self.detail = reason, detail
        self.add_note(detail)


# --------------------------------------------------------------------------------------------
# Comparable snapshots of op parameters and non-tensor arguments
# --------------------------------------------------------------------------------------------
_PLAIN = frozenset({type(None), bool, int, float, complex, str, bytes, type(Ellipsis)})


def _is_array(v):
    return isinstance(v, np.ndarray) or type(v).__module__.startswith("cupy")


_UINTS = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _same_bits(a, b):
    """Whether arrays ``a`` and ``b`` (one array module) hold the same bits: NaNs with
    the same payload are equal, 0.0 and -0.0 are not (what "unchanged" means for a value)."""
    if a is b:
        return True
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    u = _UINTS.get(a.dtype.itemsize)
    if u is None:  # (complex128, strings: no unsigned int of that width)
        return _host(a).tobytes() == _host(b).tobytes()
    return bool((a.view(u) == b.view(u)).all())


def _host(a):
    return a.get() if type(a).__module__.startswith("cupy") else a


class _Same:
    """Compares by identity: an object (a module, a callable) the trace refers to; objects whose
    class defines its own ``__eq__`` (small value objects an op keeps) compare by value."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __eq__(self, other):
        if type(other) is not _Same:
            return False
        a, b = self.obj, other.obj
        if a is b:
            return True
        return type(a) is type(b) and type(a).__eq__ is not object.__eq__ and bool(a == b)

    def __repr__(self):
        return f"<{type(self.obj).__name__} object>"


class _ArrayValue:
    """Compares by value: an array held as a constant (an index, a captured argument)."""

    __slots__ = ("array",)

    def __init__(self, array):
        self.array = array

    def __eq__(self, other):
        if type(other) is not _ArrayValue:
            return False
        a, b = self.array, other.array
        return (a is b or (a.shape == b.shape and a.dtype == b.dtype
                           and bool((_host(a) == _host(b)).all())))

    def __repr__(self):
        a = self.array
        if a.size <= 8:
            return repr(_host(a).tolist())
        return f"<array {a.dtype} {a.shape}>"


class _Ref:
    """A traced value inside an encoded structure: slot ``slot`` (its array if ``raw``)."""

    __slots__ = ("slot", "raw")

    def __init__(self, slot, raw=False):
        self.slot, self.raw = slot, raw

    def __eq__(self, other):
        return type(other) is _Ref and other.slot == self.slot and other.raw == self.raw

    def __repr__(self):
        return f"<traced value #{self.slot}>"


class _DimExpr:
    """A size computed from traced values' shapes (a `SymDim`'s expression, see
    `megengine.core._trace_option`) inside op state: ``tree``'s leaves ``("dim", slot, axis)``
    are read from this run's values, so a loaded program computes the op parameter (a reshape
    target, a slice bound) from the shapes it runs at."""

    __slots__ = ("tree",)

    def __init__(self, tree):
        self.tree = tree

    def __eq__(self, other):
        return type(other) is _DimExpr and other.tree == self.tree

    def __repr__(self):
        return f"<size {self.tree!r}>"

    def value(self, values):
        return evaluate(self.tree, lambda s, axis: values[s]._data.shape[axis])

    def slots(self):
        return _dim_slots(self.tree)

    def map_slots(self, fn):
        """The same expression with each leaf's slot ``s`` replaced by ``fn(s)``."""
        return _DimExpr(_map_dim_slots(self.tree, fn))


def _dim_slots(tree):
    if type(tree) is not tuple:
        return
    if tree[0] == "dim":
        yield tree[1]
    else:
        for x in tree[1:]:
            yield from _dim_slots(x)


def _map_dim_slots(tree, fn):
    if type(tree) is not tuple:
        return tree
    if tree[0] == "dim":
        return ("dim", fn(tree[1]), tree[2])
    return (tree[0],) + tuple(_map_dim_slots(x, fn) for x in tree[1:])


def _sized_slots(prog):
    """The slots whose sizes the record holds as expressions: in op parameters (``sym``,
    ``dyn``, the key), event arguments, shape tensors (``sym_values``) and those a branch on
    SymDims kept (``dims_kept``). A checked call hands out `SymDim` sizes for these values
    only (`check._Checker.dim_slot`): a SymDim acts as its int in every other use (a guard is
    its value; a checked call keeps no guards), so the other values' sizes make the same ops
    as plain ints, and cost no SymDim arithmetic (ShuffleNetV2 reads ~240 sizes per call,
    batch norm's checks and ``x.size`` among them, none of them in an op)."""
    found = set(prog.dims_kept)
    for step in prog.steps:
        if type(step) is _OpStep:
            for enc in (step.sym, step.dyn, step.key):
                found.update(_dim_leaves(enc))
        elif type(step) is _EventStep:
            found.update(_dim_leaves(step.args))
            found.update(_dim_leaves(step.kwargs))
    for values in prog.sym_values.values():
        found.update(_dim_leaves(values))
    return found


def _leaves(enc):
    """The leaves of an encoded structure, walked as one: `_freeze` forms (op state), what
    `record._Recorder._encode` made (event arguments, outputs) and object arrays of sizes
    (shape tensors). Tuples, lists, dict values, `_Struct` items and object ndarrays are
    walked into; anything else is a leaf.

    Object arrays hold user values only: `_freeze` wraps every array (`_Ref`, `_ArrayValue`),
    `_encode` leaves an array as the user gave it (Tensors, SymDims, numbers inside are not
    encoded) and `shape_tensors.objects` fills them with SymDims and numbers; a `_Ref` or a
    `_DimExpr` is made only by `_freeze`, `_encode`, `dump_format` and the rewrites, never
    inside an array. So walking into them finds no reference (`_refs_in`) and finds the
    SymDims of shape tensors and of arrays passed to events (`_dim_leaves`)."""
    t = type(enc)
    if t is tuple or t is list:
        for x in enc:
            yield from _leaves(x)
    elif t is dict:
        for x in enc.values():
            yield from _leaves(x)
    elif t is _Struct:
        for x in enc.items:
            yield from _leaves(x)
    elif t is np.ndarray and enc.dtype == object:
        for x in enc.flat:
            yield from _leaves(x)
    else:
        yield enc


def _dim_leaves(enc):
    """The slots of the size expressions in ``enc`` (encoded op state, event arguments, an
    object array of SymDims)."""
    for x in _leaves(enc):
        t = type(x)
        if t is _DimExpr:
            yield from x.slots()
        elif t is SymDim:
            yield from _dim_slots(x.tree)


def _freeze(v, array_slot):
    """A snapshot of ``v`` that compares with ``==``, and can be rebuilt by `_thaw`.

    Arrays that are the data of a traced tensor (``array_slot(a)`` gives its slot) become
    `_Ref`s: ``x[idx_tensor]`` puts ``idx_tensor``'s array into the op, and a replay must use
    that call's index, not the first one's.
    """
    t = type(v)
    if t in _PLAIN or isinstance(v, (np.generic, np.dtype, type)):
        return v
    if t is tuple or t is list:
        return (t, tuple(_freeze(x, array_slot) for x in v))
    if t is dict:
        return (dict, tuple((k, _freeze(x, array_slot)) for k, x in v.items()))
    if t is slice:
        return (slice, _freeze(v.start, array_slot), _freeze(v.stop, array_slot),
                _freeze(v.step, array_slot))
    if t is SymDim:  # (the recorder takes these out of an op: `record._Recorder.__call__`;
        return _DimExpr(v.tree)  # asked before `_is_array`: a checked call freezes them too)
    if _is_array(v):
        s = array_slot(v)
        return _Ref(s, raw=True) if s is not None else _ArrayValue(v)
    return _Same(v)


def _has_ref(frozen):
    if type(frozen) is _Ref or type(frozen) is _DimExpr:
        return True
    if type(frozen) is tuple:
        return any(_has_ref(x) for x in frozen)
    return False


def _holds(frozen, kind):
    """Whether a `_freeze` form holds a ``kind`` (`_Ref` or `_DimExpr`) anywhere."""
    t = type(frozen)
    return t is kind or (t is tuple and any(_holds(x, kind) for x in frozen))


def _thaw(frozen, values):
    """Rebuild a value `_freeze` made, with `_Ref`s read from this replay's ``values``."""
    t = type(frozen)
    if t is _Ref:
        v = values[frozen.slot]
        return v._data if frozen.raw else v
    if t is _ArrayValue:
        return frozen.array
    if t is _Same:
        return frozen.obj
    if t is _DimExpr:
        return frozen.value(values)
    if t is tuple:
        kind = frozen[0]
        if kind is tuple or kind is list:
            return kind(_thaw(x, values) for x in frozen[1])
        if kind is dict:
            return {k: _thaw(x, values) for k, x in frozen[1]}
        if kind is slice:
            return slice(*(_thaw(x, values) for x in frozen[1:]))
    return frozen


def _op_key(op, array_slot):
    """What identifies an op for checking: its type and its parameters before ``forward``."""
    if type(op) is _FunctionOp:
        # a user Function is made fresh per call (or reused with state on it): compare its type
        return (_FunctionOp, type(op.fn), op.device), None
    params = []
    dyn = None
    for k, v in op.__dict__.items():
        if k == "needs_input_grad":
            continue
        f = _freeze(v, array_slot)
        if type(f) is not _Same and _has_ref(f):
            if dyn is None:
                dyn = []
            dyn.append((k, f))
        params.append((k, f))
    return (type(op), tuple(params)), dyn


def _describe_params(key):
    cls, params = key[0], key[1]
    if cls is _FunctionOp:
        return f"Function {key[1].__name__}"
    return ", ".join(f"{k}={_short(v)}" for k, v in params) or "no parameters"


def _short(frozen):
    t = type(frozen)
    if t is tuple and frozen and frozen[0] in (tuple, list):
        inner = ", ".join(_short(x) for x in frozen[1])
        if frozen[0] is tuple and len(frozen[1]) == 1:
            inner += ","  # (3,), as Python writes a 1-tuple
        return f"({inner})" if frozen[0] is tuple else f"[{inner}]"
    if t is tuple and frozen and frozen[0] is slice:
        return "slice(" + ", ".join(_short(x) for x in frozen[1:]) + ")"
    if t is tuple and frozen and frozen[0] is dict:
        return "{" + ", ".join(f"{k!r}: {_short(v)}" for k, v in frozen[1]) + "}"
    return repr(frozen)


# --------------------------------------------------------------------------------------------
# Argument trees
# --------------------------------------------------------------------------------------------
class _TensorLeaf:
    """A tensor argument: what must stay the same for a replay (shape, dtype, device)."""

    __slots__ = ("shape", "dtype", "device")

    def __init__(self, t):
        self.shape, self.dtype, self.device = t.shape, t.dtype, t._device

    def __eq__(self, other):
        return (type(other) is _TensorLeaf and self.shape == other.shape
                and self.dtype == other.dtype and self.device == other.device)

    def __hash__(self):  # argument trees key a trace's program cache
        return hash((self.shape, self.dtype, self.device))

    def __repr__(self):
        return f"a Tensor of shape {self.shape} {self.dtype} on {self.device}"


class _ValueLeaf:
    """A non-tensor argument: Python scalars and strings by value, arrays by value, objects
    whose class defines value equality and a hash (a frozen dataclass) by value, others by
    identity (a module passed in is the same module). In a key the trace keeps, an object
    compared by identity is held weakly where it can be (`_kept`)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __eq__(self, other):
        if type(other) is not _ValueLeaf:
            return False
        a, b = self.value, other.value
        if type(a) is _HeldWeakly or type(b) is _HeldWeakly:
            a, b = _held(a), _held(b)
            return a is b and a is not None  # (once dead, a weak leaf equals no argument)
        if type(a) is not type(b):
            return False
        if type(a) in _PLAIN or isinstance(a, (np.generic, np.dtype)):
            return bool(a == b) or a is b
        if _is_array(a):
            return _ArrayValue(a) == _ArrayValue(b)
        if a is b:
            return True
        if _by_value(a):
            try:
                return bool(a == b)
            except Exception:  # (an __eq__ that gives an array, or raises: not equal)
                return False
        return False

    def __hash__(self):  # consistent with __eq__: by value, arrays by shape, others by identity
        v = self.value
        if type(v) in _PLAIN or isinstance(v, (np.generic, np.dtype)):
            try:
                return hash(v)
            except TypeError:  # an unhashable numpy scalar (np.void): equal values, same bucket
                return hash(type(v))
        if _is_array(v):
            return hash((v.shape, str(v.dtype)))
        if type(v) is _HeldWeakly:
            return v.hash
        if _by_value(v):
            try:
                return hash(v)
            except Exception:  # (a frozen dataclass holding a list): equal values, same bucket
                return hash(type(v))
        return id(v)

    def __repr__(self):
        v = self.value
        if type(v) is _HeldWeakly:
            v = _held(v)
            if v is None:
                return "an object that is gone (it was compared by identity)"
        if type(v) in _PLAIN or isinstance(v, np.generic):
            return repr(v)
        if _is_array(v):
            return f"the array {_ArrayValue(v)!r}"
        if _by_value(v):
            return f"a {type(v).__name__} object (compared by value)"
        return f"a {type(v).__name__} object (compared by identity)"

    def held(self):
        """The argument itself (None where a weakly held one is gone)."""
        return _held(self.value)


def _by_value(v):
    """Whether argument ``v`` (not a plain value or an array) keys programs by value: its class
    defines equality and a hash of its own (a frozen dataclass, a named value object), so an
    equal object is the same argument, as it is for a number."""
    cls = type(v)
    return cls.__eq__ is not object.__eq__ and cls.__hash__ is not None


class _HeldWeakly:
    """An argument object compared by identity, held weakly inside a key the trace keeps: the
    key does not keep the caller's object (a config, a module, a callable) alive, and the
    trace drops the programs keyed by it when it goes (see `tracing._forget_instance`)."""

    __slots__ = ("ref", "hash")

    def __init__(self, obj, on_death=None):
        self.ref = weakref.ref(obj) if on_death is None else weakref.ref(obj, on_death)
        self.hash = id(obj)  # (what the caller's leaf hashes to: `_ValueLeaf.__hash__`)


def _held(v):
    return v.ref() if type(v) is _HeldWeakly else v


def _flatten(value, leaves):
    """The structure of ``value`` with tensors (appended to ``leaves``) as `_TensorLeaf`s."""
    if isinstance(value, Tensor):
        leaves.append(value)
        return _TensorLeaf(value)
    if isinstance(value, (tuple, list)):
        return (type(value), tuple(_flatten(v, leaves) for v in value))
    if isinstance(value, dict):
        return (type(value), tuple(value.keys()),
                tuple(_flatten(v, leaves) for v in value.values()))
    return _ValueLeaf(value)


def _kept(tree, on_death=None):
    """``tree`` (a key or argument tree that `_flatten` made) as a trace keeps it:

    - each array argument's `_ValueLeaf` holds a copy: holding the caller's array, it kept it
      alive, and an in-place write into it changed the key, so that the next call with the new
      value took the program recorded for the old one (a replay computed with the old value);
    - each object compared by identity is held weakly (`_HeldWeakly`, ``on_death`` called when
      it goes) where its class allows weak references: held, it stayed alive as long as its
      program, which no later call could find once the caller let go of it."""
    t = type(tree)
    if t is _ValueLeaf:
        v = tree.value
        if _is_array(v):
            return _ValueLeaf(_host(v).copy())
        if (type(v) in _PLAIN or isinstance(v, (np.generic, np.dtype)) or type(v) is _HeldWeakly
                or _by_value(v)):
            return tree
        try:
            return _ValueLeaf(_HeldWeakly(v, on_death))
        except TypeError:  # no weak references (``object()``, __slots__ without __weakref__)
            return tree
    if t is tuple:
        return tuple(_kept(x, on_death) for x in tree)
    return tree


def _holds_gone(tree):
    """Whether a kept tree (`_kept`) holds an object that is gone."""
    t = type(tree)
    if t is _ValueLeaf:
        return type(tree.value) is _HeldWeakly and tree.value.ref() is None
    return t is tuple and any(_holds_gone(x) for x in tree)


# --------------------------------------------------------------------------------------------
# The recorded program
# --------------------------------------------------------------------------------------------
class _Slot:
    """Where one value of the program comes from (see the module docstring)."""

    __slots__ = ("kind", "what", "tensor", "owner", "owner_slot", "const", "device", "step",
                 "fresh", "fed")

    def __init__(self, kind, what=None):
        self.kind = kind  # "arg", "op", "alias", "event", "ext", "grad" or "const" ("written":
        # a dumped view's live external read nowhere, see `dump_writes.with_writes`)
        self.what = what  # for messages: an argument path, or "output 0 of op #3 (MatMul)"
        self.tensor = None  # "ext": the live tensor; "const" by capture_as_const: the tensor
        self.owner = None  # "grad": the tensor whose .grad this is
        self.owner_slot = None  # "grad" of an argument: the argument's slot (each call's own)
        self.const = None  # "const": the captured array
        # "const" of a tensor the function made with the Tensor constructor (``mge.tensor(a)``)
        # outside capture_as_const: upstream's trace takes its value afresh on every call, so a
        # checked call computes with the value it has then (the recorded one: replays, dumps)
        self.fed = False
        self.device = None
        self.step = None  # index of the step that makes it ("op", "alias", "event")
        # "ext" of a tensor the function made and then wrote into: the value it had before the
        # write (a replay writes into a new tensor of it on each call; see
        # `record._Recorder._written_capture`)
        self.fresh = None


class _OpStep:
    fn = None  # not an event step (a checked call compares an event's function with ``fn``)

    __slots__ = ("index", "template", "key", "dyn", "ins", "metas", "outs", "multi", "name",
                 "free", "fast", "tdict", "cls", "may_be_none", "no_grad", "reads",
                 "pdict", "checks", "n_in", "rewrite", "sym", "guards", "free_big", "nested",
                 "hashed", "flat", "konst", "pcheck", "many")

    def __init__(self, index, template, key, dyn, ins, metas, outs, multi, name):
        self.index, self.template, self.key, self.dyn = index, template, key, dyn
        self.ins, self.metas, self.outs, self.multi, self.name = ins, metas, outs, multi, name
        self.free = self.reads = ()
        self.rewrite = None  # replacement steps (see `arith_opt`, trace(opt_level>=1))
        # attributes built from traced shapes, in `_freeze` form with `_DimExpr`s: what `dump`
        # writes for them (the trace's own replays, one program per shape, use the values)
        self.sym = None


class _AliasStep:
    """``t.detach()`` (or another wrapper of the same array without its autodiff link)."""

    cls = fn = None  # neither an op nor an event (see the fast paths of `check`)

    __slots__ = ("src", "out", "free", "reads", "take")

    def __init__(self, src, out):
        self.src, self.out, self.free, self.reads = src, out, (), ()
        self.take = None  # set by `_Program.compile` (see `_detach_plan`)


class _EventStep:
    cls = None  # not an op step (a checked call compares an op's type with ``step.cls``)

    __slots__ = ("fn", "args", "kwargs", "out_paths", "name", "args_text", "free", "reads",
                 "ref_pos", "n_args", "quiet", "writes_ext", "callbacks", "target_meta")

    def __init__(self, fn, args, kwargs):
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.out_paths = []  # (path into the result, slot) for new tensors it returned
        self.name = getattr(fn, "__qualname__", None) or repr(fn)
        self.args_text = f"the arguments of {self.name}()"  # for a checked call's messages
        self.ref_pos = None  # these four are set by `_Program.compile`
        self.n_args = -1
        self.quiet = self.writes_ext = False
        self.free = self.reads = ()
        self.callbacks = None  # the GradManager callbacks' recorded ops (jit/grad_callbacks)
        # a write (``t._reset(v)``, ``t._inplace(v)``): (dtype, device) ``t`` had before it, which
        # a number or array written takes (`dump_writes`); else None
        self.target_meta = None


def _detach_plan(steps, pc):
    """What a checked call's event fast path (`check._Checker._take_detached`) needs for the
    detach() steps from ``pc`` on, each of whose values an event step right after them takes
    as a positional argument (batch norm's ``running_mean._reset(mean.detach())``): (the index
    of the event step, its number of arguments, per detach() step (its source's slot, its
    slot, the argument's position), and where every other argument is a tensor too (the
    running statistic written) their (position, slot) pairs, else None); None where the fast
    path does not apply (another step follows, an event with keyword or structured arguments,
    a detached value it does not take)."""
    k = pc + 1
    while k < len(steps) and type(steps[k]) is _AliasStep:
        k += 1
    event = steps[k] if k < len(steps) else None
    if type(event) is not _EventStep or event.n_args < 0:
        return None
    taken = []
    for alias in steps[pc:k]:
        for j in event.ref_pos:
            if event.args[j].slot == alias.out:
                break
        else:
            return None
        taken.append((alias.src, alias.out, j))
    rest = tuple((j, event.args[j].slot) for j in event.ref_pos
                 if all(j != t[2] for t in taken))
    if len(rest) + len(taken) != event.n_args:
        rest = None  # (an argument that is no tensor: compared as any event's)
    return k, event.n_args, tuple(taken), rest


class _Program:
    def __init__(self):
        self.slots = []
        self.steps = []
        # slot -> (shape, its SymDims): the shapes that checked calls with symbolic sizes
        # handed out, kept from call to call (`core._trace_option.symbolic_shape`)
        self.checked_shapes = {}
        self.in_tree = None
        self.arg_slots = ()
        self.out = None  # the encoded outputs
        self.n_ops = 0
        # values read to the host while recording (see `record._Recorder.read`): first as
        # (steps before the read, slot, value); then sorted into the tensor arguments read
        # (their leaf indices: their values are part of the signature, which the trace's
        # cache key holds) and the guards a replay checks
        self.reads = []
        self.arg_reads = ()
        self.guards = []
        self.first_reads = ()  # guards read before the first step
        self.out_refs = ()  # the slots of the output tensors, in `_tensors_in` order
        self.optimized = None  # the program with `arith_opt`'s rewrites: replays and dump run it
        # traced without capture_as_const: host data the function hands to a write (``w._reset(
        # np_array)``, ``w[...] = a``) is this call's, as upstream's trace takes it; checked calls
        # then accept another value of the recorded shape and dtype there
        self.feeds_host = False
        # symbolic shapes (see `shape_guards`): whether sizes were recorded as expressions
        # (a dumpable trace with symbolic_shape), the guards (tree, value, kind, source line)
        # of the sizes used otherwise, and whether runs check them (a loaded program)
        self.symbolic_shape = False
        self.shape_guards = []
        self.shape_guard_writes = []  # per recorded shape guard: the write events before it
        # (`dump_writes`: the sizes it reads are those of the values written by then)
        self.check_shapes = None  # a loaded program: `shape_guards.ShapeContext`
        # values whose shapes data decides (an output of a ``data_shaped`` op such as
        # cond_take, or computed from one); ``dyn_sizes``: their sizes were recorded as
        # expressions (symbolic_shape=True, as a dumpable trace records every size), so
        # replays compute them; else ``dyn_read``: those whose shapes the function read (slot
        # -> traced shape), which replays check (see `_dyn_checks`)
        self.dyn_slots = frozenset()
        self.dyn_sizes = False
        self.dyn_read = {}
        # slot -> the SymDims a shape tensor of the recording held (`shape_tensors`): checked
        # calls read shapes from them as the recording did
        self.sym_values = {}
        # the slots whose sizes the record used as expressions (`sized_slots`, made by
        # `compile`), and those a recording added because their SymDims decided a branch
        # (`core._trace_option.same_sizes`)
        self.dims_kept = set()
        self.sized_slots = frozenset()
        self.sized_order = ()

    def new_slot(self, kind, what=None):
        self.slots.append(_Slot(kind, what))
        return len(self.slots) - 1

    def describe(self, s):
        info = self.slots[s]
        k = info.kind
        if k == "arg":
            return f"the argument {info.what}"
        if k in ("op", "event"):
            return info.what
        if k == "alias":
            return f"a detached copy of {self.describe(info.what)}"
        if k == "grad":
            if info.owner_slot is not None:
                return f"the .grad of {self.describe(info.owner_slot)}"
            return f"the .grad of {_tensor_text(info.owner)}"
        if k == "ext":
            return f"the external {_tensor_text(info.tensor)}"
        if info.tensor is not None:
            return f"the external {_tensor_text(info.tensor)} (captured as a constant)"
        c = info.const
        return f"a constant {c.dtype} {tuple(c.shape)} tensor {_ArrayValue(c)!r}"

    def compile(self):
        """Prepare the steps for fast replay and drop each value after its last use."""
        n = len(self.slots)
        self.base = [None] * n
        self.consts, self.grads, self.fresh = [], [], []
        for i, info in enumerate(self.slots):
            if info.kind == "ext" and info.fresh is not None:
                self.fresh.append((i, info.fresh, info.device))
            elif info.kind == "ext":
                self.base[i] = info.tensor
            elif info.kind == "const":
                self.consts.append((i, info.const, info.device))
            elif info.kind == "grad":
                self.grads.append((i, info.owner, info.owner_slot))
        grad_slots = {i for i, _, _ in self.grads}
        # a checked call's start (see `check._Checker`): the tensor each external slot must be
        # (captured constants included: a checked call uses the same tensor, its value captured)
        self.check_base = [info.tensor if info.kind in ("ext", "const") else None
                           for info in self.slots]
        # which tensor objects come from outside a call (written into in place: an event);
        # check_base holds them, so their ids stay theirs
        self.ext_ids = frozenset(id(t) for t in self.check_base if t is not None)
        # capture_as_const: per captured external, what tells a checked call cheaply that it
        # still holds its captured value (see `captures`)
        from .captures import CaptureGuard
        self.capture_guards = {s: CaptureGuard(info.tensor, info.const)
                               for s, info in enumerate(self.slots)
                               if info.kind == "const" and info.tensor is not None}
        # the captures the program reads and then writes (`record._Recorder._written_capture`):
        # a replay, which computes with the captured value, first asks that the tensor still
        # holds it (the recording call left it so, or it was refused; a later call may not)
        written = {id(info.tensor) for info in self.slots
                   if info.kind == "ext" and info.fresh is None}
        self.replay_guards = tuple((s, g) for s, g in self.capture_guards.items()
                                   if id(g.tensor) in written)
        last = {}
        for k, step in enumerate(self.steps):
            for s in _slots_used(step):
                last[s] = k
            made = _made_by(step)
            for s in made:
                last.setdefault(s, k)
        by_pos = {}
        for pos, s, value in self.guards:
            by_pos.setdefault(pos, []).append((s, value))
            if pos:  # checked after step pos - 1: its value lives until then
                last[s] = max(last.get(s, pos - 1), pos - 1)
        guards = self.shape_guards if self.check_shapes is not None else ()
        if (self.dyn_slots or self.dyn_read) and self.check_shapes is None:
            guards = self._dyn_checks(by_pos)  # (replays where data decides shapes)
        if guards:  # a loaded program run at any shape: see shape_guards
            from .shape_guards import schedule
            for pos, guard in schedule(self, guards):
                by_pos.setdefault(pos, []).append(guard)
                for s in guard.slots:
                    if pos:
                        last[s] = max(last.get(s, pos - 1), pos - 1)
        self.first_reads = tuple(by_pos.pop(0, ()))
        self.out_refs = tuple(_refs_in(self.out))
        self.sized_slots = frozenset(_sized_slots(self))
        self.sized_order = tuple(sorted(self.sized_slots))
        # captured tensors written in the call whose sizes the record holds after the write
        # (`record._Recorder._written_capture`): id(tensor) -> (the live slot, the index of
        # the step that writes it first), for `check._Checker.dim_slot`
        self.sized_ext = {}
        for k, step in enumerate(self.steps):
            if type(step) is _EventStep and type(step.args) is tuple and step.args \
                    and type(step.args[0]) is _Ref:
                w = step.args[0].slot
                info = self.slots[w]
                if info.kind == "ext" and w in self.sized_slots and info.tensor is not None:
                    self.sized_ext.setdefault(id(info.tensor), (w, k))
        kept = set(self.out_refs)
        frees = {}
        steps = self.steps
        for s, k in last.items():
            if self.slots[s].kind in ("op", "alias", "event") and s not in kept:
                while type(steps[k]) is _AliasStep and k + 1 < len(steps):
                    # a checked call takes a detach() up as it checks the op or event that
                    # first uses it, the next step but aliases, and lets go after that step
                    # (an alias step's own frees never ran there: a detached value's source
                    # was kept to the end of the call)
                    k += 1
                frees.setdefault(k, []).append(s)
        # a checked call (see `check`): per step index k, how many op steps come before it,
        # and a bound on the slots that the arguments and the steps before it made
        self.ops_before = [0] * (len(self.steps) + 1)
        self.made_before = [max(self.arg_slots, default=-1) + 1] * (len(self.steps) + 1)
        for k, step in enumerate(self.steps):
            made = _made_by(step)
            self.ops_before[k + 1] = self.ops_before[k] + (type(step) is _OpStep)
            self.made_before[k + 1] = max(self.made_before[k], max(made, default=-1) + 1)
        # a checked call lets go of the values of at least FREE_BYTES (see `check._Checker._free`):
        # their sizes as recorded, from the ops that read them (unknown: taken as large)
        nbytes = {}
        for step in self.steps:
            if type(step) is _OpStep and step.metas is not None:
                for s, (shape, dtype) in zip(step.ins, step.metas):
                    nbytes[s] = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        for k, step in enumerate(self.steps):
            step.free = tuple(frees.get(k, ()))
            if type(step) is _OpStep:
                step.free_big = tuple(s for s in step.free
                                      if nbytes.get(s, FREE_BYTES) >= FREE_BYTES)
            step.reads = tuple(by_pos.get(k + 1, ()))
            if type(step) is _EventStep:
                # a checked call's fast path (see `check`): events called with positional
                # arguments only, none of them a structure, and where the tensors are
                if type(step.args) is tuple and not step.kwargs and not any(
                        isinstance(e, (tuple, list, dict, _Struct)) for e in step.args):
                    step.ref_pos = tuple(j for j, e in enumerate(step.args) if type(e) is _Ref)
                    step.n_args = len(step.args)
                    step.quiet = not step.ref_pos and not step.out_paths  # no tensor in or out
                    # a write into an external (``running_mean._reset(mean.detach())``, as
                    # batch norm writes its statistics): it rebinds none of its arguments (the
                    # external keeps its identity; the value is only read), so the fast path
                    # has nothing to note after it
                    step.writes_ext = (step.fn is Tensor._reset and step.n_args == 2
                                       and step.ref_pos[:1] == (0,) and not step.out_paths
                                       and self.slots[step.args[0].slot].kind == "ext")
            if type(step) is _OpStep:
                cls = type(step.template)
                step.cls = cls
                step.fast = _plain_instance(cls)
                step.tdict = step.template.__dict__ if step.fast else None
                step.may_be_none = any(s in grad_slots for s in step.ins)
                step.no_grad = (False,) * len(step.ins)
                # a checked call's fast path (see `check`): the parameters as one dict to
                # compare with the op's, when they are plain immutable values (else None: the
                # full path), for ops of one output or several (a training batch norm's three:
                # the fast path compares their number with ``outs``); per input its slot,
                # shape and dtype, and the guards of its captured inputs (position,
                # `captures.CaptureGuard`)
                # (a program loaded by `dump.load` has no input metas: it is only replayed)
                # (and None for a rewritten op: the slow path runs its replacement, unless
                # the op itself gives what the replacement gives: `_rewrite_is_the_op`)
                step.pdict = (_plain_params(step.template.__dict__)
                              if step.metas is not None
                              and (step.rewrite is None or _rewrite_is_the_op(step)) else None)
                # ``==`` takes a 1-element array (``x[idx_tensor]``, ``axis=np.array([1])``)
                # for the int it equals, in a tuple (an index, a shape, axes) or alone, which
                # `_op_key` does not, so a checked call also asks that the parameters hold
                # plain values: ``hashed`` picks those that hashing tests (an array being
                # unhashable; one item or a tuple of them, hashed at once), ``nested`` names
                # the others (a tuple or slice holding slices), walked by `_all_plain`
                nested = [k for k, v in (step.pdict or {}).items()
                          if type(v) in (tuple, slice) and not _hash_checks(v)]
                hashed = [k for k in (step.pdict or ()) if k not in nested]
                step.hashed = _itemgetter(*hashed) if hashed else None
                step.nested = tuple(nested) or None
                step.guards = tuple((j, self.capture_guards[s]) for j, s in enumerate(step.ins)
                                    if s in self.capture_guards)
                step.n_in = len(step.ins)
                # ... and for a small constant made from Python data (``x + 1.0``: a new tensor
                # on every call) the bytes of its value, which a checked call compares first.
                # A computed value's shape is not compared (None): the op, its parameters and
                # where its inputs come from are, so it can only differ where data decides it
                # (``x[x > 0]``, ``cond_take``, ``nms``), which a later call may do, as in
                # upstream's compiled graphs
                step.checks = tuple(
                    (s, None if self.slots[s].kind in _COMPUTED else shape, dtype,
                     self._const_bytes(s))
                    for s, (shape, dtype) in zip(step.ins, step.metas or ()))
                # (the same, flat, for ops of one or two inputs: what the fast path unpacks;
                # not for an op on a constant made from Python data, a new tensor every time)
                step.flat = (tuple(x for c in step.checks for x in c)
                             if len(step.checks) in (1, 2)
                             and all(c[3] is None for c in step.checks) else None)
                # (an op on a value and such a constant, ``x * 0.5``: the value's position and
                # checks, then the constant's)
                step.konst = None
                if len(step.checks) == 2 and step.flat is None:
                    c0, c1 = step.checks
                    if (c0[3] is None) != (c1[3] is None):
                        jr = 0 if c0[3] is None else 1
                        step.konst = (jr, *step.checks[jr][:3], 1 - jr, *step.checks[1 - jr])
                # (for ops of three inputs or more, none such a constant, as a training batch
                # norm's five or a linear layer's three: their slots' getter and their
                # recorded (shape, dtype) pairs, compared at once; a computed value whose
                # shape data changed takes the loop, which does not compare it)
                step.many = ((_itemgetter(*step.ins), list(step.metas))
                             if len(step.checks) >= 3
                             and all(c[3] is None for c in step.checks) else None)
                # what the op fast path asks beyond ``==`` (see `check._Checker.__call__`): the
                # number of inputs where no unpacking of ``flat`` tells it (-1: it does), the
                # parameters to hash and to walk; None where there is nothing to ask
                n_in = -1 if step.flat is not None else step.n_in
                step.pcheck = ((n_in, step.hashed, step.nested)
                               if n_in >= 0 or step.hashed is not None
                               or step.nested is not None else None)
        for k, step in enumerate(self.steps):
            if type(step) is _AliasStep:
                step.take = _detach_plan(self.steps, k)


    def _dyn_checks(self, by_pos):
        """What a replay checks of the values whose shapes data decides (``dyn_slots``): with
        sizes recorded as expressions, the op parameters built from them are computed from the
        replay's shapes (their expressions join the step's ``dyn``) and the guards that read
        them are returned, to be checked as a loaded program checks its guards; else each
        such value whose shape the function read must have its traced shape (checked after
        the step that makes it)."""
        from .shape_guards import FixedShape

        if not self.dyn_sizes:
            # (checked once the step that makes it has run: found in these steps, which are
            # not the recorded ones in the program `arith_opt.optimized` makes)
            made_at = {}
            for k, step in enumerate(self.steps):
                for s in _made_by(step):
                    made_at.setdefault(s, k)
            for s, shape in self.dyn_read.items():
                if s in made_at:
                    by_pos.setdefault(made_at[s] + 1, []).append(
                        FixedShape(s, shape, getattr(self, "loaded", False)))
            return ()
        from .arith_opt import is_identity_step

        dyn = self.dyn_slots
        for step in self.steps:
            if type(step) is _OpStep and step.sym and any(
                    s in dyn for _, f in step.sym for s in _refs_in(f)):
                sym = step.sym
                if is_identity_step(step):
                    # a rewrite whose result is its input (log(exp(a)) -> a): its input's shape
                    # at any shape; the values its recorded expression reads may not be made
                    # in the optimized program (`arith_opt.optimized` drops them)
                    sym = (("shape", (tuple, tuple(_DimExpr(("dim", step.ins[0], ax))
                                                   for ax in range(len(step.metas[0][0]))))),)
                step.dyn = tuple({**dict(step.dyn or ()), **dict(sym)}.items())
        from .shape_guards import _slots
        return [g for g in self.shape_guards if _slots(g[0]) & dyn]

    def _const_bytes(self, s):
        """The bytes of slot ``s``'s value when it is a small constant in host memory, else
        None: what a checked call compares a new tensor with first. A constant made from
        Python data (``x + 1.0``) is a new tensor on every call; under ``capture_as_const`` it
        was captured as an external (``info.tensor``, the first call's tensor), and a checked
        call accepts any tensor of its captured value there too (`check._Checker.check_source`),
        so both take this path."""
        info = self.slots[s]
        c = info.const
        if (info.kind != "const" or type(c) is not np.ndarray or c.nbytes > 64
                or c.dtype.metadata is not None):
            return None
        return c.tobytes()


def _plain_instance(cls):
    """True when ``cls.__new__(cls)`` plus a dict update is a correct copy of an instance."""
    if cls.__new__ is not object.__new__:
        return False
    for c in cls.__mro__[:-1]:
        d = c.__dict__
        if "__slots__" in d or "__copy__" in d or "__reduce__" in d or "__reduce_ex__" in d \
                or "__setstate__" in d:
            return False
    return True


def _rewrite_is_the_op(step):
    """Whether the arithmetic rewrite of op ``step`` (`arith_opt`) gives the values the op gives
    itself, so that a checked call may run the op on its fast path: ``a * 1``, ``1 * a`` and
    ``a ** 1`` as ``a`` unchanged in shape and dtype (``x * 1`` and ``x ** 1`` are ``x``, -0.0,
    inf and NaN included; ``a + 0`` is not: -0.0 + 0 is +0.0, nor is ``a * 0`` at inf). The
    slow path cost such an op ~7x an eager one (``x * 1.0``)."""
    from ..core.ops import Mul, Pow
    from .arith_opt import is_identity_step  # (arith_opt imports this module)

    rewrite = step.rewrite
    return step.cls in (Mul, Pow) and len(rewrite) == 1 and is_identity_step(rewrite[0])


def _plain_params(params):
    """``params`` (an op's ``__dict__``) as a dict that ``==`` compares exactly as `_op_key`
    would, or None where it would not: array values (compared by value or by the slot they
    come from), objects compared by identity, a stored ``needs_input_grad`` (left out of keys)."""
    if "needs_input_grad" in params:
        return None
    for v in params.values():
        if not _immutable(v):
            return None
    return dict(params)


def _immutable(v):
    if type(v) in _PLAIN or isinstance(v, (np.generic, np.dtype, type)):
        return True
    if type(v) is tuple:
        return all(_immutable(x) for x in v)
    if type(v) is slice:  # (an index: compares as the tuple of its three parts, as `_freeze`)
        return _immutable(v.start) and _immutable(v.stop) and _immutable(v.step)
    return False


def _hash_checks(v):
    """Whether hashing a value equal to ``v`` (a recorded `_immutable` tuple) tells that it holds
    plain values only: ``v`` holds no slice (unhashable itself) and no nested tuple."""
    return type(v) is tuple and all(type(x) in _PLAIN or isinstance(x, (np.generic, np.dtype, type))
                                    for x in v)


def _all_plain(v):
    """Whether tuple ``v`` (an op parameter equal to a recorded `_immutable` one) holds plain
    values only, through its tuples and slices: then ``==`` compared it as `_op_key` does."""
    for x in v:
        t = type(x)
        if t in _PLAIN:
            continue
        if t is slice:
            if type(x.start) in _PLAIN and type(x.stop) in _PLAIN and type(x.step) in _PLAIN:
                continue
            if not _all_plain((x.start, x.stop, x.step)):
                return False
        elif t is tuple:
            if not _all_plain(x):
                return False
        elif not isinstance(x, (np.generic, np.dtype, type)):
            return False
    return True


def _made_by(step):
    """The slots step ``step`` makes."""
    t = type(step)
    return (step.outs if t is _OpStep else (step.out,) if t is _AliasStep else
            [s for _, s in step.out_paths])


def _slots_used(step):
    t = type(step)
    if t is _OpStep:
        yield from step.ins
        for _, f in step.dyn or ():
            yield from _refs_in(f)
        for _, f in step.sym or ():
            yield from _refs_in(f)
    elif t is _AliasStep:
        yield step.src
    else:
        yield from _refs_in(step.args)
        yield from _refs_in(step.kwargs)


def _refs_in(enc):
    """The slots ``enc`` (see `_leaves`) refers to: its `_Ref`s and the sizes its expressions
    read."""
    for x in _leaves(enc):
        t = type(x)
        if t is _Ref:
            yield x.slot
        elif t is _DimExpr:
            yield from x.slots()


def _tensor_text(t):
    if t is None:
        return "tensor"
    name = f" {t.name!r}" if getattr(t, "_name", None) else ""
    return f"{type(t).__name__}{name} of shape {tuple(t.shape)} {t.dtype}"


def _decode(enc, values):
    """An encoded structure (see `_Recorder._encode`) with this replay's values put in."""
    t = type(enc)
    if t is _Ref:
        return values[enc.slot]
    if t is tuple or t is list:
        return t(_decode(x, values) for x in enc)
    if t is dict:
        return {k: _decode(x, values) for k, x in enc.items()}
    if t is _Struct:
        return enc.rebuild([_decode(x, values) for x in enc.items])
    return enc


class _Struct:
    """A tuple/list/dict subclass (a namedtuple, an OrderedDict) in an encoded structure."""

    __slots__ = ("cls", "keys", "items")

    def __init__(self, cls, keys, items):
        self.cls, self.keys, self.items = cls, keys, items

    def rebuild(self, items):
        if self.keys is not None:
            return self.cls(zip(self.keys, items))
        if hasattr(self.cls, "_make"):
            return self.cls._make(items)
        return self.cls(items)



def _step_text(step):
    t = type(step)
    if t is _OpStep:
        return f"op #{step.index} ({step.name})"
    if t is _AliasStep:
        return "a detach()"
    return f"a call of {step.name}()"


def _kind_text(kind):
    return {_OpStep: "an op", _AliasStep: "a detach()", _EventStep: "an event"}[kind]


def _tensors_in(value):
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _tensors_in(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors_in(v)


def _tensor_paths(value, path):
    if isinstance(value, Tensor):
        yield path, value
    elif isinstance(value, (tuple, list)):
        for i, v in enumerate(value):
            yield from _tensor_paths(v, path + (i,))
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _tensor_paths(v, path + (k,))


def _at_path(value, path):
    for p in path:
        value = value[p]
    return value

