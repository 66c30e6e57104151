"""Tests of the torch views that Conv2d and BatchNorm2d keep between calls (`_aten.LayerViews`):
after every way of changing a weight, bias or running statistic, the next call sees the new values."""
import copy
import gc
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import megengine as mge
import megengine.module as M
import megengine.optimizer as optim
from megengine import Parameter, Tensor
from megengine.autodiff import GradManager

from devices import host


@pytest.fixture(autouse=True)
def _no_graph_vars_left():
    # a loaded graph's VarNodes that another test left in reference cycles keep megengine's
    # symbolic hook on until they are collected, and layers keep no views meanwhile
    gc.collect()


def _rand(*shape, seed=0):
    return np.random.RandomState(seed).uniform(-1, 1, shape).astype(np.float32)


def _bn(c, seed=0):
    bn = M.BatchNorm2d(c)
    rs = np.random.RandomState(seed)
    bn.weight._reset(rs.uniform(0.5, 1.5, (1, c, 1, 1)).astype(np.float32))
    bn.bias._reset(rs.randn(1, c, 1, 1).astype(np.float32))
    bn.running_mean._reset(rs.randn(1, c, 1, 1).astype(np.float32) * 0.3)
    bn.running_var._reset(rs.uniform(0.5, 1.5, (1, c, 1, 1)).astype(np.float32))
    return bn


# (name, layer factory, input shape): a 1x1 conv with bias, a depthwise conv (upstream's grouped
# weight layout, reshaped for ATen), a one-channel conv (ATen's im2col kernel), batch norm
LAYERS = {
    "conv1x1": (lambda: M.Conv2d(6, 4, 1), (1, 6, 5, 5)),
    "depthwise": (lambda: M.Conv2d(6, 6, 3, 2, 1, groups=6, bias=False), (1, 6, 7, 5)),
    "one_channel": (lambda: M.Conv2d(1, 4, 3, padding=1), (2, 1, 6, 6)),
    "batchnorm": (lambda: _bn(6), (1, 6, 3, 5)),
}


def _expected(layer, a):
    """torch's result for ``layer``'s current parameter values (read back from the engine)."""
    x = torch.from_numpy(a)
    if isinstance(layer, M.BatchNorm2d):
        vals = [torch.from_numpy(host(t).reshape(-1)) for t in (
            layer.running_mean, layer.running_var, layer.weight, layer.bias)]
        return TF.batch_norm(x, *vals, training=False, eps=layer.eps).numpy()
    w = host(layer.weight)
    w = w.reshape((-1,) + w.shape[-3:])  # grouped (G, O/G, I/G, kh, kw) -> (O, I/G, kh, kw)
    b = None if layer.bias is None else torch.from_numpy(host(layer.bias).reshape(-1))
    return TF.conv2d(x, torch.from_numpy(w), b, layer.stride, layer.padding, layer.dilation,
                     layer.groups).numpy()


def _check(layer, a):
    np.testing.assert_allclose(host(layer(mge.tensor(a))), _expected(layer, a), rtol=1e-5,
                               atol=1e-5)


def _tensors(layer):
    names = ["weight", "bias"] + (["running_mean", "running_var"]
                                  if isinstance(layer, M.BatchNorm2d) else [])
    return [getattr(layer, n) for n in names if getattr(layer, n) is not None]


def _new_value(t, k):
    return _rand(*t.shape, seed=10 + k) + (1.5 if k % 2 else 0.0)  # (variances stay > 0)


def _reset(layer):
    for k, t in enumerate(_tensors(layer)):
        t._reset(_new_value(t, k))


def _set_value(layer):
    for k, t in enumerate(_tensors(layer)):
        t.set_value(Tensor(_new_value(t, k)))


def _setitem_all(layer):
    for k, t in enumerate(_tensors(layer)):
        t[...] = Tensor(_new_value(t, k))


def _setitem_part(layer):
    for t in _tensors(layer):
        t[0] = t[0] * 0.5 + 0.25


def _augmented(layer):
    for t in _tensors(layer):
        t += 0.5


def _load_state_dict(layer):
    state = layer.state_dict()
    layer.load_state_dict({k: v * 0.5 + 0.75 for k, v in state.items()})


def _new_parameters(layer):
    for k, name in enumerate(["weight", "bias"]):
        t = getattr(layer, name)
        if t is not None:
            setattr(layer, name, Parameter(_new_value(t, k)))


def _storage_replaced(layer):
    # a storage that cannot be written in place (read-only here) is replaced by a new array
    for k, t in enumerate(_tensors(layer)):
        t._data.flags.writeable = False
        before = t._data
        t._reset(_new_value(t, k))
        assert t._data is not before


def _optimizer_step(layer):
    params = list(layer.parameters())
    opt = optim.SGD(params, lr=0.5, momentum=0.9)
    gm = GradManager().attach(params)
    a = _rand(*_input_shape(layer), seed=5)
    for _ in range(2):
        with gm:
            gm.backward((layer(mge.tensor(a)) ** 2).sum())
        opt.step().clear_grad()


