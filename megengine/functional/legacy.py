"""MegEngine 0.x functional names that 1.x removed, each defined by its 1.x equivalent.

Programs written for 0.x (2020: the model zoo's first training scripts, ``F.accuracy`` inside
``@trace``) run unchanged. Only names whose 0.x meaning is unambiguous and does not clash with a
1.x name are here; ``docs/api/legacy.rst`` lists each with its 1.x spelling. 0.x names whose
meaning changed in 1.x (``F.cross_entropy`` took probabilities in 0.x, logits in 1.x) keep the
1.x meaning and are listed there as differences.
"""
import numpy as np

from ..core._trace_option import is_int
from ..core.ops import AxisError, ShapeError
from ..core.tensor import Tensor
from ._args import _as_float, _real, _tensor
from .creation import copy
from .elemwise import abs as _abs
from .elemwise import acos, asin, clip, div, maximum, mul, pow, sub
from .math import matmul, topk
from .nn import indexing_one_hot
from .normalization import batch_norm
from .tensor import _axis, transpose, where, zeros_like
from .utils import topk_accuracy

__all__ = [
    "accuracy", "add_axis", "add_update", "arccos", "arcsin", "batch_norm2d", "batched_matrix_mul", "clamp",
    "dimshuffle", "divide", "identity", "matrix_mul", "multiply", "nll_loss", "power",
    "remove_axis", "shapeof", "subtract", "top_k", "triplet_margin_loss", "zero_grad",
]

# ----- renamed in 1.x, same meaning -----
arccos = acos
arcsin = asin
divide = div
multiply = mul
subtract = sub
top_k = topk  # 0.x: the k smallest (descending=True: largest) of each row, sorted, int32 indices
dimshuffle = transpose  # 1.x's transpose still takes 0.x's pattern ('x' adds a size-1 dim)


def clamp(inp, lower=None, upper=None):
    """0.x ``F.clamp``: 1.x ``F.clip``."""
    return clip(inp, lower, upper)


def power(inp, power):
    """0.x ``F.power(inp, power)``: 1.x ``F.pow``."""
    return pow(inp, power)


def matrix_mul(inp1, inp2):
    """0.x ``F.matrix_mul``: the product of two matrices (1.x ``F.matmul``)."""
    inp1, inp2 = _tensor(inp1), _tensor(inp2)
    if inp1.ndim != 2 or inp2.ndim != 2:
        raise ValueError(f"matrix_mul: both inputs must be 2-d, got shapes {inp1.shape} and "
                         f"{inp2.shape}; F.matmul takes any number of batch dims")
    return matmul(inp1, inp2)


def batched_matrix_mul(inp1, inp2):
    """0.x ``F.batched_matrix_mul``: (B, n, m) @ (B, m, p) (1.x ``F.matmul``)."""
    inp1, inp2 = _tensor(inp1), _tensor(inp2)
    if inp1.ndim != 3 or inp2.ndim != 3 or inp1.shape[0] != inp2.shape[0]:
        raise ValueError(f"batched_matrix_mul: inputs must be 3-d with one batch size, got shapes "
                         f"{inp1.shape} and {inp2.shape}; F.matmul broadcasts batch dims")
    return matmul(inp1, inp2)


def _axis_list(axis, what):
    try:
        return [int(axis)]
    except TypeError:
        pass
    axes = list(axis)
    if not all(is_int(a) for a in axes):
        raise TypeError(f"{what}: axis must be an int or a sequence of ints, got {axis!r}")
    return [int(a) for a in axes]


def add_axis(inp, axis):
    """0.x ``F.add_axis``: insert size-1 dims at ``axis`` (1.x ``F.expand_dims``).

    A sequence is applied one position at a time, as 0.x did: ``add_axis(x, (0, 2))`` on shape
    ``(2,)`` gives ``(1, 2, 1)``. A negative position counts from the end of the result.
    """
    inp = _tensor(inp)
    shape = list(inp.shape)
    for a in _axis_list(axis, "add_axis"):
        n = len(shape) + 1
        if not -n <= a < n:
            raise ValueError(f"add_axis: position {a} is out of range for a result of {n} dims")
        shape.insert(a % n, 1)
    return inp.reshape(shape)


