"""`Function`: a user-defined op with its own forward and backward on Tensors (upstream's API)."""
import warnings
import weakref

from ..core.dispatch import Op, apply
from ..core.tensor import Tensor

__all__ = ["Function"]


class Function:
    """Subclass and define ``forward(self, *inputs)`` and ``backward(self, *output_grads)``.

    Both take and return Tensors. ``forward`` runs outside autodiff (what it computes is not
    recorded); ``backward`` returns one gradient per input (``None`` for none; extra trailing
    ``None`` values are ignored, and inputs past the gradients it returns get none) and
    receives ``None`` for an output nobody used. Call an
    instance on tensors: ``y = MyFunction()(x)``.
    Values ``forward`` stores on ``self`` (or passes to ``save_for_backward``) are there in
    ``backward``.

    Higher order: when an outer GradManager records the backward, ``backward`` is called on
    recorded gradient Tensors, so what it computes from them is differentiated too, and so is
    what it computes from the input Tensors ``forward`` kept (``self.x = x``), as upstream's
    (a ``backward`` of ``-sin(self.x) * dy`` gives the second derivative of cos).
    """

    def forward(self, *inputs):
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, *output_grads):
        raise NotImplementedError(f"{type(self).__name__}.backward")

    def save_for_backward(self, *tensors):
        """Keep tensors for ``backward`` (read them back as ``self.saved_tensors``)."""
        self.saved_tensors = tensors

    def __call__(self, *inputs):
        for t in inputs:
            if not isinstance(t, Tensor):
                raise TypeError(
                    f"op {type(self).__name__} expect type Tensor as inputs, got "
                    f"{type(t).__name__}; wrap constants with megengine.tensor(...)"
                )
        return apply(_FunctionOp(self, inputs[0]._device if inputs else None), *inputs)


class _FunctionOp(Op):
    """Adapts a user Function (Tensor in, Tensor out) to the dispatcher's array-level op."""

    none_for_unused_grads = True  # upstream hands None, not zeros, for an unused output
    grad_autocast = True  # backward is user code: autocast casts its ops, as upstream's (Op)

    def __init__(self, fn, device):
        self.fn, self.device = fn, device

    def __repr__(self):
        return type(self.fn).__name__

    def forward(self, *arrays):
        inputs = tuple(Tensor._wrap(a, self.device) for a in arrays)
        # weak: the inputs stay alive only if forward kept them; grad_graph links those kept
        self._inputs = [weakref.ref(t) for t in inputs]
        outs = self.fn.forward(*inputs)
        self.multi = isinstance(outs, (tuple, list))
        outs = tuple(outs) if self.multi else (outs,)
        for o in outs:
            if not isinstance(o, Tensor):
                raise TypeError(
                    f"{self!r}.forward must return Tensors, got {type(o).__name__}"
                )
        arrays = tuple(o._data for o in outs)
        return arrays if self.multi else arrays[0]

    def _gradients(self, grads):
        gs = self.fn.backward(*grads)
        gs = tuple(gs) if isinstance(gs, (tuple, list)) else (gs,)
        n = len(self.needs_input_grad)
        if len(gs) > n:
            # upstream drops gradients past the inputs. Trailing Nones carry nothing (DMVFN's
            # straight-through RoundSTE returns ``grad, None`` for one input); anything else is
            # dropped too, but said, since it usually means a slip in backward
            if any(g is not None for g in gs[n:]):
                warnings.warn(
                    f"{self!r}.backward returned {len(gs)} gradients for {n} inputs; the last "
                    f"{len(gs) - n} are ignored, as upstream MegEngine does", stacklevel=2)
            gs = gs[:n]
        if len(gs) < n:
            # the inputs past the returned gradients get none, as upstream's: a backward of
            # ``forward(self, x, mask)`` may return only x's gradient (a bare None: none at all)
            gs = gs + (None,) * (n - len(gs))
        for g in gs:
            if g is not None and not isinstance(g, Tensor):
                raise TypeError(
                    f"{self!r}.backward must return Tensors (or None), got {type(g).__name__}"
                )
        return gs

    def backward(self, *grads):
        gs = self._gradients([None if g is None else Tensor._wrap(g, self.device) for g in grads])
        # copies: backward may return a tensor the Function (or the user) still holds, and a
        # .grad must never share memory with anything else (in-place grad edits)
        return tuple(None if g is None else g._data.copy() for g in gs)

    def grad_graph(self, inputs, outputs, grads):
        # the input Tensors forward kept stand for the recorded inputs while backward runs, so
        # an outer GradManager differentiates through them (they are unrecorded again after)
        kept = [(ref(), t) for ref, t in zip(self._inputs, inputs) if ref() is not None]
        for mine, recorded in kept:
            mine._node = recorded._node
        try:
            return self._gradients(grads)
        finally:
            for mine, _ in kept:
                mine._node = None
