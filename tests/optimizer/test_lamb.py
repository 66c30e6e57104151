"""LAMB against torch.optim.Adam (no decay, no adaptation: LAMB is Adam) and against a float64
reference written from the paper's update; LAMBFp16's float32 master copy."""
import io

import numpy as np
import pytest
import torch

import megengine as mge
from megengine.optimizer import LAMB, LAMBFp16


def lamb_reference(lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, bias_correction=True,
                   always_adapt=False):
    """The update of "Large Batch Optimization for Deep Learning" (Alg. 2) in float64."""
    moments = {}

    def step(values, grads, t):
        for i, (w, g) in enumerate(zip(values, grads)):
            m, v = moments.get(i, (np.zeros_like(w), np.zeros_like(w)))
            m = betas[0] * m + (1 - betas[0]) * g
            v = betas[1] * v + (1 - betas[1]) * g.astype(np.float64) ** 2
            moments[i] = (m, v)
            mh, vh = (m / (1 - betas[0] ** t), v / (1 - betas[1] ** t)) if bias_correction else (m, v)
            r = mh / (np.sqrt(vh) + eps) + weight_decay * w
            wn, rn = np.linalg.norm(w), np.linalg.norm(r)
            trust = wn / rn if (always_adapt or weight_decay > 0) and wn > 0 and rn > 0 else 1.0
            values[i] = w - lr * trust * r
    return step


def test_lamb_without_decay_or_adaptation_is_adam(side_by_side):
    side_by_side(lambda ps: LAMB(ps, lr=0.01, betas=(0.8, 0.99)),
                 lambda ps: torch.optim.Adam(ps, lr=0.01, betas=(0.8, 0.99)))


@pytest.mark.parametrize("kw", [
    dict(lr=0.01, weight_decay=0.1),
    dict(lr=0.02, weight_decay=0.0, always_adapt=True),
    dict(lr=0.01, weight_decay=0.05, bias_correction=False, betas=(0.85, 0.95), eps=1e-6),
])
def test_lamb_matches_the_papers_update(side_by_side, kw):
    side_by_side(lambda ps: LAMB(ps, **kw), None, reference=lamb_reference(**kw), rtol=2e-5,
                 atol=2e-6)


def test_trust_ratio_is_one_for_a_zero_parameter():
    # ||w|| = 0: the ratio would be 0 and the parameter could never move; LAMB uses 1
    p = mge.Parameter(np.zeros(3, np.float32))
    opt = LAMB([p], lr=0.1, weight_decay=0.1)
    p.grad = mge.Tensor([1.0, -2.0, 0.5])
    opt.step()
    np.testing.assert_allclose(p.numpy(), [-0.1, 0.1, -0.1], rtol=1e-5)  # Adam's first step


def test_lamb_fp16_keeps_a_float32_master_copy():
    init = np.array([1.0, -0.5, 2.0, 1e-3], np.float32)
    p16 = mge.Parameter(init.astype(np.float16))
    p32 = mge.Parameter(init)
    opt16, opt32 = LAMBFp16([p16], lr=1e-3, weight_decay=0.01), LAMB([p32], lr=1e-3, weight_decay=0.01)
    rng = np.random.RandomState(0)
    for _ in range(20):
        g = rng.randn(4).astype(np.float32)
        p16.grad, p32.grad = mge.Tensor(g.astype(np.float16)), mge.Tensor(g)
        opt16.step()
        opt32.step()
    assert p16.dtype == np.float16
    # the master copy follows float32 LAMB up to the float16 rounding of the gradients
    master = opt16._state[p16]["param_fp32"]
    np.testing.assert_allclose(master, p32.numpy(), rtol=1e-3, atol=1e-5)
    np.testing.assert_array_equal(p16.numpy(), master.astype(np.float16))


def test_state_dict_round_trip_continues_identically():
    def make():
        p = mge.Parameter(np.array([0.5, -1.0], np.float32))
        return p, LAMB([p], lr=0.05, weight_decay=0.1)

    p, opt = make()
    for g in ([0.1, 0.2], [0.3, -0.4]):
        p.grad = mge.Tensor(g)
        opt.step()
    buf = io.BytesIO()
    mge.save({"p": p.numpy(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = mge.load(buf)
    q, opt2 = make()
    q._reset(saved["p"])
    opt2.load_state_dict(saved["opt"])
    for prm, o in ((p, opt), (q, opt2)):
        prm.grad = mge.Tensor([-0.2, 0.7])
        o.step()
    np.testing.assert_array_equal(p.numpy(), q.numpy())


@pytest.mark.parametrize("kw, match", [
    (dict(lr=-1.0), "lr"), (dict(lr=0.1, weight_decay=-0.1), "weight_decay"),
    (dict(lr=0.1, betas=(1.0, 0.9)), "beta"),
])
def test_bad_hyperparameters(kw, match):
    with pytest.raises(ValueError, match=match):
        LAMB([mge.Parameter([1.0])], **kw)
