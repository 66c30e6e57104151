"""Recording a traced function's first call into a `_Program`, as ``dispatch._trace_hook``
(see `tracing`); `_Hook` is what recording and checking (`check`) share."""
import copy
import functools
import itertools
import weakref
from collections.abc import Iterator

from ..core import _trace_option, dispatch
from . import arith_opt, shape_tensors
from ..core.tensor import Parameter, Tensor
from ..device import _Device
from ..utils.naming import AutoNaming
from ._program import (_COMPUTED, _OF_THE_CALL, FREE_BYTES, TraceError, TraceMismatchError,
                       _AliasStep, _EventStep, _OpStep, _Ref, _Struct, _dim_slots, _freeze,
                       _holds, _host, _op_key, _refs_in, _same_bits, _tensor_paths,
                       _tensors_in)

_HINT = ("A traced function must apply the same ops, to values from the same places, with the "
         "same shapes and dtypes, on every call (no data-dependent Python control flow). "
         "Calls with new shapes, dtypes, structures or non-tensor values, or new values in "
         "tensor arguments the function read (.numpy(), .item(), a shape Tensor), are traced "
         "anew; within one such signature the ops must not change.")


def count_mismatch_text(where, op, recorded, now, now_tuple=None):
    """(message, hint) for op ``op`` giving ``now`` outputs where the trace had ``recorded``;
    ``now_tuple`` says whether this call's outputs came in a tuple, which tells one tensor from
    a tuple of one where the counts agree. An op whose number of outputs may change between
    calls (a PyTorchModule with ``output_cnt=None``) says what to do instead (its
    ``output_count_advice``)."""
    advice = getattr(op, "output_count_advice", None)
    if recorded == now and now_tuple is not None:
        got = ("a tuple of one output where the trace had one tensor" if now_tuple
               else "one tensor where the trace had a tuple of one")
        message = f"{where}: this call gives {got}"
    else:
        message = (f"{where}: the trace had {recorded} output{'' if recorded == 1 else 's'}, "
                   f"this call has {now}")
    return message, _HINT if advice is None else advice(recorded, now)


_INPLACE = Tensor._inplace  # the in-place write of ``x += y``, ``x[i] = v`` on a non-Parameter
_RESET = Tensor._reset  # ``x.set_value(v)``: for a value of the call given one, dataflow too

def is_write(step):
    """Whether recorded step ``step`` is an event that writes into a tensor, ``t._inplace(v)``
    or ``t._reset(v)``, whose target ``t`` (a `_Ref`) and value are its two arguments."""
    return (type(step) is _EventStep and (step.fn is _INPLACE or step.fn is _RESET)
            and type(step.args) is tuple and len(step.args) == 2 and not step.kwargs
            and type(step.args[0]) is _Ref)


_ITERATOR_TYPES = {}  # type -> whether its instances are iterators (an event lists them)


def _is_iterator(value):
    """``isinstance(value, Iterator)``, cached per type (the ABC check is slow, and events ask
    it of every argument on every checked call)."""
    cls = type(value)
    known = _ITERATOR_TYPES.get(cls)
    if known is None:
        known = _ITERATOR_TYPES[cls] = isinstance(value, Iterator)
    return known


# values that never hold sizes; _Device is a device name (a str), the parameter of Copy and
# creation ops
_PLAIN_TYPES = frozenset((int, bool, float, str, _Device, type(None)))


def _may_hold_dims(v):
    """False where `_trace_option.has_dims` would be (every op's parameters are asked, on every
    op of a checked call with symbolic sizes): plain values, and tuples or lists of them."""
    t = type(v)
    if t is tuple or t is list:
        for x in v:
            if type(x) not in _PLAIN_TYPES:
                return True
        return False
    return t not in _PLAIN_TYPES


def _forget(table, key, _ref):
    table.pop(key, None)


def _drop_call_arrays(template, dyn):
    """Take out of recorded op ``template`` its parameters that hold arrays of the call's
    values (``dyn``: ``x[idx]``'s index, where ``idx`` is an argument or a computed value).
    Checked calls and replays rebuild them from ``dyn`` with each call's own arrays, as for an
    op of a program loaded from a file, which has no such attribute; kept, they held the first
    call's arrays (an argument's index, mask) for as long as the trace kept the program."""
    for name, frozen in dyn:
        if _holds(frozen, _Ref):
            template.__dict__.pop(name, None)


