"""`LAMB` (and `LAMBFp16`): Adam's direction scaled per parameter by a trust ratio ||w|| / ||update||."""
import numpy as np

from ..core.dispatch import xp_of
from ..core.tensor import Tensor
from ..functional import _aten
from .adam import _check_betas
from .optimizer import Optimizer, passes_on_aten

__all__ = ["LAMB", "LAMBFp16"]


class LAMB(Optimizer):
    """LAMB ("Large Batch Optimization for Deep Learning: Training BERT in 76 minutes"),
    upstream's formulas.

    Per parameter, with ``t`` its step count:
    ``m = b1*m + (1-b1)*g``, ``v = b2*v + (1-b2)*g*g``; with ``bias_correction`` these are
    divided by ``1 - b1**t`` and ``1 - b2**t``; ``u = m / (sqrt(v) + eps) + weight_decay * w``.
    The step is ``w -= lr * r * u`` with the trust ratio ``r = ||w|| / ||u||`` when
    ``weight_decay > 0`` or ``always_adapt`` (and both norms are positive), else ``r = 1``.
    """

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8,
                 bias_correction: bool = True, weight_decay: float = 0.0,
                 always_adapt: bool = False):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay))
        self.bias_correction = bias_correction
        self.always_adapt = always_adapt

    def _check_group(self, group):
        super()._check_group(group)
        _check_betas(group, type(self).__name__)

    _state_buffers = ("exp_avg", "exp_avg_sq")
    _counts_steps = True

    def _lamb_step(self, weight, grad, state, group, param):
        """Update the moments in ``state`` and ``weight`` (an array, changed in place)."""
        update = self._direction(weight, grad, state, group, param)
        if update is None:  # (ATen's passes did it all)
            return
        ratio = 1.0
        if self._adapts(group):
            # norms in float64 on the host: a few scalars per parameter, no overflow in float16
            ratio = _trust_ratio(*_squares(weight, update))
        weight -= (group["lr"] * ratio) * update

    def _adapts(self, group):
        return self.always_adapt or group["weight_decay"] > 0

    def _update_batch(self, items, group):
        """CUDA: `_update` of the group's parameters of one device and dtype with one host read
        for all their trust ratios (the sums of squares of each weight and update, in float64
        on the device, read back together), where each parameter read its two back on its own:
        two host syncs a parameter. The same operations and values as `_update`; only the
        reads are gathered, so the updates wait for the last direction (their arrays are kept
        till then: one parameter-sized array each)."""
        if not self._adapts(group):  # (no ratio: nothing to read back)
            super()._update_batch(items, group)
            return
        pending = [(p._data, self._direction(p._data, grad, state, group, p))
                   for p, grad, state in items]
        pending = [(weight, update) for weight, update in pending if update is not None]
        if not pending:
            return
        xp = xp_of(pending[0][0])
        squares = xp.stack([s for weight, update in pending
                            for s in _squares(weight, update, read=False)])
        squares = squares if xp is np else squares.get()  # (the one read)
        for (weight, update), w2, u2 in zip(pending, squares[0::2], squares[1::2]):
            weight -= (group["lr"] * _trust_ratio(float(w2), float(u2))) * update

    def _direction(self, weight, grad, state, group, param):
        """Update the moments in ``state`` and return LAMB's update direction ``u`` (before its
        trust ratio and learning rate), or None when ATen's passes updated ``weight`` whole."""
        beta1, beta2 = group["betas"]
        m = Optimizer._buffer(state, "exp_avg", param)
        v = Optimizer._buffer(state, "exp_avg_sq", param)
        if m.dtype != weight.dtype:  # LAMBFp16: the moments live in float32 with the master copy
            m, v = m.astype(weight.dtype), v.astype(weight.dtype)
            state["exp_avg"] = Tensor._wrap(m, param._device)
            state["exp_avg_sq"] = Tensor._wrap(v, param._device)
        state["step"] = step = state.get("step", 0) + 1
        grad = grad.astype(weight.dtype, copy=False)
        if passes_on_aten(weight, grad, group):
            _lamb_aten(weight, grad, m, v, step, group, self.bias_correction, self._adapts(group))
            return None
        m *= beta1
        m += (1 - beta1) * grad
        v *= beta2
        v += (1 - beta2) * (grad * grad)
        if self.bias_correction:
            update = (m / (1 - beta1 ** step)) / ((v / (1 - beta2 ** step)) ** 0.5 + group["eps"])
        else:
            update = m / (v ** 0.5 + group["eps"])
        decay = group["weight_decay"]
        if decay != 0:
            update += decay * weight
        return update

    def _update(self, param, grad, state, group):
        self._lamb_step(param._data, grad, state, group, param)


