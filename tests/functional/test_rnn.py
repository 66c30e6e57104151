"""Tests for megengine/functional/rnn.py: the one-op recurrent layer against torch.nn.LSTM / nn.RNN
(values, final states and the gradients of every input), on both of its step-gemm paths."""
import subprocess
import sys

import numpy as np
import pytest
import torch

import megengine as mge
from megengine.autodiff import GradManager
from megengine.functional import _aten
from megengine.functional.rnn import rnn_layer
from devices import host_default_device, record_aten_matmuls  # noqa: F401  (a fixture)

GATES = {"lstm": 4, "tanh": 1, "relu": 1}


def torch_layer(mode, i, h, dtype):
    if mode == "lstm":
        return torch.nn.LSTM(i, h).to(dtype)
    return torch.nn.RNN(i, h, nonlinearity=mode).to(dtype)


def run_both(mode, x, h0, c0, reverse, dtype, unused_y=False, seed=0):
    """Our layer and torch's on the same weights: outputs and gradients of x, the states and
    the weights. Reverse is checked as torch's forward layer over the flipped sequence."""
    rs = np.random.RandomState(seed)
    steps, n, i = x.shape
    h = h0.shape[-1]
    g = GATES[mode] * h
    ws = [rs.uniform(-0.5, 0.5, s).astype(dtype) for s in ((g, i), (g, h), (g,), (g,))]
    lstm = mode == "lstm"
    ins = [mge.tensor(a, dtype=dtype) for a in [x, h0] + ([c0] if lstm else []) + ws]
    gm = GradManager().attach(ins)
    with gm:
        outs = rnn_layer(mode, ins[0], ins[1], ins[2] if lstm else None, *ins[-4:],
                         reverse=reverse)
        dys = [rs.randn(*o.shape).astype(dtype) for o in outs]
        used = outs[1:] if unused_y else outs
        gm.backward(list(used), [mge.tensor(d, dtype=dtype) for d in dys[len(outs) - len(used):]])

    tdt = torch.float64 if dtype == np.float64 else torch.float32
    layer = torch_layer(mode, i, h, tdt)
    with torch.no_grad():
        for p, a in zip((layer.weight_ih_l0, layer.weight_hh_l0, layer.bias_ih_l0,
                         layer.bias_hh_l0), ws):
            p.copy_(torch.from_numpy(a))
    tx = torch.tensor(x[::-1].copy() if reverse else x, requires_grad=True)
    th = torch.tensor(h0[None], requires_grad=True)
    tc = torch.tensor(c0[None], requires_grad=True)
    ty, states = layer(tx, (th, tc) if lstm else th)
    touts = [ty.flip(0) if reverse else ty] + ([s[0] for s in states] if lstm else [states[0]])
    pairs = list(zip(touts, dys))[1:] if unused_y else list(zip(touts, dys))
    torch.autograd.backward([t for t, _ in pairs], [torch.from_numpy(d) for _, d in pairs])
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == np.float64 else dict(rtol=2e-5, atol=2e-5)
    for o, t in zip(outs, touts):
        np.testing.assert_allclose(o.numpy(), t.detach().numpy(), **tol)
    gx = tx.grad.numpy()[::-1] if reverse else tx.grad.numpy()
    expect = [gx, th.grad.numpy()[0]] + ([tc.grad.numpy()[0]] if lstm else []) + [
        p.grad.numpy() for p in (layer.weight_ih_l0, layer.weight_hh_l0, layer.bias_ih_l0,
                                 layer.bias_hh_l0)]
    for k, (t, e) in enumerate(zip(ins, expect)):
        assert t.grad.dtype == np.dtype(dtype)
        np.testing.assert_allclose(t.grad.numpy(), e, err_msg=f"input {k}", **tol)


