"""Tests of megengine/autodiff: GradManager (attach, record, backward, callbacks) and Function."""
import gc
import weakref
import types

import numpy as np
import pytest
import torch

import megengine
import megengine.functional as F
from megengine.core.dispatch import on_device
from megengine import Parameter, Tensor
from megengine.autodiff import Function, GradManager

from devices import host_default_device, record_aten_matmuls, shares_memory  # noqa: F401
# (host_default_device: a fixture)


def rand(*shape):
    return np.asarray(np.random.randn(*shape), dtype=np.float32)


def torch_grads(fn, *arrays):
    ts = [torch.tensor(a, requires_grad=True) for a in arrays]
    fn(*ts).backward()
    return [t.grad.numpy() for t in ts]


def test_backward_matches_torch():
    a, b = rand(3, 4), rand(4, 2)
    x, w = Tensor(a), Parameter(b)
    gm = GradManager().attach([x, w])
    with gm:
        loss = (F.exp(x @ w) * 0.5).sum()
        gm.backward(loss)
    ga, gb = torch_grads(lambda x, w: ((x @ w).exp() * 0.5).sum(), a, b)
    np.testing.assert_allclose(x.grad.numpy(), ga, rtol=1e-5)
    np.testing.assert_allclose(w.grad.numpy(), gb, rtol=1e-5)


def test_attach_one_tensor_or_a_list_and_attached_tensors_order():
    a, b, c = Tensor([1.0]), Tensor([2.0]), Tensor([3.0])
    gm = GradManager().attach(b).attach([c, a])
    assert gm.attached_tensors() == [b, c, a]
    gm.attach(b)  # attaching again neither duplicates nor reorders
    assert gm.attached_tensors() == [b, c, a]
    assert gm.is_attached(c)
    gm.detach(c)
    assert gm.attached_tensors() == [b, a] and not gm.is_attached(c)


def test_attached_tensors_forgets_dead_tensors():
    gm = GradManager()
    keep = Tensor([1.0])
    gm.attach([keep, Tensor([2.0])])
    gc.collect()
    assert gm.attached_tensors() == [keep]


def test_attach_rejects_bool_and_non_tensors():
    with pytest.raises(TypeError, match="attach"):
        GradManager().attach(Tensor([True, False]))
    with pytest.raises(TypeError, match="attach"):
        GradManager().attach([np.ones(2)])
    with pytest.raises(TypeError, match="callbacks"):
        GradManager().attach(Tensor([1.0]), callbacks=[1])


@pytest.mark.parametrize("callbacks", [3, [lambda t, g: g, "cb"]])
def test_attach_with_bad_callbacks_says_so_and_attaches_nothing(callbacks):
    # a lone non-callable gave "'int' object is not iterable"; the tensors stay unattached
    w, v = Parameter([1.0]), Parameter([2.0])
    gm = GradManager().attach([w])
    with pytest.raises(TypeError, match="callbacks must be a callable .* or a list of them, "
                                        "got (int|str)"):
        gm.attach([w, v], callbacks=callbacks)
    assert gm.attached_tensors() == [w]
    with gm:
        gm.backward((w * v).sum())
    assert w.grad.tolist() == [2.0] and v.grad is None


def test_callbacks_run_in_order_and_change_the_gradient():
    x = Tensor([1.0, 2.0])
    seen = []

    def double(t, g):
        seen.append(("double", t is x, g.numpy().tolist()))
        return g * 2

    def plus_one(t, g):
        seen.append(("plus_one", t is x, g.numpy().tolist()))
        return g + 1

    gm = GradManager().attach(x, callbacks=[double])
    gm.attach(x, callbacks=plus_one)  # a second attach adds its callbacks after the first ones
    with gm:
        gm.backward((x * 3).sum())
    assert seen == [("double", True, [3.0, 3.0]), ("plus_one", True, [6.0, 6.0])]
    np.testing.assert_array_equal(x.grad.numpy(), [7.0, 7.0])


def test_callback_must_return_a_tensor():
    x = Tensor([1.0])
    gm = GradManager().attach(x, callbacks=lambda t, g: g.numpy())
    with pytest.raises(TypeError, match="callback"):
        with gm:
            gm.backward(x * 2)


def test_record_and_release_by_hand():
    x = Tensor([1.0, 2.0])
    gm = GradManager().attach(x)
    gm.record()
    with pytest.raises(RuntimeError, match="record"):
        gm.record()
    y = (x * x).sum()
    assert y._tracked
    gm.backward(y)  # backward releases
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 4.0])
    z = x * x
    assert not z._tracked  # nothing is recorded after the release
    gm.record()
    gm.release()
    gm.release()  # a second release is harmless
    assert not (x * x)._tracked


def test_backward_outside_recording_raises():
    x = Tensor([1.0])
    gm = GradManager().attach(x)
    with gm:
        y = x * 2
    with pytest.raises(RuntimeError, match="not recording"):
        gm.backward(y)


def test_backward_of_nothing_only_releases():
    # upstream 1.13 measured: gm.backward() (y None) and gm.backward([]) differentiate nothing
    # and end the recording; the next recording's backward works as before
    x = Tensor([1.0])
    gm = GradManager().attach(x)
    for nothing in ((), (None,), ([],)):
        with gm:
            x * 2  # recorded, not differentiated
            gm.backward(*nothing)
            assert x.grad is None and not (x * 2)._tracked
    with gm:
        gm.backward((x * 3).sum())
    np.testing.assert_array_equal(x.grad.numpy(), [3.0])
    with pytest.raises(RuntimeError, match="not recording"):
        gm.backward()


def test_context_manager_releases_on_error():
    x = Tensor([1.0])
    gm = GradManager().attach(x)
    with pytest.raises(ZeroDivisionError):
        with gm:
            1 / 0
    assert not (x * 2)._tracked
    with gm:  # and can record again
        gm.backward(x * 2)
    assert x.grad.item() == 2.0


def test_backward_with_lists_of_outputs_and_output_gradients():
    a = rand(3)
    x = Tensor(a)
    dy1, dy2 = rand(3), rand(2)
    gm = GradManager().attach(x)
    with gm:
        y1 = F.exp(x)
        y2 = x[:2] * x[1:]
        gm.backward([y1, y2], [Tensor(dy1), dy2])
    t = torch.tensor(a, requires_grad=True)
    torch.autograd.backward([t.exp(), t[:2] * t[1:]], [torch.tensor(dy1), torch.tensor(dy2)])
    np.testing.assert_allclose(x.grad.numpy(), t.grad.numpy(), rtol=1e-5)


def test_backward_default_output_gradient_is_ones_and_checks_shapes():
    x = Tensor(rand(2, 3))
    gm = GradManager().attach(x)
    with gm:
        gm.backward(x * 3)
    np.testing.assert_array_equal(x.grad.numpy(), np.full((2, 3), 3.0))
    with pytest.raises(ValueError,
                       match=r"shape \(2,\) for an output of shape \(2, 3\).*broadcast"):
        with gm:
            gm.backward(x * 3, np.ones(2, np.float32))
    with pytest.raises(ValueError, match="outputs"):
        with gm:
            gm.backward([x * 3], [None, None])
    # upstream takes a one-element gradient for a 0-d loss (its 1.0-era losses were (1,))
    x.grad = None
    with gm:
        gm.backward((x * x).mean(), Tensor(np.array([2.0], np.float32)))
    np.testing.assert_allclose(x.grad.numpy(), 2 * 2 * x.numpy() / 6, rtol=1e-6)
    with pytest.raises(ValueError, match=r"output gradient of shape \(2,\) for an output"):
        with gm:
            gm.backward((x * x).mean(), Tensor(np.ones(2, np.float32)))


