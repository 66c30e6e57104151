"""Modules against torch.nn: copy the parameters across by name, run both, compare outputs and
every gradient (shared by the tests under tests/module/); and the guide's hybrid LeNet, loaded
from the example that ships it."""
import importlib.util
from pathlib import Path

import numpy as np
import torch

import megengine as mge
from megengine.autodiff import GradManager


def run_both(mge_module, torch_module, x, dtype=np.float32, rtol=1e-5, atol=1e-5):
    """Copy mge_module's parameters into torch_module (same names; reshaped to torch's layout),
    run both on ``x`` with a random output gradient, and compare outputs and all gradients."""
    torch_params = dict(torch_module.named_parameters())
    mge_params = dict(mge_module.named_parameters())
    assert set(torch_params) == set(mge_params), (set(torch_params), set(mge_params))
    with torch.no_grad():
        for name, p in mge_params.items():
            torch_params[name].copy_(torch.from_numpy(p.numpy().reshape(torch_params[name].shape)))

    float_input = np.issubdtype(x.dtype, np.floating)
    xm = mge.tensor(x, dtype=x.dtype)
    gm = GradManager().attach(list(mge_params.values()) + ([xm] if float_input else []))
    with gm:
        ym = mge_module(xm)
        dy = np.random.randn(*ym.shape).astype(np.float32)
        gm.backward(ym, mge.tensor(dy))

    xt = torch.from_numpy(x.copy())
    if float_input:
        xt.requires_grad_(True)
    yt = torch_module(xt)
    yt.backward(torch.from_numpy(dy))

    np.testing.assert_allclose(ym.numpy(), yt.detach().numpy(), rtol=rtol, atol=atol)
    if float_input:
        np.testing.assert_allclose(xm.grad.numpy(), xt.grad.numpy(), rtol=rtol, atol=atol)
    for name, p in mge_params.items():
        tg = torch_params[name].grad.numpy()
        np.testing.assert_allclose(p.grad.numpy().reshape(tg.shape), tg, rtol=rtol, atol=atol,
                                   err_msg=name)
    return ym, yt


def randn(*shape):
    return np.random.randn(*shape).astype(np.float32)


GUIDE_EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "lenet_pytorch.py"


def load_guide_example():
    """examples/lenet_pytorch.py as a fresh module (the guide's LeNet_Extract, LeNet and training
    helpers: one copy in the repo, which the tests use as users get it)."""
    spec = importlib.util.spec_from_file_location("lenet_pytorch_example", GUIDE_EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
