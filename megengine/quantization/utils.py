"""Quantization's vocabulary and its differentiable fake-quantize ops: QuantMode, the quantized
dtype metas, QParams, and fake_quant_tensor / fake_quant_bias / tqt_forward / lsq_forward.

Fake quantization runs in float: a value is quantized (``round(x / scale) + zero_point``,
clipped to the dtype's ``[qmin, qmax]``) and dequantized at once, so a network trains with the
rounding error it will meet as integers. Rounding is upstream's: halves away from zero (C's
``round``), where PyTorch's fake_quantize rounds halves to even; the two agree everywhere else.
"""
import abc
import math
from collections import namedtuple
from enum import Enum
from functools import partial
from typing import Union

import numpy as np

from .. import functional as F
from ..autodiff.function import Function
from ..core.dispatch import Op, apply, xp_of
from ..core.fused import fused_kernel, use_fused
from ..core.ops import ArgumentKindError, masked_gradient, masked_gradient_graph, unbroadcast
from ..core.dtype import (  # noqa: F401  (_builtin_quant_dtype: what older pickles name)
    QuantDtypeMeta, _builtin_quant_dtype, _builtin_quant_dtypes, create_quantized_dtype)
from ..core.tensor import QParams, Tensor

__all__ = [
    "QuantMode", "QParams", "LSQParams", "QParamsModuleMixin", "QuantDtypeMeta",
    "create_qparams", "create_quantized_dtype", "fake_quant_tensor", "fake_quant_bias",
    "tqt_forward", "lsq_forward", "get_quant_dtype_meta", "narrow_quant_dtype_meta", "Round",
]


class QuantMode(Enum):
    """How a float range maps to integers (upstream's spelling, kept for compatibility):
    SYMMERTIC uses a scale only (zero maps to 0); ASYMMERTIC adds an integer zero point."""

    SYMMERTIC = 1
    ASYMMERTIC = 2


class QuantDtypeError(ValueError, KeyError):
    """A quantized dtype name that is none of the builtin ones. Upstream's observers and fake
    quantizers raise ValueError there, its ``create_qparams`` a KeyError (its table lookup):
    this is both, so either ``except`` catches it."""

    def __str__(self):  # KeyError would repr() the message, quoting it onto one line
        return str(self.args[0])


def get_quant_dtype_meta(dtype: Union[str, QuantDtypeMeta], what: str) -> QuantDtypeMeta:
    """``dtype`` as a QuantDtypeMeta: a meta passes through, a name is looked up."""
    if isinstance(dtype, QuantDtypeMeta):
        return dtype
    if isinstance(dtype, str) and dtype in _builtin_quant_dtypes:
        return _builtin_quant_dtypes[dtype]
    raise QuantDtypeError(f"{what}: unknown dtype: {dtype!r}, only support "
                          f"{sorted(_builtin_quant_dtypes)} or a QuantDtypeMeta")


def narrow_quant_dtype_meta(meta: QuantDtypeMeta, what: str) -> QuantDtypeMeta:
    """``meta`` with ``qmin = -qmax`` (upstream 1.2-1.3's ``narrow_range=True``): ``qint8``
    becomes the built-in ``qint8_narrow``, another signed meta ``<name>_narrow``. An unsigned
    meta has no narrow form (its qmin is 0), so asking for one is an error."""
    if meta.qmin == -meta.qmax:
        return meta
    if meta.qmin >= 0:
        raise ValueError(f"{what}: narrow_range=True makes qmin = -qmax, which needs a signed "
                         f"dtype; {meta.name} is [{meta.qmin}, {meta.qmax}] (pass "
                         f"narrow_range=False, or a signed dtype such as 'qint8')")
    builtin = _builtin_quant_dtypes.get(meta.name + "_narrow")
    if builtin is not None and (builtin.qmin, builtin.qmax) == (-meta.qmax, meta.qmax):
        return builtin
    return QuantDtypeMeta(meta.name + "_narrow", meta.cname, meta.np_dtype_str, -meta.qmax,
                          meta.qmax, meta.is_unsigned)