def test_output_gradients_broadcast_to_the_outputs_shape():
    # upstream 1.13 measured: for y of shape (5, 4), dy of shape (), (4,) or (1, 4) gives the
    # gradients of dy broadcast to (5, 4); the oracle is torch's backward of the broadcast dy
    a, b = rand(5, 3), rand(3, 4)
    row = rand(4)
    gm = GradManager()
    for dy in (np.float32(2.5), row, row[None]):
        x, w = Tensor(a), Parameter(b)
        gm.attach([x, w])
        with gm:
            gm.backward(F.tanh(x @ w), Tensor(dy))
        tx, tw = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
        torch.tanh(tx @ tw).backward(torch.tensor(np.broadcast_to(dy, (5, 4)).copy()))
        np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(w.grad.numpy(), tw.grad.numpy(), rtol=1e-5, atol=1e-6)
    # the gradient of an attached output is its own writable array, not the broadcast view
    x = Tensor(rand(2, 3))
    gm = GradManager().attach(x)
    with gm:
        gm.backward(x, Tensor(np.float32(2.0)))
    x.grad += 1
    np.testing.assert_array_equal(x.grad.numpy(), np.full((2, 3), 3.0))


def test_attach_an_intermediate_inside_recording():
    a = rand(4)
    x = Tensor(a)
    gm = GradManager().attach(x)
    with gm:
        h = F.sin(x * 2)
        gm.attach(h)
        y = (h * h * x).sum()
        gm.backward(y)
    t = torch.tensor(a, requires_grad=True)
    th = (t * 2).sin()
    th.retain_grad()
    (th * th * t).sum().backward()
    np.testing.assert_allclose(h.grad.numpy(), th.grad.numpy(), rtol=1e-5)  # d y / d h
    np.testing.assert_allclose(x.grad.numpy(), t.grad.numpy(), rtol=1e-5)  # all paths to x


def test_an_intermediate_attached_while_recording_gets_the_ops_made_after():
    # upstream 1.13 measured (autodiff fuzz programs 96787, 98113): an intermediate the
    # recording computed and used before it was attached gets the gradient of the ops made
    # after the attach only; what it came from still gets every path. Earlier versions of this
    # fork gave y the earlier ops' gradient too (8, and 3 where upstream gives none)
    x = Tensor([1.0, 1.0])
    gm = GradManager().attach(x)
    with gm:
        y = x * 2
        z = y * 3
        gm.attach(y)
        w = y * 5
        gm.backward((z + w).sum())
    np.testing.assert_array_equal(y.grad.numpy(), [5.0, 5.0])
    np.testing.assert_array_equal(x.grad.numpy(), [16.0, 16.0])
    x.grad = None
    with gm:
        y = (x * 2).reshape(1, 2)
        z = y.reshape(2) * 3
        gm.attach(y)  # used only before: no gradient
        gm.backward(z.sum())
    assert y.grad is None
    np.testing.assert_array_equal(x.grad.numpy(), [6.0, 6.0])


def test_grads_accumulate_over_two_backwards():
    x = Tensor([1.0, 2.0])
    gm = GradManager().attach(x)
    with gm:
        gm.backward((x * x).sum())
    first = x.grad
    with gm:
        gm.backward((x * 3).sum())
    np.testing.assert_array_equal(x.grad.numpy(), [5.0, 7.0])
    # upstream 1.13 measured: the second gradient goes into the same .grad object
    assert first is x.grad
    np.testing.assert_array_equal(first.numpy(), [5.0, 7.0])
    x.grad = None
    with gm:
        gm.backward(x.sum())
    np.testing.assert_array_equal(x.grad.numpy(), [1.0, 1.0])


def test_accumulation_goes_into_a_grad_the_user_set():
    # upstream 1.13 measured: p.grad = t, then a backward adds into t ([10, 20] + 2 each)
    p = Parameter([1.0, 2.0])
    t = Tensor([10.0, 20.0])
    p.grad = t
    gm = GradManager().attach(p)
    with gm:
        gm.backward((p * 2).sum())
    assert p.grad is t
    np.testing.assert_array_equal(t.numpy(), [12.0, 22.0])
    # upstream 1.13 measured: an int32 .grad plus float32 gradients is float32 ([2.5, 2.5])
    u = Tensor(np.array([1, 1], "int32"))
    p.grad = u
    with gm:
        gm.backward((p * 1.5).sum())
    assert p.grad is u and u.dtype == np.float32
    np.testing.assert_array_equal(u.numpy(), [2.5, 2.5])


def test_accumulation_leaves_other_holders_of_the_first_gradient_alone():
    """What reached .grad from elsewhere keeps its values when .grad accumulates; oracle:
    torch's AccumulateGrad (a shared first gradient is cloned, the later ones added in place)."""
    # a callback keeps the Tensor it returns (torch: a hook that saves its gradient)
    saved = []
    p = Parameter([1.0, 2.0])
    gm = GradManager().attach(p, callbacks=[lambda _, g: (saved.append(g), g)[1]])
    with gm:
        gm.backward((p * 2).sum())
    with gm:
        gm.backward((p * 3).sum())
    tp = torch.tensor([1.0, 2.0], requires_grad=True)
    tsaved = []
    tp.register_hook(lambda g: (tsaved.append(g), g)[1])
    (tp * 2).sum().backward()
    (tp * 3).sum().backward()
    for ours, theirs in zip(saved + [p.grad], tsaved + [tp.grad]):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())  # [2, 2], [3, 3]; [5, 5]

    # a callback returns one tensor for two parameters: each .grad is its own object
    shared = Tensor([1.0, 1.0])
    a, b = Parameter([0.0, 0.0]), Parameter([0.0, 0.0])
    gm = GradManager().attach([a, b], callbacks=[lambda _, g: shared])
    with gm:
        gm.backward((a + b).sum())
    gm_a = GradManager().attach(a)
    with gm_a:
        gm_a.backward((a * 4).sum())
    np.testing.assert_array_equal(a.grad.numpy(), [5.0, 5.0])
    np.testing.assert_array_equal(b.grad.numpy(), [1.0, 1.0])
    np.testing.assert_array_equal(shared.numpy(), [1.0, 1.0])

    # the dy given to backward reaches .grad unchanged through y = x * 1
    x = Parameter([1.0, 2.0])
    dy = Tensor([7.0, 8.0])
    gm = GradManager().attach(x)
    with gm:
        gm.backward(x * 1, dy)
    with gm:
        gm.backward(x.sum())
    np.testing.assert_array_equal(x.grad.numpy(), [8.0, 9.0])
    np.testing.assert_array_equal(dy.numpy(), [7.0, 8.0])

    # a first gradient that is a view of another tensor's array (reshape's gradient)
    w = Parameter(np.zeros((2, 2), "float32"))
    gm = GradManager().attach(w)
    with gm:
        gm.backward((w.reshape(4) * Tensor([1.0, 2.0, 3.0, 4.0])).sum())
    view_of = Tensor._wrap(w.grad._data.reshape(4), w.grad._device)  # shares its memory
    with gm:
        gm.backward(w.sum())
    np.testing.assert_array_equal(w.grad.numpy(), [[2.0, 3.0], [4.0, 5.0]])
    np.testing.assert_array_equal(view_of.numpy(), [1.0, 2.0, 3.0, 4.0])


def test_recorded_accumulation_goes_into_the_same_grad():
    # upstream 1.13 measured: while an outer GradManager records, the second inner backward
    # adds into the same .grad object, and the outer backward differentiates the sum
    x = Parameter([1.0, 2.0])
    outer, inner = GradManager().attach(x), GradManager().attach(x)
    with outer:
        with inner:
            inner.backward((x ** 3).sum())
        first = x.grad
        with inner:
            inner.backward((x ** 2).sum())
        assert first is x.grad
        np.testing.assert_array_equal(first.numpy(), [5.0, 16.0])  # 3x^2 + 2x
        outer.backward(x.grad.sum())
    np.testing.assert_array_equal(x.grad.numpy(), [13.0, 30.0])  # + 6x + 2, into the same object
    assert first is x.grad


def test_unused_and_detached_tensors_get_no_gradient():
    x, z = Tensor([1.0]), Tensor([2.0])
    gm = GradManager().attach([x, z])
    gm.detach(z)
    with gm:
        gm.backward(x * z)
    assert x.grad.item() == 2.0 and z.grad is None
    w = Tensor([1.0])
    gm.attach(w)
    with gm:
        gm.backward(x * 1)
    assert w.grad is None


def test_integer_paths_carry_no_gradient():
    x = Tensor([1.5, 2.5])
    gm = GradManager().attach(x)
    with gm:
        y = x.astype("int32").astype("float32") * x
        gm.backward(y.sum())
    np.testing.assert_array_equal(x.grad.numpy(), [1.0, 2.0])


