"""Shared check for the optimizer tests: run a megengine and a torch optimizer side by side."""
import numpy as np
import pytest
import torch

import megengine as mge
from devices import address

SHAPES = [(3, 4), (5,), ()]


def run_side_by_side(make_mge, make_torch, steps=5, reference=None, rtol=1e-5, atol=1e-6):
    """Feed both optimizers the same random gradients for ``steps`` steps; compare every step.

    ``make_mge(params)`` / ``make_torch(params)`` build the optimizers. ``reference``, if
    given, replaces torch: ``reference(values, grads, t)`` updates a list of float64 arrays.
    Also checks that each parameter keeps its storage across steps.
    """
    rng = np.random.RandomState(1)
    init = [np.asarray(rng.randn(*s), dtype=np.float32) for s in SHAPES]
    params = [mge.Parameter(v) for v in init]
    addresses = [address(p) for p in params]
    opt = make_mge(params)
    if reference is None:
        tparams = [torch.nn.Parameter(torch.tensor(v)) for v in init]
        topt = make_torch(tparams)
    else:
        values = [v.astype(np.float64) for v in init]
    for t in range(1, steps + 1):
        grads = [np.asarray(rng.randn(*s), dtype=np.float32) for s in SHAPES]
        for p, g in zip(params, grads):
            p.grad = mge.Tensor(g)
        assert opt.step() is opt
        if reference is None:
            for tp, g in zip(tparams, grads):
                tp.grad = torch.tensor(g)
            topt.step()
            expected = [tp.detach().numpy() for tp in tparams]
        else:
            reference(values, grads, t)
            expected = values
        for p, e in zip(params, expected):
            np.testing.assert_allclose(p.numpy(), e, rtol=rtol, atol=atol, err_msg=f"step {t}")
    assert [address(p) for p in params] == addresses, "a parameter lost its storage"
    for p in params:
        assert p.dtype == np.float32 and isinstance(p, mge.Parameter)
    return params


@pytest.fixture
def side_by_side():
    return run_side_by_side
