"""megengine: MegEngine's 1.x Python API on a numpy engine, with PyTorch modules embeddable inside."""
from .core.tensor import Parameter, Tensor, tensor
from .device import (get_default_device, get_device_count, is_cuda_available,
                     set_default_device)

__version__ = "1.13.0.dev0+fork"

__all__ = [
    "Tensor", "Parameter", "tensor", "get_default_device", "set_default_device",
    "is_cuda_available", "get_device_count", "save", "load", "__version__",
]


_SUBMODULES = {"autodiff", "core", "data", "functional", "jit", "module", "optimizer", "random",
               "serialization", "device"}


def __getattr__(name):
    # Submodules and mge.save/mge.load load on first use, which keeps `import megengine` fast.
    import importlib

    if name in ("save", "load"):
        return getattr(importlib.import_module(".serialization", __name__), name)
    if name in _SUBMODULES:
        return importlib.import_module("." + name, __name__)
    raise AttributeError(f"module 'megengine' has no attribute {name!r}")