@pytest.mark.parametrize("aten_gemm", [True, False])
@pytest.mark.parametrize("mode", ["lstm", "tanh", "relu"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layer_matches_torch_both_directions(mode, dtype, aten_gemm):
    rs = np.random.RandomState(1)
    x = rs.randn(5, 3, 7).astype(dtype)
    h0, c0 = rs.randn(3, 6).astype(dtype), rs.randn(3, 6).astype(dtype)
    if aten_gemm:
        assert _aten.use_aten(x, "rnn")
    with _aten.avoided(*(() if aten_gemm else ("rnn",))):
        for reverse in (False, True):
            run_both(mode, x, h0, c0, reverse, dtype)


@pytest.mark.parametrize("mode", ["lstm", "tanh"])
def test_large_layers_take_their_products_to_aten_and_match_torch(mode, monkeypatch,
                                                                  host_default_device):
    # the input projection of all steps, backward's per-step recurrent products and the
    # weights' gradients are above the sizes numpy's BLAS would thread (core/ops.py matmul):
    # they run on ATen. float64: the step loop (oneDNN's LSTM takes float32 only).
    calls = record_aten_matmuls(monkeypatch)
    rs = np.random.RandomState(9)
    x = rs.randn(3, 16, 128)
    h0, c0 = rs.randn(16, 256), rs.randn(16, 256)
    run_both(mode, x, h0, c0, False, np.float64)
    assert len(calls) >= 5


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lstm_backward_factors_made_per_step_for_large_layers(dtype, monkeypatch):
    # (layers above the size limit make them in the loop; the tests' small ones after it)
    from megengine.functional import rnn as rnn_module

    monkeypatch.setattr(rnn_module, "_WHOLE_SEQUENCE_FACTORS", 0)
    rs = np.random.RandomState(8)
    x = rs.randn(4, 3, 5).astype(dtype)
    h0, c0 = rs.randn(3, 6).astype(dtype), rs.randn(3, 6).astype(dtype)
    with _aten.avoided("rnn"):  # (float32 would run oneDNN's kernels, not the loop)
        for reverse in (False, True):
            run_both("lstm", x, h0, c0, reverse, dtype)


def test_lstm_trains_on_onednn_from_its_step_count(monkeypatch):
    """float32 LSTM layers of 16 steps or more train on oneDNN's kernels (forward and
    backward); here the limit is lowered so that small cases take that path."""
    from devices import record_aten_kernels
    from megengine.functional import rnn as rnn_module

    if not _aten.use_aten(np.zeros(1, np.float32), "rnn"):
        pytest.skip("no ATen for this machine's CPU arrays")
    monkeypatch.setattr(rnn_module, "_ONEDNN_MIN_STEPS", 1)
    used = record_aten_kernels(monkeypatch)
    rs = np.random.RandomState(9)
    x = rs.randn(6, 3, 5).astype(np.float32)
    h0, c0 = rs.randn(3, 4).astype(np.float32), rs.randn(3, 4).astype(np.float32)
    for reverse in (False, True):
        run_both("lstm", x, h0, c0, reverse, np.float32)
    run_both("lstm", x.transpose(1, 0, 2).copy().transpose(1, 0, 2), h0, c0, False, np.float32,
             unused_y=True)  # a strided input; only h_n and c_n used
    if type(mge.tensor(x)._data) is np.ndarray:  # (simulated CUDA arrays keep the loop)
        assert "mkldnn_rnn_layer_backward" in used


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lstm_with_fewer_rows_than_hidden_units_scales_its_gates_per_step(dtype):
    # (steps * batch < hidden: a cell's case; the halving of the sigmoid gates goes into each
    # step's gates instead of the weights)
    rs = np.random.RandomState(10)
    x = rs.randn(2, 3, 4).astype(dtype)
    h0, c0 = rs.randn(3, 9).astype(dtype), rs.randn(3, 9).astype(dtype)
    for reverse in (False, True):
        run_both("lstm", x, h0, c0, reverse, dtype)
        run_both("lstm", x[:1], h0, c0, reverse, dtype, unused_y=True)


def test_only_final_states_used_and_noncontiguous_input():
    rs = np.random.RandomState(2)
    x = rs.randn(3, 4, 5).astype(np.float32).transpose(1, 0, 2)  # (4, 3, 5), not contiguous
    assert not x.flags.c_contiguous
    h0, c0 = rs.randn(3, 2).astype(np.float32), rs.randn(3, 2).astype(np.float32)
    run_both("lstm", x, h0, c0, False, np.float32, unused_y=True)
    run_both("tanh", x, h0, c0, True, np.float32, unused_y=True)


def test_one_step_cell_form_and_inference_without_grad():
    rs = np.random.RandomState(3)
    x, h, c = (rs.randn(2, 4).astype(np.float32) for _ in range(3))
    w_ih, w_hh = rs.randn(16, 4).astype(np.float32), rs.randn(16, 4).astype(np.float32)
    b = rs.randn(16).astype(np.float32)
    y, hn, cn = rnn_layer("lstm", x, h, c, w_ih, w_hh, b, b)
    cell = torch.nn.LSTMCell(4, 4)
    with torch.no_grad():
        for p, a in zip((cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh),
                        (w_ih, w_hh, b, b)):
            p.copy_(torch.from_numpy(a))
        th, tc = cell(torch.from_numpy(x), (torch.from_numpy(h), torch.from_numpy(c)))
    assert y.shape == hn.shape == (2, 4)
    np.testing.assert_allclose(hn.numpy(), th.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y.numpy(), th.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cn.numpy(), tc.numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="mode must be one of"):
        rnn_layer("gru", x, h, c, w_ih, w_hh, b, b)


def test_one_step_backward_reads_the_state_gradients_without_writing_them():
    # a cell's backward takes h0 / c0 as the previous states and h_n's gradient uncopied:
    # the gradients it is handed stay as they were, and its own match torch's LSTMCell
    from megengine.functional.rnn import _RecurrentLayer

    rs = np.random.RandomState(5)
    x, h, c, gh, gc = (rs.randn(3, 4).astype(np.float32) for _ in range(5))
    w_ih, w_hh = rs.randn(16, 4).astype(np.float32), rs.randn(16, 4).astype(np.float32)
    b_ih, b_hh = rs.randn(16).astype(np.float32), rs.randn(16).astype(np.float32)
    op = _RecurrentLayer("lstm", False)
    op.needs_input_grad = (True,) * 7
    _, hn, cn = op.forward(x, h, c, w_ih, w_hh, b_ih, b_hh)
    given = gh.copy(), gc.copy()
    grads = op.backward(None, gh, gc)
    np.testing.assert_array_equal(gh, given[0])
    np.testing.assert_array_equal(gc, given[1])
    ts = [torch.tensor(a, requires_grad=True) for a in (x, h, c, w_ih, w_hh, b_ih, b_hh)]
    th, tc = torch.lstm_cell(ts[0], (ts[1], ts[2]), *ts[3:])
    torch.autograd.backward((th, tc), (torch.from_numpy(gh), torch.from_numpy(gc)))
    np.testing.assert_allclose(hn, th.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cn, tc.detach().numpy(), rtol=1e-5, atol=1e-6)
    for ours, t in zip(grads, ts):
        np.testing.assert_allclose(ours, t.grad.numpy(), rtol=1e-5, atol=1e-5)


def test_without_torch_the_layer_runs_on_numpy():
    code = ("import sys, numpy as np\n"
            "sys.modules['torch'] = None\n"
            "import megengine as mge, megengine.module as M\n"
            "from megengine.autodiff import GradManager\n"
            "m = M.LSTM(3, 4)\n"
            "gm = GradManager().attach(m.parameters())\n"
            "with gm:\n"
            "    y, _ = m(mge.tensor(np.ones((5, 2, 3), 'float32')))\n"
            "    gm.backward(y.sum())\n"
            "print(y.shape, all(p.grad is not None for p in m.parameters()))\n"
            "m.eval()\n"  # inference: rnn_stack's layer path (no ATen lstm without torch)
            "print(bool(np.allclose(m(mge.tensor(np.ones((5, 2, 3), 'float32')))[0].numpy(),"
            " y.numpy())))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["(5,", "2,", "4)", "True", "True"]


@pytest.mark.parametrize("steps", [1, 3, 4, 7])
@pytest.mark.parametrize("reverse", [False, True])
def test_lstm_inference_on_onednn_and_on_the_step_loop(reverse, steps, monkeypatch):
    """Without gradients a float32 LSTM layer of 4 steps or more runs oneDNN's kernel (torch's
    own CPU LSTM), a shorter one (a cell: one step) the step loop, as does any with "rnn"
    avoided: all equal torch's nn.LSTM."""
    from devices import record_aten_kernels
    from megengine.functional import rnn as rnn_module

    rs = np.random.RandomState(6)
    x = rs.randn(steps, 3, 5).astype(np.float32)
    h0, c0 = rs.randn(3, 4).astype(np.float32), rs.randn(3, 4).astype(np.float32)
    ws = [rs.uniform(-0.5, 0.5, s).astype(np.float32) for s in ((16, 5), (16, 4), (16,), (16,))]
    layer = torch.nn.LSTM(5, 4)
    with torch.no_grad():
        for p, a in zip((layer.weight_ih_l0, layer.weight_hh_l0, layer.bias_ih_l0,
                         layer.bias_hh_l0), ws):
            p.copy_(torch.from_numpy(a))
        tx = torch.from_numpy(x[::-1].copy() if reverse else x)
        ty, (th, tc) = layer(tx, (torch.from_numpy(h0)[None], torch.from_numpy(c0)[None]))
    ty = ty.flip(0) if reverse else ty
    for avoid in ((), ("rnn",)):
        used = record_aten_kernels(monkeypatch)
        with _aten.avoided(*avoid):
            y, h, c = rnn_layer("lstm", x, h0, c0, *ws, reverse=reverse)
        assert ("mkldnn_rnn_layer" in used) == (
            not avoid and type(y._data) is np.ndarray
            and steps >= rnn_module._ONEDNN_INFER_MIN_STEPS)
        for a, b in ((y, ty), (h, th[0]), (c, tc[0])):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
