"""Upstream's op descriptors (`megengine.core.ops.builtin`: ``Elemwise(mode="add")``,
``Reduce``, ``TypeCvt``, ``LAMBUpdate``, ...), each lowered onto this engine's ops.

A descriptor is data: upstream's name, its constructor parameters (positional in upstream's
order, or by keyword), mode enums (``Elemwise.Mode.ADD``, or the name as a string in any case),
value equality and hashing. ``apply(op, *tensors)`` (`core2.apply`) calls its ``_lower``, which
computes the result with the public functional code or an engine op, so autodiff, jit tracing
and devices behave as for every other computation; there is no second engine here.

Upstream names this engine has no descriptor for raise a clear error when applied, naming the
public function to use instead (`_UNLOWERED`).
"""
import enum
import operator
import sys

import numpy as np

from .. import dispatch
from .. import ops as _engine_ops
from ..dispatch import Op, xp_of
from .opdef import (_REQUIRED, OpDef, _coerce, _F, _freeze, _int_list, _modes,  # noqa: F401
                    _scalar_int, _shape_of)
from .rng_ops import *  # noqa: F401,F403  (the RNG descriptors are builtin names too)
from .rng_ops import __all__ as _rng_names
from .indexing_ops import *  # noqa: F401,F403  (Subtensor, IndexingMultiAxisVec, ...)
from .indexing_ops import __all__ as _indexing_names

__all__ = ["OpDef"] + _rng_names + _indexing_names


# ---------------------------------------------------------------- elementwise
_ELEMWISE_MODES = (
    "RELU ABS ACOS ASIN CEIL COS EXP EXPM1 FLOOR LOG LOG1P NEGATE SIGMOID SIN TANH ABS_GRAD "
    "ADD FLOOR_DIV MAX MIN MOD MUL POW SIGMOID_GRAD SUB SWITCH_GT0 TANH_GRAD TRUE_DIV "
    "LOG_SUM_EXP LT LEQ EQ SHL SHR COND_LEQ_MOV FUSE_MUL_ADD3 FUSE_MUL_ADD4 FUSE_ADD_RELU "
    "FUSE_ADD_SIGMOID FUSE_ADD_TANH FAST_TANH FAST_TANH_GRAD ROUND RMULH ATAN2 ERF ERFINV ERFC "
    "ERFCINV H_SWISH H_SWISH_GRAD FUSE_ADD_H_SWISH NOT AND OR XOR SILU SILU_GRAD GELU GELU_GRAD "
    "COND_LT_MOV NEQ ISNAN ISINF SINH COSH ASINH ACOSH ATANH TAN ASINH_GRAD ACOSH_GRAD "
    "ATANH_GRAD PRELU CLIP PRELU_GRAD SOFTPLUS SOFTPLUS_GRAD RELU6 RELU6_GRAD HSIGMOID "
    "HSIGMOID_GRAD LOGSIGMOID SQRT SQUARE SIGN SAFE_DIV"
).split()

_elemwise_table = None


