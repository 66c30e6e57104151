"""GradManager callbacks in ``without_host`` traces: recorded as ops on the first call, replayed
as those ops afterwards, so their Python side effects happen while tracing only (upstream).

Upstream's ``trace(without_host=True)`` and ``xla_trace`` compile the whole step, backward and
gradient callbacks included, and never run Python again: a callback's ops (``F.clip(grad)``)
stay in the program, its side effects (a counter, a print) happen on the first call only.
This engine replays a ``GradManager.backward`` as an event (it calls ``backward`` again), which
would call every callback in Python on every replay. So while a replaying trace records an event,
`CallbackTape` runs each callback under a small recorder of the ops it applies; a replay of that
event hands `CallbackReplay` to the GradManager, which runs those ops on the new gradient
instead of calling the callback.

A callback is replayed from its ops only when they say all it did: it applied ops (or none) and
returned one of their results, its input gradient, or None. One that read a value to the host
(``.item()``), made an event (an in-place write into an outside tensor), or returned a tensor no
recorded op made (the all-reduce callback hands back a tensor its bucket fills later) is called
in Python on every replay, as before; so is one marked ``_runs_on_replay = True``
(`megengine.core.autodiff.grad.Grad`'s delivery of gradients to its callbacks).
"""
import copy

from ..core import dispatch

__all__ = ["CallbackTape", "CallbackReplay"]


class _Recording:
    """The ops one callback call applied: step i is (op template, input sources, output slots);
    slot 0 is the callback's input gradient, a source is ("slot", i), ("tensor",) for the
    attached tensor, or ("value", tensor) for any other tensor (held, read when replayed)."""

    __slots__ = ("steps", "out", "shape", "dtype")

    def __init__(self, steps, out, grad):
        self.steps, self.out = steps, out  # out: a slot, or None (the callback dropped it)
        self.shape, self.dtype = grad.shape, grad.dtype

    def run(self, tensor, grad):
        values = [grad]
        for template, sources, outs in self.steps:
            ins = [values[s[1]] if s[0] == "slot" else tensor if s[0] == "tensor" else s[1]
                   for s in sources]
            result = dispatch.apply(copy.copy(template), *ins)  # autodiff and hooks see it
            if len(outs) == 1 and not isinstance(result, tuple):
                result = (result,)
            values.extend(result)
        return None if self.out is None else values[self.out]


class _OpRecorder:
    """``dispatch._trace_hook`` while one callback runs: it notes the ops and applies them."""

    def __init__(self, tensor, grad):
        self.tensor = tensor
        self.values = [grad]  # slot -> Tensor (kept alive: ids stay unique during the call)
        self.slot_of = {id(grad): 0}
        self.steps = []
        self.pure = True  # False once it did something the ops do not capture

    def _source(self, t):
        s = self.slot_of.get(id(t))
        if s is not None and self.values[s]._data is t._data:
            return ("slot", s)
        if t is self.tensor:
            return ("tensor",)
        return ("value", t)

    def __call__(self, op, inputs):
        template = copy.copy(op)  # before forward stores anything on it
        sources = [self._source(t) for t in inputs]
        dispatch._trace_hook = None  # the op's forward may apply ops of its own
        try:
            result = dispatch.apply(op, *inputs)
        finally:
            dispatch._trace_hook = self
        outs = result if isinstance(result, tuple) else (result,)
        slots = []
        for o in outs:
            self.slot_of[id(o)] = len(self.values)
            slots.append(len(self.values))
            self.values.append(o)
        self.steps.append((template, sources, tuple(slots)))
        return result

    def event(self, fn, *args, **kwargs):
        self.pure = False  # a state change (a write into an outside tensor): Python must run
        return dispatch.call_without_trace_hook(fn, *args, **kwargs)

    def read(self, t, value):
        self.pure = False  # the callback may branch on the value: Python must run

    def finish(self, grad, out):
        if not self.pure:
            return None
        if out is None:
            return _Recording(self.steps, None, grad)
        s = self.slot_of.get(id(out))
        if s is None or self.values[s]._data is not out._data:
            return None  # a tensor no recorded op made
        return _Recording(self.steps, s, grad)


class CallbackTape:
    """Installed as ``grad_manager._callback_capture`` while a replaying trace records an event:
    calls each callback under an `_OpRecorder` and keeps, in call order, its `_Recording` (or
    None where the callback must run in Python on replays)."""

    def __init__(self):
        self.entries = []

    def __call__(self, cb, tensor, grad):
        if grad is None or getattr(cb, "_runs_on_replay", False):
            # (None: an earlier callback dropped the gradient; this one is still called)
            self.entries.append(None)
            return cb(tensor, grad)
        previous = dispatch._trace_hook
        recorder = _OpRecorder(tensor, grad)
        dispatch._trace_hook = recorder
        try:
            out = cb(tensor, grad)
        finally:
            dispatch._trace_hook = previous
        self.entries.append(recorder.finish(grad, out))
        return out


class CallbackReplay:
    """Installed while a replay runs an event: the n-th callback call runs the n-th recording
    (the same program calls them in the same order); a call without one, or whose gradient
    differs in shape or dtype from the recorded one, calls the callback."""

    def __init__(self, entries):
        self._entries = iter(entries)

    def __call__(self, cb, tensor, grad):
        entry = next(self._entries, None)
        if entry is None or grad is None or entry.shape != grad.shape \
                or entry.dtype != grad.dtype:
            return cb(tensor, grad)
        return entry.run(tensor, grad)
