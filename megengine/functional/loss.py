"""Loss functions (F.loss, also spelled F.nn.<name>): cross entropy, BCE, L1, square, hinge."""
import math

import numpy as np

from ..core.dispatch import Op, apply
from ..core.ops import unbroadcast, xp_of
from ..core.tensor import Tensor, _operand, promote_types

__all__ = [
    "binary_cross_entropy", "cross_entropy", "cross_entropy_with_softmax", "hinge_loss",
    "l1_loss", "mse_loss", "smooth_l1_loss", "square_loss",
]

_REDUCTIONS = ("none", "mean", "sum")


def _check_reduction(reduction, what):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{what}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _reduce(loss, reduction):
    """The per-element ``loss`` array reduced as asked (a 0-d array for "mean" and "sum")."""
    if reduction == "none":
        return loss
    xp = xp_of(loss)
    if reduction == "sum":
        return xp.asarray(loss.sum(), dtype=loss.dtype)
    # sum / size: ndarray.mean goes through a slower Python-level wrapper
    return xp.asarray(loss.sum() / max(loss.size, 1),
                      dtype=loss.dtype if loss.dtype.kind == "f" else np.float32)


def _spread(g, shape, reduction):
    """The gradient of each unreduced loss element, from the reduced loss's gradient ``g``."""
    if reduction == "none":
        return g
    if reduction == "mean":
        g = g / max(math.prod(shape), 1)
    return xp_of(g).broadcast_to(g, shape)


def _pair(pred, label):
    """Both operands as Tensors; a Python number takes the other side's dtype rules."""
    if isinstance(pred, Tensor):
        return pred, _operand(label, pred)
    label = label if isinstance(label, Tensor) else Tensor(label)
    return _operand(pred, label), label


class _PairLoss(Op):
    """An element-wise loss of (pred, label) with broadcasting, reduced in the same op."""

    def __init__(self, reduction, what):
        self.reduction, self.what = reduction, what

    def forward(self, pred, label):
        dtype = promote_types(pred.dtype, label.dtype)
        pred, label = pred.astype(dtype, copy=False), label.astype(dtype, copy=False)
        self.shapes = (pred.shape, label.shape)
        try:
            loss = self.elementwise(xp_of(pred), pred, label)
        except ValueError:
            raise ValueError(f"{self.what}: pred of shape {pred.shape} and label of shape "
                             f"{label.shape} do not broadcast") from None
        self.loss_shape = loss.shape
        return _reduce(loss, self.reduction)

    def backward(self, g):
        g = _spread(g, self.loss_shape, self.reduction)
        gp, gl = self.grads(xp_of(g), g)
        needs = self.needs_input_grad
        return (unbroadcast(gp, self.shapes[0]) if needs[0] else None,
                unbroadcast(gl, self.shapes[1]) if needs[1] else None)


class _L1(_PairLoss):
    def elementwise(self, xp, pred, label):
        self.diff = pred - label
        return abs(self.diff)

    def grads(self, xp, g):
        gp = g * xp.sign(self.diff)
        return gp, -gp


class _Square(_PairLoss):
    def elementwise(self, xp, pred, label):
        self.diff = pred - label
        return self.diff * self.diff

    def grads(self, xp, g):
        gp = 2 * g * self.diff
        return gp, -gp


class _SmoothL1(_PairLoss):
    def __init__(self, reduction, what, beta):
        super().__init__(reduction, what)
        self.beta = beta

    def elementwise(self, xp, pred, label):
        d = self.diff = pred - label
        ad = abs(d)
        self.inside = ad < self.beta  # beta == 0: nothing is inside, the loss is L1
        return xp.where(self.inside, 0.5 * d * d / max(self.beta, 1e-12), ad - 0.5 * self.beta)

    def grads(self, xp, g):
        d = self.diff
        gp = g * xp.where(self.inside, d / max(self.beta, 1e-12), xp.sign(d))
        return gp, -gp


class _BinaryCrossEntropy(_PairLoss):
    def __init__(self, reduction, what, with_logits):
        super().__init__(reduction, what)
        self.with_logits = with_logits

    def elementwise(self, xp, pred, label):
        if pred.dtype.kind != "f":
            pred, label = pred.astype(np.float32), label.astype(np.float32)
        self.pred, self.label = pred, label
        if self.with_logits:
            # -(y log sigmoid(x) + (1 - y) log sigmoid(-x)), without overflow
            return xp.maximum(pred, 0) - pred * label + xp.log1p(xp.exp(-abs(pred)))
        self.log_p, self.log_q = xp.log(pred), xp.log(1 - pred)
        return -(label * self.log_p + (1 - label) * self.log_q)

    def grads(self, xp, g):
        x, y = self.pred, self.label
        if self.with_logits:
            e = xp.exp(-abs(x))
            sig = xp.where(x >= 0, 1 / (1 + e), e / (1 + e))
            return g * (sig - y), -g * x
        return g * (x - y) / (x * (1 - x)), -g * (self.log_p - self.log_q)


