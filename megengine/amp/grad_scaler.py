"""`GradScaler`: scale the loss's gradient up so float16 gradients do not underflow, unscale the
parameters' gradients, and adapt the scale: back off on inf/nan, grow after a run of good steps."""
from typing import Iterable

import numpy as np

from ..core import dispatch
from ..core.tensor import Tensor, check_grad_is_tensor
from ..core.dispatch import on_device, xp_of


def _check_non_finite(grads) -> bool:
    """True when any of ``grads`` (Tensors or None) holds an inf or a nan."""
    for g in grads:
        if g is None:
            continue
        with on_device(g._device):  # CuPy's kernels run on the current GPU
            if not bool(xp_of(g._data).isfinite(g._data).all()):
                return True
    return False


_FLOAT32 = (np.dtype(np.float32),)


def _unscale_on_aten(grads, inv, check):
    """CUDA float32 gradients of one device that nothing else holds
    (`Tensor._aliased`): all unscaled in place by ``inv`` and checked for inf/nan in one kernel
    (ATen's ``_amp_foreach_non_finite_check_and_unscale_``, torch's GradScaler's), with one host
    read of the verdict (``check``; none without), where the array code launches four kernels
    and reads back one verdict per gradient. The products are the array code's (each value
    times ``inv`` in the gradient's dtype); after an inf/nan the caller drops the gradients, so
    their unscaled values are never seen. Returns whether one was found (False when not
    ``check``), or None where this does not apply."""
    from ..functional import _aten

    # float32 (what AMP's master weights take): the kernel's scale is a float32 value, which
    # for float64 gradients would not be the array code's double
    views = _aten.exclusive_views(grads, _FLOAT32)
    if views is None:
        return None
    torch = _aten.torch_module()
    where = views[0].device
    if not check:
        torch._foreach_mul_(views, inv)
        _aten.written(grads[0]._data)
        return False
    found = torch.zeros((), dtype=torch.float32, device=where)
    torch._amp_foreach_non_finite_check_and_unscale_(
        views, found, torch.full((), inv, dtype=torch.float32, device=where))
    _aten.written(grads[0]._data)
    return bool(found.item())