def _dtype_with_narrow_range(dtype, kwargs, what):
    """The dtype meta, narrowed when ``kwargs`` has upstream 1.2-1.3's ``narrow_range=True``
    (which is popped from it).

    Upstream 1.4+ moved the narrow range into the dtype (``"qint8_narrow"``) and ignores the
    flag with a warning; honouring it keeps what older programs ask for (weights in [-127,
    127]) instead of silently quantizing them to [-128, 127].
    """
    meta = get_quant_dtype_meta(dtype, what)
    if kwargs.pop("narrow_range", False):
        meta = narrow_quant_dtype_meta(meta, what)
    return meta


class LSQParams(QParams):
    """QParams of :class:`~.LSQ`, with the gradient scale of its step size."""

    # all five named (as upstream): update, ==, repr and pickling walk ``self.__slots__``
    __slots__ = ("mode", "dtype_meta", "scale", "zero_point", "grad_scale")

    def __init__(self, mode, dtype_meta, scale, zero_point, grad_scale):
        super().__init__(mode, dtype_meta, scale, zero_point)
        self.grad_scale = grad_scale


class QParamsModuleMixin(abc.ABC):
    """For observers and learnable fake quantizers: ``get_qparams()`` and the numpy quantized
    dtype those parameters describe."""

    def get_quantized_dtype(self):
        qparams = self.get_qparams()
        scale = None if qparams.scale is None else float(qparams.scale.numpy().reshape(-1)[0])
        zp = None if qparams.zero_point is None else int(qparams.zero_point.numpy().reshape(-1)[0])
        return create_quantized_dtype(qparams.dtype_meta, scale, zp)

    @abc.abstractmethod
    def get_qparams(self) -> QParams:
        """The current quantization parameters."""


# the keyword arguments some observer or fake quantizer takes (upstream 1.13's signatures)
_SHARED_ARGUMENTS = frozenset({"mode", "eps", "momentum", "bins", "upsample_rate", "enable"})


class _QuantDtypeMixin:
    """What observers and fake quantizers both hold: ``dtype`` (a QuantDtypeMeta, narrowed by
    upstream 1.2-1.3's ``narrow_range=True``), its ``qmin``/``qmax``, and the ``enabled``
    switch. Listed before ``Module`` among the bases, so that ``Module`` gets ``name``."""

    def __init__(self, dtype: Union[str, QuantDtypeMeta], enabled: bool, **kwargs):
        what = type(self).__name__
        meta = _dtype_with_narrow_range(dtype, kwargs, what)
        # the other observers' and fake quantizers' own arguments are taken and left unused,
        # as upstream's (whose **kwargs take anything), so one set of keyword arguments may
        # build every part of a QConfig; an unknown name is refused (upstream ignores it too)
        unknown = sorted(set(kwargs) - _SHARED_ARGUMENTS - {"name"})
        if unknown:
            raise TypeError(f"{what}() got unexpected keyword arguments {unknown}: observers "
                            f"and fake quantizers take dtype, name, narrow_range and "
                            f"{sorted(_SHARED_ARGUMENTS)}")
        super().__init__(**{k: v for k, v in kwargs.items() if k == "name"})
        self.dtype = meta
        self.qmin = self.dtype.qmin
        self.qmax = self.dtype.qmax
        self.enabled = enabled

    def enable(self):
        self.enabled = True

    def disable(self):
        self.enabled = False


_builtin_qparams = {
    QuantMode.SYMMERTIC: partial(QParams, mode=QuantMode.SYMMERTIC),
    QuantMode.ASYMMERTIC: partial(QParams, mode=QuantMode.ASYMMERTIC),
}


