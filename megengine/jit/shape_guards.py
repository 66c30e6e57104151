"""Guards of a program dumped with symbolic shapes: the sizes its Python code used as plain
values (``int(n)``, ``range(n)``, ``if n > 1``, numpy, a format string), each with the value it
had and the user's source line, checked when a loaded program runs at other input shapes.

While a dumpable trace records (``capture_as_const=True``, ``symbolic_shape=True``), the items
of ``x.shape`` are `megengine.core._trace_option.SymDim`s. Op parameters built from them by
arithmetic are stored as expressions (`_program._DimExpr`) and computed at the shapes a run
has; every other use leaves the expression, so the program remembers it here
(`record._Recorder.guard`). A run whose shapes give another value for a guarded expression
stops with `ShapeGuardError` before the ops built from the traced value run: a program is
run at a new shape correctly, or not at all.
"""
import linecache
import os
import sys

import numpy as np

from ..core._trace_option import evaluate, render

__all__ = ["ShapeGuardError"]

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
# frames inside these (and CuPy, once loaded) are skipped too: np.eye(n) reads the size in
# numpy's code, the user's line is the one that called the engine
_SKIPPED = (_PACKAGE, os.path.dirname(os.path.abspath(np.__file__)) + os.sep)


class ShapeGuardError(ValueError):
    """A dumped program run at input shapes its traced Python code did not allow for."""

    __module__ = "megengine.jit"
    __firstlineno__ = None  # Python 3.13+'s inspect reads it in the file of __module__


def user_line():
    """``"file:line (code)"`` of the innermost caller outside the megengine package (the line
    of the traced function that used the size), or None."""
    skipped = _SKIPPED
    cupy = sys.modules.get("cupy")  # (xp.eye(n) on a GPU reads the size in CuPy's code)
    if getattr(cupy, "__file__", None):
        skipped += (os.path.dirname(os.path.abspath(cupy.__file__)) + os.sep,)
    f = sys._getframe(2)
    while f is not None:
        name = f.f_code.co_filename
        if not os.path.abspath(name).startswith(skipped):
            code = linecache.getline(name, f.f_lineno).strip()
            return f"{name}:{f.f_lineno}" + (f" ({code})" if code else "")
        f = f.f_back
    return None


def _slots(tree):
    if type(tree) is not tuple:
        return set()
    if tree[0] == "dim":
        return {tree[1]}
    out = set()
    for x in tree[1:]:
        out |= _slots(x)
    return out


class ShapeGuard:
    """One guard of a loaded program: expression ``tree`` had ``value`` when traced."""

    __slots__ = ("tree", "value", "kind", "where", "slots")

    def __init__(self, tree, value, kind, where):
        self.tree, self.value, self.kind, self.where = tree, value, kind, where
        self.slots = _slots(tree)

    def check(self, prog, values):
        now = evaluate(self.tree, lambda s, axis: values[s]._data.shape[axis])
        if now == self.value and type(now) is type(self.value):
            return
        ctx = prog.check_shapes
        if ctx is None:  # a trace's own replay: a size that data decides differs
            where = f" at {self.where}" if self.where else ""
            raise ShapeGuardError(
                f"replaying: the traced Python code used {render(self.tree, _value_dim(prog))} "
                f"as {self.kind}{where}; it was {self.value!r} when traced and is {now!r} now "
                "(data decides that size: cond_take, a boolean mask, nms). A without_host "
                "replay does not run that code again, so the ops recorded after it may be "
                "built from the traced value. Compute the value with ops (x.shape[0] in an op "
                "parameter, or a Tensor such as mask.sum()), or trace without without_host "
                "(it reruns the Python code on every call)")
        text = render(self.tree, ctx.dim_name)
        changed = [f"{name!r} is {tuple(values[s]._data.shape)}, traced {shape}"
                   for name, s, shape in ctx.inputs
                   if values[s] is not None and tuple(values[s]._data.shape) != shape]
        where = f" at {self.where}" if self.where else ""
        why = (f"the input shapes differ from the traced ones ({'; '.join(changed)})"
               if changed else "data decides a size (cond_take, a boolean mask, nms)")
        raise ShapeGuardError(
            f"run: {why}, and "
            f"the traced Python code used {text} as {self.kind}{where}; it was "
            f"{self.value!r} when traced and is {now!r} now. The ops recorded after that use "
            "may be built from the traced value, so the program does not run at these shapes. "
            "Trace and dump the model at this shape (or compute the value with ops, e.g. "
            "x.reshape(x.shape[0], -1) instead of a Python int)")


