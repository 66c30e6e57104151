"""Tests for megengine/functional/inplace.py: ``_inplace_add_`` against numpy, in the storage of
a Parameter, and in the two ways programs use it: a model EMA and an optimizer written to
upstream's protocol (checked against torch's SGD with momentum)."""
import copy

import numpy as np
import pytest
import torch

import megengine as mge
import megengine.module as M
from devices import address
from megengine.autodiff import GradManager
from megengine.functional.inplace import _inplace_add_
from megengine.optimizer import Optimizer


def test_alpha_dest_plus_beta_delta_in_place():
    rng = np.random.RandomState(0)
    d0, delta = rng.randn(3, 4).astype("float32"), rng.randn(3, 4).astype("float32")
    p = mge.Parameter(d0)
    before = address(p)
    out = _inplace_add_(p, mge.tensor(delta), alpha=mge.tensor(0.9), beta=mge.tensor(-0.25))
    assert out is p and address(p) == before  # the Parameter's own storage was written
    np.testing.assert_allclose(p.numpy(), 0.9 * d0 - 0.25 * delta, rtol=1e-6)
    t = mge.tensor(d0)
    _inplace_add_(t, mge.tensor(delta[0]), 1, 2.0)  # Python numbers; delta broadcasts
    np.testing.assert_allclose(t.numpy(), d0 + 2 * delta[0], rtol=1e-6)
    h = mge.tensor(d0, dtype="float16")
    _inplace_add_(h, mge.tensor(delta), 1, 1)
    assert h.dtype == np.float16  # dest keeps its dtype
    with pytest.raises(ValueError, match="does not fit dest of shape"):
        _inplace_add_(mge.tensor(d0[0]), mge.tensor(delta), 1, 1)
    with pytest.raises(ValueError, match="alpha must be a scalar"):
        _inplace_add_(mge.tensor(d0), mge.tensor(delta), mge.tensor([1.0, 2.0]), 1)


def test_model_ema_as_programs_write_it():
    # YOLOX's ModelEMA.update: ema = d * ema + (1 - d) * model, parameters and buffers
    mge.random.seed(1)  # the initial weights
    model = M.Sequential(M.Linear(3, 4), M.BatchNorm1d(4))
    ema = copy.deepcopy(model)
    for p in model.parameters():
        p._reset(p.numpy() + 1.0)
    ema_states = dict(ema.named_parameters())
    ema_states.update(dict(ema.named_buffers()))
    model_states = dict(model.named_parameters())
    model_states.update(dict(model.named_buffers()))
    start = {k: v.numpy() for k, v in ema_states.items()}
    d = 0.75
    for k, v in ema_states.items():
        _inplace_add_(v, model_states[k], alpha=mge.tensor(d), beta=mge.tensor(1 - d))
    for k, v in ema_states.items():
        expect = d * start[k] + (1 - d) * model_states[k].numpy()
        np.testing.assert_allclose(v.numpy(), expect.astype(v.dtype), rtol=1e-6)
    assert not np.allclose(start["0.weight"], ema_states["0.weight"].numpy())


class _InplaceSGD(Optimizer):
    """Upstream's SGD with momentum in its MEGENGINE_INPLACE_UPDATE form, as programs copy it
    (LARS, LAMB): both updates through ``_inplace_add_``."""

    def __init__(self, params, lr, momentum):
        super().__init__(params, dict(lr=lr, momentum=momentum))

    def _create_state(self, param_group):
        for param in param_group["params"]:
            self._add_state(param, "momentum_buffer")

    def _updates(self, param_group):
        neg_lr, momentum = mge.tensor(-param_group["lr"]), mge.tensor(param_group["momentum"])
        c1 = mge.tensor(1.0)
        for param in param_group["params"]:
            if param.grad is None:
                continue
            v = self._state[param]["momentum_buffer"]
            _inplace_add_(v, param.grad, alpha=momentum, beta=c1)
            _inplace_add_(param, v, alpha=c1, beta=neg_lr)


def test_an_inplace_optimizer_matches_torch_sgd_with_momentum():
    rng = np.random.RandomState(2)
    w0, x, y = rng.randn(4, 2), rng.randn(6, 4), rng.randn(6, 2)
    w = mge.Parameter(w0.astype("float32"))
    opt, gm = _InplaceSGD([w], lr=0.1, momentum=0.9), GradManager().attach([w])
    tw = torch.tensor(w0, dtype=torch.float32, requires_grad=True)
    topt = torch.optim.SGD([tw], lr=0.1, momentum=0.9)
    tx, ty = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    for _ in range(3):
        with gm:
            gm.backward(((mge.tensor(x) @ w - mge.tensor(y)) ** 2).sum())
        opt.step().clear_grad()
        topt.zero_grad()
        ((tx @ tw - ty) ** 2).sum().backward()
        topt.step()
        np.testing.assert_allclose(w.numpy(), tw.detach().numpy(), rtol=1e-5, atol=1e-6)
