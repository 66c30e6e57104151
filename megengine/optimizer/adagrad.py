"""`Adagrad`: per-element learning rates from the sum of squared gradients."""
from ..core.fused import fused_kernel, use_fused
from .optimizer import Optimizer, _check_non_negative

__all__ = ["Adagrad"]


class Adagrad(Optimizer):
    """Adagrad ("Adaptive Subgradient Methods for Online Learning and Stochastic Optimization").

    Upstream's formulas, with ``g = grad + weight_decay * param``: ``s += g*g``, the step is
    ``lr / (1 + (t-1)*lr_decay) * g / sqrt(s + eps)``. Note eps is inside the square root
    (torch.optim.Adagrad adds it outside).
    """

    def __init__(self, params, lr: float = 1e-2, lr_decay: float = 0.0, eps: float = 1e-10,
                 weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, eps=eps,
                                      weight_decay=weight_decay))

    def _check_group(self, group):
        super()._check_group(group)
        _check_non_negative(group["lr_decay"], "lr_decay")

    _state_buffers = ("square_avg",)
    _counts_steps = True

    def _update(self, param, grad, state, group):
        data = param._data
        state["step"] = step = state.get("step", 0) + 1
        square_sum = self._buffer(state, "square_avg", param)
        clr = group["lr"] / (1 + (step - 1) * group["lr_decay"])
        if use_fused(data, grad):  # CUDA: one kernel per parameter
            _adagrad_kernel()(grad, clr, group["eps"], group["weight_decay"], data, square_sum)
            return
        if group["weight_decay"] != 0:
            grad = grad + group["weight_decay"] * data
        square_sum += grad * grad
        data -= clr * (grad / (square_sum + group["eps"]) ** 0.5)


# The same update as `Adagrad._update`'s array code (eps inside the square root, as upstream).
_adagrad_kernel = fused_kernel(
    "T grad, T clr, T eps, T weight_decay", "T param, T square_sum",
    """
    T g = weight_decay != 0 ? grad + weight_decay * param : grad;
    square_sum += g * g;
    param -= clr * (g / sqrt(square_sum + eps));
    """,
    "megengine_adagrad")
