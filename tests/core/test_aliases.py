"""A tensor's value changes only when that tensor is written, as upstream's, whose tensors are
values: a tensor that shares x's value (a view: ``reshape``, a slice, ``transpose``...; a
``detach()`` alias; ``Tensor(x)``, ``F.copy``, ``x + 0``, a saved and loaded copy...) keeps the
value it had when x is written (``set_value``, ``+=``, ``x[...] = v``, ``init.fill_``, an
optimizer step, ``load_state_dict``, ``zero_grad``, batch norm's statistics), eager and in
``megengine.jit.trace``, and writing it leaves x alone. Here a write goes into the tensor's
storage when nothing else refers to the array, else the tensor gets a new array
(``Tensor._shared``). Oracle: the value each side had, copied to the host before the write, and
the written value computed with numpy. (The same table run on upstream MegEngine 1.13 shows
the same: no pair shares a write; its ``astype`` to the tensor's own dtype and ``dropout``
outside training return the tensor itself, as here.)"""
import io

import numpy as np
import pytest
import torch

import megengine as mge
import megengine.functional as F
import megengine.module as M
import megengine.optimizer as optim
from megengine import Parameter, Tensor
from megengine.amp import GradScaler
from megengine.autodiff import GradManager
from megengine.functional.inplace import _inplace_add_
from megengine.jit import trace

from devices import address, host

def _saved_and_loaded(x):
    f = io.BytesIO()
    mge.save({"x": x}, f)
    f.seek(0)
    return mge.load(f)["x"]


# ----- the table: every way to get a tensor that shares x's value, against every write -----
PRODUCERS = {  # name -> a Tensor (or a list of Tensors) with x's value or a part of it
    "reshape": lambda x: x.reshape(-1),
    "reshape to its own shape": lambda x: F.reshape(x, x.shape),
    "flatten": lambda x: F.flatten(x),
    "transpose": lambda x: x.T,
    "slice": lambda x: x[1:],
    "ellipsis": lambda x: x[...],
    "None index": lambda x: x[None],
    "row": lambda x: x[0],
    "expand_dims": lambda x: F.expand_dims(x, 0),
    "squeeze": lambda x: F.squeeze(F.expand_dims(x, 0), 0),
    "broadcast_to": lambda x: F.broadcast_to(x, (2,) + x.shape),
    "broadcast_to its own shape": lambda x: F.broadcast_to(x, x.shape),
    "detach": lambda x: x.detach(),
    "Tensor(x)": lambda x: Tensor(x),
    "Parameter(x)": lambda x: Parameter(x),
    "copy": lambda x: F.copy(x),
    "zero pad": lambda x: F.nn.pad(x, ((0, 0), (0, 0))),
    "concat of one": lambda x: F.concat([x]),
    "clip without effect": lambda x: F.clip(x, -100.0, 100.0),
    "x + 0": lambda x: x + 0,
    "x * 1": lambda x: x * 1,
    "to its own device": lambda x: x.to(x.device),  # (upstream: a Copy, a new tensor)
    "split": lambda x: F.split(x, 3),
    "split into one": lambda x: F.split(x, 1),
    "saved and loaded": _saved_and_loaded,
}
# (upstream's astype to the tensor's own dtype, +x and dropout in eval return x itself, so a
# write into either is a write into both: test_the_same_tensor_comes_back_where_upstream_returns_it)


def _sgd_step(t):
    t.grad = Tensor(np.full(t.shape, 0.5, np.float32), device=t.device)
    optim.SGD([t], lr=1.0).step()


def _adam_step(t):
    t.grad = Tensor(np.full(t.shape, 0.5, np.float32), device=t.device)
    optim.Adam([t], lr=0.25).step()


class _Holder(M.Module):
    def __init__(self, w):
        super().__init__()
        self.w = w

    def forward(self, x):
        return x * self.w


def _row(a, v):
    a = a.copy()
    a[0] = v(a[0])
    return a


