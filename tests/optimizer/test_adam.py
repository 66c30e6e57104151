"""Adam against torch.optim.Adam (bias correction, eps placement, L2 decay); argument checks."""
import pytest
import torch

import megengine as mge
from megengine.optimizer import Adam


@pytest.mark.parametrize("kw", [
    dict(lr=0.01),
    dict(lr=0.02, betas=(0.8, 0.99), eps=1e-3),
    dict(lr=0.01, weight_decay=0.1),
])
def test_adam_matches_torch(side_by_side, kw):
    side_by_side(lambda ps: Adam(ps, **kw), lambda ps: torch.optim.Adam(ps, **kw))


@pytest.mark.parametrize("kw, match", [
    (dict(lr=-1.0), "lr"),
    (dict(lr=0.1, betas=(1.0, 0.9)), "beta at index 0"),
    (dict(lr=0.1, betas=(0.9, -0.1)), "beta at index 1"),
    (dict(lr=0.1, eps=-1e-8), "eps"),
    (dict(lr=0.1, weight_decay=-1.0), "weight_decay"),
])
def test_adam_rejects_bad_hyperparameters(kw, match):
    with pytest.raises(ValueError, match=match):
        Adam([mge.Parameter([1.0])], **kw)


def test_adam_rejects_betas_that_are_not_a_pair():
    with pytest.raises(TypeError, match="betas"):
        Adam([mge.Parameter([1.0])], lr=0.1, betas=(0.9,))


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("shape", [(257,), ()], ids=str)
def test_adam_update_is_upstreams_formula_step_by_step(name, weight_decay, shape):
    # the array code (cpu0; a GPU runs one fused kernel, whose contractions round otherwise)
    # works in place in scratch buffers, operation by operation in upstream's order: float32
    # results equal the formula written with temporaries, bit for bit
    import numpy as np

    from megengine import optimizer

    rng = np.random.RandomState(0)
    w = np.asarray(rng.randn(*shape), np.float32)
    p = mge.Parameter(w.copy(), device="cpu0")
    opt = getattr(optimizer, name)([p], lr=0.01, betas=(0.9, 0.999), eps=1e-8,
                                   weight_decay=weight_decay)
    m, v = np.zeros_like(w), np.zeros_like(w)
    for t in range(1, 6):
        g = np.asarray(rng.randn(*shape), np.float32)
        p.grad = mge.Tensor(g, device=p.device)
        opt.step()
        if name == "Adam" and weight_decay:
            g = g + weight_decay * w
        m = 0.9 * m + (1 - 0.9) * g
        v = 0.999 * v + (1 - 0.999) * (g * g)
        delta = (m / (1 - 0.9 ** t)) / ((v / (1 - 0.999 ** t)) ** 0.5 + 1e-8)
        if name == "AdamW" and weight_decay:
            delta = delta + weight_decay * w
        w = w - 0.01 * delta
        np.testing.assert_array_equal(p.numpy(), w, err_msg=f"step {t}")
