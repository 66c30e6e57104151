"""Quantized inference kernels (upstream's ``F.quantized``): convolution + bias + activation on
quantized tensors, its per-sample-weight and transposed forms, the quantized element-wise
modes (``_elemwise_multi_type``) and the matmul and linear of quantized tensors (``F.matmul`` /
``F.linear``), with the integer arithmetic emulated exactly.

How the integer arithmetic is emulated: int8 (or int4/uint8) values minus their zero points are
convolved in float64 on ATen's kernels. Every product is an integer below 2**16 and every partial
sum an integer far below 2**53, so the float64 result *is* the int32 accumulator upstream's
kernels compute, whatever order ATen sums in. As upstream's kernel (measured), the accumulator's
value ``acc * acc_scale`` and the qint32 bias's value (scale ``input scale * weight scale``)
are summed in float32, the activation applied, and the sum quantized to the output dtype:
times the reciprocal of its scale, rounded half away from zero (`dtype.round_as_kernel`, in
blocks of 16 of each output plane), saturated. A qint32 output of the accumulator's scale (or
``dtype=None``) is the integer sum itself; a qint32 output of another scale is refused, as
upstream refuses it.

Element-wise quantized modes (``QADD``, ``QFUSE_ADD_RELU``, ``QMUL``, ...) dequantize their
inputs to float32, run the float mode and quantize the result as upstream's ElemwiseMultiType
kernels do (`_elemwise_multi_type`).
"""
import numpy as np

from ..core import dtype as _qd
from ..core.dispatch import Op, apply, xp_of
from ..core.dtype_rules import ArgumentTypeError
from ..core.tensor import Tensor
from ._args import _tensor
from .conv import _Convolution, _groups
from .conv import _geometry as _conv_geometry

__all__ = ["conv_bias_activation", "batch_conv_bias_activation", "conv_transpose2d"]

_NONLINEAR = ("identity", "relu", "sigmoid", "h_swish")


def _mode(value, allowed, name, what):
    mode = str(getattr(value, "name", value)).lower()
    if mode not in allowed:
        raise ValueError(f"{what}: {name} must be one of {allowed}, got {value!r}")
    return mode


def _check_conv_mode(conv_mode, compute_mode, what):
    _mode(conv_mode, ("cross_correlation",), "conv_mode", what)
    _mode(compute_mode, ("default", "float32"), "compute_mode", what)


def _scale_zp(a, what, role):
    if not _qd.is_quantize(a.dtype):
        raise TypeError(f"{what}: the {role} must be quantized (e.g. x.astype(dtype.qint8(s))), "
                        f"got dtype {a.dtype}")
    info = a.dtype.metadata["mgb_dtype"]
    return info["scale"], info.get("zero_point", 0)


def _centered(a, zp):
    """The integers minus their zero point, as float64 (exact)."""
    f = a.astype(np.float64)
    return f - zp if zp else f


def _activate_float(xp, v, mode, block, rows):
    if mode == "relu":
        return xp.maximum(v, 0)
    if mode == "sigmoid":
        return 1 / (1 + xp.exp(-v))
    if mode == "h_swish":
        return _h_swish(xp, v, block, rows)
    return v


def _h_swish(xp, v, block, rows=1):
    """``v * relu6(v + 3) / 6`` in float32 as upstream 1.13's quantized kernels compute it
    (measured): its vector code (`dtype.vector_part`) multiplies by float32 1/6, its scalar
    code divides by 6; the two round some halves differently."""
    prod = v * xp.clip(v + np.float32(3), 0, 6)
    return xp.where(_qd.vector_part(xp, prod.shape, block, rows), prod * np.float32(1 / 6),
                    prod / np.float32(6))