WRITES = {  # name -> (write into t, t's value after it from its value a, computed with numpy)
    "set_value": (lambda t: t.set_value(np.full(t.shape, 7.0, np.float32)),
                  lambda a: np.full_like(a, 7.0)),
    "_reset": (lambda t: t._reset(Tensor(np.full(t.shape, 8.0, np.float32), device=t.device)),
               lambda a: np.full_like(a, 8.0)),
    "+=": (lambda t: t.__iadd__(2.0), lambda a: a + 2),
    "*=": (lambda t: t.__imul__(3.0), lambda a: a * 3),
    "t[0] = v": (lambda t: t.__setitem__(0, 42.0), lambda a: _row(a, lambda r: 42.0)),
    "t[...] = v": (lambda t: t.__setitem__(Ellipsis, Tensor(np.full(t.shape, 4.0, np.float32),
                                                             device=t.device)),
                   lambda a: np.full_like(a, 4.0)),
    "t[0] += v": (lambda t: t.__setitem__(0, t[0] + 5.0), lambda a: _row(a, lambda r: r + 5)),
    "init.fill_": (lambda t: M.init.fill_(t, 5.0), lambda a: np.full_like(a, 5.0)),
    "_inplace_add_": (lambda t: _inplace_add_(t, Tensor(np.ones(t.shape, np.float32),
                                                        device=t.device), 2.0, 0.5),
                      lambda a: a * 2 + 0.5),
    # Parameters only:
    "SGD step": (_sgd_step, lambda a: a - 0.5),
    "Adam step": (_adam_step, lambda a: a - 0.25),  # (the first step moves by lr: m/sqrt(v))
    "load_state_dict": (lambda t: _Holder(t).load_state_dict({"w": np.full(t.shape, 6.0,
                                                                           np.float32)}),
                        lambda a: np.full_like(a, 6.0)),
}
_PARAMETER_ONLY = {"SGD step", "Adam step", "load_state_dict"}


def _tensors(y):
    return list(y) if isinstance(y, (list, tuple)) else [y]


def _pairs(x, y):
    """(write into, the value it has, watched, the value they have) for each side that a write
    can go into."""
    ys = _tensors(y)
    yield x, host(x), ys, [host(t) for t in ys]
    yield ys[0], host(ys[0]), [x], [host(x)]


@pytest.mark.parametrize("mode", ["eager", "trace", "trace symbolic"])
@pytest.mark.parametrize("producer", sorted(PRODUCERS))
def test_a_write_into_either_side_leaves_the_other_its_value(producer, mode):
    # each write in turn on a fresh x; a traced producer replays for every write after the first
    make = PRODUCERS[producer]
    if mode != "eager":
        make = trace(symbolic=mode == "trace symbolic")(make)
    failures = []
    for kind in (Tensor, Parameter):
        for name in sorted(WRITES):
            for side in ("source", "result"):
                x = kind(np.arange(12, dtype=np.float32).reshape(3, 4) + 1)
                written, value, watched, before = list(_pairs(x, make(x)))[side == "result"]
                if name in _PARAMETER_ONLY and not isinstance(written, Parameter):
                    continue
                write, after = WRITES[name]
                write(written)
                np.testing.assert_allclose(host(written), after(value), rtol=1e-6,
                                           err_msg=f"{kind.__name__} {name} into the {side}")
                if not all(np.array_equal(host(t), b) for t, b in zip(watched, before)):
                    failures.append(f"{kind.__name__}: {name} into the {side}")
    assert not failures, f"{producer} ({mode}): the other side changed after " + \
        ", ".join(failures)