def _value_dim(prog):
    def name(slot, axis):
        return f"shape[{axis}] of {prog.describe(slot)}"
    return name


class FixedShape:
    """A replay's check of a value whose shape data decides, in a program that recorded its
    sizes as plain values (``symbolic_shape=False``): it must have its traced shape. In a
    loaded program (``loaded``) a differing shape raises ShapeGuardError, as its other checks."""

    __slots__ = ("slot", "shape", "loaded")

    def __init__(self, slot, shape, loaded=False):
        self.slot, self.shape, self.loaded = slot, tuple(shape), loaded

    def check(self, prog, values):
        now = values[self.slot]._data.shape
        if now == self.shape:
            return
        if self.loaded:
            raise ShapeGuardError(
                f"run: data decides the shape of {prog.describe(self.slot) or 'a value'} "
                f"(cond_take, a boolean mask, nms): it is {tuple(now)} now, {self.shape} when "
                "traced, and the traced code read its size. This file records fixed sizes "
                "(traced with symbolic_shape=False), so ops built from that size would be "
                "wrong. Dump a trace with symbolic_shape=True (the default): its sizes follow "
                "the data")
        from ._program import TraceMismatchError
        raise TraceMismatchError(
            f"replaying: {prog.describe(self.slot)} has shape {tuple(now)}; it had "
            f"{self.shape} when traced (data decides that shape: cond_take, a boolean mask, "
            "nms). This trace keeps sizes fixed (symbolic_shape=False) and a without_host "
            "replay does not run the Python code again, so ops built from the traced size "
            "would be wrong. Trace with symbolic_shape=True (the default) or without "
            "without_host", "shape mismatch")


class ShapeContext:
    """What a loaded program's guard messages name: its inputs (name, slot, traced shape) and
    the op that makes each other slot."""

    def __init__(self, inputs, steps):
        self.inputs = inputs
        self.by_slot = {s: name for name, s, _ in inputs}
        self.made_by = {}
        for step in steps:
            for s in getattr(step, "outs", None) or (getattr(step, "out", None),):
                if s is not None:
                    self.made_by[s] = step

    def dim_name(self, slot, axis):
        name = self.by_slot.get(slot)
        if name is not None:
            return f"{name}.shape[{axis}]"
        step = self.made_by.get(slot)
        if step is not None and hasattr(step, "index"):
            return f"shape[{axis}] of the output of op #{step.index} ({step.name})"
        return f"shape[{axis}] of value #{slot}"


def schedule(prog, guards):
    """(position, `ShapeGuard`) for each guard of ``prog``: checked as soon as the values it
    reads exist (after the step that makes the last of them; position 0: before any step)."""
    made_at = {}
    for k, step in enumerate(prog.steps):
        for s in getattr(step, "outs", None) or (getattr(step, "out", None),):
            if s is not None:
                made_at[s] = k
    out = []
    for tree, value, kind, where in guards:
        g = ShapeGuard(tree, value, kind, where)
        pos = max((made_at.get(s, -1) + 1 for s in g.slots), default=0)
        out.append((pos, g))
    return out


def tree_from_json(v):
    """An expression tree read back from JSON (lists) as tuples."""
    if type(v) is list:
        return tuple(tree_from_json(x) for x in v)
    return v
