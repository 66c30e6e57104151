"""`LAMB` (and `LAMBFp16`): Adam's direction scaled per parameter by a trust ratio ||w|| / ||update||."""
import numpy as np

from ..core.dispatch import xp_of
from ..core.fused import fused_kernel, use_fused
from ..core.tensor import Tensor
from ..functional import _aten
from .adam import _adam_kernel, _check_betas
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
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps,
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
        found = self._direction(weight, grad, state, group, param)
        if found is None:  # (one pass did it all)
            return
        update, squares = found
        ratio = 1.0 if squares is None else _trust_ratio(*_read(squares))
        _take_step(weight, group["lr"] * ratio, update)

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
        found = [(p._data, self._direction(p._data, grad, state, group, p))
                 for p, grad, state in items]
        found = [(weight, *f) for weight, f in found if f is not None]
        if not found:
            return
        xp = xp_of(found[0][0])
        squares = xp.stack([s for _, _, pair in found for s in pair])
        squares = squares.tolist()  # (on a GPU: the one read)
        for (weight, update, _), w2, u2 in zip(found, squares[0::2], squares[1::2]):
            _take_step(weight, group["lr"] * _trust_ratio(w2, u2), update)

    def _direction(self, weight, grad, state, group, param):
        """Update the moments in ``state``; return LAMB's update direction ``u`` (before its
        trust ratio and learning rate) with, where the trust ratio applies, the float64 sums of
        squares of ``weight`` and ``u`` (a pair of values on their device, not read; else
        None); or None when one pass updated ``weight`` whole (ATen's; on CUDA, without a
        trust ratio, Adam's kernel)."""
        beta1, beta2 = group["betas"]
        m = Optimizer._buffer(state, "exp_avg", param)
        v = Optimizer._buffer(state, "exp_avg_sq", param)
        if m.dtype != weight.dtype:  # LAMBFp16: the moments live in float32 with the master copy
            m, v = m.astype(weight.dtype), v.astype(weight.dtype)
            state["exp_avg"] = Tensor._wrap(m, param._device)
            state["exp_avg_sq"] = Tensor._wrap(v, param._device)
        state["step"] = step = state.get("step", 0) + 1
        grad = grad.astype(weight.dtype, copy=False)
        adapt = self._adapts(group)
        if passes_on_aten(weight, grad, group):
            _lamb_aten(weight, grad, m, v, step, group, self.bias_correction, adapt)
            return None
        if use_fused(weight, grad):  # CUDA: one kernel (the array code below is ~20)
            return _lamb_fused(weight, grad, m, v, step, group, self.bias_correction, adapt)
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
        if not adapt:
            return update, None
        # norms in float64: no overflow in float16, and a few scalars per parameter to read
        return update, ((weight.astype("float64") ** 2).sum(),
                        (update.astype("float64") ** 2).sum())

    def _update(self, param, grad, state, group):
        self._lamb_step(param._data, grad, state, group, param)


def _read(squares):
    """A pair of sums of squares (`LAMB._direction`) as Python floats: one host read for the
    CUDA kernel's pair, which is one array."""
    return [float(s) for s in squares] if isinstance(squares, tuple) else squares.tolist()


def _take_step(weight, scale, update):
    """``weight -= scale * update``, in place (on CUDA in one kernel: the same operations)."""
    if use_fused(weight, update):
        _lamb_step_kernel()(update, scale, weight)
    else:
        weight -= scale * update


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


def _lamb_fused(weight, grad, m, v, step, group, bias_correction, adapt):
    """`LAMB._direction` of one CuPy parameter: the moments, the direction and its and the
    weight's squares in float64 in one kernel, the two sums of squares in one reduction, where
    the array code launches ~20 kernels; without a trust ratio (no decay: ``w -= lr * u``)
    the whole update in Adam's kernel, whose formulas these are. The scalars are computed on
    the host in double, as the array code computes them (without bias correction they are 1:
    dividing by 1 is exact)."""
    beta1, beta2 = group["betas"]
    bias1, bias2 = (1 - beta1 ** step, 1 - beta2 ** step) if bias_correction else (1.0, 1.0)
    if not adapt:  # (weight decay 0)
        _adam_kernel()(grad, group["lr"], beta1, 1 - beta1, beta2, 1 - beta2, bias1, bias2,
                       group["eps"], 0.0, False, weight, m, v)
        return None
    xp = xp_of(weight)
    update = xp.empty_like(weight)
    squares = xp.empty((2,) + weight.shape, np.float64)
    _lamb_direction_kernel()(grad, weight, beta1, 1 - beta1, beta2, 1 - beta2, bias1, bias2,
                             group["eps"], group["weight_decay"], m, v, update,
                             squares[0, ...], squares[1, ...])  # (views, also of a 0-d weight)
    return update, squares.reshape(2, -1).sum(axis=1)


# The array code of `LAMB._direction` with a trust ratio, its operations in its order:
# the moments, the direction u (eps after the square root of the corrected second moment, then
# the decay term), and the float64 squares of the weight and of u for the trust ratio's norms.
_lamb_direction_kernel = fused_kernel(
    "T grad, T param, T beta1, T one_minus_beta1, T beta2, T one_minus_beta2, T bias1, "
    "T bias2, T eps, T weight_decay",
    "T m, T v, T update, float64 param_squares, float64 update_squares",
    """
    m = beta1 * m + one_minus_beta1 * grad;
    v = beta2 * v + one_minus_beta2 * (grad * grad);
    T u = (m / bias1) / (sqrt(v / bias2) + eps);
    if (weight_decay != 0) {
        u += weight_decay * param;
    }
    update = u;
    param_squares = (double)param * (double)param;
    update_squares = (double)u * (double)u;
    """,
    "megengine_lamb_direction")

# The step, ``w -= (lr * ratio) * u`` (the scale a scalar of the parameter's dtype, as numpy
# makes of a Python float)
_lamb_step_kernel = fused_kernel("T update, T scale", "T param", "param -= scale * update;",
                                 "megengine_lamb_step")


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
