"""A tensor's value changes only when that tensor is written, as upstream's, whose tensors are
values: a view (``reshape``, a slice, ``transpose``...) or a ``detach()`` alias taken before an
optimizer step, ``set_value``, ``+=``, ``p[...] = v``, ``load_state_dict`` or ``zero_grad`` keeps
the value it had. Here a write goes into the tensor's storage when nothing else refers to the
array, else the tensor gets a new array (``Tensor._shared``). Oracle: the value each side had,
copied to the host before the write, and the written value computed with numpy."""
import numpy as np
import pytest
import torch

import megengine as mge
import megengine.functional as F
import megengine.module as M
import megengine.optimizer as optim
from megengine import Parameter, Tensor
from megengine.autodiff import GradManager
from megengine.jit import trace

from devices import address, host

VIEWS = {
    "reshape": lambda p: p.reshape(-1),
    "flatten": lambda p: F.flatten(p),
    "slice": lambda p: p[:],
    "row": lambda p: p[0],
    "transpose": lambda p: p.T,
    "expand_dims": lambda p: F.expand_dims(p, 0),
    "squeeze": lambda p: F.squeeze(F.expand_dims(p, 0), 0),
    "broadcast_to": lambda p: F.broadcast_to(p, (2,) + p.shape),
    "detach": lambda p: p.detach(),
    "to its own device": lambda p: p.to(p.device),  # (upstream: a Copy, a new tensor)
}


def _step(p):
    p.grad = Tensor(np.full(p.shape, 0.5, np.float32), device=p.device)
    optim.SGD([p], lr=1.0).step()


def _iadd(p):
    p += 2.0


WRITES = {  # name -> (write into p, the value p has after it, from ones)
    "optimizer step": (_step, 0.5),
    "set_value": (lambda p: p.set_value(np.full(p.shape, 3.0, np.float32)), 3.0),
    "+=": (_iadd, 3.0),
    "setitem": (lambda p: p.__setitem__(Ellipsis, Tensor(np.full(p.shape, 4.0, np.float32))),
                4.0),
    "fill_": (lambda p: M.init.fill_(p, 5.0), 5.0),
}


@pytest.mark.parametrize("write", sorted(WRITES))
@pytest.mark.parametrize("view", sorted(VIEWS))
def test_a_view_keeps_its_value_when_the_parameter_is_written(view, write):
    p = Parameter(np.ones((3, 4), np.float32))
    v = VIEWS[view](p)
    before = host(v)
    write, value = WRITES[write]
    write(p)
    np.testing.assert_array_equal(host(p), np.full((3, 4), value))
    np.testing.assert_array_equal(host(v), before)


def test_a_view_keeps_its_value_when_a_buffer_is_set_or_a_state_dict_loaded():
    bn = M.BatchNorm2d(3)
    mean = bn.running_mean.reshape(-1)
    weight = bn.weight.reshape(-1)[:2]
    bn.load_state_dict({k: np.full(v.shape, 7.0, np.float32)
                        for k, v in bn.state_dict().items()})
    np.testing.assert_array_equal(host(bn.running_mean), np.full((1, 3, 1, 1), 7.0))
    np.testing.assert_array_equal(host(mean), np.zeros(3))
    np.testing.assert_array_equal(host(weight), np.ones(2))
    x = Tensor(np.arange(4, dtype=np.float32))
    y = x.reshape(2, 2)
    x.set_value(np.zeros(4, np.float32))
    np.testing.assert_array_equal(host(y), np.arange(4).reshape(2, 2))


def test_zero_grad_leaves_a_view_of_the_gradient_alone():
    p = Parameter(np.ones(3, np.float32))
    opt = optim.SGD([p], lr=0.1)
    opt.zero_grad()
    opt.backward((p * 2).sum())
    kept = p.grad.reshape(3)
    grad = p.grad
    opt.zero_grad()
    np.testing.assert_array_equal(host(kept), [2.0, 2.0, 2.0])
    assert p.grad is grad and (host(p.grad) == 0).all()  # the same tensor, zeroed
    opt.backward((p * 3).sum())
    opt.step()
    np.testing.assert_allclose(host(p), [0.7, 0.7, 0.7], rtol=1e-6)


def test_a_training_step_writes_parameters_in_place_when_nothing_else_holds_them():
    # the layers' cached torch views of their weights (conv, eval batch norm, LSTM) are no
    # reason to copy: they let go of the arrays, and the step matches torch's
    torch.manual_seed(0)
    tconv, tbn = torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3)
    conv, bn = M.Conv2d(2, 3, 3), M.BatchNorm2d(3)
    conv.weight.set_value(tconv.weight.detach().numpy())
    conv.bias.set_value(tconv.bias.detach().numpy().reshape(1, 3, 1, 1))
    params = list(conv.parameters()) + list(bn.parameters())
    gm, opt = GradManager().attach(params), optim.SGD(params, lr=0.1)
    topt = torch.optim.SGD(list(tconv.parameters()) + list(tbn.parameters()), lr=0.1)
    x = np.random.RandomState(0).randn(2, 2, 5, 5).astype(np.float32)
    bn.eval()
    bn(conv(Tensor(x)))  # fills both layers' view caches
    bn.train()
    addresses = [address(p) for p in params]
    for _ in range(2):
        with gm:
            loss = (bn(conv(Tensor(x))) ** 2).mean()
            gm.backward(loss)
        opt.step().clear_grad()
        tloss = (tbn(tconv(torch.tensor(x))) ** 2).mean()
        topt.zero_grad()
        tloss.backward()
        topt.step()
        np.testing.assert_allclose(float(loss), float(tloss), rtol=1e-5)
    assert [address(p) for p in params] == addresses
    np.testing.assert_allclose(host(conv.weight), tconv.weight.detach().numpy(), rtol=1e-5,
                               atol=1e-6)
    bn.eval()
    np.testing.assert_allclose(host(bn(conv(Tensor(x)))),
                               tbn.eval()(tconv(torch.tensor(x))).detach().numpy(), rtol=1e-4,
                               atol=1e-5)


