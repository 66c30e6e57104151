"""Connectionist temporal classification loss (F.nn.ctc_loss), by alpha/beta recursions."""
import numpy as np

from ..core.dispatch import Op, apply
from ..core.dtype_rules import complex_error
from ..core.ops import ArgumentTypeError, xp_of
from ..core.tensor import Tensor
from ._args import _int

__all__ = ["ctc_loss"]


class _CTC(Op):
    """Connectionist temporal classification: -log p(label | pred) by the alpha (forward)
    recursion over the blank-interleaved label in log space; backward by the beta recursion
    (each frame's posterior over label positions). Inputs: probabilities (T, N, C), the frame
    counts (N,), the labels ((N, S) padded, or 1-d packed) and the label lengths (N,); all of
    them are op inputs, so that megengine.jit.trace replays each call's values."""

    def __init__(self, blank, reduction):
        self.blank, self.reduction = blank, reduction

    def _interleave(self, xp, label, lengths, n):
        """The labels as (N, 2S+1) rows: blank, l1, blank, l2, ..., blank (blank-padded)."""
        label = label.astype(np.int64)
        if label.ndim == 1:  # packed: sample k's labels start after those of samples < k
            pos = xp.arange(int(lengths.max()))
            idx = (xp.cumsum(lengths) - lengths)[:, None] + pos
            label = xp.where(pos < lengths[:, None], label[xp.minimum(idx, label.size - 1)],
                             self.blank)
        ext = xp.full((n, 2 * label.shape[1] + 1), self.blank, np.int64)
        ext[:, 1::2] = label
        return ext

    def forward(self, pred, pred_lengths, label, label_lengths):
        xp = xp_of(pred)
        t_max, n, _ = pred.shape
        tiny = np.finfo(pred.dtype).tiny  # as upstream: log of probabilities clamped at tiny
        logp = xp.log(xp.maximum(pred, tiny).astype(np.float64))
        label_lengths = label_lengths.astype(np.int64)
        ext = self._interleave(xp, label, label_lengths, n)
        lp = xp.take_along_axis(logp, xp.broadcast_to(ext[None], (t_max,) + ext.shape), 2)
        prev2 = xp.concatenate([xp.full((n, 2), -1, np.int64), ext[:, :-2]], axis=1)
        # a position may jump over the one before it when its symbol differs from the one two
        # back (so never onto a blank); a label equal to `blank` is a symbol like any other, as
        # in upstream's recursion and torch's
        self.skip = ext != prev2
        last = (pred_lengths.astype(np.int64) - 1)
        ends = xp.stack([2 * label_lengths, 2 * label_lengths - 1], axis=1).astype(np.int64)
        alpha = xp.full((t_max, n, ext.shape[1]), -np.inf)
        # upstream clamps the first frame's probabilities at tiny, the positions a path cannot
        # start from included, so that an alignment too long for its frames costs a finite loss
        # (-log(2 * tiny) = 86.6 at one frame) where torch's is inf. Its alpha is float32 for
        # every pred dtype, so that tiny is float32's (float16's, 6e-5, gave paths that skip
        # the first symbols a weight that visibly changed ordinary losses)
        alpha[0] = np.log(np.finfo(np.float32).tiny)
        alpha[0, :, :2] = lp[0, :, :2]
        for t in range(1, t_max):  # one vector step per frame
            a = alpha[t - 1]
            alpha[t] = self._combine(xp, a, self._shift(xp, a, 1),
                                     xp.where(self.skip, self._shift(xp, a, 2), -np.inf)) + lp[t]
        final = alpha[last, xp.arange(n)]  # (N, L) at each sample's last frame
        log_p = xp.logaddexp(*(xp.take_along_axis(final, ends[:, i:i + 1], 1)[:, 0]
                               for i in range(2)))
        self.saved = (pred, lp, alpha, log_p, last, ends, ext, label_lengths)
        loss = -log_p
        if self.reduction == "none":
            return loss.astype(pred.dtype)
        if self.reduction == "sum":
            return xp.asarray(loss.sum(), pred.dtype)
        return xp.asarray((loss / label_lengths).mean(), pred.dtype)

    @staticmethod
    def _shift(xp, a, k):
        return xp.concatenate([xp.full(a.shape[:-1] + (k,), -np.inf), a[..., :-k]], axis=-1)

    @staticmethod
    def _combine(xp, *terms):
        m = terms[0]
        for t in terms[1:]:
            m = xp.maximum(m, t)
        safe = xp.where(xp.isfinite(m), m, 0)
        with np.errstate(divide="ignore"):
            return xp.log(sum(xp.exp(t - safe) for t in terms)) + safe

    def backward(self, g):
        pred, lp, alpha, log_p, last, ends, ext, label_lengths = self.saved
        xp = xp_of(g)
        t_max, n, c = pred.shape
        width = ext.shape[1]
        init = xp.full((n, width), -np.inf)
        init[xp.arange(n)[:, None], ends] = 0.0
        # beta: log-sum of the paths from (t, s) to the end, the emission at t excluded
        beta = xp.full((t_max, n, width), -np.inf)
        nxt = None
        skip_next = self._shift_left(xp, self.skip, 2, False)
        for t in range(t_max - 1, -1, -1):
            if nxt is None:
                rec = xp.full((n, width), -np.inf)
            else:
                e = lp[t + 1] + nxt
                rec = self._combine(xp, e, self._shift_left(xp, e, 1, -np.inf),
                                    xp.where(skip_next, self._shift_left(xp, e, 2, -np.inf),
                                             -np.inf))
            cur = xp.where((t == last)[:, None], init, xp.where((t < last)[:, None], rec, -np.inf))
            beta[t] = nxt = cur
        with np.errstate(invalid="ignore"):
            post = xp.exp(alpha + beta - log_p[None, :, None])  # (T, N, L) occupancy
        post[0, :, 2:] = 0  # the clamped starts are constants, not emissions of pred[0]
        gl = g.astype(np.float64)
        if self.reduction == "mean":
            gl = gl / (n * label_lengths.astype(np.float64))
        elif self.reduction == "sum":
            gl = xp.broadcast_to(gl, (n,))
        weight = post * gl[None, :, None]
        flat = (xp.arange(t_max)[:, None, None] * n + xp.arange(n)[None, :, None]) * c + ext[None]
        occ = xp.bincount(flat.ravel(), weights=weight.ravel(), minlength=t_max * n * c)
        tiny = np.finfo(pred.dtype).tiny
        grad = -occ.reshape(t_max, n, c) / xp.maximum(pred, tiny) * (pred > tiny)
        return grad.astype(pred.dtype), None, None, None

    @staticmethod
    def _shift_left(xp, a, k, fill):
        pad = xp.full(a.shape[:-1] + (k,), fill, a.dtype)
        return xp.concatenate([a[..., k:], pad], axis=-1)