def test_graph_is_freed_after_backward():
    x = Tensor(rand(100))
    gm = GradManager().attach(x)
    with gm:
        h = x * 2
        saved = weakref.ref(h._data)  # Mul below saves h's array for its backward
        y = (h * h).sum()
        del h
        gc.collect()
        assert saved() is not None  # the recorded graph keeps it alive...
        gm.backward(y)
    gc.collect()
    assert saved() is None  # ...and backward lets it go
    assert x.grad is not None


_SHAPE_READERS = {  # name: (megengine, torch) of h and w, whose backward reads no value of h
    "add": lambda h, w: h + w, "rsub": lambda h, w: w - h, "mul_constant": lambda h, w: h * 0.5,
    "div_constant": lambda h, w: h / 4.0, "add_after_rdiv": lambda h, w: 3.0 / w + h,
    "sum": lambda h, w: w * h.sum(), "mean": lambda h, w: w * h.mean(axis=0),
    "mod_constant": lambda h, w: h % 3.0 + w,
    "exp": (lambda h, w: F.exp(h), lambda h, w: torch.exp(h)),  # (these read their output)
    "tanh": (lambda h, w: F.tanh(h), lambda h, w: torch.tanh(h)),
    "sqrt": (lambda h, w: F.sqrt(h), lambda h, w: torch.sqrt(h)),
    "sigmoid": (lambda h, w: F.sigmoid(h), lambda h, w: torch.sigmoid(h)),
}


@pytest.mark.parametrize("name", sorted(_SHAPE_READERS))
def test_recorded_ops_keep_no_input_their_backward_does_not_read(name):
    # an op keeps for backward only what its gradient reads, as torch saves: a + b, a * 0.5,
    # sum and mean read shapes only, exp and sigmoid their output, so the intermediate h is
    # not held until backward (a ResNet-50's residual adds held 28 % of its saved activations)
    use = _SHAPE_READERS[name]
    ours, theirs = use if isinstance(use, tuple) else (use, use)
    w = Tensor(rand(4, 100))
    gm = GradManager().attach(w)
    with gm:
        h = w * 2.0  # (whose backward reads only the 2.0)
        released = weakref.ref(h._data)
        y = ours(h, w)
        del h
        gc.collect()
        assert released() is None
        gm.backward(y.sum())
    tw = torch.tensor(w.numpy(), requires_grad=True)
    theirs(tw * 2.0, tw).sum().backward()
    np.testing.assert_allclose(w.grad.numpy(), tw.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_nothing_recorded_without_attached_inputs():
    x = Tensor([1.0])
    gm = GradManager().attach(Tensor([0.0]))
    with gm:
        y = x * 2
    assert y._node is None and not y._tracked


def test_parameter_updated_in_place_between_steps():
    a = rand(3)
    p = Parameter(a.copy())
    gm = GradManager().attach(p)
    for _ in range(3):
        with gm:
            gm.backward((p * p).sum())
        p -= 0.1 * p.grad  # an optimizer step: in place, outside recording
        p.grad = None
    expect = a * 0.8 ** 3
    np.testing.assert_allclose(p.numpy(), expect, rtol=1e-5)


def test_parameter_set_value_with_new_shape_between_steps():
    p = Parameter(np.ones(2, np.float32))
    gm = GradManager().attach(p)
    with gm:
        gm.backward(p.sum())
    p.set_value(np.ones(3, np.float32))
    p.grad = None
    with gm:
        gm.backward((p * 2).sum())
    np.testing.assert_array_equal(p.grad.numpy(), [2.0, 2.0, 2.0])


# ----- user-defined ops -----

class ScaledIdentity(Function):
    """Forward: y = x; backward: 10 * dy, so that a test sees the custom backward is used."""

    def forward(self, x):
        self.seen = x.shape
        return x * 1

    def backward(self, dy):
        assert self.seen == dy.shape  # what forward stored is there in backward
        return dy * 10


class MulAdd(Function):
    """Two inputs, two outputs: (a * b, a + b)."""

    def forward(self, a, b):
        self.a, self.b = a, b
        return a * b, a + b

    def backward(self, d_mul, d_add):
        if d_add is None:  # an output nobody used gets None, as upstream
            return d_mul * self.b, d_mul * self.a
        return d_mul * self.b + d_add, d_mul * self.a + d_add


def test_function_uses_its_own_backward():
    x = Tensor([1.0, 2.0])
    gm = GradManager().attach(x)
    with gm:
        y = ScaledIdentity()(x)
        np.testing.assert_array_equal(y.numpy(), [1.0, 2.0])
        gm.backward((y * y).sum())
    np.testing.assert_array_equal(x.grad.numpy(), [20.0, 40.0])


def test_function_with_two_inputs_and_outputs_matches_torch():
    a, b = rand(3), rand(3)
    x, z = Tensor(a), Tensor(b)
    gm = GradManager().attach([x, z])
    with gm:
        m, s = MulAdd()(x, z)
        gm.backward((F.exp(m) + s * s).sum())
    ga, gb = torch_grads(lambda x, z: ((x * z).exp() + (x + z) ** 2).sum(), a, b)
    np.testing.assert_allclose(x.grad.numpy(), ga, rtol=1e-5)
    np.testing.assert_allclose(z.grad.numpy(), gb, rtol=1e-5)


def test_function_unused_output_gets_none():
    x, z = Tensor([2.0]), Tensor([3.0])
    gm = GradManager().attach([x, z])
    with gm:
        m, _ = MulAdd()(x, z)
        gm.backward(m)
    assert x.grad.item() == 3.0 and z.grad.item() == 2.0


def test_function_rejects_non_tensors():
    with pytest.raises(TypeError, match="ScaledIdentity"):
        ScaledIdentity()(np.ones(2))


# ----- 0.x F.grad -----

def test_functional_grad_keeps_graph_and_leaves_dot_grad_alone():
    a = rand(3)
    x = Tensor(a)
    gm = GradManager().attach(x)
    with gm:
        y = (F.sin(x) * x).sum()
        g1 = F.grad(y, x)
        g2, = F.grad(y, [x])  # the graph is still there for a second call
        assert x.grad is None
        gm.backward(y)
    expect, = torch_grads(lambda t: (t.sin() * t).sum(), a)
    np.testing.assert_allclose(g1.numpy(), expect, rtol=1e-5)
    np.testing.assert_allclose(g2.numpy(), expect, rtol=1e-5)
    np.testing.assert_allclose(x.grad.numpy(), expect, rtol=1e-5)


def test_functional_grad_needs_a_recorded_x():
    with pytest.raises(RuntimeError, match="grad"):
        F.grad(Tensor([1.0]) * 2, Tensor([1.0]))


# ----- upstream 1.13 semantics (test_grad_manger.py / test_function.py, our own code) -----

def _x():
    a = np.random.rand(10).astype(np.float32)
    return a, Tensor(a)


def test_second_order_with_nested_grad_managers():
    a, x = _x()
    gm, gm2 = GradManager().attach([x]), GradManager().attach([x])
    with gm:
        with gm2:
            gm2.backward(F.cos(x))
        np.testing.assert_allclose(x.grad.numpy(), -np.sin(a), rtol=1e-5)
        gm.backward(x.grad)  # accumulates d(sum -sin x)/dx into x.grad
    np.testing.assert_allclose(x.grad.numpy(), -np.sin(a) - np.cos(a), rtol=1e-5, atol=1e-6)


def test_group_members_share_the_graph_and_accumulate():
    a, x = _x()
    gm, gm2 = GradManager().attach([x]), GradManager().attach([x])
    with gm | gm2:
        y = F.cos(x)
        gm.backward(y)
        gm2.backward(y)  # gm's backward did not free what gm2 needs
    np.testing.assert_allclose(x.grad.numpy(), -2 * np.sin(a), rtol=1e-5)


def test_group_members_do_not_see_each_others_backward():
    a, x = _x()
    gm, gm2 = GradManager().attach([x]), GradManager().attach([x])
    with gm | gm2:
        gm2.backward(F.cos(x))
        assert not x.grad._tracked
        gm.backward(x.grad)  # nothing recorded for gm: x.grad stays
        np.testing.assert_allclose(x.grad.numpy(), -np.sin(a), rtol=1e-5)


def test_a_later_grad_manager_does_not_see_an_earlier_ones_backward():
    a, x = _x()
    gm, gm2 = GradManager().attach([x]), GradManager().attach([x])
    with gm2:
        with gm:
            gm2.backward(F.cos(x))
            gm.backward(x.grad)
    np.testing.assert_allclose(x.grad.numpy(), -np.sin(a), rtol=1e-5)


def test_group_of_groups_and_errors():
    gms = [GradManager() for _ in range(3)]
    group = gms[0] | gms[1] | gms[2]
    assert group._gms == gms
    assert (gms[2] | (gms[0] | gms[1]))._gms == [gms[0], gms[1], gms[2]]
    with pytest.raises(TypeError):
        gms[0] | 3
    gms[1].record()
    with pytest.raises(RuntimeError, match="already recording"):
        with gms[0] | gms[1]:
            pass
    assert not gms[0]._recording  # a failed group start releases the members it started
    gms[1].release()


@pytest.mark.parametrize("target,torch_target", [
    (F.cos, torch.cos), (F.sin, torch.sin), (lambda x: x * 2 + 1, lambda t: t * 2 + 1)])
def test_forward_mode_emulated_with_reverse_mode(target, torch_target):
    """upstream's jvp trick: the output gradient is attached to the outer GradManager."""
    a, x = _x()
    with GradManager() as gm:
        with GradManager().attach([x]) as gm2:
            out = target(x)
            out_grad = F.zeros_like(out)
            gm.attach(out_grad)
            gm2.backward(out, out_grad)
        gm.backward(x.grad)
    _, expected = torch.autograd.functional.jvp(torch_target, torch.tensor(a), torch.ones(10))
    np.testing.assert_allclose(out_grad.grad.numpy(), expected.numpy(), rtol=1e-5)


def test_callback_returning_none_drops_the_gradient():
    w = Parameter(2.0)
    seen = []
    gm = GradManager().attach(w)
    for i in range(3):
        with gm:
            x = Tensor(float(i))
            gm.attach(x, callbacks=lambda t, g: seen.append(g.item()))  # returns None
            gm.backward(x * w)
        assert x.grad is None
    assert seen == [2.0, 2.0, 2.0]
    np.testing.assert_allclose(w.grad.numpy(), 0.0 + 1.0 + 2.0)


def test_callbacks_after_one_returning_none_are_called_with_none():
    # upstream 1.13 measured: each callback gets what the one before returned, None too; a
    # later callback may bring a gradient back
    seen = []
    x = Parameter([1.0, 2.0])
    gm = GradManager().attach(x, callbacks=[lambda t, g: None,
                                            lambda t, g: seen.append(g),
                                            lambda t, g: Tensor([5.0, 6.0])])
    with gm:
        gm.backward((x * 3).sum())
    assert seen == [None]
    np.testing.assert_array_equal(x.grad.numpy(), [5.0, 6.0])
    gm = GradManager().attach(x, callbacks=[lambda t, g: None, lambda t, g: g])
    x.grad = None
    with gm:
        gm.backward((x * 3).sum())
    assert x.grad is None


def test_attaching_again_while_recording_keeps_the_value_first_wanted():
    # upstream 1.13 measured (autodiff fuzz programs 12, 14): a tensor the recording already
    # differentiates, attached again after an in-place write, keeps the gradient of the value
    # it had at the recording's start; the new callbacks run after the old ones
    a = rand(3)
    x = Parameter(a)
    gm = GradManager().attach(x)
    with gm:
        y = x * x
        x *= 2.0
        gm.attach(x, callbacks=lambda t, g: g + 1)
        gm.backward((y * x).sum())
    t = torch.tensor(a, requires_grad=True)
    (t * t * (t * 2)).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), t.grad.numpy() + 1, rtol=1e-6)
    x = Parameter(a)
    gm = GradManager().attach(x)
    with gm:
        x[...] = Tensor(a * 5)  # x is now a copy of a constant: its old value gets nothing
        gm.attach(x)
        gm.backward((x * x).sum())
    assert x.grad is None