def _input_shape(layer):
    for make, shape in LAYERS.values():
        if type(make()) is type(layer) and make().weight.shape == layer.weight.shape:
            return shape
    raise AssertionError("unknown layer")


WRITES = {
    "_reset": _reset, "set_value": _set_value, "setitem_all": _setitem_all,
    "setitem_part": _setitem_part, "augmented": _augmented, "load_state_dict": _load_state_dict,
    "new_parameters": _new_parameters, "storage_replaced": _storage_replaced,
    "optimizer_step": _optimizer_step,
}


@pytest.mark.parametrize("write", sorted(WRITES))
@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_the_next_eval_call_sees_every_write(kind, write):
    make, shape = LAYERS[kind]
    layer = make()
    layer.eval()
    a = _rand(*shape, seed=1)
    _check(layer, a)
    _check(layer, a)  # the kept views serve this call
    views = layer.__dict__.get("_layer_views")
    if isinstance(layer.weight._data, np.ndarray):  # (CPU arrays: the views are kept)
        assert views is not None and views.entry is not None
    if write == "optimizer_step":
        layer.train()
    WRITES[write](layer)
    layer.eval()
    _check(layer, a)


@pytest.mark.parametrize("kind", ["conv1x1", "depthwise", "one_channel"])
def test_conv_arguments_changed_after_construction_are_used(kind):
    make, shape = LAYERS[kind]
    layer = make()
    a = _rand(*shape, seed=2)
    _check(layer, a)
    layer.stride = 2  # upstream programs set these after construction
    layer.padding = (1, 0)
    _check(layer, a)
    layer.dilation = (2, 1)
    _check(layer, a)


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_other_input_shapes_dtypes_and_layouts(kind):
    make, shape = LAYERS[kind]
    layer = make()
    layer.eval()
    a = _rand(*shape, seed=3)
    _check(layer, a)
    wider = _rand(*(shape[:2] + (shape[2] + 3, shape[3] + 1)), seed=4)
    _check(layer, wider)
    _check(layer, a)
    # a non-contiguous input (every other column of a wider one)
    strided = _rand(*(shape[:3] + (2 * shape[3],)), seed=5)[..., ::2]
    _check(layer, strided)
    # float64 input: computes in the promoted dtype (no kept views of casts)
    a64 = a.astype(np.float64)
    out = layer(mge.tensor(a64, dtype="float64"))
    assert out.dtype == np.float64
    np.testing.assert_allclose(host(out), _expected(layer, a), rtol=1e-5, atol=1e-5)
    _check(layer, a)


def test_calc_conv_alternating_weights_uses_each():
    layer = M.Conv2d(4, 3, 3, padding=1)
    a = _rand(2, 4, 5, 5, seed=6)
    other = Tensor(_rand(3, 4, 3, 3, seed=7))
    x = mge.tensor(a)
    for _ in range(2):
        got = host(layer.calc_conv(x, other, None))
        expect = TF.conv2d(torch.from_numpy(a), torch.from_numpy(host(other)), padding=1)
        np.testing.assert_allclose(got, expect.numpy(), rtol=1e-5, atol=1e-5)
        _check(layer, a)


def test_training_steps_match_torch_with_kept_views():
    """SGD steps of a depthwise conv -> BN in training, then eval steps (kept views, gradients
    through them), against the same in torch. (The loss is linear in the output: a square
    would make BN's gradients large and the steps ill-conditioned.)"""
    conv, bn = M.Conv2d(4, 4, 3, padding=1, groups=4), _bn(4)
    tconv, tbn = torch.nn.Conv2d(4, 4, 3, padding=1, groups=4), torch.nn.BatchNorm2d(4)
    with torch.no_grad():
        tconv.weight.copy_(torch.from_numpy(host(conv.weight).reshape(4, 1, 3, 3)))
        tconv.bias.copy_(torch.from_numpy(host(conv.bias).reshape(-1)))
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(tbn, name).copy_(torch.from_numpy(host(getattr(bn, name)).reshape(-1)))
    net, tnet = M.Sequential(conv, bn), torch.nn.Sequential(tconv, tbn)
    params = list(net.parameters())
    opt, topt = optim.SGD(params, lr=0.05), torch.optim.SGD(tnet.parameters(), lr=0.05)
    gm = GradManager().attach(params)
    a, dy = _rand(2, 4, 6, 6, seed=8), _rand(2, 4, 6, 6, seed=9)
    for step in range(5):
        net.train(step < 2)
        tnet.train(step < 2)
        with gm:
            y = net(mge.tensor(a))
            gm.backward((y * mge.tensor(dy)).sum())
        ty = tnet(torch.from_numpy(a))
        (ty * torch.from_numpy(dy)).sum().backward()
        np.testing.assert_allclose(host(y), ty.detach().numpy(), rtol=1e-4, atol=1e-4,
                                   err_msg=f"step {step}")
        for p, tp in zip((conv.weight, conv.bias, bn.weight, bn.bias),
                         (tconv.weight, tconv.bias, tbn.weight, tbn.bias)):
            np.testing.assert_allclose(host(p.grad).reshape(tp.shape), tp.grad.numpy(),
                                       rtol=1e-4, atol=1e-4, err_msg=f"step {step}")
        opt.step().clear_grad()
        topt.step()
        topt.zero_grad()


