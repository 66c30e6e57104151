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

import megengine as mge
from megengine.optimizer import LAMB, SGD, Adadelta, Adagrad, Adam, AdamW, LAMBFp16
from megengine.optimizer import adadelta, adagrad, adam, lamb, sgd
from megengine.optimizer import optimizer as optimizer_module

from cuda_kernels import emulate

KERNELS = {"sgd": (sgd, "_sgd_kernel"), "sgd_momentum": (sgd, "_sgd_momentum_kernel"),
           "adam": (adam, "_adam_kernel"), "adagrad": (adagrad, "_adagrad_kernel"),
           "adadelta": (adadelta, "_adadelta_kernel"),
           "lamb_direction": (lamb, "_lamb_direction_kernel"),
           "lamb_step": (lamb, "_lamb_step_kernel")}


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
    monkeypatch.setattr(lamb, "_adam_kernel", adam._adam_kernel)  # (LAMB's without a ratio)
    for module in (sgd, adam, adagrad, adadelta, lamb):  # (adam: also AdamW's update)
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


LAMB_CASES = [dict(lr=0.01, weight_decay=0.1), dict(lr=0.02, always_adapt=True),
              dict(lr=0.01, weight_decay=0.05, bias_correction=False, betas=(0.85, 0.95), eps=1e-6),
              dict(lr=0.01, betas=(0.8, 0.99)), dict(lr=0.01, bias_correction=False)]


def _lamb_run(make, dtype, steps=6):
    """Parameters (one of them zero: trust ratio 1), moments and step counts after ``steps``
    steps of ``make(params)`` on fixed gradients."""
    rng = np.random.RandomState(0)
    init = [rng.randn(4, 5), rng.randn(6), np.zeros(()), rng.randn(3, 1, 2), rng.randn(64)]
    params = [mge.Parameter(v, dtype=dtype, device="cpu0") for v in init]  # (numpy arrays)
    opt = make(params)
    for _ in range(steps):
        for p in params:
            p.grad = mge.Tensor(rng.randn(*p.shape), dtype=dtype, device="cpu0")
        opt.step()
    return ([p.numpy() for p in params]
            + [opt._state[p][k].numpy() for p in params for k in ("exp_avg", "exp_avg_sq")])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kw", LAMB_CASES)
@pytest.mark.parametrize("batched", [False, True])
def test_fused_lamb_bodies_give_the_array_codes_values_bit_for_bit(emulated, monkeypatch, kw,
                                                                    dtype, batched):
    """LAMB's CUDA kernels (the moments, the direction and the float64 squares of the weight
    and the direction in one kernel; the step in another; Adam's kernel where no trust ratio
    applies) against the array code, per parameter and in the batch that reads all the trust
    ratios at once: the same values to the last bit, the moments too."""
    expected = _lamb_run(lambda ps: LAMB(ps, **kw), dtype)
    used = []
    for key, module, name in (("lamb_direction", lamb, "_lamb_direction_kernel"),
                              ("lamb_step", lamb, "_lamb_step_kernel"),
                              ("adam", lamb, "_adam_kernel")):
        monkeypatch.setattr(module, name, lambda kernel=emulated[key], key=key: (
            used.append(key), kernel)[1])
    monkeypatch.setattr(lamb, "use_fused", lambda data, grad: True)
    monkeypatch.setattr(lamb, "passes_on_aten", lambda *args: False)
    if batched:
        monkeypatch.setattr(optimizer_module, "_batchable", lambda data, grad: True)
    got = _lamb_run(lambda ps: LAMB(ps, **kw), dtype)
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)
    adapts = kw.get("weight_decay", 0) > 0 or kw.get("always_adapt", False)
    assert set(used) == ({"lamb_direction", "lamb_step"} if adapts else {"adam"})


def test_fused_lamb_fp16_master_copy_matches_the_array_code(emulated, monkeypatch):
    def run():
        p = mge.Parameter(np.array([1.0, -0.5, 2.0, 1e-3], np.float16), device="cpu0")
        opt = LAMBFp16([p], lr=1e-3, weight_decay=0.01)
        rng = np.random.RandomState(0)
        for _ in range(5):
            p.grad = mge.Tensor(rng.randn(4).astype(np.float16), device="cpu0")
            opt.step()
        return p.numpy(), opt._state[p]["param_fp32"].numpy()

    expected = run()
    monkeypatch.setattr(lamb, "_lamb_direction_kernel", lambda: emulated["lamb_direction"])
    monkeypatch.setattr(lamb, "_lamb_step_kernel", lambda: emulated["lamb_step"])
    monkeypatch.setattr(lamb, "use_fused", lambda data, grad: data.dtype != np.float16)
    got = run()
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)