def create_qparams(mode: QuantMode = QuantMode.SYMMERTIC,
                   dtype_meta: Union[str, QuantDtypeMeta] = None, scale: Tensor = None,
                   zero_point: Tensor = None) -> QParams:
    """A QParams; ``dtype_meta`` may be a built-in name ("qint8", ...)."""
    if isinstance(dtype_meta, str):
        dtype_meta = get_quant_dtype_meta(dtype_meta, "create_qparams")
    if mode is None:
        return QParams(mode, dtype_meta, scale, zero_point)
    if not isinstance(mode, QuantMode):
        raise ArgumentKindError(f"create_qparams: mode must be a QuantMode, got {mode!r}")
    return _builtin_qparams[mode](dtype_meta=dtype_meta, scale=scale, zero_point=zero_point)


class Round(Function):
    """``Round()(x)``: `F.round` (halves away from zero) with the straight-through gradient
    (passed on unchanged), for quantization-aware training code of its own (``F.round``
    itself gives no gradient through its steps)."""

    def forward(self, x):
        return F.round(x)

    def backward(self, output_grads):
        return output_grads


def _round_half_away(xp, x):
    # upstream's kernels use C's round (halves away from zero); numpy and torch round to even
    t = xp.trunc(x)
    return xp.where(xp.abs(x - t) >= 0.5, t + xp.sign(x), t)


def _values(inp):
    """A quantized, integer or bool input's values in float32 (fake quantization is a float
    function: on the stored integers it gave integers taken for values, in the input's dtype,
    and on integers it rounded the fake-quantized values into their dtype)."""
    if inp.dtype.metadata is not None or inp.dtype.kind in "iub":
        return inp.astype("float32")
    return inp


def _as_operand(value, like, what):
    """A scale or zero point as a Tensor on ``like``'s device, float32."""
    if value is None:
        raise ValueError(f"{what} is None: the qparams have no value yet (run the observer, "
                         "or set the scale) before fake quantization")
    if not isinstance(value, Tensor):
        value = Tensor(np.asarray(value, dtype=np.float32), device=like.device)
    if value.dtype != np.float32:
        value = value.astype("float32")
    return value


# On CUDA the forward is one CuPy kernel (the array code below is about ten): the output and the
# gradient mask (as T, so the backward is a single multiply) in one pass. Scale and zero point
# broadcast as CuPy broadcasts kernel arguments. NaN stays NaN in y (no comparison holds) and
# gets mask 0, as the array code. Compiled on first use; tests/quantization/test_utils.py runs
# this body as C++ without a GPU.
_FAKE_QUANT = (
    "T x, T scale, T zp, T qmin, T qmax", "T y, T mask",
    """
    T v = x / scale;
    T t = trunc(v);
    T r = (fabs(v - t) >= (T)0.5) ? t + copysign((T)1, v) : t;  // halves away from zero
    T q = r + zp;
    mask = (q >= qmin && q <= qmax) ? (T)1 : (T)0;
    T c = q < qmin ? qmin : (q > qmax ? qmax : q);
    y = (c - zp) * scale;
    """,
    "megengine_fake_quant",
)
_fake_quant_kernel = fused_kernel(*_FAKE_QUANT)  # () -> the kernel (y, mask) = f(x, scale, ...)


def _use_fake_quant_kernel(x):
    """A CuPy float32/float64 input takes the fused kernel."""
    return use_fused(x, x)


class FakeQuant(Op):
    """``(clip(round(x / scale) + zp, qmin, qmax) - zp) * scale`` with the straight-through
    gradient for ``x`` inside the range (zero where it was clipped) and none for scale and zp
    (they come from observers), as upstream's FakeQuant kernel."""

    def __init__(self, qmin, qmax):
        self.qmin, self.qmax = qmin, qmax

    def forward(self, x, scale, zero_point):
        if _use_fake_quant_kernel(x):
            kind = x.dtype.type
            y, self.mask = _fake_quant_kernel()(
                x, scale.astype(x.dtype, copy=False), zero_point.astype(x.dtype, copy=False),
                kind(self.qmin), kind(self.qmax))
            return y
        xp = xp_of(x)
        q = _round_half_away(xp, x / scale) + zero_point
        if self.needs_input_grad[0]:
            self.mask = (q >= self.qmin) & (q <= self.qmax)
        return ((xp.clip(q, self.qmin, self.qmax) - zero_point) * scale).astype(x.dtype, copy=False)

    def backward(self, g):
        # (a select, as upstream's kernel: a NaN or inf gradient where x was clipped gives 0)
        return masked_gradient(g, self.mask).astype(g.dtype, copy=False), None, None

    def grad_graph(self, inputs, outputs, grads):
        # the mask is piecewise constant: the gradient is the output gradient selected by a
        # constant (the CUDA kernel's mask holds ones and zeros of x's dtype)
        return masked_gradient_graph(grads[0], self.mask != 0), None, None