def remove_axis(inp, axis):
    """0.x ``F.remove_axis``: drop size-1 dims at ``axis`` (1.x ``F.squeeze``).

    A sequence is applied one axis at a time on the shrinking shape, as 0.x did:
    ``remove_axis(x, (0, 0, 1))`` on shape ``(1, 1, 2, 1)`` gives ``(2,)``.
    """
    inp = _tensor(inp)
    shape = list(inp.shape)
    for a in _axis_list(axis, "remove_axis"):
        if not -len(shape) <= a < len(shape):
            raise ValueError(f"remove_axis: axis {a} is out of range for shape {tuple(shape)}")
        if shape[a] != 1:
            raise ValueError(f"remove_axis: axis {a} of shape {tuple(shape)} has size {shape[a]}, "
                             "not 1; only size-1 dims can be removed")
        del shape[a]
    return inp.reshape(shape)


def shapeof(x, axis=None):
    """0.x ``F.shapeof``: the shape of ``x`` as an int32 Tensor (one dim's size with ``axis``).

    1.x: ``x.shape`` (a tuple of ints).
    """
    x = _tensor(x)
    shape = np.asarray(x.shape, dtype=np.int32)
    if axis is not None:  # (numpy's index error named neither shapeof nor axis)
        shape = shape[_axis(axis, x.ndim, "shapeof")]
    return Tensor(shape, dtype="int32", device=x.device)


def accuracy(logits, target, topk=1):
    """0.x ``F.accuracy``: the fraction of rows whose ``target`` is among the top-``k`` logits.

    1.x ``F.topk_accuracy``, which gives, as 0.x's, one Tensor for ``topk`` of one element (an
    int or a 1-tuple) and a list of them for a longer sequence.
    """
    return topk_accuracy(logits, target, topk if is_int(topk) or not hasattr(topk, "__iter__")
                         else tuple(topk))  # (topk_accuracy names a topk of another type)


def zero_grad(inp):
    """0.x ``F.zero_grad``: ``inp`` as a constant for autodiff (1.x ``inp.detach()``)."""
    return _tensor(inp).detach()


def add_update(dest, delta, *, alpha=1.0, beta=1.0, bias=0.0):
    """0.x ``F.add_update``: ``dest = alpha * dest + beta * delta + bias`` in place; returns dest.

    The parameter keeps its identity (optimizers and GradManagers that hold it see the new
    value); ``delta`` broadcasts to ``dest``'s shape. No gradient flows through the update, as
    in 0.x. 1.x spells it ``dest._reset(...)`` / ``dest.set_value(...)``. With ``alpha=0`` (the
    weight clipping of MegEngine/Models' WGAN) the old value is dropped, not multiplied by 0, so
    an inf or nan in ``dest`` does not survive the assignment.
    """
    if not isinstance(dest, Tensor):
        raise TypeError(f"add_update: dest must be a megengine Tensor (it is updated in place), "
                        f"got {type(dest).__name__}")
    # no detach(): _reset copies the value into dest's storage and keeps dest's own graph
    # entry, so no gradient can flow through the update anyway
    delta = _tensor(delta)
    value = delta * beta if beta != 1 else delta
    if alpha != 0:
        value = dest * alpha + value
    if bias != 0:
        value = value + bias
    if tuple(value.shape) != tuple(dest.shape):
        from .tensor import broadcast_to

        try:
            value = broadcast_to(value, dest.shape)
        except ValueError as err:
            raise ValueError(f"add_update: delta of shape {tuple(delta.shape)} does not "
                             f"broadcast to dest's shape {tuple(dest.shape)}") from err
    dest._reset(value.astype(dest.dtype) if value.dtype != dest.dtype else value)
    return dest


def identity(inp):
    """0.x ``F.identity``: a new Tensor with ``inp``'s value and dtype (1.x ``F.copy`` /
    ``M.Identity``)."""
    return copy(_tensor(inp))


def batch_norm2d(inp, running_mean, running_var, weight, bias, training=False, momentum=0.9,
                 eps=1e-5):
    """0.x ``F.batch_norm2d``: 1.x ``F.batch_norm`` on NCHW input, arguments by position."""
    inp = _tensor(inp)
    if inp.ndim != 4:
        raise ValueError(f"batch_norm2d: input must be NCHW (4-d), got shape {inp.shape}; "
                         "F.batch_norm takes any number of dims")
    return batch_norm(inp, running_mean, running_var, weight, bias, training=training,
                      momentum=momentum, eps=eps)


