"""Upstream's module paths below `megengine.core.tensor`, which here is a module (the Tensor
class's file), not a package: ``.dtype``, ``.amp``, ``.utils``, ``.array_method``,
``.megbrain_graph``, and upstream 1.0-1.2's ``.tensor_wrapper``, ``.function``, ``.raw_tensor``,
``.core``, ``.tensor``, registered as aliases when `megengine.core.tensor` loads."""
import sys

from . import _imperative_rt
from . import amp
from . import dtype
from . import ops as _ops
from .tensor import Tensor

_HOME = "megengine.core.tensor"  # the module the paths hang below

# `import megengine.core.tensor.dtype` (upstream's path) finds the module although that file is
# a module, not a package (see also `megengine.core.tensor._TensorType`)
sys.modules.setdefault(_HOME + ".dtype", dtype)
sys.modules.setdefault(_HOME + ".amp", amp)  # upstream's autocast state, as `.dtype`

# upstream's internal layer that programs and upstream's tests import below the public API:
# `megengine.core._imperative_rt` (its `ops` module is also `megengine.core.ops.builtin`) and
# `megengine.core.tensor.utils` and `.array_method` (megengine.core.tensor is a module, so the
# paths are aliases, as `.dtype`)
utils = _imperative_rt.lazy_module(__package__ + ".tensor_utils", _HOME + ".utils")
array_method = _imperative_rt.lazy_module(__package__ + ".tensor_array_method",
                                          _HOME + ".array_method")
megbrain_graph = _imperative_rt.lazy_module(__package__ + ".tensor_megbrain_graph",
                                            _HOME + ".megbrain_graph")
_ops.builtin = _imperative_rt.lazy_module(_imperative_rt.__name__ + ".ops",
                                          _ops.__name__ + ".builtin")


def _upstream_path(name, doc, **names):
    """Register module ``megengine.core.tensor.<name>`` (an upstream path below the Tensor
    class's file, which is a module, not a package) holding ``names``; a name given as a function
    ``_Later(load)`` is resolved on first use (for classes of layers above core)."""
    import types

    module = types.ModuleType(f"{_HOME}.{name}", doc)
    later = {k: v.load for k, v in names.items() if isinstance(v, _Later)}
    module.__dict__.update({k: v for k, v in names.items() if k not in later})

    def resolve(attr):
        if attr in later:
            value = later[attr]()
            setattr(module, attr, value)
            return value
        raise AttributeError(f"module {module.__name__!r} has no attribute {attr!r}")

    module.__getattr__ = resolve
    module.__all__ = sorted(names)
    sys.modules.setdefault(module.__name__, module)
    return module


class _Later:
    """A name of `_upstream_path` whose value ``load()`` gives on first use."""

    def __init__(self, load):
        self.load = load


def _function_class():
    from ..autodiff.function import Function  # autodiff sits above core: loaded on first use

    return Function


# upstream 1.0-1.2 spellings of two public classes: `TensorWrapper` was the base class of
# `megengine.Tensor`, and user-defined ops (`megengine.autodiff.Function`) lived here
_upstream_path("tensor_wrapper", "Upstream 1.0-1.2's `TensorWrapper`: the Tensor class.",
               TensorWrapper=Tensor)
_upstream_path("function", "Upstream 1.0-1.2's path of `megengine.autodiff.Function`.",
               Function=_Later(_function_class))


def as_raw_tensor(obj, dtype=None, device=None):
    """Upstream 1.0's `megengine.core.tensor.raw_tensor.as_raw_tensor`: a Tensor of ``obj``."""
    return Tensor(obj, dtype=dtype, device=device)


# upstream 1.0-1.1's layer under Tensor (before core2): raw tensors and `apply` returning a
# tuple; here both are the Tensor class and core2's apply
_upstream_path("raw_tensor", "Upstream 1.0-1.1's raw tensors: the Tensor class.",
               RawTensor=Tensor, as_raw_tensor=as_raw_tensor)
_upstream_path("core", "Upstream 1.0-1.1's `apply` (core2's).", apply=_imperative_rt.core2.apply)
_upstream_path("tensor", "Upstream 1.0-1.1's Tensor and `apply`.", Tensor=Tensor,
               apply=_imperative_rt.core2.apply)
