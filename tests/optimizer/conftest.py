"""Shared check for the optimizer tests: a megengine and a torch optimizer side by side, on each device."""
import functools

import numpy as np
import pytest

import megengine as mge
from devices import address, requires_cuda
from megengine.core.fused import use_fused

SHAPES = [(3, 4), (5,), ()]


def run_side_by_side(make_mge, make_torch, steps=5, reference=None, rtol=1e-5, atol=1e-6,
                     device="cpu0", shapes=SHAPES):
    """Feed both optimizers the same random gradients for ``steps`` steps; compare every step.

    ``make_mge(params)`` / ``make_torch(params)`` build the optimizers. ``reference``, if
    given, replaces torch: ``reference(values, grads, t)`` updates a list of float64 arrays.
    The megengine parameters live on ``device``: on "cpu0" the numpy update runs, on "gpu0"
    the fused CUDA kernel (checked). ``shapes``: the parameters' shapes. Also checks that each
    parameter keeps its storage.
    """
    rng = np.random.RandomState(1)
    init = [np.asarray(rng.randn(*s), dtype=np.float32) for s in shapes]
    params = [mge.Parameter(v, device=device) for v in init]
    addresses = [address(p) for p in params]
    opt = make_mge(params)
    if reference is None:
        import torch  # here, not at the top: the tests with a numpy reference run without torch

        tparams = [torch.nn.Parameter(torch.tensor(v)) for v in init]
        topt = make_torch(tparams)
    else:
        values = [v.astype(np.float64) for v in init]
    for t in range(1, steps + 1):
        grads = [np.asarray(rng.randn(*s), dtype=np.float32) for s in shapes]
        for p, g in zip(params, grads):
            p.grad = mge.Tensor(g, device=device)
            assert use_fused(p._data, p.grad._data) == device.startswith("gpu")
        assert opt.step() is opt
        if reference is None:
            for tp, g in zip(tparams, grads):
                tp.grad = torch.tensor(g)
            topt.step()
            expected = [tp.detach().numpy() for tp in tparams]  # the oracle runs on the CPU
        else:
            reference(values, grads, t)
            expected = values
        for p, e in zip(params, expected):
            np.testing.assert_allclose(p.numpy(), e, rtol=rtol, atol=atol, err_msg=f"step {t}")
    assert [address(p) for p in params] == addresses, "a parameter lost its storage"
    for p in params:
        assert p.dtype == np.float32 and isinstance(p, mge.Parameter) and p.device == device
    return params


@pytest.fixture(params=["cpu0", pytest.param("gpu0", marks=requires_cuda)])
def side_by_side(request):
    """`run_side_by_side` on the CPU (numpy updates) and on a GPU (fused CuPy kernels)."""
    return functools.partial(run_side_by_side, device=request.param)


@pytest.fixture
def side_by_side_on_cpu():
    """`run_side_by_side` on the CPU only."""
    return run_side_by_side