def _build_elemwise_table():
    """mode name -> (number of inputs, function on Tensors). The *_GRAD modes are upstream's
    backward kernels: (forward input or output, output gradient) -> input gradient."""
    F = _F()
    where, sig = F.where, F.sigmoid
    from ...functional.elemwise import _MODES as _elemwise_modes

    def gelu_grad(x, dy):
        cdf = 0.5 * (1.0 + F.erf(x * float(1 / np.sqrt(2.0))))
        pdf = F.exp(-0.5 * x * x) * float(1 / np.sqrt(2 * np.pi))
        return dy * (cdf + x * pdf)

    def silu_grad(x, dy):
        s = sig(x)
        return dy * (s * (1.0 + x * (1.0 - s)))

    def safe_div(x, y):
        zero = y == 0
        return where(zero, F.zeros_like(x / where(zero, F.ones_like(y), y)),
                     x / where(zero, F.ones_like(y), y))

    def h_swish_grad(x, dy):
        inner = where(x > 3.0, F.ones_like(x), (2.0 * x + 3.0) / 6.0)
        return dy * where(x < -3.0, F.zeros_like(x), inner)

    def prelu_grad(x, dy, w):
        return where(x > 0, dy, dy * w)

    t = {
        "RELU": (1, F.relu), "ABS": (1, F.abs), "ACOS": (1, F.acos), "ASIN": (1, F.asin),
        "CEIL": (1, F.ceil), "COS": (1, F.cos), "EXP": (1, F.exp), "EXPM1": (1, F.expm1),
        "FLOOR": (1, F.floor), "LOG": (1, F.log), "LOG1P": (1, F.log1p), "NEGATE": (1, F.neg),
        "SIGMOID": (1, sig), "SIN": (1, F.sin), "TANH": (1, F.tanh), "FAST_TANH": (1, F.tanh),
        "ROUND": (1, F.round), "ERF": (1, F.erf), "ERFINV": (1, F.erfinv), "ERFC": (1, F.erfc),
        "ERFCINV": (1, F.erfcinv), "H_SWISH": (1, F.hswish), "NOT": (1, F.logical_not),
        "SILU": (1, F.silu), "GELU": (1, F.gelu), "ISNAN": (1, F.isnan), "ISINF": (1, F.isinf),
        "SINH": (1, F.sinh), "COSH": (1, F.cosh), "ASINH": (1, F.asinh), "ACOSH": (1, F.acosh),
        "ATANH": (1, F.atanh), "TAN": (1, F.tan), "SOFTPLUS": (1, F.softplus),
        "RELU6": (1, F.relu6), "HSIGMOID": (1, F.hsigmoid), "LOGSIGMOID": (1, F.logsigmoid),
        "SQRT": (1, F.sqrt), "SQUARE": (1, F.square), "SIGN": (1, F.sign),
        # arithmetic through Tensor's operators: the path `a + b` takes, without F's wrapper
        "ADD": (2, operator.add), "SUB": (2, operator.sub), "MUL": (2, operator.mul),
        "TRUE_DIV": (2, operator.truediv), "FLOOR_DIV": (2, F.floor_div), "MOD": (2, F.mod),
        "POW": (2, F.pow),
        "MAX": (2, F.maximum), "MIN": (2, F.minimum), "LOG_SUM_EXP": (2, F.logaddexp),
        # comparisons give 0 / 1 in the inputs' dtype, as upstream's op (F.less gives bool)
        "LT": (2, _elemwise_modes["LT"]), "LEQ": (2, _elemwise_modes["LEQ"]),
        "EQ": (2, _elemwise_modes["EQ"]), "NEQ": (2, _elemwise_modes["NEQ"]),
        "SHL": (2, F.left_shift), "SHR": (2, F.right_shift),
        "ATAN2": (2, F.atan2), "AND": (2, F.logical_and), "OR": (2, F.logical_or),
        "XOR": (2, F.logical_xor), "PRELU": (2, F.prelu), "SAFE_DIV": (2, safe_div),
        "FUSE_ADD_RELU": (2, lambda x, y: F.relu(x + y)),
        "FUSE_ADD_SIGMOID": (2, lambda x, y: sig(x + y)),
        "FUSE_ADD_TANH": (2, lambda x, y: F.tanh(x + y)),
        "FUSE_ADD_H_SWISH": (2, lambda x, y: F.hswish(x + y)),
        "FUSE_MUL_ADD3": (3, lambda x, y, z: x * y + z),
        "FUSE_MUL_ADD4": (4, lambda a, b, c, d: a * b + c * d),
        "COND_LEQ_MOV": (3, lambda x, y, z: where(x <= y, z, F.zeros_like(z))),
        "COND_LT_MOV": (3, lambda x, y, z: where(x < y, z, F.zeros_like(z))),
        "CLIP": (3, F.clip),
        # backward kernels: (x or y, dy)
        "ABS_GRAD": (2, lambda x, dy: where(x > 0, dy, -dy)),
        "SWITCH_GT0": (2, lambda x, dy: where(x > 0, dy, F.zeros_like(dy))),
        "SIGMOID_GRAD": (2, lambda y, dy: dy * y * (1.0 - y)),
        "TANH_GRAD": (2, lambda y, dy: dy * (1.0 - y * y)),
        "FAST_TANH_GRAD": (2, lambda x, dy: dy * (1.0 - F.tanh(x) ** 2)),
        "H_SWISH_GRAD": (2, h_swish_grad),
        "SILU_GRAD": (2, silu_grad), "GELU_GRAD": (2, gelu_grad),
        "ASINH_GRAD": (2, lambda x, dy: dy / F.sqrt(x * x + 1.0)),
        "ACOSH_GRAD": (2, lambda x, dy: dy / F.sqrt(x * x - 1.0)),
        "ATANH_GRAD": (2, lambda x, dy: dy / (1.0 - x * x)),
        "SOFTPLUS_GRAD": (2, lambda x, dy: dy * sig(x)),
        "RELU6_GRAD": (2, lambda x, dy: where((x > 0) & (x < 6), dy, F.zeros_like(dy))),
        "HSIGMOID_GRAD": (2, lambda x, dy: where((x > -3) & (x < 3), dy / 6.0,
                                                 F.zeros_like(dy))),
        "PRELU_GRAD": (3, prelu_grad),
    }
    return t


