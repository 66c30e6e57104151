"""The engine's core: Tensor, Parameter and the one op dispatcher (also the 0.x `megengine.core` names)."""
from . import _config, graph
from ._config import get_option, option, set_option
from .dispatch import Op, apply, is_recording
from .tensor import Parameter, Tensor, tensor
from ..device import get_default_device, get_device_count, is_cuda_available, set_default_device
from . import legacy as _legacy
from .legacy import Buffer  # 0.x

__all__ = ["Tensor", "Parameter", "tensor", "Op", "apply", "is_recording", "graph",
           "get_option", "set_option", "option"]


def __getattr__(name):
    # 0.x names from layers above the core (megengine.core.load, .ones, .Function, ...)
    if name in _legacy.LAZY:
        return _legacy.lazy(name)
    raise AttributeError(f"module 'megengine.core' has no attribute {name!r}")
