"""Loss functions (F.loss, also spelled F.nn.<name>): cross entropy, BCE, L1, square, hinge."""
import math

import numpy as np

from ..core import amp as _amp
from ..core.dispatch import FLOAT16, KERNEL_FLOATS, Op, apply, declare_fresh_gradient
from ..core.dtype import float_value
from ..core.dtype_rules import complex_error, no_order
from ..core.fused import fused_kernel, use_fused
from ..core.ops import (ArgumentError, BroadcastError, ShapeError, acc_dtype, acc_sum, div_count, t_unbroadcast,
                        unbroadcast, xp_of)
from ..core.tensor import Tensor, _operand, promote_types
from . import _aten
from ._args import _UNSIGNED, _as_float, _out_of_range, _real
from .elemwise import log1p_array

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
        return xp.asarray(acc_sum(loss), dtype=loss.dtype)
    # sum / size: ndarray.mean goes through a slower Python-level wrapper; float16 adds in
    # float32 and is divided before its rounding (see acc_sum; its sum may pass float16's max)
    total = loss.sum(dtype=acc_dtype(loss.dtype))
    return xp.asarray(total / max(loss.size, 1),
                      dtype=loss.dtype if loss.dtype.kind == "f" else np.float32)


def _spread(g, shape, reduction, broadcast=True):
    """The gradient of each unreduced loss element, from the reduced loss's gradient ``g``
    (not ``broadcast``: still 0-d, for a caller that multiplies it into an array of ``shape``)."""
    if reduction == "none":
        return g
    if reduction == "mean":
        g = div_count(g, max(math.prod(shape), 1))
    return xp_of(g).broadcast_to(g, shape) if broadcast else g


def _pred_label(pred, label):
    """Both operands as Tensors; a Python number takes the other side's dtype rules."""
    if isinstance(pred, Tensor):
        return pred, _operand(label, pred)
    label = label if isinstance(label, Tensor) else Tensor(label)
    return _operand(pred, label), label


_ATEN_REDUCTION = {"none": 0, "mean": 1, "sum": 2}
_INT64 = np.dtype(np.int64)  # ATen's class index dtype


class LabelRangeError(ValueError, RuntimeError):
    """A ``cross_entropy`` label outside ``[0, C)``. A ValueError is what the mistake is;
    upstream 1.13 refuses such labels with a RuntimeError (its one-hot lookup's assertion: a
    negative label, an int64 one) or computes with them (an int32 label equal to ``C`` of a 4-d
    input gave a negative loss, measured): this is both, so either ``except`` catches it."""


class _PairLoss(Op):
    """An element-wise loss of (pred, label) with broadcasting, reduced in the same op.

    Subclasses naming ``aten_loss`` (ATen's fused loss and its ``<name>_backward``) run on it
    for float32/float64 numpy arrays of one shape with enough values (``aten_forward_min``,
    ``aten_backward_min``): one pass over the data where numpy takes one per step. Measured
    with one thread on 512K float32 values, forward (mean): smooth L1 148 us against numpy's
    531 (with its branch-free formula; 2.6 ms with ``where``), squared error 144 against 267.
    CUDA arrays of those dtypes and one shape take ATen's loss at any size (where torch has
    CUDA): the array code is a kernel per step, forward and backward (of a (64, 10) prediction:
    squared error 8 kernels against ATen's 3, smooth L1 14 against 3, BCE with logits 18
    against 6, `benchmarks/count_launches.py`), and a small step on a GPU is bound by the
    host's work per launch. Broadcast labels, integers and float16 keep the array code."""

    aten_loss = None
    # the fewest values for which the forward / the backward take ATen: on few values its calls'
    # fixed costs decide (8K float32 values, forward + backward through a GradManager: squared
    # error 1.16x torch on ATen against 0.86-1.02x on numpy; 512K: 0.86-0.95x against 1.23-1.47x)
    aten_forward_min = aten_backward_min = 65536
    # whether ``grads`` multiplies g into an array of the loss's shape, so that a reduced
    # loss's 0-d gradient needs no broadcast view first (numpy's broadcast_to: ~3 us of Python
    # a call, a third of a small loss's backward)
    grads_broadcast_g = False
    tp = None  # the torch views of pred and label, when the forward ran on ATen
    # numpy's float16 loops convert one element at a time, and round each step: float16 in
    # float32 (`Op`; ATen's fused loss where float32 takes it), rounded once, as torch's CPU
    # kernels compute float16 (numpy's passes left squared errors' gradients up to 7 float16
    # steps off, BCE's 6630). One thread, forward and backward of (512, 512), mean: squared
    # error 22-24 ms before, 0.46 after; L1 4.5-4.9, 0.53 (float32 0.4)
    half_in_float32 = True

    def __init__(self, reduction, what):
        self.reduction, self.what = reduction, what

    def computes_half(self, arrays):
        # at any size, not only from `HALF_MIN` values (`Op.computes_half`): a loss's steps
        # cancel (BCE with logits' x - x * y rounded per step in float16 was 6.7 float16 steps
        # off at x 3.973, y 0.9595: fuzz seed 111617), and a small loss's two casts cost ~2 us
        for a in arrays:
            if a.dtype is not FLOAT16 or type(a) is not np.ndarray:
                return False
        return True

    def aten_args(self):
        """ATen's arguments after (pred, label, reduction)."""
        return ()

    def aten_call(self, tp, tl, reduction):
        """ATen's fused loss of the torch views ``tp`` and ``tl`` (``reduction``: ATen's code)."""
        return _aten.op(self.aten_loss)(tp, tl, reduction, *self.aten_args())

    def forward(self, pred, label):
        dtype = promote_types(pred.dtype, label.dtype)
        if dtype.kind == "c":  # (its mean would be cast to float, dropping the imaginary part)
            raise complex_error(self.what, dtype)
        if dtype.metadata is not None:  # one quantized dtype: a loss of the values
            pred, label, dtype = float_value(pred), float_value(label), np.dtype(np.float32)
        pred, label = pred.astype(dtype, copy=False), label.astype(dtype, copy=False)
        self.shapes = (pred.shape, label.shape)
        if (self.aten_loss is not None and pred.size and pred.shape == label.shape
                and (pred.size >= self.aten_forward_min or type(pred) is not np.ndarray)
                and dtype in KERNEL_FLOATS and _aten.use_aten(pred, "pair_loss")):
            self.loss_shape, self.loss_dtype = pred.shape, dtype
            self.arrays = pred, label  # for a backward on numpy (fewer values)
            self.tp, self.tl = _aten.view(pred), _aten.view(label)
            return _aten.array(self.aten_call(self.tp, self.tl, _ATEN_REDUCTION[self.reduction]))
        return self._array_forward(pred, label)

    def _array_forward(self, pred, label):
        """The loss of ``pred`` and ``label`` (of one float dtype) by the array code."""
        try:
            loss = self.elementwise(xp_of(pred), pred, label)
        except ValueError:  # (upstream's elementwise shape check raises RuntimeError)
            raise BroadcastError(f"{self.what}: pred of shape {pred.shape} and label of shape "
                                 f"{label.shape} do not broadcast") from None
        self.loss_shape = loss.shape
        return _reduce(loss, self.reduction)

    def backward(self, g):
        needs = self.needs_input_grad
        if self.tp is not None:
            pred, label = self.arrays
            if pred.size >= self.aten_backward_min or type(pred) is not np.ndarray:
                return self._backward_aten(g, needs)
            self.diff = pred - label  # what the array code's forward keeps for its backward
        g = _spread(g, self.loss_shape, self.reduction, not self.grads_broadcast_g)
        gp, gl = self.grads(xp_of(g), g)
        return (unbroadcast(gp, self.shapes[0]) if needs[0] else None,
                unbroadcast(gl, self.shapes[1]) if needs[1] and gl is not None else None)

    def _backward_aten(self, g, needs):
        tp = self.tp
        # g: the loss's gradient, 0-d for "mean" and "sum" (maybe a numpy scalar or another
        # dtype), or of the loss's shape for "none" (a copy where its layout is not plain)
        dtype = self.loss_dtype
        xp = xp_of(self.arrays[0])
        g = xp.ascontiguousarray(g, dtype=dtype) if g.ndim else xp.asarray(g, dtype=dtype)
        back = getattr(_aten.aten(), self.aten_loss + "_backward")
        gp = _aten.array(back(_aten.view(g), tp, self.tl, _ATEN_REDUCTION[self.reduction],
                              *self.aten_args()))
        # pred's gradient is a new buffer nothing else sees: .grad may take it without a copy
        return (declare_fresh_gradient(gp) if needs[0] else None,
                xp.negative(gp) if needs[1] else None)

    def grad_graph(self, inputs, outputs, grads):
        """`backward` with Tensor arithmetic (each loss's ``graph_grads``), recorded so that
        it can be differentiated again: MAML's meta-gradient through a regression loss."""
        pred, label = inputs
        dtype = promote_types(pred.dtype, label.dtype)
        pred, label = pred.astype(dtype), label.astype(dtype)
        g = grads[0]
        if self.reduction == "mean":
            g = div_count(g, max(math.prod(self.loss_shape), 1))
        gp, gl = self.graph_grads(pred, label, g)
        needs = self.needs_input_grad
        return (t_unbroadcast(gp, tuple(self.shapes[0])) if needs[0] else None,
                t_unbroadcast(gl, tuple(self.shapes[1])) if needs[1] else None)