class Elemwise(OpDef):
    """An elementwise op of upstream's ``Elemwise.Mode`` (``Elemwise("add")``,
    ``Elemwise(Elemwise.Mode.RELU)``), computed by the matching `megengine.functional` op."""

    Mode = _modes("Mode", _ELEMWISE_MODES)
    _params = (("mode", _REQUIRED),)
    _enums = {"mode": Mode}

    def _lower(self, *inputs):
        global _elemwise_table
        if _elemwise_table is None:
            _elemwise_table = _build_elemwise_table()
        entry = _elemwise_table.get(self.mode.name)
        if entry is None:  # RMULH: a fixed-point kernel of quantized inference
            raise NotImplementedError(
                f"Elemwise mode {self.mode.name} is not provided by this engine (it is an "
                "integer high-half multiply of upstream's quantized kernels); quantized "
                "inference runs in megengine.module.quantized instead"
            )
        arity, fn = entry
        if len(inputs) != arity:
            self._arity(inputs, arity)
        return (fn(*inputs),)


_MULTITYPE_Q = (
    "QADD QFUSE_ADD_RELU QMUL QMIN QMAX QSUB QTRUE_DIV QFUSE_ADD_SIGMOID QFUSE_ADD_TANH QRELU "
    "QABS QSIGMOID QEXP QTANH QFUSE_MUL_ADD3 QFAST_TANH QNEGATE QACOS QASIN QCEIL QCOS QEXPM1 "
    "QFLOOR QLOG QLOG1P QSIN QROUND QERF QERFINV QERFC QERFCINV QABS_GRAD QFLOOR_DIV QMOD "
    "QSIGMOID_GRAD QSWITCH_GT0 QTANH_GRAD QLT QLEQ QEQ QPOW QLOG_SUM_EXP QFAST_TANH_GRAD QATAN2 "
    "QCOND_LEQ_MOV QH_SWISH QFUSE_ADD_H_SWISH QH_SWISH_GRAD QCOND_LT_MOV"
).split()
_MULTITYPE_BOOL = "EQ NEQ LT LEQ ISNAN ISINF".split()
# upstream's fixed-point kernels of its int8 inference backends (no float meaning to lower to)
_MULTITYPE_FIXED = (
    "FUSE_MUL_ADD3_INT16x32x32x32 FUSE_MUL_ADD3_IXxF32xF32xI8 ROUND_SHR_SATURATE_IXxI8xI8 "
    "FUSE_ADD_RMULH_ROUND_SHR_SATURATE_INT16x16x16x8 "
    "FUSE_ADD_RMULH_ROUND_SHR_SATURATE_INT32x32x32x8 ROUND_SHR_SATURATE_IXxI8xI16 "
    "FUSE_MUL_ADD3_INT16xF32xF32xF32 MUL_INT16xF32xF32 FUSE_MUL_ADD3_UINT8xF32xF32xF32"
).split()


