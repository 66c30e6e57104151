"""Tests for megengine.core._trace_option: the symbolic-shape switch is off by default and on
when MEGENGINE_USE_SYMBOLIC_SHAPE is set, as upstream's; `SymDim` arithmetic with ints and
SymDims (made inline) equals the general path's; ``Tensor.size`` while a dumpable trace runs."""
import operator
import os
import subprocess
import sys

import numpy as np
import pytest

import megengine
from megengine.core import _trace_option as opt
from megengine.core._trace_option import SymDim, set_symbolic_shape, use_symbolic_shape


def _default_in_child(env_value):
    env = {k: v for k, v in os.environ.items() if k != "MEGENGINE_USE_SYMBOLIC_SHAPE"}
    # the child imports the same megengine as this process
    root = os.path.dirname(os.path.dirname(os.path.abspath(megengine.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in [env.get("PYTHONPATH")] if p])
    if env_value is not None:
        env["MEGENGINE_USE_SYMBOLIC_SHAPE"] = env_value
    code = "from megengine.core._trace_option import use_symbolic_shape as u; print(u())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    return out.stdout.strip()


def test_default_follows_the_environment():
    assert _default_in_child(None) == "False"
    assert _default_in_child("1") == "True"


def test_set_returns_the_previous_value():
    old = set_symbolic_shape(True)
    try:
        assert use_symbolic_shape() is True
        assert set_symbolic_shape(False) is True and use_symbolic_shape() is False
    finally:
        set_symbolic_shape(old)


class _Source:
    """A stand-in recording: SymDims report their guards here."""

    def __init__(self):
        self.guards = []

    def guard(self, tree, value, kind):
        self.guards.append((tree, value))


_OPS = [operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv,
        operator.mod]


def _key(d):
    return type(d), getattr(d, "value", d), getattr(d, "tree", None), getattr(d, "nonneg", None)


@pytest.mark.parametrize("fn", _OPS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("other", [3, 0, -2, "symdim", "negative symdim"])
def test_arithmetic_with_ints_and_symdims_equals_the_general_path(monkeypatch, fn, other):
    # the operators make the SymDim inline for a Python int or a SymDim of the same recording;
    # the general path (`SymDim._arith`, which a numpy int takes) is the oracle: the same
    # value, expression and sign knowledge, both ways round, and no guard
    src = _Source()
    monkeypatch.setattr(opt, "_dim_source", src)
    n = SymDim(7, ("dim", 0, 1), src, True)
    if other == "symdim":
        o = SymDim(2, ("dim", 1, 0), src, True)
    elif other == "negative symdim":
        o = SymDim(-3, ("-", 0, ("dim", 1, 0)), src, False)
    else:
        o = other
    for a, b in ((n, o), (o, n)):
        if b is n and type(a) is SymDim:
            continue  # (both SymDims: the first order covers it)
        reverse = b is n
        try:
            want = _key(n._arith(np.int64(o) if type(o) is int else o, fn_name(fn), reverse))
        except ZeroDivisionError:
            with pytest.raises(ZeroDivisionError):
                fn(a, b)
            continue
        got = fn(a, b)
        assert _key(got) == want
        assert type(got) is SymDim and got.value == fn(getattr(a, "value", a),
                                                       getattr(b, "value", b))
    assert src.guards == []
    if type(o) is int:  # (hand-checked: the expression is the operator on the two trees)
        assert (n * o).tree == ("*", ("dim", 0, 1), o) and (o - n).tree == ("-", o, n.tree)
        assert (n + o).nonneg is (o >= 0) and (n - o).nonneg is False


def fn_name(fn):
    return {operator.add: "+", operator.sub: "-", operator.mul: "*", operator.truediv: "/",
            operator.floordiv: "//", operator.mod: "%"}[fn]


def test_arithmetic_after_the_recording_and_with_other_recordings_is_plain(monkeypatch):
    src, other = _Source(), _Source()
    n = SymDim(6, ("dim", 0, 0), src, True)
    monkeypatch.setattr(opt, "_dim_source", None)  # the recording is over: plain values
    assert n * 2 == 12 and type(n * 2) is int and type(2 - n) is int and 2 - n == -4
    monkeypatch.setattr(opt, "_dim_source", src)
    m = SymDim(4, ("dim", 0, 1), other, True)  # a SymDim of another recording: a value only
    assert n + m == 10 and type(n + m) is int
    assert set(src.guards) == {(("dim", 0, 0), 6)} and other.guards == []  # (n's value left
    # its expression: a guard of n's recording, reported at each use)