class _Hook:
    """What recording and checking share: which slot each tensor of this call holds."""

    checking = False

    def __init__(self, program):
        self.prog = program
        self.n_ops = 0
        self.failed = False
        self.by_tensor = {}  # id(tensor) -> (slot, the array it had then)
        self.by_array = {}  # id(array) -> slot
        self.slot_tensor = {}  # slot -> the tensor that holds its value in this call
        self.keep = []  # every tensor keyed above stays alive during the call: ids stay unique
        self.ext_seen = set()  # ids of the external tensors used so far (kept alive in keep)

    def _take_dims(self, op):
        """The attributes of ``op`` built from SymDims as `_freeze` forms with expressions;
        the op keeps their values (it runs, is keyed and checked as any op)."""
        sym = None
        for k, v in list(op.__dict__.items()):
            if _may_hold_dims(v) and _trace_option.has_dims(v):
                if sym is None:
                    sym = []
                sym.append((k, _freeze(v, self._array_slot)))
                setattr(op, k, _trace_option.concrete(v))
        return tuple(sym) if sym else None

    def _register(self, t, slot):
        arr = t._data
        self.by_tensor[id(t)] = (slot, arr)
        self.by_array[id(arr)] = slot
        self.slot_tensor[slot] = t
        self.keep.append(t)
        self.keep.append(arr)  # a rebound tensor no longer holds it, but its id is a key

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

    def _detached_ref(self, t):
        """A weak reference to ``t``, a detach() result with an entry in ``detached_from``,
        that takes the entry out when ``t`` dies: it lives as long as the function holds ``t``
        (kept to the end of the call, a detached value held its array, and its owner, as long),
        and a new tensor that reuses the id is not taken for it."""
        return weakref.ref(t, functools.partial(_forget, self.detached_from, id(t)))

    def _mismatch(self, message, reason, hint=_HINT):
        self.failed = True
        if dispatch._trace_hook is self:
            dispatch._trace_hook = None  # code in the user's finally/except blocks runs plainly
        raise TraceMismatchError(f"{message}. {hint}", reason)

    def _internal_write(self, fn, args, kwargs):
        """(the slot ``t`` holds, the slot of ``op_result``) when ``fn(*args)`` is
        ``Tensor._inplace(t, op_result)`` or ``Tensor._reset(t, op_result)`` (``set_value``)
        writing into a tensor this call made (an op's, a detach()'s or an event's output, not a
        Parameter) a value it also made; else None.
        Such a write has no effect outside the call: it is dataflow (``t`` holds the result's
        slot from then on), not an event, so replays, checked calls and `dump` go on from the
        result. (``self._outside(t)``, which the recorder and the checker each define, tells
        the tensors from outside the call: arguments, externals, constants made from Python
        data, even once a write rebound them.) A value from outside is written as an event
        too, also once a write rebound it to a value of the call: ``x += 1; y.set_value(x);
        x += 1`` of an argument gives y a copy of x's value then, which x's later writes do not
        reach (as dataflow, y would follow x's slot, which a replay's later write into x changes
        with it: tests.fuzz.trace_writes)."""
        if (fn is not _INPLACE and fn is not _RESET) or kwargs or len(args) != 2:
            return None
        t, result = args
        if (isinstance(t, Parameter) or not isinstance(result, Tensor) or self._outside(t)
                or self._outside(result)):
            return None  # (a tensor from outside keeps its identity even once rebound)
        s, alias = self._internal(t)
        if s is None or alias or self.prog.slots[s].kind not in _COMPUTED:
            return None
        r, alias = self._internal(result)
        if r is None or alias or self.prog.slots[r].kind not in _COMPUTED:
            return None
        return s, r

    def _write(self, fn, t, result):
        """Run the internal write ``fn(t, result)`` (see `_internal_write`) untraced."""
        dispatch._trace_hook = None
        try:
            return fn(t, result)
        finally:
            if not self.failed:
                dispatch._trace_hook = self

    def _run(self, op, inputs):
        dispatch._trace_hook = None  # an op's forward may apply ops itself: those are its own
        try:
            return dispatch.apply(op, *inputs)
        finally:
            if not self.failed:
                dispatch._trace_hook = self


