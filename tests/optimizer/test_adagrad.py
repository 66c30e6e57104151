"""Adagrad against torch.optim.Adagrad, and against upstream's formula where eps differs."""
import numpy as np
import pytest
import torch

import megengine as mge
from megengine.optimizer import Adagrad


@pytest.mark.parametrize("kw", [
    dict(lr=0.1, eps=0.0),  # with eps=0 upstream's and torch's formulas agree
    dict(lr=0.1, eps=0.0, lr_decay=0.3),
    dict(lr=0.05, eps=0.0, weight_decay=0.2),
])
def test_adagrad_matches_torch(side_by_side, kw):
    side_by_side(lambda ps: Adagrad(ps, **kw), lambda ps: torch.optim.Adagrad(ps, **kw))


def _upstream_adagrad(lr, lr_decay, eps, weight_decay):
    """Upstream's Adagrad in float64: eps goes inside the square root."""
    sums = {}

    def update(values, grads, t):
        for i, (v, g) in enumerate(zip(values, grads)):
            g = g.astype(np.float64) + weight_decay * v
            sums[i] = sums.get(i, 0.0) + g * g
            v -= lr / (1 + (t - 1) * lr_decay) * g / np.sqrt(sums[i] + eps)

    return update


def test_adagrad_puts_eps_inside_the_square_root(side_by_side):
    kw = dict(lr=0.1, lr_decay=0.1, eps=0.5, weight_decay=0.05)
    side_by_side(lambda ps: Adagrad(ps, **kw), None, reference=_upstream_adagrad(**kw))


def test_adagrad_eps_placement_differs_from_torch():
    # guards the test above: with a large eps the two formulas give different results
    p = mge.Parameter([1.0])
    tp = torch.nn.Parameter(torch.tensor([1.0]))
    opt, topt = Adagrad([p], lr=0.1, eps=0.5), torch.optim.Adagrad([tp], lr=0.1, eps=0.5)
    p.grad, tp.grad = mge.Tensor([0.3]), torch.tensor([0.3])
    opt.step()
    topt.step()
    assert abs(p.item() - tp.item()) > 1e-3


def test_adagrad_defaults_and_checks():
    opt = Adagrad([mge.Parameter([1.0])])
    group = opt.param_groups[0]
    assert (group["lr"], group["lr_decay"], group["eps"], group["weight_decay"]) == (
        0.01, 0.0, 1e-10, 0.0)
    with pytest.raises(ValueError, match="lr_decay"):
        Adagrad([mge.Parameter([1.0])], lr_decay=-0.1)
