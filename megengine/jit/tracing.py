"""`trace`: record a function's ops on its first call; later calls are checked against the record
(``symbolic=False``) or replay it without running the Python function (``symbolic=True``).

How it works. While a traced function runs for the first time, ``dispatch._trace_hook`` is a
`_Recorder`: every ``apply(op, *tensors)`` goes through it. It notes, per op, a pristine copy
of the op (taken before ``forward`` stores anything on it), where each input came from and the
slots of the outputs. A value's source ("slot") is one of

- an argument: a Tensor found in the arguments (through tuples, lists and dicts);
- an output of an earlier op (or a detached alias of one: ``t.detach()``);
- an external tensor: one the function did not make (a Parameter, a buffer, a global). It is
  kept by reference and read live on replay, so in-place updates (optimizers, ``load_state_dict``)
  are seen. With ``capture_as_const=True`` its value at trace time is used instead;
- the ``.grad`` of a tensor (read live: gradients are new tensors on every backward);
- a constant: a tensor made inside the function from Python data (``x * 2``,
  ``mge.tensor(np_array)``), told apart from externals because nothing outside the function
  holds it once the call returns. Its value is captured;
- an output of an event (below).

Besides ops, the record holds *events*: calls that change state without being ops. The engine
announces them through ``dispatch._trace_hook.event(fn, *args)`` (see "Hooks" below):
``GradManager.record/release/backward``, ``Optimizer.step/clear_grad/zero_grad`` and the
in-place tensor writes ``Tensor._inplace`` (``p -= lr * g``, ``x[i] = v``) and ``Tensor._reset``
(``set_value``). An event runs with the hook off (the ops inside a backward or an optimizer step
are not recorded; they run again when the event is replayed) and is replayed by calling the same
function on the same objects, with traced tensors substituted.

Replay (``symbolic=True``, second call on): the arguments are checked against the recorded
structure, shapes and dtypes; then each step runs on fresh op copies through ``apply`` (so a
recording GradManager still builds the autodiff graph), events are called again, and the outputs
are rebuilt. The Python function does not run: its Python side effects (prints, ``.numpy()``
reads, appending to lists, data-dependent branches) happen on the first call only.

Checking (``symbolic=False``, second call on): the function runs normally and each op and event
is compared with the record (op type and parameters, input sources, input shapes and dtypes);
the first difference raises `TraceMismatchError`. Its job is to prove a function traceable.

Hooks. The engine's side of the contract is one global read per call, ``dispatch._trace_hook``,
checked in ``apply`` and at the start of each event method::

    if dispatch._trace_hook is not None:  # megengine.jit.trace records this call as an event
        return dispatch._trace_hook.event(GradManager.backward, self, y, dy)

Nothing is patched. Tracing is not thread-safe: one traced call runs at a time.
"""
import contextlib
import copy
import functools
import inspect
import weakref
from collections.abc import Iterator

import numpy as np

from ..autodiff.function import _FunctionOp
from ..core import dispatch
from ..core.tensor import Tensor

__all__ = ["trace", "TraceError", "TraceMismatchError", "exclude_from_trace", "is_tracing"]


class TraceError(RuntimeError):
    """A function cannot be traced, or a traced function cannot run as asked."""


class TraceMismatchError(TraceError):
    """A call of a traced function does not match what its first call recorded."""


_HINT = ("A traced function must apply the same ops, to values from the same places, with the "
         "same shapes and dtypes, on every call (no data-dependent Python control flow). "
         "Keep the inputs fixed, or create a new trace for the new case.")


# --------------------------------------------------------------------------------------------
# Comparable snapshots of op parameters and non-tensor arguments
# --------------------------------------------------------------------------------------------
_PLAIN = frozenset({type(None), bool, int, float, complex, str, bytes, type(Ellipsis)})


def _is_array(v):
    return isinstance(v, np.ndarray) or type(v).__module__.startswith("cupy")


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
    if _is_array(v):
        s = array_slot(v)
        return _Ref(s, raw=True) if s is not None else _ArrayValue(v)
    return _Same(v)


def _has_ref(frozen):
    if type(frozen) is _Ref:
        return True
    if type(frozen) is tuple:
        return any(_has_ref(x) for x in frozen)
    return False


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

    def __repr__(self):
        return f"a Tensor of shape {self.shape} {self.dtype} on {self.device}"