def test_a_gradient_of_the_value_before_a_reshaping_write_is_delivered():
    # upstream 1.13 measured: `x[...] = v` of another shape while recording; x's gradient is
    # the one of the value the recording started from, in that value's shape
    x = Parameter(np.ones((2, 3), np.float32))
    gm = GradManager().attach(x, callbacks=lambda t, g: g * 2)
    with gm:
        y = x * 3
        x[...] = Tensor(7.0)
        gm.backward(y.sum())
    assert x.shape == () and x.grad.shape == (2, 3)
    np.testing.assert_array_equal(x.grad.numpy(), np.full((2, 3), 6.0))


@pytest.mark.parametrize("other_finished", [False, True])
def test_ops_before_a_mid_recording_attach_see_a_constant_whatever_recorded_them(
        other_finished):
    # upstream 1.13 measured, both cases: w * u was recorded by g1 (through u) while w was
    # another GradManager's leaf; attaching w to g1 afterwards must not make that product
    # deliver a gradient to w (autodiff fuzz programs 11005 and 3805 gave w u + 10)
    w, u = Parameter([2.0, 3.0]), Parameter([5.0, 7.0])
    g0, g1 = GradManager().attach(w), GradManager().attach(u)
    with g1:
        with g0:
            y = w * u
            if other_finished:
                g0.backward(y.sum())
                w.grad = None
            g1.attach(w)
            z = w * 10
        g1.backward((y + z).sum())
    np.testing.assert_array_equal(w.grad.numpy(), [10.0, 10.0])
    np.testing.assert_array_equal(u.grad.numpy(), [2.0, 3.0])


def test_where_upstream_loses_or_leaks_gradients_the_rules_hold():
    # each differs from upstream 1.13 on purpose (measured; docs/compatibility.rst): torch's
    # autograd.grad gives the same as this fork in every case
    x = Parameter([1.0, 2.0])
    gm = GradManager().attach(x)
    with gm:
        gm.backward([x], [Tensor([2.0, 3.0])])  # x itself: upstream gives no gradient
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 3.0])
    x = Parameter([1.0, 2.0])
    g1, g0 = GradManager().attach(x), GradManager()
    with g1:
        with g0:
            d = (x * 3).detach()  # upstream: g1 differentiates through it while g0 records
        g1.backward((d * x).sum())
    np.testing.assert_array_equal(x.grad.numpy(), [3.0, 6.0])
    x = Parameter([1.0, 2.0])
    g1, g0 = GradManager().attach(x), GradManager()
    with g0:
        with g1:
            y = x * 3
            g0.attach(y)  # upstream: g1's backward then gives x no gradient
            g1.backward((y * y).sum())
    np.testing.assert_array_equal(x.grad.numpy(), [18.0, 36.0])
    x = Parameter([1.0, 2.0])
    x.grad = Tensor([5.0, 5.0])
    gm = GradManager().attach(x, callbacks=lambda t, g: None)
    with gm:
        gm.backward(x.sum() * 2)  # upstream: TypeError at its `.grad += None`
    np.testing.assert_array_equal(x.grad.numpy(), [5.0, 5.0])


def test_a_function_input_written_after_forward_keeps_its_forward_value_for_backward():
    # autodiff fuzz program 904: upstream 1.13's backward reads the written value (torch's
    # save_for_backward raises); the gradient needs the value forward saw
    class Cube(Function):
        def forward(self, x):
            self.x = x
            return x * x * x

        def backward(self, dy):
            return dy * 3 * self.x * self.x

    a = np.array([1.0, -2.0, 0.5], np.float32)
    x = Parameter(a)
    gm = GradManager().attach(x)
    with gm:
        y = Cube()(x)
        x *= 2.0
        gm.backward(y.sum())
    np.testing.assert_allclose(x.grad.numpy(), 3 * a * a, rtol=1e-6)


def test_attach_errors_are_assertion_errors_as_upstream():
    with pytest.raises(AssertionError):
        GradManager().attach(Tensor([True, False]))
    with pytest.raises(AssertionError):
        GradManager().attach([np.ones(2)])


