"""Tests for megengine/module/rnn.py: RNNCell, LSTMCell, RNN and LSTM against torch.nn with equal
weights (outputs, final states, and gradients of the input, the initial state and every weight)."""
import numpy as np
import pytest
import torch

import megengine as mge
import megengine.module as M
from megengine.autodiff import GradManager

from devices import host


def torch_name(mge_name):
    """cells.<layer>.<direction>.weight_ih -> weight_ih_l<layer>[_reverse]."""
    _, layer, direction, kind = mge_name.split(".")
    return f"{kind}_l{layer}" + ("_reverse" if direction == "1" else "")


def flat(out):
    """out, (out, h), (h, c) or (out, (h, c)) as a flat list of tensors."""
    if not isinstance(out, tuple):
        return [out]
    return [out[0]] + (list(out[1]) if isinstance(out[1], tuple) else [out[1]])


def compare(mge_m, torch_m, x, hx, name_map, rtol=1e-5, atol=1e-5):
    tparams = dict(torch_m.named_parameters())
    mparams = dict(mge_m.named_parameters())
    assert {name_map(k) for k in mparams} == set(tparams)
    with torch.no_grad():
        for k, p in mparams.items():
            tparams[name_map(k)].copy_(torch.from_numpy(p.numpy()))
    states = hx if isinstance(hx, tuple) else (hx,)
    xm = mge.tensor(x)
    hm = [mge.tensor(h) for h in states]
    gm = GradManager().attach(list(mparams.values()) + [xm] + hm)
    rs = np.random.RandomState(0)
    with gm:
        ys = flat(mge_m(xm, tuple(hm) if isinstance(hx, tuple) else hm[0]))
        dys = [rs.randn(*y.shape).astype(np.float32) for y in ys]
        gm.backward(ys, [mge.tensor(d) for d in dys])
    xt = torch.tensor(x, requires_grad=True)
    ht = [torch.tensor(h, requires_grad=True) for h in states]
    tys = flat(torch_m(xt, tuple(ht) if isinstance(hx, tuple) else ht[0]))
    assert len(ys) == len(tys)
    for y, ty in zip(ys, tys):
        assert y.shape == tuple(ty.shape)
        np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=rtol, atol=atol)
    torch.autograd.backward(tys, [torch.from_numpy(d) for d in dys])
    np.testing.assert_allclose(xm.grad.numpy(), xt.grad.numpy(), rtol=rtol, atol=atol)
    for h, t in zip(hm, ht):
        np.testing.assert_allclose(h.grad.numpy(), t.grad.numpy(), rtol=rtol, atol=atol)
    for k, p in mparams.items():
        np.testing.assert_allclose(p.grad.numpy(), tparams[name_map(k)].grad.numpy(),
                                   rtol=rtol, atol=atol, err_msg=k)


@pytest.mark.parametrize("nonlinearity, bias", [("tanh", True), ("relu", False)])
def test_rnn_cell(nonlinearity, bias):
    rs = np.random.RandomState(1)
    m = M.RNNCell(5, 4, bias=bias, nonlinearity=nonlinearity)
    t = torch.nn.RNNCell(5, 4, bias=bias, nonlinearity=nonlinearity)
    x, h = rs.randn(3, 5).astype(np.float32), rs.randn(3, 4).astype(np.float32)
    compare(m, t, x, h, lambda k: k)
    if not bias:  # as upstream, zero buffers stand in for the biases
        assert [k for k, _ in m.named_buffers()] == ["bias_hh", "bias_ih"]
    assert m(mge.tensor(x)).shape == (3, 4)  # hx defaults to zeros
    np.testing.assert_allclose(
        m(mge.tensor(x)).numpy(), m(mge.tensor(x), mge.tensor(np.zeros((3, 4), np.float32))).numpy())


def test_lstm_cell():
    rs = np.random.RandomState(2)
    m, t = M.LSTMCell(5, 3), torch.nn.LSTMCell(5, 3)
    x = rs.randn(4, 5).astype(np.float32)
    hc = (rs.randn(4, 3).astype(np.float32), rs.randn(4, 3).astype(np.float32))
    compare(m, t, x, hc, lambda k: k)
    h, c = m(mge.tensor(x))
    assert h.shape == c.shape == (4, 3)


