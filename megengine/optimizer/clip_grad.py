"""Gradient clipping: `clip_grad_norm` (scale by the total norm) and `clip_grad_value`."""
from ..core.tensor import Tensor
from ..device import get_array_module
from .optimizer import _trace_event

__all__ = ["clip_grad_norm", "clip_grad_value"]


def _with_grads(tensors, what):
    if isinstance(tensors, Tensor):
        tensors = [tensors]
    tensors = list(tensors)
    for t in tensors:
        if not isinstance(t, Tensor):
            raise TypeError(f"{what}: expected Tensors, got {type(t).__name__}")
    return [t for t in tensors if t.grad is not None]


def _set_grad(t, value):
    """Write ``value`` into ``t.grad``, in its storage when possible (clipping is in place)."""
    t.grad._reset(Tensor._wrap(value.astype(t.grad.dtype, copy=False), t.grad._device))


@_trace_event  # a traced training step replays the clipping itself, not its first result
def clip_grad_norm(tensors, max_norm: float, ord: float = 2.0):  # noqa: A002 (upstream's name)
    """Scale the gradients so that their total ``ord``-norm is at most ``max_norm``.

    The total norm is taken over all gradients as if concatenated into one vector (``ord``
    may be ``float("inf")`` or ``"inf"``). Each gradient is multiplied by
    ``min(1, max_norm / (total + 1e-6))`` in place. Returns the total norm (before clipping)
    as a scalar Tensor.
    """
    if ord == "inf":
        ord = float("inf")
    if not isinstance(ord, (int, float)):
        raise TypeError(f"clip_grad_norm: ord must be a number or 'inf', got {ord!r}")
    if not isinstance(max_norm, (int, float)) or max_norm < 0:
        raise ValueError(f"clip_grad_norm: max_norm must be a number >= 0, got {max_norm!r}")
    tensors = _with_grads(tensors, "clip_grad_norm")
    if not tensors:
        return Tensor(0.0)
    xp = get_array_module(tensors[0].grad._device)
    norms = xp.stack([xp.linalg.norm(t.grad._data.ravel(), ord) for t in tensors])
    total = xp.linalg.norm(norms, ord)
    scale = min(1.0, float(max_norm / (total + 1e-6)))
    if scale < 1.0:
        for t in tensors:
            _set_grad(t, t.grad._data * scale)
    return Tensor._wrap(xp.asarray(total, dtype=norms.dtype), tensors[0].grad._device)


@_trace_event
def clip_grad_value(tensors, lower: float, upper: float):
    """Clip every gradient element to ``[lower, upper]``, in place."""
    if lower > upper:
        raise ValueError(f"clip_grad_value: lower ({lower}) must not exceed upper ({upper})")
    for t in _with_grads(tensors, "clip_grad_value"):
        xp = get_array_module(t.grad._device)
        _set_grad(t, xp.clip(t.grad._data, lower, upper))