def _pair_loss(op, pred, label):
    pred, label = _pair(pred, label)
    return apply(op, pred, label)


def l1_loss(pred, label, reduction="mean"):
    """Mean (or sum, or each) absolute error ``|pred - label|``."""
    _check_reduction(reduction, "l1_loss")
    return _pair_loss(_L1(reduction, "l1_loss"), pred, label)


def square_loss(pred, label, reduction="mean"):
    """Mean (or sum, or each) squared error ``(pred - label) ** 2``."""
    _check_reduction(reduction, "square_loss")
    return _pair_loss(_Square(reduction, "square_loss"), pred, label)


mse_loss = square_loss


def smooth_l1_loss(pred, label, beta=1.0, reduction="mean"):
    """Huber-like loss: ``0.5 d**2 / beta`` where ``|d| < beta``, else ``|d| - beta / 2``."""
    _check_reduction(reduction, "smooth_l1_loss")
    if beta < 0:
        raise ValueError(f"smooth_l1_loss: beta must be >= 0, got {beta}")
    return _pair_loss(_SmoothL1(reduction, "smooth_l1_loss", float(beta)), pred, label)


def binary_cross_entropy(pred, label, with_logits=True, reduction="mean"):
    """Binary cross entropy of ``pred`` (logits by default, else probabilities) and ``label``."""
    _check_reduction(reduction, "binary_cross_entropy")
    op = _BinaryCrossEntropy(reduction, "binary_cross_entropy", bool(with_logits))
    return _pair_loss(op, pred, label)


class _CrossEntropy(Op):
    """Log-softmax and negative log-likelihood (with label smoothing) fused with the reduction."""

    def __init__(self, axis, with_logits, label_smooth, reduction):
        self.axis, self.with_logits, self.ls, self.reduction = \
            axis, with_logits, label_smooth, reduction

    def _at_label(self, xp, a):
        """``a`` at each position's label class, keeping the class axis (size 1)."""
        if self.rows is not None:
            return a[self.rows, self.label][:, None]
        return xp.take_along_axis(a, self.label_k, self.axis)

    def _sub_at_label(self, xp, a, value):
        """``a[label] -= value`` in place along the class axis."""
        if self.rows is not None:
            a[self.rows, self.label] -= value
        else:
            classes = xp.arange(a.shape[self.axis]).reshape((-1,) + (1,) * (a.ndim - self.axis - 1))
            a -= (classes == self.label_k) * a.dtype.type(value)

    def forward(self, pred, label):
        xp = xp_of(pred)
        ax, ls = self.axis, self.ls
        expected = pred.shape[:ax] + pred.shape[ax + 1:]
        if label.shape != expected:
            raise ValueError(
                f"cross_entropy: label of shape {label.shape} does not match pred of shape "
                f"{pred.shape}: expected pred's shape without axis {ax}, {expected}")
        pred = pred if pred.dtype.kind == "f" else pred.astype(np.float32)
        if label.dtype.kind not in "iu":
            label = label.astype(np.int64)  # upstream takes float class ids too
        classes = pred.shape[ax]
        if label.size and (label.min() < 0 or label.max() >= classes):
            raise ValueError(f"cross_entropy: labels must be in [0, {classes}), got values in "
                             f"[{label.min()}, {label.max()}]")
        self.label = label
        # (N, C) with classes on axis 1, the common case: plain fancy indexing is fastest
        self.rows = xp.arange(pred.shape[0]) if pred.ndim == 2 and ax == 1 else None
        self.label_k = label.reshape(pred.shape[:ax] + (1,) + pred.shape[ax + 1:])
        if self.with_logits:
            m = pred.max(ax, keepdims=True)
            e = xp.exp(pred - m)
            s = e.sum(ax, keepdims=True)
            loss = m + xp.log(s) - (1 - ls) * self._at_label(xp, pred)
            if ls:
                loss -= (ls / classes) * pred.sum(ax, keepdims=True)
            self.e, self.s = e, s
        else:
            self.pred = pred
            loss = -(1 - ls) * xp.log(self._at_label(xp, pred))
            if ls:
                loss -= (ls / classes) * xp.log(pred).sum(ax, keepdims=True)
        self.loss_shape = expected
        return _reduce(loss.reshape(expected), self.reduction)

    def backward(self, g):
        xp = xp_of(g)
        ax, ls = self.axis, self.ls
        g = _spread(g, self.loss_shape, self.reduction).reshape(self.label_k.shape)
        if self.with_logits:
            grad = self.e / self.s  # softmax
            self._sub_at_label(xp, grad, 1 - ls)
            if ls:
                grad -= ls / grad.shape[ax]
        else:
            p = self.pred
            grad = xp.zeros_like(p)
            self._sub_at_label(xp, grad, 1 - ls)
            grad /= self._at_label(xp, p)
            if ls:
                grad -= ls / p.shape[ax] / p
        grad *= g
        return grad, None

    def grad_graph(self, inputs, outputs, grads):
        from .elemwise import exp

        xp = xp_of(self.label_k)
        pred, g = inputs[0], grads[0]
        ax, ls = self.axis, self.ls
        if pred.dtype.kind != "f":
            pred = pred.astype("float32")
        classes = pred.shape[ax]
        # the target distribution: (1 - ls) at the label, plus ls spread over the classes
        shape = pred.shape
        onehot = (xp.arange(classes).reshape((-1,) + (1,) * (len(shape) - ax - 1))
                  == self.label_k)
        target = Tensor._wrap((onehot * (1 - ls) + ls / classes).astype(pred.dtype),
                              pred._device)
        if self.reduction == "none":
            gk = g.reshape(self.label_k.shape)
        else:
            gk = g.reshape((1,) * len(shape))
            if self.reduction == "mean":
                gk = gk / max(math.prod(self.loss_shape), 1)
        if self.with_logits:
            m = Tensor._wrap(self.e.dtype.type(0) + pred._data.max(ax, keepdims=True),
                             pred._device)  # a shift for stability: softmax does not change
            e = exp(pred - m)
            grad = e / e.sum(ax, keepdims=True) - target
        else:
            grad = -target / pred
        return grad * gk, None