class ElemwiseMultiType(OpDef):
    """An elementwise op whose inputs and output differ in dtype (upstream's
    ``ElemwiseMultiType``). The quantized modes (``QADD``, ``QFUSE_ADD_RELU``, ... : ``Q`` and
    an Elemwise mode) dequantize the quantized inputs, apply the float mode and quantize to
    ``dtype`` (`megengine.functional.quantized`); ``EQ``/``NEQ``/``LT``/``LEQ``/``ISNAN``/
    ``ISINF`` give bool tensors. The integer fixed-point modes of upstream's int8 backends
    raise."""

    Mode = enum.Enum("Mode", [(n, n.lower()) for n in
                              _MULTITYPE_FIXED + _MULTITYPE_Q + _MULTITYPE_BOOL])
    _params = (("mode", _REQUIRED), ("dtype", None))
    _enums = {"mode": Mode}

    def _lower(self, *inputs):
        F = _F()
        name = self.mode.name
        if name in _MULTITYPE_BOOL:
            fn = {"EQ": F.equal, "NEQ": F.not_equal, "LT": F.less, "LEQ": F.less_equal,
                  "ISNAN": F.isnan, "ISINF": F.isinf}[name]
            self._arity(inputs, 1 if name.startswith("IS") else 2)
            return (fn(*inputs),)
        if name not in _MULTITYPE_Q:
            raise NotImplementedError(
                f"ElemwiseMultiType mode {name} is a fixed-point kernel of upstream's int8 "
                "backends and is not provided; quantized element-wise work uses the Q modes "
                "(QADD, QMUL, ...) or megengine.module.quantized"
            )
        if self.dtype is None:
            raise TypeError(f"ElemwiseMultiType({name}): give the output's quantized dtype, "
                            "e.g. ElemwiseMultiType(mode='qadd', dtype=dtype.qint8(0.1))")
        from ...functional.quantized import _elemwise_multi_type

        return (_elemwise_multi_type(*inputs, mode=name, dtype=self.dtype),)


# ---------------------------------------------------------------- reductions and shapes
class Reduce(OpDef):
    """A reduction (``SUM``, ``SUM_SQR``, ``PRODUCT``, ``MIN``, ``MAX``, ``MEAN``) along
    ``axis`` (None: all axes), keeping the axis when ``keepdim`` (upstream's default). With a
    second input, a shape tensor, the input is reduced to that shape instead (upstream's
    reduce-to-target form, the gradient of a broadcast)."""

    Mode = _modes("Mode", "SUM SUM_SQR PRODUCT MIN MAX MEAN".split())
    DataType = _modes("DataType", "DEFAULT FLOAT_IO16xC32 FLOAT_O32xC32 FLOAT_O16xC32 "
                                  "QUINT_I8xO32 QINT_I8xO32".split())
    _params = (("mode", "sum"), ("axis", None), ("data_type", "default"), ("keepdim", True))
    _enums = {"mode": Mode, "data_type": DataType}

    def _lower(self, *inputs):
        self._arity(inputs, 1, 2)
        if self.data_type is not Reduce.DataType.DEFAULT:
            raise NotImplementedError(
                f"Reduce(data_type={self.data_type.name}): only DEFAULT (compute in the input's "
                "dtype) is provided; cast with TypeCvt first"
            )
        x = inputs[0]
        if len(inputs) == 2:
            target = _shape_of(inputs[1])
            if len(target) != x.ndim:
                raise ValueError(f"Reduce: target shape {target} has not the input's ndim "
                                 f"({x.shape})")
            axes = tuple(i for i, (s, t) in enumerate(zip(x.shape, target)) if t == 1 and s != 1)
            keep = True
        else:
            axes = None if self.axis is None else tuple(_int_list(self.axis))
            keep = bool(self.keepdim)
        if axes == ():
            return (x if self.mode is not Reduce.Mode.SUM_SQR else x * x,)
        F = _F()
        mode = self.mode.name
        if mode == "SUM_SQR":
            x, mode = x * x, "SUM"
        fn = {"SUM": F.sum, "PRODUCT": F.prod, "MIN": F.min, "MAX": F.max, "MEAN": F.mean}[mode]
        if axes is None:
            out = fn(x, axis=None, keepdims=False)
            if keep:
                out = out.reshape((1,) * x.ndim)
            return (out,)
        return (fn(x, axis=axes if len(axes) > 1 else axes[0], keepdims=keep),)