def fake_quant_tensor(inp: Tensor, qparams: QParams) -> Tensor:
    """Fake-quantize ``inp`` with ``qparams`` (scale, and zero_point in ASYMMERTIC mode; qmin and
    qmax from its dtype_meta). Scale and zero point broadcast against ``inp``, so per-channel
    parameters shaped e.g. (1, C, 1, 1) quantize each channel with its own."""
    if qparams.dtype_meta is None:
        raise ValueError("fake_quant_tensor: qparams.dtype_meta is None: give a "
                         "QuantDtypeMeta (or a name such as 'qint8' to create_qparams)")
    meta = qparams.dtype_meta
    inp = _values(inp)
    scale = _as_operand(qparams.scale, inp, "fake_quant_tensor: qparams.scale")
    if qparams.mode == QuantMode.ASYMMERTIC:
        zero_point = _as_operand(qparams.zero_point, inp, "fake_quant_tensor: qparams.zero_point")
    else:
        zero_point = Tensor(np.zeros((1,), np.float32), device=inp.device)
    return apply(FakeQuant(meta.qmin, meta.qmax), inp, scale, zero_point)


def fake_quant_bias(bias: Tensor, inp: Tensor, w_qat: Tensor) -> Tensor:
    """Fake-quantize a bias to qint32 with scale ``inp_scale * weight_scale``, the scale an
    integer kernel accumulates in. As upstream, only when input and weight are both symmetric
    8-bit signed with known scales; otherwise the bias is returned unchanged."""
    if bias is None or getattr(inp, "qparams", None) is None \
            or getattr(w_qat, "qparams", None) is None:
        return bias
    inp_params, w_params = inp.qparams, w_qat.qparams
    if inp_params.scale is None or w_params.scale is None:
        return bias
    # an input whose code set only its scale (upstream 1.3's ``x.q_dict["scale"] = s``) is taken
    # in the weight's mode and dtype, as 1.3 did (1.4+ fails on the missing dtype there)
    inp_mode = w_params.mode if inp_params.mode is None else inp_params.mode
    inp_meta = w_params.dtype_meta if inp_params.dtype_meta is None else inp_params.dtype_meta
    if inp_mode != QuantMode.SYMMERTIC or inp_mode != w_params.mode:
        return bias
    for meta in (inp_meta, w_params.dtype_meta):
        if meta is None or meta.np_dtype_str != "int8":
            return bias
    b_params = create_qparams(w_params.mode, _builtin_quant_dtypes["qint32"],
                              scale=inp_params.scale * w_params.scale)
    b_qat = fake_quant_tensor(bias, b_params)
    b_qat.qparams.update(b_params)
    return b_qat


