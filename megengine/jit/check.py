"""Checking a later call of a traced function (``symbolic=False`` or ``True``) against its
record, as ``dispatch._trace_hook`` (see `tracing`): each op and event is compared with the
recorded step as it runs.

A checked call should cost what an eager call costs, so each op and event first takes a fast
path built from what `_Program.compile` prepared: the op's type and its parameters compared
as one dict (``step.pdict``, for ops whose parameters are plain immutable values, index
tuples with slices included; each must also hold plain values only, as
`_op_key` would ask: hashed, or walked where it holds slices; ``step.pcheck`` says what there
is to ask, None for most ops: one or two inputs, no parameters), each input compared by
identity with the tensor that holds the expected slot in this call (``values[slot]``:
arguments and outputs as they are made, the recorded externals from the start), then its
shape and dtype, a small constant (``x * 0.5`` makes a new one on every call, captured or
not) by its bytes and by being held by its tensor alone (so no value of this call), and a
tensor captured by ``capture_as_const`` by its `captures.CaptureGuard` (its bits are compared
only after the engine wrote into some tensor); an event's function and arguments by identity,
and the outputs by identity. Parameters built from symbolic sizes are
compared with the recorded expressions' values (`_recorded_sizes`) on the same fast path. A
detach() that the event right after it takes (batch norm's ``running_mean._reset(
mean.detach())``) is put in its recorded slot as it is made, and the event compared with it
(`detached`, `_take_detached`). What the fast path does not accept (another detach(), a
constant made in the function, a ``.grad``, an op with array parameters, or a real
difference) goes through the full comparison, which on a difference raises
`TraceMismatchError` naming the op, the input and the values.

The op then runs through `dispatch.apply_unhooked` with the hook left in place and ``pc``
None, which each entry point of the checker takes for "inside an op's forward": what the
forward applies, announces or reads is its own and passes untraced, as with the hook off
(switching ``dispatch._trace_hook`` off and on around every op cost ~0.1 us per op).
"""
import sys
import time
from operator import attrgetter, is_ as _is
from weakref import ref as _weak

import numpy as np

from ..autodiff.function import _FunctionOp
from ..core import dispatch
from ..core._trace_option import SymDim, has_dims
from ..core.tensor import Parameter, Tensor, _writes
from . import arith_opt, shape_tensors
from ._program import (FREE_BYTES, _PLAIN, _AliasStep, _ArrayValue, _DimExpr, _EventStep,
                       _OpStep, _Ref, _Struct, _ValueLeaf, _all_plain, _describe_params, _holds,
                       _host, _is_array, _kind_text, _op_key, _step_text, _tensor_paths,
                       _tensor_text, _tensors_in, _thaw)
from .record import (_COMPUTED, _INPLACE, _OF_THE_CALL, _RESET, _Hook, _is_iterator,
                     _may_hold_dims, count_mismatch_text)


_MAY_HOLD_TENSORS = (Tensor, tuple, list, dict)  # what an event's result may return tensors in

_RESET = Tensor._reset  # ``set_value``'s write (batch norm's running statistics)

_shape_dtype = attrgetter("_data.shape", "_data.dtype")  # (a tensor's, for `_OpStep.many`)


_NO_VALUE = object()  # (`_dims_value`: no match)


# Whether an array is a value of this call, without the maps of `_Hook`: every array that
# `_internal` can find is held by the checker (``arrays``, ``keep``, a ``by_tensor`` entry) or
# was let go of (``dead``). So an array held by its tensor alone, as a constant that
# ``x * 0.5`` has just made, is none of them: its reference count says so, compared with
# what the same test counts for an array held by one tensor (`_only_in_tensor`, measured once:
# the count of the local and the argument differs between Python versions). Where the count
# is higher (the caller's numpy array, say), the maps decide as before. (A value let go of is
# in ``dead`` under its array's id, which a new array can reuse only once it is gone.)
_getrefcount = getattr(sys, "getrefcount", None)


def _refs_of_tensor_data(t):
    a = t._data  # (the same two references as in `_Checker.__call__`: ``a``, the argument)
    return _getrefcount(a)


def _only_in_tensor():
    if _getrefcount is None:  # (an interpreter without reference counts: the maps decide)
        return -1
    return _refs_of_tensor_data(Tensor._wrap(np.zeros(()), "cpu0"))


_ONLY_IN_TENSOR = _only_in_tensor()


def _plain_nested(params, names):
    """Whether the tuple or slice parameters ``names`` of ``params`` hold plain values only
    (see `_program._all_plain`; its common cases inline: an index of ints and slices)."""
    for name in names:
        v = params[name]
        for x in (v if type(v) is tuple else (v,)):
            t = type(x)
            if t in _PLAIN or t is slice and type(x.start) in _PLAIN \
                    and type(x.stop) in _PLAIN and type(x.step) in _PLAIN:
                continue
            if not _all_plain((x,)):
                return False
    return True


def _dims_value(v, frozen):
    """``v`` (an op parameter) with its SymDims as their values, when it is what ``frozen``
    (its recorded `_freeze` form) says: SymDims of the same expressions, equal plain values,
    the same structure; else ``_NO_VALUE``."""
    t = type(v)
    if t is SymDim:
        return v.value if type(frozen) is _DimExpr and frozen.tree == v.tree else _NO_VALUE
    if t is tuple or t is list:
        if type(frozen) is not tuple or len(frozen) != 2 or frozen[0] is not t or \
                len(frozen[1]) != len(v):
            return _NO_VALUE
        out = []
        for x, f in zip(v, frozen[1]):
            tx = type(x)
            if tx is SymDim:  # (a shape's items: SymDims and ints, compared here without a
                if type(f) is not _DimExpr or f.tree != x.tree:  # call each)
                    return _NO_VALUE
                x = x.value
            elif tx is int:
                if type(f) is not int or f != x:
                    return _NO_VALUE
            else:
                x = _dims_value(x, f)
                if x is _NO_VALUE:
                    return _NO_VALUE
            out.append(x)
        return t(out)
    if t is slice:
        if type(frozen) is not tuple or len(frozen) != 4 or frozen[0] is not slice:
            return _NO_VALUE
        parts = [_dims_value(x, f) for x, f in zip((v.start, v.stop, v.step), frozen[1:])]
        return _NO_VALUE if _NO_VALUE in parts else slice(*parts)
    if (t is int or t is bool or t is float or t is str or v is None) and type(frozen) is t \
            and frozen == v:
        return v
    return _NO_VALUE


def _recorded_value(step, name, own):
    """The value op step ``step``'s parameter ``name``, built from sizes, had when recorded,
    for comparing this call's op (whose value is ``own``) with the record: the template's;
    where the recording took it out of the template, holding arrays of the call's values
    (``x[idx, :n]``: `record._drop_call_arrays`), the recorded form with ``own``'s arrays in
    their places (the comparison then asks whether they are the recorded slots' values)."""
    v = step.template.__dict__.get(name, _NO_VALUE)
    if v is not _NO_VALUE:
        return v
    for k, frozen in step.key[1]:
        if k == name:
            return _with_own_arrays(frozen, own)
    return own


def _with_own_arrays(frozen, own):
    """`_thaw` of ``frozen`` (a recorded parameter) with each array of a traced value (a
    `_Ref`) taken from ``own`` at the same place; ``own`` itself where their structures differ
    (the comparison says what differs)."""
    t = type(frozen)
    if t is _Ref:
        return own
    if t is tuple and frozen[0] in (tuple, list):
        if type(own) is not frozen[0] or len(own) != len(frozen[1]):
            return own
        return frozen[0](_with_own_arrays(f, x) for f, x in zip(frozen[1], own))
    if t is tuple and frozen[0] is slice:
        if type(own) is not slice:
            return own
        return slice(*(_with_own_arrays(f, x)
                       for f, x in zip(frozen[1:], (own.start, own.stop, own.step))))
    return own if _holds(frozen, _Ref) else _thaw(frozen, ())


