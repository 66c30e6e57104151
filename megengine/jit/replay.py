"""Replaying a recorded `_Program` on new arguments without running the traced Python function
(``without_host=True`` calls after the first)."""
import copy
import time

from ..core import dispatch
from ..core.tensor import Tensor
from ._program import TraceError, _AliasStep, _OpStep, _at_path, _decode, _thaw


def replay(prog, leaves, profile=None):
    """Run ``prog`` with ``leaves`` (the call's tensor arguments, in `_flatten` order) and return
    the outputs, rebuilt in the traced structure. ``profile``: a `Profile` to add step times to."""
    values = prog.base.copy()
    for s, t in zip(prog.arg_slots, leaves):
        values[s] = t
    for s, arr, device in prog.consts:
        values[s] = Tensor._wrap(arr, device)
    for s, owner in prog.grads:
        values[s] = owner.grad
    apply, wrap = dispatch.apply, Tensor._wrap
    clock = time.perf_counter if profile is not None else None
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
                    or dispatch._profile_hook is not None):
                out = apply(op, *ins)  # autodiff (or an outer trace, or a profiler) must see it
                if step.multi:
                    for s, o in zip(step.outs, out):
                        values[s] = o
                else:
                    values[step.outs[0]] = out
            else:
                # apply's no-autodiff path, minus the checks the recording already made
                op.needs_input_grad = step.no_grad
                run_on = ins[0]._device if ins else getattr(op, "device", None)
                if dispatch._switcher is not None and run_on and run_on[0] == "g":
                    out = dispatch._forward_on(run_on, op, [v._data for v in ins])  # several GPUs
                else:
                    out = op.forward(*[v._data for v in ins])
                device = op.out_device or run_on
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
        if clock is not None:
            profile.add(step, clock() - start)
    return _decode(prog.out, values)


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
