"""megengine: MegEngine's 1.x Python API on a numpy engine, with PyTorch modules embeddable inside."""
import warnings as _warnings

import numpy as _np

# The engine's dtypes follow numpy 2's promotion rules (NEP 50): under numpy 1.x a 0-d float16 or
# float32 array meeting a Python float becomes float64, so F.clip, F.sigmoid or F.logsumexp of a
# 0-d tensor would silently return float64. Refused here rather than computed wrongly.
if int(_np.__version__.split(".")[0]) < 2:
    raise ImportError(
        f"megengine needs numpy 2.0 or newer, found numpy {_np.__version__} "
        f"({_np.__file__}): numpy 1.x promotes 0-d float16/float32 values to float64. Upgrade with "
        f"pip install 'numpy>=2.0' (upstream MegEngine's wheels need numpy<2: keep them in another "
        f"environment).")

from .device import (_full_sync, _sync, get_default_device, get_device_count,
                     is_cuda_available, set_default_device)
from .logger import enable_debug_log, get_logger, set_log_file, set_log_level
# Importing the submodule `megengine.tensor` sets this package's `tensor` attribute to the
# module; importing its `tensor` name right after rebinds it to the class, as upstream does.
from .tensor import Parameter, Tensor, tensor

__version__ = "1.13.0.dev0+fork"

# The engine's numpy kernels give IEEE results for log(0), 0 / 0, sqrt(-1), overflow and the
# mean of nothing (inf, NaN) silently, as upstream's C++ kernels and torch's do: numpy's
# RuntimeWarnings for them are left out where megengine's own code computes. A program's own
# numpy code, and the RuntimeWarnings megengine issues itself, still warn.
_warnings.filterwarnings(
    "ignore", r"(divide by zero|invalid value|overflow|underflow) encountered"
    r"|Mean of empty slice|Degrees of freedom <= 0", RuntimeWarning, r"megengine(\.|$)")

__all__ = [
    "Tensor", "Parameter", "tensor", "get_default_device", "set_default_device",
    "is_cuda_available", "get_device_count", "save", "load", "__version__",
    "get_logger", "set_log_level", "set_log_file", "enable_debug_log",
]


_SUBMODULES = {"amp", "autodiff", "config", "core", "data", "distributed", "dtr", "experimental",
               "functional", "hub", "jit", "logger", "module", "optimizer", "quantization",
               "random", "serialization", "device", "traced_module", "utils", "version"}


def _exit(code):
    """End the process at once with exit status ``code`` once every device has finished its queued
    work (upstream's ``megengine._exit``: no atexit handlers, no interpreter shutdown)."""
    import os
    import sys

    _full_sync()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def __getattr__(name):
    # Submodules and mge.save/mge.load load on first use, which keeps `import megengine` fast.
    import importlib

    if name in ("save", "load"):
        return getattr(importlib.import_module(".serialization", __name__), name)
    if name in ("Buffer", "Graph"):  # 0.x's mge.Buffer and mge.Graph (docs/api/legacy.rst)
        return getattr(importlib.import_module(".core.legacy", __name__), name)
    if name == "cgtools":  # upstream's `from .utils import comp_graph_tools as cgtools`
        return importlib.import_module(".utils.comp_graph_tools", __name__)
    if name in _SUBMODULES:
        return importlib.import_module("." + name, __name__)
    from . import device  # upstream's `from .device import *`: mge.coalesce_free_memory() ...

    if name in device.__all__:
        return getattr(device, name)
    raise AttributeError(f"module 'megengine' has no attribute {name!r}")


def __dir__():
    # dir(megengine) and tab completion list what __getattr__ serves too, as upstream's eager
    # imports do
    from . import device

    return sorted(set(globals()) | _SUBMODULES | {"save", "load", "cgtools"} | set(device.__all__))