class _ValueLeaf:
    """A non-tensor argument: Python scalars and strings by value, arrays by value, others by
    identity (a module passed in is the same module)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __eq__(self, other):
        if type(other) is not _ValueLeaf:
            return False
        a, b = self.value, other.value
        if type(a) is not type(b):
            return False
        if type(a) in _PLAIN or isinstance(a, (np.generic, np.dtype)):
            return bool(a == b) or a is b
        if _is_array(a):
            return _ArrayValue(a) == _ArrayValue(b)
        return a is b

    def __repr__(self):
        v = self.value
        if type(v) in _PLAIN or isinstance(v, np.generic):
            return repr(v)
        if _is_array(v):
            return f"the array {_ArrayValue(v)!r}"
        return f"a {type(v).__name__} object (compared by identity)"


def _flatten(value, leaves):
    """The structure of ``value`` with tensors (appended to ``leaves``) as `_TensorLeaf`s."""
    if isinstance(value, Tensor):
        leaves.append(value)
        return _TensorLeaf(value)
    if isinstance(value, (tuple, list)):
        return (type(value), tuple(_flatten(v, leaves) for v in value))
    if isinstance(value, dict):
        return (type(value), tuple(value.keys()), tuple(_flatten(v, leaves) for v in value.values()))
    return _ValueLeaf(value)


def _flat_match(flat, args, kwargs, strict):
    """The fast check for the usual call, positional tensors only: True when ``args`` match."""
    if flat is None or kwargs or len(args) != len(flat):
        return False
    for a, leaf in zip(args, flat):
        if not isinstance(a, Tensor):
            return False
        if strict:
            data = a._data
            if data.shape != leaf.shape or data.dtype != leaf.dtype or a._device != leaf.device:
                return False
    return True


def _tree_diff(rec, now, where, strict):
    """The first difference between two argument trees, as (where, recorded, now), or None.

    Not ``strict``: only the nesting and the positions of tensors must agree.
    """
    if type(rec) is not type(now):
        return where, _tree_text(rec), _tree_text(now)
    if type(rec) is _TensorLeaf:
        return None if not strict or rec == now else (where, repr(rec), repr(now))
    if type(rec) is _ValueLeaf:
        return None if not strict or rec == now else (where, repr(rec), repr(now))
    if rec[0] is not now[0]:
        return where, _tree_text(rec), _tree_text(now)
    if len(rec) == 3:  # a dict
        if rec[1] != now[1]:
            return where, f"a dict with keys {list(rec[1])}", f"a dict with keys {list(now[1])}"
        items = zip(rec[1], rec[2], now[2])
        for k, r, n in items:
            d = _tree_diff(r, n, f"{where}[{k!r}]", strict)
            if d:
                return d
        return None
    if len(rec[1]) != len(now[1]):
        return (where, f"a {rec[0].__name__} of {len(rec[1])} items",
                f"a {now[0].__name__} of {len(now[1])} items")
    for i, (r, n) in enumerate(zip(rec[1], now[1])):
        d = _tree_diff(r, n, f"{where}[{i}]", strict)
        if d:
            return d
    return None


def _tree_text(tree):
    if type(tree) in (_TensorLeaf, _ValueLeaf):
        return repr(tree)
    return f"a {tree[0].__name__}"


# --------------------------------------------------------------------------------------------
# The recorded program
# --------------------------------------------------------------------------------------------
class _Slot:
    """Where one value of the program comes from (see the module docstring)."""

    __slots__ = ("kind", "what", "tensor", "owner", "const", "device", "step")

    def __init__(self, kind, what=None):
        self.kind = kind  # "arg", "op", "alias", "event", "ext", "grad" or "const"
        self.what = what  # for messages: an argument path, or "output 0 of op #3 (MatMul)"
        self.tensor = None  # "ext": the live tensor; "const" by capture_as_const: the tensor
        self.owner = None  # "grad": the tensor whose .grad this is
        self.const = None  # "const": the captured array
        self.device = None
        self.step = None  # index of the step that makes it ("op", "alias", "event")


class _OpStep:
    __slots__ = ("index", "template", "key", "dyn", "ins", "metas", "outs", "multi", "name",
                 "free", "fast", "tdict", "cls", "may_be_none", "no_grad")

    def __init__(self, index, template, key, dyn, ins, metas, outs, multi, name):
        self.index, self.template, self.key, self.dyn = index, template, key, dyn
        self.ins, self.metas, self.outs, self.multi, self.name = ins, metas, outs, multi, name
        self.free = ()


class _AliasStep:
    """``t.detach()`` (or another wrapper of the same array without its autodiff link)."""

    __slots__ = ("src", "out", "free")

    def __init__(self, src, out):
        self.src, self.out, self.free = src, out, ()


class _EventStep:
    __slots__ = ("fn", "args", "kwargs", "out_paths", "name", "free")

    def __init__(self, fn, args, kwargs):
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.out_paths = []  # (path into the result, slot) for new tensors it returned
        self.name = getattr(fn, "__qualname__", repr(fn))
        self.free = ()


class _Program:
    def __init__(self):
        self.slots = []
        self.steps = []
        self.in_tree = None
        self.flat = None  # the _TensorLeafs when the arguments are positional tensors only
        self.arg_slots = ()
        self.out = None  # the encoded outputs
        self.n_ops = 0

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
            return f"the .grad of {_tensor_text(info.owner)}"
        if k == "ext":
            return f"the external {_tensor_text(info.tensor)}"
        if info.tensor is not None:
            return f"the external {_tensor_text(info.tensor)} (captured as a constant)"
        c = info.const
        return f"a constant {c.dtype} {tuple(c.shape)} tensor {_ArrayValue(c)!r}"

    def compile(self):
        """Prepare the steps for fast replay and drop each value after its last use."""
        (_, (args, kwargs)) = self.in_tree
        if not kwargs[1] and all(type(a) is _TensorLeaf for a in args[1]):
            self.flat = args[1]
        n = len(self.slots)
        self.base = [None] * n
        self.consts, self.grads = [], []
        for i, info in enumerate(self.slots):
            if info.kind == "ext":
                self.base[i] = info.tensor
            elif info.kind == "const":
                self.consts.append((i, info.const, info.device))
            elif info.kind == "grad":
                self.grads.append((i, info.owner))
        grad_slots = {i for i, _ in self.grads}
        last = {}
        for k, step in enumerate(self.steps):
            for s in _slots_used(step):
                last[s] = k
            made = (step.outs if type(step) is _OpStep else
                    (step.out,) if type(step) is _AliasStep else [s for _, s in step.out_paths])
            for s in made:
                last.setdefault(s, k)
        kept = set(_refs_in(self.out))
        frees = {}
        for s, k in last.items():
            if self.slots[s].kind in ("op", "alias", "event") and s not in kept:
                frees.setdefault(k, []).append(s)
        for k, step in enumerate(self.steps):
            step.free = tuple(frees.get(k, ()))
            if type(step) is _OpStep:
                cls = type(step.template)
                step.cls = cls
                step.fast = _plain_instance(cls)
                step.tdict = step.template.__dict__ if step.fast else None
                step.may_be_none = any(s in grad_slots for s in step.ins)
                step.no_grad = (False,) * len(step.ins)


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


def _slots_used(step):
    t = type(step)
    if t is _OpStep:
        yield from step.ins
        for _, f in step.dyn or ():
            yield from _refs_in(f)
    elif t is _AliasStep:
        yield step.src
    else:
        yield from _refs_in(step.args)
        yield from _refs_in(step.kwargs)


def _refs_in(enc):
    t = type(enc)
    if t is _Ref:
        yield enc.slot
    elif t is tuple or t is list:
        for x in enc:
            yield from _refs_in(x)
    elif t is dict:
        for x in enc.values():
            yield from _refs_in(x)
    elif t is _Struct:
        for x in enc.items:
            yield from _refs_in(x)


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


# --------------------------------------------------------------------------------------------
# The hook: records the first call, checks later ones (symbolic=False)
# --------------------------------------------------------------------------------------------
class _Recorder:
    """``dispatch._trace_hook`` while a traced function runs (its first call, or a checked call)."""

    def __init__(self, tr, program, checking):
        self.trace = tr
        self.prog = program
        self.checking = checking
        self.const_mode = tr._capture_as_const
        self.pc = 0  # checking: the next step to compare with
        self.n_ops = 0
        self.failed = False
        self.by_tensor = {}  # id(tensor) -> (slot, the array it had then)
        self.by_array = {}  # id(array) -> slot
        self.slot_tensor = {}  # slot -> the tensor that holds its value in this call
        self.keep = []  # every tensor keyed above stays alive during the call: ids stay unique
        self.ext_by_tensor = {}  # recording: id(external tensor) -> slot
        self.ext_seen = set()  # ids of the external tensors used so far (kept alive in keep)
        self.unresolved = []  # recording: "ext" slots that may turn out to be a .grad
        self.candidates = {}  # id -> tensor whose .grad a function may read
        self.rec_level = dispatch._recording  # GradManagers recording; changes only in events
        self.rec_changed = False

    # ----- values and where they come from -----
    def _register(self, t, slot):
        arr = t._data
        self.by_tensor[id(t)] = (slot, arr)
        self.by_array[id(arr)] = slot
        self.slot_tensor[slot] = t
        self.keep.append(t)
        self.keep.append(arr)  # a rebound tensor no longer holds it, but its id is a key

    def bind_args(self, leaves):
        if self.checking:
            for s, t in zip(self.prog.arg_slots, leaves):
                self._register(t, s)
            return
        slots = []
        for i, t in enumerate(leaves):
            s = self.prog.new_slot("arg")
            slots.append(s)
            self._register(t, s)
            self.candidates[id(t)] = t
        self.prog.arg_slots = tuple(slots)

    def _array_slot(self, arr):
        return self.by_array.get(id(arr))

    def _internal(self, t):
        """(slot, is_alias) of a tensor holding a value of this call, or (None, False)."""
        e = self.by_tensor.get(id(t))
        if e is not None and e[1] is t._data:
            return e[0], False
        s = self.by_array.get(id(t._data))
        if s is None:
            return None, False
        node = t._node
        if node is not None and node == self.slot_tensor[s]._node:
            return s, False  # the same value and autodiff link, in another tensor object
        return s, True  # the same array without its autodiff link: a detached alias

    def source(self, t):
        """Recording: the slot ``t``'s value comes from, adding aliases and externals."""
        s, alias = self._internal(t)
        if s is not None:
            if not alias:
                return s
            out = self.prog.new_slot("alias", s)
            self.prog.slots[out].step = len(self.prog.steps)
            self.prog.steps.append(_AliasStep(s, out))
            self._register(t, out)
            return out
        s = self.ext_by_tensor.get(id(t))
        if s is None:
            s = self.prog.new_slot("ext")
            info = self.prog.slots[s]
            info.tensor, info.device = t, t._device
            info.const = t._data
            if self.const_mode:
                info.kind = "const"
                info.const = t._data.copy()
            else:
                self.unresolved.append(s)
            self.ext_by_tensor[id(t)] = s
            self.ext_seen.add(id(t))
            self.keep.append(t)
            self.candidates[id(t)] = t
        return s

    def check_source(self, t, expected, where):
        """Checking: raise unless ``t`` comes from where the recorded ``expected`` slot did."""
        prog = self.prog
        s, alias = self._internal(t)
        if s is not None:
            if alias:
                step = self._expect(_AliasStep, where)
                if step.src != s:
                    self._mismatch(f"{where}: the trace detached {prog.describe(step.src)}, this "
                                   f"call detached {prog.describe(s)}")
                self._register(t, step.out)
                s = step.out
            if s != expected:
                self._mismatch(f"{where}: the trace used {prog.describe(expected)}, this call "
                               f"used {prog.describe(s)}")
            return
        info = prog.slots[expected]
        kind = info.kind
        if kind == "ext" or (kind == "const" and info.tensor is not None):
            ok = t is info.tensor
        elif kind == "grad":
            ok = t is info.owner.grad
        elif kind == "const":
            c = info.const
            ok = (t._data.shape == c.shape and t._data.dtype == c.dtype
                  and bool((_host(t._data) == _host(c)).all()))
        else:
            ok = False
        if ok:
            self.ext_seen.add(id(t))
            self.keep.append(t)
        else:
            now = (f"a tensor made outside the traced ops ({_tensor_text(t)}"
                   + (f", value {_ArrayValue(t._data)!r}" if t.size <= 8 else "") + ")")
            self._mismatch(f"{where}: the trace used {prog.describe(expected)}, this call used "
                           f"{now}")

    def _next_main(self, where):
        """Checking: (index, step) of the next op or event step, past detach() steps."""
        steps = self.prog.steps
        k = self.pc
        while k < len(steps) and type(steps[k]) is _AliasStep:
            k += 1
        if k >= len(steps):
            self._mismatch(f"{where}: the trace ended after {self.prog.n_ops} ops, but this "
                           "call goes on")
        return k, steps[k]

    def _done_aliases(self, k, where):
        """Checking: the detach() steps before step ``k`` were all matched; move past ``k``."""
        if self.pc != k:
            src = self.prog.describe(self.prog.steps[self.pc].src)
            self._mismatch(f"{where}: the trace detached {src} before this step; this call "
                           "did not")
        self.pc = k + 1

    def _expect(self, kind, where):
        steps = self.prog.steps
        if self.pc >= len(steps):
            self._mismatch(f"{where}: the trace ended after {self.prog.n_ops} ops, but this call "
                           "goes on")
        step = steps[self.pc]
        if type(step) is not kind:
            self._mismatch(f"{where}: the trace has {_step_text(step)} here, this call has "
                           f"{_kind_text(kind)}")
        self.pc += 1
        return step

    def _mismatch(self, message):
        self.failed = True
        if dispatch._trace_hook is self:
            dispatch._trace_hook = None  # code in the user's finally/except blocks runs plainly
        raise TraceMismatchError(f"{message}. {_HINT}")

    # ----- ops -----
    def __call__(self, op, inputs):
        if dispatch._recording != self.rec_level:
            self.rec_changed = True
        if self.checking:
            return self._check_op(op, inputs)
        ins = tuple(self.source(t) for t in inputs)
        key, dyn = _op_key(op, self._array_slot)
        template = copy.copy(op)
        out = self._run(op, inputs)
        index = self.n_ops
        self.n_ops += 1
        multi = isinstance(out, tuple)
        outs = out if multi else (out,)
        prog = self.prog
        name = repr(op)
        slots = []
        for i, o in enumerate(outs):
            s = prog.new_slot("op", f"output {i} of op #{index} ({name})")
            prog.slots[s].step = len(prog.steps)
            self._register(o, s)
            slots.append(s)
        metas = tuple((t.shape, t.dtype) for t in inputs)
        prog.steps.append(_OpStep(index, template, key, dyn, ins, metas, tuple(slots), multi, name))
        prog.n_ops = self.n_ops
        return out

    def _check_op(self, op, inputs):
        index = self.n_ops
        where = _Where(index, op)  # formatted only for an error message
        k, step = self._next_main(where)
        if type(step) is not _OpStep:
            self._mismatch(f"{where}: the trace has {_step_text(step)} here, this call applies "
                           "an op")
        key, _ = _op_key(op, self._array_slot)
        if key[0] is not step.key[0] or (key[0] is _FunctionOp and key[1] is not step.key[1]):
            self._mismatch(f"op #{index}: the trace applied {step.name}, this call applies "
                           f"{op!r}")
        if key != step.key:
            self._mismatch(f"{where}: the parameters differ: the trace had "
                           f"{_describe_params(step.key)}; this call has {_describe_params(key)}")
        if len(inputs) != len(step.ins):
            self._mismatch(f"{where}: the trace gave it {len(step.ins)} inputs, this call "
                           f"{len(inputs)}")
        for j, (t, expected, meta) in enumerate(zip(inputs, step.ins, step.metas)):
            self.check_source(t, expected, _Where(index, op, j))
            if t._data.shape != meta[0] or t._data.dtype != meta[1]:
                self._mismatch(f"{where}, input {j}: the trace had shape {meta[0]} {meta[1]}, "
                               f"this call has shape {t.shape} {t.dtype}")
        self._done_aliases(k, where)
        out = self._run(op, inputs)
        self.n_ops += 1
        outs = out if isinstance(out, tuple) else (out,)
        if len(outs) != len(step.outs):
            self._mismatch(f"{where}: the trace had {len(step.outs)} outputs, this call has "
                           f"{len(outs)}")
        for o, s in zip(outs, step.outs):
            self._register(o, s)
        return out

    def _run(self, op, inputs):
        dispatch._trace_hook = None  # an op's forward may apply ops itself: those are its own
        try:
            return dispatch.apply(op, *inputs)
        finally:
            if not self.failed:
                dispatch._trace_hook = self

    # ----- events -----
    def event(self, fn, *args, **kwargs):
        """Run ``fn(*args, **kwargs)`` (with tracing off) and record it as one step."""
        # a generator (model.parameters()) would be empty on replay: keep what it yields
        if any(isinstance(a, Iterator) for a in args):
            args = tuple(list(a) if isinstance(a, Iterator) else a for a in args)
        if any(isinstance(a, Iterator) for a in kwargs.values()):
            kwargs = {k: list(a) if isinstance(a, Iterator) else a for k, a in kwargs.items()}
        if self.checking:
            name = getattr(fn, "__qualname__", repr(fn))
            k, step = self._next_main(f"the call {name}()")
            if type(step) is not _EventStep or step.fn is not fn:
                self._mismatch(f"after op #{self.n_ops - 1}: the trace has {_step_text(step)} "
                               f"here, this call calls {name}()")
            self._match(args, step.args, f"the arguments of {step.name}()")
            self._match(kwargs, step.kwargs, f"the arguments of {step.name}()")
            self._done_aliases(k, f"the call {name}()")
        else:
            self._resolve_grads()
            step = _EventStep(fn, self._encode(args), self._encode(kwargs))
            self.prog.steps.append(step)
        dispatch._trace_hook = None
        try:
            result = fn(*args, **kwargs)
        finally:
            if not self.failed:
                dispatch._trace_hook = self
        self.rec_level = dispatch._recording
        self._after_event(step, args, kwargs, result)
        return result

    def _after_event(self, step, args, kwargs, result):
        for obj in args:
            attached = getattr(obj, "attached_tensors", None)
            if callable(attached):  # a GradManager: its tensors' .grad may be read later
                for t in attached():
                    self.candidates[id(t)] = t
            groups = getattr(obj, "param_groups", None)
            if isinstance(groups, list):  # an Optimizer
                for g in groups:
                    for t in g.get("params", ()) if isinstance(g, dict) else ():
                        self.candidates[id(t)] = t
        # A tensor rebound to another value (Tensor._inplace on a non-Parameter) now holds that
        # value: later uses must come from its slot.
        for t in _tensors_in((args, kwargs)):
            e = self.by_tensor.get(id(t))
            if e is not None and e[1] is t._data:
                continue
            s = self.by_array.get(id(t._data))
            if s is not None:
                self.by_tensor[id(t)] = (s, t._data)
                self.keep.append(t)
        # New tensors it returned (megengine.autodiff.grad's gradients) become event slots.
        fresh = [(path, t) for path, t in _tensor_paths(result, ())
                 if self._internal(t)[0] is None and id(t) not in self.ext_seen]
        if self.checking:
            if len(fresh) != len(step.out_paths):
                self._mismatch(f"{step.name}(): the trace got {len(step.out_paths)} new tensors "
                               f"from it, this call {len(fresh)}")
            for (_, t), (_, s) in zip(fresh, step.out_paths):
                self._register(t, s)
            return
        for path, t in fresh:
            s = self.prog.new_slot("event", f"a tensor returned by {step.name}()")
            self.prog.slots[s].step = len(self.prog.steps) - 1
            step.out_paths.append((path, s))
            self._register(t, s)

    def _encode(self, value):
        """``value`` with tensors replaced by `_Ref`s to their slots (recording)."""
        if isinstance(value, Tensor):
            return _Ref(self.source(value))
        t = type(value)
        if t is tuple or t is list:
            return t(self._encode(v) for v in value)
        if t is dict:
            return {k: self._encode(v) for k, v in value.items()}
        if isinstance(value, dict):
            keys = list(value.keys())
            return _Struct(t, keys, [self._encode(value[k]) for k in keys])
        if isinstance(value, (tuple, list)):
            return _Struct(t, None, [self._encode(v) for v in value])
        return value

    def _match(self, value, enc, where):
        """Checking: raise unless ``value`` encodes to the recorded ``enc``."""
        if type(enc) is _Ref:
            if not isinstance(value, Tensor):
                self._mismatch(f"{where}: the trace passed {self.prog.describe(enc.slot)}, this "
                               f"call passes {type(value).__name__}")
            self.check_source(value, enc.slot, where)
            return
        if isinstance(value, Tensor):
            self._mismatch(f"{where}: the trace passed {enc!r}, this call passes a Tensor")
        t = type(enc)
        if t is _Struct:
            items = [value[k] for k in enc.keys] if enc.keys is not None else list(value)
            if type(value) is not enc.cls or len(items) != len(enc.items):
                self._mismatch(f"{where}: the structure differs from the trace")
            for v, e in zip(items, enc.items):
                self._match(v, e, where)
        elif t is tuple or t is list or t is dict:
            if type(value) is not t or len(value) != len(enc) or (
                    t is dict and list(value) != list(enc)):
                self._mismatch(f"{where}: the structure differs from the trace")
            pairs = zip(value.values(), enc.values()) if t is dict else zip(value, enc)
            for v, e in pairs:
                self._match(v, e, where)
        elif not (_ValueLeaf(value) == _ValueLeaf(enc)):
            self._mismatch(f"{where}: the trace passed {_ValueLeaf(enc)!r}, this call passes "
                           f"{_ValueLeaf(value)!r}")

    def _resolve_grads(self):
        """Recording: externals that are some tensor's ``.grad`` must be read live as such."""
        if not self.unresolved:
            return
        owners = {}
        for a in self.candidates.values():
            g = getattr(a, "grad", None)
            if isinstance(g, Tensor):
                owners[id(g)] = a
        still = []
        for s in self.unresolved:
            info = self.prog.slots[s]
            a = owners.get(id(info.tensor))
            if a is not None and a.grad is info.tensor:
                info.kind, info.owner, info.tensor, info.const = "grad", a, None, None
            else:
                still.append(s)
        self.unresolved = still

    # ----- the end of a call -----
    def finish_recording(self, outputs):
        prog = self.prog
        prog.out = self._encode(outputs)
        self._resolve_grads()
        if self.rec_changed or dispatch._recording != self.rec_level:
            raise TraceError(
                "a GradManager started or stopped recording inside the traced function without "
                "telling the tracer: GradManager.record/release/backward must carry the "
                "megengine.jit trace hooks (see megengine/jit/tracing.py)")
        # Externals nothing else holds once the call is over were made inside it from Python
        # data: they are constants. The others (Parameters, buffers, globals) stay live.
        weak = []
        for s in self.unresolved:
            info = prog.slots[s]
            weak.append((s, weakref.ref(info.tensor)))
            info.tensor = None
        self.keep.clear()
        self.by_tensor.clear()
        self.by_array.clear()
        self.slot_tensor.clear()
        self.candidates.clear()
        for s, ref in weak:
            info = prog.slots[s]
            t = ref()
            if t is None:
                info.kind = "const"
            else:
                info.tensor, info.const = t, None

    def finish_checking(self, outputs):
        for t in _tensors_in(outputs):  # detached outputs: the recording added a step for each
            s, alias = self._internal(t)
            if alias:
                step = self._expect(_AliasStep, "the outputs")
                if step.src != s:
                    self._mismatch(f"the outputs: the trace detached {self.prog.describe(step.src)}"
                                   f", this call detached {self.prog.describe(s)}")
                self._register(t, step.out)
        if self.pc != len(self.prog.steps):
            rest = self.prog.steps[self.pc]
            self._mismatch(f"the call ended after {self.n_ops} ops, but the trace goes on with "
                           f"{_step_text(rest)}")