def nll_loss(pred, label, axis=1, ignore_index=-1):
    """0.x ``F.nll_loss``: minus the mean of ``pred`` (log-probabilities) at ``label`` along
    ``axis``, over the labels that are not ``ignore_index`` (0.x's default -1)."""
    pred, label = _tensor(pred), _tensor(label)
    if pred.ndim != label.ndim + 1:
        raise ValueError(f"nll_loss: label must have one dim less than pred, got shapes "
                         f"{label.shape} and {pred.shape}")
    keep = label != ignore_index
    try:
        picked = indexing_one_hot(pred, label * keep.astype(label.dtype), axis)
    except (IndexError, ValueError):  # (in the words of indexing_one_hot's src and index)
        error = _nll_loss_label_error(pred, label, keep, axis, ignore_index)
        if error is None:
            raise
        raise error from None
    # an ignored label reads nothing: a NaN or infinity there (its class 0 is read) stays out,
    # as torch's (a product by the mask made 0 * nan of it: the loss was NaN)
    kept = where(keep, picked, zeros_like(picked))
    return -kept.sum() / maximum(keep.astype(pred.dtype).sum(), 1.0)


def _nll_loss_label_error(pred, label, keep, axis, ignore_index):
    """What is wrong with `nll_loss`'s ``axis``, ``label`` or ``ignore_index`` where
    indexing_one_hot refused the label they make, in nll_loss's words, or None: looked for only
    then, so a call that succeeds runs none of these checks."""
    if keep.shape != label.shape:  # (a sequence broadcast against the label)
        return TypeError(f"nll_loss: ignore_index must be a number, got {ignore_index!r}")
    try:
        axis = _axis(axis, pred.ndim, "nll_loss")
    except AxisError as e:
        return e
    if label.shape != pred.shape[:axis] + pred.shape[axis + 1:]:
        return ShapeError(f"nll_loss: label of shape {label.shape} must be the shape of pred "
                          f"{pred.shape} without axis {axis}")
    kept = label.numpy()[keep.numpy()]
    n = pred.shape[axis]
    if kept.size and (kept.min() < 0 or kept.max() >= n):
        return IndexError(f"nll_loss: label values must be in [0, {n}) or be ignore_index "
                          f"({ignore_index!r}), got min {kept.min()} and max {kept.max()}")
    return None


def triplet_margin_loss(anchor, positive, negative, margin=1.0, p=2):
    """0.x ``F.triplet_margin_loss``: mean of ``max(|a - p|_p - |a - n|_p + margin, 0)`` over
    rows of (N, D) inputs."""
    # (a float function: a quantized input's values, not its saturating stored differences)
    anchor, positive, negative = (_as_float(_tensor(t), "triplet_margin_loss")
                                  for t in (anchor, positive, negative))
    if not (anchor.ndim == 2 and anchor.shape == positive.shape == negative.shape):
        raise ValueError(f"triplet_margin_loss: anchor, positive and negative must be (N, D) of "
                         f"one shape, got {anchor.shape}, {positive.shape}, {negative.shape}")
    if not _real(p, "p", "triplet_margin_loss") > 0:
        raise ValueError(f"triplet_margin_loss: the norm degree p must be > 0, got {p}")
    half = all(t.dtype == np.float16 for t in (anchor, positive, negative))
    if half:
        # computed in float32 and rounded once, as F.nn.cross_entropy: in float16 the
        # distances near 3 round to steps of 0.002 before d_pos - d_neg cancels them
        anchor, positive, negative = (t.astype(np.float32) for t in (anchor, positive, negative))
    d_pos = pow(pow(_abs(anchor - positive), p).sum(axis=1), 1.0 / p)
    d_neg = pow(pow(_abs(anchor - negative), p).sum(axis=1), 1.0 / p)
    if not isinstance(margin, Tensor):  # (a Tensor margin stays an operand)
        margin = _real(margin, "margin", "triplet_margin_loss")
    loss = maximum(d_pos - d_neg + margin, 0.0).mean()
    return loss.astype(np.float16) if half else loss
