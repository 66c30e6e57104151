"""The optimizers' fused CUDA kernels, checked without a GPU: their bodies compiled as C++ on the CPU, run against torch.

CuPy's ElementwiseKernel runs its body once per element with the parameters as local variables
(outputs by reference). `tests/cuda_kernels.py` compiles each body the same way with the host's
C++ compiler; this test puts the result in place of the kernel and runs the usual side-by-side
check against torch: the kernel source the GPU will compile is what is checked (on a GPU,
tests/optimizer/conftest.py runs the real kernels too).
"""
import numpy as np
import pytest
import torch

from megengine.optimizer import SGD, Adadelta, Adagrad, Adam, AdamW
from megengine.optimizer import adadelta, adagrad, adam, sgd

from cuda_kernels import emulate

KERNELS = {"sgd": (sgd, "_sgd_kernel"), "sgd_momentum": (sgd, "_sgd_momentum_kernel"),
           "adam": (adam, "_adam_kernel"), "adagrad": (adagrad, "_adagrad_kernel"),
           "adadelta": (adadelta, "_adadelta_kernel")}


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    """Each optimizer kernel as a numpy stand-in running its C++-compiled body."""
    return {key: emulate(getattr(module, name), tmp_path_factory.mktemp(key))
            for key, (module, name) in KERNELS.items()}


@pytest.fixture
def fused_on_cpu(emulated, monkeypatch):
    """Route every optimizer update through the C++-compiled kernel bodies."""
    used = []
    for key, (module, name) in KERNELS.items():
        def getter(kernel=emulated[key], key=key):
            used.append(key)
            return kernel

        monkeypatch.setattr(module, name, getter)
    for module in (sgd, adam, adagrad, adadelta):  # (adam: also AdamW's update)
        monkeypatch.setattr(module, "use_fused", lambda data, grad: True)
    return used


@pytest.mark.parametrize("make_mge, make_torch, kernel", [
    (lambda ps: SGD(ps, lr=0.1), lambda ps: torch.optim.SGD(ps, lr=0.1), "sgd"),
    (lambda ps: SGD(ps, lr=0.1, weight_decay=0.01), lambda ps: torch.optim.SGD(ps, lr=0.1, weight_decay=0.01), "sgd"),
    (lambda ps: SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01),
     lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01), "sgd_momentum"),
    (lambda ps: SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
     lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True), "sgd_momentum"),
    (lambda ps: Adam(ps, lr=0.01, weight_decay=0.1), lambda ps: torch.optim.Adam(ps, lr=0.01, weight_decay=0.1), "adam"),
    (lambda ps: AdamW(ps, lr=0.01, betas=(0.8, 0.99)),
     lambda ps: torch.optim.AdamW(ps, lr=0.01, betas=(0.8, 0.99)), "adam"),
    (lambda ps: Adadelta(ps, lr=0.5, rho=0.8, weight_decay=0.1),
     lambda ps: torch.optim.Adadelta(ps, lr=0.5, rho=0.8, weight_decay=0.1), "adadelta"),
])
def test_fused_kernel_bodies_match_torch(fused_on_cpu, side_by_side_on_cpu, make_mge, make_torch,
                                        kernel):
    side_by_side_on_cpu(make_mge, make_torch)
    assert set(fused_on_cpu) == {kernel}  # every step went through that kernel, no other


def test_fused_adagrad_body_matches_upstreams_formula(fused_on_cpu, side_by_side_on_cpu):
    lr, lr_decay, eps, wd = 0.1, 0.05, 1e-3, 0.1

    def reference(values, grads, t):  # upstream: eps inside the square root
        for i, g in enumerate(grads):
            g = g + wd * values[i]
            state = reference.sums.setdefault(i, np.zeros_like(values[i]))
            state += g * g
            values[i] -= lr / (1 + (t - 1) * lr_decay) * g / np.sqrt(state + eps)

    reference.sums = {}
    side_by_side_on_cpu(lambda ps: Adagrad(ps, lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=wd),
                     None, reference=reference)
    assert set(fused_on_cpu) == {"adagrad"}
