"""Tests for `rnn_stack` of megengine/functional/rnn.py: a whole recurrent stack as one op against torch.nn.LSTM / nn.RNN (values, final states, gradients of every input), on its ATen inference path and its layer path, and its cache of weight views."""
import copy
import io
import pickle

import numpy as np
import pytest
import torch

import megengine as mge
import megengine.module as M
import megengine.optimizer as optim
from megengine.autodiff import GradManager
from megengine.functional import _aten
from megengine.functional.rnn import WeightViews, rnn_stack


def torch_net(mode, i, h, layers, bidirectional, batch_first, bias, dtype, seed):
    kw = dict(num_layers=layers, bidirectional=bidirectional, batch_first=batch_first,
              bias=bias)
    torch.manual_seed(seed)
    net = torch.nn.LSTM(i, h, **kw) if mode == "lstm" else torch.nn.RNN(
        i, h, nonlinearity=mode, **kw)
    return net.to(torch.float64 if dtype == np.float64 else torch.float32)


def flat_weights(net):
    """w_ih, w_hh, b_ih, b_hh per layer and direction as numpy copies (zeros for bias=False,
    as the modules keep them)."""
    out = []
    for names in net._all_weights:
        got = dict((n, getattr(net, n)) for n in names)
        w_ih = got[names[0]].detach().numpy().copy()
        w_hh = got[names[1]].detach().numpy().copy()
        g = w_ih.shape[0]
        b = [got[n].detach().numpy().copy() for n in names[2:]] or [
            np.zeros(g, w_ih.dtype), np.zeros(g, w_ih.dtype)]
        out += [w_ih, w_hh] + b
    return out


