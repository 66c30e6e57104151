"""`megengine.config`: the execution switches as module properties (they live in `core._config`)."""
import sys

from .core import _config
from .core._config import (_get_actual_op_param, _override,  # noqa: F401 (upstream's names)
                           _reset_execution_config)

__all__ = [
    "benchmark_kernel", "benchmark_with_subprocess", "deterministic_kernel", "async_level",
    "disable_memory_forwarding", "_compute_mode", "_conv_format", "_auto_format_convert",
    "_override",
]

# Same property class as `megengine.core._config`: reading or setting a switch here reads or
# sets the one state there (ops consult that module).
sys.modules[__name__].__class__ = _config.ConfigModule
__doc__ = __doc__ + "\n\n" + _config.__doc__.split("\n", 1)[1]
