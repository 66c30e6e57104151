"""In-place writes inside a traced function (``p.set_value(v)``, ``p._reset(v)``, ``x[i] = v``,
``x += v``) made dataflow of the dumped program, as upstream's dump makes them.

A trace keeps a write into a tensor from outside the call (an argument, a Parameter or tensor
captured by ``capture_as_const``) as an event: a replay writes into the live tensor again. A
file has no live tensors. Upstream 1.13 dumps such a write as dataflow within one run: the
reads of the tensor after the write read the value written, the reads before it the value the
run started from, and every run of the file starts from the argument it is given and from the
captured value (measured: ``w = [1, 2, 3]``, ``w._reset(w + x); return w * 2`` dumps a program
giving ``(w + x) * 2`` on every run; ``x += 1; return x * 2`` gives ``(x + 1) * 2``).
`with_writes` does the same to a recorded program: each write event goes, and the steps after
it, the outputs and the host reads read the written value's slot where they read the tensor's.

A number or array written by ``set_value`` is a constant of the dtype the tensor had at the
write (the write event records it: an earlier write may have changed it, and a value the
function computed has no dtype in the program otherwise). The shape guards read the sizes of
the values written before them (``x.set_value(F.concat([x, x])); if x.shape[0] > 5``).

Not dumped (DumpError): batch norm in training mode (upstream refuses it, "can not dump
BatchNorm in training mode"; see `refuse_training_batch_norm`).
"""
import copy

import numpy as np

from ._program import (_AliasStep, _DimExpr, _OpStep, _Ref, _Slot, _Struct, _host,
                       _map_dim_slots)
from .dump_format import DumpError
from .dump_names import _leaves
from .record import is_write

__all__ = ["refuse_training_batch_norm", "with_writes"]


def _renamed(enc, slot_of):
    """``enc`` (a `_freeze` form or an encoded structure, see `_program._leaves`) with each
    slot ``s`` it refers to replaced by ``slot_of.get(s, s)``."""
    t = type(enc)
    if t is _Ref:
        s = slot_of.get(enc.slot)
        return enc if s is None else _Ref(s, enc.raw)
    if t is _DimExpr:
        return enc.map_slots(lambda s: slot_of.get(s, s))
    if t is tuple or t is list:
        return t(_renamed(x, slot_of) for x in enc)
    if t is dict:
        return {k: _renamed(x, slot_of) for k, x in enc.items()}
    if t is _Struct:
        return _Struct(enc.cls, enc.keys, [_renamed(x, slot_of) for x in enc.items])
    return enc


def _renamed_step(step, slot_of):
    t = type(step)
    if t is _AliasStep:
        return _AliasStep(slot_of.get(step.src, step.src), step.out)
    step = copy.copy(step)
    if t is _OpStep:
        step.ins = tuple(slot_of.get(s, s) for s in step.ins)
        step.dyn = _renamed(step.dyn, slot_of)
        step.sym = _renamed(step.sym, slot_of)
    else:
        step.args, step.kwargs = _renamed(step.args, slot_of), _renamed(step.kwargs, slot_of)
    return step


def _dtype_of(prog, s):
    """(dtype, device) of slot ``s`` where the program records them (arguments, constants);
    else (None, None)."""
    info = prog.slots[s]
    if info.kind == "const":
        return info.const.dtype, info.device
    if info.kind == "arg":
        leaf = _leaves(prog.in_tree)[list(prog.arg_slots).index(s)]
        return np.dtype(leaf.dtype), leaf.device
    return None, None


def with_writes(prog):
    """``prog`` itself, or a copy whose write events are dataflow (see the module docstring);
    the recorded program, which its trace goes on replaying, is left unchanged."""
    if not any(is_write(st) for st in prog.steps):
        return prog
    slots = list(prog.slots)
    slot_of = {}  # a written slot -> the slot holding its value from here on
    steps, guards = [], []
    # the shape guards: each reads the sizes of the values written before it (``x.set_value(
    # F.concat([x, x])); if x.shape[0] > 5`` guards the written value's size, not the input's)
    shape_guards = list(prog.shape_guards)
    after = prog.shape_guard_writes if len(prog.shape_guard_writes) == len(shape_guards) else ()
    n_writes = 0

    def rename_shape_guards():
        for i, n in enumerate(after):
            if n == n_writes and slot_of:
                tree, value, kind, where = shape_guards[i]
                shape_guards[i] = (_map_dim_slots(tree, lambda s: slot_of.get(s, s)), value,
                                   kind, where)
    pending = sorted(prog.guards, key=lambda g: g[0])  # (steps before the read, slot, value)
    for k, step in enumerate(prog.steps):
        while pending and pending[0][0] <= k:  # a host read before this step
            pos, s, value = pending.pop(0)
            guards.append((len(steps), slot_of.get(s, s), value))
        if not is_write(step):
            steps.append(_renamed_step(step, slot_of) if slot_of else step)
            continue
        target, value = step.args[0].slot, step.args[1]
        if type(value) is _Ref:
            src = slot_of.get(value.slot, value.slot)
        else:  # set_value of a number or an array: a constant of the dtype the target has
            # then, as eager code makes it (an earlier write may have changed it: ``x.set_value(
            # x.astype("float16")); x.set_value(1.5)`` writes a float16 1.5)
            dtype, device = step.target_meta or _dtype_of(prog, target)
            if dtype is None:
                raise DumpError(f"dump: the traced function writes a value that is no Tensor "
                                f"({type(value).__name__}) into {prog.describe(target)} with "
                                f"{step.name}(); the file does not know its dtype. Write a "
                                "Tensor (set_value(mge.tensor(v, dtype=...)))")
            src = len(slots)
            slots.append(_Slot("const", f"the value {step.name}() wrote"))
            slots[src].const = np.asarray(_host(value), dtype=dtype)
            slots[src].device = device
        slot_of[target] = src
        for _, s in step.out_paths:  # (``x += v`` returns x: the value written)
            slot_of[s] = src
        n_writes += 1
        rename_shape_guards()
    guards += [(len(steps), slot_of.get(s, s), value) for _, s, value in pending]
    for s in slot_of:
        if slots[s].kind == "ext":
            # a tensor captured by capture_as_const, live from its first write on (see
            # `record._Recorder._written_capture`): every read of it comes after a write and
            # reads the value written now; the slot itself is read nowhere
            slots[s] = _Slot("written", slots[s].what)
            slots[s].tensor = prog.slots[s].tensor
    view = copy.copy(prog)
    view.slots, view.steps, view.guards = slots, steps, guards
    view.shape_guards = shape_guards
    view.out = _renamed(prog.out, slot_of)
    return view


def refuse_training_batch_norm(step):
    """Raise for op step ``step`` if it is batch norm in training mode with running statistics
    (a BatchNorm module's training forward): upstream's dump refuses every batch norm in
    training mode; its message says to call ``eval()`` first. (Without running statistics,
    ``track_running_stats=False``, it is dumped here as earlier versions of this fork did: it
    normalizes by each run's batch statistics and writes nothing.)"""
    op = step.template
    if (type(op).__name__ == "_BatchNorm" and type(op).__module__ ==
            "megengine.functional.normalization" and op.training and op.has_stats):
        raise DumpError(f"dump: op #{step.index} ({step.name}) is batch norm in training mode, "
                        "which upstream's dump refuses too ('can not dump BatchNorm in "
                        "training mode'): it normalizes by each batch's statistics and writes "
                        "its running statistics. Call model.eval() before tracing the function "
                        "to dump")
