"""Upstream's ``megengine.traced_module.module_tracer`` names that tools import:
``BUILTIN_ARRAY_METHOD``, the tensor operators and methods a trace records as one
``CallMethod`` (converters dispatch on ``expr.method in BUILTIN_ARRAY_METHOD``). The tracer
itself is `megengine.traced_module.tracer`."""
from .tracer import TENSOR_METHODS

__all__ = ["BUILTIN_ARRAY_METHOD"]

BUILTIN_ARRAY_METHOD = list(TENSOR_METHODS)
