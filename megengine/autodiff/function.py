"""`Function`: a user-defined op with its own forward and backward on Tensors (upstream's API)."""
from ..core.dispatch import Op, apply
from ..core.tensor import Tensor

__all__ = ["Function"]


class Function:
    """Subclass and define ``forward(self, *inputs)`` and ``backward(self, *output_grads)``.

    Both take and return Tensors. ``forward`` runs outside autodiff (what it computes is not
    recorded); ``backward`` returns one gradient per input (``None`` for none). Call an
    instance on tensors: ``y = MyFunction()(x)``. Values ``forward`` stores on ``self`` are
    there in ``backward``.
    """

    def forward(self, *inputs):
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, *output_grads):
        raise NotImplementedError(f"{type(self).__name__}.backward")

    def __call__(self, *inputs):
        for t in inputs:
            if not isinstance(t, Tensor):
                raise TypeError(
                    f"{type(self).__name__}: inputs must be Tensors, got {type(t).__name__}"
                )
        return apply(_FunctionOp(self, inputs[0]._device if inputs else None), *inputs)


class _FunctionOp(Op):
    """Adapts a user Function (Tensor in, Tensor out) to the dispatcher's array-level op."""

    def __init__(self, fn, device):
        self.fn, self.device = fn, device

    def __repr__(self):
        return type(self.fn).__name__

    def forward(self, *arrays):
        outs = self.fn.forward(*(Tensor._wrap(a, self.device) for a in arrays))
        self.multi = isinstance(outs, (tuple, list))
        outs = tuple(outs) if self.multi else (outs,)
        for o in outs:
            if not isinstance(o, Tensor):
                raise TypeError(
                    f"{self!r}.forward must return Tensors, got {type(o).__name__}"
                )
        arrays = tuple(o._data for o in outs)
        return arrays if self.multi else arrays[0]

    def backward(self, *grads):
        gs = self.fn.backward(*(Tensor._wrap(g, self.device) for g in grads))
        gs = tuple(gs) if isinstance(gs, (tuple, list)) else (gs,)
        if len(gs) != len(self.needs_input_grad):
            raise RuntimeError(
                f"{self!r}.backward returned {len(gs)} gradients for "
                f"{len(self.needs_input_grad)} inputs"
            )
        return tuple(None if g is None else g._data for g in gs)
