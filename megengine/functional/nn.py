"""Neural-network functions (F.nn): softmax, linear, dropout, embedding; re-exports the rest.

Activations live in activation.py, convolution, pooling and normalization in conv.py, pooling.py
and normalization.py, resizing in vision.py; upstream spells them all F.nn.<name> (and
F.<name>), so this module re-exports them.
"""
import math

import numpy as np

from ..core import _rng as _core_rng
from ..core import amp as _amp
from ..core.dispatch import FLOAT16, KERNEL_FLOATS, Op, apply
from ..core.dtype import dtype_name
from ..core.dtype_rules import complex_error
from ..core.fused import fused_kernel, use_fused
from ..core.ops import (ArgumentError, ArgumentTypeError, ShapeError, ShapeOnly, _norm_axes,
                        _product, acc_dtype, acc_sum, add_at, cast, gemm_dtype, grad_matmul,
                        half_operands, xp_of)
from ..core.ops import matmul as _matmul
from ..core.tensor import Tensor, promote_types
from . import _aten
from ._args import _as_float, _bias_widened, _int, _out_of_range, _real, _tensor
# the activations, and every private name of theirs that code, tests, pickles and dumped
# programs (which name ops "megengine.functional.nn:_Relu") look up here
from .activation import (  # noqa: F401
    _AS_A, _AS_P, _ATEN_HALF_FLOATS, _RELU_GRAD, _Activation, _Gelu, _GeluGrad,
    _HSigmoid, _HSwish, _LeakyRelu, _LogSigmoid, _PRelu, _Relu, _Relu6, _Sigmoid, _Silu,
    _Softplus, _aten_gelu, _float_t, _gelu_derivative, _log1p_exp_neg_abs, _mask,
    _normal_cdf, _relu_grad_kernel, _sigmoid, _use_prelu_kernels, _use_relu_kernel, gelu,
    hsigmoid, hswish,
    leaky_relu, logsigmoid, prelu, relu, relu6, sigmoid, silu, softplus)

__all__ = [
    "adaptive_avg_pool2d", "adaptive_max_pool2d", "avg_pool2d", "batch_norm", "conv1d", "conv2d",
    "conv_transpose2d", "cross_entropy_with_softmax", "dropout", "embedding", "gelu",
    "group_norm", "hsigmoid", "hswish", "interpolate", "layer_norm", "leaky_relu", "linear",
    "logsigmoid", "logsoftmax", "max_pool2d",
    "pixel_shuffle", "prelu", "relu", "relu6", "sigmoid", "silu", "softmax", "softplus",
]


# ----- softmax family -----

def _shift(x, axes):
    """The max along ``axes`` that softmax subtracts; an empty input has no max (numpy refuses)
    and no output either, so any array of the right shape serves."""
    return x.max(axes, keepdims=True) if x.size else x.sum(axes, keepdims=True)


def _aten_softmax(x, axes, grad):
    """Whether softmax / log_softmax of ``x`` along ``axes`` takes ATen's forward kernel: over
    one axis, on CUDA always; on the CPU over the last axis (float32, float64) without a
    gradient (``grad``: `_grad_wanted`) whatever the size, with one from 2048 values; and
    float16 always (numpy's float16 loops are not vectorised here, and ATen's kernels compute
    in float32 and round once, as torch; numpy's rounds each pass, up to twice the error).
    Measured on 2 shared cores, one thread: forward alone, us per call, ATen against numpy's
    five passes: (8, 10) 14 against 23, (64, 10) 18 against 30, (1024, 10) 79 against 150,
    (64, 32) 21 against 40 (log_softmax alike). In a training step (forward, then backward by
    `_aten_softmax_backward`'s rule, paired) the ATen forward cost 3-7 % more up to 640 values
    ((8, 10), (64, 10)), the same at 1280-2048 ((128, 10), (64, 32), (32, 64), (16, 128)),
    7-18 % less from 2560 ((256, 10), (512, 10)). float16, one thread, forward and backward:
    (8, 10) 7.7 and 6.1 us on numpy against 1.9 and 2.0 on ATen; (2, 3, 197, 197) 15.6 and
    24.4 ms against 0.21 and 0.06."""
    if len(axes) != 1 or not x.ndim:
        return False
    if x.dtype is FLOAT16:
        return _aten.use_aten(x, "softmax")
    return _aten.use_aten(x, "softmax", cpu_worth=axes[0] == x.ndim - 1
                          and x.dtype in KERNEL_FLOATS and (not grad or x.size >= 2048))


