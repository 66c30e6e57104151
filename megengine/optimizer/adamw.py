"""`AdamW`: Adam with weight decay decoupled from the gradient."""
from ..core.fused import use_fused
from .adam import Adam, adam_aten, adam_direction, adam_fused
from .optimizer import passes_on_aten

__all__ = ["AdamW"]


class AdamW(Adam):
    """AdamW ("Decoupled Weight Decay Regularization"), upstream's formulas.

    The moments see the raw gradient; the decay joins the step instead:
    ``param -= lr * (adam_direction + weight_decay * param)``. Default weight_decay is 1e-2.
    """

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2):
        super().__init__(params, lr, betas, eps, weight_decay)

    def _update(self, param, grad, state, group):
        data = param._data
        if use_fused(data, grad):  # CUDA: one kernel per parameter
            adam_fused(param, grad, state, group, decoupled=True)
            return
        if passes_on_aten(data, grad, group):
            adam_aten(param, grad, state, group, decoupled=True)
            return
        delta = adam_direction(grad, state, group, param)  # a fresh array: changed in place
        if group["weight_decay"] != 0:
            delta += group["weight_decay"] * data
        delta *= group["lr"]
        data -= delta
