"""A ``GradManager.backward`` inside a traced function, made ops of the dumped program: upstream
dumps the backward graph with the forward one, so a loaded file computes the gradients too.

A trace replays ``gm.backward(y, dy)`` as an event (the GradManager runs again on the replay's
tensors); a file has no GradManager. `expand_backward` turns the event into op steps: walking
the recorded ops between ``gm.record()`` and the backward in reverse, each op that lies between
an attached tensor and ``y`` gets an `OpGrad` step, which computes that op's input gradients
from its inputs and output gradients; gradients reaching one value from several readers are
summed with ``Add`` steps; each ``x.grad`` read after the backward becomes the gradient of
``x``. The record and release events have no effect on values and are dropped.

`OpGrad` runs the op's own forward and raw-array backward on the values it is given, so each
run of the file computes with its inputs. (The ops' ``grad_graph``, their backward written with
Tensor functions for higher-order gradients, is not used: several read arrays kept from the
forward run, a clip's mask or an abs's signs, which a file would keep as constants.)

Not dumped (DumpError): callbacks attached to a tensor whose gradient is read (they are Python
code), two backward calls into one ``.grad`` in a call, and other events (optimizer steps).
"""
import copy

import numpy as np

from ..core.dispatch import Op, xp_of
from ..core.ops import Add
from ._program import _AliasStep, _EventStep, _OpStep, _Slot, _refs_in
from .dump_format import DumpError

__all__ = ["OpGrad", "expand_backward", "with_backward"]

# OpGrad's own attributes; the op's state sits next to them under its own names, so the dump's
# handling of attributes that refer to traced values (sizes from shapes, index tensors) applies
_OWN = ("grad_of", "grad_n_in", "grad_outs", "grad_wrt")


class OpGrad(Op):
    """The input gradients of one recorded op: ``forward(*inputs, *output_grads)`` runs the op's
    forward on ``inputs`` and its backward on the output gradients, and returns the gradients of
    the inputs at positions ``grad_wrt``. ``grad_outs`` says per output where its gradient comes
    from: ``"g"`` (the next input), ``"0"`` (no reader: zeros) or ``"1"`` (ones, a ``backward(y)``
    without ``dy``)."""

    def __init__(self, op, n_in, outs, wrt):
        self.__dict__.update((k, v) for k, v in op.__dict__.items() if k != "needs_input_grad")
        self.grad_of, self.grad_n_in = type(op), n_in
        self.grad_outs, self.grad_wrt = tuple(outs), tuple(wrt)

    def _op(self):
        cls = self.grad_of
        op = cls.__new__(cls)
        op.__dict__.update((k, v) for k, v in self.__dict__.items()
                           if k not in _OWN and k != "needs_input_grad")
        op.needs_input_grad = tuple(i in self.grad_wrt for i in range(self.grad_n_in))
        return op

    def forward(self, *arrays):
        n = self.grad_n_in
        xs, given = arrays[:n], iter(arrays[n:])
        op = self._op()
        ys = op.forward(*xs)
        ys = ys if isinstance(ys, (tuple, list)) else (ys,)
        unused_none = getattr(op, "none_for_unused_grads", False)
        grads = []
        for kind, y in zip(self.grad_outs, ys):
            if kind == "g":
                grads.append(next(given))
            elif kind == "1":
                grads.append(xp_of(y).ones_like(y))
            else:
                grads.append(None if unused_none else xp_of(y).zeros_like(y))
        got = op.backward(*grads)
        got = tuple(got) if isinstance(got, (tuple, list)) else (got,)
        out = []
        for i in self.grad_wrt:
            g = got[i] if i < len(got) else None
            x = xs[i]
            # (a gradient has its input's dtype and shape, as the dispatcher's backward makes it)
            out.append(xp_of(x).zeros_like(x) if g is None else g.astype(x.dtype, copy=False))
        return out[0] if len(out) == 1 else tuple(out)

    def backward(self, *grads):
        raise RuntimeError(f"OpGrad of {self.grad_of.__name__}: a dumped gradient is computed "
                           "for inference; it cannot be differentiated again")


def _is_gm_event(step, name):
    fn = step.fn
    return (getattr(fn, "__qualname__", "") == f"GradManager.{name}"
            and getattr(fn, "__module__", "") == "megengine.autodiff.grad_manager")


def _is_float_slot(prog, s, metas_of):
    dtype = metas_of.get(s)
    return dtype is None or np.dtype(dtype).kind == "f"