class _QuantizedConv(Op):
    """Quantized (transposed) convolution + qint32 bias + activation, requantized to ``dtype``
    (see the module docstring); not differentiable (inference only, as upstream)."""

    def __init__(self, geometry, dtype, nonlinear_mode, what):
        # geometry: (transposed, stride, padding, dilation, output_padding, groups), plain
        # values, so that jit.trace compares and dumps this op's parameters
        self.geometry, self.dtype, self.mode, self.what = geometry, dtype, nonlinear_mode, what

    def forward(self, x, w, b=None):
        what = self.what
        _qd.require_host(x, what)
        sx, zx = _scale_zp(x, what, "input")
        sw, zw = _scale_zp(w, what, "weight")
        acc_scale = float(np.float32(sx) * np.float32(sw))
        transposed, stride, padding, dilation, output_padding, groups = self.geometry
        conv = _Convolution(2, transposed, stride, padding, dilation, output_padding, groups,
                            what)
        acc = conv.forward(_centered(x, zx), _centered(w, zw))  # exact integers
        xp = xp_of(acc)
        acc = xp.rint(acc).astype(np.int64)
        if b is not None:
            _check_bias(b.dtype, acc_scale, what, 1e-6)
            b = b.reshape(1, -1, *([1] * (acc.ndim - 2)))
        keeps = _keeps_integers(self.dtype, acc_scale)
        if not keeps and getattr(_qd.quant_meta(self.dtype), "cname", None) == "QuantizedS32":
            raise TypeError(f"{what}: a qint32 output must have the accumulator's scale, input "
                            f"scale * weight scale ({acc_scale:g}), as upstream's ConvBias "
                            f"requires; got {_qd.dtype_name(self.dtype)}. Pass dtype=None for "
                            "the accumulator, or an 8-bit quantized output dtype")
        if self.mode in ("identity", "relu") and keeps:
            if b is not None:
                acc = acc + b.astype(np.int64)
            out_scale = acc_scale if self.dtype is None else _qd.get_scale(self.dtype)
            return _qd.requantize_array(acc, float(np.float32(out_scale)), self.dtype,
                                        relu=self.mode == "relu")
        if self.dtype is None:
            raise ValueError(f"{what}: nonlinear_mode {self.mode!r} needs an output dtype")
        # upstream's kernel: the accumulator's and the bias's values, each in float32, summed,
        # activated, quantized (the sum of the integers would round differently)
        value = acc.astype(np.float32) * np.float32(acc_scale)
        if b is not None:
            value += _qd.dequantize_array(b)
        # (upstream's kernel runs each output plane in blocks of 16, measured)
        rows = value.shape[0] * value.shape[1]
        value = _activate_float(xp, value, self.mode, 16, rows)
        if not _qd.is_quantize(self.dtype):
            return value.astype(self.dtype)
        return _qd.quantize_array(value, self.dtype, block=16, rows=rows)

    def backward(self, *grads):
        return (None,) * len(self.needs_input_grad)


_SAME_SCALE = 2 * float(np.finfo(np.float32).eps)  # upstream's ConvBias, measured (below)


def _keeps_integers(dtype, acc_scale):
    """Whether output ``dtype`` is the qint32 accumulator itself: None, or qint32 of its scale
    up to 2 float32 epsilons of the larger scale (upstream 1.13's ConvBias takes such an
    output as the accumulator and refuses any other qint32, measured: ``qint32(sx * sw)`` of
    float64 scales is one)."""
    meta = _qd.quant_meta(dtype) if dtype is not None else None
    if dtype is None or meta is None or meta.cname != "QuantizedS32":
        return dtype is None
    scale = float(np.float32(_qd.get_scale(dtype)))
    return abs(scale - acc_scale) <= _SAME_SCALE * max(scale, acc_scale)


def _check_bias(bias_dtype, acc_scale, what, tolerance):
    """A bias must be qint32 with the accumulator's scale, ``input scale * weight scale``, up to
    ``tolerance`` (absolute): upstream 1.13's ConvBias takes one within 1e-6 (measured), adding
    its integers as they are to an integer result and its values to a requantized one;
    ``F.linear`` takes one that differs by rounding only (``qint32(sx * sw)`` of float64
    scales; upstream's refuses any other scale)."""
    meta = _qd.quant_meta(bias_dtype)
    info = bias_dtype.metadata["mgb_dtype"] if meta is not None else None
    if meta is None or meta.cname != "QuantizedS32" or info.get("zero_point", 0) or \
            abs(float(np.float32(info["scale"])) - acc_scale) >= tolerance:
        raise TypeError(f"{what}: the bias must be qint32 with scale input scale * weight scale "
                        f"({acc_scale:g}), got {_qd.dtype_name(bias_dtype)}; pass "
                        f"bias.astype(dtype.qint32(input_scale * weight_scale))")