def ctc_loss(pred, pred_lengths, label, label_lengths, blank=0, reduction="mean"):
    """Connectionist Temporal Classification loss, as upstream's F.nn.ctc_loss.

    ``pred``: probabilities (after softmax, not log) of shape (T, N, C), blank included;
    ``pred_lengths`` (N,): frames used per sample; ``label``: (N, S) padded, or the (sum of
    label_lengths,) concatenation, without blanks; ``label_lengths`` (N,), each >= 1.
    ``reduction``: "mean" (each loss divided by its label length, then averaged), "sum", "none".
    Differentiable in ``pred``.
    """
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"ctc_loss: reduction must be one of ('none', 'mean', 'sum'), got "
                         f"{reduction!r}")
    pred = pred if isinstance(pred, Tensor) else Tensor(pred)
    if pred.ndim != 3:
        raise ValueError(f"ctc_loss: pred must be (T, N, C) probabilities, got shape {pred.shape}")
    if pred.dtype.kind == "c":
        raise complex_error("ctc_loss", pred.dtype)
    if pred.dtype.kind != "f":  # integers (a quantized tensor: its values) in float32
        pred = pred.astype(np.float32)
    t_max, n, c = pred.shape

    def as_ints(x, name):  # Tensors stay op inputs; numbers and arrays become int32 tensors
        if isinstance(x, Tensor):
            return x
        try:
            return Tensor(np.asarray(x, np.int32), device=pred.device)
        except (TypeError, ValueError):  # (numpy's words named no argument)
            raise ArgumentTypeError(f"ctc_loss: {name} must be integers, got {x!r}") from None

    pred_lengths = as_ints(pred_lengths, "pred_lengths")
    label_lengths, label = as_ints(label_lengths, "label_lengths"), as_ints(label, "label")
    # argument checks on the host (values, not just shapes: as upstream's asserts)
    lengths = pred_lengths._peek().astype(np.int64).reshape(-1)  # checks only: unseen by
    lab_len = label_lengths._peek().astype(np.int64).reshape(-1)  # jit.trace (op inputs)
    if lengths.size != n or lab_len.size != n:
        raise ValueError(f"ctc_loss: pred_lengths and label_lengths need one entry per sample "
                         f"({n}), got {lengths.size} and {lab_len.size}")
    blank = _int(blank, "blank", "ctc_loss")
    if not 0 <= blank < c:
        raise ValueError(f"ctc_loss: blank must be in [0, {c}), got {blank}")
    if lengths.min() < 1 or lengths.max() > t_max:
        raise ValueError(f"ctc_loss: pred_lengths must be in [1, {t_max}], got {lengths.tolist()}")
    if lab_len.min() < 1:
        raise ValueError(f"ctc_loss: label_lengths must be positive, got {lab_len.tolist()}")
    if label.ndim == 1:
        if label.size != lab_len.sum():
            raise ValueError(f"ctc_loss: a 1-d label must hold sum(label_lengths) = "
                             f"{lab_len.sum()} values, got {label.size}")
    elif label.ndim != 2 or label.shape[0] != n or lab_len.max() > label.shape[1]:
        raise ValueError(f"ctc_loss: label must be (N, S) with S >= max(label_lengths) or 1-d, "
                         f"got shape {label.shape}")
    return apply(_CTC(int(blank), reduction), pred, pred_lengths, label, label_lengths)