def _grad_wanted(op):
    """Whether the input gradient of softmax / log_softmax op ``op`` is wanted: its
    ``needs_input_grad``, which is empty outside the dispatcher (then it is)."""
    needs = op.needs_input_grad
    return not needs or needs[0]


def _aten_softmax_backward(y, axes):
    """Whether the backward of a softmax / log_softmax whose forward ran ATen's kernel (output
    ``y``) takes ATen's backward kernel too: on CUDA, for float16 and when forced (tests)
    always; on the CPU for rows of 32 or more and 4096 values or more. Below that numpy's
    three-pass formula on ``y`` is the faster, ATen's call costing ~15 us more: one thread, us
    per call, ATen against numpy: (8, 10) 27 against 11, (64, 10) 29 against 15, (256, 10) 39
    against 25, (64, 32) 34 against 19; (1024, 10) 58 against 60 (log_softmax alike)."""
    if type(y) is not np.ndarray or y.dtype is FLOAT16 or _aten.is_forced("softmax"):
        return True
    return y.shape[axes[0]] >= 32 and y.size >= 4096


class _SoftmaxFamily(Op):
    """What softmax and log_softmax share: ATen's forward kernel where `_aten_softmax` takes it,
    and its backward kernel where `_aten_softmax_backward` says; the subclass names the two
    kernels and computes with array code elsewhere."""
    format_rule = "keep"  # how a tensor format label passes (megengine.core.format)
    kernel = backward_kernel = None  # ATen's names (``torch.ops.aten``)

    def __init__(self, axes):
        self.axes = axes
        self.ty = None  # ATen's output, when the backward takes ATen's kernel

    def _aten_forward(self, x):
        """The output of ATen's forward kernel for ``x``, or None where array code computes it."""
        grad = _grad_wanted(self)
        if not _aten_softmax(x, self.axes, grad):
            return None
        ty = getattr(_aten.ops, self.kernel)(_aten.view(x), self.axes[0], False)
        self.y = _aten.array(ty)
        if grad and _aten_softmax_backward(self.y, self.axes):  # (no backward: no test)
            self.ty = ty
        return self.y

    def _aten_backward(self, g):
        ty = self.ty
        return _aten.fresh_gradient(getattr(_aten.aten(), self.backward_kernel)(
            _aten.view(g.astype(self.y.dtype, copy=False)), ty, self.axes[0], ty.dtype))


class _Softmax(_SoftmaxFamily):
    """Softmax along ``axes``. Over one axis on CUDA, and over the last axis (or float16) on
    the CPU: ATen's kernels (`_SoftmaxFamily`); else array code."""
    kernel, backward_kernel = "_softmax", "_softmax_backward_data"

    def forward(self, x):
        x = _as_float(x, self)
        y = self._aten_forward(x)
        if y is not None:
            return y
        e = xp_of(x).exp(x - _shift(x, self.axes))
        e /= acc_sum(e, self.axes, keepdims=True)
        self.y = e
        return e

    def backward(self, g):
        if self.ty is not None:
            return self._aten_backward(g)
        y = self.y
        return y * (g - acc_sum(g * y, self.axes, keepdims=True))

    def grad_graph(self, inputs, outputs, grads):
        y, g = outputs[0], grads[0]
        return (y * (g - (g * y).sum(self.axes, keepdims=True)),)


class _LogSoftmax(_SoftmaxFamily):
    """``x - logsumexp(x)`` along ``axes``; ATen's kernels where softmax takes them
    (`_SoftmaxFamily`)."""
    autocast = "high"  # megengine.amp.autocast: float32, as upstream's exp and log
    kernel, backward_kernel = "_log_softmax", "_log_softmax_backward_data"

    def forward(self, x):
        x = _as_float(x, self)
        y = self._aten_forward(x)
        if y is not None:
            return y
        xp = xp_of(x)
        shifted = x - _shift(x, self.axes)
        if not x.size:  # no output (and the log of an empty sum would warn)
            self.y = shifted
            return shifted
        self.y = shifted - xp.log(acc_sum(xp.exp(shifted), self.axes, keepdims=True))
        return self.y

    def backward(self, g):
        if self.ty is not None:
            return self._aten_backward(g)
        acc = acc_dtype(g.dtype)
        if acc is None:
            return g - xp_of(g).exp(self.y) * g.sum(self.axes, keepdims=True)
        # float16: the sum stays float32 (it may pass float16's max where the result does not)
        s = g.sum(self.axes, keepdims=True, dtype=acc)
        return (g - xp_of(g).exp(self.y) * s).astype(g.dtype)

    def grad_graph(self, inputs, outputs, grads):
        from .elemwise import exp

        g = grads[0]
        return (g - exp(outputs[0]) * g.sum(self.axes, keepdims=True),)