def cross_entropy(pred, label, axis=1, with_logits=True, label_smooth=0, reduction="mean"):
    """Multi-class cross entropy of ``pred`` (logits by default) and integer class ``label``.

    ``label`` has ``pred``'s shape without ``axis``. ``label_smooth`` a mixes the one-hot target
    with the uniform one: ``(1 - a) * onehot + a / C``.
    """
    _check_reduction(reduction, "cross_entropy")
    pred = pred if isinstance(pred, Tensor) else Tensor(pred)
    label = label if isinstance(label, Tensor) else Tensor(label)
    if pred.ndim != label.ndim + 1:
        raise ValueError(f"cross_entropy: label must have one dim less than pred, got pred of "
                         f"shape {pred.shape} and label of shape {label.shape}")
    if not -pred.ndim <= axis < pred.ndim:
        raise ValueError(f"cross_entropy: axis {axis} is out of range for pred of shape "
                         f"{pred.shape}")
    ls = float(label_smooth or 0)
    if not 0 <= ls <= 1:
        raise ValueError(f"cross_entropy: label_smooth must be in [0, 1], got {label_smooth}")
    op = _CrossEntropy(int(axis) % pred.ndim, bool(with_logits), ls, reduction)
    return apply(op, pred, label)


def cross_entropy_with_softmax(pred, label, axis=1, label_smooth=0):
    """0.x name: the mean cross entropy of logits ``pred`` and class ``label``."""
    return cross_entropy(pred, label, axis=axis, label_smooth=label_smooth)


def hinge_loss(pred, label, norm="L1", reduction="mean"):
    """SVM hinge loss of (N, C) ``pred`` and +-1 ``label``: per sample,
    ``sum_j max(0, 1 - pred * label)`` ("L1") or the sum of its squares ("L2")."""
    from .nn import relu  # nn imports this module; by call time both are loaded

    _check_reduction(reduction, "hinge_loss")
    norm = str(norm).upper()
    if norm not in ("L1", "L2"):
        raise ValueError(f"hinge_loss: norm must be 'L1' or 'L2', got {norm!r}")
    pred, label = _pair(pred, label)
    if pred.ndim != 2 or pred.shape != label.shape:
        raise ValueError(f"hinge_loss: expected pred and label of the same shape (N, C), got "
                         f"{pred.shape} and {label.shape}")
    margin = relu(1.0 - pred * label)
    loss = (margin if norm == "L1" else margin * margin).sum(axis=1)
    if reduction == "none":
        return loss
    return loss.mean() if reduction == "mean" else loss.sum()
