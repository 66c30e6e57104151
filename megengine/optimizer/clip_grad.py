"""Gradient clipping: `clip_grad_norm` (scale by the total norm) and `clip_grad_value`."""
import numpy as np

from ..core import dispatch
from ..core.dispatch import xp_of
from ..core.tensor import Tensor, _note_write, check_grad_is_tensor
from .optimizer import _trace_event

__all__ = ["clip_grad_norm", "clip_grad_value"]


def _with_grads(tensors, what):
    if isinstance(tensors, Tensor):
        tensors = [tensors]
    tensors = list(tensors)
    for t in tensors:
        if not isinstance(t, Tensor):
            raise TypeError(f"{what}: expected Tensors, got {type(t).__name__}")
        # checked before any gradient is clipped, so a bad one leaves the others as they were
        check_grad_is_tensor(t, what, "nothing was clipped")
    return [t for t in tensors if t.grad is not None]


def _set_grad(t, value):
    """Write ``value`` into ``t.grad``, in its storage when possible (clipping is in place)."""
    t.grad._reset(Tensor._wrap(value.astype(t.grad.dtype, copy=False), t.grad._device))


def _by_device(tensors):
    """``{device: [tensors whose gradient is there]}``, the first gradient's device first."""
    groups = {}
    for t in tensors:
        groups.setdefault(t.grad._device, []).append(t)
    return groups


def _clip_norm_recorded(tensors, max_norm, ord):
    """`clip_grad_norm` through recorded ops, for gradients an outer GradManager records (a
    penalty on clipped gradients): as upstream's, the result is differentiated through the
    scale and the total norm. As unrecorded, each device reduces its own gradients and the
    per-device norms meet on the first gradient's device (an op refuses two devices)."""
    from .. import functional as F

    groups = _by_device(tensors)
    first = tensors[0].grad._device
    partial = [F.norm(F.stack([F.norm(t.grad.flatten(), ord) for t in group]), ord)._to(first)
               for group in groups.values()]
    total = partial[0] if len(partial) == 1 else F.norm(F.stack(partial), ord)
    coef = max_norm / (total + 1e-6)
    if coef.item() < 1.0:
        for device, group in groups.items():
            device_coef = coef._to(device)
            for t in group:
                t.grad._reset(t.grad * device_coef)
    return total


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
    if any(t.grad._tracked for t in tensors):
        return _clip_norm_recorded(tensors, max_norm, ord)
    on_aten = _clip_norm_on_aten(tensors, max_norm, ord)
    if on_aten is not None:
        return on_aten
    # The total norm is the norm of the per-device norms (as of the per-tensor ones), so each
    # device reduces its own gradients with its GPU current and only one number per device
    # crosses over (CuPy cannot stack arrays that live on different GPUs).
    groups = _by_device(tensors)
    scope = dispatch.device_scope()  # None unless there are several GPUs
    try:
        partial = []
        for device, group in groups.items():
            if scope is not None:
                scope.enter(device)
            xp = xp_of(group[0].grad._data)
            norms = xp.stack([xp.linalg.norm(t.grad._data.ravel(), ord) for t in group])
            partial.append(xp.linalg.norm(norms, ord))
        first = tensors[0].grad  # its device's group came first: partial[0] lives there
        if len(partial) == 1:
            total = partial[0]
        else:
            total = np.linalg.norm(np.array([float(n) for n in partial]), ord)
            if scope is not None:
                scope.enter(first._device)
            total = xp_of(first._data).asarray(total, dtype=partial[0].dtype)
        scale = min(1.0, float(max_norm / (total + 1e-6)))
        if scale < 1.0:
            for device, group in groups.items():
                if scope is not None:
                    scope.enter(device)
                for t in group:
                    _set_grad(t, t.grad._data * scale)
    finally:
        if scope is not None:
            scope.close()
    return Tensor._wrap(total, first._device)


def _clip_norm_on_aten(tensors, max_norm, ord):
    """`clip_grad_norm` of CUDA gradients of one device and one float32/float64 dtype, none of
    them seen by another tensor (`Tensor._aliased`), ``ord`` 1, 2 or inf: torch's multi-tensor
    path (``clip_grad_norm_(foreach=True)``): the per-gradient norms in one kernel, their norm,
    ``min(1, max_norm / (total + 1e-6))`` and the scaling of every gradient in place, all on the
    device: about eight kernels and no host sync, where the array code launches a few kernels
    per gradient and reads the scale back. The scale is computed in the gradients' dtype (the
    array code: in double, then rounded), so the results may differ in the last bit; a scale
    of 1 leaves the values as they were. None where this does not apply."""
    from ..functional import _aten

    if ord not in (1, 2, float("inf")):
        return None
    grads = [t.grad for t in tensors]
    views = _aten.exclusive_views(grads, dispatch.KERNEL_FLOATS)
    if views is None:
        return None
    torch = _aten.torch_module()
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(views, ord)), ord)
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    torch._foreach_mul_(views, coef)
    _aten.written(grads[0]._data)
    _note_write()  # (the gradients were written in place)
    return Tensor._wrap(_aten.array(total), grads[0]._device)


@_trace_event
def clip_grad_value(tensors, lower: float, upper: float):
    """Clip every gradient element to ``[lower, upper]``, in place."""
    if lower > upper:
        raise ValueError(f"clip_grad_value: lower ({lower}) must not exceed upper ({upper})")
    tensors = _with_grads(tensors, "clip_grad_value")
    if tensors and not any(t.grad._tracked for t in tensors):
        from ..functional import _aten

        # CUDA gradients of one device and dtype that nothing else holds: clamped in place in
        # two multi-tensor kernels (the array code: a clip and a write per gradient); the same
        # values, a clamp computes nothing
        views = _aten.exclusive_views([t.grad for t in tensors], dispatch.KERNEL_FLOATS)
        if views is not None:
            torch = _aten.torch_module()
            torch._foreach_clamp_min_(views, lower)
            torch._foreach_clamp_max_(views, upper)
            _aten.written(tensors[0].grad._data)
            _note_write()  # (the gradients were written in place)
            return
    scope = dispatch.device_scope()  # None unless there are several GPUs
    try:
        for t in tensors:
            if scope is not None:
                scope.enter(t.grad._device)
            if t.grad._tracked:  # an outer GradManager records it: clip by a recorded op
                from ..functional import clip

                t.grad._reset(clip(t.grad, lower, upper))
            else:
                _set_grad(t, xp_of(t.grad._data).clip(t.grad._data, lower, upper))
    finally:
        if scope is not None:
            scope.close()