def _get_softmax_axis(ndim):
    # upstream's default: axis 0 for 0-, 1- and 3-d input (C, H, W), else axis 1
    return 0 if ndim in (0, 1, 3) else 1


def _softmax_input(inp, axis, what):
    """(input, axes) of softmax / logsoftmax: an axis named twice is refused, as upstream's
    logsoftmax asserts; a 0-d input is taken as one of shape (1,) (upstream 1.13 measured:
    ``F.softmax(tensor(2.0))`` is ``[1.]``, its logsoftmax ``[0.]``)."""
    inp = _tensor(inp)
    ndim = inp._data.ndim
    if ndim == 0:
        inp, ndim = inp.reshape(1), 1
    return inp, _norm_axes(axis, ndim, what)


def softmax(inp, axis=None):
    """``exp(x) / sum(exp(x))`` along ``axis`` (default: 0 for 0/1/3-d input, else 1)."""
    inp = _tensor(inp)
    if axis is None:
        axis = _get_softmax_axis(inp._data.ndim)
    inp, axes = _softmax_input(inp, axis, "softmax")
    return apply(_Softmax(axes), inp)


def logsoftmax(inp, axis):
    """``log(softmax(x))`` along ``axis``, computed as ``x - logsumexp(x)``."""
    inp, axes = _softmax_input(inp, axis, "logsoftmax")
    op = _LogSoftmax(axes)
    return _amp.promoted_with_inputs(op, apply(op, inp), inp)  # (autocast: upstream's dtype)


# ----- linear -----

def _addmm_serves(x, w, b):
    """Whether `_Linear`'s forward of 2-d CUDA input ``x`` takes ATen's addmm: one
    float16/float32/float64 dtype for the three, a bias of one value per output feature.
    (float16, autocast's: the bias added to the float32 product before its one rounding, as
    the CPU's float16 linear adds it; CuPy's product and sum rounded twice.)"""
    return (type(x) is not np.ndarray and x.ndim == 2
            and (x.dtype in KERNEL_FLOATS or x.dtype is FLOAT16)
            and w.dtype == x.dtype and b.dtype == x.dtype and b.shape == w.shape[:1]
            and _aten.use_aten(x, "gemm"))