class _L1(_PairLoss):
    grads_broadcast_g = True

    def elementwise(self, xp, pred, label):
        if pred.dtype == np.bool_:  # (numpy refuses bool subtraction with its own words)
            raise TypeError("l1_loss: pred and label are bool, which upstream's pred - label "
                            "refuses; convert them with .astype('float32') (|pred - label| of "
                            "bools is pred ^ label)")
        self.diff = pred - label
        return abs(self.diff)

    def grads(self, xp, g):
        gp = g * xp.sign(self.diff)
        return gp, (-gp if self.needs_input_grad[1] else None)

    def graph_grads(self, pred, label, g):
        from .math import sign

        gp = g * sign(pred - label)
        return gp, -gp


class _Square(_PairLoss):
    autocast = "high"  # megengine.amp.autocast: float32, as upstream's pow
    grads_broadcast_g = True

    aten_loss = "mse_loss"

    def elementwise(self, xp, pred, label):
        if pred.dtype.kind in "iub":  # upstream squares with `**`, which gives integers float32
            pred, label = pred.astype(np.float32), label.astype(np.float32)
        self.diff = pred - label
        return self.diff * self.diff

    def grads(self, xp, g):
        gp = 2 * g * self.diff
        return gp, (-gp if self.needs_input_grad[1] else None)

    def graph_grads(self, pred, label, g):
        gp = 2 * g * (pred - label)
        return gp, -gp


class _SmoothL1(_PairLoss):
    """Float inputs without a branch: with m = min(|d|, beta), the loss is
    ``|d| - m + 0.5 m**2 / beta`` (``0.5 d**2 / beta`` inside, ``|d| - beta / 2`` outside) and
    its gradient ``clip(d / beta, -1, 1)``. numpy's ``where`` on a mask that changes from
    element to element measured ~1.1 ms on 512K float32 values (a branch per element), about
    as long as the other steps together; ``clip`` with both bounds runs vectorised (60 us)."""

    aten_loss = "smooth_l1_loss"
    grads_broadcast_g = True
    # ATen's fused forward beats numpy's five passes at any size (8K values: 0.96x torch against
    # 1.86x with where, ~1.35x branch-free); its backward only on many values
    aten_forward_min = 0

    def __init__(self, reduction, what, beta):
        super().__init__(reduction, what)
        self.beta = beta

    def aten_args(self):
        return (self.beta,)

    def elementwise(self, xp, pred, label):
        if pred.dtype.kind in "iub":  # a float function: integers compute in float32
            pred, label = pred.astype(np.float32), label.astype(np.float32)
        d = self.diff = pred - label
        ad = abs(d)
        beta = self.beta
        if beta == 0:  # nothing is inside: the loss is L1
            return ad
        m = xp.clip(ad, 0, beta)
        loss = ad - m
        m *= m
        m *= 0.5 / beta
        loss += m
        return loss

    def grads(self, xp, g):
        d, beta = self.diff, self.beta
        if beta == 0:
            slope = xp.sign(d)
        else:  # d / beta inside, its sign outside (at |d| == beta the two agree)
            slope = d * (1 / beta)
            xp.clip(slope, -1, 1, out=slope)
        gp = g * slope
        return gp, (-gp if self.needs_input_grad[1] else None)

    def graph_grads(self, pred, label, g):
        from .math import sign

        d = pred - label
        # the branch taken is locally constant in d: a mask, not a differentiable input
        inside = abs(d._data) < self.beta
        inside = Tensor._wrap(inside.astype(d.dtype), d._device)
        gp = g * (d * (inside / max(self.beta, 1e-12)) + sign(d) * (1 - inside))
        return gp, -gp


