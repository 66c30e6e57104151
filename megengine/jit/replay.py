"""Replaying a recorded `_Program` on new arguments without running the traced Python function
(``without_host=True`` calls after the first)."""
import copy
import time

from ..core import dispatch
from ..core.tensor import Tensor
import numpy as np

from ._program import (TraceError, TraceMismatchError, _AliasStep, _ArrayValue, _EventStep,
                       _OpStep, _at_path, _decode, _host, _thaw)
from .record import _INPLACE, count_mismatch_text


def replay(prog, leaves, profile=None):
    """Run ``prog`` with ``leaves`` (the call's tensor arguments, in `_flatten` order) and return
    the outputs, rebuilt in the traced structure. ``profile``: a `Profile` to add step times to."""
    try:
        return _run(prog, leaves, profile)
    except BaseException:
        _release_recordings(prog)
        raise


def _release_recordings(prog):
    """After a replay stopped half-way: GradManagers whose recording a replayed ``record``
    event started are released, as the ``with gm:`` block of the Python code would have done
    (release is a no-op for one that is not recording)."""
    for step in prog.steps:
        if type(step) is _EventStep and getattr(step.fn, "__name__", "") == "record" \
                and step.args and hasattr(step.args[0], "release"):
            step.args[0].release()


def _run(prog, leaves, profile):
    values = prog.base.copy()
    for s, t in zip(prog.arg_slots, leaves):
        values[s] = t
    for s, arr, device in prog.consts:
        values[s] = Tensor._wrap(arr, device)
    for s, arr, device in prog.fresh:  # (a tensor the function makes and writes into: a new
        values[s] = Tensor._wrap(arr.copy(), device)  # one per call, as eager code makes)
    for s, owner, o in prog.grads:
        values[s] = (owner if o is None else values[o]).grad
    apply, wrap = dispatch.apply, Tensor._wrap
    clock = time.perf_counter if profile is not None else None
    if prog.first_reads:
        _check_reads(prog, prog.first_reads, values)
    for s, guard in prog.replay_guards:
        if not guard.unchanged():
            raise TraceMismatchError(
                f"replaying: {prog.describe(s)} has a new value since the trace captured it, "
                "and the traced function reads it before writing it: the replay would compute "
                "with the captured value where eager code reads the new one. Write the tensor "
                "before reading it, or trace without capture_as_const", "tensors not equals")
    for step in prog.steps:
        if clock is not None:
            start = clock()
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
            if (dispatch._recording or dispatch._trace_hook is not None
                    or dispatch._profile_hook is not None or dispatch._format_hook is not None):
                # autodiff (or an outer trace, a profiler, format labels) must see it
                out, arrays = apply(op, *ins), False
            else:
                # apply's no-autodiff path, minus the checks the recording already made
                op.needs_input_grad = step.no_grad
                run_on = ins[0]._device if ins else getattr(op, "device", None)
                if dispatch._switcher is not None and run_on and run_on[0] == "g":
                    out = dispatch._forward_on(run_on, op, [v._data for v in ins])  # several GPUs
                else:
                    out = op.forward(*[v._data for v in ins])
                arrays, device = True, op.out_device or run_on
            # (an op whose number of outputs changed, a PyTorchModule with output_cnt=None:
            # zip would drop outputs, or split a single output along its first axis)
            if (type(out) is tuple) is not step.multi or step.multi and len(out) != len(
                    step.outs):
                message, hint = count_mismatch_text(
                    f"replaying op #{step.index} ({step.name})", op, len(step.outs),
                    len(out) if type(out) is tuple else 1, now_tuple=type(out) is tuple)
                raise TraceMismatchError(f"{message}. {hint}", "operator mismatch")
            if step.multi:
                for s, o in zip(step.outs, out):
                    values[s] = wrap(o, device) if arrays else o
            else:
                values[step.outs[0]] = wrap(out, device) if arrays else out
        elif t is _AliasStep:
            v = values[step.src]
            values[step.out] = wrap(v._data, v._device)
        elif step.fn is _INPLACE:
            # a write into a tensor from outside the call (an argument, an external). Where it
            # rebinds that tensor to the value (not a Parameter's storage write), the value's
            # slot is that tensor object from now on, as when the function ran: a later write
            # recorded into the slot (x += 1; x[0] = 0; x.set_value(c)) goes to the tensor,
            # and a later read reads what it holds then
            target, value = _decode(step.args, values)
            step.fn(target, value)
            if target._data is value._data:
                values[step.args[1].slot] = target
        elif step.callbacks is not None:  # a backward whose callbacks' ops were recorded
            result = _call_with_callbacks(step, values)
            for path, s in step.out_paths:
                values[s] = _at_path(result, path)
            for s, owner, o in prog.grads:
                values[s] = (owner if o is None else values[o]).grad
        else:
            result = step.fn(*_decode(step.args, values), **_decode(step.kwargs, values))
            for path, s in step.out_paths:
                values[s] = _at_path(result, path)
            for s, owner, o in prog.grads:
                values[s] = (owner if o is None else values[o]).grad
        if step.reads:
            _check_reads(prog, step.reads, values)
        for s in step.free:
            values[s] = None
        if clock is not None:
            profile.add(step, clock() - start)
    return _decode(prog.out, values)


