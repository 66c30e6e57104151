"""Argument helpers shared by the F.nn op files: tensors, int pairs, float inputs, axes."""
import numpy as np

from ..core.tensor import Tensor


def _tensor(x):
    """``x`` as a Tensor: Tensors pass through, numbers, lists and arrays become one."""
    return x if isinstance(x, Tensor) else Tensor(x)


def _pair(value, name, what):
    """An int or a pair of ints as a (h, w) tuple of Python ints."""
    if isinstance(value, Tensor):
        value = value.numpy().tolist()
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    try:
        h, w = value
        return int(h), int(w)
    except (TypeError, ValueError):
        raise TypeError(f"{what}: {name} must be an int or a pair of ints, got {value!r}") from None


def _as_float(x):
    """Integer input of a float function is computed in float32, as upstream does."""
    return x if x.dtype.kind == "f" else x.astype(np.float32)


def _axes(axis, ndim, what):
    """``axis`` (an int or a sequence) as a sorted tuple of non-negative axes, checked."""
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    out = set()
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(f"{what}: axis {a} is out of range for a tensor with {ndim} dims")
        out.add(int(a) % ndim)
    return tuple(sorted(out))