class _BinaryCrossEntropy(_PairLoss):
    """With logits, float32/float64 numpy operands of one shape from `aten_forward_min` values
    take ATen's fused loss, and its backward ATen's sigmoid: numpy's float32 ``log1p`` is not
    vectorised (512K values: 8-11 ms against ATen's 1.6), and its ``exp`` takes twice ATen's
    time. Measured with one thread, float32, forward (mean) numpy against ATen: 128 values
    21 us against 27, 1024 34 against 31, 8192 123 against 60, 512K 7.4-11.7 ms against 2.7-3.0;
    backward 8192 values 27 us against 18, 64K 157 against 91 (`bench_ops.py --case bce_logits`
    has the whole op's figures). The array code with ATen's log1p (`log1p_array`, what a
    broadcast label takes) measured 3.0-3.3 ms at 512K values. Probabilities keep the array
    code (ATen's binary_cross_entropy clamps its logs at -100, upstream's formula does not)."""
    autocast = "high"  # megengine.amp.autocast: float32, as upstream's exp and log
    aten_forward_min = 1024
    aten_backward_min = 0  # (ATen's sigmoid wins at any size the forward took ATen at)

    def __init__(self, reduction, what, with_logits):
        super().__init__(reduction, what)
        self.with_logits = with_logits
        if with_logits:
            self.aten_loss = "binary_cross_entropy_with_logits"

    def aten_call(self, tp, tl, reduction):
        return _aten.op(self.aten_loss)(tp, tl, None, None, reduction)  # (no weights)

    def forward(self, pred, label):
        out = super().forward(pred, label)
        if self.tp is not None and self.with_logits and type(out) is np.ndarray and \
                not math.isfinite(out.sum()):
            # ATen's fused loss, torch's (1 - y) x + softplus(-x), gives NaN where an infinite
            # logit meets the other label (x = -inf, y = 1); the array code weighs each side
            # as upstream does (inf there): it computes a loss that is not finite again (on
            # the CPU: on a GPU the check would wait for the device at every call)
            self.tp = self.tl = None
            out = self._array_forward(*self.arrays)
        return out

    def _backward_aten(self, g, needs):
        # the array code's gradients (`grads`) with sigmoid(x) from ATen's vectorised kernel;
        # it is 0 or 1 where numpy's exp under- or overflows, as the array code's limit
        x, y = self.arrays
        g = _spread(g, self.loss_shape, self.reduction, broadcast=False)
        gp = None
        if needs[0]:
            if _use_logits_kernel(x, y, g):  # CUDA: one kernel (ATen's sigmoids and the
                gp = _logits_grad_kernel()(x, y, g)  # products: eight)
            else:
                sigmoid = _aten.ops.sigmoid
                gp = _logits_gradient(_aten.array(sigmoid(self.tp)),
                                      _aten.array(sigmoid(-self.tp)), y, g)
            gp = declare_fresh_gradient(gp)  # (a new buffer: .grad may take it uncopied)
        return gp, (-g * x if needs[1] else None)

    def elementwise(self, xp, pred, label):
        if pred.dtype.kind != "f":
            pred, label = pred.astype(np.float32), label.astype(np.float32)
        self.pred, self.label = pred, label
        if self.with_logits:
            # -(y log sigmoid(x) + (1 - y) log sigmoid(-x)), without overflow: y softplus(-x)
            # + (1 - y) softplus(x), whose log1p(exp(-|x|)) parts are one. Each label weighs
            # its own side, as upstream's: x = inf with y = 0 is inf (max(x, 0) - x y, the form
            # before, gave inf - inf = NaN there; x = -inf with y = 1 inf too).
            # (log1p_array: ATen's where numpy's unvectorised float32 log1p would run)
            return label * xp.maximum(-pred, 0) + (1 - label) * xp.maximum(pred, 0) + \
                log1p_array(xp, xp.exp(-abs(pred)))
        self.log_p, self.log_q = xp.log(pred), xp.log(1 - pred)
        return -(label * self.log_p + (1 - label) * self.log_q)

    def grads(self, xp, g):
        x, y = self.pred, self.label
        needs = self.needs_input_grad
        if self.with_logits:
            if _use_logits_kernel(x, y, g):  # CUDA: one kernel (the array code launches eleven)
                return _logits_grad_kernel()(x, y, g), (-g * x if needs[1] else None)
            # sigmoid(x) as 1 / (1 + exp(-x)) and sigmoid(-x) as 1 / (1 + exp(x)), in place:
            # exp overflows to inf beyond about 88 (float32), and 1 / inf is the limit 0.
            # (numpy's where between two stable forms cost a branch per element: 1.1 ms on
            # 512K values, the rest of the backward about 0.3 ms.)
            sig, rev = xp.negative(x), x.copy()
            with np.errstate(over="ignore"):
                xp.exp(sig, out=sig)
                xp.exp(rev, out=rev)
            sig += 1
            rev += 1
            xp.reciprocal(sig, out=sig)
            xp.reciprocal(rev, out=rev)
            return _logits_gradient(sig, rev, y, g), (-g * x if needs[1] else None)
        return g * (x - y) / (x * (1 - x)), (-g * (self.log_p - self.log_q) if needs[1] else None)

    def graph_grads(self, pred, label, g):
        from .elemwise import log
        from .nn import sigmoid

        if pred.dtype.kind != "f":
            pred, label = pred.astype("float32"), label.astype("float32")
        if self.with_logits:
            return g * ((1 - label) * sigmoid(pred) - label * sigmoid(-pred)), -g * pred
        return (g * (pred - label) / (pred * (1 - pred)),
                -g * (log(pred) - log(1 - pred)))