def test_an_lstm_evaluated_then_trained_keeps_its_weights_in_place():
    lstm = M.LSTM(4, 5)
    x = Tensor(np.random.RandomState(1).randn(3, 2, 4).astype(np.float32))
    lstm(x)  # an eval call keeps views of the weights
    addresses = [address(p) for p in lstm.parameters()]
    gm, opt = GradManager().attach(lstm.parameters()), optim.SGD(lstm.parameters(), lr=0.1)
    with gm:
        gm.backward(lstm(x)[0].sum())
    before = [host(p) - 0.1 * host(p.grad) for p in lstm.parameters()]
    opt.step()
    assert [address(p) for p in lstm.parameters()] == addresses
    for p, want in zip(lstm.parameters(), before):
        np.testing.assert_allclose(host(p), want, rtol=1e-6)


@pytest.mark.parametrize("mode", [{}, {"symbolic": True}, {"without_host": True}])
def test_a_traced_function_reads_a_detached_parameter_that_trains_outside_it(mode):
    # the trace reads w's value at each call (it is no constant of the array w had), also
    # when the optimizer gives w a new array because something else holds the old one
    w = Parameter(np.array([1.0, 2.0], np.float32))
    opt = optim.SGD([w], lr=1.0)

    @trace(**mode)
    def f(x):
        return x * w.detach() + w.detach()

    x = np.array([3.0, 4.0], np.float32)
    for i in range(4):
        held = w.reshape(2) if i == 2 else None  # (a holder: this step gives w a new array)
        np.testing.assert_allclose(host(f(Tensor(x))), x * host(w) + host(w), rtol=1e-6)
        w.grad = Tensor(np.array([0.5, -1.0], np.float32), device=w.device)
        opt.step()
        del held
    np.testing.assert_allclose(host(w), [-1.0, 6.0])


def test_to_its_own_device_is_a_new_differentiable_tensor():
    x = Parameter(np.array([1.0, 2.0], np.float32))
    gm = GradManager().attach(x)
    with gm:
        y = x.to(x.device)
        assert y is not x
        gm.backward((y * y).sum())
    np.testing.assert_array_equal(host(x.grad), [2.0, 4.0])


# ----- random programs: views, aliases and writes against a model where every value is a copy

_MAKE = {  # name -> (megengine view, the same on numpy values)
    "reshape": (lambda t: t.reshape(-1), lambda a: a.reshape(-1)),
    "slice": (lambda t: t[1:], lambda a: a[1:]),
    "transpose": (lambda t: t.T, lambda a: a.T),
    "expand_dims": (lambda t: F.expand_dims(t, 0), lambda a: a[None]),
    "detach": (lambda t: t.detach(), lambda a: a),
    "to": (lambda t: t.to(t.device), lambda a: a),
    "copy": (lambda t: F.copy(t), lambda a: a),
}


def _write(rs, t, a):
    """A random write into tensor ``t`` (value ``a``): returns the new value."""
    kind = rs.randint(6)
    v = rs.randn(*a.shape).astype(np.float32)
    if kind == 0:
        t.set_value(v)
        return v
    if kind == 1:
        t += Tensor(v, device=t.device)
        return a + v
    if kind == 2:
        t[...] = Tensor(v, device=t.device)
        return v
    if kind == 3 and a.ndim and a.shape[0]:
        t[0] = Tensor(v[0], device=t.device)
        out = a.copy()
        out[0] = v[0]
        return out
    if kind == 4 and isinstance(t, Parameter):
        t.grad = Tensor(v, device=t.device)
        optim.SGD([t], lr=0.5).step()
        return a - 0.5 * v
    M.init.fill_(t, 3.0)
    return np.full_like(a, 3.0)


@pytest.mark.parametrize("seed", range(40))
def test_random_programs_of_views_and_writes_keep_value_semantics(seed):
    rs = np.random.RandomState(seed)
    base = rs.randn(3, 4).astype(np.float32)
    live = [(Parameter(base), base.copy())]  # (tensor, its value in the model)
    for _ in range(12):
        t, a = live[rs.randint(len(live))]
        if rs.rand() < 0.5 and len(live) < 8:
            name = sorted(_MAKE)[rs.randint(len(_MAKE))]
            view, model = _MAKE[name]
            live.append((view(t), model(a).copy()))
        else:
            i = next(i for i, (u, _) in enumerate(live) if u is t)
            live[i] = (t, _write(rs, t, a).astype(np.float32))
        for u, want in live:
            np.testing.assert_allclose(host(u), want, rtol=1e-6, atol=1e-6)


def test_a_weight_two_layers_share_is_written_and_both_use_the_new_value():
    # (each array registers one layer's view cache: the other's hold makes the step copy)
    a, b = M.Conv2d(2, 2, 1, bias=False), M.Conv2d(2, 2, 1, bias=False)
    b.weight = a.weight
    x = Tensor(np.random.RandomState(2).randn(1, 2, 3, 3).astype(np.float32))
    a.eval()
    b.eval()
    a(x)
    b(x)
    w = host(a.weight)
    a.weight.grad = Tensor(np.ones(w.shape, np.float32), device=a.weight.device)
    optim.SGD([a.weight], lr=1.0).step()
    want = torch.nn.functional.conv2d(torch.from_numpy(host(x)), torch.from_numpy(w - 1)).numpy()
    np.testing.assert_allclose(host(a(x)), want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(host(b(x)), want, rtol=1e-6, atol=1e-6)