class _Linear(Op):
    """``x @ W.T + b`` as one op: one matmul forward, at most two back."""
    holomorphic = True  # complex gradients (core/dispatch.py): bilinear, conjugates nothing

    def forward(self, x, w, b=None):
        if w.ndim != 2 or x.ndim < 1 or x.shape[-1] != w.shape[1]:
            raise ShapeError(
                f"linear: input of shape {x.shape} does not match weight of shape {w.shape}; "
                "expected input (..., in_features) and weight (out_features, in_features)"
            )
        dtype = promote_types(x.dtype, w.dtype) if x.dtype != w.dtype else x.dtype
        dtype = _bias_widened(gemm_dtype(dtype, "linear"), b)  # (int8 gives int32)
        if x.dtype != dtype or w.dtype != dtype:
            x, w = x.astype(dtype, copy=False), w.astype(dtype, copy=False)
        out_shape = None
        if x.ndim > 2:
            # (..., in) as one (rows, in) matrix: one gemm instead of numpy matmul's gemm per
            # leading index (16 x (64, 256) @ (256, 768) took 5.65 ms, one (1024, 256) gemm
            # 4.15). Rows spelled out: -1 is ambiguous for a size-0 input with in == 0. A
            # non-contiguous x is copied here once, and backward reuses that copy.
            out_shape = x.shape[:-1] + (w.shape[0],)
            x = x.reshape(math.prod(x.shape[:-1]), x.shape[-1])
        self.x, self.w, self.out_shape = x, w, out_shape
        if b is not None and _addmm_serves(x, w, b):
            # CUDA: the product and the bias in one kernel (ATen's addmm, whose cuBLASLt call
            # adds the bias in the product's epilogue) where CuPy's product and += are two
            # launches, each of them host time on a GPU that a small step is bound by
            self.b_shape, self.grad_order = b.shape, (2, 0, 1)  # (as below)
            y = _aten.array(_aten.ops.addmm(_aten.view(b), _aten.view(x), _aten.view(w).t()))
            self._keep_what_backward_reads(x, w)
            return y if out_shape is None else y.reshape(out_shape)
        # ndarray.dot is matmul for a 2-d (or 1-d) input, with less dispatch: ~5 us less per
        # call right after torch's convolutions (benchmarks/profile_hybrid_step.py); large
        # products go to ATen (`core.ops.matmul`)
        # float16 with a float16 bias (on the CPU): the float32 product and the bias added
        # before the one rounding, as torch's addmm and the convolutions here; rounded twice, a
        # bias that cancels the product was up to 7 ulps off (float16 fuzz case 53381)
        fused = b is not None and x.dtype is FLOAT16 and b.dtype is FLOAT16 \
            and type(x) is np.ndarray
        y = _matmul(cast(x, np.float32), cast(w.T, np.float32)) if fused else _matmul(x, w.T)
        if b is not None:
            if b.dtype.metadata is not None:  # a quantized bias next to float input: refused,
                promote_types(y.dtype, b.dtype)  # as x + b is (it was added as integers)
            if b.size != w.shape[0] and b.size != 1:
                # (one value, a 0-d or (1,) bias, is added to every feature: upstream adds the
                # bias as x @ W.T + b, which broadcasts it)
                raise ShapeError(f"linear: bias of shape {b.shape} does not match "
                                 f"{w.shape[0]} out_features; give one value per output "
                                 "feature, or a single value for all of them")
            self.b_shape = b.shape
            # upstream's linear is a matmul, then + bias: the bias's gradient is ready first,
            # so its callbacks run before the weight's (as torch's addmm hands them out too)
            self.grad_order = (2, 0, 1)
            if b.dtype != y.dtype and (b.dtype.kind == "c" or y.dtype.kind in "iub"):
                y = y.astype(promote_types(y.dtype, b.dtype))  # (+= would cast b to y's dtype)
            y += b if b.ndim == 1 else b.reshape(-1 if b.size == w.shape[0] else ())
            if fused:
                y = cast(y, np.float16)
        self._keep_what_backward_reads(x, w)
        return y if out_shape is None else y.reshape(out_shape)

    def _keep_what_backward_reads(self, x, w):
        needs = self.needs_input_grad
        if True in needs:  # recorded: keep only what backward reads (`backward_reads`), the
            # other operand as its shape (x, for a constant weight: as torch's addmm saves)
            if not needs[1]:
                self.x = ShapeOnly(x)
            if not needs[0]:
                self.w = ShapeOnly(w)

    def backward(self, g):
        needs = self.needs_input_grad
        x, w = self.x, self.w
        if self.out_shape is not None:  # N-d: the (rows, out) matrix forward's gemm made
            g = g.reshape(x.shape[0], w.shape[0])
        # dot, as in forward: with g and x 2-d (or 1-d) each gradient is one gemm (gemv)
        gx = grad_matmul(g, w) if needs[0] else None
        if gx is not None and self.out_shape is not None:
            gx = gx.reshape(self.out_shape[:-1] + (w.shape[1],))
        gw = (grad_matmul(g.T, x) if g.ndim == 2 else xp_of(g).outer(g, x)) if needs[1] else None
        if len(needs) == 2:
            return gx, gw
        if not needs[2]:
            return gx, gw, None
        gb = acc_sum(g, 0) if g.ndim == 2 else g
        if math.prod(self.b_shape) != w.shape[0]:  # one value added to every feature
            gb = gb.sum(keepdims=True)
        return gx, gw, gb.reshape(self.b_shape)

    def backward_reads(self):
        # as torch's addmm: x's gradient reads w, w's reads x (the bias's reads neither)
        needs = self.needs_input_grad
        return (self.w,) * needs[0] + (self.x,) * needs[1]

    def grad_graph(self, inputs, outputs, grads):
        needs = self.needs_input_grad
        x, w = inputs[0], inputs[1]
        g = grads[0]
        gx = g @ w if needs[0] else None
        g2 = g.reshape(-1, g.shape[-1])
        gw = g2.transpose(1, 0) @ x.reshape(-1, x.shape[-1]) if needs[1] else None
        if len(needs) == 2:
            return gx, gw
        if not needs[2]:
            return gx, gw, None
        gb = g2.sum(0) if math.prod(self.b_shape) == w.shape[0] else g2.sum()
        return gx, gw, gb.reshape(self.b_shape)


