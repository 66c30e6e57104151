"""megengine: MegEngine's 1.x Python API on a numpy engine, with PyTorch modules embeddable inside."""
from .core.tensor import Parameter, Tensor, tensor
from .device import (get_default_device, get_device_count, is_cuda_available,
                     set_default_device)

__version__ = "1.13.0.dev0+fork"

__all__ = [
    "Tensor", "Parameter", "tensor", "get_default_device", "set_default_device",
    "is_cuda_available", "get_device_count", "save", "load", "__version__",
]


def __getattr__(name):
    # Serialization imports pickle machinery; load it on first use to keep `import megengine` fast.
    if name in ("save", "load"):
        from . import serialization

        return getattr(serialization, name)
    raise AttributeError(f"module 'megengine' has no attribute {name!r}")