@pytest.mark.parametrize("num_layers, bidirectional, batch_first", [
    (1, False, False), (2, True, False), (2, False, True),
])
def test_rnn_and_lstm_match_torch(num_layers, bidirectional, batch_first):
    rs = np.random.RandomState(3)
    d = 2 if bidirectional else 1
    x = rs.randn(2, 4, 3) if batch_first else rs.randn(4, 2, 3)
    x = x.astype(np.float32)
    h0 = rs.randn(d * num_layers, 2, 5).astype(np.float32)
    c0 = rs.randn(d * num_layers, 2, 5).astype(np.float32)
    kw = dict(num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first)
    compare(M.RNN(3, 5, nonlinearity="relu", **kw),
            torch.nn.RNN(3, 5, nonlinearity="relu", **kw), x, h0, torch_name)
    compare(M.LSTM(3, 5, **kw), torch.nn.LSTM(3, 5, **kw), x, (h0, c0), torch_name)


def test_rnn_shapes_defaults_and_errors():
    m = M.RNN(10, 20, 2, bidirectional=True)
    out, hn = m(mge.tensor(np.random.randn(6, 3, 10).astype(np.float32)))
    assert out.shape == (6, 3, 40) and hn.shape == (4, 3, 20)
    lstm = M.LSTM(10, 20, batch_first=True)
    out, (h, c) = lstm(mge.tensor(np.random.randn(3, 6, 10).astype(np.float32)))
    assert out.shape == (3, 6, 20) and h.shape == c.shape == (1, 3, 20)
    # every weight starts in U(-1/sqrt(hidden), 1/sqrt(hidden)), as upstream and torch
    bound = 1 / np.sqrt(20)
    assert all(np.abs(p.numpy()).max() <= bound for p in lstm.parameters())
    with pytest.raises(ValueError, match="Dropout"):
        M.RNN(2, 2, dropout=1.5)
    with pytest.raises(ValueError, match="proj_size"):
        M.LSTM(2, 4, proj_size=2)
    with pytest.raises(ValueError, match="input_size=10"):
        m(mge.tensor(np.zeros((6, 3, 9), np.float32)))
    with pytest.raises(ValueError, match="nonlinearity"):
        M.RNNCell(2, 2, nonlinearity="sigmoid")


@pytest.mark.parametrize("call, words", [
    (lambda: M.LSTMCell(3, 4)(mge.tensor(np.zeros((2, 4), np.float32))), "input must be"),
    (lambda: M.RNNCell(3, 4)(mge.tensor(np.zeros((2, 3), np.float32)),
                             mge.tensor(np.zeros((2, 5), np.float32))),
     r"the state h must be \(batch, hidden_size=4\)"),  # (numpy's "not aligned" before)
    (lambda: M.LSTMCell(3, 4)(mge.tensor(np.zeros((2, 3), np.float32)),
                              (mge.tensor(np.zeros((2, 4), np.float32)),
                               mge.tensor(np.zeros((1, 4), np.float32)))),
     "the state c must be"),
    (lambda: M.LSTM(3, 4)(mge.tensor(np.zeros((5, 2, 4), np.float32))), "input_size=3"),
])
def test_shapes_a_cell_cannot_take_are_named_and_also_upstreams_runtime_error(call, words):
    # upstream 1.13 measured: its kernels' AsyncError (a RuntimeError) for the cells; its LSTM
    # computes with the mismatched weights (MKL's "Parameter 9 was incorrect")
    with pytest.raises(ValueError, match=words) as error:
        call()
    assert isinstance(error.value, RuntimeError)


def test_init_hidden_of_a_batch_size_alone():
    # upstream 1.13 measured: RNN(4, 3, num_layers=2, bidirectional=True).init_hidden(5) is float32
    # zeros of shape (4, 5, 3) on the default device; LSTM(4, 3).init_hidden(5) is a tuple of two
    # float32 zeros of shape (1, 5, 3)
    h = M.RNN(4, 3, num_layers=2, bidirectional=True).init_hidden(5)
    assert (h.shape, h.dtype, h.device) == ((4, 5, 3), np.float32, mge.get_default_device())
    assert not h.numpy().any()
    hc = M.LSTM(4, 3).init_hidden(5)
    assert isinstance(hc, tuple)
    assert [(t.shape, t.dtype) for t in hc] == [((1, 5, 3), np.float32)] * 2
    assert not any(t.numpy().any() for t in hc)