class _NoStep:
    """Past the last step: what a step's fast-path fields say when there is no step."""

    cls = fn = None
    n_args = -1
    pdict = None


_NO_STEP = _NoStep()


class _Checker(_Hook):
    """``dispatch._trace_hook`` while a later call of a known signature runs (checked calls).

    Where values are: ``values[s]`` is the tensor that holds slot ``s``'s value in this call
    (arguments and outputs as they are made; the external tensors of the record from the
    start) and ``arrays[s]`` the array it held then (None for externals). The fast paths ask
    whether an input *is* ``values[s]``: an event that rebinds a tensor to another value
    (``Tensor._inplace``) takes it out of ``values`` (see `_rebound`), so identity is enough.
    The maps of `_Hook` (by ``id`` of a tensor or an array: which slot it holds) serve the slow
    paths; they are built from the lists when first needed and extended as the call goes on
    (see `_index`).
    """

    checking = True
    # Modules push no naming scopes for it (`Module.__call__`): only the recording's names
    # reach the program (`record._Recorder` keeps them for `dump`); ~0.6 us per module call
    names_ops = False
    # defaults an instance overrides when it needs to (fewer stores on every call)
    failed = False
    by_tensor = None  # the maps of _Hook, built when first needed (see `_index`)
    indexed = 0  # the maps cover the slots below this
    profile = None  # `_ProfilingChecker`: the Profile to add op times to

    def __init__(self, program):
        self.prog = program
        self.steps = program.steps
        self.values = program.check_base.copy()
        self.arrays = [None] * len(self.values)
        self.pc = 0  # the next step to compare with
        self.keep = []  # tensors and arrays whose ids key the maps: alive during the call
        self.ext_seen = set()  # ids of externals accepted by the slow path
        self.excluded = set()  # ids of tensors made by exclude_from_trace blocks
        self.detached_from = None  # id(t) -> [the tensor whose detach() t is, t's slot,
        # `_detached_ref`]
        # slot -> (shape, its SymDims): what `_trace_option` handed out, in this call or an
        # earlier one of the program (~1 us per shape read saved: a size read of each value
        # of a small-op loop, ``F.expand_dims``); their ``src`` is made this checker's when
        # handed out again (`_trace_option.symbolic_shape`)
        self.shapes_made = program.checked_shapes
        self.dead = {}  # id(array) -> (slot, weak references to the array and the tensor
        # that held it) of the values let go of (`_free`)
        # (read by every op: an instance's own attributes load faster than class defaults)
        self.failed = self.dims_made = False

    def release(self):
        """Let go of this call's values once it is over: the SymDims that the program keeps
        for later calls (``shapes_made``) refer to this checker until then."""
        self.values = self.arrays = self.leaves = None
        self.keep = self.dead = self.by_tensor = self.by_array = self.slot_tensor = None
        if self.detached_from:  # (emptied: its weak references' callbacks refer to it, a
            self.detached_from.clear()  # cycle that would hold the owners until a collection)
        self.sized_arrays = self.detached_from = None

    @property
    def n_ops(self):
        """How many op steps the call has been checked past (the index of the next op)."""
        return self.prog.ops_before[self.pc]

    def bind_args(self, leaves):
        self.leaves = leaves
        values, arrays = self.values, self.arrays
        for s, t in zip(self.prog.arg_slots, leaves):
            values[s] = t
            arrays[s] = t._data

    def detached(self, owner, t):
        """``t = owner.detach()`` in the call (see `check_source`). Where the next step is a
        detach() of the value ``owner`` holds, which the event right after it takes (batch
        norm's ``running_mean._reset(new_mean.detach())``: `_program._detach_plan`), ``t``
        goes into that step's slot at once, not yet taken up: the event's fast path takes it
        up there if it passes ``t`` (`_take_detached`), anything else finds it as the slow
        path always did (a detached alias: the array of a value of this call without its
        autodiff link, see `_Hook._internal`). ~70 Python steps a write fewer than the
        dict entry and weak reference below."""
        try:
            step = self.steps[self.pc]
        except (IndexError, TypeError):  # (past the end; pc None: inside an op's forward)
            step = _NO_STEP
        if type(step) is _AliasStep and step.take is not None:
            src = step.src
            if self.values[src] is owner and self.arrays[src] is t._data:
                self.values[step.out] = t  # (its array is noted when taken up)
                return
        if self.detached_from is None:
            self.detached_from = {}
        self.detached_from[id(t)] = [owner, None, self._detached_ref(t)]  # (the slot: once
        # used)

    def read(self, t, value):
        """A checked call runs the Python code that used a value read to the host, and the ops
        it makes are checked: nothing to do (see `record._Recorder.read`)."""

    # ----- symbolic shapes: the Python code sees sizes as the recording did -----
    # A program recorded with symbolic shapes (capture_as_const) saw `SymDim`s, and what it made
    # of them (``F.zeros((n, 4))``, ``x / n``, ``Tensor(x.shape)``) are ops of the program; a
    # checked call hands out SymDims too (`tracing._check`), so it makes the same ops, for the
    # values whose sizes the record built ops from (``prog.sized_slots``): elsewhere a SymDim
    # acts as its int (see `_program._sized_slots`), so reads of those sizes give plain ints,
    # at no cost beyond a lookup. Their expressions matter only to a dump, made from the
    # recording: here no guard is kept (the call has the recorded signature) and shape tensors
    # are read as numbers.
    dims_made = False

    sized_arrays = None  # id(array) -> slot: the arrays the sized slots of the record held
    # in this call (`_take_up_sized`)
    sized_next = -1  # the first of ``prog.sized_order`` not taken up yet (-1: none taken)

    def dim_slot(self, t):
        if self.pc is None:  # a shape read inside an op's forward: plain ints, as untraced
            return None
        if self.sized_next < self.prog.made_before[self.pc]:
            self._take_up_sized()  # (most shape reads end at the next lines)
        a = t._data
        if self.prog.sized_ext:  # a captured tensor after the call wrote it, as recorded
            e = self.prog.sized_ext.get(id(t))
            if e is not None and self.pc > e[1] and dispatch._trace_hook is self \
                    and self._internal(t)[0] is None:
                return e[0]
        s = self.sized_arrays.get(id(a))
        if s is None or dispatch._trace_hook is not self:
            return None  # (a value no op of the record took sizes from)
        b = self.arrays[s]
        if b is a:
            if self.values[s] is t:  # t holds slot s, as the op fast path asks (an event that
                return s  # rebinds t takes it out of ``values``)
        elif b is None:  # the value was let go of (`_free`): its array may live on in a
            e = self.dead.get(id(a))  # tensor the function holds, or a new array reuses the
            if e is None or e[1]() is not a:  # id (no sized value's: an array made later
                return None  # that was one would be in ``sized_arrays`` under its own slot)
        # another tensor on the array (a detached alias), a rebound one, or a value let go
        # of that the function still holds: the maps decide
        e = self.by_tensor.get(id(t)) if self.by_tensor is not None else None
        if e is not None and e[1] is a:  # (the maps' common case, without a call)
            s = e[0]
        elif id(t) in self.prog.ext_ids:  # a parameter or buffer (unless rebound to a value
            return None  # of this call: found in the maps above)
        else:
            s = self._internal(t)[0]
        if s not in self.prog.sized_slots:  # (None included) sizes no op of the record was
            return None  # built from: plain ints, as the SymDims would act (`_sized_slots`);
        return s  # (a program that is not dumpable has them only where data decides sizes)

    def _take_up_sized(self):
        """Note the arrays of the sized slots (``prog.sized_slots``) made so far in
        ``sized_arrays``: a shape read (`dim_slot`) looks further only where its array is one
        of them. Any tensor that `_internal` finds at slot ``s`` has ``arrays[s]`` (a value let
        go of too: `_free` takes up the arrays before it lets go of them), so one lookup
        answers no exactly (ShuffleNetV2: 14 of 516 values sized, ~240 shape reads per call),
        and a tensor that holds the slot it finds (``values[s]``) answers yes without the maps
        of `_Hook` (building them costs ~0.1 ms per call). The arrays are not kept alive (a
        value let go of frees its memory, as eager code's would): a new array that reuses the
        id of one let go of is told apart by ``dead``'s weak reference."""
        held = self.sized_arrays
        if held is None:
            held = self.sized_arrays = {}
        order, end, arrays = self.prog.sized_order, self.prog.made_before[self.pc], self.arrays
        k = self.sized_k if self.sized_next >= 0 else 0
        while k < len(order) and order[k] < end:
            b = arrays[order[k]]
            if b is not None:
                held[id(b)] = order[k]  # (a later slot on the same array wins, as in the maps)
            k += 1
        self.sized_k = k
        self.sized_next = order[k] if k < len(order) else len(self.values) + 1

    def guard(self, tree, value, kind):
        pass

    def keep_dims(self, tree):
        pass

    def sizes_tensor(self, data, dtype, device):
        return shape_tensors.sizes_tensor(self, data, dtype, device)

    def note_sizes(self, t, values):
        pass

    def sizes_of(self, t):
        """The SymDims the recording found in the tensor at ``t``'s place (a shape tensor,
        ``Tensor(x.shape)``): code that reads it as a shape (``F.zeros(Tensor(x.shape))``)
        then makes the recorded op instead of reading the numbers (no op)."""
        recorded = self.prog.sym_values
        if dispatch._trace_hook is not self or not recorded or self.pc is None:
            return None
        s = self._internal(t)[0]
        while s is not None and self.prog.slots[s].kind == "alias":
            s = self.prog.slots[s].what
        return recorded.get(s)

    # ----- where this call's values are -----
    def _index(self):
        """Bring the maps of `_Hook` up to date with ``values``/``arrays``: the slots made by
        the steps checked so far, in ascending order (the order in which the recording made
        them, so a later slot wins where two hold the same array, as when registered one by
        one). Slots registered by a slow path are added at once (`_register`)."""
        if self.by_tensor is None:
            self.by_tensor, self.by_array, self.slot_tensor = {}, {}, {}
        end = self.prog.made_before[self.pc]
        values, arrays = self.values, self.arrays
        for s in range(self.indexed, end):
            a, t = arrays[s], values[s]
            if a is not None and t is not None:  # (externals have no array)
                self.by_tensor[id(t)] = (s, a)
                self.by_array[id(a)] = s
                self.slot_tensor[s] = t
        self.indexed = max(self.indexed, end)

    def _register(self, t, slot):
        self.values[slot] = t
        self.arrays[slot] = t._data
        if self.sized_arrays is not None and slot in self.prog.sized_slots:
            self.sized_arrays[id(t._data)] = slot  # (see `_take_up_sized`)
        if self.by_tensor is not None:  # (the maps are in use: it joins them as `_index` adds
            # values, not `keep`: ``values`` and ``arrays`` hold it until `_free` lets go of it,
            # which takes it out of the maps. Kept to the end of the call, a ResNet-50 step's
            # batch norm outputs, which the slow path registers, held 340 MB of ~800 at batch 4)
            a = t._data
            self.by_tensor[id(t)] = (slot, a)
            self.by_array[id(a)] = slot
            self.slot_tensor[slot] = t

    def _internal(self, t):
        self._index()
        found = _Hook._internal(self, t)
        if found[0] is None and self.dead:  # a value let go of (`_free`) the function holds
            a = t._data
            e = self.dead.get(id(a))
            if e is not None and e[1]() is a:
                # (as `_Hook._internal`: another tensor object on the array is the same value
                # if it has the producer's autodiff link, else a detached alias; where the
                # producer's tensor is gone, a tensor without a link is the value)
                made = e[2]()
                return e[0], not (made is t or (made._node if made is not None else None)
                                  == t._node)
        if found[0] is None and self.detached_from:
            e = self.detached_from.get(id(t))
            if e is not None and e[1] is not None:  # the detach() of an external, known by
                return e[1], False  # the tensor only (as the recorder's ``by_tensor`` knows it)
        return found

    # ----- ops -----
    def __call__(self, op, inputs):
        sizes = None
        pc = self.pc
        try:
            step = self.steps[pc]
        except IndexError:
            step = _NO_STEP
        except TypeError:  # pc None: an op applied by the forward of the op being checked
            return dispatch.apply_unhooked(op, inputs)  # (its own: see `_forward`)
        # the op is compared with the recorded values of parameters built from sizes, and runs
        # with its own; where the recorded op had none (sym None), neither has this one, in the
        # same program: the fast path takes it as it is
        if self.dims_made and (type(step) is not _OpStep or step.sym is not None):
            sizes = self._same_dims(op, step) if type(step) is _OpStep else None
            if sizes is None:  # (not as recorded, at a glance: the full comparison)
                sym = self._take_dims(op)
                if sym is not None:
                    sizes = self._recorded_sizes(op, sym)
        # (detach() and event steps have cls None; pdict is None for an op whose parameters are
        # not plain values: the slow path)
        # A parameter equal to a recorded one must hold plain values only, as `_op_key` asks
        # (``==`` takes a 1-element array for the int it equals, alone or in an index tuple):
        # most are hashed (an array is not hashable), others walked (``nested``); and the op
        # has the recorded number of inputs (where unpacking them below does not say it).
        # ``step.pcheck`` holds what there is to ask (None for an op of one or two inputs
        # without parameters, as most are: no further test)
        try:
            same = type(op) is step.cls and op.__dict__ == step.pdict
            if same and step.pcheck is not None:
                n_in, hashed, nested = step.pcheck
                same = ((n_in < 0 or len(inputs) == n_in)
                        and (hashed is None or hash(hashed(op.__dict__)) is not None)
                        and (nested is None or _plain_nested(op.__dict__, nested)))
        except (ValueError, TypeError):  # (an array of several items where the trace had a
            same = False  # number; an array in a tuple: the slow path says what differs)
        if not same:
            return self._call_slowly(op, inputs, sizes)
        # the op and its parameters are the recorded ones; now where its inputs come from: at
        # a glance for one or two inputs (unpacking one flat tuple costs half of a loop), each
        # the value of its slot with its shape and dtype; else (or where that fails) in turn
        values = self.values
        flat = step.flat
        if flat is not None and len(flat) == 8:
            try:
                t, u = inputs
            except ValueError:  # (not two inputs: the full comparison says so)
                return self._call_slowly(op, inputs, sizes)
            s, shape, dtype, _, s2, shape2, dtype2, _ = flat
            a, b = t._data, u._data
            if (t is not values[s] or u is not values[s2] or a.dtype is not dtype
                    or b.dtype is not dtype2 or shape is not None and a.shape != shape
                    or shape2 is not None and b.shape != shape2):
                a = b = None  # (no reference of ours to a constant's array: `_check_inputs`)
                self._check_inputs(op, inputs, step)
        elif step.konst is not None:  # a value and a small constant (``x * 0.5``): the
            # constant, made anew, must have the recorded bytes, shape and dtype, and be held
            # by its tensor alone (see `_getrefcount`); else the loop says what differs
            j, s, shape, dtype, k, s2, shape2, dtype2, const = step.konst
            t, u = inputs[j], inputs[k]
            a = t._data
            if t is values[s] and a.dtype is dtype and (shape is None or a.shape == shape) \
                    and u is not values[s2]:
                a = u._data
                if (type(a) is np.ndarray and a.dtype is dtype2 and a.shape == shape2
                        and a.tobytes() == const and _getrefcount(a) == _ONLY_IN_TENSOR
                        and id(a) not in self.dead):
                    self.ext_seen.add(id(u))
                    self.keep.append(u)
                else:
                    a = None
                    self._check_inputs(op, inputs, step)
            else:
                a = None
                self._check_inputs(op, inputs, step)
        elif flat is not None:
            try:
                t, = inputs
            except ValueError:  # (not one input: the full comparison says so)
                return self._call_slowly(op, inputs, sizes)
            s, shape, dtype, _ = flat
            a = t._data
            if t is not values[s] or a.dtype is not dtype or (shape is not None
                                                               and a.shape != shape):
                a = None
                self._check_inputs(op, inputs, step)
        elif step.many is not None:  # three inputs or more: their identities with the
            # slots' values, then their (shape, dtype) pairs with the recorded ones, at once
            # (~25 Python steps against ~30 an input in the loop; their number was compared
            # above: ``step.pcheck`` holds it for every op without ``flat``)
            slot_values, metas = step.many
            if not (all(map(_is, inputs, slot_values(values)))
                    and list(map(_shape_dtype, inputs)) == metas):
                self._check_inputs(op, inputs, step)
        else:
            self._check_inputs(op, inputs, step)
        if step.guards:  # captured tensors: still their captured values? (`unchanged`'s
            writes = _writes[0]  # first test inline: no call while nothing was written)
            for j, guard in step.guards:  # (another tensor there was compared by value above)
                t = inputs[j]
                if t is guard.tensor and (guard.writes != writes or t._data is not guard.array) \
                        and not guard.unchanged():
                    self.check_source(t, step.ins[j], _Where(self.n_ops, op, j))
        if sizes is not None:
            op.__dict__.update(sizes)
        # The forward runs with the hook in place and ``pc`` None, which every entry point
        # takes for "inside an op": what the forward applies, announces or reads is its own and
        # passes untraced (`nested`), as with the hook off (two stores here instead of
        # switching the dispatcher's hook off and on, ~0.1 us per op)
        self.pc = None
        try:
            out = dispatch.apply_unhooked(op, inputs)
        finally:
            self.pc = pc + 1
        if step.multi:  # several outputs (a training batch norm's three): as many as
            outs = step.outs  # recorded, each in its slot as one output is
            if type(out) is not tuple or len(out) != len(outs):
                self._outputs_mismatch(op, outs, out)
            arrays = self.arrays
            for s, o in zip(outs, out):
                arrays[s] = o._data
                values[s] = o
        else:
            s = step.outs[0]
            try:
                self.arrays[s] = out._data
            except AttributeError:  # several outputs where the trace had one
                message, hint = count_mismatch_text(_Where(self.n_ops - 1, op), op, 1,
                                                    len(out), now_tuple=True)
                self._mismatch(message, "operator mismatch", hint)
            values[s] = out  # (the maps, if built, take it up when next needed: `_index`)
        if step.free_big:  # (the values as large as FREE_BYTES when recorded)
            self._free(step.free_big)
        return out

    def _outputs_mismatch(self, op, outs, out):
        """Raise for op ``op``, recorded with several outputs (slots ``outs``), giving ``out``
        on the fast path: another number of them, or one tensor (as `_call_slowly` says)."""
        message, hint = count_mismatch_text(_Where(self.n_ops - 1, op), op, len(outs),
                                            len(out) if type(out) is tuple else 1,
                                            now_tuple=type(out) is tuple)
        self._mismatch(message, "operator mismatch", hint)

    def _check_inputs(self, op, inputs, step):
        """Where op ``op``'s inputs come from, each compared with ``step.checks``: the value of
        its slot (or a constant of the recorded bytes), with the recorded shape and dtype."""
        values = self.values
        for t, (s, shape, dtype, const) in zip(inputs, step.checks):
            a = t._data
            if t is not values[s]:
                # a constant made from Python data is a new tensor on every call: the same
                # bytes (NaN included) in a tensor that holds no value of this call is it
                if (const is not None and type(a) is np.ndarray and a.tobytes() == const
                        and (_getrefcount(a) == _ONLY_IN_TENSOR and id(a) not in self.dead
                             or self._internal(t)[0] is None)):
                    self.ext_seen.add(id(t))
                    self.keep.append(t)
                else:
                    self.check_source(t, s, _Where(self.n_ops, op, _position(inputs, t)))
            if (shape is not None and a.shape != shape) or (a.dtype is not dtype
                                                            and a.dtype != dtype):
                self._shape_mismatch(op, _position(inputs, t), t, (shape, dtype))

    def _free(self, slots):
        """Let go of the values ``slots`` (past their last use in the record, see
        `_Program.compile`), as eager code lets go of its temporaries: a checked call that kept
        every value to its end ran ~7% slower than eager (ShuffleNetV2, batch 1: its memory
        no longer reused while in cache). A freed value the function still holds is found
        through a weak reference (`_internal`: a shape read, an in-place write, an error)."""
        if self.sized_next < self.prog.made_before[self.pc]:
            self._take_up_sized()  # (before they go: `dim_slot` asks for their arrays)
        values, arrays, dead = self.values, self.arrays, self.dead
        by_tensor = self.by_tensor
        for f in slots:
            t = values[f]
            a = arrays[f]
            if a is None and t is not None and self.prog.slots[f].kind == "alias":
                # the detach() of an external (`check_source`), known by the tensor through
                # ``detached_from``: its array is the external's, not ours to let go, but held
                # to the end of the call it kept the array a Parameter had before a write gave
                # it a new one (0.x's ``w._reset(w.detach() * a + x)``)
                values[f] = None
                continue
            if t is None or a is None or a.nbytes < FREE_BYTES:
                continue  # (an external: not ours to let go; a small value: kept, cheaper
                # than letting go, ~0.5 us)
            try:
                dead[id(a)] = (f, _weak(a), _weak(t))
            except TypeError:  # (an array module whose arrays take no weak references)
                continue
            values[f] = arrays[f] = None
            if by_tensor is not None and self.slot_tensor.get(f) is t:  # (indexed already)
                del self.slot_tensor[f]
                if by_tensor.get(id(t), (None,))[0] == f:
                    del by_tensor[id(t)]
                if self.by_array.get(id(a)) == f:
                    del self.by_array[id(a)]

    def _same_dims(self, op, step):
        """`_take_dims` and `_recorded_sizes` at once for the common case, without `_freeze`
        forms: when the parameters the recorded op built from sizes hold SymDims of the
        recorded expressions here too (walked along ``step.sym``), and no other parameter holds
        SymDims, give the op the recorded values and return this call's; else None (nothing
        changed: the caller takes the full way)."""
        params = op.__dict__
        now = {}
        for name, frozen in step.sym:
            v = _dims_value(params.get(name, _NO_VALUE), frozen)
            if v is _NO_VALUE:
                return None
            now[name] = v
        for name, v in params.items():
            if name not in now and _may_hold_dims(v) and has_dims(v):
                return None
        for name in now:
            params[name] = _recorded_value(step, name, params[name])
        return now

    def _recorded_sizes(self, op, sym):
        """For an op whose parameters ``sym`` (`_freeze` forms) were built from sizes: when
        the recorded op built them from the same expressions, give it the recorded values (so
        that it compares equal) and return this call's, which it runs with; else None.

        The expressions are what the program holds (a dump computes them at the shapes it runs
        at), so they are what must match: their values differ from the recording's where a
        size comes from data (``v.shape[0]`` of ``v, _ = F.cond_take(mask, x)``)."""
        steps, k = self.steps, self.pc
        while k < len(steps) and type(steps[k]) is _AliasStep:
            k += 1
        if k >= len(steps) or type(steps[k]) is not _OpStep or steps[k].sym != sym:
            return None
        now = {}
        for name, _ in sym:
            now[name] = own = getattr(op, name)
            setattr(op, name, _recorded_value(steps[k], name, own))
        return now

    def _call_slowly(self, op, inputs, sizes=None):
        """`__call__` for what the fast path leaves: the full comparison, captured inputs,
        profiling. ``sizes``: parameters that were compared as recorded (see
        `_recorded_sizes`) and run with these values."""
        step = self._check_slowly(op, inputs)
        if sizes is not None:
            op.__dict__.update(sizes)
        dispatch._trace_hook = None  # an op's forward may apply ops itself: those are its own
        try:
            if self.profile is not None:
                start = time.perf_counter()
            out = None
            if step.rewrite is not None and all(  # opt_level >= 1: the rewritten computation
                    t._data.shape == m[0] for t, m in zip(inputs, step.metas)):  # (arith_opt)
                # (planned at the traced shapes: where data made them differ, the op itself)
                out = self._run_rewrite(step.rewrite)
            if out is None:
                out = dispatch.apply(op, *inputs)
            if self.profile is not None:
                self.profile.add(step, time.perf_counter() - start)
        finally:
            if not self.failed:
                dispatch._trace_hook = self
        outs = out if type(out) is tuple else (out,)
        if len(outs) != len(step.outs) or (type(out) is tuple) is not step.multi:
            # (one tensor against a tuple of one too, as the fast path and replay refuse it)
            message, hint = count_mismatch_text(_Where(self.n_ops - 1, op), op,
                                                len(step.outs), len(outs),
                                                now_tuple=type(out) is tuple)
            self._mismatch(message, "operator mismatch", hint)
        for o, s in zip(outs, step.outs):
            self._register(o, s)
        if step.free:
            self._free(step.free)
        return out

    def _run_rewrite(self, rewrite):
        """The output of replacement steps ``rewrite`` on this call's values (the trace hook is
        off), or None when an input is not at hand (an event took it out of ``values``)."""
        prog, values, arrays = self.prog, self.values, self.arrays

        def get(s):
            info = prog.slots[s]
            if info.kind == "const" and not info.fed:
                return Tensor._wrap(info.const, info.device)  # the recorded (captured) value
            t, a = values[s], arrays[s]
            if t is None or (a is not None and t._data is not a):  # (rebound since: not it)
                raise LookupError(s)
            return t

        try:
            return arith_opt.run_rewrite(rewrite, get, values.__setitem__)
        except LookupError:
            return None

    def _check_slowly(self, op, inputs):
        """Compare op ``op`` on ``inputs`` with the next recorded op step (past detach()
        steps), raising on the first difference; on success, move past it and return it."""
        index = self.n_ops
        where = _Where(index, op)  # formatted only for an error message
        k, step = self._next_main(where)
        if type(step) is not _OpStep:
            self._mismatch(f"{where}: the trace has {_step_text(step)} here, this call applies "
                           "an op", "operator mismatch")
        key, _ = _op_key(op, self._array_slot)
        if key[0] is not step.key[0] or (key[0] is _FunctionOp and key[1] is not step.key[1]):
            self._mismatch(f"op #{index}: the trace applied {step.name}, this call applies "
                           f"{op!r}", "operator mismatch")
        if key != step.key:
            self._mismatch(f"{where}: the parameters differ: the trace had "
                           f"{_describe_params(step.key)}; this call has "
                           f"{_describe_params(key)}", "operator mismatch")
        if len(inputs) != len(step.ins):
            self._mismatch(f"{where}: the trace gave it {len(step.ins)} inputs, this call "
                           f"{len(inputs)}", "operator mismatch")
        slots = self.prog.slots
        for j, (t, expected, meta) in enumerate(zip(inputs, step.ins, step.metas)):
            self.check_source(t, expected, _Where(index, op, j))
            if ((t._data.shape != meta[0] and slots[expected].kind not in _COMPUTED)
                    or t._data.dtype != meta[1]):  # (a computed shape: see `_Program.compile`)
                self._shape_mismatch(op, j, t, meta)
        self._done_aliases(k, where)
        return step

    def _shape_mismatch(self, op, j, t, meta):
        self._mismatch(f"{_Where(self.n_ops, op)}, input {j}: the trace had shape {meta[0]} "
                       f"{meta[1]}, this call has shape {t.shape} {t.dtype}", "shape mismatch")

    def _array_slot(self, arr):
        self._index()
        return self.by_array.get(id(arr))

    def check_source(self, t, expected, where):
        """Raise unless ``t`` comes from where the recorded ``expected`` slot did."""
        prog = self.prog
        if isinstance(t, Parameter) and t is prog.slots[expected].tensor \
                and prog.slots[expected].kind == "ext":
            # the Parameter itself, also after a write gave it another value's array (see
            # `record._Recorder._after_event`)
            self.values[expected] = t
            return
        s, alias = self._internal(t)
        e = self.detached_from.get(id(t)) if self.detached_from else None
        if e is not None and (s is None or self._outside_parameter(e[0])) \
                and e[0]._data is t._data:
            # a detached alias of an external, as recorded (`_Recorder.source`): known by the
            # tensor only (its array is the external's)
            if e[1] is None:
                step = self._expect(_AliasStep, where)
                self.check_source(e[0], step.src, where)
                e[1] = step.out
                self.values[step.out] = t
            s, alias = e[1], False
        if s is not None:
            if alias:
                step = self._expect(_AliasStep, where)
                if step.src != s:
                    self._mismatch(f"{where}: the trace detached {prog.describe(step.src)}, this "
                                   f"call detached {prog.describe(s)}", "input id mismatch")
                self._register(t, step.out)
                s = step.out
            if s != expected:
                was = prog.slots[expected].kind in _COMPUTED
                now = prog.slots[s].kind in _COMPUTED
                self._mismatch(f"{where}: the trace used {prog.describe(expected)}, this call "
                               f"used {prog.describe(s)}",
                               "expect internal node, got external" if was and not now else
                               "expect external node, got internal" if now and not was else
                               "input id mismatch")
            return
        if id(t) in self.excluded:
            # made by an exclude_from_trace block of this call: the block is the user's
            # declared untraced side path, so its result may stand in for any recorded input
            # (upstream accepts it; the op runs on it now, since checking runs eagerly)
            return
        info = prog.slots[expected]
        kind = info.kind
        if kind == "ext":
            # another tensor at an external's place (a module's buffer rebound between calls,
            # as basecls' precise BN does): upstream's compiled trace runs on whatever value
            # stands there, of the recorded device and dtype (the caller compares the shape)
            ok = t is info.tensor or (t._device == info.device
                                      and t._data.dtype == info.tensor._data.dtype)
            if ok:
                self.values[expected] = t  # (later uses in this call take the fast path)
            elif t._data.dtype != info.tensor._data.dtype:  # upstream's words for the two
                code = f"dtype mismatch: {info.tensor._data.dtype} vs {t._data.dtype}"
            else:
                code = f"comp_node mismatch: {info.device} vs {t._device}"
        elif kind == "const" and info.tensor is not None and t is info.tensor:
            # the captured external itself: its value must still be the captured one, as
            # upstream's compiled trace asserts ("tensors not equals"); the op then runs on
            # the tensor, so a GradManager attached to it sees the op (``w.grad``)
            if not prog.capture_guards[expected].unchanged():
                self._mismatch(
                    f"{where}: {prog.describe(expected)} has a new value since the trace "
                    "captured it (capture_as_const=True; an optimizer step, load_state_dict "
                    "or an in-place write changed it), and the program would compute with the "
                    "old one. Trace a function that changes its parameters without "
                    "capture_as_const (and a separate inference function to dump), or trace "
                    "again", "tensors not equals")
            ok = True
        elif kind == "grad":
            owner = (info.owner if info.owner_slot is None
                     else self.values[info.owner_slot])  # an argument: this call's
            ok = t is owner.grad
        elif kind == "const":
            # a constant made in the function from Python data (``x * 2``: a new tensor on
            # every call; under capture_as_const it was captured like an external): its value
            c = info.const
            ok = t._data.shape == c.shape and t._data.dtype == c.dtype
            if ok and info.fed:  # ``mge.tensor(a)`` of this call: computed with as it is now
                self.values[expected] = t
            elif ok:  # the same bytes (NaN included, as the fast path's host bytes) or values
                now, then = _host(t._data), _host(c)  # (CuPy constants always come here)
                ok = now.tobytes() == then.tobytes() or bool((now == then).all())
        else:
            ok = False
        if ok:
            self.ext_seen.add(id(t))
            self.keep.append(t)
        else:
            now = (f"a tensor made outside the traced ops ({_tensor_text(t)}"
                   + (f", value {_ArrayValue(t._data)!r}" if t.size <= 8 else "") + ")")
            self._mismatch(f"{where}: the trace used {prog.describe(expected)}, this call used "
                           f"{now}", "expect internal node, got external" if kind in _COMPUTED
                           else code if kind == "ext" else "tensors not equals")

    def _next_main(self, where):
        """(index, step) of the next op or event step, past detach() steps."""
        steps = self.steps
        k = self.pc
        while k < len(steps) and type(steps[k]) is _AliasStep:
            k += 1
        if k >= len(steps):
            self._mismatch(f"{where}: the trace ended after {self.prog.n_ops} ops, but this "
                           "call goes on", "too many instructions")
        return k, steps[k]

    def _done_aliases(self, k, where):
        """The detach() steps before step ``k`` were all matched; move past ``k``."""
        if self.pc != k:
            src = self.prog.describe(self.steps[self.pc].src)
            self._mismatch(f"{where}: the trace detached {src} before this step; this call "
                           "did not", "operator mismatch")
        self.pc = k + 1

    def _expect(self, kind, where):
        steps = self.steps
        if self.pc >= len(steps):
            self._mismatch(f"{where}: the trace ended after {self.prog.n_ops} ops, but this call "
                           "goes on", "too many instructions")
        step = steps[self.pc]
        if type(step) is not kind:
            self._mismatch(f"{where}: the trace has {_step_text(step)} here, this call has "
                           f"{_kind_text(kind)}", "operator mismatch")
        self.pc += 1
        return step

    # ----- events -----
    def _other_target(self, step, t):
        """Whether the recorded write event ``step`` wrote into another value than the one
        tensor ``t`` holds now (a write into ``t`` is then not that event)."""
        target = step.args[0] if step.args else None
        s = self._internal(t)[0]
        return type(target) is _Ref and s is not None and s != target.slot

    def event(self, fn, *args, **kwargs):
        """Check the call ``fn(*args, **kwargs)`` against the next recorded event, then run it
        with tracing off. An in-place write into a value of this call is dataflow, as when
        recorded (`record._Recorder.event`): it runs, and the tensor holds the result's slot."""
        pc = self.pc
        try:
            step = self.steps[pc]
        except IndexError:
            step = _NO_STEP
        except TypeError:  # pc None: announced by the forward of the op being checked, its own
            return dispatch.call_without_trace_hook(fn, *args, **kwargs)
        compared = False
        if type(step) is _AliasStep and not kwargs:
            pc = self._take_detached(pc, fn, args)
            step = self.steps[pc]
            # (past the event step too where it compared the whole event: the recorded
            # function on the recorded tensors)
            compared = self.pc > pc
        # (a set_value() the recording took as an event, as batch norm's statistics writes,
        # reaches its event step without the question, also past the detach() steps taken up
        # above: an internal write takes no detach() that holds no slot yet; but not where
        # that event wrote into another value: a set_value() into a value of this call before
        # it is dataflow, program 98985's y.set_value(y + x); w.set_value(c), or b.set_value(y)
        # of a b rebound to a value of the call, or y.set_value(c))
        if not compared and (fn is _INPLACE or fn is _RESET and (
                step.fn is not fn or self._other_target(step, args[0]))):
            written = self._internal_write(fn, args, kwargs)
            if written is not None:
                return self._write_internal(fn, args[0], args[1], *written)
        if compared:
            quiet = step.quiet or step.writes_ext
        # (op and detach() steps have fn None; n_args is -1 where the slow path must compare)
        elif step.fn is fn and step.n_args == len(args) and not kwargs:
            # the recorded event, with positional arguments that are objects or tensors
            values = self.values
            for v, e in zip(args, step.args):
                if v is e:
                    continue  # the same object (a GradManager, an optimizer, None)
                if type(e) is _Ref and v is values[e.slot] and v is not None:
                    continue  # the value of this call the trace passed (``values`` holds
                    # tensors only)
                self._match(v, e, step.args_text)
            self.pc = pc + 1
            quiet = step.quiet or step.writes_ext  # (the arguments are the recorded ones)
        else:
            args, kwargs, step = self._check_event_slowly(fn, args, kwargs)
            quiet = step.quiet
        dispatch._trace_hook = None
        try:
            result = fn(*args, **kwargs)
        finally:
            if not self.failed:
                dispatch._trace_hook = self
        if not quiet or kwargs or result is not None and isinstance(result, _MAY_HOLD_TENSORS):
            self._after_event(step, args, kwargs, result)
        # (else no tensor went in, as the fast path saw, nor came out, or the event wrote an
        # external: nothing to note)
        free = step.free
        if free:  # (`_free` has work only for a large value or a detached external, whose
            arrays = self.arrays  # array is None: not for batch norm's statistics)
            for f in free:
                a = arrays[f]
                if a is None or a.nbytes >= FREE_BYTES:
                    self._free(free)
                    break
        return result

    def _take_detached(self, pc, fn, args):
        """The event's fast path for the detach() steps before it (``pc`` the first): where
        each alias step's value is passed to the event ``fn(*args)``, at the position where
        the event step has that slot, as a detach() made in this call of the tensor that holds
        the step's source and not used before, the alias steps are taken up as `check_source`
        would (the detached tensor holds the alias slot) and the index of the event step is
        returned; else ``pc`` (the slow path compares). Where the event is ``fn`` and its other
        arguments are the recorded tensors too, ``pc`` moves past it: compared (`event`).
        Batch norm's running statistics come this way, two per layer
        (``running_mean._reset(new_mean.detach())``); which argument takes which detached
        value was worked out once (`_program._detach_plan`)."""
        plan = self.steps[pc].take
        if plan is None or plan[1] != len(args):  # (an event of positional arguments only,
            return pc  # none of them a structure, as the fast path takes)
        values, arrays, by_tensor = self.values, self.arrays, self.by_tensor
        # the detach() results `detached` put in their slots, as they were made: each still
        # on its source's array, without an autodiff link
        for src_slot, out, j in plan[2]:
            t = args[j]
            if t is not values[out] or t._data is not arrays[src_slot] or t._node is not None:
                break
        else:
            for _, out, j in plan[2]:
                arrays[out] = args[j]._data
                if by_tensor is not None or self.sized_arrays is not None:
                    self._register(args[j], out)  # (the maps, if in use, take it up)
            k, rest = plan[0], plan[3]
            if rest is not None and self.steps[k].fn is fn:
                for j, s in rest:
                    v = args[j]
                    if v is not values[s] or v is None:
                        break
                else:
                    self.pc = k + 1
            return k
        detached = self.detached_from
        if not detached:
            return pc
        taken = ()
        for src_slot, _, j in plan[2]:
            t, src = args[j], values[src_slot]
            e = detached.get(id(t))
            # a detach() of the source's holder, on the array the source had (an external has
            # none: its detach() is known by the tensor, see `check_source`), without an
            # autodiff link, holding no slot yet, as the recording's new alias step says
            if (e is None or e[0] is not src or src is None or e[1] is not None
                    or t._data is not arrays[src_slot] or t._node is not None
                    or (by_tensor is not None and id(t) in by_tensor)
                    or (taken and any(t is u for u in taken))):
                return pc
            taken += (t,)
        for (_, out, _), t in zip(plan[2], taken):
            self._register(t, out)
        return plan[0]

    def _take_up_detached(self, where):
        """Before an event (not an internal write), past the detach() steps that the event
        fast path took up (`_take_detached`): the detach() results of the call that no step
        has read yet take up the detach() steps that the recording made for them before the
        event, in the order of their detach() calls (`record._Recorder._take_up_detached`)."""
        for _, _, ref in list(self.detached_from.values()):
            t = ref()
            if t is not None:
                s, alias = self._internal(t)
                if s is None or alias:  # (else it holds a slot: read already)
                    self._take_up_alias(t, where)

    def _take_up_alias(self, t, where):
        """Take up the next step, which must be a detach() step, for ``t``: a detach() result
        that holds no slot yet (see `check_source`)."""
        step = self.steps[self.pc] if self.pc < len(self.steps) else None
        if type(step) is not _AliasStep:
            self._expect(_AliasStep, where)  # (raises: the trace has no step for it)
        self.check_source(t, step.out, where)

    def _outside(self, t):
        return (id(t) in self.ext_seen or id(t) in self.prog.ext_ids
                or any(t is a for a in self.leaves))

    def _write_internal(self, fn, t, result, s, r):
        """``fn(t, result)``, an in-place write into a value of this call (the trace has no
        step for it): ``t`` held slot ``s``; afterwards it holds slot ``r``, the result's."""
        out = self._write(fn, t, result)
        # (the maps are up to date: `_internal_write` asked them)
        self.keep.append(self.by_tensor.get(id(t)))  # its old array's id stays a key
        self.by_tensor[id(t)] = (r, t._data)
        self.keep.append(t)
        values = self.values
        if values[s] is t:
            values[s] = None  # the fast paths must not take t for its old value any more
        if values[r] is result and t._data is self.arrays[r]:
            values[r] = t  # later ops take the fast path with t (result is a temporary; it
            # is still found through the maps if used)
        elif r in self.prog.sized_slots:
            # t's own array, written in place, holds the result now: a shape read of t must
            # find slot r's sizes (`dim_slot` looks further only for the arrays noted here),
            # as the recording did (``h.set_value(h * 2); h / h.shape[0]``)
            if self.sized_next < self.prog.made_before[self.pc]:
                self._take_up_sized()
            self.sized_arrays[id(t._data)] = r
        return out

    def _check_event_slowly(self, fn, args, kwargs):
        """Compare the call ``fn(*args, **kwargs)`` with the next recorded event step (past
        detach() steps), raising on the first difference; return the arguments (generators
        listed, as when recorded) and the step."""
        for a in args:
            if _is_iterator(a):
                args = tuple(list(a) if _is_iterator(a) else a for a in args)
                break
        if kwargs and any(_is_iterator(a) for a in kwargs.values()):
            kwargs = {k: list(a) if _is_iterator(a) else a for k, a in kwargs.items()}
        name = getattr(fn, "__qualname__", None) or repr(fn)
        if self.detached_from and self.pc < len(self.steps) \
                and type(self.steps[self.pc]) is _AliasStep:
            self._take_up_detached(f"the call {name}()")
        k, step = self._next_main(f"the call {name}()")
        if type(step) is not _EventStep or step.fn is not fn:
            self._mismatch(f"after op #{self.n_ops - 1}: the trace has {_step_text(step)} "
                           f"here, this call calls {name}()", "operator mismatch")
        self._match(args, step.args, step.args_text)
        self._match(kwargs, step.kwargs, step.args_text)
        self._done_aliases(k, f"the call {name}()")
        return args, kwargs, step

    def _after_event(self, step, args, kwargs, result):
        # A tensor rebound to another value (Tensor._inplace on a non-Parameter) now holds that
        # value: later uses must come from its slot.
        if step.ref_pos is not None and not kwargs:
            values, arrays = self.values, self.arrays
            reset = step.fn is _RESET
            for j in step.ref_pos:
                t = args[j]
                s = step.args[j].slot
                if not (t is values[s] and (t._data is arrays[s]
                                            or reset and arrays[s] is None)):
                    # (an external, arrays[s] None, that `Tensor._reset` wrote holds its own
                    # storage or a copy, never a value of this call: `_rebound` would find none)
                    self._rebound(t)
        else:
            for t in _tensors_in((args, kwargs)):
                self._rebound(t)
        # New tensors it returned (megengine.autodiff.grad's gradients) hold event slots.
        if isinstance(result, _MAY_HOLD_TENSORS):
            # (a recorded external is never new, even where the fast path accepted it, or
            # this call reached it only through a detach(), without noting it in ext_seen)
            fresh = [(path, t) for path, t in _tensor_paths(result, ())
                     if self._internal(t)[0] is None and id(t) not in self.ext_seen
                     and id(t) not in self.prog.ext_ids]
        else:
            fresh = ()
        if fresh or step.out_paths:
            if len(fresh) != len(step.out_paths):
                self._mismatch(f"{step.name}(): the trace got {len(step.out_paths)} new "
                               f"tensors from it, this call {len(fresh)}", "operator mismatch")
            for (_, t), (_, s) in zip(fresh, step.out_paths):
                self._register(t, s)

    def _outside_parameter(self, t):
        """Whether ``t`` is a Parameter from outside the call, read live (see
        `record._Recorder._outside_parameter`)."""
        return isinstance(t, Parameter) and any(b is t for b in self.prog.base)

    def _rebound(self, t):
        """After an event that got tensor ``t``: if ``t`` now holds another value of this call
        (``Tensor._inplace`` rebinds a non-Parameter to the result), later uses of ``t`` come
        from that value's slot; ``t`` no longer stands in ``values`` for what it held."""
        if self._outside_parameter(t):
            return  # (a Parameter from outside stays itself: `record._Recorder._after_event`)
        self._index()
        e = self.by_tensor.get(id(t))
        if e is not None and e[1] is t._data:
            return
        s = self.by_array.get(id(t._data))
        if s is None and e is None:
            # t holds no value of this call and held none (once indexed, every tensor that
            # holds a slot's value is in ``by_tensor``): the walk below would find it only at
            # externals' places, which it leaves as they are. That is batch norm's running
            # statistics, which `Tensor._reset` gives a copy of the new value while a recorded
            # op may hold their arrays: two such writes per batch norm, each walking every slot
            # (ResNet-50 at batch 1, 106 writes, 669 slots: the walks took 6.0-8.6 ms of a checked
            # call's thread time, 0.8-1.2 ms with this return; a timer around this method, see
            # benchmarks/HISTORY.md "Traced ResNet-50 step")
            return
        if s is None and self.prog.slots[e[0]].kind in _OF_THE_CALL:
            # a value of this call, an argument too, given a new array by the event
            # (``z.set_value(x)`` of an argument's, a Parameter's value, an array): it still
            # holds its slot, as recorded (`record._Recorder._after_event`)
            self.keep.append(e)
            self.by_tensor[id(t)] = (e[0], t._data)
            self.keep.append(t)
            self.arrays[e[0]] = t._data
            if e[0] in self.prog.sized_slots:
                # a shape read of t finds the slot's sizes on its new array, as the recording
                # did (``x._reset(x + 1); return x.shape[2] * 2`` of an argument; see
                # `_write_internal`)
                if self.sized_next < self.prog.made_before[self.pc]:
                    self._take_up_sized()
                self.sized_arrays[id(t._data)] = e[0]
            return
        if s is not None:
            if e is not None:
                self.keep.append(e)  # its array's id stays a key of by_array
            self.by_tensor[id(t)] = (s, t._data)
            self.keep.append(t)
        # the fast paths must not take it for what it held any more: a value of this call, or
        # an external if it now holds a value of this call (an external whose data was only
        # replaced, as by set_value, is still itself: externals compare by identity)
        values, arrays = self.values, self.arrays
        for k, v in enumerate(values):
            if v is t and k != s and (arrays[k] is not None or s is not None):
                values[k] = None

    def _match(self, value, enc, where):
        """Raise unless ``value`` encodes to the recorded ``enc`` (see `_Recorder._encode`)."""
        if type(enc) is _Ref:
            if not isinstance(value, Tensor):
                self._mismatch(f"{where}: the trace passed {self.prog.describe(enc.slot)}, this "
                               f"call passes {type(value).__name__}", "input id mismatch")
            self.check_source(value, enc.slot, where)
            return
        if isinstance(value, Tensor):
            self._mismatch(f"{where}: the trace passed {enc!r}, this call passes a Tensor",
                           "input id mismatch")
        t = type(enc)
        if t is _Struct:
            items = [value[k] for k in enc.keys] if enc.keys is not None else list(value)
            if type(value) is not enc.cls or len(items) != len(enc.items):
                self._mismatch(f"{where}: the structure differs from the trace",
                               "input id mismatch")
            for v, e in zip(items, enc.items):
                self._match(v, e, where)
        elif t is tuple or t is list or t is dict:
            if type(value) is not t or len(value) != len(enc) or (
                    t is dict and list(value) != list(enc)):
                self._mismatch(f"{where}: the structure differs from the trace",
                               "input id mismatch")
            pairs = zip(value.values(), enc.values()) if t is dict else zip(value, enc)
            for v, e in pairs:
                self._match(v, e, where)
        elif not (_ValueLeaf(value) == _ValueLeaf(enc)) and not _alike(value, enc) and not (
                self.prog.feeds_host and _is_array(value) and _is_array(enc)
                and value.shape == enc.shape and value.dtype == enc.dtype):
            # (an array of this call where the trace passed another of its shape and dtype:
            # written as it is now, since the event runs on this call's arguments; a
            # capture_as_const trace compares it, as upstream's compiled trace does)
            self._mismatch(f"{where}: the trace passed {_ValueLeaf(enc)!r}, this call passes "
                           f"{_ValueLeaf(value)!r}", "tensors not equals")

    # ----- the end of a call -----
    def finish(self, outputs):
        prog = self.prog
        if self.pc == len(self.steps):
            if type(outputs) is Tensor:
                if len(prog.out_refs) == 1 and outputs is self.values[prog.out_refs[0]]:
                    return  # one output, the recorded value
            else:  # several: each the recorded value (a detached one has a step: not here)
                values, recorded = self.values, prog.out_refs
                k = 0
                for t in _tensors_in(outputs):
                    if k == len(recorded) or t is not values[recorded[k]]:
                        break
                    k += 1
                else:
                    if k == len(recorded):
                        return
        detached = self.detached_from
        for t in _tensors_in(outputs):  # detached outputs: the recording added a step for each
            s, alias = self._internal(t)
            if s is None and detached and id(t) in detached:  # the detach() of an external,
                self._take_up_alias(t, "the outputs")  # read by no step
            elif alias:
                step = self._expect(_AliasStep, "the outputs")
                if step.src != s:
                    self._mismatch(f"the outputs: the trace detached "
                                   f"{prog.describe(step.src)}, this call detached "
                                   f"{prog.describe(s)}", "data unreadable")
                self._register(t, step.out)
        if self.pc != len(self.steps):
            rest = self.steps[self.pc]
            self._mismatch(f"the call ended after {self.n_ops} ops, but the trace goes on with "
                           f"{_step_text(rest)}", "mismature end")
        recorded = prog.out_refs
        now = [self._internal(t)[0] for t in _tensors_in(outputs)]
        # a recorded output the trace did not compute (an external or constant: what an
        # exclude_from_trace block returned while recording) may be any value now, as upstream
        # (its guide: a block that adds 1 on even calls only makes a traced f print 3, 2, 3)
        if len(now) != len(recorded) or any(
                n is not None and n != r and prog.slots[r].kind not in ("ext", "const")
                for n, r in zip(now, recorded)):
            self._mismatch("the outputs: this call returns other values than the traced call "
                           f"({len(now)} tensors, the trace {len(recorded)})", "data unreadable")


