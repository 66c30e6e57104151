"""`AdamW`: Adam with weight decay decoupled from the gradient."""
from .adam import Adam

__all__ = ["AdamW"]


class AdamW(Adam):
    """AdamW ("Decoupled Weight Decay Regularization"), upstream's formulas.

    The moments see the raw gradient; the decay joins the step instead:
    ``param -= lr * (adam_direction + weight_decay * param)``. Default weight_decay is 1e-2.
    """

    _decoupled = True  # (Adam._update)

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2):
        super().__init__(params, lr, betas, eps, weight_decay)