def _logits_gradient(sig, rev, y, g):
    """The gradient of binary cross entropy with logits x, ``g * ((1 - y) sigmoid(x) - y
    sigmoid(-x))`` from ``sig`` = sigmoid(x) and ``rev`` = sigmoid(-x) (fresh arrays, written
    in place when the shapes allow). It equals ``g * (sigmoid(x) - y)``, but that difference
    cancels to rounding noise where a confident prediction meets its label (x = 15, y = 1:
    -2.38e-7 for -2.40e-7, 0.6% off; x = 20: 0.0 for -2.1e-9), which Adam and Adagrad scale up
    to whole steps; each term here is exact to rounding. Upstream's loss, ``-(y logsigmoid(x)
    + (1 - y) logsigmoid(-x))``, differentiates to the same two terms."""
    if sig.shape == g.shape == y.shape:
        rev *= y
        sig *= 1 - y
        sig -= rev
        sig *= g
        return sig
    return ((1 - y) * sig - y * rev) * g  # (pred broadcast against a larger label)


def _use_logits_kernel(x, y, g):
    """CuPy arrays of one float32/float64 dtype take `_logits_grad_kernel`."""
    return use_fused(x, y) and use_fused(x, g)


# `_logits_gradient` of the array code as one CUDA kernel (its steps in its order; the operands
# broadcast as there)
_logits_grad_kernel = fused_kernel(
    "T x, T y, T g", "T gx",
    "T sig = (T)1 / ((T)1 + exp(-x)); T rev = (T)1 / ((T)1 + exp(x)); "
    "gx = (sig * ((T)1 - y) - rev * y) * g", "megengine_bce_logits_grad")


def _pair_loss(op, pred, label, autocast_dtype=None):
    pred, label = _pred_label(pred, label)
    if autocast_dtype is not None and _low_high_precision(op):
        return _autocast_loss(op, (pred, label), autocast_dtype(pred.dtype, label.dtype))
    return apply(op, pred, label)


def _low_high_precision(op):
    """Whether autocast is on for ``op`` with a high_prec_dtype other than float32."""
    return _amp.autocasts(op) and _amp._get_amp_high_prec_dtype() != "float32"


def _autocast_loss(op, inputs, dtype):
    """A loss under an autocast whose high_prec_dtype is not float32, as upstream gives it:
    upstream composes its losses of elementwise ops (the float functions among them compute in
    high_prec_dtype) and reduces with ``mean``, which always gives float32. So the unreduced
    loss is computed (in float32 here, rounded once), cast to ``dtype``, the dtype upstream's
    elementwise steps end in, and then reduced: "mean" in float32, "sum" in ``dtype``."""
    reduction, op.reduction = op.reduction, "none"
    high = _high(np.float32)

    @_amp.not_covered  # (the casts are ours: the division of the mean stays float32)
    def compute():
        loss = apply(op, *[t.astype(high) if t.dtype.kind == "f" and t.dtype != high else t
                           for t in inputs]).astype(dtype)
        if reduction == "mean":
            return loss.astype(np.float32).mean()
        return loss.sum() if reduction == "sum" else loss

    return compute()


def _high(*dtypes):
    """high_prec_dtype promoted with ``dtypes``: what an upstream elementwise step of a float
    function (log, exp, pow) mixed with operands of ``dtypes`` gives under autocast."""
    result = _amp._engine_dtype(_amp._high_prec_dtype, "high_prec_dtype")
    for dtype in dtypes:
        result = promote_types(result, np.dtype(dtype))
    return result


def l1_loss(pred, label, reduction="mean"):
    """Mean (or sum, or each) absolute error ``|pred - label|``."""
    _check_reduction(reduction, "l1_loss")
    return _pair_loss(_L1(reduction, "l1_loss"), pred, label)


def square_loss(pred, label, reduction="mean"):
    """Mean (or sum, or each) squared error ``(pred - label) ** 2``."""
    _check_reduction(reduction, "square_loss")
    # (autocast: upstream's (pred - label) ** 2, in high_prec_dtype)
    return _pair_loss(_Square(reduction, "square_loss"), pred, label,
                      autocast_dtype=lambda pred_dtype, label_dtype: _high())


mse_loss = square_loss


def smooth_l1_loss(pred, label, beta=1.0, reduction="mean"):
    """Huber-like loss: ``0.5 d**2 / beta`` where ``|d| < beta``, else ``|d| - beta / 2``."""
    _check_reduction(reduction, "smooth_l1_loss")
    beta = _real(beta, "beta", "smooth_l1_loss")
    if beta < 0:
        raise ValueError(f"smooth_l1_loss: beta must be >= 0, got {beta}")
    return _pair_loss(_SmoothL1(reduction, "smooth_l1_loss", float(beta)), pred, label)


def binary_cross_entropy(pred, label, with_logits=True, reduction="mean"):
    """Binary cross entropy of ``pred`` (logits by default, else probabilities) and ``label``."""
    _check_reduction(reduction, "binary_cross_entropy")
    op = _BinaryCrossEntropy(reduction, "binary_cross_entropy", bool(with_logits))
    # (autocast: upstream's label * logsigmoid(pred) + ..., the label's dtype and the high one)
    return _pair_loss(op, pred, label,
                      autocast_dtype=lambda pred_dtype, label_dtype: _high(label_dtype))


# With a gradient, rows shorter than this stay on numpy: ATen's log_softmax is slow on rows
# narrower than its vector width (one thread, float32: 1024 x 10 229 us against numpy's 107,
# 256 x 10 55 against 38; 64 x 16 7 against 19, 64 x 100 10 against 19) ...
_ATEN_MIN_CLASSES = 16
# ... unless there are so few values that the calls' fixed costs decide (8 x 10 7.5 us against
# 12.2, 16 x 10 12.9 against 18.0, 64 x 10 27.5 against 26.4). Without a gradient ATen's fused
# cross entropy (`_loss_rows_aten`, no log_softmax output) is the faster at every width: one
# thread, 2 shared cores, nine paired rounds each, ATen / numpy median: 64 x 10 0.61, 256 x 10
# 0.59, 1024 x 10 0.50, 4096 x 10 0.45, 256 x 4 0.71, 1024 x 2 0.45, 1024 x 15 0.41.
_ATEN_MAX_NARROW = 320
_NO_IGNORE_INDEX = -2 ** 63  # ATen's ignore_index that no label of 32 bits cast to int64 is
_ROWS = {}  # n -> numpy arange(n), read-only: the row indices of (N, C) cross entropy
_ROW_STARTS = {}  # (n, classes) -> numpy arange(n) * classes, read-only