def lstm_calls(monkeypatch):
    """A list that grows by one at each call of ATen's whole-stack LSTM made by the engine."""
    calls, real = [], _aten.op("lstm")

    def recording(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setitem(_aten._bindings, "lstm", recording)
    return calls


CONFIGS = [  # (num_layers, bidirectional, batch_first, bias, initial states given)
    (1, False, False, True, True),
    (2, True, False, True, False),
    (2, True, True, False, True),
    (3, False, True, True, False),
]


@pytest.mark.parametrize("layers, bidirectional, batch_first, bias, given", CONFIGS)
@pytest.mark.parametrize("mode", ["lstm", "tanh"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stack_matches_torch_values_and_gradients(mode, dtype, layers, bidirectional,
                                                  batch_first, bias, given):
    rs = np.random.RandomState(layers)
    steps, n, i, h = 5, 3, 4, 6
    d = 2 if bidirectional else 1
    net = torch_net(mode, i, h, layers, bidirectional, batch_first, bias, dtype, seed=layers)
    ws = flat_weights(net)
    x = rs.randn(*((n, steps, i) if batch_first else (steps, n, i))).astype(dtype)
    states = [rs.randn(layers * d, n, h).astype(dtype) for _ in range(2 if mode == "lstm" else 1)]
    xm = mge.tensor(x, dtype=dtype)
    sm = [mge.tensor(s, dtype=dtype) for s in states] if given else []
    wm = [mge.tensor(w, dtype=dtype) for w in ws]
    attached = [xm] + sm + (wm if bias else [w for k, w in enumerate(wm) if k % 4 < 2])
    gm = GradManager().attach(attached)
    hx = None if not given else (tuple(sm) if mode == "lstm" else sm[0])
    with gm:
        outs = rnn_stack(mode, xm, hx, wm, layers, bidirectional, batch_first)
        dys = [rs.randn(*o.shape).astype(dtype) for o in outs]
        gm.backward(list(outs), [mge.tensor(a, dtype=dtype) for a in dys])

    tx = torch.tensor(x, requires_grad=True)
    ts = [torch.tensor(s, requires_grad=True) for s in states]
    thx = None if not given else (tuple(ts) if mode == "lstm" else ts[0])
    ty, tfinal = net(tx, thx)
    touts = [ty] + (list(tfinal) if mode == "lstm" else [tfinal])
    torch.autograd.backward(touts, [torch.from_numpy(a) for a in dys])
    tol = dict(rtol=1e-9, atol=1e-10) if dtype == np.float64 else dict(rtol=1e-5, atol=2e-6)
    for o, t in zip(outs, touts):
        assert o.dtype == np.dtype(dtype) and o.shape == tuple(t.shape)
        np.testing.assert_allclose(o.numpy(), t.detach().numpy(), **tol)
    np.testing.assert_allclose(xm.grad.numpy(), tx.grad.numpy(), **tol)
    for s, t in zip(sm, ts):
        np.testing.assert_allclose(s.grad.numpy(), t.grad.numpy(), **tol)
    tparams = [p for names in net._all_weights for p in (getattr(net, k) for k in names)]
    mine = wm if bias else [w for k, w in enumerate(wm) if k % 4 < 2]
    for k, (w, p) in enumerate(zip(mine, tparams)):
        np.testing.assert_allclose(w.grad.numpy(), p.grad.numpy(), err_msg=f"weight {k}", **tol)


@pytest.mark.parametrize("batch_first", [False, True])
def test_lstm_inference_on_aten_and_on_the_layers_agree_with_torch(batch_first, monkeypatch):
    """Without gradients a float32 LSTM stack is one ATen ``lstm`` call; with "rnn" avoided it
    runs layer by layer. Both equal torch's nn.LSTM, also for a non-contiguous input and with
    initial states given."""
    rs = np.random.RandomState(7)
    net = torch_net("lstm", 5, 4, 2, True, batch_first, True, np.float32, seed=7)
    ws = flat_weights(net)
    x = rs.randn(3, 7, 5).astype(np.float32).transpose(1, 0, 2)  # (7, 3, 5), not contiguous
    h0, c0 = (rs.randn(4, 7 if batch_first else 3, 4).astype(np.float32) for _ in range(2))
    for hx in (None, (h0, c0)):
        with torch.no_grad():
            expect = net(torch.from_numpy(x), None if hx is None else tuple(
                map(torch.from_numpy, hx)))
        expect = [expect[0]] + list(expect[1])
        for avoid in ((), ("rnn",)):
            calls = lstm_calls(monkeypatch)
            with _aten.avoided(*avoid):
                got = rnn_stack("lstm", x, hx, ws, 2, True, batch_first)
            on_cpu = type(got[0]._data) is np.ndarray  # (CUDA: the layer path, on CuPy)
            assert len(calls) == (1 if on_cpu and not avoid else 0)
            for a, b in zip(got, expect):
                np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


def test_gradients_of_some_inputs_only():
    """Only the top layer's weights attached (nothing below needs a gradient), then only the
    initial cell state: the gradients that are asked for equal torch's."""
    rs = np.random.RandomState(8)
    net = torch_net("lstm", 3, 4, 2, True, False, True, np.float32, seed=8)
    ws = flat_weights(net)
    x = rs.randn(6, 2, 3).astype(np.float32)
    h0, c0 = (rs.randn(4, 2, 4).astype(np.float32) for _ in range(2))
    tx = torch.from_numpy(x)
    th, tc = torch.tensor(h0), torch.tensor(c0, requires_grad=True)
    ty, (thn, tcn) = net(tx, (th, tc))
    ((ty ** 2).sum() + tcn.sum()).backward()
    tparams = [p for names in net._all_weights for p in (getattr(net, k) for k in names)]
    for pick in ("top weights", "c0"):
        wm = [mge.tensor(w) for w in ws]
        cm = mge.tensor(c0)
        gm = GradManager().attach(wm[8:] if pick == "top weights" else [cm])
        with gm:
            y, hn, cn = rnn_stack("lstm", mge.tensor(x), (mge.tensor(h0), cm), wm, 2, True)
            gm.backward((y ** 2).sum() + cn.sum())
        if pick == "top weights":
            assert all(w.grad is None for w in wm[:8])
            for w, p in zip(wm[8:], tparams[8:]):
                np.testing.assert_allclose(w.grad.numpy(), p.grad.numpy(), rtol=1e-4,
                                           atol=1e-5)
        else:
            np.testing.assert_allclose(cm.grad.numpy(), tc.grad.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["lstm", "relu"])
def test_only_the_final_hidden_state_used(mode):
    """No gradient reaches y (the op's backward gets None for it): the weights' and the
    input's gradients come through h_n alone, as torch's."""
    rs = np.random.RandomState(11)
    net = torch_net(mode, 3, 4, 2, True, True, True, np.float64, seed=11)
    ws = flat_weights(net)
    x = rs.randn(2, 5, 3)
    xm, wm = mge.tensor(x, dtype=np.float64), [mge.tensor(w, dtype=np.float64) for w in ws]
    gm = GradManager().attach([xm] + wm)
    with gm:
        outs = rnn_stack(mode, xm, None, wm, 2, True, batch_first=True)
        gm.backward((outs[1] ** 2).sum())
    tx = torch.tensor(x, requires_grad=True)
    _, final = net(tx)
    ((final[0] if mode == "lstm" else final) ** 2).sum().backward()
    np.testing.assert_allclose(xm.grad.numpy(), tx.grad.numpy(), rtol=1e-9, atol=1e-12)
    tparams = [p for names in net._all_weights for p in (getattr(net, k) for k in names)]
    for k, (w, p) in enumerate(zip(wm, tparams)):
        np.testing.assert_allclose(w.grad.numpy(), p.grad.numpy(), rtol=1e-9, atol=1e-12,
                                   err_msg=f"weight {k}")


def matching_torch_lstm(m):
    t = torch.nn.LSTM(m.input_size, m.hidden_size, m.num_layers)
    with torch.no_grad():
        for k, p in m.named_parameters():
            _, layer, _, w = k.split(".")
            getattr(t, f"{w}_l{layer}").copy_(torch.from_numpy(p.numpy()))
    return t


def test_cached_weight_views_follow_optimizer_steps_loads_and_copies(monkeypatch):
    """The module keeps torch views of its weights between inference calls: they must show
    every change of the weights (an optimizer's in-place step, load_state_dict, a new value)
    and never be shared with a copy of the module."""
    calls = lstm_calls(monkeypatch)
    rs = np.random.RandomState(9)
    m = M.LSTM(3, 5, num_layers=2)
    x = mge.tensor(rs.randn(4, 2, 3).astype(np.float32))

    def check(module):
        module.eval()
        with torch.no_grad():
            expect = matching_torch_lstm(module)(torch.from_numpy(x.numpy()))[0].numpy()
        np.testing.assert_allclose(module(x)[0].numpy(), expect, rtol=1e-5, atol=1e-6)

    check(m)
    on_cpu = type(x._data) is np.ndarray  # (CUDA: the layer path, on CuPy; no views kept)
    views = m._weight_views.views
    assert (views is not None) == on_cpu
    check(m)
    assert m._weight_views.views is views  # (the same arrays: kept)
    m.train()
    gm, opt = GradManager().attach(m.parameters()), optim.SGD(m.parameters(), lr=0.5)
    with gm:
        gm.backward((m(x)[0] ** 2).sum())
    opt.step()
    check(m)
    m.load_state_dict({k: v * 0.5 for k, v in m.state_dict().items()})
    check(m)
    w = m.cells[1][0].weight_hh
    w.set_value(mge.tensor(rs.randn(*w.shape).astype(np.float32)))  # (written in place)
    check(m)
    cell = m.cells[0][0]  # a new parameter: a new array, which the kept views do not show
    cell.weight_ih = mge.Parameter(rs.randn(*cell.weight_ih.shape).astype(np.float32))
    check(m)
    twin = copy.deepcopy(m)
    clone = pickle.loads(pickle.dumps(m))
    buf = io.BytesIO()
    mge.save(m, buf)
    buf.seek(0)
    loaded = mge.load(buf)
    for other in (twin, clone, loaded):
        check(other)
        assert other._weight_views.views is not m._weight_views.views or not on_cpu
    m.load_state_dict({k: v + 1 for k, v in m.state_dict().items()})
    check(m)
    for other in (twin, clone, loaded):
        check(other)  # (unchanged by m's new weights)
    assert len(calls) == (13 if on_cpu else 0)  # (every check of an eval call)


def test_weight_views_remade_for_new_arrays():
    a, b = np.ones((4, 2), np.float32), np.zeros(4, np.float32)
    views = WeightViews()
    first = views.of((a, b))
    assert views.of((a, b)) is first
    a2 = a.copy()
    second = views.of((a2, b))
    assert second is not first and second[0].data_ptr() == a2.ctypes.data
    a2[0, 0] = 7  # an in-place write shows through the kept view
    assert float(views.of((a2, b))[0][0, 0]) == 7
    assert pickle.loads(pickle.dumps(views)).views is None


def test_stack_errors():
    x = np.zeros((2, 1, 3), np.float32)
    ws = [np.zeros(s, np.float32) for s in ((16, 3), (16, 4), (16,), (16,))]
    with pytest.raises(ValueError, match="take 8 weights"):
        rnn_stack("lstm", x, None, ws, 1, bidirectional=True)
    with pytest.raises(ValueError, match=r"pair \(h0, c0\)"):
        rnn_stack("lstm", x, np.zeros((1, 1, 4), np.float32), ws)
    with pytest.raises(ValueError, match="mode must be one of"):
        rnn_stack("gru", x, None, ws)
    with pytest.raises(ValueError, match=r"c0 must be \(layers \* directions, batch, hidden\) = "
                                         r"\(1, 1, 4\), got shape \(2, 1, 4\)"):
        rnn_stack("lstm", x, (np.zeros((1, 1, 4), np.float32), np.zeros((2, 1, 4), np.float32)),
                  ws)
    m = M.LSTM(3, 4, num_layers=2)
    with pytest.raises(ValueError, match=r"h0 must be .* = \(2, 1, 4\), got shape \(1, 1, 4\)"):
        m(mge.tensor(x), (mge.tensor(np.zeros((1, 1, 4), np.float32)),) * 2)


@pytest.mark.parametrize("symbolic", [False, True])
def test_traced_lstm_replays_and_dumps(symbolic):
    """The stack op holds plain values only (megengine.jit compares, records and writes ops by
    their attributes): a traced inference LSTM replays, dumps and loads, equal to eager."""
    from megengine.jit import trace
    from megengine.jit.dump import load

    rs = np.random.RandomState(10)
    m = M.LSTM(3, 4, num_layers=2, bidirectional=True)
    m.eval()
    x = mge.tensor(rs.randn(5, 2, 3).astype(np.float32))
    expect = m(x)[0].numpy()

    @trace(symbolic=symbolic, capture_as_const=True)
    def f(x):
        return m(x)[0]

    for _ in range(3):
        np.testing.assert_allclose(f(x).numpy(), expect, rtol=1e-6, atol=1e-7)
    buf = io.BytesIO()
    f.dump(buf, arg_names=["x"])
    loaded = load(io.BytesIO(buf.getvalue()))
    got = list(loaded.run({"x": x.numpy()}).values())
    np.testing.assert_allclose(got[0].numpy(), expect, rtol=1e-6, atol=1e-7)