@pytest.mark.parametrize("how", ["pickle", "deepcopy", "mge.save"])
def test_copies_start_without_views_and_follow_their_own_weights(how, tmp_path):
    layer = M.Conv2d(4, 3, 1)
    a = _rand(1, 4, 3, 3, seed=9)
    _check(layer, a)
    if how == "pickle":
        twin = pickle.loads(pickle.dumps(layer))
    elif how == "deepcopy":
        twin = copy.deepcopy(layer)
    else:
        mge.save(layer, str(tmp_path / "layer.mge"))
        twin = mge.load(str(tmp_path / "layer.mge"))
    assert "_layer_views" not in vars(twin)
    twin.weight._reset(host(twin.weight) * -2.0)
    _check(twin, a)
    _check(layer, a)
    assert not np.allclose(host(twin(mge.tensor(a))), host(layer(mge.tensor(a))))


def test_second_derivative_through_a_layer_with_kept_views():
    """A gradient penalty through a Conv2d whose views are kept: d/dw <dL/dx, v>, the inner
    gradient recorded by an outer GradManager, against torch's double backward."""
    conv = M.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
    a, v = _rand(2, 4, 7, 6, seed=11), _rand(2, 4, 7, 6, seed=12)
    _check(conv, a)  # the views are kept from here on
    conv.weight._reset(host(conv.weight) * 1.5)  # (written in place: seen through them)
    x = mge.tensor(a)
    dy = _rand(*conv(x).shape, seed=13)
    gm_outer = GradManager().attach([conv.weight])
    gm_inner = GradManager().attach([x])
    with gm_outer:
        with gm_inner:
            y = conv(x)
            gm_inner.backward(y, mge.tensor(dy))
        gm_outer.backward((x.grad * mge.tensor(v)).sum())
    tw = torch.tensor(host(conv.weight).reshape(6, 2, 3, 3), requires_grad=True)
    tx = torch.tensor(a, requires_grad=True)
    ty = TF.conv2d(tx, tw, torch.from_numpy(host(conv.bias).reshape(-1)), 2, 1, 1, 2)
    (tgx,) = torch.autograd.grad(ty, tx, torch.from_numpy(dy), create_graph=True)
    (tgx * torch.from_numpy(v)).sum().backward()
    np.testing.assert_allclose(host(conv.weight.grad).reshape(6, 2, 3, 3), tw.grad.numpy(),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_float64_layers_keep_float64_views(kind):
    make, shape = LAYERS[kind]
    layer = make()
    layer.eval()
    for t in _tensors(layer):  # the layer converted to float64 storage
        t._data = t._data.astype(np.float64)
    a = _rand(*shape, seed=14).astype(np.float64)
    for _ in range(2):
        out = layer(mge.tensor(a, dtype="float64"))
        assert out.dtype == np.float64
        x = torch.from_numpy(a)
        if isinstance(layer, M.BatchNorm2d):
            vals = [torch.from_numpy(host(t).reshape(-1)) for t in (
                layer.running_mean, layer.running_var, layer.weight, layer.bias)]
            expect = TF.batch_norm(x, *vals, training=False, eps=layer.eps)
        else:
            w = host(layer.weight)
            b = None if layer.bias is None else torch.from_numpy(host(layer.bias).reshape(-1))
            expect = TF.conv2d(x, torch.from_numpy(w.reshape((-1,) + w.shape[-3:])), b,
                               layer.stride, layer.padding, layer.dilation, layer.groups)
        np.testing.assert_allclose(host(out), expect.numpy(), rtol=1e-12, atol=1e-12)
        for t in _tensors(layer):
            t._reset(host(t) * 0.75 + 0.5)  # (in place: the next call must see it)


def test_pickles_hold_no_call_caches():
    """A saved network (mge.save) names no class that upstream's Module lacks: the views and
    the Sequential's call order made by calls are left out."""
    net = M.Sequential(M.Conv2d(3, 4, 3), _bn(4))
    net.eval()
    net(mge.tensor(_rand(1, 3, 5, 5, seed=15)))
    assert "_call_order" in vars(net) and "_layer_views" in vars(net[0])
    data = pickle.dumps(net)
    for name in (b"LayerViews", b"_CallOrder", b"_layer_views", b"_call_order"):
        assert name not in data
    assert "_layer_views" in vars(net[0])  # (the original keeps its own)
    lstm = M.LSTM(3, 4)
    lstm.eval()
    lstm(mge.tensor(_rand(2, 1, 3, seed=16)))
    assert "_weight_views" in vars(lstm)
    data = pickle.dumps(lstm)
    for name in (b"WeightViews", b"_weight_views"):
        assert name not in data