class GradScaler:
    """Loss scaling for `megengine.amp.autocast` training (upstream's ``GradScaler``).

    ``init_scale``: the first scale factor. ``growth_factor``: the factor the scale grows by
    after ``growth_interval`` steps without inf/nan gradients (0 interval: a fixed scale, no
    checks). ``backoff_factor``: the factor the scale shrinks by on a step with inf/nan
    gradients; that step's gradients are dropped (set to None), so ``opt.step()`` skips them.

    Usage::

        scaler = GradScaler()
        with gm:
            loss = F.loss.cross_entropy(model(x), y)
            scaler.backward(gm, loss)   # backward with dy = scale, unscale, update
        opt.step().clear_grad()

    or, to accumulate gradients over several batches, ``gm.backward(loss,
    dy=mge.tensor(scaler.scale_factor))`` per batch, then ``scaler.unscale(gm.attached_tensors())``
    and ``scaler.update()``. Inside a ``symbolic=False`` or ``True`` trace, `backward`,
    `unscale` and `update` are recorded as calls that each traced call makes again, so a scale
    that grows or backs off between calls is used as it is then. The decisions read gradient
    values on the host: inside ``trace(without_host=True)`` they would run at recording only, so
    keep the scaler's calls out of such a trace. (In the explicit form above, ``mge.tensor(
    scaler.scale_factor)`` made inside the traced function is a constant of the trace: pass it
    in as an argument instead.)
    """

    def __init__(self, init_scale: float = 2.0 ** 4, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000):
        self.scale_factor = float(init_scale)
        self.growth_factor = float(growth_factor)
        self.backoff_factor = float(backoff_factor)
        self.growth_interval = growth_interval
        self._growth_tracker = 0
        self._found_non_finite = False

    def backward(self, gm, y=None, dy=None, *, unscale_grad: bool = True,
                 update_scale="if_unscale_grad"):
        """``gm.backward(y, dy * scale_factor)`` (``dy`` defaults to ones), then, with
        ``unscale_grad``, `unscale` the attached tensors' gradients and, with ``update_scale``,
        `update` the scale. Returns None, as upstream's."""
        if dispatch._trace_hook is not None:  # megengine.jit.trace records this call as an event
            return dispatch._trace_hook.event(GradScaler.backward, self, gm, y, dy,
                                              unscale_grad=unscale_grad, update_scale=update_scale)
        if not callable(getattr(gm, "backward", None)):
            raise TypeError(f"GradScaler.backward: gm must be the GradManager that recorded "
                            f"the forward pass, got {type(gm).__name__}")
        ys = [] if y is None else list(y) if isinstance(y, (tuple, list)) else [y]
        for t in ys:  # (upstream: its op's "py_apply expects tensor as inputs", a TypeError)
            if not isinstance(t, Tensor):
                raise TypeError(f"GradScaler.backward: y must be a Tensor or a list of them (the "
                                f"loss), got {type(t).__name__}")
        if dy is None:
            dys = [_full_like(t, self.scale_factor) for t in ys]
        elif isinstance(dy, (tuple, list)):
            dys = [d * self.scale_factor for d in dy]
        else:
            dys = [dy * self.scale_factor]
        gm.backward(y=ys, dy=dys)
        if unscale_grad:
            self.unscale(gm.attached_tensors())
            if update_scale:
                self.update()

    def unscale(self, grad_tensors: Iterable[Tensor]):
        """Divide the ``.grad`` of ``grad_tensors`` by the scale, in place (the gradient tensors
        stay the same objects, as upstream's); if any is inf/nan, set them all to None instead
        (the step is skipped) and remember it for `update`. As upstream, only these gradients
        decide: a later call with finite ones unscales them although an earlier call since
        the last `update` found inf/nan (`update` still backs off)."""
        if dispatch._trace_hook is not None:  # megengine.jit.trace records this call as an event
            return dispatch._trace_hook.event(GradScaler.unscale, self, grad_tensors)
        # (None entries and tensors without a gradient are skipped; upstream raises on them)
        tensors = [t for t in grad_tensors if getattr(t, "grad", None) is not None]
        for t in tensors:  # before any gradient changes
            check_grad_is_tensor(t, "GradScaler.unscale", "nothing was unscaled")
        inv = 1.0 / self.scale_factor
        found = _unscale_on_aten([t.grad for t in tensors], inv, self.growth_interval != 0)
        if found is None:  # the array code: check all, then unscale each
            found = self._check_gradients([t.grad for t in tensors])
            if not found:
                for t in tensors:
                    t.grad._reset(t.grad * inv)
        if found:
            self._found_non_finite = True
            for t in tensors:
                t.grad = None
        return self

    def _check_gradients(self, grads):
        if self.growth_interval == 0:
            return False
        return _check_non_finite(grads)

    def update(self, new_scale: float = None):
        """Set the scale to ``new_scale``, or adapt it: back off after an overflow, grow after
        ``growth_interval`` clean steps."""
        if dispatch._trace_hook is not None:  # megengine.jit.trace records this call as an event
            return dispatch._trace_hook.event(GradScaler.update, self, new_scale)
        if self.growth_interval == 0:
            return
        if new_scale is not None:
            self.scale_factor = float(new_scale)
        elif self._found_non_finite:
            self.scale_factor *= self.backoff_factor
            self._growth_tracker = 0
        else:
            self._growth_tracker += 1
            if self._growth_tracker >= self.growth_interval:
                self.scale_factor *= self.growth_factor
                self._growth_tracker = 0
        self._found_non_finite = False

    def state_dict(self):
        return {"scale_factor": self.scale_factor, "growth_factor": self.growth_factor,
                "backoff_factor": self.backoff_factor, "growth_interval": self.growth_interval,
                "_growth_tracker": self._growth_tracker}

    _STATE_KEYS = ("scale_factor", "growth_factor", "backoff_factor", "growth_interval",
                   "_growth_tracker")

    def load_state_dict(self, state):
        """Restore what `state_dict` returned. Every key is looked up before any is set, so a
        state that lacks one changes nothing (upstream 1.13 measured: the keys before the
        missing one were set when its KeyError came)."""
        missing = [k for k in self._STATE_KEYS if k not in state]
        if missing:
            raise KeyError(f"GradScaler.load_state_dict: the state lacks {missing}; pass what "
                           f"GradScaler.state_dict() returned (keys {list(self._STATE_KEYS)})")
        for key in self._STATE_KEYS:
            setattr(self, key, state[key])


def _full_like(t, value):
    xp = xp_of(t._data)
    with on_device(t._device):  # CuPy allocates on the current GPU
        return Tensor._wrap(xp.full(t._data.shape, value, dtype=t._data.dtype), t._device)