def test_attach_while_recording_and_attach_intermediate():
    a = Parameter([1.0])
    gm = GradManager()
    with gm:
        b = a * 3  # a not attached: not recorded
        gm.attach(b)
        gm.backward(b + 1)
    assert b.grad.item() == 1 and a.grad is None
    w = Parameter([2.0])
    gm = GradManager()
    with gm:
        y = w * 5  # before attach: ignored
        gm.attach(w)
        z = w * 7
        gm.backward(y + z)
    assert w.grad.item() == 7


def test_function_gets_none_for_an_unused_output_and_may_return_none():
    class Pair(Function):
        def forward(self, a, b):
            return a * 1, b * 1

        def backward(self, ga, gb):
            assert gb is None
            return ga * 2, None

    a, b = Parameter([1.0]), Parameter([2.0])
    gm = GradManager().attach([a, b])
    with gm:
        out, _ = Pair()(a, b)
        gm.backward(out)
    assert a.grad.item() == 2.0 and b.grad is None

    class Stop(Function):
        def forward(self, x):
            return x * 1

        def backward(self, *_):
            return None

    with gm:
        gm.backward(Stop()(a * 3) + a * 4)
    assert a.grad.item() == 2.0 + 4.0
    with pytest.raises(TypeError, match="expect type Tensor as inputs"):
        Stop()(a, 1)


def test_function_backward_is_differentiated_by_an_outer_grad_manager():
    class Cube(Function):
        def forward(self, x):
            self.save_for_backward(x)
            return x ** 3

        def backward(self, g):
            x, = self.saved_tensors
            return g * g * 3 * x ** 2  # uses g twice: an outer GradManager differentiates it

    a = np.array([0.5, -1.5], np.float32)
    x = Tensor(a)
    dy = Tensor([1.0, 2.0])
    outer, inner = GradManager().attach(dy), GradManager().attach(x)
    with outer:
        with inner:
            inner.backward(Cube()(x), dy)
        outer.backward(x.grad.sum())
    np.testing.assert_allclose(x.grad.numpy(), np.array([1.0, 4.0]) * 3 * a ** 2, rtol=1e-6)
    np.testing.assert_allclose(dy.grad.numpy(), 2 * np.array([1.0, 2.0]) * 3 * a ** 2, rtol=1e-6)


def test_function_backward_through_its_saved_input_is_differentiated():
    # upstream's test_2nd_grad_with_custom_gradient: the input forward keeps (self.x = x)
    # stands for x when an outer GradManager records the backward; oracle torch's double
    # backward of a cos whose backward is -sin(x) * dy, x attached to both managers
    class MySin(Function):
        def forward(self, x):
            self.x = x
            return F.sin(x)

        def backward(self, dy):
            return F.cos(self.x) * dy

    class MyCos(Function):
        def forward(self, x):
            self.x = x
            return F.cos(x)

        def backward(self, dy):
            return -MySin()(self.x) * dy

    a = np.random.RandomState(5).rand(6).astype(np.float32)
    x = Tensor(a)
    outer, inner = GradManager().attach(x), GradManager().attach(x)
    with outer:
        with inner:
            cos = MyCos()
            inner.backward((cos(x) * Tensor(np.arange(6, dtype=np.float32))).sum())
        first = x.grad.numpy().copy()
        outer.backward((x.grad * x.grad).sum())
    t = torch.tensor(a, requires_grad=True)
    (g,) = torch.autograd.grad((t.cos() * torch.arange(6.0)).sum(), t, create_graph=True)
    (gg,) = torch.autograd.grad((g * g).sum(), t)
    np.testing.assert_allclose(first, g.detach().numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(x.grad.numpy(), (g + gg).detach().numpy(), rtol=1e-5, atol=1e-6)
    assert cos.x._node is None  # the kept input is unrecorded again


def test_group_inside_a_traced_function_replays():
    from megengine.jit import trace

    w1, w2 = Parameter([1.0, 2.0]), Parameter([3.0])
    gm1, gm2 = GradManager().attach(w1), GradManager().attach(w2)

    @trace(symbolic=True)
    def step(x):
        with gm1 | gm2:
            y = (w1 * x).sum() * w2
            gm1.backward(y)
            gm2.backward(y)
        return y

    for i in range(3):
        w1.grad = w2.grad = None
        x = Tensor([1.0 + i, 2.0])
        step(x)
        np.testing.assert_allclose(w1.grad.numpy(), 3.0 * x.numpy())
        np.testing.assert_allclose(w2.grad.numpy(), [1.0 + i + 4.0])


def test_function_returning_a_held_tensor_does_not_alias_grads():
    """upstream's test_skip_invalid_grad: backward returns one saved tensor for both inputs."""
    c = rand(2, 3)
    cookie = Tensor(c)

    class FakeGrad(Function):
        def forward(self, a, b):
            return a + b

        def backward(self, g):
            return cookie, cookie

    a, b = Parameter(rand(2, 3)), Parameter(rand(2, 3))
    gm = GradManager().attach([a, b])
    with gm:
        gm.backward(FakeGrad()(a, b).sum())
    np.testing.assert_array_equal(a.grad.numpy(), c)
    np.testing.assert_array_equal(b.grad.numpy(), c)
    with on_device(a.grad.device):  # (raw array code runs on the current GPU: make it a's)
        a.grad._data *= 2  # an in-place edit touches a.grad only
    np.testing.assert_array_equal(b.grad.numpy(), c)
    np.testing.assert_array_equal(cookie.numpy(), c)


# ----- CuPy views of torch memory (a GPU's gradients from a PyTorchModule), shown on the CPU -----

class UnownedMemory:  # named as CuPy's class for memory it does not own (the bridge's views)
    pass


class _FakeCupyArray:
    """What _exclusive reads of a CuPy array: base (None for a view of torch memory, as for an
    array of CuPy's own), data.mem, flags, copy()."""

    def __init__(self, memory, base=None):
        self.data = types.SimpleNamespace(mem=memory)
        self.base = base
        self.flags = types.SimpleNamespace(writeable=True, c_contiguous=True)

    def copy(self):
        return _FakeCupyArray(object())  # CuPy's own memory


def test_cupy_views_of_one_torch_buffer_never_become_two_grads_on_it():
    from megengine.autodiff.grad_manager import _exclusive
    from megengine.core import dispatch

    torch_buffer = UnownedMemory()
    a, b = _FakeCupyArray(torch_buffer), _FakeCupyArray(torch_buffer)
    claimed = {}
    ga, gb = _exclusive(a, claimed), _exclusive(b, claimed)
    # foreign memory nobody declared fresh is copied, as numpy views of torch memory are
    assert ga is not a and gb is not b and ga.data.mem is not gb.data.mem
    own = _FakeCupyArray(object())  # memory CuPy allocated: handed over as it is
    assert _exclusive(own, claimed) is own
    fresh = _FakeCupyArray(UnownedMemory())  # torch's buffer, declared this gradient's alone
    try:
        dispatch.declare_fresh_gradient(fresh)
        assert _exclusive(fresh, claimed) is fresh
    finally:
        dispatch.forget_fresh_gradients()


class _SlottedUnownedMemory:
    """CuPy's UnownedMemory as it is: no weak reference to it, its torch owner as ``_owner``."""
    __slots__ = ("_owner",)

    def __init__(self, owner):
        self._owner = owner


_SlottedUnownedMemory.__name__ = "UnownedMemory"


def test_a_cupy_gradient_declared_fresh_is_held_only_through_its_owner():
    # CuPy's memory objects take no weak reference; the registry holds the torch tensor that
    # owns the memory weakly instead, so that the buffer is freed once backward has used it
    from megengine.autodiff.grad_manager import _exclusive
    from megengine.core import dispatch

    class Owner:  # stands for the torch tensor the bridge made for the view
        pass

    owner = Owner()
    owner_alive = weakref.ref(owner)
    grad = _FakeCupyArray(_SlottedUnownedMemory(owner))
    try:
        dispatch.declare_fresh_gradient(grad)
        assert _exclusive(grad, {}) is grad  # taken as it is
        other = _FakeCupyArray(_SlottedUnownedMemory(Owner()))  # not declared: copied
        assert _exclusive(other, {}) is not other
        del grad, owner
        gc.collect()
        assert owner_alive() is None  # the registry did not keep it
    finally:
        dispatch.forget_fresh_gradients()


def test_in_place_write_to_an_attached_tensor_differentiates_the_attached_value():
    # upstream differentiates w.r.t. the value that was attached; a write into the tensor
    # during recording (F.scatter writes its inp, as upstream; `p[i] = v`) rebinds the
    # tensor to the write's output, which must not take over its gradient. Found by
    # MegEngine/Models big_sleep's differentiable_topk (a scatter into its Parameter).
    a, w = rand(3, 6), rand(3, 6)
    idx = np.array([[1], [3], [0]])
    x = Parameter(a)
    gm = GradManager().attach(x)
    with gm:
        first = F.softmax(x, axis=-1)  # uses the attached value
        F.scatter(x, -1, Tensor(idx.astype(np.int32)), F.full((3, 1), -5.0))
        loss = ((first + F.softmax(x, axis=-1)) * Tensor(w)).sum()  # x: the scattered value
        gm.backward(loss)

    def reference(t):
        s = t.scatter(-1, torch.tensor(idx), torch.full((3, 1), -5.0))  # out of place
        return ((torch.softmax(t, -1) + torch.softmax(s, -1)) * torch.tensor(w)).sum()

    (expected,) = torch_grads(reference, a)
    np.testing.assert_allclose(x.grad.numpy(), expected, rtol=1e-5, atol=1e-6)
    # the write itself stays, as upstream's scatter leaves it in inp
    scattered = a.copy()
    scattered[np.arange(3), idx[:, 0]] = -5.0
    np.testing.assert_array_equal(x.numpy(), scattered)

    y = Parameter(a)
    gm = GradManager().attach(y)
    with gm:
        y[0] = 0.0
        gm.backward((y * Tensor(w)).sum())
    expected = w.copy()
    expected[0] = 0  # the attached row 0 no longer reaches the loss
    np.testing.assert_allclose(y.grad.numpy(), expected)


class _BernoulliSTE(Function):
    """DMVFN's RoundSTE: sample 0/1 with probability x, straight-through gradient; its backward
    returns one gradient too many (a trailing None), which upstream programs rely on."""

    def forward(self, x):
        y = megengine.random.uniform(size=x.shape)
        one_hot = F.zeros_like(y)
        one_hot[y < x] = 1
        return one_hot

    def backward(self, grad):
        return grad, None


def test_function_backward_may_return_trailing_nones():
    x = Tensor([[0.0, 1.0, 0.0]])
    gm = GradManager().attach(x)
    with gm:
        y = _BernoulliSTE()(x)
        np.testing.assert_array_equal(y.numpy(), [[0.0, 1.0, 0.0]])  # p=0 never, p=1 always
        gm.backward((y * Tensor([[1.0, 2.0, 3.0]])).sum())
    np.testing.assert_array_equal(x.grad.numpy(), [[1.0, 2.0, 3.0]])  # identity gradient


def test_function_backward_may_return_fewer_gradients_than_inputs():
    # upstream 1.13 measured: the inputs past the gradients backward returns get none
    # (a mask input: x.grad [1, 0, 1]; three inputs, two gradients: [2.0], [3.0], None)
    class Masked(Function):
        def forward(self, x, mask):
            self.mask = mask
            return x * mask

        def backward(self, dy):
            return dy * self.mask

    class Three(Function):
        def forward(self, a, b, c):
            return a * b + c

        def backward(self, dy):
            return dy * 2, dy * 3

    x, mask = Tensor([1.0, 2.0, 3.0]), Tensor([1.0, 0.0, 1.0])
    gm = GradManager().attach(x)
    with gm:
        gm.backward(Masked()(x, mask).sum())
    np.testing.assert_array_equal(x.grad.numpy(), [1.0, 0.0, 1.0])
    abc = [Tensor([1.0]) for _ in range(3)]
    gm = GradManager().attach(abc)
    with gm:
        gm.backward(Three()(*abc))
    assert [t.grad.numpy().tolist() for t in abc[:2]] == [[2.0], [3.0]] and abc[2].grad is None


def test_function_backward_with_a_surplus_gradient_drops_it_with_a_warning():
    class TooMany(Function):
        def forward(self, x):
            return x * 2

        def backward(self, dy):
            return dy * 2, dy * 3

    x = Tensor([1.0, 2.0])
    gm = GradManager().attach(x)
    with pytest.warns(UserWarning, match="returned 2 gradients for 1 inputs; the last 1 are ig"):
        with gm:
            gm.backward(TooMany()(x).sum())
    # upstream 1.13 measured: the same Function gives x.grad [2. 2.] (the surplus dropped)
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 2.0])