def _geometry(transposed, stride, padding, dilation, output_padding, groups, what):
    """The convolution's geometry, checked as ``F.conv2d``'s (positive strides and dilations,
    non-negative paddings: torch's own words would name no function)."""
    return (transposed, *_conv_geometry(2, what, stride, padding, dilation, output_padding),
            _groups(groups, what))


def _is_quantized(t):
    return _qd.is_quantize(t.dtype)


def _float_conv_bias(inp, weight, bias, dtype, nonlinear_mode, geometry, what):
    """Float inputs: the same convolution + bias + activation in float (upstream's ConvBias
    runs float too), cast to ``dtype`` when one is given."""
    from . import nn

    inputs = (inp, weight) if bias is None else (inp, weight, bias)
    out = apply(_Convolution(2, *geometry, what), *inputs)
    if nonlinear_mode == "relu":
        out = nn.relu(out)
    elif nonlinear_mode == "sigmoid":
        out = nn.sigmoid(out)
    elif nonlinear_mode == "h_swish":
        out = nn.hswish(out)
    return out if dtype is None else out.astype(dtype)


def _conv_bias(transposed, inp, weight, bias, dtype, stride, padding, dilation, groups,
               nonlinear_mode, conv_mode, compute_mode, what, output_padding=0):
    _check_conv_mode(conv_mode, compute_mode, what)
    mode = _mode(nonlinear_mode, _NONLINEAR, "nonlinear_mode", what)
    inp, weight = _tensor(inp), _tensor(weight)
    bias = None if bias is None else _tensor(bias)
    geometry = _geometry(transposed, stride, padding, dilation, output_padding, groups, what)
    if dtype is not None:
        dtype = np.dtype(dtype)
    quantized = _is_quantized(inp), _is_quantized(weight)
    if not any(quantized):
        return _float_conv_bias(inp, weight, bias, dtype, mode, geometry, what)
    if not all(quantized):
        raise TypeError(f"{what}: input ({_qd.dtype_name(inp.dtype)}) and weight "
                        f"({_qd.dtype_name(weight.dtype)}) must both be quantized or both float")
    op = _QuantizedConv(geometry, dtype, mode, what)
    return apply(op, inp, weight) if bias is None else apply(op, inp, weight, bias)


def conv_bias_activation(inp: Tensor, weight: Tensor, bias: Tensor, dtype=None, stride=1,
                         padding=0, dilation=1, groups: int = 1, nonlinear_mode="identity",
                         conv_mode="cross_correlation", compute_mode="default") -> Tensor:
    """``activation(conv2d(inp, weight) + bias)`` for inference, output as ``dtype``.

    On quantized tensors (as upstream's ConvBias): ``inp`` and ``weight`` quantized (qint8,
    quint8, qint4, ...), ``bias`` qint32 with scale ``inp scale * weight scale`` (or None),
    ``dtype`` the output's quantized dtype (None: the qint32 accumulator itself) or a float
    dtype. The integer arithmetic is exact (see the module docstring). On float tensors the
    same computation runs in float. ``nonlinear_mode``: "identity", "relu", "sigmoid",
    "h_swish"; the weight is (out, in/groups, kh, kw) or upstream's grouped
    (groups, out/groups, in/groups, kh, kw).
    """
    return _conv_bias(False, inp, weight, bias, dtype, stride, padding, dilation, groups,
                      nonlinear_mode, conv_mode, compute_mode, "conv_bias_activation")