def linear(inp, weight, bias=None, compute_mode="default"):
    """``inp @ weight.T + bias``; ``weight`` is (out_features, in_features)."""
    inputs = (inp if isinstance(inp, Tensor) else Tensor(inp),
              weight if isinstance(weight, Tensor) else Tensor(weight))
    if bias is not None:
        inputs += (bias if isinstance(bias, Tensor) else Tensor(bias),)
    if inputs[0]._data.dtype.metadata is not None:  # quantized: the exact qint32 accumulator
        from .quantized import _linear

        return _linear(*inputs, compute_mode=compute_mode)
    if _amp._enabled:  # megengine.amp.autocast: float16 compute
        inputs = _amp.cast_for_compute(*inputs)
    return apply(_Linear(), *inputs)


# ----- dropout, embedding -----

class _Dropout(Op):
    format_rule = "keep"  # how a tensor format label passes (megengine.core.format)
    def __init__(self, drop_prob):
        self.p = drop_prob

    def forward(self, x):
        xp = xp_of(x)
        scale = x.dtype.type(1 / (1 - self.p))
        if _use_dropout_kernel(x):  # CUDA: one draw in x's dtype, mask and product in one kernel
            u = _uniform(xp, x.shape, x.dtype)
            y, self.mask = _dropout_kernel()(x, u, x.dtype.type(self.p), scale)
            return y
        # megengine.random's generator (CuPy's on a GPU): seeded per launched rank, so ranks
        # drop different elements, as upstream's; megengine.random.seed() seeds both
        keep = (_core_rng.generator.random(x.shape) if xp is np
                else xp.random.random_sample(x.shape)) >= self.p
        # where(), not keep * scale: a scale beyond the dtype's range (float16 at p > 1 - 2**-16)
        # is inf, and 0 * inf would make the dropped elements NaN instead of 0
        self.mask = xp.where(keep, scale, x.dtype.type(0))
        # (float16 products on ATen's vectorised loop, numpy's values: `_product`. One thread,
        # forward and backward of (512, 512) at p = 0.1: 4.6-4.7 ms before, 1.2 after, as
        # float32; drawing the mask is most of it)
        return _product(x, self.mask)

    def backward(self, g):
        return _product(g, self.mask)

    def grad_graph(self, inputs, outputs, grads):
        return (grads[0] * _mask(self.mask, grads[0]),)


# Dropout's forward on CUDA: the array code launches a comparison, a cast, a scaling and a product
# (and draws float64 numbers); the kernel makes the mask and the output in one pass over a draw
# in the input's dtype. The kept fraction is the same rule, ``u >= p``.
_dropout_kernel = fused_kernel("T x, T u, T p, T scale", "T y, T mask",
                               "mask = u >= p ? scale : (T)0; y = x * mask;", "megengine_dropout")


def _use_dropout_kernel(x):
    return type(x) is not np.ndarray and use_fused(x, x)


def _uniform(xp, shape, dtype):
    """Uniform draws in [0, 1) of ``dtype``: CuPy draws float32 directly; on the host,
    megengine.random's generator."""
    if xp is np:
        return _core_rng.generator.random(shape).astype(dtype)
    return xp.random.random_sample(shape, dtype=dtype)


def dropout(inp, drop_prob, training=True):
    """Zero each element with probability ``drop_prob`` and scale the rest by 1/(1 - p).

    With ``training`` False (or p == 0) the input is returned as is.
    """
    if not 0 <= _real(drop_prob, "drop_prob", "dropout") < 1:
        raise ArgumentError(f"dropout: drop_prob must be in [0, 1), got {drop_prob}")
    inp = _tensor(inp)
    if not training or drop_prob == 0:
        return inp
    if inp.dtype.kind == "c":
        raise complex_error("dropout", inp.dtype)
    if inp.dtype.kind != "f":
        raise TypeError(f"dropout: expected a float tensor, got dtype {dtype_name(inp.dtype)}"
                        " (convert with .astype('float32'); a quantized tensor gives its values)")
    return apply(_Dropout(float(drop_prob)), inp)