def expand_backward(prog):
    """``prog``'s steps with its ``GradManager`` events made op steps (see the module
    docstring): (steps, {grad slot: the slot of its value}, number of slots). Programs without
    a backward come back unchanged."""
    steps = list(prog.steps)
    if not any(type(st) is _EventStep and _is_gm_event(st, "backward") for st in steps):
        return steps, {}, len(prog.slots)
    n_slots = len(prog.slots)
    # the dtype of each slot an op reads (metas are the inputs' (shape, dtype))
    dtype_of = {}
    for st in steps:
        if type(st) is _OpStep and st.metas:
            for s, meta in zip(st.ins, st.metas):
                dtype_of[s] = meta[1]
    for s, info in enumerate(prog.slots):
        if info.kind == "const" and info.const is not None:
            dtype_of[s] = info.const.dtype
    grad_slots = [s for s, info in enumerate(prog.slots) if info.kind == "grad"]
    target_of = {}  # grad slot -> the slot of the tensor it is the gradient of
    for g in grad_slots:
        info = prog.slots[g]
        if info.owner_slot is not None:
            target_of[g] = info.owner_slot
            continue
        owner = next((s for s, i in enumerate(prog.slots)
                      if i.kind == "const" and i.tensor is not None and i.tensor is info.owner),
                     None)
        if owner is None:
            raise DumpError(f"dump: the program reads {prog.describe(g)}, the gradient of a "
                            "tensor no traced op reads (neither an argument nor a captured "
                            "constant), so a backward in the file gives it no gradient; read "
                            "the gradients of the tensors the function computes with")
        target_of[g] = owner
    out, value_of, started, done = [], {}, None, set()
    for k, st in enumerate(steps):
        if type(st) is not _EventStep:
            out.append(st)
            continue
        if _is_gm_event(st, "record"):
            started = len(out)
            continue
        if _is_gm_event(st, "release"):
            continue
        if not _is_gm_event(st, "backward"):
            out.append(st)  # (dump refuses it, naming it)
            continue
        gm = st.args[0]
        y = st.args[1] if len(st.args) > 1 else st.kwargs.get("y")
        dy = st.args[2] if len(st.args) > 2 else st.kwargs.get("dy")
        ys, dys = list(_refs_in(y)), list(_refs_in(dy))
        if not ys or (dys and len(dys) != len(ys)):
            raise DumpError("dump: GradManager.backward is given no traced y (or another number "
                            "of dy); give the tensors to differentiate")
        attached = {id(t) for t in gm.attached_tensors()}
        wanted = {}
        for g, target in target_of.items():
            info = prog.slots[g]
            owner = info.owner
            if info.owner_slot is not None or owner is None or id(owner) in attached:
                wanted[g] = target
        for g in wanted:
            callbacks = [cb for _, (r, cbs) in gm._attached.items() if cbs for cb in cbs]
            if callbacks or st.callbacks:
                raise DumpError("dump: the GradManager has gradient callbacks (Python code run "
                                "on each gradient), which a file cannot hold; attach without "
                                "callbacks in the function to dump")
            if g in done:
                raise DumpError(f"dump: two backward calls add into {prog.describe(g)}; dump a "
                                "function with one backward per gradient it reads")
        start = started if started is not None else 0
        if not wanted:  # no gradient is read: nothing of the backward reaches the outputs
            started = None
            continue
        new_steps, grads, n_slots = _backward_steps(prog, out[start:], ys, dys,
                                                    set(wanted.values()), dtype_of, n_slots, k)
        out.extend(new_steps)
        for g, target in wanted.items():
            if target not in grads:
                raise DumpError(f"dump: {prog.describe(g)} is read after GradManager.backward, "
                                "but y does not depend on that tensor, so the backward gives it "
                                "no gradient (its .grad would be None)")
            value_of[g] = grads[target]
            out.append(_AliasStep(grads[target], g))  # the .grad read is that value
            done.add(g)
        started = None
    return out, value_of, n_slots


def _backward_steps(prog, forward, ys, dys, targets, dtype_of, n_slots, index):
    """(new op steps, {slot: its gradient's slot}, number of slots) of the backward from
    ``ys`` (with gradients ``dys``, or ones) through the op steps ``forward`` to ``targets``."""
    ops = [st for st in forward if type(st) is _OpStep]
    # the values an attached tensor reaches (only their ops get gradients, as the GradManager
    # records only ops on tensors it tracks)
    reach = set(targets)
    for st in ops:
        if any(s in reach for s in st.ins):
            reach.update(st.outs)
    grads, ones = {}, set()
    for i, y in enumerate(ys):
        if dys:
            grads[y] = dys[i]
        else:
            ones.add(y)  # backward(y): a gradient of ones, made inside the op that reads it
    new = []

    def add_grad(s, g):
        nonlocal n_slots
        if s not in grads:
            grads[s] = g
            return
        total = n_slots
        n_slots += 1
        new.append(_OpStep(index, Add(), None, None, (grads[s], g), None, (total,), False,
                           "Add (gradient sum)"))
        grads[s] = total

    for st in reversed(ops):
        if not any(s in grads or s in ones for s in st.outs):
            continue
        wrt = [i for i, s in enumerate(st.ins) if s in reach and _is_float_slot(prog, s, dtype_of)]
        if not wrt:
            continue
        kinds = ["g" if s in grads else "1" if s in ones else "0" for s in st.outs]
        ins = tuple(st.ins) + tuple(grads[s] for s in st.outs if s in grads)
        outs = tuple(range(n_slots, n_slots + len(wrt)))
        n_slots += len(wrt)
        step = _OpStep(index, OpGrad(st.template, len(st.ins), kinds, wrt), None, st.dyn, ins,
                       None, outs, len(wrt) != 1, f"OpGrad ({st.name})")
        step.sym = getattr(st, "sym", None)
        new.append(step)
        for i, g in zip(wrt, outs):
            add_grad(st.ins[i], g)
    return new, grads, n_slots


def with_backward(prog):
    """``prog`` itself, or a copy whose backward events are op steps (`expand_backward`); the
    recorded program, which its trace goes on replaying, is left unchanged."""
    steps, value_of, n_slots = expand_backward(prog)
    if not value_of and steps == prog.steps:
        return prog
    view = copy.copy(prog)
    view.steps = steps
    view.slots = list(prog.slots) + [_Slot("op", "a gradient of the dumped backward")
                                     for _ in range(n_slots - len(prog.slots))]
    for g, src in value_of.items():
        view.slots[g] = _Slot("alias", src)
    return view