class TypeCvt(OpDef):
    """Cast to ``dtype`` (differentiable between float dtypes)."""

    _params = (("dtype", _REQUIRED),)

    def _lower(self, x):
        return (x.astype(self.dtype),)


# upstream's "no axis" of its OptionalAxis params (its MAX_NDIM), which its files and pickles
# hold; None in these descriptors
NO_AXIS = 7


class GetVarShape(OpDef):
    """The input's shape as an int32 tensor on its device (one entry when ``axis`` is given).

    It is an op on the input (not a constant made from its shape), so a dumped program
    computes the shape of what it is fed."""

    _params = (("axis", None),)

    def _lower(self, x):
        axis = None
        if self.axis is not None:
            axis = int(self.axis)
            if not -x.ndim <= axis < x.ndim:
                raise ValueError(f"GetVarShape: axis {self.axis} is out of range for a "
                                 f"{x.ndim}-d input")
            axis %= x.ndim
        return (dispatch.apply(_VarShape(axis), x),)


class _VarShape(Op):
    """The shape of the input array (or its ``axis`` entry) as an int32 vector."""

    def __init__(self, axis=None):
        self.axis = axis

    def forward(self, x):
        shape = x.shape if self.axis is None else (x.shape[self.axis],)
        return xp_of(x).asarray(shape, dtype=np.int32)

    def backward(self, g):
        return None


class Broadcast(OpDef):
    """Broadcast to ``shape`` (the parameter, or a second input holding it)."""

    _params = (("shape", ()),)

    def _lower(self, x, *shape):
        # a shape tensor goes to the functional op as it is: one path for shapes and traces
        return (_F().broadcast_to(x, shape[0] if shape else tuple(self.shape)),)


class Reshape(OpDef):
    """Reshape to ``shape`` (the parameter, or a second input); one entry may be -1."""

    _params = (("axis", None), ("shape", ()))

    def _lower(self, x, *shape):
        return (_F().reshape(x, shape[0] if shape else tuple(self.shape)),)


class Dimshuffle(OpDef):
    """Permute axes by ``pattern``; a -1 in it (upstream's and megbrain's spelling) or an
    ``'x'`` inserts a new axis of size 1."""

    _params = (("pattern", _REQUIRED), ("format", "default"))

    def _lower(self, x):
        return (_F().transpose(x, tuple("x" if p == -1 else p for p in self.pattern)),)


class AddAxis(OpDef):
    """Insert axes of size 1 at the positions ``axis``, one after another, as upstream's
    AxisAddRemove applies its descriptors (``[2, 0]`` on (3, 4): (3, 4, 1), then (1, 3, 4, 1))."""

    _params = (("axis", ()),)

    def _lower(self, x):
        return (dispatch.apply(_engine_ops.AddAxis(_int_list(self.axis)), x),)


class RemoveAxis(OpDef):
    """Remove the size-1 axes ``axis``, one after another (``[0, 1]`` on (1, 3, 1): (3, 1),
    then (3,)), as upstream's AxisAddRemove applies its descriptors."""

    _params = (("axis", ()),)

    def _lower(self, x):
        return (dispatch.apply(_engine_ops.RemoveAxis(_int_list(self.axis)), x),)


class Identity(OpDef):
    """A new tensor with the input's value; the gradient passes through unchanged."""

    def _lower(self, x):
        return (dispatch.apply(_engine_ops.Identity(), x),)


_IdentityOp = _engine_ops.Identity  # the name files dumped before it moved to core.ops hold


class Copy(OpDef):
    """The input on device ``comp_node``."""

    _params = (("comp_node", _REQUIRED),)

    def _lower(self, x):
        return (_F().copy(x, str(self.comp_node)),)


class Concat(OpDef):
    """Join the inputs along ``axis`` (on ``comp_node`` when given)."""

    _params = (("axis", 0), ("comp_node", None))

    def _lower(self, *inputs):
        device = None if self.comp_node is None else str(self.comp_node)
        return (_F().concat(list(inputs), axis=int(self.axis), device=device),)