def test_callbacks_see_parameters_in_torchs_gradient_order():
    # Bucketing all-reduce callbacks pack gradients in the order they arrive, so that order is
    # behaviour: the last layer's first, as torch's post-accumulate-grad hooks fire.
    import megengine.module as M

    torch.manual_seed(0)
    layers = [torch.nn.Linear(3, 4), torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)]
    tparams = [p for layer in layers for p in (layer.weight, layer.bias)]
    names = ["W1", "b1", "W2", "b2", "W3", "b3"]
    torch_seen = []
    for name, p in zip(names, tparams):
        p.register_post_accumulate_grad_hook(lambda p, name=name: torch_seen.append(name))
    x, y = rand(5, 3), np.array([0, 1, 1, 0, 1], np.int32)
    h = torch.from_numpy(x)
    for i, layer in enumerate(layers):
        h = layer(h) if i == len(layers) - 1 else torch.relu(layer(h))
    torch.nn.functional.cross_entropy(h, torch.from_numpy(y).long()).backward()

    mlayers = [M.Linear(3, 4), M.Linear(4, 4), M.Linear(4, 2)]
    mparams = [p for layer in mlayers for p in (layer.weight, layer.bias)]
    by_id = {id(p): name for name, p in zip(names, mparams)}
    seen = []

    def note(p, g):
        seen.append(by_id[id(p)])
        return g

    gm = GradManager().attach(mparams, callbacks=note)
    with gm:
        h = Tensor(x)
        for i, layer in enumerate(mlayers):
            h = layer(h) if i == len(mlayers) - 1 else F.relu(layer(h))
        gm.backward(F.loss.cross_entropy(h, Tensor(y)))
    assert len(torch_seen) == 6
    assert seen == torch_seen


# ----- ATen's gradient buffers go to .grad as they are -----

def record_grad_copies(monkeypatch):
    """A list that grows with the shape of each gradient the GradManager copies before it hands
    it to .grad (`grad_manager._exclusive` wrapped for the test)."""
    import megengine.autodiff.grad_manager as gm_module

    copied, real = [], gm_module._exclusive

    def exclusive(g, claimed):
        out = real(g, claimed)
        if out is not g:
            copied.append(g.shape)
        return out

    monkeypatch.setattr(gm_module, "_exclusive", exclusive)
    return copied


@pytest.mark.usefixtures("host_default_device")
def test_aten_gradients_reach_grad_without_a_copy_and_stay_exact(monkeypatch):
    """Convolution, batch norm and a linear layer large enough for ATen's matrix product
    (`core.ops.matmul`) give gradients in buffers that torch's kernels have just allocated; the
    GradManager hands them to .grad (reshaped to the parameter's shape) without copying them.
    The conv's weight is used twice and the gradients of two backward passes accumulate in place,
    checked against torch."""
    import torch.nn.functional as TF

    import megengine.module as M

    copied = record_grad_copies(monkeypatch)
    products = record_aten_matmuls(monkeypatch)
    rng = np.random.RandomState(0)
    xs = [rng.randn(8, 3, 12, 12).astype(np.float32) for _ in range(2)]
    conv, bn = M.Conv2d(3, 3, 3, padding=1), M.BatchNorm2d(3)
    fc = M.Linear(3 * 12 * 12, 600)
    params = [conv.weight, conv.bias, bn.weight, bn.bias, fc.weight, fc.bias]
    init = [p.numpy().copy() for p in params]
    gm = GradManager().attach(params)
    for x in xs:
        with gm:
            h = bn(conv(F.relu(conv(Tensor(x)))))
            gm.backward((fc(F.flatten(h, 1)) ** 2).mean())
    assert copied == [] and products  # (the linear layer's products ran on ATen)

    tw, tb, bw, bb, fw, fb = (torch.tensor(a.reshape(-1) if a.ndim == 4 and a.shape[0] == 1
                                           else a, requires_grad=True) for a in init)
    for x in xs:
        c = lambda v: TF.conv2d(v, tw, tb.reshape(-1), padding=1)  # noqa: E731
        h = TF.batch_norm(c(TF.relu(c(torch.tensor(x)))), None, None, bw, bb, training=True,
                          eps=bn.eps)
        ((TF.linear(h.flatten(1), fw, fb)) ** 2).mean().backward()
    for p, t in zip(params, (tw, tb, bw, bb, fw, fb)):
        np.testing.assert_allclose(p.grad.numpy().reshape(t.shape), t.grad.numpy(),
                                   rtol=2e-4, atol=1e-6)