@pytest.mark.parametrize("producer", sorted(set(PRODUCERS) - {"saved and loaded"}))
def test_a_write_while_recording_leaves_the_recorded_values_alone(producer):
    # the gradient of sum(y * y) needs y's value as recorded: a write into x or into y before
    # backward must not reach it. Oracle: the same program without the write.
    def grad(write_into):
        x = Parameter(np.arange(12, dtype=np.float32).reshape(3, 4) + 1)
        gm = GradManager().attach(x)
        with gm:
            y = PRODUCERS[producer](x)
            loss = sum((t * t).sum() for t in _tensors(y))
            before = [host(t) for t in _tensors(y)]
            if write_into == "x":
                x += 10.0
            elif write_into == "y":
                _tensors(y)[0][...] = 0.0
            gm.backward(loss)
        if write_into != "y":
            for t, b in zip(_tensors(y), before):
                np.testing.assert_array_equal(host(t), b)
        return host(x.grad) if x.grad is not None else np.zeros((3, 4), np.float32)

    want = grad(None)
    assert np.abs(want).sum() > 0 or producer in {"Tensor(x)", "Parameter(x)", "detach"}
    np.testing.assert_array_equal(grad("x"), want)
    np.testing.assert_array_equal(grad("y"), want)


def test_the_same_tensor_comes_back_where_upstream_returns_it():
    # upstream's astype to the tensor's dtype, unary plus and dropout outside training (or
    # dropping nothing) return the tensor itself (not a view), so a write into one is a write
    # into the other: the same object
    x = Tensor(np.ones(3, np.float32))
    for same in (x.astype("float32"), +x, F.nn.dropout(x, 0.5, training=False),
                 F.nn.dropout(x, 0.0)):
        assert same is x


@pytest.mark.parametrize("symbolic", [False, True])
def test_a_traced_training_step_leaves_the_views_held_outside_alone(symbolic):
    p = Parameter(np.arange(12, dtype=np.float32).reshape(3, 4))
    gm, opt = GradManager().attach(p), optim.SGD([p], lr=0.5)

    @trace(symbolic=symbolic)
    def step(x):
        with gm:
            gm.backward((p * x).sum())
        opt.step().clear_grad()

    for _ in range(3):
        view, alias, before = p.reshape(-1), p.detach(), host(p)
        step(Tensor(np.ones((3, 4), np.float32)))
        np.testing.assert_array_equal(host(p), before - 0.5)
        np.testing.assert_array_equal(host(view), before.reshape(-1))
        np.testing.assert_array_equal(host(alias), before)


def test_host_values_and_state_dicts_keep_their_values_after_writes():
    # numpy() and state_dict() values are read-only host copies, as upstream's; an optimizer's
    # state_dict keeps the state it had, and a loaded one is the loading optimizer's own
    lin = M.Linear(3, 2)
    p = lin.weight
    value, state = p.numpy(), lin.state_dict()
    kept = {k: v.copy() for k, v in state.items()}
    with pytest.raises(ValueError):
        value[0, 0] = 5.0
    opt = optim.SGD(lin.parameters(), lr=1.0, momentum=0.9)
    for q in lin.parameters():
        q.grad = Tensor(np.ones(q.shape, np.float32), device=q.device)
    opt.step()
    np.testing.assert_array_equal(value, kept["weight"])
    for k in kept:
        np.testing.assert_array_equal(state[k], kept[k])
    saved = opt.state_dict()
    momentum = {i: {k: np.array(v) for k, v in s.items()} for i, s in saved["state"].items()}
    other = M.Linear(3, 2)
    start = [host(q) for q in other.parameters()]
    other_opt = optim.SGD(other.parameters(), lr=1.0, momentum=0.9)
    other_opt.load_state_dict(saved)
    for q in other.parameters():
        q.grad = Tensor(np.ones(q.shape, np.float32), device=q.device)
    other_opt.step()
    opt.step()
    for i, s in saved["state"].items():
        for k, v in s.items():
            np.testing.assert_array_equal(np.array(v), momentum[i][k])
    for q, a in zip(other.parameters(), start):  # the loaded momentum 1, then 0.9 * 1 + 1
        np.testing.assert_allclose(host(q), a - 1.9, rtol=1e-6, atol=1e-6)


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


