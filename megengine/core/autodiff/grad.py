"""Upstream's low-level autodiff object `Grad` (``with Grad() as g: g.wrt(x, callback=cb);
...; g(y, dy)``), on the GradManager machinery: one recording, gradients handed to callbacks.

It differs from `GradManager` in what it does with a gradient: it calls ``callback(grad)``
for each tensor given to ``wrt`` and never writes ``.grad``. Nesting works as for
GradManagers: a Grad entered earlier records the backward of one entered later, so a
callback's gradient can be differentiated again (second-order gradients).
"""
import weakref
from collections.abc import Sequence

from ...autodiff.function import Function  # noqa: F401  upstream exports it here too
from ...autodiff.grad_manager import GradManager
from ..tensor import Tensor

__all__ = ["Grad", "Function", "get_grad_managers"]

_grad_count = 0
_grad_manager_dict = weakref.WeakValueDictionary()


def get_grad_managers():
    """The Grads alive now."""
    return list(_grad_manager_dict.values())


class Grad:
    """Records ops on the tensors given to `wrt`; ``grad(ys, dys)`` backpropagates ``dys``
    from ``ys`` once and calls each tensor's callback with its gradient (a callback is not
    called for a tensor ``ys`` does not depend on).

    Recording starts when the Grad is made, as upstream's (whose key is live from its
    creation: a rank that only relays with ``remote_recv``/``remote_send`` makes a Grad, attaches
    nothing and calls ``grad([], [])`` to run the relayed gradients back), and ends with the
    call, the ``with`` block, or when the Grad is freed.
    """

    def __init__(self, name=None):
        global _grad_count
        if name is None:
            name = f"grad_{_grad_count}"
            _grad_count += 1
        self._name = name
        self._manager = GradManager()
        self._done = False  # called once: a Grad records one computation
        _grad_manager_dict[name] = self
        self._start()

    @property
    def name(self):
        return self._name

    def wrt(self, *tensors, callback=None):
        """Differentiate with respect to ``tensors``; ``callback(grad)`` receives each one's
        gradient. Returns this Grad."""
        if callback is not None and not callable(callback):
            raise TypeError(f"Grad.wrt: callback must be callable(grad), got "
                            f"{type(callback).__name__}")
        for t in tensors:
            if not isinstance(t, Tensor):
                raise TypeError(f"Grad.wrt: expected Tensors, got {type(t).__name__}")
        self._start()
        for t in tensors:
            # integer tensors past attach's refusal (upstream's Grad differentiates them; a
            # trace does not record their attach as an event)
            attach = self._manager._attach if t.dtype.kind in "iu" else self._manager.attach
            attach([t], [_deliver(callback)])
        return self

    def _start(self):
        if not self._manager._recording and not self._done:
            self._manager.record()

    def _is_attached_to(self, tensor):
        return self._manager.is_attached(tensor)

    def __call__(self, ys, dys):
        """Backpropagate ``dys`` (one per output, a Tensor or a sequence) from ``ys``."""
        if not isinstance(ys, Sequence):
            ys = [ys]
        if not isinstance(dys, Sequence):
            dys = [dys]
        ys, dys = list(ys), list(dys)
        if len(ys) != len(dys):
            raise ValueError(f"Grad: {len(ys)} outputs but {len(dys)} output gradients")
        if not self._manager._recording:
            raise RuntimeError(f"Grad {self._name!r}: not recording; give it tensors with "
                               "wrt() (or enter `with Grad() as grad:`) first, and call it once")
        self._done = True
        if not ys:  # no output here: backpropagate what distributed ops kept, if any
            if self._manager._kept:
                self._manager.backward()
            else:
                self._manager.release()
            return None
        # upstream's backward takes an output gradient that broadcasts to its output
        dys = [_broadcast_to(dy, y) for y, dy in zip(ys, dys)]
        self._manager.backward(ys, dys)
        return None

    def __enter__(self):
        self._start()
        return self

    def __exit__(self, *exc):
        self._done = True
        self._manager.release()

    def __del__(self):
        # a Grad that was never called must not leave the engine recording every op
        manager = getattr(self, "_manager", None)
        if manager is not None and manager._recording:
            try:
                manager.release()
            except Exception:  # interpreter shutdown: the modules it needs may be gone
                pass


def _broadcast_to(dy, y):
    shape = getattr(dy, "shape", None)
    if shape is None or tuple(shape) == tuple(y.shape):
        return dy
    from ... import functional as F

    return F.broadcast_to(dy if isinstance(dy, Tensor) else Tensor(dy, dtype=y.dtype), y.shape)


def _deliver(callback):
    def hand_over(tensor, grad):
        if callback is not None:
            callback(grad)
        return None  # a Grad hands gradients to callbacks only; .grad is left alone

    hand_over._runs_on_replay = True  # a without_host replay delivers too (jit/grad_callbacks)
    return hand_over
