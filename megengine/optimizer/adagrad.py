"""`Adagrad`: per-element learning rates from the sum of squared gradients."""
import numpy as np

from ..core.fused import fused_kernel, use_fused
from ..functional import _aten
from .optimizer import Optimizer, _check_non_negative, passes_on_aten

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
        if passes_on_aten(data, grad, group):
            _update_aten(data, grad, square_sum, clr, group)
            return
        if group["weight_decay"] != 0:
            grad = grad + group["weight_decay"] * data
        square_sum += grad * grad
        data -= clr * (grad / (square_sum + group["eps"]) ** 0.5)


def _update_aten(data, grad, square_sum, clr, group):
    """`Adagrad._update`'s numpy code as ATen's ops on torch views, on torch's thread pool
    (`passes_on_aten`): its operations one by one in its order, so the same results bit for
    bit."""
    torch, view = _aten.torch_module(), _aten.view
    scratch = np.empty_like(data)
    p, g, ss, s = view(data), view(grad), view(square_sum), view(scratch)
    if group["weight_decay"] != 0:  # g = grad + weight_decay * param
        g = torch.mul(p, group["weight_decay"], out=view(np.empty_like(data))).add_(g)
    torch.mul(g, g, out=s)
    ss.add_(s)
    torch.add(ss, group["eps"], out=s)
    np.sqrt(scratch, out=scratch)  # numpy's square root, as its ``** 0.5``
    torch.div(g, s, out=s)
    s.mul_(clr)
    p.sub_(s)


# The same update as `Adagrad._update`'s array code (eps inside the square root, as upstream).
_adagrad_kernel = fused_kernel(
    "T grad, T clr, T eps, T weight_decay", "T param, T square_sum",
    """
    T g = weight_decay != 0 ? grad + weight_decay * param : grad;
    square_sum += g * g;
    param -= clr * (g / sqrt(square_sum + eps));
    """,
    "megengine_adagrad")
