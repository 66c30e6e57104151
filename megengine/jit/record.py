"""Recording a traced function's first call into a `_Program`, and checking a later call
(``symbolic=False`` or ``True``) against it, as ``dispatch._trace_hook`` (see `tracing`)."""
import copy
import time
import weakref
from collections.abc import Iterator

import numpy as np

from ..autodiff.function import _FunctionOp
from ..core import dispatch
from ..core.tensor import Tensor
from ._program import (_PLAIN, TraceError, TraceMismatchError, _AliasStep, _ArrayValue,
                       _EventStep, _OpStep, _Ref, _Struct, _ValueLeaf, _describe_params, _host,
                       _is_array, _kind_text, _op_key, _refs_in, _step_text, _tensor_paths,
                       _tensor_text, _tensors_in)

_HINT = ("A traced function must apply the same ops, to values from the same places, with the "
         "same shapes and dtypes, on every call (no data-dependent Python control flow). "
         "Calls with new shapes, dtypes, structures or non-tensor values, or new values in "
         "tensor arguments the function read (.numpy(), .item(), a shape Tensor), are traced "
         "anew; within one such signature the ops must not change.")

# slot kinds computed inside the call; arguments, externals, constants and .grad come from
# outside (upstream calls them external nodes, and its mismatch reasons say which was expected)
_COMPUTED = frozenset({"op", "alias", "event"})

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
        self.grads_seen = {}  # recording: id(a .grad after an event) -> (its owner, it)
        self.rec_level = dispatch._recording  # GradManagers recording; changes only in events
        self.rec_changed = False
        self.profile = None  # checking with profiling=True: the Profile to add op times to
        self.excluded = set()  # checking: ids of tensors made by exclude_from_trace blocks

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
                # now, while it is one: the function may reset the .grad later (x.grad = None)
                self._resolve_grads()
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
        if kind == "ext" or (kind == "const" and info.tensor is not None):
            ok = t is info.tensor
        elif kind == "grad":
            owner = (info.owner if info.owner_slot is None
                     else self.slot_tensor[info.owner_slot])  # an argument: this call's
            ok = t is owner.grad
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
                           f"{now}", "expect internal node, got external" if kind in _COMPUTED
                           else "tensors not equals")

    def _next_main(self, where):
        """Checking: (index, step) of the next op or event step, past detach() steps."""
        steps = self.prog.steps
        k = self.pc
        while k < len(steps) and type(steps[k]) is _AliasStep:
            k += 1
        if k >= len(steps):
            self._mismatch(f"{where}: the trace ended after {self.prog.n_ops} ops, but this "
                           "call goes on", "too many instructions")
        return k, steps[k]

    def _done_aliases(self, k, where):
        """Checking: the detach() steps before step ``k`` were all matched; move past ``k``."""
        if self.pc != k:
            src = self.prog.describe(self.prog.steps[self.pc].src)
            self._mismatch(f"{where}: the trace detached {src} before this step; this call "
                           "did not", "operator mismatch")
        self.pc = k + 1

    def _expect(self, kind, where):
        steps = self.prog.steps
        if self.pc >= len(steps):
            self._mismatch(f"{where}: the trace ended after {self.prog.n_ops} ops, but this call "
                           "goes on", "too many instructions")
        step = steps[self.pc]
        if type(step) is not kind:
            self._mismatch(f"{where}: the trace has {_step_text(step)} here, this call has "
                           f"{_kind_text(kind)}", "operator mismatch")
        self.pc += 1
        return step

    def _mismatch(self, message, reason):
        self.failed = True
        if dispatch._trace_hook is self:
            dispatch._trace_hook = None  # code in the user's finally/except blocks runs plainly
        raise TraceMismatchError(f"{message}. {_HINT}", reason)

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
        for j, (t, expected, meta) in enumerate(zip(inputs, step.ins, step.metas)):
            self.check_source(t, expected, _Where(index, op, j))
            if t._data.shape != meta[0] or t._data.dtype != meta[1]:
                self._mismatch(f"{where}, input {j}: the trace had shape {meta[0]} {meta[1]}, "
                               f"this call has shape {t.shape} {t.dtype}", "shape mismatch")
        self._done_aliases(k, where)
        if step.captured:
            inputs = list(inputs)
            for j, value, device in step.captured:
                inputs[j] = Tensor._wrap(value, device)
        if self.profile is None:
            out = self._run(op, inputs)
        else:
            start = time.perf_counter()
            out = self._run(op, inputs)
            self.profile.add(step, time.perf_counter() - start)
        self.n_ops += 1
        outs = out if isinstance(out, tuple) else (out,)
        if len(outs) != len(step.outs):
            self._mismatch(f"{where}: the trace had {len(step.outs)} outputs, this call has "
                           f"{len(outs)}", "operator mismatch")
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

    # ----- values read to the host -----
    def read(self, t, value):
        """``t.numpy()`` (or item, int(), a shape Tensor...) returned ``value`` while the function
        ran. Recording notes the read (where the value came from, a copy of it, and how many
        steps came before): the Python code may have baked it into the ops that follow. A
        checked call runs that Python code, and the ops it makes are checked: nothing to do."""
        if self.checking:
            return
        s, _ = self._internal(t)  # a detached alias reads its source's value
        if s is None:
            s = self.source(t)  # an external (or a constant made from Python data)
        self.prog.reads.append((len(self.prog.steps), s, _host(value).copy()))

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
                               f"here, this call calls {name}()", "operator mismatch")
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
        for obj in () if self.checking else args:  # candidates serve _resolve_grads only
            attached = getattr(obj, "attached_tensors", None)
            if callable(attached):  # a GradManager: its tensors' .grad may be read later
                for t in attached():
                    self.candidates[id(t)] = t
            groups = getattr(obj, "param_groups", None)
            if isinstance(groups, list):  # an Optimizer
                for g in groups:
                    for t in g.get("params", ()) if isinstance(g, dict) else ():
                        self.candidates[id(t)] = t
        if not self.checking:
            # the gradients as this event left them: ``dx = x.grad; x.grad = None`` returns dx,
            # which is then no tensor's .grad any more, but a replay must read it afresh
            for a in self.candidates.values():
                g = getattr(a, "grad", None)
                if isinstance(g, Tensor) and id(g) not in self.grads_seen:
                    self.grads_seen[id(g)] = (a, g)  # g kept alive here: its id stays unique
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
                               f"from it, this call {len(fresh)}", "operator mismatch")
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
        elif not (_ValueLeaf(value) == _ValueLeaf(enc)) and not _alike(value, enc):
            self._mismatch(f"{where}: the trace passed {_ValueLeaf(enc)!r}, this call passes "
                           f"{_ValueLeaf(value)!r}", "tensors not equals")

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
        self.grads_seen.clear()
        for s, ref in weak:
            info = prog.slots[s]
            t = ref()
            if t is None:
                info.kind = "const"
            else:
                info.tensor, info.const = t, None
        self._sort_reads()

    def _sort_reads(self):
        """Split the host reads: an argument's value joins the signature (``arg_reads``: leaf
        index -> value), a constant's never changes, any other is checked on replay
        (``guards``: (steps before it, slot, value))."""
        prog = self.prog
        leaf_of = {s: i for i, s in enumerate(prog.arg_slots)}
        arg_reads, guards, seen = {}, [], set()
        for pos, s, value in prog.reads:
            i = leaf_of.get(s)
            if i is not None:
                arg_reads.setdefault(i, value)  # the first read: the value the call came with
            elif prog.slots[s].kind != "const" and (pos, s) not in seen:
                seen.add((pos, s))
                guards.append((pos, s, value))
        prog.arg_reads = tuple(sorted(arg_reads.items(), key=lambda kv: kv[0]))
        prog.guards = guards
        prog.reads = []

    def finish_checking(self, outputs):
        for t in _tensors_in(outputs):  # detached outputs: the recording added a step for each
            s, alias = self._internal(t)
            if alias:
                step = self._expect(_AliasStep, "the outputs")
                if step.src != s:
                    self._mismatch(f"the outputs: the trace detached "
                                   f"{self.prog.describe(step.src)}, this call detached "
                                   f"{self.prog.describe(s)}", "data unreadable")
                self._register(t, step.out)
        if self.pc != len(self.prog.steps):
            rest = self.prog.steps[self.pc]
            self._mismatch(f"the call ended after {self.n_ops} ops, but the trace goes on with "
                           f"{_step_text(rest)}", "mismature end")
        recorded = list(_refs_in(self.prog.out))
        now = [self._internal(t)[0] for t in _tensors_in(outputs)]
        if len(now) != len(recorded) or any(
                n is not None and n != r for n, r in zip(now, recorded)):
            self._mismatch("the outputs: this call returns other values than the traced call "
                           f"({len(now)} tensors, the trace {len(recorded)})", "data unreadable")


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

    def __init__(self, recorder):
        self.recorder = recorder
        self.failed = False

    def __call__(self, op, inputs):
        dispatch._trace_hook = None
        try:
            out = dispatch.apply(op, *inputs)
        finally:
            dispatch._trace_hook = self
        rec = self.recorder
        for o in out if isinstance(out, tuple) else (out,):
            rec.excluded.add(id(o))
            rec.keep.append(o)  # alive until the call ends: its id stays unique
        return out

    def event(self, fn, *args, **kwargs):
        dispatch._trace_hook = None
        try:
            return fn(*args, **kwargs)
        finally:
            dispatch._trace_hook = self

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


