"""`Adam`: adaptive moment estimation with bias correction and L2 weight decay."""
import numpy as np

from ..core.dispatch import xp_of
from ..core.fused import fused_kernel, use_fused
from ..core.ops import ArgumentError
from ..functional import _aten
from .optimizer import Optimizer, passes_on_aten

__all__ = ["Adam"]


def _check_betas(group, name):
    betas = group["betas"]
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError(f"{name}: betas must be a pair (beta1, beta2), got {betas!r}")
    for i, b in enumerate(betas):
        if not 0.0 <= b < 1.0:
            raise ArgumentError(
                f"{name}: invalid beta at index {i}: {b}; it must be in [0, 1)")


def adam_direction(grad, state, group, param):
    """Update the moments in ``state`` and return m_hat / (sqrt(v_hat) + eps), in a fresh array
    that the caller may change in place."""
    beta1, beta2 = group["betas"]
    m = Optimizer._buffer(state, "exp_avg", param)
    v = Optimizer._buffer(state, "exp_avg_sq", param)
    state["step"] = step = state.get("step", 0) + 1
    xp = xp_of(m)
    # The formula's operations one by one, in the same order (so the same rounding), but into
    # two scratch arrays instead of eight temporaries: each fresh temporary of a large
    # parameter is an allocation whose pages fault in (benchmarks/bench_transformer.py).
    scratch = xp.multiply(grad, 1 - beta1, out=xp.empty_like(m))
    m *= beta1
    m += scratch
    xp.multiply(grad, grad, out=scratch)
    scratch *= 1 - beta2
    v *= beta2
    v += scratch
    # eps is added after the square root of the bias-corrected second moment, as upstream
    xp.divide(v, 1 - beta2 ** step, out=scratch)
    xp.sqrt(scratch, out=scratch)
    scratch += group["eps"]
    direction = xp.divide(m, 1 - beta1 ** step, out=xp.empty_like(m))
    direction /= scratch
    return direction


class Adam(Optimizer):
    """Adam ("Adam: A Method for Stochastic Optimization"), upstream's formulas.

    With ``g = grad + weight_decay * param`` (L2 penalty added to the gradient):
    ``m = b1*m + (1-b1)*g``, ``v = b2*v + (1-b2)*g*g``, and the step is
    ``lr * (m / (1 - b1**t)) / (sqrt(v / (1 - b2**t)) + eps)``.
    """

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        # upstream's key order, which printed param_groups and state dicts show
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, betas=betas,
                                      eps=eps))

    def _check_group(self, group):
        super()._check_group(group)
        _check_betas(group, type(self).__name__)

    _state_buffers = ("exp_avg", "exp_avg_sq")
    _counts_steps = True
    _decoupled = False  # where the weight decay joins: the gradient here, the step in AdamW

    def _update(self, param, grad, state, group):
        data = param._data
        decoupled = self._decoupled
        if use_fused(data, grad):  # CUDA: one kernel per parameter
            adam_fused(param, grad, state, group, decoupled=decoupled)
            return
        if passes_on_aten(data, grad, group):
            adam_aten(param, grad, state, group, decoupled=decoupled)
            return
        weight_decay = group["weight_decay"]
        if weight_decay != 0 and not decoupled:
            grad = grad + weight_decay * data
        step = adam_direction(grad, state, group, param)  # a fresh array: changed in place
        if weight_decay != 0 and decoupled:
            step += weight_decay * data
        step *= group["lr"]
        data -= step

    def _update_batch(self, items, group):
        """CUDA: `_update` of the group's parameters of one device and dtype in one
        multi-tensor kernel, ATen's ``_fused_adam_`` (``_fused_adamw_`` for AdamW: torch's
        ``fused=True``), plus one that writes the step count, instead of one kernel per
        parameter. The same formulas (the L2 term joins the gradient, or AdamW's decay the
        step; eps after the square root of the corrected second moment); the bias corrections
        are computed on the device in the parameters' dtype, where the per-parameter kernel
        takes them from the host in double, so the two differ in the last bits. Parameters
        that have taken different numbers of steps (one added to the group later) are updated
        one by one."""
        name = "_fused_adamw_" if self._decoupled else "_fused_adam_"
        torch = _aten.torch_module()
        steps = {state.get("step", 0) for _, _, state in items}
        if len(steps) != 1 or not hasattr(torch, name):  # (a torch older than 2.x)
            super()._update_batch(items, group)
            return
        step = steps.pop() + 1
        view, grad_view = self._torch_views(), _aten.view
        params = [view(p._data) for p, _, _ in items]
        grads = [grad_view(g) for _, g, _ in items]  # (a fresh array each step: not kept)
        ms = [view(self._buffer(state, "exp_avg", p)) for p, _, state in items]
        vs = [view(self._buffer(state, "exp_avg_sq", p)) for p, _, state in items]
        count = torch.full((), float(step), dtype=torch.float32, device=params[0].device)
        beta1, beta2 = group["betas"]
        _aten.op(name)(params, grads, ms, vs, [], [count] * len(params), lr=float(group["lr"]),
                       beta1=float(beta1), beta2=float(beta2),
                       weight_decay=float(group["weight_decay"]), eps=float(group["eps"]),
                       amsgrad=False, maximize=False)
        for _, _, state in items:
            state["step"] = step
        _aten.written(items[0][0]._data)  # (the next forward reads the parameters)