class IndexingOneHot(OpDef):
    """``out[..., 0, ...] = x[..., index[...], ...]`` along ``axis`` (the axis is kept with
    size 1, as upstream's op; `F.indexing_one_hot` drops it by default)."""

    _params = (("axis", 0), ("ndim", None))

    def _lower(self, x, index):
        return (_F().indexing_one_hot(x, index, int(self.axis), keepdims=True),)


class IndexingSetOneHot(OpDef):
    """A copy of ``x`` with ``x[..., index[...], ...] = value[..., 0, ...]`` along ``axis``
    (the inverse of IndexingOneHot); gradients reach ``x`` outside the written places and
    ``value``."""

    _params = (("axis", 0), ("ndim", None))

    def _lower(self, x, index, value):
        F = _F()
        axis = int(self.axis) % x.ndim
        idx = F.expand_dims(index, axis) if index.ndim < x.ndim else index
        target_shape = x.shape[:axis] + (1,) + x.shape[axis + 1:]
        if value.shape != target_shape:
            value = F.broadcast_to(value, target_shape)
        return (F.scatter(F.copy(x), axis, idx.astype("int32"), value),)


class MatrixMul(OpDef):
    """``a @ b`` with optional transposes (upstream's ``transposeA``/``transposeB``)."""

    _params = (("transposeA", False), ("transposeB", False), ("compute_mode", "default"),
               ("format", "default"), ("strategy", None), ("workspace_limit", None),
               ("dimA", None), ("dimB", None))

    def _lower(self, a, b):
        return (_F().matmul(a, b, transpose_a=bool(self.transposeA),
                            transpose_b=bool(self.transposeB)),)


class BatchedMatrixMul(MatrixMul):
    """Batched ``a @ b``: the same as MatrixMul on this engine (batch dims broadcast)."""


class Dot(OpDef):
    """The dot product of two vectors."""

    def _lower(self, a, b):
        return (_F().dot(a, b),)


class FakeQuant(OpDef):
    """``(clip(round(x / scale) + zp, qmin, qmax) - zp) * scale`` with the straight-through
    gradient (inputs: x, scale, zero_point), as `megengine.quantization`'s fake quantizer."""

    _params = (("qmin", -128), ("qmax", 127))

    def _lower(self, x, scale, zero_point):
        from ...quantization.utils import FakeQuant as _FakeQuantOp

        return (dispatch.apply(_FakeQuantOp(int(self.qmin), int(self.qmax)), x,
                               scale.astype(x.dtype), zero_point.astype(x.dtype)),)



class Linspace(OpDef):
    """``num`` evenly spaced values from ``start`` to ``stop`` (inputs: three scalar tensors;
    ``endpoint`` includes ``stop``)."""

    _params = (("comp_node", None), ("endpoint", True))

    def _lower(self, start, stop, num):
        F = _F()
        n = _scalar_int(num)
        lo = float(np.asarray(start.numpy()).ravel()[0])
        hi = float(np.asarray(stop.numpy()).ravel()[0])
        if not self.endpoint:
            hi = lo + (hi - lo) * (n - 1) / n if n > 0 else hi
        device = start.device if self.comp_node is None else str(self.comp_node)
        return (F.linspace(lo, hi, n, device=device),)


# ---------------------------------------------------------------- optimizer update
class LAMBUpdate(OpDef):
    """One LAMB step: inputs (exp_avg, exp_avg_sq, param, grad) -> (new exp_avg, new
    exp_avg_sq, new param), upstream's formulas (as `megengine.optimizer.LAMB`). ``step`` may
    be an int or a Tensor holding it. The update is not differentiable (an optimizer step)."""

    _params = (("beta_1", _REQUIRED), ("beta_2", _REQUIRED), ("step", _REQUIRED),
               ("lr", _REQUIRED), ("weight_decay", _REQUIRED), ("eps", _REQUIRED),
               ("bias_correction", True), ("always_adapt", False))

    def _key(self):
        key = super()._key()
        step = self.step  # a Tensor step compares by its value
        return key[:3] + (int(step.item()) if hasattr(step, "item") else step,) + key[4:]

    def _lower(self, exp_avg, exp_avg_sq, param, grad):
        step = self.step
        step = int(step.item()) if hasattr(step, "item") else int(step)
        if step < 1:
            raise ValueError(f"LAMBUpdate: step counts from 1, got {step}")
        return dispatch.apply(_LambStep(self, step), exp_avg, exp_avg_sq, param, grad)


