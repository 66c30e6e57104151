"""Tests for megengine/module/batch_matmul_activation.py against torch.bmm plus bias and relu."""
import numpy as np
import pytest
import torch

import megengine as mge
import megengine.module as M
from megengine.autodiff import GradManager


@pytest.mark.parametrize("mode, bias", [("identity", True), ("RELU", True), ("relu", False)])
def test_matches_torch(mode, bias):
    m = M.BatchMatMulActivation(3, 4, 5, bias=bias, nonlinear_mode=mode)
    if bias:
        m.bias._reset(np.linspace(-1, 1, 5).astype(np.float32))
    x = np.random.RandomState(0).randn(3, 4, 6).astype(np.float32)
    xm = mge.tensor(x)
    params = list(m.parameters())
    gm = GradManager().attach(params + [xm])
    dy = np.random.RandomState(1).randn(3, 5, 6).astype(np.float32)
    with gm:
        y = m(xm)
        gm.backward(y, mge.tensor(dy))
    wt = torch.tensor(m.weight.numpy(), requires_grad=True)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.bmm(wt, xt)
    if bias:
        bt = torch.tensor(m.bias.numpy(), requires_grad=True)
        yt = yt + bt[None, :, None]
    if mode.lower() == "relu":
        yt = torch.relu(yt)
    yt.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(y.numpy(), yt.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(xm.grad.numpy(), xt.grad.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(m.weight.grad.numpy(), wt.grad.numpy(), rtol=1e-5, atol=1e-5)
    if bias:
        np.testing.assert_allclose(m.bias.grad.numpy(), bt.grad.numpy(), rtol=1e-5, atol=1e-5)


def test_init_repr_and_errors():
    m = M.BatchMatMulActivation(2, 400, 3)
    w = m.weight.numpy()
    assert w.shape == (2, 3, 400) and np.all(m.bias.numpy() == 0)
    assert abs(w.std() - np.sqrt(1 / 400)) < 0.2 * np.sqrt(1 / 400)  # N(0, 1/fan_in), 2400 draws
    assert repr(m) == "BatchMatMulActivation(batch=2, in_features=400, out_features=3, bias=True)"
    with pytest.raises(ValueError, match="nonlinear_mode"):
        M.BatchMatMulActivation(1, 1, 1, nonlinear_mode="tanh")
    with pytest.raises(ValueError, match="in_features=400"):
        m(mge.tensor(np.zeros((2, 5, 1), np.float32)))
    with pytest.raises(RuntimeError, match="in_features=400"):  # (upstream's, measured)
        m(mge.tensor(np.zeros((2, 5, 1), np.float32)))
