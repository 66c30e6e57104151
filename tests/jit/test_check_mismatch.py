"""Tests for megengine/jit/check.py's reports: a checked call (symbolic=False) compares every op
with the record and raises upstream's ``trace error because <reason>`` on a different branch, a
changed constant, an input from elsewhere, a longer or shorter call, or a new shape."""
import numpy as np
import pytest

import megengine as mge
from megengine.core import dispatch
from megengine.jit import TraceMismatchError, trace


def test_check_mode_raises_on_a_different_branch():
    @trace(symbolic=False)
    def f(x):
        if x.sum().item() > 0:  # data-dependent Python control flow
            return x * 2
        return x - 1

    f(mge.tensor([1.0, 2.0]))
    f(mge.tensor([3.0, 2.0]))  # the same branch: fine
    with pytest.raises(TraceMismatchError) as info:
        f(mge.tensor([-1.0, -2.0]))
    msg = info.value.detail
    assert str(info.value) == "trace error because operator mismatch"
    assert "op #1" in msg and "Mul" in msg and "Sub" in msg
    assert isinstance(info.value, RuntimeError)
    assert dispatch._trace_hook is None  # the hook is gone after a failed call
    np.testing.assert_array_equal(f(mge.tensor([1.0, 1.0])).numpy(), [2.0, 2.0])


@pytest.mark.parametrize("expr, changed, reason, words", [
    ("a + b + c", "a + b - c", "operator mismatch", ["op #1", "Add", "Sub"]),
    # a constant's value changed
    ("a + b + 1", "a + b + 2", "tensors not equals", ["op #1", "constant"]),
    # inputs from elsewhere
    ("a + b + c", "c + (a + b)", "expect internal node, got external",
     ["op #1", "input 0", "argument"]),
    ("a + b + c", "a + b + c + c", "too many instructions", ["ended after 2 ops"]),
    ("(a + b) + c", "a + b", "mismature end", ["ended after 1 ops", "op #1"]),
    ("(a + b).reshape(2, 2)", "(a + b).reshape(4, 1)", "operator mismatch",
     ["parameters differ", "shape"]),
])
def test_check_mode_mismatches(expr, changed, reason, words):
    a, b, c = (mge.tensor(np.arange(4) + k) for k in range(3))
    state = {"expr": expr}

    @trace(symbolic=False)
    def f(a, b, c):
        return eval(state["expr"])

    f(a, b, c)
    f(a, b, c)
    state["expr"] = changed
    with pytest.raises(TraceMismatchError) as info:
        f(a, b, c)
    assert str(info.value) == f"trace error because {reason}"  # upstream's text
    for w in words:
        assert w in info.value.detail, info.value.detail
    state["expr"] = expr
    np.testing.assert_array_equal(f(a, b, c).numpy(), eval(expr).numpy())


def test_check_mode_runs_python_each_call():
    seen = []

    @trace(symbolic=False)
    def f(x):
        y = x * 2
        seen.append(y.numpy().tolist())
        return y

    for v in (1.0, 2.0, 3.0):
        f(mge.tensor([v]))
    assert seen == [[2.0], [4.0], [6.0]]


def test_check_mode_external_swapped_for_another_tensor():
    # upstream's compiled trace feeds whatever tensor stands at an external's place (of the
    # recorded dtype and device; earlier versions of this fork refused another tensor)
    state = {"w": mge.Parameter([1.0])}
    f = trace(lambda x: x * state["w"] + state["w"], symbolic=False)
    f(mge.tensor([2.0]))
    state["w"] = mge.Parameter([3.0])
    assert f(mge.tensor([2.0])).numpy().tolist() == [9.0]
    state["w"] = mge.tensor([3], dtype="int32")
    with pytest.raises(TraceMismatchError) as info:
        f(mge.tensor([2.0]))
    assert "external Parameter" in info.value.detail
    # upstream's words for an external of another dtype
    assert str(info.value) == "trace error because dtype mismatch: float32 vs int32"
    state["w"] = mge.tensor([3.0], device="cpu1")  # (the default device: cpu0, or gpu0)
    with pytest.raises(TraceMismatchError, match="comp_node mismatch: .* vs cpu1"):
        f(mge.tensor([2.0]))