def test_dropout_between_layers_only_in_training():
    m = M.LSTM(4, 4, num_layers=2, dropout=0.5)
    x = mge.tensor(np.random.randn(3, 2, 4).astype(np.float32))
    m.eval()
    a, b = m(x)[0].numpy(), m(x)[0].numpy()
    np.testing.assert_array_equal(a, b)
    m.train()
    outs = [m(x)[0].numpy() for _ in range(3)]
    assert not all(np.array_equal(outs[0], o) for o in outs[1:])


@pytest.mark.parametrize("kind", ["LSTM", "RNN", "LSTMCell"])
def test_second_order_through_the_per_step_path(kind):
    """Under two GradManagers the layers run step by step in differentiable ops: a gradient
    penalty on d(out)/d(input) trains the weights as torch's create_graph does."""
    rs = np.random.RandomState(4)
    cell = kind == "LSTMCell"
    m = getattr(M, kind)(3, 4)
    t = getattr(torch.nn, kind)(3, 4)
    name = (lambda k: k) if cell else torch_name
    with torch.no_grad():
        for k, p in m.named_parameters():
            dict(t.named_parameters())[name(k)].copy_(torch.from_numpy(p.numpy()))
    xa = rs.randn(*((2, 3) if cell else (4, 2, 3))).astype(np.float32)
    x = mge.tensor(xa)
    params = list(m.parameters())
    gm_x, gm_w = GradManager().attach(x), GradManager().attach(params)
    with gm_w:
        with gm_x:
            out = m(x)
            gm_x.backward((out[0] if cell else out[0]).sum())
        gm_w.backward((x.grad ** 2).sum())
    tx = torch.tensor(xa, requires_grad=True)
    tout = t(tx)
    gx, = torch.autograd.grad(tout[0].sum(), tx, create_graph=True)
    tgrads = torch.autograd.grad((gx ** 2).sum(), list(t.parameters()))
    np.testing.assert_allclose(x.grad.numpy(), gx.detach().numpy(), rtol=1e-4, atol=1e-5)
    tnames = [k for k, _ in t.named_parameters()]
    for k, p in m.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), tgrads[tnames.index(name(k))].numpy(),
                                   rtol=1e-4, atol=1e-5, err_msg=k)


