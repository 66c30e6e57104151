"""The optimizers' fused CUDA kernels, checked without a GPU: their bodies compiled as C++ on the CPU, run against torch.

CuPy's ElementwiseKernel runs its body once per element with the parameters as local variables
(outputs by reference). This test compiles each body the same way with the host's C++ compiler,
puts the result in place of the kernel, and runs the usual side-by-side check against torch:
the kernel source the GPU will compile is what is checked (on a GPU, tests/optimizer/conftest.py
runs the real kernels too).
"""
import ctypes
import shutil
import subprocess

import numpy as np
import pytest
import torch

from megengine.optimizer import SGD, Adadelta, Adagrad, Adam, AdamW
from megengine.optimizer import adadelta, adagrad, adam, adamw, sgd

KERNELS = {"sgd": (sgd, "_sgd_kernel"), "sgd_momentum": (sgd, "_sgd_momentum_kernel"),
           "adam": (adam, "_adam_kernel"), "adagrad": (adagrad, "_adagrad_kernel"),
           "adadelta": (adadelta, "_adadelta_kernel")}
_CXX = shutil.which("c++") or shutil.which("g++")


def _params(spec):
    return [tuple(p.split()) for p in spec.split(",")]


def _cxx_source(key, kernel):
    ins, outs = _params(kernel.in_params), _params(kernel.out_params)
    # by CuPy's convention here: the first input (the gradient) is an array, the rest scalars
    formal = [f"{t} {n}" for t, n in ins] + [f"{t}& {n}" for t, n in outs]
    c_args = [f"const float* {ins[0][1]}"] + [
        f"{'int' if t == 'bool' else 'double'} {n}" for t, n in ins[1:]] + [f"float* {n}" for _, n in outs]
    actual = [f"{ins[0][1]}[k_]"] + [f"{n} != 0" if t == "bool" else f"(float){n}"
                                      for t, n in ins[1:]] + [f"{n}[k_]" for _, n in outs]
    return (f"template <typename T> static void {key}_body({', '.join(formal)}) {{\n{kernel.body}\n}}\n"
            f'extern "C" void {key}(long n_, {", ".join(c_args)}) {{\n'
            f"  for (long k_ = 0; k_ < n_; ++k_) {key}_body<float>({', '.join(actual)});\n}}\n")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    if _CXX is None:
        pytest.skip("no C++ compiler on this machine")
    src = "#include <cmath>\nusing std::sqrt;\n" + "".join(
        _cxx_source(key, getattr(module, name)) for key, (module, name) in KERNELS.items())
    d = tmp_path_factory.mktemp("fused")
    (d / "kernels.cpp").write_text(src)
    lib = d / "kernels.so"
    run = subprocess.run([_CXX, "-O1", "-shared", "-fPIC", "-Wall", "-Werror", "-o", str(lib),
                          str(d / "kernels.cpp")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr  # the kernel bodies are valid C++ for T = float
    return ctypes.CDLL(str(lib))


def _emulated(lib, key, kernel):
    """A stand-in for the CuPy kernel: same positional call, numpy float32 arrays."""
    ins, outs = _params(kernel.in_params), _params(kernel.out_params)
    fn = getattr(lib, key)
    ptr = ctypes.POINTER(ctypes.c_float)
    fn.argtypes = [ctypes.c_long, ptr] + [ctypes.c_int if t == "bool" else ctypes.c_double
                                          for t, _ in ins[1:]] + [ptr] * len(outs)

    def call(*args):
        assert len(args) == len(ins) + len(outs)
        arrays = [args[0]] + list(args[len(ins):])
        for a in arrays:
            assert a.dtype == np.float32 and a.flags.c_contiguous and a.shape == args[0].shape
        fn(args[0].size, *[a.ctypes.data_as(ptr) if i == 0 else a for i, a in enumerate(args[:len(ins)])],
           *[a.ctypes.data_as(ptr) for a in args[len(ins):]])

    return call


@pytest.fixture
def fused_on_cpu(compiled, monkeypatch):
    """Route every optimizer update through the C++-compiled kernel bodies."""
    used = []
    for key, (module, name) in KERNELS.items():
        emulated = _emulated(compiled, key, getattr(module, name))

        def getter(emulated=emulated, key=key):
            used.append(key)
            return emulated

        monkeypatch.setattr(module, name, getter)
    for module in (sgd, adam, adamw, adagrad, adadelta):
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
