"""Device names, the default device, and the array module (numpy / CuPy) behind each device."""
import functools
import os
import re

import numpy as np

__all__ = [
    "get_default_device",
    "set_default_device",
    "is_cuda_available",
    "get_device_count",
    "get_array_module",
    "canonical_device",
]

_DEVICE_RE = re.compile(r"^(cpu|gpu|xpu)(\d+|x)(?::(\d+))?$")
_default_device = os.environ.get("MGE_DEFAULT_DEVICE", "xpux")


@functools.lru_cache(maxsize=None)
def _cupy():
    # Looked up once: a failed import is slow, and every default-device tensor asks.
    try:
        import cupy  # optional extra: only present on CUDA machines
    except Exception:  # ImportError, or a CuPy that finds no driver
        return None
    return cupy


@functools.lru_cache(maxsize=None)
def is_cuda_available() -> bool:
    """True when a CUDA device can serve arrays (CuPy installed and a GPU visible)."""
    cp = _cupy()
    if cp is None:
        return False
    try:
        return cp.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def get_device_count(device_type: str = "gpu") -> int:
    """Number of devices of ``device_type`` ("gpu" or "cpu")."""
    if device_type in ("cpu", "cpux"):
        return os.cpu_count() or 1
    if device_type in ("gpu", "cuda"):
        return _cupy().cuda.runtime.getDeviceCount() if is_cuda_available() else 0
    raise ValueError(f"get_device_count: unknown device type {device_type!r}; use 'gpu' or 'cpu'")


def canonical_device(device=None) -> str:
    """Validate a device name and return the device it means: "cpu0" or "gpu<N>".

    "xpux"/"xpuN" mean "the best device there is": a GPU when CUDA is available, else the CPU.
    Every CPU name ("cpu0", "cpu1", "cpux") is the one host memory, so all map to "cpu0".
    """
    if device is None:
        device = _default_device
    name = str(getattr(device, "logical_name", device))
    m = _DEVICE_RE.match(name)
    if m is None:
        raise ValueError(
            f"unknown device {name!r}: expected a name like 'cpu0', 'cpux', 'gpu0' or 'xpux'"
        )
    kind, index = m.group(1), m.group(2)
    if kind == "xpu":
        kind = "gpu" if is_cuda_available() else "cpu"
    if kind == "cpu":
        return "cpu0"
    if not is_cuda_available():
        raise RuntimeError(
            f"device {name!r} needs CUDA, but no CUDA device is usable here: install CuPy "
            "(pip install cupy-cuda12x) on a machine with an NVIDIA GPU, or use 'cpu0'/'xpux'"
        )
    if index != "x" and int(index) >= get_device_count("gpu"):
        raise ValueError(f"device {name!r}: only {get_device_count('gpu')} GPU(s) are visible")
    return "gpu" + ("0" if index == "x" else index)


def get_default_device() -> str:
    """The device new tensors go to (upstream's default is "xpux")."""
    return _default_device


def set_default_device(device: str = "xpux"):
    """Set the device new tensors go to; the name is checked now, not at first use."""
    global _default_device
    canonical_device(device)
    _default_device = str(device)


def get_array_module(device: str):
    """The array module that serves ``device`` (a canonical name): numpy for CPUs, CuPy for GPUs."""
    if device.startswith("gpu"):
        return _cupy()
    return np
