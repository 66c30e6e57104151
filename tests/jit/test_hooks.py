"""The engine announces its non-op state changes to megengine.jit (tests for the hook contract
that megengine/jit/tracing.py relies on: ``dispatch._trace_hook.event(fn, *args)``)."""
import numpy as np
import pytest

import megengine as mge
from megengine.autodiff import GradManager
from megengine.core import dispatch


class _Probe:
    """Stands in for the tracer: runs ops plainly and notes which events were announced."""

    def __init__(self):
        self.events = []

    def __call__(self, op, inputs):
        dispatch._trace_hook = None
        try:
            return dispatch.apply(op, *inputs)
        finally:
            dispatch._trace_hook = self

    def event(self, fn, *args, **kwargs):
        self.events.append(fn.__qualname__)
        dispatch._trace_hook = None
        try:
            return fn(*args, **kwargs)
        finally:
            dispatch._trace_hook = self


def _announced(action):
    probe = _Probe()
    dispatch._trace_hook = probe
    try:
        action()
    finally:
        dispatch._trace_hook = None
    return probe.events


def test_grad_manager_announces_record_backward_release():
    w = mge.Parameter([1.0, 2.0])
    gm = GradManager().attach(w)

    def run():
        with gm:
            gm.backward((w * w).sum())

    events = _announced(run)
    assert events[:2] == ["GradManager.record", "GradManager.backward"]
    assert "GradManager.release" in events
    np.testing.assert_array_equal(w.grad.numpy(), [2.0, 4.0])


def test_grad_manager_announces_attach():
    w = mge.Parameter([1.0, 2.0])
    gm = GradManager()

    def run():
        gm.attach(w)
        with gm:
            gm.backward((w * 3).sum())

    assert _announced(run)[:2] == ["GradManager.attach", "GradManager.record"]
    assert gm.attached_tensors() == [w]
    np.testing.assert_array_equal(w.grad.numpy(), [3.0, 3.0])


def test_tensor_in_place_writes_are_announced():
    p = mge.Parameter([1.0, 2.0])

    def run():
        nonlocal p
        p._reset([3.0, 4.0])
        p.set_value([5.0, 6.0])
        p += 1
        p[0] = 0.0

    assert _announced(run) == ["Tensor._reset"] * 2 + ["Tensor._inplace"] * 2
    np.testing.assert_array_equal(p.numpy(), [0.0, 7.0])


def test_optimizer_announces_step_clear_grad_zero_grad():
    optim = pytest.importorskip("megengine.optimizer")
    p = mge.Parameter([1.0])
    opt = optim.SGD([p], lr=0.5)
    p.grad = mge.tensor([2.0])

    def run():
        opt.step()
        opt.clear_grad()
        opt.zero_grad()

    events = _announced(run)
    assert [e.split(".")[-1] for e in events[:3]] == ["step", "clear_grad", "zero_grad"]
    np.testing.assert_array_equal(p.numpy(), [0.0])
    opt._gm.release()


def test_nothing_is_announced_without_a_tracer():
    assert dispatch._trace_hook is None
    p = mge.Parameter([1.0])
    p += 1
    assert p.numpy().tolist() == [2.0]