@pytest.mark.usefixtures("host_default_device")
@pytest.mark.parametrize("layer, torch_layer", [
    (lambda x: F.max_pool2d(x, 3, 2, 1), lambda x: torch.nn.functional.max_pool2d(x, 3, 2, 1)),
    (lambda x: F.avg_pool2d(x, 2), lambda x: torch.nn.functional.avg_pool2d(x, 2)),
    (lambda x: F.sliding_window(x, 3, padding=1),
     lambda x: torch.nn.functional.unfold(x, 3, padding=1).reshape(2, 3, 9, 6, 6)
     .permute(0, 1, 3, 4, 2).reshape(2, 3, 6, 6, 3, 3)),
])
def test_pooling_and_window_gradients_reach_an_attached_input_without_a_copy(monkeypatch, layer,
                                                                             torch_layer):
    """Max and average pooling's and sliding_window's input gradients are buffers ATen's
    backward allocated (declared fresh): an attached input's .grad takes them uncopied."""
    copied = record_grad_copies(monkeypatch)
    xa = np.random.RandomState(0).randn(2, 3, 6, 6).astype(np.float32)
    x = Tensor(xa)
    gm = GradManager().attach(x)
    with gm:
        y = layer(x)
        w = np.random.RandomState(1).randn(*y.shape).astype(np.float32)
        gm.backward((y * Tensor(w)).sum())
    assert copied == []
    tx = torch.tensor(xa, requires_grad=True)
    (torch_layer(tx) * torch.tensor(w)).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.usefixtures("host_default_device")  # (numpy's arrays: CuPy's take no weak reference)
def test_gradients_declared_fresh_are_freed_once_backward_has_used_them(monkeypatch):
    """An input gradient an ATen kernel allocated (ReLU's, declared fresh so that .grad could
    take it without a copy) is freed as soon as the op below it has used it, not at the end of
    backward: checked from the backward of a Function at the bottom of a chain of ReLUs, which
    runs last. (Earlier versions of this fork kept every such gradient alive to the end.)"""
    from megengine.functional import _aten

    made, real = [], _aten.fresh_gradient

    def recording(t):
        a = real(t)
        made.append(weakref.ref(a))
        return a

    monkeypatch.setattr(_aten, "fresh_gradient", recording)
    alive_at_bottom = []

    class Bottom(Function):
        def forward(self, x):
            return x * 1.0

        def backward(self, g):
            gc.collect()
            alive_at_bottom.append(sum(r() is not None for r in made))
            return g

    x = Parameter(rand(64, 1024))
    gm = GradManager().attach(x)
    with gm:
        h = Bottom()(x)
        for _ in range(6):
            h = F.relu(h + 0.5)
        gm.backward(h.sum())
    assert len(made) == 6 and alive_at_bottom == [1]  # the last one: the gradient it was given
    np.testing.assert_array_equal(x.grad.numpy(), (x.numpy() > -0.5) * 1.0)


def test_float16_gradients_accumulate_with_numpys_float16_sums():
    # a second backward adds into .grad: numpy's float16 sum, bit for bit (on ATen's
    # vectorised loop from 1024 values, where numpy's took 5x the float32 step)
    rng = np.random.default_rng(20)
    g1, g2 = (rng.standard_normal((64, 64)).astype(np.float16) for _ in range(2))
    x = Parameter(np.ones((64, 64), np.float16), device="cpu0")
    gm = GradManager().attach(x)
    for g in (g1, g2):
        with gm:
            gm.backward(x * 1, Tensor(g, device="cpu0"))
    assert x.grad.dtype == np.float16
    np.testing.assert_array_equal(x.grad.numpy().view(np.uint16), (g1 + g2).view(np.uint16))


def _three_params():
    return [Parameter(np.full(3, float(i + 1), np.float32)) for i in range(3)]


def _grads(ws):
    return [None if w.grad is None else w.grad.numpy().tolist() for w in ws]


@pytest.mark.parametrize("spoil", ["callback reshapes", "callback reshapes, grads held",
                                   ".grad of another shape", ".grad an array"])
def test_a_backward_that_cannot_deliver_changes_no_grad(spoil):
    # upstream 1.13 measured: with w1.grad of shape (5,), or w1's callback returning a (7,)
    # gradient, backward raised after w0.grad and w2.grad had grown (1 -> 7 and 1 -> 3), and
    # with no .grad held the (7,) gradient became w1.grad. torch refuses both (a hook that
    # changes the size of the gradient; a .grad of another shape). Here nothing changes, and
    # the error names the fix.
    ws = _three_params()
    gm = GradManager().attach(ws[:1]).attach(ws[2:])
    if spoil.startswith("callback"):
        gm.attach(ws[1:2], callbacks=lambda t, g: Tensor(np.ones(7, np.float32)))
    else:
        gm.attach(ws[1:2])
    if spoil != "callback reshapes":
        for w in ws:
            w.grad = Tensor(np.ones(3, np.float32))
    if spoil == ".grad of another shape":
        ws[1].grad = Tensor(np.ones(5, np.float32))
    if spoil == ".grad an array":
        ws[1].grad = np.ones(3, np.float32)
    before = _grads(ws[::2])
    error, match = ((TypeError, "got ndarray") if spoil == ".grad an array" else
                    (ValueError, r"callbacks must keep" if spoil.startswith("callback")
                     else r"has shape \(5,\)"))
    with pytest.raises(error, match=match):
        with gm:
            gm.backward((ws[0] * ws[1] * ws[2]).sum())
    assert _grads(ws[::2]) == before
    if spoil != ".grad an array":
        assert _grads(ws[1:2]) == [None if spoil == "callback reshapes" else
                                   [1.0] * (5 if spoil.startswith(".grad") else 3)]
    # the manager is released and works again once the .grad is fixed
    ws[1].grad = None
    gm2 = GradManager().attach(ws)
    with gm2:
        gm2.backward((ws[0] * ws[1] * ws[2]).sum())
    expected_held = 0.0 if spoil == "callback reshapes" else 1.0
    assert _grads(ws) == [[expected_held + 6.0] * 3, [3.0] * 3, [expected_held + 2.0] * 3]