class _ProfilingChecker(_Checker):
    """The checker of a trace made with ``profiling=True``: every op takes the full path, which
    times its dispatch (``profile``)."""

    def __call__(self, op, inputs):
        return self._call_slowly(op, inputs)


def _position(inputs, t):
    """The position of tensor ``t`` among ``inputs`` (for a message; by identity)."""
    return next(j for j, x in enumerate(inputs) if x is t)


def _alike(a, b):
    """Whether object ``a`` may stand for the recorded ``b`` in an event's arguments: an object
    of the same class, as one the function makes afresh on every call (``with GradManager() as
    gm:``, ``with gm1 | gm2:``; upstream records no such objects, only ops). A checked call runs
    the event on ``a`` itself, so nothing is computed from ``b``. Plain values and arrays still
    compare by value (`_ValueLeaf`)."""
    return (type(a) is type(b) and type(a) not in _PLAIN and not _is_array(a)
            and not isinstance(a, (np.generic, np.dtype, type)))


class _ExcludedBlock:
    """The hook while an `exclude_from_trace` block runs inside a checked call: ops and events
    run untraced, and the tensors the ops make are noted so that the checker accepts them as
    inputs of later traced ops."""

    def __init__(self, checker):
        self.checker = checker
        self.failed = False

    def __call__(self, op, inputs):
        dispatch._trace_hook = None
        try:
            out = dispatch.apply(op, *inputs)
        finally:
            dispatch._trace_hook = self
        checker = self.checker
        for o in out if isinstance(out, tuple) else (out,):
            checker.excluded.add(id(o))
            checker.keep.append(o)  # alive until the call ends: its id stays unique
        return out

    def event(self, fn, *args, **kwargs):
        return dispatch.call_without_trace_hook(fn, *args, **kwargs)

    def read(self, t, value):
        pass  # reads inside an exclude_from_trace block are the user's side work: not guarded


class _Where:
    """Where a check failed ("op #3 (MatMul), input 1"), made into text only for a message."""

    __slots__ = ("index", "op", "j")

    def __init__(self, index, op, j=None):
        self.index, self.op, self.j = index, op, j

    def __str__(self):
        text = f"op #{self.index} ({self.op!r})"
        return text if self.j is None else f"{text}, input {self.j}"