class _LambStep(Op):
    """The arithmetic of one LAMB step on arrays (numpy or CuPy alike through ``xp``)."""

    def __init__(self, desc, step):
        self.desc, self.step = desc, step

    def __repr__(self):
        return "LAMBUpdate"

    def forward(self, m, v, w, g):
        d = self.desc
        xp = xp_of(w)
        dtype = w.dtype
        g = g.astype(dtype, copy=False)
        b1, b2 = float(d.beta_1), float(d.beta_2)
        m = b1 * m.astype(dtype, copy=False) + (1 - b1) * g
        v = b2 * v.astype(dtype, copy=False) + (1 - b2) * (g * g)
        if d.bias_correction:
            update = (m / (1 - b1 ** self.step)) / (xp.sqrt(v / (1 - b2 ** self.step))
                                                   + float(d.eps))
        else:
            update = m / (xp.sqrt(v) + float(d.eps))
        decay = float(d.weight_decay)
        if decay != 0:
            update = update + decay * w
        ratio = 1.0
        if d.always_adapt or decay > 0:
            w_norm = float(xp.sqrt((w.astype(np.float64) ** 2).sum()))
            u_norm = float(xp.sqrt((update.astype(np.float64) ** 2).sum()))
            if w_norm > 0 and u_norm > 0:
                ratio = w_norm / u_norm
        new_w = w - (float(d.lr) * ratio) * update
        return (m.astype(dtype, copy=False), v.astype(dtype, copy=False),
                new_w.astype(dtype, copy=False))

    def backward(self, *grads):
        raise RuntimeError("LAMBUpdate is an optimizer step: it has no gradient; apply it "
                           "outside a recording GradManager")


# ---------------------------------------------------------------- distributed
class CollectiveComm(OpDef):
    """A collective over the default process group (`megengine.distributed`), computed by
    the matching `megengine.functional.distributed` function; ``mode`` picks it."""

    Mode = _modes("Mode", "REDUCE_SUM BROADCAST ALL_GATHER REDUCE_SCATTER_SUM ALL_REDUCE_SUM "
                          "ALL_REDUCE_MAX ALL_REDUCE_MIN ALL_REDUCE_PROD GATHER SCATTER "
                          "ALL_TO_ALL".split())
    _params = (("key", ""), ("nr_devices", 1), ("rank", 0), ("is_root", False),
               ("local_grad", False), ("addr", "localhost"), ("port", 0),
               ("mode", "all_reduce_sum"), ("dtype", "float32"), ("backend", "nccl"),
               ("comp_node", ""))
    _enums = {"mode": Mode}

    def _lower(self, x):
        from ...distributed import group as _group
        from ...functional import distributed as fd

        world = _group.get_world_size() if _group.is_distributed() else 1
        if int(self.nr_devices) != world:
            raise ValueError(
                f"CollectiveComm: nr_devices={self.nr_devices}, but the process group has "
                f"{world} ranks; only the default group (all ranks) is reachable by descriptor, "
                "use megengine.functional.distributed with a Group for others"
            )
        return (fd.collective_comm(x, self.mode, _group.WORLD, None),)


class ParamPackConcat(OpDef):
    """Pack the inputs (the last one is the offsets tensor) into one flat tensor; see
    `megengine.distributed.helper.param_pack_concat`."""

    _params = (("offsets", ()),)

    def _lower(self, *inputs):
        from ...distributed.helper import param_pack_concat

        if len(inputs) < 2:
            raise TypeError("apply(ParamPackConcat): give the tensors, then the offsets tensor")
        return (param_pack_concat(list(inputs[:-1]), inputs[-1], list(self.offsets)),)


class ParamPackSplit(OpDef):
    """Split a flat tensor into tensors of ``shapes`` at ``offsets``; see
    `megengine.distributed.helper.param_pack_split`."""

    _params = (("offsets", ()), ("shapes", ()))

    def _lower(self, x):
        from ...distributed.helper import param_pack_split

        return tuple(param_pack_split(x, list(self.offsets), [tuple(s) for s in self.shapes]))