@pytest.mark.parametrize("bad_dy, error, match", [
    (np.ones(4, np.float32), ValueError, r"output gradient of shape \(4,\)"),
    ([np.ones(3, np.float32)] * 2, ValueError, "1 outputs but 2 output gradients"),
    ([np.ones(3, np.float32)] * 2, RuntimeError, "1 outputs but 2"),  # (upstream's type too)
    ("x", TypeError, "must be a Tensor, an array or a number, got str"),
])
def test_a_backward_refusing_its_arguments_keeps_the_recording(bad_dy, error, match):
    # upstream 1.13 measured: after backward(y, dy) refused dy (a (4,) dy for a (3,) y), a
    # second backward(y, good dy) raised "no computation history". torch checks the
    # arguments before it frees its graph, and so does this fork: the retry gives torch's
    # gradients, and nothing was added to .grad by the refused call.
    w, v = Parameter(np.ones(3, np.float32)), Parameter(np.full(3, 2.0, np.float32))
    gm = GradManager().attach([w, v])
    with gm:
        y = w * v
        with pytest.raises(error, match=match):
            gm.backward(y, bad_dy)
        assert w.grad is None and v.grad is None
        gm.backward(y, Tensor(np.array([1.0, 2.0, 3.0], np.float32)))
    tw, tv = (torch.tensor(a, requires_grad=True) for a in ([1.0] * 3, [2.0] * 3))
    (tw * tv).backward(torch.tensor([1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(w.grad.numpy(), tw.grad.numpy())
    np.testing.assert_array_equal(v.grad.numpy(), tv.grad.numpy())


# ----- slices of one gradient buffer (stack, concat, split): judged by their bytes -----

def test_exclusive_keeps_views_of_one_buffer_that_share_no_byte():
    """Hand-made views of one fresh buffer, in an order that meets both neighbours of a range:
    a view is kept unless it shares a byte with one kept before (np.shares_memory is the oracle),
    and the buffer itself, a strided view, a small second view (copying costs less than
    comparing) and views of a claimed output gradient are copied."""
    from megengine.autodiff.grad_manager import _COMPARED_FROM, _claim, _exclusive

    unit = _COMPARED_FROM // 4  # float32 values: a view of one unit is worth comparing
    buf = np.arange(12 * unit, dtype=np.float32)
    claimed, kept, spans = {}, [], []
    for lo, hi in [(8, 12), (0, 4), (3, 9), (4, 8), (7, 8), (2, 3)]:
        view = buf[lo * unit:hi * unit]
        overlaps = any(np.shares_memory(view, k) for k in kept)
        out = _exclusive(view, claimed)
        assert (out is not view) == overlaps, (lo, hi)
        if out is view:
            kept.append(view)
            spans.append((lo, hi))
        np.testing.assert_array_equal(out, np.arange(lo * unit, hi * unit))
    assert spans == [(8, 12), (0, 4), (4, 8)]
    assert _exclusive(buf, claimed) is not buf  # all of it: it meets every kept view
    other = np.arange(6 * unit, dtype=np.float32)
    assert _exclusive(other, claimed) is other  # the owner itself, first: all of it claimed
    assert _exclusive(other[3 * unit:], claimed) is not other[3 * unit:]
    small = np.arange(8, dtype=np.float32)
    first, second = small[:4], small[4:]
    assert _exclusive(first, claimed) is first  # the first view of an owner: nothing to compare
    assert _exclusive(second, claimed) is not second  # 16 bytes: copied, not compared
    fresh = np.arange(2 * unit, dtype=np.float32)
    empty, rest = fresh[:0], fresh[unit:]  # an empty first view shares no byte with the rest
    assert _exclusive(empty, claimed) is empty and _exclusive(rest, claimed) is rest
    strided = np.arange(8 * unit, dtype=np.float32)[::2]
    assert _exclusive(strided, claimed) is not strided
    dy = np.arange(6 * unit, dtype=np.float32)
    _claim(dy[:unit], claimed)  # an output gradient the caller gave: all of its owner's memory
    assert _exclusive(dy[4 * unit:], claimed) is not dy[4 * unit:]


def _stack0(xs, m):
    return m.stack(xs, 0)


def _stack1(xs, m):  # slices along a later axis are strided: copied (torch clones them too)
    return m.stack(xs, 1)


def _concat0(xs, m):
    return (F.concat if m is F else torch.cat)(xs, 0)


def _concat1(xs, m):
    return (F.concat if m is F else torch.cat)(xs, 1)


def _split_of_concat(xs, m):
    joined = _concat0(xs, m)
    parts = F.split(joined, 3, 0) if m is F else torch.split(joined, joined.shape[0] // 3, 0)
    return _concat0([p * (i + 1.0) for i, p in enumerate(parts)], m)


@pytest.mark.parametrize("join, copies", [(_stack0, 0), (_stack1, 3), (_concat0, 0),
                                          (_concat1, 3), (_split_of_concat, 0)])
def test_slices_of_one_gradient_are_grads_of_their_own(join, copies, monkeypatch):
    """Stack's and concat's input gradients are slices of the output's gradient, made inside
    the backward: contiguous ones become .grad uncopied, yet no two .grad share a byte, so
    in-place edits (clip_grad_norm, an SGD step with momentum and weight decay) and a second
    backward accumulating into .grad give torch's values."""
    from megengine.optimizer import SGD, clip_grad_norm

    copied = record_grad_copies(monkeypatch)
    rng = np.random.RandomState(42)
    values = [rng.randn(128, 130).astype(np.float32) for _ in range(3)]  # 65 KB: compared
    weights = [rng.randn(*join([torch.tensor(v) for v in values], torch).shape)
               .astype(np.float32) for _ in range(2)]
    ps = [Parameter(v) for v in values]
    ts = [torch.tensor(v, requires_grad=True) for v in values]
    gm = GradManager().attach(ps)
    opt = SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01)
    topt = torch.optim.SGD(ts, lr=0.1, momentum=0.9, weight_decay=0.01)
    for step in range(2):
        for w in weights:  # two backward passes accumulate into .grad
            with gm:
                gm.backward((join(ps, F) * Tensor(w)).sum())
            (join(ts, torch) * torch.tensor(w)).sum().backward()
        if step == 0:
            assert len(copied) == 2 * copies  # (two backward passes)
            for i, p in enumerate(ps):
                assert not any(shares_memory(p.grad, q.grad) for q in ps[i + 1:])
        clip_grad_norm(ps, max_norm=1.0)
        torch.nn.utils.clip_grad_norm_(ts, max_norm=1.0)
        for p, t in zip(ps, ts):
            np.testing.assert_allclose(p.grad.numpy(), t.grad.numpy(), rtol=1e-4, atol=1e-6)
        opt.step()
        topt.step()
        for p, t in zip(ps, ts):
            np.testing.assert_allclose(p.numpy(), t.detach().numpy(), rtol=1e-4, atol=1e-6)
        opt.clear_grad()
        topt.zero_grad()


def test_stack_grads_from_the_callers_output_gradient_are_copies():
    # a .grad never shares memory with the output gradient the caller gave (torch's .grad
    # would be a view of it here); hand-computed: each .grad is its slice of dy
    ps = [Parameter(rand(2, 3)) for _ in range(3)]
    dy = Tensor(rand(3, 2, 3))
    expected = dy.numpy()
    gm = GradManager().attach(ps)
    with gm:
        gm.backward(F.stack(ps, 0), dy)
    for i, p in enumerate(ps):
        assert not shares_memory(p.grad, dy)
        assert not any(shares_memory(p.grad, q.grad) for q in ps[i + 1:])
        np.testing.assert_array_equal(p.grad.numpy(), expected[i])
        with on_device(p.grad.device):  # (raw array code runs on the current GPU)
            p.grad._data *= 0  # an in-place grad edit must not change the caller's tensor
    np.testing.assert_array_equal(dy.numpy(), expected)


def test_a_gradient_handed_whole_and_in_slices_is_copied_where_they_meet():
    """``(concat([a, b]) + p) * w``: the sum's one gradient reaches p whole and a and b in
    slices. A callback scaling each gradient in place (callbacks see arrays no other gradient
    shares) gives torch's values, as does a second backward that accumulates."""
    rng = np.random.RandomState(7)
    va, vb, vp, vw = (rng.randn(n, 100).astype(np.float32)  # 80 KB and more: compared
                      for n in (200, 400, 600, 600))
    a, b, p = Parameter(va), Parameter(vb), Parameter(vp)

    def triple(_, g):
        with on_device(g.device):
            g._data *= 3
        return g

    gm = GradManager().attach([a, b, p], callbacks=triple)
    ta, tb, tp = (torch.tensor(v, requires_grad=True) for v in (va, vb, vp))
    for t in (ta, tb, tp):
        t.register_hook(lambda g: g * 3)
    for _ in range(2):
        with gm:
            gm.backward(((F.concat([a, b], 0) + p) * Tensor(vw)).sum())
        ((torch.cat([ta, tb], 0) + tp) * torch.tensor(vw)).sum().backward()
        assert not any(shares_memory(x.grad, y.grad) for x, y in ((a, b), (a, p), (b, p)))
        for x, t in zip((a, b, p), (ta, tb, tp)):
            np.testing.assert_allclose(x.grad.numpy(), t.grad.numpy(), rtol=1e-6)
