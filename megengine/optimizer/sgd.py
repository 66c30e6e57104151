"""`SGD`: stochastic gradient descent with momentum, Nesterov momentum and L2 weight decay."""
from ..core.fused import fused_kernel, use_fused
from ..core.ops import ArgumentError
from ..functional import _aten
from .optimizer import Optimizer, _check_non_negative, update_on_aten

__all__ = ["SGD"]


class SGD(Optimizer):
    """Stochastic gradient descent, upstream's formulas.

    With ``g = grad + weight_decay * param``: ``v = momentum * v + g`` (no dampening); the
    step is ``lr * v``, or ``lr * (g + momentum * v)`` with ``nesterov``. Nesterov momentum
    follows "On the importance of initialization and momentum in deep learning".
    """

    def __init__(self, params, lr: float, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0):
        # nesterov is not a group hyperparameter, as upstream's (whose state dicts' groups are
        # lr, momentum and weight_decay); a group may still carry its own "nesterov"
        self.nesterov = nesterov
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    def _nesterov(self, group):
        return group.get("nesterov", self.nesterov)

    def _check_group(self, group):
        super()._check_group(group)
        _check_non_negative(group["momentum"], "momentum")
        if self._nesterov(group) and group["momentum"] <= 0:
            raise ArgumentError("SGD: nesterov=True needs a momentum > 0")

    _state_buffers = ("momentum_buffer",)

    def _fresh_state(self, param, group, names):
        return super()._fresh_state(param, group, names) if group["momentum"] != 0 else {}

    def _update(self, param, grad, state, group):
        lr, momentum, weight_decay = group["lr"], group["momentum"], group["weight_decay"]
        data = param._data
        if use_fused(data, grad):  # CUDA: one kernel per parameter
            if momentum != 0:
                v = self._buffer(state, "momentum_buffer", param)
                _sgd_momentum_kernel()(grad, lr, weight_decay, momentum,
                                       bool(self._nesterov(group)), data, v)
            else:
                _sgd_kernel()(grad, lr, weight_decay, data)
            return
        if update_on_aten(data, grad):
            self._update_aten(param, data, grad, state, group)
            return
        if weight_decay != 0:
            grad = grad + weight_decay * data
        if momentum != 0:
            v = self._buffer(state, "momentum_buffer", param)
            v *= momentum
            v += grad
            grad = grad + momentum * v if self._nesterov(group) else v
        data -= lr * grad  # in place: the parameter keeps its storage

    def _update_aten(self, param, data, grad, state, group):
        """`_update`'s formulas as ATen's in-place ops on views of the arrays (torch's pool:
        threads, and no temporary for ``lr * grad``)."""
        lr, momentum, weight_decay = group["lr"], group["momentum"], group["weight_decay"]
        view = _aten.view
        p, g = view(data), view(grad)
        if weight_decay != 0:
            g = g.add(p, alpha=float(weight_decay))
        if momentum != 0:
            v = view(self._buffer(state, "momentum_buffer", param))
            v.mul_(float(momentum)).add_(g)
            g = g.add(v, alpha=float(momentum)) if self._nesterov(group) else v
        p.add_(g, alpha=-float(lr))


# The same update as `SGD._update`'s array code, one CUDA kernel per parameter. The weight-decay
# term is skipped (not multiplied by 0) when it is 0, as there, so an inf parameter stays inf.
_sgd_kernel = fused_kernel(
    "T grad, T lr, T weight_decay", "T param",
    "param -= lr * (weight_decay != 0 ? grad + weight_decay * param : grad);",
    "megengine_sgd")
_sgd_momentum_kernel = fused_kernel(
    "T grad, T lr, T weight_decay, T momentum, bool nesterov", "T param, T buf",
    """
    T g = weight_decay != 0 ? grad + weight_decay * param : grad;
    buf = momentum * buf + g;
    param -= lr * (nesterov ? g + momentum * buf : buf);
    """,
    "megengine_sgd_momentum")