def test_lstm_bidirectional_two_layers_bias_off_inference_matches_torch():
    rs = np.random.RandomState(5)
    kw = dict(num_layers=2, bidirectional=True, bias=False)
    m, t = M.LSTM(3, 5, **kw), torch.nn.LSTM(3, 5, **kw)
    with torch.no_grad():
        for k, p in m.named_parameters():
            dict(t.named_parameters())[torch_name(k)].copy_(torch.from_numpy(p.numpy()))
        x = rs.randn(6, 2, 3).astype(np.float32)
        ty, (th, tc) = t(torch.from_numpy(x))
    m.eval()
    y, (h, c) = m(mge.tensor(x))
    for a, b in ((y, ty), (h, th), (c, tc)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


def test_without_initial_states_every_layer_starts_from_zeros_in_training():
    rs = np.random.RandomState(6)
    kw = dict(num_layers=2, bidirectional=True)
    m, t = M.LSTM(3, 4, **kw), torch.nn.LSTM(3, 4, **kw)
    tparams = dict(t.named_parameters())
    with torch.no_grad():
        for k, p in m.named_parameters():
            tparams[torch_name(k)].copy_(torch.from_numpy(p.numpy()))
    x = rs.randn(5, 2, 3).astype(np.float32)
    gm = GradManager().attach(list(m.parameters()))
    with gm:
        y, (h, c) = m(mge.tensor(x))
        gm.backward((y ** 2).sum() + h.sum() + (c * 2).sum())
    ty, (th, tc) = t(torch.from_numpy(x))
    ((ty ** 2).sum() + th.sum() + (tc * 2).sum()).backward()
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-5, atol=1e-6)
    for k, p in m.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), tparams[torch_name(k)].grad.numpy(),
                                   rtol=1e-4, atol=1e-5, err_msg=k)


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
@pytest.mark.parametrize("bias", [True, False])
def test_an_upstream_checkpoint_with_flatten_weights_loads_what_its_forward_used(kind, bias):
    # upstream 1.13's RNN/LSTM compute with one `_flatten_weights` Parameter (saved beside its
    # cells' unused weights): per layer and direction w_ih, w_hh (and b_ih, b_hh), row-major,
    # one after the other (measured against upstream's own output). That is torch's flat
    # weight order too, so torch's module filled from the same values is the oracle.
    rs = np.random.RandomState(3)
    layer = getattr(M, kind)(2, 3, num_layers=2, bidirectional=True, bias=bias)
    tlayer = getattr(torch.nn, kind)(2, 3, num_layers=2, bidirectional=True, bias=bias)
    size = sum(p.numel() for p in tlayer._flat_weights)
    flat = rs.uniform(-0.5, 0.5, (size,)).astype(np.float32)
    at = 0
    with torch.no_grad():
        for p in tlayer._flat_weights:
            p.copy_(torch.from_numpy(flat[at:at + p.numel()]).reshape(p.shape))
            at += p.numel()
    gates = 4 * 3 if kind == "LSTM" else 3
    state = {"rnn." + k: np.zeros_like(v) for k, v in layer.state_dict().items()}  # (unused)
    state["rnn._flatten_weights"] = flat.reshape(gates, -1)  # (upstream's 2-d shape)
    net = M.Module()
    net.rnn = layer
    net.load_state_dict(state)
    x = rs.randn(4, 2, 2).astype(np.float32)
    np.testing.assert_allclose(host(layer(mge.tensor(x))[0]),
                               tlayer(torch.from_numpy(x))[0].detach().numpy(), rtol=1e-5,
                               atol=1e-6)
    with pytest.raises(ValueError, match="saved from another layer"):
        M.Sequential(getattr(M, kind)(2, 4)).load_state_dict({"0._flatten_weights": flat})


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
@pytest.mark.parametrize("bias", [True, False])
def test_state_dict_holds_upstreams_flatten_weights_so_upstream_loads_it_strictly(kind, bias):
    # upstream 1.13 measured: its RNN/LSTM state_dict starts with `_flatten_weights` (shape
    # (gates * hidden, sum of input sizes + hidden per layer and direction + 2 with bias)), the
    # weights its forward uses; a checkpoint saved here with it loaded into upstream's layers
    # with strict=True and gave the same outputs (within 1.2e-7, 8 configurations). Its order
    # is torch's flat weight order: torch's layer filled from the cells is the oracle.
    layer = getattr(M, kind)(3, 4, num_layers=2, bidirectional=True, bias=bias)
    state = layer.state_dict()
    gates = 4 * 4 if kind == "LSTM" else 4
    assert list(state)[0] == "_flatten_weights"
    assert state["_flatten_weights"].shape == (gates, 2 * (3 + 4 + 2 * bias) + 2 * (8 + 4 + 2 * bias))
    tlayer = getattr(torch.nn, kind)(3, 4, num_layers=2, bidirectional=True, bias=bias)
    names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if bias else [])
    with torch.no_grad():
        for layer_i in range(2):
            for d in range(2):
                for name in names:
                    tname = f"{name}_l{layer_i}" + ("_reverse" if d else "")
                    getattr(tlayer, tname).copy_(torch.from_numpy(
                        state[f"cells.{layer_i}.{d}.{name}"]))
    want = torch.cat([p.detach().reshape(-1) for p in tlayer._flat_weights]).numpy()
    np.testing.assert_array_equal(state["_flatten_weights"].reshape(-1), want)
    assert isinstance(layer.state_dict(keep_var=True)["_flatten_weights"], mge.Tensor)
    again = getattr(M, kind)(3, 4, num_layers=2, bidirectional=True, bias=bias)
    again.load_state_dict(state)  # (strict: the key is known here too)
    x = mge.tensor(np.random.RandomState(0).randn(5, 2, 3).astype(np.float32))
    np.testing.assert_array_equal(host(again(x)[0]), host(layer(x)[0]))