def adam_fused(param, grad, state, group, decoupled):
    """Adam's (``decoupled``: AdamW's) whole update of one CuPy parameter in one kernel."""
    beta1, beta2 = group["betas"]
    m = Optimizer._buffer(state, "exp_avg", param)
    v = Optimizer._buffer(state, "exp_avg_sq", param)
    state["step"] = step = state.get("step", 0) + 1
    # the scalars are computed on the host in double, as the array code computes them
    _adam_kernel()(grad, group["lr"], beta1, 1 - beta1, beta2, 1 - beta2, 1 - beta1 ** step,
                   1 - beta2 ** step, group["eps"], group["weight_decay"], bool(decoupled),
                   param._data, m, v)


def adam_aten(param, grad, state, group, decoupled):
    """Adam's (``decoupled``: AdamW's) update of one numpy parameter as ATen's ops on torch
    views of the arrays, on torch's thread pool (`passes_on_aten`): the numpy code's operations
    (`Adam._update`, `adam_direction`) one by one in its order, so the same results bit for
    bit."""
    beta1, beta2 = group["betas"]
    lr, eps, weight_decay = group["lr"], group["eps"], group["weight_decay"]
    data = param._data
    m = Optimizer._buffer(state, "exp_avg", param)
    v = Optimizer._buffer(state, "exp_avg_sq", param)
    state["step"] = step = state.get("step", 0) + 1
    torch, view = _aten.torch_module(), _aten.view
    scratch, direction = np.empty_like(m), np.empty_like(m)
    p, g, tm, tv = view(data), view(grad), view(m), view(v)
    s, d = view(scratch), view(direction)
    if weight_decay != 0 and not decoupled:  # g = grad + weight_decay * param, into d
        torch.mul(p, weight_decay, out=d)
        g = d.add_(g)  # (a sum of two terms is the same either way round)
    torch.mul(g, 1 - beta1, out=s)
    tm.mul_(beta1).add_(s)
    torch.mul(g, g, out=s)
    s.mul_(1 - beta2)
    tv.mul_(beta2).add_(s)
    torch.div(tv, 1 - beta2 ** step, out=s)
    np.sqrt(scratch, out=scratch)  # numpy's square root (`passes_on_aten`)
    s.add_(eps)
    torch.div(tm, 1 - beta1 ** step, out=d)
    d.div_(s)
    if weight_decay != 0 and decoupled:
        torch.mul(p, weight_decay, out=s)
        d.add_(s)
    d.mul_(lr)
    p.sub_(d)


# The same update as the array code of `Adam._update` (with `adam_direction`): L2 decay joins
# the gradient (Adam) or the step (AdamW, ``decoupled``); eps is added after the square root of
# the bias-corrected second moment, as upstream.
_adam_kernel = fused_kernel(
    "T grad, T lr, T beta1, T one_minus_beta1, T beta2, T one_minus_beta2, T bias1, T bias2, "
    "T eps, T weight_decay, bool decoupled",
    "T param, T m, T v",
    """
    T g = (!decoupled && weight_decay != 0) ? grad + weight_decay * param : grad;
    m = beta1 * m + one_minus_beta1 * g;
    v = beta2 * v + one_minus_beta2 * (g * g);
    T delta = (m / bias1) / (sqrt(v / bias2) + eps);
    if (decoupled && weight_decay != 0) {
        delta += weight_decay * param;
    }
    param -= lr * delta;
    """,
    "megengine_adam")
