"""The engine's CUDA-only paths, run on a simulated GPU in every test run: the tests of the files below again, in a process with ``MGE_SIM_CUDA=1`` (tests/simcuda: CuPy's rules, ATen's kernels on the CPU, the fused kernels' CUDA bodies compiled as C++).

A machine without a GPU otherwise checks these paths only through ``make sim-gpu-check``:
SGD's, Adam's and AdamW's multi-tensor steps with their kept torch views, LAMB's kernels and
its one read of the trust ratios, clip_grad_norm's,
clip_grad_value's and GradScaler.unscale's multi-tensor paths, the one-kernel max-pooling backward of windows that tile the input, the
linear layer's addmm, gelu's one-kernel limits, batch norm's statistics in their own storage,
the Python-number operands made once, the losses on ATen's fused kernels, the unary
functions' one-kernel gradients, the resize matrices copied once, the index range checks'
one host read and var's and std's ATen var_mean with one gradient kernel.
The files' own tests run on the default device, which the simulation makes ``gpu0``.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import megengine as mge

REPO = Path(__file__).resolve().parents[1]
FILES = ["tests/amp/test_grad_scaler.py", "tests/core/test_operators.py",
         "tests/optimizer/test_multi_tensor.py",
         "tests/optimizer/test_sgd.py", "tests/optimizer/test_adam.py",
         "tests/optimizer/test_adamw.py", "tests/optimizer/test_lamb.py",
         "tests/optimizer/test_clip_grad.py",
         "tests/functional/test_pooling.py",
         "tests/functional/test_activation.py", "tests/functional/test_normalization.py",
         "tests/functional/test_nn.py", "tests/functional/test_loss.py",
         "tests/functional/test_elemwise.py", "tests/functional/test_vision.py",
         "tests/functional/test_indexing.py", "tests/functional/test_math.py"]


def test_the_cuda_paths_pass_on_a_simulated_gpu():
    if mge.is_cuda_available():
        pytest.skip("a GPU is here: these files ran on it")
    env = dict(os.environ, MGE_SIM_CUDA="1", PYTHONPATH=os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "-W", "ignore", *FILES], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout, run.stdout[-2000:]