@pytest.mark.parametrize("mode", ["eager", "trace", "trace symbolic"])
def test_batch_norm_statistics_updates_leave_views_and_state_dicts_alone(mode):
    bn = M.BatchNorm2d(3)
    forward = bn if mode == "eager" else trace(symbolic=mode == "trace symbolic")(bn)
    rs = np.random.RandomState(0)
    for _ in range(3):
        x = rs.randn(2, 3, 4, 4).astype(np.float32)
        mean, var = host(bn.running_mean), host(bn.running_var)
        views = [bn.running_mean.reshape(-1), bn.running_var.detach()]
        state = bn.state_dict()
        kept = {k: v.copy() for k, v in state.items()}
        forward(Tensor(x))
        # (upstream's momentum 0.9 keeps 0.9 of the old statistic)
        want = mean.reshape(-1) * 0.9 + 0.1 * x.mean((0, 2, 3))
        np.testing.assert_allclose(host(bn.running_mean).reshape(-1), want, rtol=1e-5)
        np.testing.assert_array_equal(host(views[0]), mean.reshape(-1))
        np.testing.assert_array_equal(host(views[1]), var)
        for k in kept:
            np.testing.assert_array_equal(state[k], kept[k])


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


def _zero_grad(p):
    with pytest.warns(DeprecationWarning):
        optim.SGD([p], lr=0.1).zero_grad()


GRAD_WRITES = {  # name -> (write into p.grad, its value after it from its value g)
    "zero_grad": (_zero_grad, lambda g: np.zeros_like(g)),
    "clip_grad_value": (lambda p: optim.clip_grad_value([p], -1.5, 1.5),
                        lambda g: np.clip(g, -1.5, 1.5)),
    "clip_grad_norm": (lambda p: optim.clip_grad_norm([p], 1.0),
                       lambda g: g / np.sqrt((g * g).sum())),
    "GradScaler.unscale": (lambda p: GradScaler(init_scale=4.0).unscale([p]), lambda g: g / 4),
}


@pytest.mark.parametrize("name", sorted(GRAD_WRITES))
def test_a_gradient_written_leaves_the_tensor_it_was_set_to_a_view_of_alone(name):
    # (upstream gives .grad a new value; earlier versions of this fork zeroed the other tensor)
    for view in (lambda s: s.reshape(2, 2), lambda s: s.reshape(2, 2).T,
                 lambda s: F.broadcast_to(s[:1].reshape(1, 1), (2, 2))):
        p = Parameter(np.ones((2, 2), np.float32))
        source = Tensor(np.arange(4, dtype=np.float32) + 1)
        p.grad = view(source)
        before = host(p.grad)
        write, after = GRAD_WRITES[name]
        write(p)
        np.testing.assert_allclose(host(p.grad), after(before), rtol=1e-6)
        np.testing.assert_array_equal(host(source), [1.0, 2.0, 3.0, 4.0])


def test_zero_grad_zeroes_the_tensor_a_gradient_was_set_to():
    # upstream: .grad is that tensor, so zeroing it zeroes the tensor (the same object)
    p = Parameter(np.ones((2, 2), np.float32))
    source = Tensor(np.ones((2, 2), np.float32))
    p.grad = source
    _zero_grad(p)
    assert p.grad is source and (host(source) == 0).all()


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
    before = [host(p).astype(np.float64) - 0.1 * host(p.grad) for p in lstm.parameters()]
    opt.step()
    assert [address(p) for p in lstm.parameters()] == addresses
    for p, want in zip(lstm.parameters(), before):  # (where p - 0.1 * g cancels, the float32
        # rounding of the terms (weights below 0.45), fused on a GPU or not, sets the tolerance)
        np.testing.assert_allclose(host(p), want, rtol=1e-6, atol=1e-7)


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
