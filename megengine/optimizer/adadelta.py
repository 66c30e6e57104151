"""`Adadelta`: step sizes from running averages of squared gradients and squared updates."""
import numpy as np

from ..core.fused import fused_kernel, use_fused
from ..core.ops import ArgumentError
from ..functional import _aten
from .optimizer import Optimizer, passes_on_aten

__all__ = ["Adadelta"]


class Adadelta(Optimizer):
    """Adadelta ("ADADELTA: An Adaptive Learning Rate Method"), upstream's formulas.

    With ``g = grad + weight_decay * param``: ``s = rho*s + (1-rho)*g*g``,
    ``delta = sqrt(a + eps) / sqrt(s + eps) * g``, ``param -= lr * delta``,
    ``a = rho*a + (1-rho)*delta*delta``.
    """

    def __init__(self, params, lr: float = 1.0, rho: float = 0.9, eps: float = 1e-6,
                 weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay))

    def _check_group(self, group):
        super()._check_group(group)
        rho = group["rho"]
        if not isinstance(rho, (int, float)) or not 0.0 <= rho <= 1.0:
            raise ArgumentError(f"Adadelta: invalid rho {rho!r}; it must be in [0, 1]")

    # the step count is not used, but kept as upstream's state has it
    _state_buffers = ("square_avg", "acc_delta")
    _counts_steps = True

    def _update(self, param, grad, state, group):
        rho, eps = group["rho"], group["eps"]
        data = param._data
        state["step"] = state.get("step", 0) + 1
        square_avg = self._buffer(state, "square_avg", param)
        acc_delta = self._buffer(state, "acc_delta", param)
        if use_fused(data, grad):  # CUDA: one kernel per parameter
            _adadelta_kernel()(grad, group["lr"], rho, 1 - rho, eps, group["weight_decay"],
                               data, square_avg, acc_delta)
            return
        if passes_on_aten(data, grad, group):
            _update_aten(data, grad, square_avg, acc_delta, group)
            return
        if group["weight_decay"] != 0:
            grad = grad + group["weight_decay"] * data
        square_avg *= rho
        square_avg += (1 - rho) * (grad * grad)
        delta = (acc_delta + eps) ** 0.5 / (square_avg + eps) ** 0.5 * grad
        data -= group["lr"] * delta
        acc_delta *= rho
        acc_delta += (1 - rho) * (delta * delta)


def _update_aten(data, grad, square_avg, acc_delta, group):
    """`Adadelta._update`'s numpy code as ATen's ops on torch views, on torch's thread pool
    (`passes_on_aten`): its operations one by one in its order, so the same results bit for
    bit."""
    rho, eps = group["rho"], group["eps"]
    torch, view = _aten.torch_module(), _aten.view
    scratch, delta = np.empty_like(data), np.empty_like(data)
    p, g, sa, ad = view(data), view(grad), view(square_avg), view(acc_delta)
    s, d = view(scratch), view(delta)
    if group["weight_decay"] != 0:  # g = grad + weight_decay * param
        g = torch.mul(p, group["weight_decay"], out=view(np.empty_like(data))).add_(g)
    sa.mul_(rho)
    torch.mul(g, g, out=s)
    s.mul_(1 - rho)
    sa.add_(s)
    torch.add(ad, eps, out=d)
    np.sqrt(delta, out=delta)  # numpy's square roots, as its ``** 0.5``
    torch.add(sa, eps, out=s)
    np.sqrt(scratch, out=scratch)
    d.div_(s).mul_(g)
    torch.mul(d, group["lr"], out=s)
    p.sub_(s)
    ad.mul_(rho)
    torch.mul(d, d, out=s)
    s.mul_(1 - rho)
    ad.add_(s)


# The same update as `Adadelta._update`'s array code, one CUDA kernel per parameter.
_adadelta_kernel = fused_kernel(
    "T grad, T lr, T rho, T one_minus_rho, T eps, T weight_decay",
    "T param, T square_avg, T acc_delta",
    """
    T g = weight_decay != 0 ? grad + weight_decay * param : grad;
    square_avg = rho * square_avg + one_minus_rho * (g * g);
    T delta = sqrt(acc_delta + eps) / sqrt(square_avg + eps) * g;
    param -= lr * delta;
    acc_delta = rho * acc_delta + one_minus_rho * (delta * delta);
    """,
    "megengine_adadelta")
