"""The engine's core: Tensor, Parameter and the one op dispatcher (also the 0.x `megengine.core` names)."""
from . import _config, graph
from ._config import get_option, option, set_option
from .dispatch import Op, apply, is_recording
from .tensor import Parameter, Tensor, tensor

__all__ = ["Tensor", "Parameter", "tensor", "Op", "apply", "is_recording", "graph",
           "get_option", "set_option", "option"]
