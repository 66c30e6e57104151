"""LinearBn1d / LinearBnRelu1d against torch's Linear + BatchNorm1d (+ ReLU), and the extra
``bias`` entry upstream's state dicts carry."""
import numpy as np
import pytest
import torch

import megengine as mge
import megengine.module as M
from megengine.autodiff import GradManager
from module_oracle import randn


@pytest.mark.parametrize("cls, relu", [(M.LinearBn1d, False), (M.LinearBnRelu1d, True)])
def test_linear_bn_matches_torch(cls, relu):
    m = cls(5, 3)
    lin, bn = torch.nn.Linear(5, 3), torch.nn.BatchNorm1d(3, momentum=0.1)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(m.linear.weight.numpy()))
        lin.bias.copy_(torch.from_numpy(m.linear.bias.numpy().reshape(3)))
    x = randn(6, 5)
    xm = mge.tensor(x)
    gm = GradManager().attach([xm, m.linear.weight])
    dy = randn(6, 3)
    with gm:
        ym = m(xm)
        gm.backward(ym, mge.tensor(dy))
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = bn(lin(xt))
    yt = torch.relu(yt) if relu else yt
    yt.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(ym.numpy(), yt.detach().numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(xm.grad.numpy(), xt.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(m.linear.weight.grad.numpy(), lin.weight.grad.numpy(),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(m.bn.running_mean.numpy().ravel(), bn.running_mean.numpy(),
                               rtol=1e-4, atol=1e-5)


def test_state_dict_carries_upstreams_unused_bias():
    sd = M.LinearBn1d(4, 2).state_dict()
    assert {"bias", "linear.weight", "linear.bias", "bn.running_mean"} <= set(sd)
    assert sd["bias"].shape == (2,) and not sd["bias"].any()
    assert "bias" not in M.LinearBnRelu1d(4, 2, bias=False).state_dict()
    m = M.LinearBn1d(4, 2)
    m.load_state_dict(sd)  # strict: every key, the unused one too
