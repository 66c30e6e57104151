"""`SGD`: stochastic gradient descent with momentum, Nesterov momentum and L2 weight decay."""
from ..core.fused import fused_kernel, use_fused
from ..core.ops import ArgumentError
from ..functional import _aten
from .optimizer import _ATEN_UPDATE_MIN, Optimizer, _check_non_negative, update_on_aten

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

    def _update_host(self, items, group):
        """Without momentum and weight decay, one call of the torch bridge's ``sgd_step`` (once
        something has loaded the bridge) updates the group's numpy parameters, with `_update`'s
        values bit for bit (numpy's rounding of ``p -= lr * g``): two numpy passes a parameter
        cost ~5 us each right after torch's convolutions (a batch-8 LeNet step's 12 parameters:
        the step took ~80 us, ~64 after). Those it leaves (a large one, which `_update` hands to
        ATen; another layout or dtype) and the other configurations take `_update`."""
        lr, bridge, first = group["lr"], _aten.bridge(), items[0][1]
        if group["momentum"] == 0 and group["weight_decay"] == 0 and type(lr) is float \
                and bridge is not None and _aten.use_aten(first, "update") \
                and not use_fused(first, first):
            # (use_aten, use_fused: unless the tests avoid the family to run the array code, or
            # route updates through the CUDA kernel's body compiled for the CPU)
            left = bridge.sgd_step([p._data for p, _, _ in items], [g for _, g, _ in items], lr,
                                   _ATEN_UPDATE_MIN)
            items = [items[i] for i in left]
        super()._update_host(items, group)

    def _update_batch(self, items, group):
        """CUDA: `_update` of the group's parameters of one device and dtype in one multi-tensor
        kernel, ATen's ``_fused_sgd_`` (torch's ``SGD(fused=True)``), instead of one kernel per
        parameter. Its formulas are `_update`'s with no dampening: the weight-decay term only
        when ``weight_decay != 0``; the buffer ``v = momentum * v + g`` from zeros (so the first
        step's ``v`` is ``g``, which is what ``is_first_step`` would set)."""
        fused = _aten.op("_fused_sgd_") if _has_fused_sgd() else None
        if fused is None:  # a torch older than 2.3: one kernel per parameter
            super()._update_batch(items, group)
            return
        momentum = float(group["momentum"])
        view, grad_view = self._torch_views(), _aten.view
        params = [view(p._data) for p, _, _ in items]
        grads = [grad_view(g) for _, g, _ in items]  # (a fresh array each step: not kept)
        bufs = [view(self._buffer(state, "momentum_buffer", p)) for p, _, state in items] \
            if momentum != 0 else []
        fused(params, grads, bufs, weight_decay=float(group["weight_decay"]), momentum=momentum,
              lr=float(group["lr"]), dampening=0.0, nesterov=bool(self._nesterov(group)),
              maximize=False, is_first_step=False)
        _aten.written(items[0][0]._data)  # (the next forward reads the parameters)

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


def _has_fused_sgd():
    return hasattr(_aten.torch_module(), "_fused_sgd_")


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