def _checking_view(label):
    """The unsigned dtype to view ``label`` as so that indexing with it range-checks it (a
    negative label becomes an index past the end), or None where that does not hold: labels of
    64 bits, whose huge unsigned values numpy casts back to negative indices, which wrap."""
    return _UNSIGNED.get(label.dtype) if label.dtype.itemsize < 8 else None


def _max(a, axis=None, keepdims=False):
    return a.max(axis, keepdims=keepdims)


def _sum(a, axis=None, keepdims=False):
    return a.sum(axis, keepdims=keepdims)


def _row_starts(xp, n, classes):
    """``arange(n) * classes``: where each row of a C-contiguous (n, classes) array starts in
    its flat view (cached for numpy, as `_rows`)."""
    if xp is not np:
        return xp.arange(0, n * classes, classes)
    key = (n, classes)
    starts = _ROW_STARTS.get(key)
    if starts is None:
        if len(_ROW_STARTS) > 64:  # many shapes: keep the cache small
            _ROW_STARTS.clear()
        starts = _ROW_STARTS[key] = np.arange(0, n * classes, classes)
        starts.flags.writeable = False
    return starts


def _rows(xp, n):
    if xp is not np:
        return xp.arange(n)
    rows = _ROWS.get(n)
    if rows is None:
        if len(_ROWS) > 64:  # many batch sizes: keep the cache small
            _ROWS.clear()
        rows = _ROWS[n] = np.arange(n)
        rows.flags.writeable = False
    return rows