def _call_with_callbacks(step, values):
    """Replay an event during which GradManager callbacks ran: each runs its recorded ops
    instead of its Python code (see `grad_callbacks`), as upstream's compiled program does."""
    from ..autodiff import grad_manager
    from .grad_callbacks import CallbackReplay

    grad_manager._callback_capture = CallbackReplay(step.callbacks)
    try:
        return step.fn(*_decode(step.args, values), **_decode(step.kwargs, values))
    finally:
        grad_manager._callback_capture = None


def _check_reads(prog, reads, values):
    """Values the recorded call read to the host, read again now: another value means the ops
    recorded after the read may have been built from the old one."""
    for r in reads:
        if type(r) is not tuple:  # a shape guard of a loaded program (see shape_guards)
            r.check(prog, values)
            continue
        s, then = r
        v = values[s]
        now = None if v is None else _host(v._data)
        if now is not None and _same_value(now, then):
            continue
        now_text = "None" if now is None else repr(_ArrayValue(now))
        raise TraceMismatchError(
            f"replaying: the traced function read {prog.describe(s)} to the host when it was "
            f"recorded (value {_ArrayValue(then)!r}); now it is {now_text}. A without_host "
            "replay does not run the Python code that used the value, so the ops recorded from "
            "it may be wrong for this one. Read a value that is only logged inside "
            "exclude_from_trace(), pass a value that shapes the ops as an argument (another "
            "argument value records anew), or trace with symbolic=True (it reruns the Python "
            "code on every call)", "tensors not equals")


def _same_value(a, b):
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind in "fc":
        return bool(np.array_equal(a, b, equal_nan=True))
    return bool((a == b).all())


class Profile:
    """Wall time per op type (and per event) over the profiled calls of a trace.

    Times are host wall time of each step, the step's own forward (and, under a recording
    GradManager, its recording); with CuPy they include only the kernel launches.
    """

    def __init__(self):
        self.calls = 0
        self.by_name = {}  # name -> [count, seconds]

    def add(self, step, seconds):
        t = type(step)
        name = (type(step.template).__name__ if t is _OpStep else
                "detach" if t is _AliasStep else step.name)
        entry = self.by_name.get(name)
        if entry is None:
            entry = self.by_name[name] = [0, 0.0]
        entry[0] += 1
        entry[1] += seconds

    def as_dict(self):
        ops = sorted(self.by_name.items(), key=lambda kv: -kv[1][1])
        return {"calls": self.calls,
                "total_seconds": sum(v[1] for _, v in ops),
                "ops": [{"name": k, "count": v[0], "seconds": v[1]} for k, v in ops]}