@pytest.mark.parametrize("kind", ["RNNCell", "LSTMCell", "RNN", "LSTM"])
def test_without_bias_biases_a_checkpoint_writes_into_the_buffers_are_not_added(kind):
    # upstream 1.13 measured: with bias=False the layers keep bias_ih/bias_hh buffers, saved in
    # state_dict, so a checkpoint with nonzero values there loads with strict=True (and saves
    # them again); its RNN and LSTM then compute without them, as its docs say ("does not use
    # bias weights"). (Its cells add them: here they do not either.) Torch's layer without
    # bias, filled with the same weights, is the oracle for values and gradients.
    rs = np.random.RandomState(7)
    cell = kind.endswith("Cell")
    kw = {} if cell else dict(num_layers=2, bidirectional=True)
    m = getattr(M, kind)(3, 4, bias=False, **kw)
    t = getattr(torch.nn, kind)(3, 4, bias=False, **kw)
    state = m.state_dict()
    biases = [k for k in state if "bias" in k]
    assert biases and all(not k.startswith("_") for k in biases)
    for k in biases:
        state[k] = rs.uniform(0.5, 1.0, state[k].shape).astype(np.float32)
    m.load_state_dict(state)  # (strict)
    assert all(np.array_equal(m.state_dict()[k], state[k]) for k in biases)
    name = (lambda k: k) if cell else torch_name
    x = rs.randn(*((2, 3) if cell else (5, 2, 3))).astype(np.float32)
    n_states = 2 if "LSTM" in kind else 1
    states = tuple(rs.randn(*((2, 4) if cell else (4, 2, 4))).astype(np.float32)
                   for _ in range(n_states))
    compare(m, t, x, states if n_states == 2 else states[0], name)
    # the per-step path (two GradManagers recording: higher-order gradients possible)
    xm = mge.tensor(x)
    with GradManager().attach(xm), GradManager().attach(list(m.parameters())):
        y = flat(m(xm))[0]
    np.testing.assert_allclose(y.numpy(), flat(t(torch.from_numpy(x)))[0].detach().numpy(),
                               rtol=1e-5, atol=1e-5)


def test_reprs_are_upstreams():
    # upstream 1.13 measured: repr() of the recurrent layers prints no arguments
    assert repr(M.RNNCell(3, 4, bias=False, nonlinearity="relu")) == "RNNCell()"
    assert repr(M.LSTMCell(3, 4)) == "LSTMCell()"
    assert repr(M.RNN(3, 4)) == "RNN(\n  (cells.0.0): RNNCell()\n)"
    assert repr(M.LSTM(3, 4, num_layers=2, bias=False, batch_first=True, dropout=0.5,
                       bidirectional=True)) == (
        "LSTM(\n  (cells.0.0): LSTMCell()\n  (cells.0.1): LSTMCell()\n"
        "  (cells.1.0): LSTMCell()\n  (cells.1.1): LSTMCell()\n)")


@pytest.mark.parametrize("cls, kw", [(M.LSTM, {}), (M.RNN, {"nonlinearity": "relu"}),
                                     (M.RNN, {})])
def test_create_cell_makes_the_cell_of_a_layer(cls, kw):
    # upstream 1.13 measured: layer 0 reads the input, later layers both directions' hidden
    # states; the cell takes the stack's bias and nonlinearity
    m = cls(4, 3, num_layers=2, bidirectional=True, bias=False, **kw)
    for layer, width in ((0, 4), (1, 6)):
        cell = m.create_cell(layer)
        assert type(cell) is (M.LSTMCell if cls is M.LSTM else M.RNNCell)
        assert (cell.input_size, cell.hidden_size, cell.bias) == (width, 3, False)
        assert sorted(n for n, _ in cell.named_parameters()) == ["weight_hh", "weight_ih"]
        if cls is M.RNN:
            assert cell.nonlinearity == kw.get("nonlinearity", "tanh")
