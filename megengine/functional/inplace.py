"""Upstream's `megengine.functional.inplace`: ``_inplace_add_``, the in-place update that
optimizers written outside the engine (LARS, LAMB) and model EMAs (YOLOX's ``ModelEMA``) call."""
from ..core.tensor import Tensor

__all__ = ["_inplace_add_"]


def _inplace_add_(dest, delta, alpha, beta):
    """``dest = alpha * dest + beta * delta``, written into ``dest`` and returned, as upstream's
    (its ``InplaceAdd`` op): a Parameter keeps its storage (and whoever shares it: a torch
    module through the PyTorch bridge, an optimizer's reference); ``alpha`` and ``beta`` are
    scalars (numbers or one-element Tensors); the result keeps ``dest``'s dtype.
    """
    if not isinstance(dest, Tensor):
        raise TypeError(f"_inplace_add_: dest must be a Tensor, got {type(dest).__name__}")
    for name, v in (("alpha", alpha), ("beta", beta)):
        if isinstance(v, Tensor) and v.size != 1:
            raise ValueError(f"_inplace_add_: {name} must be a scalar, got a Tensor of shape "
                             f"{v.shape}")
    # tensor ops, so a trace records the update as it records `param -= lr * grad`
    result = dest * alpha + delta * beta
    if result.shape != dest.shape:
        raise ValueError(f"_inplace_add_: delta of shape {tuple(delta.shape)} does not fit dest "
                         f"of shape {dest.shape}")
    if result.dtype != dest.dtype:
        result = result.astype(dest.dtype)
    return dest._inplace(result)