def _embedding_grad_on_aten(g, idx, rows):
    """The weight gradient of an embedding of float16 numpy rows ``g`` picked at ``idx``
    (1-d) by ATen's embedding backward, whose values are add.at's bit for bit (each sum rounded
    to float16 at each step, in index order; measured on random sizes, repeats and infinities,
    at 1 and 2 threads); None for other arrays, which `core.ops.add_at` takes. numpy's float16
    add.at converts one element at a time. Vocabulary 30000 x 256 and 4096 indices, forward
    and backward with one thread, add.at before and ATen after: float16 33-47 ms and 5-10;
    float32 (ATen's index_add_, in `add_at`) 35 and 13, float64 33-36 and 11-13. `add_at`'s own
    float16 path (index_put_ with accumulate=True) gives the same bits but is slower here: the
    same forward and backward, one thread, the two interleaved (150 steps each), 3.8-3.9 ms
    against 5.0-5.3 at best, medians 1.23-1.27x; the backward alone 1.33-1.40x."""
    if g.dtype is not FLOAT16 or not half_operands(g) or not _aten.use_aten(g, "index_add"):
        return None
    if idx.dtype != np.int64 and idx.dtype != np.int32:
        idx = idx.astype(np.int64)
    return _aten.fresh_gradient(_aten.op("embedding_dense_backward")(
        _aten.view(g), _aten.view(idx), rows, -1, False))


class _Embedding(Op):
    def __init__(self, padding_idx):
        self.padding_idx = padding_idx

    def forward(self, idx, w):
        if idx.dtype.kind not in "iu":
            raise ArgumentTypeError(  # (upstream's RuntimeError too)
                f"embedding: indices must be integers, got dtype {idx.dtype}")
        if w.ndim != 2:
            raise ShapeError(f"embedding: weight must be 2-d (num_embeddings, dim), "
                             f"got shape {w.shape}")
        n = w.shape[0]
        if _out_of_range(idx, n):  # (one reduction when every index is in [0, n))
            low, high = int(idx.min()), int(idx.max())
            if low < -n or high >= n:
                raise ArgumentError(f"embedding: indices must be in [-{n}, {n}), got values "
                                    f"in [{low}, {high}]")  # (upstream: its kernel asserts)
            idx = xp_of(idx).where(idx < 0, idx + n, idx)  # -1 is the last row, as upstream's
        self.idx, self.w_shape = idx, w.shape
        return w[idx]

    def backward(self, g):
        if not self.needs_input_grad[1]:
            return None, None
        # repeated indices accumulate, in index order: add.at's values (float16: rounded at
        # each step, as torch's embedding backward; float32 and float64 too)
        idx, g = self.idx.reshape(-1), g.reshape(-1, self.w_shape[1])
        gw = _embedding_grad_on_aten(g, idx, self.w_shape[0])
        if gw is None:
            gw = xp_of(g).zeros(self.w_shape, g.dtype)
            add_at(gw, (idx,), g)
        if self.padding_idx is not None:
            gw[self.padding_idx] = 0
        return None, gw

    def grad_graph(self, inputs, outputs, grads):
        if not self.needs_input_grad[1]:
            return None, None
        from ..core.ops import IndexAdd

        g = grads[0].reshape(-1, self.w_shape[1])
        gw = apply(IndexAdd((self.idx.reshape(-1),), self.w_shape, g.dtype), g)
        if self.padding_idx is not None:
            keep = xp_of(self.idx).ones((self.w_shape[0], 1), g.dtype)
            keep[self.padding_idx] = 0
            gw = gw * _mask(keep, g)
        return None, gw