class TQTOp(Op):
    """Trained Quantization Thresholds (arXiv:1903.08066) with a power-of-two scale ``2**s``:
    ``clip(round(x / 2**s), qmin, qmax) * 2**s``.

    Gradients as the paper and upstream's reference test give them: for ``x`` whose scaled
    value lies within half a step of the range, d/dx = 1 and d/ds adds ``round(x/t) - x/t``;
    outside, d/dx = 0 and d/ds adds the clipped integer; d/ds is then ``* t * ln 2``.
    (Upstream's C++ kernel tests ``scaled < qmin - 0.5 && scaled > qmax + 0.5``, which never
    holds; its own unit test expects the formula here.)
    """

    def __init__(self, qmin, qmax):
        self.qmin, self.qmax = qmin, qmax

    def forward(self, x, log2_scale):
        xp = xp_of(x)
        t = xp.exp2(log2_scale.astype(x.dtype, copy=False))
        scaled = x / t
        rounded = xp.clip(_round_half_away(xp, scaled), self.qmin, self.qmax)
        if any(self.needs_input_grad):
            self.scaled, self.rounded, self.t = scaled, rounded, t
            self.scale_shape = log2_scale.shape
        return (rounded * t).astype(x.dtype, copy=False)

    def backward(self, g):
        xp = xp_of(g)
        scaled, rounded = self.scaled, self.rounded
        clipped = (scaled < self.qmin - 0.5) | (scaled > self.qmax + 0.5)
        gx = xp.where(clipped, 0, g).astype(g.dtype, copy=False) if self.needs_input_grad[0] \
            else None
        gs = None
        if self.needs_input_grad[1]:
            per_elem = g * xp.where(clipped, rounded, rounded - scaled) * self.t * math.log(2.0)
            gs = unbroadcast(per_elem, self.scale_shape).astype(g.dtype, copy=False)
        return gx, gs


def tqt_forward(qmin: int, qmax: int, inp: Tensor, scale: Tensor) -> Tensor:
    """Fake-quantize ``inp`` with the learnable log2 scale ``scale`` (see :class:`TQTOp`)."""
    inp = _values(inp)
    scale = _as_operand(scale, inp, "tqt_forward: scale")
    return apply(TQTOp(qmin, qmax), inp, scale)


class LSQOp(Op):
    """Learned Step size Quantization (arXiv:1902.08153), upstream's formula: with
    ``v = x / s + zp``, output ``(round(clip(v, qmin, qmax)) - zp) * s`` (halves rounded up);
    d/dx = 1 inside ``[qmin, qmax]``, 0 outside; d/ds per element is ``round(v) - v`` inside,
    ``qmin`` below and ``qmax`` above, times ``grad_scale``."""

    def __init__(self, qmin, qmax):
        self.qmin, self.qmax = qmin, qmax

    def forward(self, x, step, zero_point, grad_scale):
        xp = xp_of(x)
        v = x / step + zero_point
        rounded = xp.floor(xp.clip(v, self.qmin, self.qmax) + 0.5)
        if any(self.needs_input_grad):
            self.v, self.rounded, self.grad_scale = v, rounded, grad_scale
            self.step_shape = step.shape
        return ((rounded - zero_point) * step).astype(x.dtype, copy=False)

    def backward(self, g):
        xp = xp_of(g)
        v = self.v
        small, big = v < self.qmin, v > self.qmax
        inside = ~(small | big)
        gx = (g * inside).astype(g.dtype, copy=False) if self.needs_input_grad[0] else None
        gs = None
        if self.needs_input_grad[1]:
            per_elem = xp.where(small, self.qmin, xp.where(big, self.qmax, self.rounded - v))
            gs = unbroadcast(per_elem * self.grad_scale * g, self.step_shape)
            gs = gs.astype(g.dtype, copy=False)
        return gx, gs, None, None


def lsq_forward(qmin: int, qmax: int, inp: Tensor, step_size: Tensor, zero_point: Tensor = None,
                scale_grad: Tensor = None) -> Tensor:
    """Fake-quantize ``inp`` with the learnable step size (see :class:`LSQOp`)."""
    inp = _values(inp)
    step_size = _as_operand(step_size, inp, "lsq_forward: step_size")
    zero_point = _as_operand(0.0 if zero_point is None else zero_point, inp, "lsq_forward: zero_point")
    scale_grad = _as_operand(1.0 if scale_grad is None else scale_grad, inp, "lsq_forward: scale_grad")
    return apply(LSQOp(qmin, qmax), inp, step_size, zero_point, scale_grad)