def _squares(weight, update, read=True):
    """The sums of squares of ``weight`` and ``update`` in float64 (read back as Python floats,
    or with ``read`` False left as 0-d arrays on their device)."""
    sums = ((weight.astype("float64") ** 2).sum(), (update.astype("float64") ** 2).sum())
    return tuple(float(s) for s in sums) if read else sums


def _trust_ratio(weight_squares, update_squares):
    """||w|| / ||u|| from their sums of squares, or 1 where either norm is 0."""
    w_norm, u_norm = float(np.sqrt(weight_squares)), float(np.sqrt(update_squares))
    return w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0


def _lamb_aten(weight, grad, m, v, step, group, bias_correction, adapt):
    """`LAMB._lamb_step`'s numpy code as ATen's ops on torch views of the arrays, on torch's
    thread pool (`passes_on_aten`): its operations one by one in its order, so the same results
    bit for bit. The squares of the norms are formed on ATen in float64 (exact conversions and
    products) and summed by numpy, whose pairwise sum the numpy code's is."""
    beta1, beta2 = group["betas"]
    eps, decay = group["eps"], group["weight_decay"]
    torch, view = _aten.torch_module(), _aten.view
    scratch, update = np.empty_like(weight), np.empty_like(weight)
    p, g, tm, tv = view(weight), view(grad), view(m), view(v)
    s, u = view(scratch), view(update)
    tm.mul_(beta1).add_(torch.mul(g, 1 - beta1, out=s))
    tv.mul_(beta2)
    torch.mul(g, g, out=s)
    tv.add_(s.mul_(1 - beta2))
    if bias_correction:  # m / (1 - b1**t) / (sqrt(v / (1 - b2**t)) + eps)
        torch.div(tv, 1 - beta2 ** step, out=s)
        np.sqrt(scratch, out=scratch)  # numpy's square roots, as its ``** 0.5``
        torch.div(tm, 1 - beta1 ** step, out=u)
    else:  # m / (sqrt(v) + eps)
        np.sqrt(v, out=scratch)
        u.copy_(tm)
    u.div_(s.add_(eps))
    if decay != 0:
        u.add_(torch.mul(p, decay, out=s))
    ratio = 1.0
    if adapt:
        squares = np.empty(weight.shape, np.float64)
        sq = view(squares)
        sq.copy_(p).mul_(sq)
        weight_squares = float(squares.sum())
        sq.copy_(u).mul_(sq)
        ratio = _trust_ratio(weight_squares, float(squares.sum()))
    p.sub_(u.mul_(group["lr"] * ratio))


class LAMBFp16(LAMB):
    """LAMB for float16 parameters: the moments and a float32 master copy of each parameter
    are kept in the optimizer's state; the update runs in float32 and the parameter receives
    the master copy rounded to its own dtype."""

    _update_batch = Optimizer._update_batch  # (each update goes through its master copy)

    def _update(self, param, grad, state, group):
        if state.get("param_fp32") is None:  # a Tensor in the state, as every buffer
            state["param_fp32"] = Tensor._wrap(param._data.astype("float32"), param._device)
        master = state["param_fp32"]._data
        self._lamb_step(master, grad, state, group, param)
        param._data[...] = master  # in place: the parameter's storage may be shared