def conv_transpose2d(inp: Tensor, weight: Tensor, bias: Tensor = None, dtype=None, stride=1,
                     padding=0, output_padding=0, dilation=1, groups: int = 1,
                     conv_mode="cross_correlation", compute_mode="default") -> Tensor:
    """Transposed 2-d convolution of quantized tensors, requantized to ``dtype`` (upstream's
    quantized ``conv_transpose2d``). ``weight`` is (in, out/groups, kh, kw); ``bias`` qint32
    with scale ``inp scale * weight scale``, or None."""
    return _conv_bias(True, inp, weight, bias, dtype, stride, padding, dilation, groups,
                      "identity", conv_mode, compute_mode, "conv_transpose2d",
                      output_padding=output_padding)


def batch_conv_bias_activation(inp: Tensor, weight: Tensor, bias: Tensor, dtype=None, stride=1,
                               padding=0, dilation=1, groups: int = 1, nonlinear_mode="identity",
                               conv_mode="cross_correlation",
                               compute_mode="default") -> Tensor:
    """``conv_bias_activation`` with one weight per sample: ``inp`` (N, C, H, W), ``weight``
    (N, out, C, kh, kw); sample ``n`` is convolved with ``weight[n]`` (upstream's
    BatchConvBias). Runs as one grouped convolution with the batch as the groups."""
    what = "batch_conv_bias_activation"
    inp, weight = _tensor(inp), _tensor(weight)
    if int(groups) != 1:
        raise ValueError(f"{what}: groups must be 1 (upstream's BatchConvBias is dense), "
                         f"got {groups}")
    if inp.ndim != 4 or weight.ndim != 5 or weight.shape[0] != inp.shape[0] \
            or weight.shape[2] != inp.shape[1]:
        raise ValueError(f"{what}: expected inp (N, C, H, W) and weight (N, out, C, kh, kw) "
                         f"with the same N and C, got {inp.shape} and {weight.shape}")
    if _is_quantized(inp) and _is_quantized(weight):
        # one op, as upstream's BatchConvBias: a traced call runs at other batch sizes
        _check_conv_mode(conv_mode, compute_mode, what)
        mode = _mode(nonlinear_mode, _NONLINEAR, "nonlinear_mode", what)
        geometry = _geometry(False, stride, padding, dilation, 0, 1, what)
        op = _QuantizedBatchConv(geometry, None if dtype is None else np.dtype(dtype), mode,
                                 what)
        return apply(op, inp, weight) if bias is None else apply(op, inp, weight, _tensor(bias))
    n, c, h, w = inp.shape
    out = _conv_bias(False, inp.reshape(1, n * c, h, w),
                     weight.reshape(n * weight.shape[1], *weight.shape[2:]),
                     None if bias is None else _tile_bias(_tensor(bias), n), dtype, stride,
                     padding, dilation, n, nonlinear_mode, conv_mode, compute_mode, what)
    return out.reshape(n, -1, *out.shape[2:])


class _QuantizedBatchConv(_QuantizedConv):
    """`_QuantizedConv` with a weight (N, out, C, kh, kw) per sample (upstream's BatchConvBias):
    one grouped convolution with the batch as the groups, formed at run time."""

    def forward(self, x, w, b=None):
        n = x.shape[0]
        geometry = self.geometry[:-1] + (n,)  # (the groups last)
        conv = _QuantizedConv(geometry, self.dtype, self.mode, self.what)
        if b is not None:
            b = np.tile(b.reshape(1, -1, 1, 1), (1, n, 1, 1))
        out = conv.forward(x.reshape(1, n * x.shape[1], *x.shape[2:]),
                           w.reshape(n * w.shape[1], *w.shape[2:]), b)
        return out.reshape(n, -1, *out.shape[2:])


def _tile_bias(bias, n):
    """A (1, out, 1, 1) bias repeated for each of ``n`` groups of the batched convolution."""
    from .tensor import concat

    flat = bias.reshape(1, -1, 1, 1)
    return concat([flat] * n, axis=1)


# ----- quantized element-wise modes (upstream's ElemwiseMultiType "Q..." modes) -----