class _CrossEntropy(Op):
    """Log-softmax and negative log-likelihood (with label smoothing) fused with the reduction."""
    autocast = "high"  # megengine.amp.autocast: float32, as upstream's exp and log

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
        ax, ls, shape = self.axis, self.ls, pred.shape
        expected = shape[:ax] + shape[ax + 1:]
        if label.shape != expected:
            raise ShapeError(  # (upstream's indexing_one_hot shape assertion: RuntimeError)
                f"cross_entropy: label of shape {label.shape} does not match pred of shape "
                f"{shape}: expected pred's shape without axis {ax}, {expected}")
        if pred.dtype.kind != "f":  # (_as_float's first test: no call for float logits)
            pred = _as_float(pred, "cross_entropy")
        if label.dtype.kind not in "iu":
            label = label.astype(np.int64)  # upstream takes float class ids too
        classes = shape[ax]
        if (type(pred) is np.ndarray and ax == 1 and len(shape) == 2 and self.with_logits
                and shape[0] and "cross_entropy" not in _aten._forced):  # is_forced inline
            # evaluation, the loss alone: ATen's fused cross entropy at any row width
            fused = not self.needs_input_grad[0] and not ls and label.dtype.itemsize <= 4
            # training on narrow rows: the bridge's host kernel, one call each way
            if (classes < _ATEN_MIN_CLASSES and not fused and not ls and self.reduction == "mean"
                    and pred.dtype in KERNEL_FLOATS and _aten.use_aten(pred, "cross_entropy")):
                loss = self._forward_rows_bridge(pred, label, expected)
                if loss is not None:
                    return loss
            # (the cheap tests first: the narrow rows that stay on numpy skip the use_aten call)
            if ((fused or classes >= _ATEN_MIN_CLASSES or pred.size <= _ATEN_MAX_NARROW)
                    and pred.dtype in KERNEL_FLOATS and _aten.use_aten(pred, "cross_entropy")):
                if fused:
                    return self._loss_rows_aten(pred, label)
                # (N, C) logits on the CPU: ATen's log_softmax, the rest in numpy
                self.loss_shape, self.label, self.rows = expected, label, _rows(np, pred.shape[0])
                return self._forward_rows_aten(pred, label)
            if not ls and self.reduction == "mean":
                # the training case on the array code: its range check is the label lookup
                self.loss_shape, self.label, self.rows = expected, label, _rows(np, pred.shape[0])
                unsigned = _UNSIGNED.get(label.dtype) if label.dtype.itemsize < 8 else None
                if unsigned is None and _out_of_range(label, classes):  # _checking_view inline
                    self._raise_out_of_range(label, classes)
                return self._forward_mean_2d(np, pred, unsigned)
        xp = xp_of(pred)
        # The range check is kept on every device. On a GPU it costs one reduction kernel and a
        # device-to-host sync (the host waits for the work queued before it, a few tens of us),
        # but an out-of-range label would otherwise make ATen's nll_loss kernel fail a device-side
        # assert, which poisons the CUDA context for the whole process instead of raising here.
        if _out_of_range(label, classes):
            self._raise_out_of_range(label, classes)
        self.label_k = label.reshape(pred.shape[:ax] + (1,) + pred.shape[ax + 1:])
        self.loss_shape = expected
        # numpy arrays come here only for what the (N, C) paths above do not take, and take
        # ATen's general path only when a test forces it (cpu_worth=False)
        if pred.size and _aten.use_aten(pred, "cross_entropy", cpu_worth=False):
            return self._forward_aten(pred, label)
        self.label = label
        # (N, C) with classes on axis 1, the common case: plain fancy indexing is fastest
        self.rows = _rows(xp, pred.shape[0]) if pred.ndim == 2 and ax == 1 else None
        if self.rows is not None and self.with_logits and not ls and self.reduction == "mean" \
                and pred.shape[0]:
            return self._forward_mean_2d(xp, pred)
        if self.with_logits:
            m = pred.max(ax, keepdims=True)
            e = xp.exp(pred - m)
            s = acc_sum(e, ax, keepdims=True)
            lse = m + xp.log(s)
            loss = lse - self._at_label(xp, pred)
            if ls:
                # differences from the log-sum-exp, each >= 0, weighed: subtracting the weighed
                # logits from it cancelled large terms (one class gave -3e-7 for 0, float16
                # fuzz case 51959 of cross_entropy)
                loss = (1 - ls) * loss + ls * (lse - acc_sum(pred, ax, keepdims=True) / classes)
            self.e, self.s = e, s
        else:
            self.pred = pred
            loss = -(1 - ls) * xp.log(self._at_label(xp, pred))
            if ls:
                loss -= (ls / classes) * acc_sum(xp.log(pred), ax, keepdims=True)
        self.loss_shape = expected
        return _reduce(loss.reshape(expected), self.reduction)

    def _forward_mean_2d(self, xp, pred, unsigned=None):
        """The training case, (N, C) logits and mean reduction, in few array passes: the
        per-row shift is kept in ``e``, which becomes exp(shifted) in place (what backward's
        softmax needs).

        ``unsigned``: the unsigned dtype of the labels' width, when the labels were not
        range-checked yet (numpy): seen as unsigned, a negative label becomes a huge index, so
        the label lookup raises for every label outside [0, C), without a reduction of its own.
        """
        rows, label = self.rows, self.label
        # numpy: the ufuncs' reduce directly (ndarray.max/sum go through a Python wrapper)
        maximum, add = (np.maximum.reduce, np.add.reduce) if xp is np else (_max, _sum)
        e = pred - maximum(pred, 1, keepdims=True)
        if unsigned is None:  # checked by the caller
            at_label = e[rows, label]
        else:
            try:
                at_label = e[rows, label.view(unsigned)]
            except IndexError:
                at_label = None
            if at_label is None:  # raised here, not in the except block: no chained traceback
                self._raise_out_of_range(label, e.shape[1])
        xp.exp(e, out=e)
        s = add(e, 1)
        # mean over rows of log(s) - shifted[label]
        per_row = xp.log(s)
        per_row -= at_label
        acc = acc_dtype(per_row.dtype)  # float16 adds in float32: its sum may pass float16's max
        loss = add(per_row if acc is None else per_row.astype(acc)) / pred.shape[0]
        self.e, self.s, self.fused = e, s, True
        return xp.asarray(loss, dtype=pred.dtype)

    def _forward_rows_aten(self, pred, label):
        """(N, C) logits of a numpy array, any reduction and label smoothing: log-softmax by
        ATen's vectorised kernel (one pass, where numpy takes four: max, subtract, exp, sum),
        through zero-copy views; the lookup at the labels, the smoothing term and the reduction
        in numpy on ATen's output.

        Measured with one thread against numpy's (N, C) mean path (forward): 256 x 1000
        float32 178 us against 285 (torch's cross_entropy 165); 64 x 32000 1.57 ms against
        2.08 (torch 1.47); rows of fewer than `_ATEN_MIN_CLASSES` classes stay on numpy (unless
        there are few).
        Backward takes numpy's exp of the kept log-probabilities, which measured faster than
        torch's exp with one thread (256K float32 values: 126 us against 227).
        """
        n, classes = pred.shape
        logp = _aten.array(_aten.op("_log_softmax")(_aten.view(pred), 1, False))
        unsigned = _checking_view(label)
        if unsigned is None:  # not a native fixed-width integer (e.g. big-endian labels)
            if _out_of_range(label, classes):
                self._raise_out_of_range(label, classes)
            at_label = logp[self.rows, label]
        else:
            # seen as unsigned, a negative label is a huge index: the lookup raises for every
            # label outside [0, C), so it is the range check too
            try:
                at_label = logp[self.rows, label.view(unsigned)]
            except IndexError:
                at_label = None
            if at_label is None:  # raised here, not in the except block: no chained traceback
                self._raise_out_of_range(label, classes)
        self.logp = logp
        ls, add = self.ls, np.add.reduce
        if self.reduction == "none":
            loss = at_label if not ls else at_label * (1 - ls) + add(logp, 1) * (ls / classes)
            return np.negative(loss, out=loss) if not ls else -loss
        total = add(at_label)
        if ls:  # the smoothing term: the mean log-probability of each row, summed over rows
            total = total * (1 - ls) + add(logp, None) * (ls / classes)
        if self.reduction == "mean":
            total = total / n
        return np.asarray(-total, dtype=pred.dtype)

    def _forward_rows_bridge(self, pred, label, loss_shape):
        """The training case of narrow rows (fewer than `_ATEN_MIN_CLASSES` classes, the mean,
        no smoothing) of numpy arrays: one call of the torch bridge's host kernel (``ce_rows``,
        csrc/torch_bridge.cpp) in place of ATen's log_softmax and the numpy lookup and sum, or
        of numpy's five passes; `_backward_mean_2d` takes its ``ce_rows_grad``. None where the
        kernel leaves the arrays (another label dtype, a label out of range, which the array
        code reports).

        Measured with one thread, a step of the loss alone under a GradManager (forward and
        backward), against the path each size took before (ATen's log_softmax up to 320
        values, numpy's above): 8 x 10 22.4 us against 38.3, 64 x 10 26.0 against 47.7,
        1024 x 10 81.6 against 135.4, 1024 x 2 38.3 against 96.6; in a batch-8 hybrid LeNet
        step the loss's forward took 23.3 us instead of 58.8 (benchmarks/HISTORY.md)."""
        done = _aten.bridge().ce_rows(pred, label)
        if done is None:
            return None
        self.loss_shape, self.label, self.rows = loss_shape, label, None
        self.e, self.s, loss = done
        self.fused = "bridge"
        return loss

    def _loss_rows_aten(self, pred, label):
        """The loss alone (no gradient wanted: evaluation), by ATen's fused cross entropy in one
        call instead of log-softmax, an array view and the lookup in numpy (64 x 16: 6.9 us
        against numpy's 18.8). Not with label smoothing, which ATen composes of several
        kernels (8 x 10: 1.18x torch's time this way, 0.84-0.94x on numpy).
        Labels of at most 32 bits: as int64 none of them is ATen's ignore_index (int64's
        minimum), so every label counts, and one outside [0, C) makes ATen raise."""
        # (the bridge's C functions without `view`'s and `array`'s frames: `use_aten` loaded
        # them, and these are CPU arrays, which simulated CUDA's routing leaves alone)
        view = _aten._to_torch
        try:
            loss = _aten.ops.cross_entropy_loss(view(pred), view(label.astype(_INT64)), None,
                                                _ATEN_REDUCTION[self.reduction],
                                                _NO_IGNORE_INDEX, 0.0)
        except IndexError:  # ATen's "Target 7 is out of bounds."
            loss = None
        if loss is None:  # raised here, not in the except block: no chained traceback
            self._raise_out_of_range(label, pred.shape[1])
        return _aten._from_torch(loss)

    def _backward_rows_aten(self, g):
        """softmax - target, times the gradient of each row's loss: the softmax is exp of the
        kept log-probabilities, the target (1 - ls) at the label plus ls / C everywhere."""
        logp, ls = self.logp, self.ls
        n, classes = logp.shape
        grad = np.exp(logp)  # a new buffer: the gradient is made in place in it
        if grad.flags.c_contiguous:  # one flat index array instead of (rows, label) pairs
            grad.reshape(-1)[_row_starts(np, n, classes) + self.label] -= 1 - ls
        else:
            grad[self.rows, self.label] -= 1 - ls
        if ls:
            grad -= ls / classes
        if self.reduction == "none":
            grad *= g.reshape(n, 1)
        else:
            grad *= div_count(g, n) if self.reduction == "mean" else g
        return grad, None

    @staticmethod
    def _raise_out_of_range(label, classes):
        raise LabelRangeError(f"cross_entropy: labels must be in [0, {classes}), got values in "
                              f"[{label.min()}, {label.max()}]")

    def _backward_mean_2d(self, g):
        e = self.e
        if self.fused == "bridge":
            grad = _aten.bridge().ce_rows_grad(e, self.s, self.label, g)
            if grad is not None:
                return grad, None
            self.rows = _rows(np, e.shape[0])  # (a gradient of another dtype: the array code)
        n, classes = e.shape
        grad = e / self.s[:, None]  # softmax
        if not grad.flags.c_contiguous:
            # a transposed pred gives an F-ordered e (numpy keeps the input's layout), whose
            # reshape(-1) below is a copy: the -1 at the labels would be lost
            grad = xp_of(e).ascontiguousarray(grad)
        # minus one at each row's label, through flat indices into the C-contiguous (N, C)
        # softmax: one index array instead of (rows, label) pairs, measured ~2 us less warm
        # and more right after torch's backward
        grad.reshape(-1)[_row_starts(xp_of(e), n, classes) + self.label] -= 1
        grad *= div_count(g, n)  # g: the 0-d gradient of the mean
        return grad, None

    # ----- CUDA: ATen's kernels -----
    # pred is seen as (A, C, B), C the classes (axis `axis`), A and B the dims before and after
    # it: a reshape, never a transpose. B == 1 is nll_loss's (N, C) case; otherwise (A, C, B, 1)
    # is nll_loss2d's (N, C, H, W). Forward: log_softmax (or log, for probabilities) and
    # nll_loss, with its reduction; backward: nll_loss_backward and log_softmax's backward.
    # Label smoothing adds -(ls / C) * sum_c(log p_c), a sum over the class axis.
    _ATEN_REDUCTION = _ATEN_REDUCTION

    def _forward_aten(self, pred, label):
        aten, ax, ls = _aten.aten(), self.axis, self.ls
        # contiguous: log() keeps a strided pred's strides, and nll_loss's backward refuses a
        # strided input ("grad_input must be contiguous")
        pred = xp_of(pred).ascontiguousarray(pred)
        classes = pred.shape[ax]
        before, after = math.prod(pred.shape[:ax]), math.prod(pred.shape[ax + 1:])
        shape = (before, classes) if after == 1 else (before, classes, after, 1)
        tp = _aten.view(pred).reshape(shape)
        # nll_loss takes int64 class ids only (one cast kernel for megengine's int32 labels)
        target = _aten.view(label.astype(np.int64, copy=False)).reshape(
            (before,) if after == 1 else (before, after, 1))
        logp = aten._log_softmax(tp, 1, False) if self.with_logits else aten.log(tp)
        nll = aten.nll_loss_forward if after == 1 else aten.nll_loss2d_forward
        red = self._ATEN_REDUCTION[self.reduction]
        # ignore_index -100 never matches: the labels were checked to be in [0, C)
        loss, self.total_weight = nll(logp, target, None, red, -100)
        if ls:
            smooth = logp.sum(1)
            if self.reduction != "none":
                smooth = smooth.sum() if self.reduction == "sum" else smooth.mean()
            loss = loss.mul(1 - ls).sub_(smooth, alpha=ls / classes)
        self.target, self.logp, self.aten_shape = target, logp, shape
        self.tp, self.pred_shape, self.pred_dtype = \
            (None if self.with_logits else tp), pred.shape, pred.dtype
        return _aten.array(loss.reshape(self.loss_shape if self.reduction == "none" else ()))

    def _backward_aten(self, g):
        aten, ls = _aten.aten(), self.ls
        tp, logp, shape = self.tp, self.logp, self.aten_shape
        tg = _aten.view(xp_of(g).asarray(g, self.pred_dtype))  # g may be a numpy scalar
        if self.reduction == "none":
            tg = tg.reshape(self.target.shape)
        nll_back = aten.nll_loss_backward if len(shape) == 2 else aten.nll_loss2d_backward
        # zeros with -g (divided by the count for "mean") at each label
        glogp = nll_back(tg, logp, self.target, None, self._ATEN_REDUCTION[self.reduction], -100,
                         self.total_weight)
        if ls:  # d(loss)/d(log p_c) = (1 - ls) * nll's gradient - (ls / C) * g at every class
            per_item = tg.reshape(shape[:1] + (1,) + shape[2:]) if self.reduction == "none" \
                else tg / (math.prod(self.loss_shape) if self.reduction == "mean" else 1)
            glogp = glogp.mul_(1 - ls).sub_(per_item, alpha=ls / shape[1])
        if self.with_logits:
            grad = aten._log_softmax_backward_data(glogp, logp, 1, logp.dtype)
        elif ls:
            grad = glogp.div_(tp)
        else:
            # nll's gradient is 0 off the label: divide by p at the label only, as the array
            # path does (0 / p would be NaN where a non-label p is 0)
            at_label = tp.gather(1, self.target.unsqueeze(1))
            grad = glogp.div_(at_label)
        # a new buffer nothing else sees: .grad may take it without a copy
        return _aten.fresh_gradient(grad.reshape(self.pred_shape)), None

    fused = False  # set by _forward_mean_2d (True) and _forward_rows_bridge ("bridge")
    logp = None  # set by _forward_aten (a torch tensor) and _forward_rows_aten (an array)
    label_k = None  # the labels with a size-1 class axis; not made by the CPU's (N, C) path

    def backward(self, g):
        if self.fused:
            return self._backward_mean_2d(g)
        if self.logp is not None:
            if type(self.logp) is np.ndarray:
                return self._backward_rows_aten(g)
            return self._backward_aten(g)
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

        label_k = self.label_k
        if label_k is None:  # the CPU's (N, C) path keeps the labels as (N,)
            label_k = self.label[:, None]
        xp = xp_of(label_k)
        pred, g = inputs[0], grads[0]
        ax, ls = self.axis, self.ls
        if pred.dtype.kind != "f":
            pred = pred.astype("float32")
        classes = pred.shape[ax]
        # the target distribution: (1 - ls) at the label, plus ls spread over the classes
        shape = pred.shape
        onehot = (xp.arange(classes).reshape((-1,) + (1,) * (len(shape) - ax - 1))
                  == label_k)
        target = Tensor._wrap((onehot * (1 - ls) + ls / classes).astype(pred.dtype),
                              pred._device)
        if self.reduction == "none":
            gk = g.reshape(label_k.shape)
        else:
            gk = g.reshape((1,) * len(shape))
            if self.reduction == "mean":
                gk = div_count(gk, max(math.prod(self.loss_shape), 1))
        if self.with_logits:
            m = Tensor._wrap(pred._data.max(ax, keepdims=True),
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
    ndim = pred._data.ndim
    if ndim != label._data.ndim + 1:
        raise ArgumentError(f"cross_entropy: label must have one dim less than pred, got pred "
                            f"of shape {pred.shape} and label of shape {label.shape}")
    axis = _axis(axis, ndim, "cross_entropy")
    ls = _real(label_smooth or 0, "label_smooth", "cross_entropy")
    if not 0 <= ls <= 1:
        raise ValueError(f"cross_entropy: label_smooth must be in [0, 1], got {label_smooth}")
    op = _CrossEntropy(axis, bool(with_logits), ls, reduction)
    if _low_high_precision(op):
        # upstream's logsumexp(pred) - pred[label] (float functions in high_prec_dtype, pred's
        # own max added back), log(pred[label]) without logits, and with label smoothing a
        # pred.mean(axis), which is float32
        dtype = np.dtype(np.float32) if ls else _high(pred.dtype) if with_logits else _high()
        return _autocast_loss(op, (pred, label), dtype)
    if pred._data.dtype is FLOAT16 and not _amp.autocasts(op):  # (autocast: float32 out)
        # computed in float32 and rounded once, as torch's kernel: in float16, m + log(s) -
        # pred[label] of logits near 100 loses ~0.03 (upstream's float16 ops round each step)
        return apply(op, pred.astype(np.float32), label).astype(np.float16)
    return apply(op, pred, label)


def cross_entropy_with_softmax(pred, label, axis=1, label_smooth=0):
    """0.x name: the mean cross entropy of logits ``pred`` and class ``label``."""
    return cross_entropy(pred, label, axis=axis, label_smooth=label_smooth)


def hinge_loss(pred, label, norm="L1", reduction="mean"):
    """SVM hinge loss of (N, C, ...) ``pred`` and +-1 ``label``: summed over axis 1,
    ``sum_j max(0, 1 - pred * label)`` ("L1") or the sum of its squares ("L2"); "mean"
    averages the (N, ...) sums, as upstream (whose own tests pass 4-d scores)."""
    from .nn import relu  # nn imports this module; by call time both are loaded

    _check_reduction(reduction, "hinge_loss")
    norm = str(norm).upper()
    if norm not in ("L1", "L2"):
        raise ArgumentError(f"hinge_loss: norm must be 'L1' or 'L2', got {norm!r}")
    pred, label = (t.astype(np.float32) if t.dtype.metadata is not None else t  # (quantized:
                   for t in _pred_label(pred, label))  # the values; q * label mixed dtypes)
    for t in (pred, label):
        if t.dtype.kind == "c":  # (else relu's error would name relu)
            raise no_order("hinge_loss", t.dtype)
    if pred.ndim < 2 or pred.shape != label.shape:
        raise ShapeError(f"hinge_loss: expected pred and label of the same shape (N, C, ...), "
                         f"got {pred.shape} and {label.shape}")
    margin = relu(1.0 - pred * label)
    loss = (margin if norm == "L1" else margin * margin).sum(axis=1)
    if reduction == "none":
        return loss
    return loss.mean() if reduction == "mean" else loss.sum()


# ctc_loss lives in its own file (functional/ctc.py); F.loss.ctc_loss and F.nn.ctc_loss stay
from .ctc import ctc_loss  # noqa: E402

__all__ += ["ctc_loss"]


# Upstream's loss module also holds these functions of F at module level (F.loss.where, ...)
from .activation import logsigmoid, relu  # noqa: E402,F401
from .elemwise import equal, log, logaddexp, maximum  # noqa: E402,F401
from .math import logsumexp  # noqa: E402,F401
from .tensor import (  # noqa: E402,F401
    broadcast_to, cumsum, indexing_one_hot, linspace, ones, where, zeros)
from .tensor import _axis  # noqa: E402  (cross_entropy's axis check, imported as those above)


def __getattr__(name):
    # F.loss.abs is F.abs, as upstream's module holds it; given on lookup only, so that the
    # code above keeps Python's abs of numpy arrays
    if name == "abs":
        from .elemwise import abs

        return abs
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