class _Where:
    """Where a check failed ("op #3 (MatMul), input 1"), made into text only for a message."""

    __slots__ = ("index", "op", "j")

    def __init__(self, index, op, j=None):
        self.index, self.op, self.j = index, op, j

    def __str__(self):
        text = f"op #{self.index} ({self.op!r})"
        return text if self.j is None else f"{text}, input {self.j}"


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


# --------------------------------------------------------------------------------------------
# The public API
# --------------------------------------------------------------------------------------------
class trace:
    """Wrap a function so its ops are recorded on the first call and reused on later calls.

    Usage: ``@trace``, ``@trace(symbolic=True)``, ``trace(fn, symbolic=True)``.

    ``symbolic=False`` (upstream's default): later calls run the function again and check that
    it applies the same ops as the first call, to values from the same places, with the same
    shapes and dtypes; the first difference raises `TraceMismatchError`. Use it to find out
    whether a function is traceable; it runs at eager speed.

    ``symbolic=True``: later calls do not run the Python function; they replay the recorded ops
    and events (GradManager record/backward/release, optimizer steps, in-place writes) on the
    new arguments, which must have the structure, shapes and dtypes of the first call's
    (else `TraceMismatchError`; create a new trace for new shapes). Parameters and other
    tensors from outside the function are read live, so optimizer updates are seen. Python
    code in the function (prints, ``.numpy()``/``.item()`` reads, branches on values, tensors
    made from Python or numpy data, ``megengine.random`` draws, which are such data) runs on
    the first call only: what it produced is a constant of the trace. Ops that draw random
    numbers in their forward (dropout) draw fresh ones on every replay. Non-tensor arguments
    are constants too: a replay with a different value raises.

    ``capture_as_const=True``: tensors from outside the function are captured by value at
    trace time (upstream uses this for ``dump``); later changes to them are not seen.

    Differences from upstream, by design of this fork: the first call always runs eagerly
    (values can be read in it), shapes are static, ``dump`` is not supported, the options for
    upstream's graph compiler (``sublinear_memory_config``, ``dtr_config``, ``opt_level``,
    ``graph_opt_config``, ``symbolic_shape``) are accepted and have no effect, and
    `exclude_from_trace` regions do not run on a ``symbolic=True`` replay.
    """

    def __new__(cls, *args, **kwargs):
        if not args and "function" not in kwargs:
            return functools.partial(cls, **kwargs)  # @trace(symbolic=True)
        return super().__new__(cls)

    def __init__(self, function, symbolic=False, capture_as_const=False, record_only=False,
                 sublinear_memory_config=None, dtr_config=None, profiling=False, opt_level=2,
                 graph_opt_config=None, symbolic_shape=True):
        if not callable(function):
            raise TypeError(f"trace: expected a function to trace, got {type(function).__name__}")
        if record_only:
            raise NotImplementedError(
                "trace(record_only=True) only serves dump(), and serializing traced graphs is "
                "not supported in this fork")
        self.__wrapped__ = function
        if inspect.isfunction(function) or inspect.ismethod(function):
            functools.update_wrapper(self, function, updated=())
        self._symbolic = bool(symbolic)
        self._capture_as_const = bool(capture_as_const)
        self._profiling = bool(profiling)
        self._program = None

    def __get__(self, obj, objtype=None):
        # @trace on a method: bind the instance (a replay checks it is the same instance)
        return self if obj is None else functools.partial(self, obj)

    def __repr__(self):
        name = getattr(self.__wrapped__, "__qualname__", repr(self.__wrapped__))
        state = "not traced yet" if self._program is None else f"{self._program.n_ops} ops"
        return f"<trace of {name} (symbolic={self._symbolic}, {state})>"

    def __call__(self, *args, **kwargs):
        if self._program is None:
            return self._record(args, kwargs)
        if self._symbolic:
            return self._replay(args, kwargs)
        return self._check(args, kwargs)

    # ----- first call -----
    def _record(self, args, kwargs):
        _not_nested()
        prog = _Program()
        leaves = []
        prog.in_tree = _flatten((args, kwargs), leaves)
        rec = _Recorder(self, prog, checking=False)
        rec.bind_args(leaves)
        dispatch._trace_hook = rec
        try:
            outputs = self.__wrapped__(*args, **kwargs)
        finally:
            dispatch._trace_hook = None
        rec.finish_recording(outputs)
        prog.compile()
        self._program = prog
        return outputs

    # ----- symbolic=False: run again and compare -----
    def _check(self, args, kwargs):
        _not_nested()
        prog = self._program
        if not _flat_match(prog.flat, args, kwargs, False):
            leaves = []
            tree = _flatten((args, kwargs), leaves)
            diff = _tree_diff(prog.in_tree, tree, "", strict=False)
            if diff is not None:
                raise TraceMismatchError(self._input_message(diff, "the positions of tensors in"))
        else:
            leaves = args
        rec = _Recorder(self, prog, checking=True)
        rec.bind_args(leaves)
        dispatch._trace_hook = rec
        try:
            outputs = self.__wrapped__(*args, **kwargs)
        finally:
            dispatch._trace_hook = None
        rec.finish_checking(outputs)
        return outputs

    # ----- symbolic=True: replay without Python -----
    def _replay(self, args, kwargs):
        prog = self._program
        if not _flat_match(prog.flat, args, kwargs, True):
            leaves = []
            tree = _flatten((args, kwargs), leaves)
            if tree != prog.in_tree:
                diff = _tree_diff(prog.in_tree, tree, "", strict=True)
                raise TraceMismatchError(self._input_message(diff, "the arguments of"))
        else:
            leaves = args
        values = prog.base.copy()
        for s, t in zip(prog.arg_slots, leaves):
            values[s] = t
        for s, arr, device in prog.consts:
            values[s] = Tensor._wrap(arr, device)
        for s, owner in prog.grads:
            values[s] = owner.grad
        apply, wrap = dispatch.apply, Tensor._wrap
        for step in prog.steps:
            t = type(step)
            if t is _OpStep:
                if step.fast:
                    op = step.cls.__new__(step.cls)
                    op.__dict__.update(step.tdict)
                else:
                    op = copy.copy(step.template)
                if step.dyn is not None:
                    for name, frozen in step.dyn:
                        setattr(op, name, _thaw(frozen, values))
                ins = [values[s] for s in step.ins]
                if step.may_be_none and any(v is None for v in ins):
                    raise TraceError(
                        f"replaying op #{step.index} ({step.name}): it reads the .grad of a tensor "
                        "whose .grad is None now (it was set when the function was traced)")
                if dispatch._recording or dispatch._trace_hook is not None:
                    out = apply(op, *ins)  # autodiff (or an outer trace) must see the op
                    if step.multi:
                        for s, o in zip(step.outs, out):
                            values[s] = o
                    else:
                        values[step.outs[0]] = out
                else:
                    # apply's no-autodiff path, minus the checks the recording already made
                    op.needs_input_grad = step.no_grad
                    out = op.forward(*[v._data for v in ins])
                    device = ins[0]._device if ins else None
                    if step.multi:
                        for s, o in zip(step.outs, out):
                            values[s] = wrap(o, device)
                    else:
                        values[step.outs[0]] = wrap(out, device)
            elif t is _AliasStep:
                v = values[step.src]
                values[step.out] = wrap(v._data, v._device)
            else:
                result = step.fn(*_decode(step.args, values), **_decode(step.kwargs, values))
                for path, s in step.out_paths:
                    values[s] = _at_path(result, path)
                for s, owner in prog.grads:
                    values[s] = owner.grad
            for s in step.free:
                values[s] = None
        return _decode(prog.out, values)

    def _input_message(self, diff, what):
        where, rec, now = diff
        where = self._argument_name(where)
        return (f"{where} was {rec} when the function was traced, but is {now} in this call: "
                f"{what} a traced function must stay as they were at its first call "
                f"(symbolic={self._symbolic}). Keep shapes fixed (e.g. drop or pad the last "
                "partial batch) or create a new trace for the new case.")

    def _argument_name(self, where):
        # where looks like "[0][1][2]" (positional) or "[1]['x'][0]" (keyword), from _flatten
        if where in ("", "[0]", "[1]"):
            return {"": "the arguments", "[0]": "the positional arguments",
                    "[1]": "the keyword arguments"}[where]
        try:
            rest = where[3:]
            head, tail = rest.split("]", 1)
            if where.startswith("[0]"):
                i = int(head[1:])
                names = [p.name for p in inspect.signature(self.__wrapped__).parameters.values()
                         if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
                name = f"argument {names[i]!r}" if i < len(names) else f"positional argument {i}"
            else:
                name = f"keyword argument {head[1:]}"
            return name + (f" (at {tail})" if tail else "")
        except Exception:
            return f"the arguments{where}"

    # ----- upstream's other methods -----
    def dump(self, file=None, *args, **kwargs):
        """Upstream serializes the traced graph for MegEngine Lite; this fork cannot."""
        raise NotImplementedError(
            "trace.dump: serializing traced graphs is not supported in this fork (its engine "
            "is Python on numpy; there is no graph file format). Save the weights with "
            "megengine.save(module.state_dict(), path) instead.")

    def get_profile(self):
        raise NotImplementedError(
            "trace.get_profile: profiling traced graphs is not supported in this fork")

    def trace(self, *args, **kwargs):
        """Run the function once to record it (upstream's explicit tracing call)."""
        return self(*args, **kwargs)


def _not_nested():
    if dispatch._trace_hook is not None:
        raise NotImplementedError(
            "nested trace: a traced function cannot be traced while another traced function "
            "is being recorded or checked (a symbolic=True trace that has already recorded can "
            "be called inside one)")


@contextlib.contextmanager
def exclude_from_trace():
    """Run a block without recording (first call) or checking (symbolic=False) its ops.

    For side work such as logging. Tensors it makes and the traced code then uses are treated
    as constants. On a ``symbolic=True`` replay the Python function, this block included, does
    not run.
    """
    hook = dispatch._trace_hook
    dispatch._trace_hook = None
    try:
        yield
    finally:
        if hook is not None and not hook.failed:
            dispatch._trace_hook = hook


def is_tracing() -> bool:
    """True while a traced function runs its first (recording) call or a checked call."""
    return isinstance(dispatch._trace_hook, _Recorder)