class _Requantize(Op):
    """Float array -> quantized ``dtype`` (no gradient), ``by_division`` and ``block`` as
    `quantize_array`."""

    def __init__(self, dtype, by_division=False, block=8):
        self.dtype, self.by_division, self.block = dtype, by_division, block

    def forward(self, x):
        return _qd.quantize_array(x, self.dtype, self.by_division, self.block)

    def backward(self, g):
        return None


def _elemwise_multi_type(*args, mode, dtype=None):
    """Upstream's quantized element-wise op: ``mode`` is a quantized mode name ("QADD",
    "QFUSE_ADD_RELU", "QMUL", "QABS", ...: "Q" + a float Elemwise mode), the inputs quantized
    tensors, ``dtype`` the output's quantized dtype. Computes the float mode on the dequantized
    inputs in float32 and quantizes the result as upstream 1.13's x86 kernels (measured):
    times the reciprocal of the output scale, rounded in blocks of 64 (`round_as_kernel`),
    or, for the modes of its generic kernel (`_BY_DIVISION`), divided by the output scale,
    halves away from zero; saturated."""
    from .elemwise import _elwise

    name = str(getattr(mode, "name", mode)).upper()
    if not name.startswith("Q"):
        raise ValueError(f"_elemwise_multi_type: only the quantized modes ('Q' + an Elemwise "
                         f"mode, e.g. 'QADD') are supported, got {mode!r}")
    if dtype is None or not _qd.is_quantize(dtype):
        raise TypeError(f"_elemwise_multi_type: dtype must be the output's quantized dtype "
                        f"(e.g. dtype.qint8(scale)), got {dtype!r}")
    tensors = [_tensor(a) for a in args]
    for t in tensors:
        if not _is_quantized(t):
            raise TypeError(f"_elemwise_multi_type({name}): inputs must be quantized tensors, "
                            f"got dtype {t.dtype}")
    values = [t.astype("float32") for t in tensors]
    # (h_swish with upstream's own arithmetic, `_h_swish`; a wrong input count errs in _elwise)
    if name == "QH_SWISH" and len(values) == 1:
        real = apply(_HSwish(), values[0])
    elif name == "QFUSE_ADD_H_SWISH" and len(values) == 2:
        real = apply(_HSwish(), _elwise(*values, mode="ADD"))
    else:
        real = _elwise(*values, mode=name[1:])
    kinds = {_qd.quant_meta(d).cname for d in [t.dtype for t in tensors] + [np.dtype(dtype)]}
    by_division = name in _BY_DIVISION or (name in _QINT8_VECTORIZED and kinds != {"QuantizedS8"})
    return apply(_Requantize(np.dtype(dtype), by_division, 64), real)


class _HSwish(Op):
    """`_h_swish` on a float32 array (no gradient: the quantized modes are inference only)."""

    def forward(self, v):
        return _h_swish(xp_of(v), v, 64)

    def backward(self, g):
        return None


# modes whose result upstream 1.13's x86 kernels quantize dividing by the output scale,
# halves away from zero (measured; ADD, SUB, MUL, MIN, MAX, RELU, ABS, FUSE_ADD_RELU,
# H_SWISH, FUSE_ADD_H_SWISH, FUSE_MUL_ADD3 and TRUE_DIV multiply by its reciprocal; the other
# modes measured give the same integers either way)
_BY_DIVISION = ("QNEGATE", "QCOND_LEQ_MOV", "QSWITCH_GT0", "QMOD")
# modes whose multiplying kernel upstream has for qint8 only (measured: QTRUE_DIV of quint8
# divides)
_QINT8_VECTORIZED = ("QTRUE_DIV",)


# operand kinds upstream's MatrixMul multiplies into a qint32 accumulator (megdnn deduces
# QuantizedS16 for qint4, a dtype this fork does not provide)
_MATMUL_KINDS = ("QuantizedS8", "Quantized8Asymm", "Quantized4Asymm")


