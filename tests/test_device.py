"""Device names, the default device and the 0.x `megengine.core` names (megengine/device.py)."""
import subprocess
import sys

import numpy as np
import pytest

import megengine as mge
from megengine import device as dev


@pytest.fixture(autouse=True)
def _restore_default():
    before = mge.get_default_device()
    yield
    mge.set_default_device(before)


def test_names_map_to_devices():
    assert dev.canonical_device("cpu0") == "cpu0"
    assert dev.canonical_device("cpux") == "cpu0"
    assert dev.canonical_device("cpu1:0") == "cpu0"
    # without CUDA, "xpux" (upstream's default, "the best there is") is the CPU
    assert dev.canonical_device("xpux") == ("gpu0" if mge.is_cuda_available() else "cpu0")
    assert mge.get_default_device() == "xpux"


@pytest.mark.parametrize("bad", ["tpu0", "cpu", "gpu-1", "", "cuda:0"])
def test_unknown_device_names_are_rejected_with_the_expected_form(bad):
    with pytest.raises(ValueError, match="unknown device.*'cpu0'"):
        dev.canonical_device(bad)
    with pytest.raises(ValueError, match="unknown device"):
        mge.tensor([1.0], device=bad)


@pytest.mark.skipif(mge.is_cuda_available(), reason="checks the message on machines without CUDA")
def test_gpu_without_cuda_says_what_to_install():
    with pytest.raises(RuntimeError, match="needs CUDA.*cupy"):
        mge.tensor([1.0], device="gpu0")
    with pytest.raises(RuntimeError, match="needs CUDA"):
        mge.set_default_device("gpu0")
    assert mge.get_device_count("gpu") == 0


def test_set_default_device_applies_to_new_tensors_and_is_checked_first():
    mge.set_default_device("cpu0")
    assert mge.get_default_device() == "cpu0"
    assert mge.tensor([1.0]).device == "cpu0"
    with pytest.raises(ValueError):
        mge.set_default_device("nope")
    assert mge.get_default_device() == "cpu0"  # a bad name changes nothing


def test_device_count_and_array_module():
    assert mge.get_device_count("cpu") >= 1
    with pytest.raises(ValueError, match="device type"):
        mge.get_device_count("tpu")
    assert dev.get_array_module("cpu0") is np


def test_zero_x_names_used_by_the_guide():
    from megengine.core import Parameter, Tensor, tensor
    from megengine.core.graph import get_default_device

    assert get_default_device() == mge.get_default_device()
    assert Tensor is mge.Tensor and Parameter is mge.Parameter and tensor is mge.tensor


def test_import_megengine_does_not_import_torch():
    code = ("import sys, megengine, megengine.functional, megengine.module, megengine.optimizer, "
            "megengine.autodiff, megengine.jit, megengine.data, megengine.random; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