class _Recorder(_Hook):
    """``dispatch._trace_hook`` while a traced function runs its first call of a signature."""

    def __init__(self, tr, program, live=()):
        super().__init__(program)
        self.const_mode = tr._capture_as_const
        self.live = live  # ids of tensors that stay live externals under capture_as_const
        self.ext_by_tensor = {}  # id(external tensor) -> slot
        self.detached_from = {}  # id(t) -> (the tensor whose detach() t is, `_detached_ref`)
        self.unresolved = []  # "ext" slots that may turn out to be a .grad
        self.candidates = {}  # id -> tensor whose .grad a function may read
        self.grads_seen = {}  # id(a .grad after an event) -> (its owner, it)
        self.rec_level = dispatch._recording  # GradManagers recording; changes only in events
        self.rec_changed = False
        # symbolic=True or without_host=True with opt_level >= 1: ops are computed as
        # `arith_opt` rewrites them
        self.rewrite_now = (tr._symbolic or tr._replays) and tr._opt_level >= 1
        self.tape_callbacks = tr._replays  # replays do not run Python: callbacks are taped
        self.replays = tr._replays
        # symbolic shapes (see `shape_guards`): SymDims were handed out (ops are then searched
        # for them), and the guards noted so far
        self.dims_made = False
        self.guard_keys = set()
        self.sym_values = {}  # slot -> the SymDims a shape tensor holds (`shape_tensors`)
        program.symbolic_shape = bool(tr._symbolic_shape and tr._capture_as_const)
        # values whose shapes data decides (see `_Program.dyn_slots`); with symbolic_shape on,
        # their sizes are SymDims in every trace, so ops built from them follow the data
        self.dyn = program.dyn_slots = set()  # (frozen when the recording ends)
        program.dyn_sizes = bool(tr._symbolic_shape)
        self.watched = []  # weak references to the values held weakly (see `_register`)
        self.slot_node = {}  # slot -> (a weak reference to its weakly held tensor's autodiff
        # node, the output index)
        self.names = {}  # slot -> its tensor's name (see `named`; the live ones' at the end)
        self.made_here = {}  # id(tensor) -> a weak reference to it: made by Tensor() in the
        # call, so it may be a constant made from Python data (see `made`)
        self.written_captures = set()  # the live slots of written captures (`_written_capture`)
        self.made_read = set()  # "ext" slots of tensors made in the call, read, then written
        self.n_writes = 0  # write events so far (a guard's key: `guard`)

    # ----- values held weakly -----
    # A value the call makes (an op's or an event's output, a detached alias) of FREE_BYTES or
    # more is held weakly, as eager code holds its temporaries: once the function lets go of
    # it, its array is freed (a ResNet-50 step's recording call kept every activation until it
    # ended: 1.6x eager's peak memory). Recording keeps its slot, shape and dtype (the steps'
    # ``metas``) instead. The maps of `_Hook` then hold weak references: ``by_tensor`` entries
    # and ``slot_tensor`` values are `weakref.ref`s (see `_internal`), and a callback takes the
    # ids of a tensor or array out of the maps when it dies, so a new one that reuses the id
    # is not taken for it.
    def _register(self, t, slot):
        arr = t._data
        if arr.nbytes < FREE_BYTES or self.prog.slots[slot].kind not in _COMPUTED:
            return super()._register(t, slot)  # (small values: kept, cheaper than watched)
        ra = self._hold_weakly(t, slot, functools.partial(self._array_gone, id(arr)))
        if ra is None:
            return super()._register(t, slot)
        self.watched.append(ra)
        self.by_array[id(arr)] = slot
        node = t._node  # (its autodiff node and output index)
        self.slot_node[slot] = None if node is None else (weakref.ref(node[0]), node[1])

    def _register_by_tensor(self, t, slot):
        """Note ``t``, the detach() of an external, at ``slot``: known by the tensor only (its
        array is the external's, kept out of ``by_array``). A large one is held weakly, as
        `_register` holds values: held to the end of the call, each ``w.detach()`` kept the
        array the Parameter had then, after a write gave it a new one (0.x's updates
        ``w._reset(w.detach() * a + x)``): a parameter's worth of memory per update."""
        arr = t._data
        if arr.nbytes >= FREE_BYTES and self._hold_weakly(t, slot) is not None:
            return
        self.by_tensor[id(t)] = (slot, arr)
        self.slot_tensor[slot] = t  # (small: kept, its id stays its own to the end of the call)

    def _hold_weakly(self, t, slot, array_gone=None):
        """Note ``t`` at ``slot`` by weak references (``by_tensor``, ``slot_tensor``; its id
        is forgotten when it dies) and return its array's (``array_gone``: that one's
        callback); None, nothing noted, where the array takes no weak reference."""
        try:
            ra = weakref.ref(t._data, array_gone)
            rt = weakref.ref(t, functools.partial(self._tensor_gone, id(t)))
        except TypeError:  # (an array module whose arrays take no weak references)
            return None
        self.watched.append(rt)
        self.by_tensor[id(t)] = (slot, ra)
        self.slot_tensor[slot] = rt
        return ra

    def _array_gone(self, key, _ref):
        self.by_array.pop(key, None)

    def _tensor_gone(self, key, _ref):
        e = self.by_tensor.get(key)
        if e is not None and type(e[1]) is weakref.ref:  # (a strong entry holds its tensor's
            del self.by_tensor[key]  # array: never the array of a tensor that reuses the id)

    def _held(self, s):
        """The tensor that holds slot ``s``'s value, or None once a weakly held one died."""
        t = self.slot_tensor.get(s)
        return t() if type(t) is weakref.ref else t

    def _internal(self, t):
        """`_Hook._internal`, for maps that may hold weak references."""
        e = self.by_tensor.get(id(t))
        if e is not None:
            a = e[1]
            if (a() if type(a) is weakref.ref else a) is t._data:
                return e[0], False
        s = self.by_array.get(id(t._data))
        if s is None:
            return None, False
        node = t._node
        if node is not None:
            held = self._held(s)
            if held is not None:
                if node == held._node:
                    return s, False
            else:  # (its tensor died: the node it had)
                had = self.slot_node.get(s)
                if had is not None and had[0]() is node[0] and had[1] == node[1]:
                    return s, False
        return s, True  # the same array without its autodiff link: a detached alias

    # ----- symbolic shapes (megengine.core._trace_option.SymDim) -----
    def dim_slot(self, t):
        """The slot whose shape ``t.shape`` reads, or None (a constant, a Parameter, a value
        of an excluded block: its shape is the same on every run)."""
        if dispatch._trace_hook is not self:
            return None
        s, _ = self._internal(t)  # (a detached alias has its source's shape)
        if s is None and self.written_captures and self.prog.symbolic_shape:
            # a captured tensor after a write into it (`_written_capture`): its shape is the
            # written value's, which a dump computes (``w.set_value(F.concat([w, x]));
            # w.shape[0]`` follows x's size), not the captured one
            s = self.ext_by_tensor.get(id(t))
            if s not in self.written_captures:
                return None
        if s is not None and not self.prog.symbolic_shape:
            if s not in self.dyn:
                return None  # (not dumpable: only the sizes that data decides)
            if not self.prog.dyn_sizes:  # symbolic_shape=False: plain sizes, which a replay
                self.prog.dyn_read.setdefault(s, t._data.shape)  # checks (`_Program.compile`)
                return None
        return s

    def guard(self, tree, value, kind):
        """A size left its expression (``int(n)``, ``if n > 1``...): the program keeps it as a
        guard, with the user's source line (see `shape_guards`). Inside exclude_from_trace
        (logging) nothing is kept: what that block makes is a constant anyway."""
        key = (tree, value, self.n_writes)  # (after a write, a size of the same tree may be
        # another value's: `dump_writes` renames the tree by where the guard was made)
        if dispatch._trace_hook is not self or key in self.guard_keys:
            return
        from .shape_guards import user_line
        self.guard_keys.add(key)
        self.prog.shape_guards.append((tree, value, kind, user_line()))
        self.prog.shape_guard_writes.append(self.n_writes)

    def keep_dims(self, tree):
        """SymDims of ``tree`` decided a branch where their values would not have (see
        `core._trace_option.same_sizes`): a checked call hands out SymDims for its values too
        (`_program._sized_slots`), so that it takes the same branch."""
        if dispatch._trace_hook is self:
            self.prog.dims_kept.update(_dim_slots(tree))

    def sizes_tensor(self, data, dtype, device):
        """``Tensor(data)`` of sizes holding SymDims (see `shape_tensors`)."""
        return shape_tensors.sizes_tensor(self, data, dtype, device)

    def note_sizes(self, t, values):
        s, _ = self._internal(t)
        if s is not None:
            self.sym_values[s] = values

    def _sizes_at(self, s):
        while s is not None and self.prog.slots[s].kind == "alias":  # (Tensor(sizes) is an
            s = self.prog.slots[s].what  # alias of the op's output: the same value)
        return self.sym_values.get(s)

    def sizes_of(self, t):
        """The SymDims tensor ``t`` holds (an object array), or None (see `shape_tensors`)."""
        if dispatch._trace_hook is not self or not self.sym_values:
            return None
        return self._sizes_at(self._internal(t)[0])

    def _follow_sizes(self, op, ins, slots):
        """Sizes an op makes of shape tensors (`shape_tensors.propagate`)."""
        values = []
        for s in ins:
            v = self._sizes_at(s)
            if v is None:
                v = shape_tensors.int_const(self.prog.slots[s])
                if v is None:
                    return
            values.append(v)
        try:
            out = shape_tensors.propagate(op, values)
        except (ValueError, TypeError, IndexError):
            out = None  # (a rule that does not fit these values: an ordinary tensor)
        if out is not None and len(slots) == 1:
            self.sym_values[slots[0]] = out

    # ----- values and where they come from -----
    def bind_args(self, leaves):
        self.arg_ids = {id(t) for t in leaves}
        slots = []
        for t in leaves:
            s = self.prog.new_slot("arg")
            slots.append(s)
            self._register(t, s)
            self.candidates[id(t)] = t
        self.prog.arg_slots = tuple(slots)
        # names for `trace.dump`: the arguments' own names, the module scope of each op (by
        # output slot), user names of values (`finish_recording`); see megengine.utils.naming
        self.prog.arg_tensor_names = tuple(t._name for t in leaves)
        self.prog.op_scopes = {}

    def _array_slot(self, arr):
        return self.by_array.get(id(arr))

    def _outside(self, t):
        return id(t) in self.arg_ids or id(t) in self.ext_seen

    def detached(self, owner, t):
        """``t = owner.detach()`` in the call (see `source`)."""
        self.detached_from[id(t)] = (owner, self._detached_ref(t))

    def _alias(self, s, t, external=False):
        """A slot for ``t``, a detached alias of slot ``s``'s value. The alias of an external
        is known by the tensor only: its array is the external's, which stays external (a
        write into it is an event, not dataflow)."""
        out = self.prog.new_slot("alias", s)
        self.prog.slots[out].step = len(self.prog.steps)
        self.prog.steps.append(_AliasStep(s, out))
        if s in self.dyn:
            self.dyn.add(out)
        if external:
            self._register_by_tensor(t, out)
        else:
            self._register(t, out)
        return out

    def named(self, t, name):
        """``t.name = name`` in the call: a user's name of a value (``x.name = "o_x"``) for
        `trace.dump`, noted now, since a weakly held tensor may die before the call ends
        (the names of the tensors still alive then are read in `finish_recording`). An empty
        name leaves the one given before, as upstream's dump keeps it."""
        if name:
            s, alias = self._internal(t)
            if s is not None and not alias and self._held(s) is t:
                self.names[s] = name

    def made(self, t):
        """``Tensor(...)`` (or ``Parameter(...)``) made ``t`` in the call (see `source`)."""
        self.made_here[id(t)] = weakref.ref(t, functools.partial(_forget, self.made_here, id(t)))

    def _made_here(self, t):
        ref = self.made_here.get(id(t))
        return ref is not None and ref() is t

    def _outside_parameter(self, t):
        """The slot of ``t`` if it is a Parameter from outside the call, read live; else None.
        It stays itself after a write into it (see `_after_event`)."""
        if not isinstance(t, Parameter):
            return None
        s = self.ext_by_tensor.get(id(t))
        return s if s is not None and self.prog.slots[s].kind == "ext" else None

    def source(self, t):
        """The slot ``t``'s value comes from, adding aliases and externals. A detached alias
        of an external (``w.detach()`` of a parameter: 0.x's updates ``w._reset(w.detach() *
        a + x)``) reads the external's value where it is used, on every call: not a constant
        made of the array it had (a write into the parameter gives it a new array while
        another holder may keep the old one: `Tensor._shared`)."""
        s = self._outside_parameter(t)
        if s is not None:
            return s
        owner = self.detached_from.get(id(t), (None,))[0]
        e = self.by_tensor.get(id(t)) if owner is not None else None
        if (owner is not None and owner._data is t._data
                and self._outside_parameter(owner) is not None
                and (e is None or (e[1]() if type(e[1]) is weakref.ref else e[1])
                     is not t._data)):
            # (its first use: the detach() of such a Parameter is known by the tensor, as
            # below, also where a write gave the Parameter the array of a value of this call)
            return self._alias(self.source(owner), t, external=True)
        s, alias = self._internal(t)
        if s is not None:
            return self._alias(s, t) if alias else s
        if owner is not None and owner._data is t._data:
            return self._alias(self.source(owner), t, external=True)
        s = self.ext_by_tensor.get(id(t))
        if s is None:
            s = self.prog.new_slot("ext")
            info = self.prog.slots[s]
            info.tensor, info.device = t, t._device
            if self.const_mode and id(t) not in self.live and not self._is_grad(t):
                info.kind = "const"
                with dispatch.on_device(t._device):  # CuPy copies onto the current GPU
                    info.const = t._data.copy()
            else:
                # An external that dies by the end of the call becomes a constant of the value
                # it had here (`finish_recording`). A tensor made in the call keeps that array
                # here: a write into it (p[...] += x) then gives it a new one. Any other one
                # (the model's parameters and buffers) is not held: holding its array made the
                # optimizer's update copy every parameter (`Tensor._shared`), a model's worth
                # of memory in this call only
                if self._made_here(t):
                    info.const = t._data
                self.unresolved.append(s)
                # now, while it is one: the function may reset the .grad later (x.grad = None)
                self._resolve_grads()
            self.ext_by_tensor[id(t)] = s
            self.ext_seen.add(id(t))
            self.keep.append(t)
            self.candidates[id(t)] = t
        return s

    # ----- ops -----
    def __call__(self, op, inputs):
        if dispatch._recording != self.rec_level:
            self.rec_changed = True
        sym = self._take_dims(op) if self.dims_made else None
        ins = tuple(self.source(t) for t in inputs)
        key, dyn = _op_key(op, self._array_slot)
        template = copy.copy(op)
        index = self.n_ops
        prog = self.prog
        name = repr(op)
        metas = tuple((t._data.shape, t._data.dtype) for t in inputs)
        rewrite = None
        if self.rewrite_now and type(op) in arith_opt.RULES:
            # symbolic=True and opt_level >= 1: computed as rewritten, as upstream's compiled
            # graph computes a symbolic trace's first call (see `arith_opt`)
            s = prog.new_slot("op", f"output 0 of op #{index} ({name})")
            rewrite = arith_opt.plan(prog, len(prog.steps), template, ins, metas, s)
            out = self._run_rewrite(rewrite) if rewrite is not None else None
            if out is None:
                rewrite = None
                out = self._run(op, inputs)
            slots = [s]
            prog.slots[s].step = len(prog.steps)
            self._register(out, s)
            multi = False
        else:
            out = self._run(op, inputs)
            multi = isinstance(out, tuple)
            slots = []
            for i, o in enumerate(out if multi else (out,)):
                s = prog.new_slot("op", f"output {i} of op #{index} ({name})")
                prog.slots[s].step = len(prog.steps)
                self._register(o, s)
                slots.append(s)
        self.n_ops += 1
        if self.sym_values and any(self._sizes_at(s) is not None for s in ins):
            self._follow_sizes(template, ins, slots)
        step = _OpStep(index, template, key, dyn, ins, metas, tuple(slots), multi, name)
        step.rewrite = rewrite
        step.sym = sym
        prog.steps.append(step)
        if template.data_shaped or (self.dyn and (
                any(s in self.dyn for s in ins)
                or any(r in self.dyn for _, f in dyn or () for r in _refs_in(f)))):
            self._data_shaped(slots)
        if dyn is not None:
            _drop_call_arrays(template, dyn)
        if AutoNaming.scopes:  # keyed by output slot: arith_opt's rewritten steps keep them
            scope = AutoNaming.get_scope()
            if scope:
                for s in itertools.chain(slots, *(r.outs for r in rewrite or ())):
                    prog.op_scopes[s] = scope
        prog.n_ops = self.n_ops
        return out

    def _data_shaped(self, slots):
        """Values ``slots`` have shapes that data decides (see `_Program.dyn_slots`): from now
        on their sizes are SymDims (symbolic_shape on), or reads that replays check."""
        self.dyn.update(slots)
        if _trace_option._dim_source is None:  # their shapes are read through `dim_slot`
            _trace_option._dim_source = self  # (reset when the recording ends: `tracing`)

    def _run_rewrite(self, rewrite):
        """The output of replacement steps ``rewrite`` on this call's values, or None when one
        of their inputs is no longer at hand (a tensor an in-place write rebound since)."""
        made = {}

        def get(s):
            t = made.get(s)
            if t is not None:
                return t
            info = self.prog.slots[s]
            if info.kind == "const":
                if info.tensor is not None:  # captured by capture_as_const: its value now,
                    return info.tensor  # as eager code reads it (a write may have changed it)
                return Tensor._wrap(info.const, info.device)
            if info.kind == "ext":
                return info.tensor
            t = self._held(s)
            if t is None or self.by_array.get(id(t._data)) != s:
                raise LookupError(s)
            return t

        dispatch._trace_hook = None
        try:
            return arith_opt.run_rewrite(rewrite, get, made.__setitem__)
        except LookupError:
            return None
        finally:
            if not self.failed:
                dispatch._trace_hook = self

    # ----- values read to the host -----
    def read(self, t, value):
        """``t.numpy()`` (or item, int(), a shape Tensor...) returned ``value`` while the function
        ran. Recording notes the read (where the value came from, a copy of it, and how many
        steps came before): the Python code may have baked it into the ops that follow. (A
        checked call runs that Python code, and the ops it makes are checked.)"""
        s, _ = self._internal(t)  # a detached alias reads its source's value
        if s is None:
            owner = self.detached_from.get(id(t), (None,))[0]
            if owner is not None and owner._data is t._data:
                t = owner  # so does the detach() of an external that no step read yet (a
                # step made here would be one that a checked call, which notes no reads,
                # does not take up)
            s = self.source(t)  # an external (or a constant made from Python data)
        self.prog.reads.append((len(self.prog.steps), s, _host(value).copy()))

    # ----- events -----
    def event(self, fn, *args, **kwargs):
        """Run ``fn(*args, **kwargs)`` (with tracing off) and record it as one step; an
        in-place write into a value of this call is recorded as dataflow instead."""
        if fn is _INPLACE or fn is _RESET:
            written = self._internal_write(fn, args, kwargs)
            if written is not None:
                r, t = written[1], args[0]
                out = self._write(fn, t, args[1])
                # t holds the result now (a non-Parameter rebinds): later uses read its slot.
                # The entry is strong, which `_tensor_gone` leaves: t is kept, so its id stays
                # its own to the end of the call (as the checker's `_write_internal`)
                self.by_tensor[id(t)] = (r, t._data)
                self.keep.append(t)
                return out
        if self.detached_from:
            self._take_up_detached()
        if (fn is _INPLACE or fn is _RESET) and args and isinstance(args[0], Tensor):
            self._written_capture(args[0])
            self.n_writes += 1
        # a generator (model.parameters()) would be empty on replay: keep what it yields
        if any(_is_iterator(a) for a in args):
            args = tuple(list(a) if _is_iterator(a) else a for a in args)
        if any(_is_iterator(a) for a in kwargs.values()):
            kwargs = {k: list(a) if _is_iterator(a) else a for k, a in kwargs.items()}
        self._resolve_grads()
        step = _EventStep(fn, self._encode(args), self._encode(kwargs))
        if (fn is _INPLACE or fn is _RESET) and args and isinstance(args[0], Tensor):
            step.target_meta = (args[0]._data.dtype, args[0]._device)
        self.prog.steps.append(step)
        dispatch._trace_hook = None
        tape = None
        if self.tape_callbacks:  # GradManager callbacks in it: record their ops for replays
            from ..autodiff import grad_manager
            from .grad_callbacks import CallbackTape

            tape = grad_manager._callback_capture = CallbackTape()
        try:
            result = fn(*args, **kwargs)
        finally:
            if tape is not None:
                grad_manager._callback_capture = None
                step.callbacks = tape.entries or None
            if not self.failed:
                dispatch._trace_hook = self
        self.rec_level = dispatch._recording
        self._after_event(step, args, kwargs, result)
        return result

    def _written_capture(self, t):
        """Before a write event into ``t``: where ``t`` is a tensor that ``capture_as_const``
        captures (or has captured), it is a live external from now on, a slot of its own
        (kind "ext", read where it is used, as without capture_as_const). The reads before
        the write read the captured value (a "const" slot: checked calls compare it with the
        capture, upstream's "tensors not equals"; replays compute with it); the write itself
        and the reads after it do not read that value: they read what the call wrote, which a
        checked call takes as it is and a replay's event writes again (upstream guards only
        the captured value its graph reads: ``w.set_value(c); return w * x`` runs on every
        call). So a function that writes before it reads is not refused, and no rewrite of
        `arith_opt` takes a value read after the write for the captured constant."""
        made = self._made_here(t)
        if not (self.const_mode or made) or id(t) in self.live:
            return
        s = self.ext_by_tensor.get(id(t))
        if s is None:
            if (self._internal(t)[0] is not None or id(t) in self.arg_ids
                    or id(t) in self.detached_from or self._is_grad(t)):
                return
        else:
            info = self.prog.slots[s]
            if info.kind not in ("const", "ext") or info.tensor is not t or (
                    info.kind == "ext" and not made) or s in self.written_captures:
                return
        if made and s is not None and self.prog.slots[s].kind == "ext":
            self.made_read.add(s)  # (read before the write: a constant of its first value)
        s = self.prog.new_slot("ext")
        info = self.prog.slots[s]
        info.tensor, info.device = t, t._device
        if made:  # a tensor made in the function from Python data (``z = Tensor(0.0); z[...] =
            # x``): each call makes its own, so a replay writes into a new one of this value,
            # not into the first call's, which it would return again (every mode)
            with dispatch.on_device(t._device):
                info.fresh = t._data.copy()
        self.written_captures.add(s)
        self.ext_by_tensor[id(t)] = s
        self.ext_seen.add(id(t))
        self.keep.append(t)

    def _take_up_detached(self):
        """Before an event: give each detach() of the call that no step has read yet (its
        step is made at its first use, see `source`) its step now, in the order of the
        detach() calls. The event may write into the detached tensor's source (``d =
        w.detach(); w._reset(w + x); return d * 1``, an optimizer's step), and a step made
        after it would read the value written (replays, dumps) or take the detached value for
        a constant of the first call (checked calls), where eager code keeps the value the
        source had at the detach(). A checked call takes the steps up in the same order
        (`check._Checker._take_up_detached`)."""
        for _, ref in list(self.detached_from.values()):
            t = ref()
            if t is not None:
                s, alias = self._internal(t)
                if s is None or alias:  # (else it holds a slot: read already)
                    self.source(t)

    def _after_event(self, step, args, kwargs, result):
        for obj in args:  # candidates serve _resolve_grads only
            attached = getattr(obj, "attached_tensors", None)
            if callable(attached):  # a GradManager: its tensors' .grad may be read later
                for t in attached():
                    self.candidates[id(t)] = t
            groups = getattr(obj, "param_groups", None)
            if isinstance(groups, list):  # an Optimizer
                for g in groups:
                    for t in g.get("params", ()) if isinstance(g, dict) else ():
                        self.candidates[id(t)] = t
        # the gradients as this event left them: ``dx = x.grad; x.grad = None`` returns dx,
        # which is then no tensor's .grad any more, but a replay must read it afresh
        for a in self.candidates.values():
            g = getattr(a, "grad", None)
            if isinstance(g, Tensor) and id(g) not in self.grads_seen:
                self.grads_seen[id(g)] = (a, g)  # g kept alive here: its id stays unique
        # A tensor rebound to another value (Tensor._inplace on a non-Parameter) now holds that
        # value: later uses must come from its slot. A Parameter from outside the call stays
        # itself, read where it is used (a replay reads it live): whether a write goes into its
        # storage or gives it the result's array depends on who else holds its array
        # (`Tensor._shared`), which differs between this call and later ones (a checked call
        # lets go of values as large as FREE_BYTES sooner, and holds no external's array)
        for t in _tensors_in((args, kwargs)):
            if self._outside_parameter(t) is not None:
                continue
            e = self.by_tensor.get(id(t))
            if e is not None and (e[1]() if type(e[1]) is weakref.ref else e[1]) is t._data:
                continue
            s = self.by_array.get(id(t._data))
            if s is not None:
                self.by_tensor[id(t)] = (s, t._data)
                self.keep.append(t)
            elif e is not None and self.prog.slots[e[0]].kind in _OF_THE_CALL:
                # a value of this call, an argument too, given a new array by the event
                # (``z.set_value(x)`` of an argument's, a Parameter's value, an array:
                # `Tensor._reset` copies it): it still holds its slot, which a replay's
                # event writes the same way
                self.by_tensor[id(t)] = (e[0], t._data)
                self.keep.append(t)
        # New tensors it returned (megengine.autodiff.grad's gradients) become event slots.
        fresh = [(path, t) for path, t in _tensor_paths(result, ())
                 if self._internal(t)[0] is None and id(t) not in self.ext_seen]
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
        if t is _trace_option.SymDim:  # (a size returned or passed to an event: its value)
            return value.value
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

    def _check_captures_kept(self):
        """A replay computes with the values capture_as_const took; one the call itself has
        changed since (an optimizer step, an in-place write) would be stale from the next call
        on, silently. (Checked calls check them on each call instead, as upstream: see
        `captures`.) Only the captures the program reads are "const" slots: a tensor the call
        writes before any read of it is read live (`_written_capture`), and may change."""
        for s, info in enumerate(self.prog.slots):
            t = info.tensor
            if info.kind != "const" or t is None or self._made_here(t):
                continue  # (a tensor made in the call from Python data: made anew each call)
            with dispatch.on_device(t._device):  # (CuPy compares on the array's GPU)
                same = _same_bits(t._data, info.const)
            if not same:
                raise TraceError(
                    f"trace(without_host=True, capture_as_const=True): the call changed "
                    f"{self.prog.describe(s)} after the trace captured its value (an "
                    "optimizer step or an in-place write), and the function reads that value "
                    "before the change, so the next calls would compute with the old value "
                    "where eager code reads the new one. Write the tensor before reading it "
                    "(a write before any read is replayed), trace without capture_as_const, or "
                    "with without_host=False (checked calls compare the capture on each call); "
                    "trace a separate inference function to dump")

    def _is_grad(self, t):
        """Whether ``t`` is the ``.grad`` of a tensor an event may have written (it is read
        live, as a "grad" slot, also under capture_as_const: a replay must not keep the
        recording's gradient)."""
        return id(t) in self.grads_seen or any(getattr(a, "grad", None) is t
                                               for a in self.candidates.values())

    def _resolve_grads(self):
        """Recording: externals that are some tensor's ``.grad`` must be read live as such."""
        if not self.unresolved:
            return
        owners = dict(self.grads_seen)
        for a in self.candidates.values():
            g = getattr(a, "grad", None)
            if isinstance(g, Tensor):
                owners[id(g)] = (a, g)
        still = []
        for s in self.unresolved:
            info = self.prog.slots[s]
            a, g = owners.get(id(info.tensor), (None, None))
            if a is not None and g is info.tensor:
                info.kind, info.owner, info.tensor, info.const = "grad", a, None, None
                e = self.by_tensor.get(id(a))
                if e is not None and e[1] is a._data and self.prog.slots[e[0]].kind == "arg":
                    # the .grad of an argument: each call reads its own argument's
                    info.owner, info.owner_slot = None, e[0]
            else:
                still.append(s)
        self.unresolved = still

    # ----- the end of a call -----
    def finish_recording(self, outputs):
        prog = self.prog
        prog.dyn_slots = frozenset(self.dyn)
        prog.feeds_host = not self.const_mode
        prog.out = self._encode(outputs)
        self._resolve_grads()
        if self.const_mode and self.replays:
            self._check_captures_kept()
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
            # (the array it has now: the value it was read with unless the call wrote into it
            # in place, which a tensor from before the call that the call then let go of is
            # not expected to be; made in the call, its first array is kept: `source`)
            weak.append((s, weakref.ref(info.tensor),
                         info.tensor._data if info.const is None else info.const,
                         self._made_here(info.tensor)))
            info.tensor, info.const = None, None
        names = self.names
        for s in list(self.slot_tensor):
            t = self._held(s)
            if t is not None and t._name:
                names[s] = t._name
        prog.var_names = {s: n for s, n in names.items()
                          if prog.slots[s].kind == "op"}  # x.name = "o_x"
        self.keep.clear()
        self.watched.clear()
        self.slot_node.clear()
        self.by_tensor.clear()
        self.by_array.clear()
        self.slot_tensor.clear()
        self.candidates.clear()
        self.grads_seen.clear()
        self.detached_from.clear()
        self.made_here.clear()
        for s, ref, value, made in weak:
            info = prog.slots[s]
            t = ref()
            if t is None or s in self.made_read:  # (made from Python data: the value it had,
                info.kind, info.const = "const", value  # on every call)
                # made by the Tensor constructor and read by ops only: a value of each call, as
                # upstream's trace feeds ``mge.tensor(a)`` (not a Python number an op takes)
                info.fed = made and not self.const_mode and s not in self.made_read
            else:
                info.tensor = t
        self._sort_reads()

    def _sort_reads(self):
        """Split the host reads: an argument's value joins the signature (the program's
        ``arg_reads``: the leaf indices; ``arg_values``: (leaf index, value), ...: the trace
        keys the program by them, and the program keeps no copy), a constant's never changes
        unless the call wrote into it before the read (``w._reset(w + x)`` of a captured
        Parameter: `dump` refuses the read of a value the input decides), any other is checked
        on replay (``guards``: (steps before it, slot, value))."""
        prog = self.prog
        leaf_of = {s: i for i, s in enumerate(prog.arg_slots)}
        written = {}  # slot -> the index of the first event that writes into it
        for k, step in enumerate(prog.steps):
            if is_write(step):
                written.setdefault(step.args[0].slot, k)
        arg_reads, guards, seen = {}, [], set()
        for pos, s, value in prog.reads:
            i = leaf_of.get(s)
            if i is not None:
                arg_reads.setdefault(i, value)  # the first read: the value the call came with
            elif (prog.slots[s].kind != "const" or pos > written.get(s, pos)) \
                    and (pos, s) not in seen:
                seen.add((pos, s))
                guards.append((pos, s, value))
        self.arg_values = tuple(sorted(arg_reads.items(), key=lambda kv: kv[0]))
        prog.arg_reads = tuple(i for i, _ in self.arg_values)
        prog.guards = guards
        prog.reads = []