class _QuantizedMatmul(Op):
    """Matrix product of two quantized tensors (upstream's MatrixMul / BatchedMatrixMul on
    quantized dtypes): the exact integer products summed (in float64, exact as in the
    convolution), returned as the qint32 accumulator of scale ``a scale * b scale``.
    ``transpose_a`` / ``transpose_b`` transpose the last two dims first: MatrixMul's own
    parameters, so that a traced ``F.linear`` dumps one MatrixMul, as upstream's."""

    def __init__(self, transpose_a=False, transpose_b=False):
        self.transpose_a, self.transpose_b = bool(transpose_a), bool(transpose_b)

    def forward(self, a, b):
        _qd.require_host(a, "matmul")
        sa, za = _scale_zp(a, "matmul", "first operand")
        sb, zb = _scale_zp(b, "matmul", "second operand")
        a, b = _centered(a, za), _centered(b, zb)
        if self.transpose_a and a.ndim >= 2:
            a = a.swapaxes(-1, -2)
        if self.transpose_b and b.ndim >= 2:
            b = b.swapaxes(-1, -2)
        acc = np.rint(np.matmul(a, b)).astype(np.int64)
        return _qd.requantize_array(acc, float(np.float32(sa) * np.float32(sb)), None)

    def backward(self, g):
        return None, None


def _matmul(a: Tensor, b: Tensor, transpose_a=False, transpose_b=False,
            compute_mode="default") -> Tensor:
    """``F.matmul`` of quantized tensors (upstream's MatrixMul on qint8, quint8 or quint4
    operands of one kind): the qint32 accumulator with scale ``a scale * b scale``."""
    a, b = _tensor(a), _tensor(b)
    kinds = [getattr(_qd.quant_meta(t.dtype), "cname", None) for t in (a, b)]
    if None in kinds:
        raise TypeError(f"matmul: operands of dtypes {_qd.dtype_name(a.dtype)} and "
                        f"{_qd.dtype_name(b.dtype)}: both must be quantized or both not")
    if kinds[0] != kinds[1] or kinds[0] not in _MATMUL_KINDS:
        # (a TypeError, and the RuntimeError upstream's MatrixMul raises)
        raise ArgumentTypeError(f"matmul: quantized operands must be both qint8, both quint8 or "
                                f"both quint4 (upstream's MatrixMul), got "
                                f"{_qd.dtype_name(a.dtype)} and {_qd.dtype_name(b.dtype)}; "
                                "convert them with astype first")
    _mode(compute_mode, ("default",), "compute_mode", "matmul of quantized tensors")
    return apply(_QuantizedMatmul(transpose_a, transpose_b), a, b)


class _AsAccumulator(Op):
    """A qint32 bias whose scale differs from the accumulator's by rounding only (``qint32(sx *
    sw)`` of float64 scales against the float32 product): the same integers, labelled with the
    accumulator's dtype (what upstream's TypeCvt between the two computes, without its float
    round trip)."""

    def __init__(self, dtype):
        self.dtype = dtype

    def forward(self, b):
        return b.astype(self.dtype)

    def backward(self, g):
        return None


def _linear(inp: Tensor, weight: Tensor, bias: Tensor = None, compute_mode="default") -> Tensor:
    """``F.linear`` of quantized tensors, as upstream's: ``matmul(inp, weight, transpose_b)``,
    the qint32 accumulator (scale ``inp scale * weight scale``), plus ``bias``, a qint32
    tensor of that scale (an integer addition)."""
    out = _matmul(inp, weight, transpose_b=True, compute_mode=compute_mode)
    if bias is None:
        return out
    bias = _tensor(bias)
    acc_scale = _qd.get_scale(out.dtype)
    _check_bias(bias.dtype, acc_scale, "linear", 1e-6 * acc_scale)
    if not _qd.is_dtype_equal(bias.dtype, out.dtype):
        bias = apply(_AsAccumulator(out.dtype), bias)
    return out + bias


# Upstream's quantized module also holds this at module level
from .debug_param import get_execution_strategy  # noqa: E402,F401