# ---------------------------------------------------------------- upstream names not lowered
# upstream op -> what to use instead (applying one raises and says so)
_UNLOWERED = {
    "Convolution": "F.conv2d", "ConvBias": "F.quantized.conv_bias_activation",
    "ConvolutionBackwardData": "F.conv_transpose2d", "Convolution3D": "F.conv3d",
    "Pooling": "F.max_pool2d / F.avg_pool2d", "AdaptivePooling": "F.adaptive_avg_pool2d",
    "BatchNorm": "F.batch_norm", "Softmax": "F.softmax", "LayerNorm": "F.layer_norm",
    "Dropout": "F.dropout", "TopK": "F.topk", "Argsort": "F.argsort", "Argmax": "F.argmax",
    "Argmin": "F.argmin", "CondTake": "F.cond_take", "NMSKeep": "F.vision.nms",
    "ROIAlign": "F.vision.roi_align", "ROIPooling": "F.vision.roi_pooling",
    "WarpPerspective": "F.vision.warp_perspective", "Resize": "F.vision.interpolate",
    "Remap": "F.vision.remap", "RemoteSend": "F.distributed.remote_send",
    "RemoteRecv": "F.distributed.remote_recv",
    "Split": "F.split", "Eye": "F.eye", "Fill": "F.full",
    "FillLike": "F.full_like", "PixelShuffle": "F.pixel_shuffle", "Padding": "F.pad",
    "CumSum": "F.cumsum", "Cumsum": "F.cumsum", "Diag": "F.diag", "MatrixInverse": "F.matinv",
    "SVD": "F.svd",
    "TQT": "megengine.quantization.utils.tqt_forward",
    "LSQ": "megengine.quantization.utils.lsq_forward",
    "GetVarShapeLike": "GetVarShape", "MultinomialRNG": "megengine.random.multinomial",
}


def _unlowered(name, instead):
    def _lower(self, *inputs):
        raise NotImplementedError(
            f"megengine.core.ops.builtin.{name} has no descriptor in this engine: its work is "
            f"done by {instead}; call that instead of apply({name}(...), ...)"
        )

    def __init__(self, *args, **kwargs):
        self._args, self._kwargs = args, kwargs  # kept for repr/equality only

    return type(name, (OpDef,), {
        "__doc__": f"Upstream's {name}; not lowered here (use {instead}).",
        "__init__": __init__, "_lower": _lower,
        "_key": lambda self: (type(self), _freeze(self._args),
                              _freeze(sorted(self._kwargs.items()))),
        "__repr__": lambda self: f"{name}(...)",
    })


for _name, _instead in _UNLOWERED.items():
    globals()[_name] = _unlowered(_name, _instead)


class _Strategy(enum.Flag):
    """Upstream's algorithm-choice flags (megdnn's execution policy): ``op.strategy =
    Convolution.Strategy.PROFILE | Convolution.Strategy.REPRODUCIBLE``. Kept on the
    descriptor (and in its pickle); this engine picks its kernels itself."""

    HEURISTIC = 1
    PROFILE = 2
    REPRODUCIBLE = 4
    OPTIMIZED = 8


for _name in ("Convolution", "ConvBias", "ConvolutionBackwardData", "Convolution3D",
              "MatrixMul", "BatchedMatrixMul", "Pooling"):
    globals()[_name].Strategy = _Strategy

__all__ += ["Elemwise", "Reduce", "TypeCvt", "GetVarShape", "Broadcast", "Reshape",
            "Dimshuffle", "AddAxis", "RemoveAxis", "Identity", "Copy", "Concat",
            "IndexingOneHot", "IndexingSetOneHot", "ElemwiseMultiType", "Linspace",
            "MatrixMul", "BatchedMatrixMul", "Dot",
            "FakeQuant", "LAMBUpdate", "CollectiveComm", "ParamPackConcat", "ParamPackSplit",
            *_UNLOWERED]

# upstream's `megengine.core.ops.builtin` is this module (upstream re-exports its C++ ops there)
sys.modules.setdefault(_engine_ops.__name__ + ".builtin", sys.modules[__name__])
_engine_ops.builtin = sys.modules[__name__]
