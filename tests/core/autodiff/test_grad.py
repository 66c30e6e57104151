"""Tests of megengine/core/autodiff/grad.py: upstream's low-level `Grad` against torch autograd."""
import numpy as np
import pytest
import torch

import megengine as mge
import megengine.functional as F
from megengine.core._imperative_rt.core2 import apply
from megengine.core.autodiff.grad import Grad
from megengine.core.ops.builtin import Elemwise

rng = np.random.RandomState(0)


def _torch_grads(fn, arrays, dy):
    ts = [torch.tensor(a, requires_grad=True) for a in arrays]
    y = fn(*ts)
    return [g.numpy() for g in torch.autograd.grad(y, ts, torch.tensor(dy))]


def test_callbacks_receive_the_gradients_and_grad_is_left_alone():
    a, b = rng.randn(3, 4).astype(np.float32), rng.randn(4).astype(np.float32)
    dy = rng.randn(3, 4).astype(np.float32)
    x, w = mge.tensor(a), mge.tensor(b)
    got = {}
    with Grad() as grad:
        grad.wrt(x, callback=lambda g: got.update(x=g))
        grad.wrt(w, callback=lambda g: got.update(w=g))
        (y,) = apply(Elemwise("mul"), F.tanh(x), w)
        grad(y, mge.tensor(dy))
    gx, gw = _torch_grads(lambda p, q: torch.tanh(p) * q, [a, b], dy)
    np.testing.assert_allclose(got["x"].numpy(), gx, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["w"].numpy(), gw, rtol=1e-5, atol=1e-6)
    assert x.grad is None and w.grad is None  # a Grad only calls back


def test_output_gradient_broadcasts_and_lists_are_accepted():
    a = rng.randn(2, 3).astype(np.float32)
    x = mge.tensor(a)
    got = []
    with Grad() as grad:
        grad.wrt(x, callback=got.append)
        y1, y2 = x * 2, F.exp(x)
        grad([y1, y2], [mge.tensor([1.0]), mge.tensor(np.ones((2, 3), np.float32))])
    np.testing.assert_allclose(got[0].numpy(), 2 + np.exp(a), rtol=1e-6)


def test_intermediate_tensors_and_unreached_tensors():
    a = rng.randn(5).astype(np.float32)
    x = mge.tensor(a)
    got = {}
    with Grad() as grad:
        grad.wrt(x, callback=lambda g: got.update(x=g))
        y = x * x
        grad.wrt(y, callback=lambda g: got.update(y=g))
        unused = mge.tensor(a)
        grad.wrt(unused, callback=lambda g: got.update(unused=g))
        grad(y * y, mge.tensor(np.ones(5, np.float32)))
    np.testing.assert_allclose(got["y"].numpy(), 2 * a * a, rtol=1e-6)
    np.testing.assert_allclose(got["x"].numpy(), 4 * a ** 3, rtol=1e-5)
    assert "unused" not in got


def test_nested_grads_give_second_order_gradients_as_torch():
    a = rng.uniform(-2, 2, 6).astype(np.float32)
    x = mge.tensor(a)
    ones = mge.tensor(np.ones(6, np.float32))
    with Grad("outer") as outer:
        with Grad("inner") as inner:
            outer.wrt(x, callback=lambda g: setattr(x, "g2", g))
            inner.wrt(x, callback=lambda g: setattr(x, "g1", g))
            (y,) = apply(Elemwise("sin"), x * x)
            inner(y, ones)
        outer(x.g1, ones)
    t = torch.tensor(a, requires_grad=True)
    (g1,) = torch.autograd.grad(torch.sin(t * t).sum(), t, create_graph=True)
    (g2,) = torch.autograd.grad(g1.sum(), t)
    np.testing.assert_allclose(x.g1.numpy(), g1.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(x.g2.numpy(), g2.numpy(), rtol=1e-4, atol=1e-5)


def test_misuse_is_explained():
    x = mge.tensor([1.0])
    used = Grad()
    used([], [])  # a Grad records one computation: called once, it stops
    with pytest.raises(RuntimeError, match="not recording"):
        used(x, x)
    grad = Grad()
    with pytest.raises(TypeError, match="callable"):
        grad.wrt(x, callback=3)
    with grad:
        grad.wrt(x)
        with pytest.raises(ValueError, match="1 outputs but 2 output gradients"):
            grad([x * 2], [x, x])
    assert grad.name.startswith("grad_")


def test_a_grad_records_from_wrt_without_with_and_stops_when_freed():
    # upstream's older tests: grad = Grad().wrt(x, callback=cb); ...; grad(y, dy)
    from megengine.core import dispatch

    a = rng.randn(4).astype(np.float32)
    x = mge.tensor(a)
    got = []
    grad = Grad().wrt(x, callback=got.append)
    y = F.exp(x)
    grad(y, F.ones_like(y))
    np.testing.assert_allclose(got[0].numpy(), np.exp(a), rtol=1e-6)
    assert not dispatch.is_recording()
    never_called = Grad().wrt(x)
    assert dispatch.is_recording()
    del never_called  # a forgotten Grad must not keep every later op recorded
    assert not dispatch.is_recording()
