"""The default of ``trace(symbolic_shape=...)`` (upstream's ``set_symbolic_shape`` switch)."""
import os

# off unless MEGENGINE_USE_SYMBOLIC_SHAPE is set, as upstream: programs (and upstream's tests)
# check use_symbolic_shape() to decide whether shapes are tuples they can compare
_use_symbolic_shape = bool(os.environ.get("MEGENGINE_USE_SYMBOLIC_SHAPE"))


def use_symbolic_shape() -> bool:
    return _use_symbolic_shape


def set_symbolic_shape(option: bool) -> bool:
    """Set the default of ``trace(symbolic_shape=...)`` and return the previous one.

    Upstream uses it to make ``x.shape`` a tensor while tracing; shapes are concrete tuples in
    this engine (a new shape is a new traced signature), so the flag is kept for compatibility.
    """
    global _use_symbolic_shape
    old, _use_symbolic_shape = _use_symbolic_shape, bool(option)
    return old


# upstream 1.0-1.1 names of the same switch (programs of that time import them)
use_tensor_shape = use_symbolic_shape
set_tensor_shape = set_symbolic_shape