def embedding(inp, weight, padding_idx=None, max_norm=None, norm_type=None):
    """Rows of ``weight`` (num_embeddings, dim) picked by the integer indices ``inp``, in
    ``[-num_embeddings, num_embeddings)`` (a negative one counts from the end, as upstream's
    indexing reads it).

    ``padding_idx``: that row gets no gradient. ``max_norm``/``norm_type`` are not supported
    (upstream does not support them either).
    """
    if max_norm is not None or norm_type is not None:
        raise ValueError("embedding: max_norm and norm_type are not supported; pass None")
    weight = _tensor(weight)
    if padding_idx is not None:
        padding_idx = _int(padding_idx, "padding_idx", "embedding", follows=False)
        if not -weight.shape[0] <= padding_idx < weight.shape[0]:
            raise ValueError(f"embedding: padding_idx {padding_idx} is out of range for "
                             f"{weight.shape[0]} embeddings")
    return apply(_Embedding(padding_idx), _tensor(inp), weight)


def pixel_shuffle(inp, upscale_factor):
    """Rearrange (..., C*r*r, H, W) into (..., C, H*r, W*r), ``r`` = ``upscale_factor``."""
    inp = _tensor(inp)
    r = _int(upscale_factor, "upscale_factor", "pixel_shuffle", follows=False)
    if r < 1 or inp.ndim < 3 or inp.shape[-3] % (r * r):
        raise ShapeError(f"pixel_shuffle: input of shape {inp.shape} needs >= 3 dims and "
                         f"channels (dim -3) divisible by upscale_factor**2 = {r * r}")
    *lead, c, h, w = inp.shape
    # the engine's methods, not those of a Tensor subclass (a torch-style `transpose(d0, d1)`)
    x = Tensor.transpose(Tensor.reshape(inp, (-1, c // (r * r), r, r, h, w)), (0, 1, 4, 2, 5, 3))
    return Tensor.reshape(x, tuple(lead) + (c // (r * r), h * r, w * r))


from .attention import *  # noqa: E402,F401,F403
from .conv import *  # noqa: E402,F401,F403
from .normalization import *  # noqa: E402,F401,F403
from .pooling import *  # noqa: E402,F401,F403
from .vision import interpolate  # noqa: E402,F401
from .vision import (  # noqa: E402,F401  (upstream also spells the vision ops F.nn.<name>)
    correlation, cvt_color, nms, remap, roi_align, roi_pooling, warp_affine, warp_perspective,
    deformable_psroi_pooling,
)
from . import attention as _attention, conv as _conv, normalization as _norm, pooling as _pool  # noqa: E402,E501
# every public name of the split-out files is F.nn.<name> and F.<name> (conv3d, sliding_window, ...)
__all__ += [n for m in (_attention, _conv, _norm, _pool) for n in m.__all__ if n not in __all__]

# ----- names that live elsewhere but upstream also spells F.nn.<name> -----

from .elemwise import tanh  # noqa: E402,F401
from .math import logsumexp, normalize  # noqa: E402,F401
from .tensor import indexing_one_hot, one_hot, pad  # noqa: E402,F401
from .loss import *  # noqa: E402,F401,F403  (F.nn.cross_entropy, F.nn.l1_loss, ...)
from .loss import cross_entropy_with_softmax  # noqa: E402,F401  (0.x: F.cross_entropy_with_softmax)
# upstream's F.nn.__all__ lists these too: `from megengine.functional.nn import *` gives them
__all__ += ["deformable_psroi_pooling", "indexing_one_hot", "logsumexp", "normalize", "one_hot",
            "pad", "remap", "warp_affine", "warp_perspective"]
# upstream's nn.py imports these for its own use, so F.nn.<name> reaches them there, and
# programs that alias it (`import megengine.functional.nn as F`) call F.concat, F.reshape, ...
from .elemwise import exp, log, log1p, maximum, minimum  # noqa: E402,F401
from .math import max, sum  # noqa: E402,F401
from .tensor import (  # noqa: E402,F401
    broadcast_to, concat, expand_dims, ones, repeat, reshape, squeeze, transpose, zeros,
    zeros_like,
)


# Upstream's nn module also holds these at module level (F.nn.conv_bias_activation, ...)
from ..device import get_cudnn_version, get_default_device, is_cuda_available  # noqa: E402,F401
from ..logger import get_logger  # noqa: E402,F401
from .debug_param import get_execution_strategy  # noqa: E402,F401
from .quantized import conv_bias_activation  # noqa: E402,F401
from .vision import nvof  # noqa: E402,F401

# ... and these, loaded on first use: they pull in megengine.distributed and megengine.jit
_LAZY = {"all_reduce_sum": ".distributed", "is_distributed": "..distributed",
         "exclude_from_trace": "..jit"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __package__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
